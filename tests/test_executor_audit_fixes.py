"""Executor and Pool fixes an audit asked for, end to end against the loopback sshd.

* ``submit()`` racing ``shutdown()`` (the arguments still being pickled as the executor shuts
  down) either runs the call or raises concurrent.futures' ``RuntimeError``, never the pool's
  ``ValueError('Pool not running')``; a ``Pool.map`` that passed its check before a ``close()``
  runs, as multiprocessing's does;
* a short call does not wait behind a long one while another worker is idle, even after quick
  calls (which let a worker hold a second chunk ahead);
* ``shutdown(cancel_futures=True)`` from a done-callback (run by the pool's manager thread)
  returns at once, instead of waiting for a pass of that very thread;
* a cancelled future does not keep its dropped Executor (and its remote workers) alive.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import weakref
from concurrent import futures

import cloudpickle
import pytest
from proctable import gone

from remoteproc import Executor, Pool

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.one_transport]      # (the scheduler's logic)


# -- remote targets ------------------------------------------------------------------------------

def size(data):
    return len(data)


def quick(x):
    return x


def nap_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def nap(seconds):
    time.sleep(seconds)
    return seconds


def fail_after(seconds):
    time.sleep(seconds)
    raise ValueError("stop here")


class SlowToPickle:
    """An argument whose pickling (in the caller) waits for ``go``, having set ``started``: the
    window of a big argument's pickling, held open while the test shuts the pool down. It travels
    as ``b"abc"``."""

    def __init__(self, started, go):
        self.started, self.go = started, go

    def __reduce__(self):
        self.started.set()
        self.go.wait(60)
        return bytes, (b"abc",)


def _in_thread(call):
    out = {}

    def run():
        try:
            out["result"] = call()
        except BaseException as exc:   # noqa: BLE001 - what the call raised is the test's result
            out["raised"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- submit() racing shutdown(), map() racing close() -----------------------------------------------

def test_submit_racing_shutdown_runs_or_raises_runtime_error(host, ssh_options):
    ex = Executor(host, processes_per_host=1, **ssh_options)
    try:
        assert ex.submit(size, b"").result(60) == 0
        started, go = threading.Event(), threading.Event()
        thread, out = _in_thread(lambda: ex.submit(size, SlowToPickle(started, go)).result(60))
        assert started.wait(30)
        ex.shutdown(wait=False)         # while the argument is being pickled
        go.set()
        thread.join(60)
        assert not thread.is_alive()
        # ProcessPoolExecutor's contract: accepted and run, or refused with its RuntimeError
        if "raised" in out:
            assert isinstance(out["raised"], RuntimeError), repr(out["raised"])
            assert "cannot schedule new futures after shutdown" in str(out["raised"])
        else:
            assert out["result"] == 3
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            ex.submit(size, b"")
    finally:
        go.set()
        ex.shutdown()


def test_pool_map_racing_close_runs_as_multiprocessing_s(host, ssh_options):
    """multiprocessing's Pool checks its state as ``map`` begins: a map under way as ``close()``
    comes finishes. Here its arguments are still being pickled then."""
    pool = Pool(host, processes_per_host=1, **ssh_options)
    started, go = threading.Event(), threading.Event()
    try:
        assert pool.apply(size, (b"",)) == 0
        thread, out = _in_thread(lambda: pool.map(size, [SlowToPickle(started, go), b"xy"]))
        assert started.wait(30)
        pool.close()
        time.sleep(0.3)                 # (time for the manager to see the pool closed and idle)
        go.set()
        thread.join(60)
        assert not thread.is_alive()
        assert out == {"result": [3, 2]}, out
        with pytest.raises(ValueError, match="Pool not running"):
            pool.map(size, [b""])       # (after close(): refused, as multiprocessing's)
        pool.join()
    finally:
        go.set()
        pool.terminate()


def test_executor_shutdown_waits_for_a_submission_being_pickled(host, ssh_options):
    """A shutdown(wait=True) while a submission pickles its arguments returns once that submission
    is settled (run, or refused), not before and not never."""
    ex = Executor(host, processes_per_host=1, **ssh_options)
    started, go = threading.Event(), threading.Event()
    try:
        thread, out = _in_thread(lambda: ex.submit(size, SlowToPickle(started, go)))
        assert started.wait(30)
        closer, closed = _in_thread(lambda: ex.shutdown(wait=True))
        time.sleep(0.3)
        go.set()
        closer.join(60)
        thread.join(60)
        assert not closer.is_alive() and closed == {"result": None}, closed
        assert isinstance(out.get("raised"), RuntimeError) or out["result"].result(60) == 3, out
    finally:
        go.set()
        ex.shutdown()


# -- a short call behind a long one -------------------------------------------------------------------

@pytest.mark.parametrize("api", ["executor", "pool"])
def test_a_short_call_does_not_wait_behind_a_long_one_while_a_worker_is_idle(host, ssh_options, api):
    """After quick calls (a worker may then hold a second chunk ahead), [long, short, short, short]
    on two workers: the short ones all run on the other worker, as with ProcessPoolExecutor, not
    one of them behind the long call."""
    long = 4.0
    if api == "executor":
        with Executor(host, processes_per_host=2, **ssh_options) as ex:
            assert list(ex.map(quick, range(50))) == list(range(50))
            fs = [ex.submit(nap_pid, d) for d in (long, 0.2, 0.2, 0.2)]
            done, _ = futures.wait(fs[1:], timeout=60)
            assert len(done) == 3
            assert not fs[0].done(), "the short calls finished only with the long one"
            pids = [f.result(60) for f in fs]
    else:
        with Pool(host, processes_per_host=2, **ssh_options) as pool:
            assert pool.map(quick, range(50), chunksize=1) == list(range(50))
            pids = pool.map(nap_pid, [long, 0.2, 0.2, 0.2], chunksize=1)
    assert pids[0] not in pids[1:], "a short call ran on the long call's worker: %s" % pids


# -- shutdown(cancel_futures=True) in a done-callback -------------------------------------------------

def test_shutdown_cancel_futures_from_a_done_callback_returns_at_once(host, ssh_options):
    ex = Executor(host, processes_per_host=2, **ssh_options)
    seen = {}
    called = threading.Event()

    def stop_at_first_error(future):
        if future.exception() is not None:
            seen["thread"] = threading.current_thread()
            t0 = time.monotonic()
            ex.shutdown(wait=False, cancel_futures=True)
            seen["took"] = time.monotonic() - t0
            called.set()

    try:
        first = ex.submit(fail_after, 0.5)
        first.add_done_callback(stop_at_first_error)
        rest = [ex.submit(nap, 0.2) for _ in range(30)]
        assert called.wait(60)
        assert seen["thread"] is ex._core.thread        # (the manager thread ran it)
        # (it waited 5 s for a pass only the thread it blocked could make)
        assert seen["took"] < 2.5, seen
        assert sum(f.cancelled() for f in rest) > 10
        assert all(f.cancelled() or f.result(60) == 0.2 for f in rest)
    finally:
        ex.shutdown()


# -- a cancelled future and its executor ----------------------------------------------------------------

@pytest.mark.loopback_only     # (looks for the remote worker among this machine's processes)
def test_a_cancelled_future_does_not_keep_a_dropped_executor_alive(host, ssh_options):
    ex = Executor(host, processes_per_host=1, **ssh_options)
    [(_, pid)] = ex.workers()
    fs = [ex.submit(nap, 0.5) for _ in range(4)]
    time.sleep(0.2)
    assert any([f.cancel() for f in fs])
    for f in fs:
        assert f.cancelled() or f.result(60) == 0.5
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None, "the cancelled futures keep their dropped Executor"
    assert len(fs) == 4                          # (the futures are still referenced)
    assert gone(pid, 30), "the dropped Executor's worker is still running"
