"""remoteproc.Pool and remoteproc.Executor over two hosts (two accounts of the loopback sshd)."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import os
import pwd
import signal
import sys
import threading
import time
from multiprocessing import TimeoutError as MPTimeoutError
from multiprocessing.pool import RemoteTraceback

import cloudpickle
import pytest

import remoteproc
from remoteproc.executor import Executor
from remoteproc.pool import PREFETCH, Pool

# Tasks below are shipped by value: this test module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PLAIN_USER = "rpuser"


@pytest.fixture
def two_hosts(host, ssh_options, plain_user_host, plain_user_options):
    """Two hosts: separate accounts, so separate SSH connections and agents."""
    return [(host, ssh_options), (plain_user_host, plain_user_options)]


def square(x):
    return x * x


def add(a, b):
    return a + b


def whoami(_x=None):
    return os.getuid(), os.getppid(), os.getpid()


def slow_whoami(x):
    time.sleep(0.02)
    return x, os.getuid(), os.getppid()


def fails_on_three(x):
    if x == 3:
        raise ValueError("task %d failed on purpose" % x)
    return x


def naps(seconds):
    time.sleep(seconds)
    return seconds


_initialized = []


def init(tag):
    _initialized.append(tag)


def initialized(_x):
    return list(_initialized)


def bad_init():
    raise RuntimeError("initializer failed on purpose")


def exit_now(code):
    os._exit(code)


def uid_of(user):
    return pwd.getpwnam(user).pw_uid


@pytest.mark.timeout(60)
def test_map_of_1000_tasks_over_two_hosts_in_order(two_hosts):
    with Pool(two_hosts, processes_per_host=2) as pool:
        assert len(pool.workers()) == 4
        assert {h for h, _ in pool.workers()} == {two_hosts[0][0], two_hosts[1][0]}
        assert pool.map_async(square, range(1000)).get(30) == [x * x for x in range(1000)]
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        spread = pool.map_async(whoami, range(200), chunksize=5).get(30)
        assert {uid for uid, _, _ in spread} == {os.getuid(), uid_of(PLAIN_USER)}   # both hosts worked
        assert pool.starmap(add, [(i, i) for i in range(100)]) == [2 * i for i in range(100)]
        assert pool.apply(add, (2,), {"b": 40}) == 42
        assert pool.map(square, []) == []

        got = []
        res = pool.map_async(square, range(10), callback=got.append)
        assert res.get(30) == [x * x for x in range(10)] and res.successful()
        assert got == [res.get()]
        assert pool.starmap_async(add, [(1, 2)]).get(30) == [3]
        slow = pool.apply_async(naps, (0.5,))
        with pytest.raises(MPTimeoutError):
            slow.get(timeout=0.05)
        assert not slow.ready()
        assert slow.get(30) == 0.5


@pytest.mark.timeout(60)
def test_imap_and_imap_unordered(two_hosts):
    with Pool(two_hosts, processes_per_host=1) as pool:
        assert list(pool.imap(square, range(50))) == [x * x for x in range(50)]
        assert list(pool.imap(square, iter(range(50)), chunksize=7)) == [x * x for x in range(50)]
        # the slow first task does not hold the others back (bar the one queued behind it: PREFETCH)
        unordered = list(pool.imap_unordered(naps, [0.6] + [0.01] * 9))
        assert sorted(unordered) == sorted([0.6] + [0.01] * 9)
        assert unordered.index(0.6) >= len(unordered) - PREFETCH
        it = pool.imap(naps, [0.5])
        with pytest.raises(MPTimeoutError):
            it.next(timeout=0.05)
        assert it.next(timeout=30) == 0.5
        with pytest.raises(StopIteration):
            it.next(timeout=1)


@pytest.mark.timeout(60)
def test_a_task_that_raises_brings_its_remote_traceback(two_hosts):
    with Pool(two_hosts, processes_per_host=1) as pool:
        with pytest.raises(ValueError, match="task 3 failed on purpose") as info:
            pool.map(fails_on_three, range(10))
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "fails_on_three" in str(cause) and "Traceback (most recent call last)" in str(cause)
        assert "On host " in str(cause)
        # imap goes on after an error, as multiprocessing's does
        it = pool.imap(fails_on_three, range(6))
        outcome = []
        for _ in range(6):
            try:
                outcome.append(next(it))
            except ValueError:
                outcome.append("error")
        assert outcome == [0, 1, 2, "error", 4, 5]
        errors = []
        res = pool.apply_async(fails_on_three, (3,), error_callback=errors.append)
        with pytest.raises(ValueError):
            res.get(30)
        assert not res.successful() and len(errors) == 1
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]     # the pool is fine


@pytest.mark.timeout(90)
def test_a_host_that_dies_mid_map_fails_only_its_tasks(host, ssh_options, plain_user_host, plain_user_options):
    # A python path of its own gives this pool an agent nobody else uses: it is ours to kill.
    doomed_options = dict(plain_user_options, python="/usr/bin/python3")
    plain_uid = uid_of(PLAIN_USER)
    with Pool([(host, ssh_options), (plain_user_host, doomed_options)], processes_per_host=2) as pool:
        seen = pool.map(whoami, range(40), chunksize=1)
        agents = {ppid for uid, ppid, _ in seen if uid == plain_uid}
        assert len(agents) == 1, seen
        (agent,) = agents

        n = 300
        it = pool.imap(slow_whoami, range(n))
        outcome = []
        for i in range(n):
            try:
                outcome.append(("ok", it.next(timeout=30)))
            except remoteproc.ConnectionLostError as exc:
                outcome.append(("lost", exc))
            if i == 30:
                killed_at = time.time()
                os.kill(agent, signal.SIGKILL)      # the host's agent (and with it its workers) dies
        lost = [(i, o[1]) for i, o in enumerate(outcome) if o[0] == "lost"]
        ok = [(i, o[1]) for i, o in enumerate(outcome) if o[0] == "ok"]
        assert 1 <= len(lost) <= 4, lost            # at most PREFETCH chunks per worker of that host
        for _i, exc in lost:
            assert plain_user_host in str(exc) and exc.host == plain_user_host
        assert all(value[0] == i for i, value in ok)          # every other result, in its place
        assert len(ok) + len(lost) == n
        # after the kill (plus what was already done or in flight then), everything ran on the survivor
        after = [value for i, value in ok if i > 30 + 4 * PREFETCH * 4]
        assert after and all(uid != plain_uid for _, uid, _ in after)
        assert {h for h, _ in pool.workers()} == {host}
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        status = pool.hosts_status()         # (no retries: down for good, since the loss)
        assert status[host]["up"] and status[host]["down_since"] is None
        down = status[plain_user_host]
        assert not down["up"] and down["workers"] == 0 and "connection" in down["error"]
        assert killed_at - 1 <= down["down_since"] <= time.time()


@pytest.mark.timeout(60)
def test_executor_with_as_completed(two_hosts):
    with Executor(two_hosts, processes_per_host=1) as ex:
        futures = {ex.submit(naps, s): s for s in (0.4, 0.01, 0.2)}
        order = [futures[f] for f in concurrent.futures.as_completed(futures, timeout=30)]
        assert sorted(order) == [0.01, 0.2, 0.4]
        assert order[-1] == 0.4
        bad = ex.submit(fails_on_three, 3)
        with pytest.raises(ValueError, match="failed on purpose"):
            bad.result(timeout=30)
        # as ProcessPoolExecutor attaches it (the Pool attaches multiprocessing.pool's)
        assert type(bad.exception().__cause__) is concurrent.futures.process._RemoteTraceback
        assert list(ex.map(square, range(30), timeout=30)) == [x * x for x in range(30)]
        assert list(ex.map(add, range(30), range(30), chunksize=4)) == [2 * x for x in range(30)]
        assert ex.submit(add, 1, b=2).result(timeout=30) == 3
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)


@pytest.mark.timeout(60)
def test_lifecycle_initializer_and_maxtasksperchild(host, ssh_options):
    pool = Pool(host, processes_per_host=2, initializer=init, initargs=("ready",), maxtasksperchild=2,
                **ssh_options)
    try:
        assert pool.map(initialized, range(4), chunksize=1) == [["ready"]] * 4
        pids = {pid for _uid, _ppid, pid in pool.map(whoami, range(12), chunksize=1)}
        assert len(pids) >= 4           # two tasks per worker, then a fresh one
        with pytest.raises(ValueError):
            pool.join()                 # still running
    finally:
        pool.close()
    with pytest.raises(ValueError):
        pool.map(square, [1])
    pool.join()
    assert pool.workers() == []


@pytest.mark.timeout(60)
def test_default_processes_per_host_is_the_cpu_count_and_terminate(host, ssh_options):
    pool = Pool([host], **ssh_options)
    assert len(pool.workers()) == os.cpu_count()
    slow = pool.apply_async(naps, (30,))
    t0 = time.monotonic()
    pool.terminate()
    assert time.monotonic() - t0 < 15
    with pytest.raises(remoteproc.RemoteProcessError, match="terminated"):
        slow.get(5)
    assert pool.workers() == []
    assert not [t for t in threading.enumerate() if t.name == "remoteproc-pool" and t.is_alive()]


@pytest.mark.timeout(60)
def test_a_worker_that_dies_fails_its_task_and_is_replaced(host, ssh_options):
    with Pool(host, processes_per_host=2, **ssh_options) as pool:
        before = pool.workers()
        res = pool.apply_async(exit_now, (7,))
        with pytest.raises(remoteproc.RemoteProcessError, match="exitcode 7") as info:
            res.get(30)
        assert info.value.host == host
        assert pool.map_async(square, range(10)).get(30) == [x * x for x in range(10)]
        after = pool.workers()
        assert len(after) == 2 and after != before

    with pytest.raises(remoteproc.RemoteProcessError, match="initializer failed on purpose"):
        Pool(host, processes_per_host=1, initializer=bad_init, **ssh_options)


@pytest.mark.timeout(30)
def test_unpicklable_task_fails_in_the_caller(host, ssh_options):
    with Pool(host, processes_per_host=1, **ssh_options) as pool:
        lock = threading.Lock()
        with pytest.raises(remoteproc.PicklingError) as info:
            pool.apply_async(print, (lock,))
        assert "cannot send the arguments to the pool's workers on %s: TypeError: " % host in str(info.value)
        assert "Fix: pass only what pickles" in str(info.value) and info.value.host == host
        with pytest.raises(remoteproc.PicklingError):
            pool.map(square, [lock])
        assert pool.apply(square, (3,)) == 9


@pytest.mark.timeout(60)
def test_executor_shutdown_cancels_what_no_worker_started(host, ssh_options):
    ex = Executor(host, processes_per_host=1, **ssh_options)
    try:
        running = ex.submit(naps, 3.0)
        queued = [ex.submit(square, x) for x in range(5)]
        deadline = time.monotonic() + 30
        while not running.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running.running()
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        assert running.result(timeout=30) == 3.0
    finally:
        ex.shutdown(wait=True)


def slow_square(x):
    time.sleep(0.1)
    return x * x


def test_a_pool_or_executor_nothing_names_finishes_its_tasks(host, ssh_options):
    """``Pool(h).map_async(f, xs).get()``: the results keep the pool alive until they are ready, as
    multiprocessing's do, and ``Executor(h).submit(f, x).result()`` as ProcessPoolExecutor; once
    the results are done with, the pool is collected and its workers end."""
    import gc
    import weakref

    # (not inside the asserts: pytest's assertion rewriting would keep the pools alive)
    got = [list(Pool(host, 1, **ssh_options).imap(slow_square, range(5))),
           sorted(Pool(host, 1, **ssh_options).imap_unordered(slow_square, range(4))),
           Pool(host, 1, **ssh_options).map_async(slow_square, range(5)).get(60),
           Pool(host, 1, **ssh_options).apply_async(slow_square, (6,)).get(60),
           Executor(host, 1, **ssh_options).submit(slow_square, 3).result(60),
           list(Executor(host, 1, **ssh_options).map(slow_square, range(3), timeout=60))]
    assert got == [[0, 1, 4, 9, 16], [0, 1, 4, 9], [0, 1, 4, 9, 16], 36, 9, [0, 1, 4]]
    result = Pool(host, 1, **ssh_options).apply_async(slow_square, (2,))
    pool = weakref.ref(result._pool)
    assert result.get(60) == 4
    gc.collect()
    assert pool() is None, "a pool whose results are done must be collected (its finalizer ends the workers)"
    future = Executor(host, 1, **ssh_options).submit(slow_square, 2)
    executor = weakref.ref(future._remoteproc_executor)
    assert future.result(60) == 4
    gc.collect()
    assert executor() is None
