"""Helpers of the owner-side edge tests (test_queue_edges.py, test_synchronize_edges.py): join a
few processes, wait for a condition, and interrupt the main thread while it waits inside one of
remoteproc's owner calls (as a Ctrl-C would), to check what such an interruption leaves behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

FORK = multiprocessing.get_context("fork")


def join_all(procs, timeout=60):
    for p in procs:
        p.join(timeout)
    assert [p.exitcode for p in procs] == [0] * len(procs), [p.exitcode for p in procs]


def until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Interrupted(Exception):
    """What the signal handler raises in the main thread, as KeyboardInterrupt would."""


def main_thread_blocked():
    """The main thread sleeps in a threading wait inside one of remoteproc's owner calls."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None or frame.f_code.co_name != "wait" or not frame.f_code.co_filename.endswith("threading.py"):
        return False
    while frame is not None:
        if frame.f_code.co_name == "_call" and os.sep + "remoteproc" + os.sep in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def interrupt_main_once_blocked(before_raise=None):
    """Once the main thread sleeps in a threading wait, interrupt it (SIGUSR1; the handler first runs
    ``before_raise`` in the main thread, then raises Interrupted).  Returns a function restoring the handler."""
    def handler(signum, frame):
        if before_raise is not None:
            before_raise()
        raise Interrupted

    old = signal.signal(signal.SIGUSR1, handler)

    def fire():
        if until(main_thread_blocked, 20):
            os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=fire, daemon=True).start()
    return lambda: signal.signal(signal.SIGUSR1, old)


def every_call_in(where, target, objs, host, ssh_options):
    """Run ``target(*objs, out)`` in a forked local child (``where`` "fork") or a RemoteProcess
    ("remote"), wait for it to end well, and return what it put on ``out``."""
    from remoteproc import RemoteProcess
    from remoteproc.queues import Queue

    out = Queue()
    if where == "fork":
        p = FORK.Process(target=target, args=tuple(objs) + (out,))
    else:
        p = RemoteProcess(host, target=target, args=tuple(objs) + (out,), **ssh_options)
    p.start()
    got = out.get(timeout=30)
    join_all([p])
    return got
