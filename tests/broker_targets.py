"""Targets for tests/test_owner_broker.py: standard library only, Python 3.8 syntax (one of them
runs on another Python, a spawn-mode host, which imports this module by reference)."""

import os
import time


def echo_under_lock(q_in, q_out, lock):
    """The long-lived child: hands every item back, holding the Lock meanwhile, until None."""
    while True:
        item = q_in.get(timeout=120)
        if item is None:
            return
        with lock:
            q_out.put(item)


def use_and_exit(q, lock, event, tag):
    """A short-lived child: one item, the lock once, the event set."""
    with lock:
        q.put(tag)
    event.set()


def report_then_sleep(q, lock, event):
    """A child to kill (or to drop): says its pid, then holds the lock and waits."""
    lock.acquire()
    q.put(os.getpid())
    event.wait(60)
    time.sleep(60)
