"""Task functions for the joblib and dask tests: standard library only, so a host imports this module
(through module forwarding) without joblib, dask or remoteproc."""

import os
import time


def where(x):
    return x * x, os.getpid()


def slow_where(x):
    start = time.monotonic()
    time.sleep(0.2)
    return x, os.getpid(), start, time.monotonic()


def fails_on_3(x):
    if x == 3:
        raise KeyError("three is right out")
    return x


def mark_then_fail_first(directory, x, seconds):
    """Leave a file named x in directory (the batch started), then raise if x is 0, else sleep."""
    with open(os.path.join(directory, str(x)), "w"):
        pass
    if x == 0:
        time.sleep(0.5)
        raise KeyError("the first batch fails")
    time.sleep(seconds)
    return x
