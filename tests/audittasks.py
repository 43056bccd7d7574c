"""Task functions for tests/test_integrations_audit.py: standard library only, so that a host imports
this module (through module forwarding) without joblib, dask or remoteproc."""

import os
import time


def mark_and_sleep(directory, x, seconds):
    """Leave a file named after this process and x in directory, then sleep; x == -1 then raises."""
    with open(os.path.join(directory, "%d-%d" % (os.getpid(), x)), "w"):
        pass
    time.sleep(seconds)
    if x == -1:
        raise KeyError("this batch fails")
    return x


def pids_in(directory):
    """The pids that left a file in directory for a batch that sleeps (mark_and_sleep's x >= 0; the
    worker of a batch that raised lives on)."""
    marks = [name.split("-", 1) for name in os.listdir(directory)]
    return sorted({int(pid) for pid, x in marks if int(x) >= 0})
