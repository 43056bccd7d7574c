"""Task functions for tests/test_integrations_audit.py: standard library only, so that a host imports
this module (through module forwarding) without joblib, dask or remoteproc."""

import os
import time


def mark_and_sleep(directory, x, seconds):
    """Leave a file named after this process and x in directory, then sleep; x == -1 raises at once."""
    with open(os.path.join(directory, "%d-%d" % (os.getpid(), x)), "w"):
        pass
    if x == -1:
        raise KeyError("this batch fails")
    time.sleep(seconds)
    return x


def pids_in(directory):
    """The pids that left a file in directory (mark_and_sleep's)."""
    return sorted({int(name.split("-")[0]) for name in os.listdir(directory)})
