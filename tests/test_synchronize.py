"""remoteproc's Lock, RLock, Semaphore, Condition, Barrier, Value and Array: in the owner, in local
children, across hosts; side by side with multiprocessing's own where that shows what to expect."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

import cloudpickle
import pytest

import remoteproc
from remoteproc import RemoteProcess
from remoteproc.queues import Queue

# Targets below are shipped by value: this test module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(90)


def _join_all(procs, timeout=60):
    for p in procs:
        p.join(timeout)
    assert [p.exitcode for p in procs] == [0] * len(procs), [p.exitcode for p in procs]


@pytest.fixture
def ns(netns):
    """Two namespace hosts and the options that log in to them."""
    options = netns.options()
    from conftest import PLAIN_USER

    return netns.hosts["h1"].spec(PLAIN_USER), netns.hosts["h2"].spec(PLAIN_USER), options


# -- targets ------------------------------------------------------------------------------------------

def count_under_lock(lock, value, n, out):
    for _ in range(n):
        with lock:
            value.value += 1
    out.put(("done", os.getpid()))


def count_with_get_lock(value, n, out):
    for _ in range(n):
        with value.get_lock():
            value.value += 1
    out.put("done")


def barrier_party(barrier, out, rounds):
    for r in range(rounds):
        index = barrier.wait(timeout=30)
        out.put((r, index))


def hold_lock_forever(lock, out):
    lock.acquire()
    out.put(os.getpid())
    time.sleep(300)


def lock_semantics(lock, rlock, sem, bsem, out):
    res = {}
    res["lock"] = [lock.acquire(), lock.acquire(False), lock.acquire(timeout=0.1)]
    res["lock_repr"] = repr(lock)
    lock.release()
    try:
        lock.release()
    except ValueError as exc:
        res["lock_release_twice"] = str(exc)
    res["rlock"] = [rlock.acquire(), rlock.acquire(), repr(rlock)]
    rlock.release()
    rlock.release()
    try:
        rlock.release()
    except AssertionError as exc:
        res["rlock_not_owned"] = str(exc)
    res["sem"] = [sem.acquire(), sem.acquire(), sem.acquire(False), sem.get_value(), repr(sem)]
    sem.release()
    sem.release()
    sem.release()
    res["sem_after"] = sem.get_value()
    bsem.acquire()
    bsem.release()
    try:
        bsem.release()
    except ValueError as exc:
        res["bsem"] = str(exc)
    res["bsem_repr"] = repr(bsem)
    out.put(res)


def cond_waiter(cond, state, out):
    with cond:
        out.put("waiting")
        ok = cond.wait_for(lambda: state.value >= 3, timeout=30)
        out.put(("woken", ok, state.value))


def cond_bumper(cond, state, n):
    for _ in range(n):
        with cond:
            state.value += 1
            cond.notify_all()


def cond_timeout(cond, out):
    with cond:
        t = time.monotonic()
        woken = cond.wait(0.3)
        out.put((woken, time.monotonic() - t, repr(cond)))


def arrays(arr, s, raw, out):
    res = {"len": len(arr), "item": arr[2], "slice": arr[1:4], "all": list(arr), "s": s.value,
           "raw": raw.value, "repr": repr(arr)}
    arr[0] = 100
    arr[1:3] = [11, 12]
    s.value = b"bye"
    raw.value = 2.5
    with arr.get_lock():
        arr[4] += 1
    res["obj"] = arr.get_obj()[0]
    res["str keys"] = []
    for key in ("value", "raw", "x"):      # an index is no attribute name, as with ctypes
        for act in (lambda k=key: s[k], lambda k=key: s.__setitem__(k, b"z")):
            try:
                act()
                res["str keys"].append("no error")
            except TypeError as exc:
                res["str keys"].append(str(exc))
    out.put(res)


def semantics_of(kind, make):
    lock, rlock, sem, bsem = make.Lock(), make.RLock(), make.Semaphore(2), make.BoundedSemaphore(1)
    return lock, rlock, sem, bsem


def normalise(res):
    """Process names differ (RemoteProcess-N, Process-N): keep the shape of the reprs only."""
    out = dict(res)
    out["lock_repr"] = out["lock_repr"].split("=")[0]
    out["rlock"] = out["rlock"][:2] + [out["rlock"][2].split("(")[0] + out["rlock"][2].split(",")[1]]
    return out


# -- in the owner and in local children ------------------------------------------------------------------

def test_semantics_match_multiprocessing_in_a_remote_child(host, ssh_options):
    """The same target, given multiprocessing's objects in a local child and ours in a remote one."""
    local_out = multiprocessing.Queue()
    p = multiprocessing.get_context("fork").Process(
        target=lock_semantics, args=semantics_of("mp", multiprocessing) + (local_out,))
    p.start()
    expected = local_out.get(timeout=30)
    p.join(10)
    out = Queue()
    r = RemoteProcess(host, target=lock_semantics, args=semantics_of("rp", remoteproc) + (out,), **ssh_options)
    r.start()
    got = out.get(timeout=30)
    _join_all([r])
    assert normalise(got) == normalise(expected)
    assert got["lock_repr"] == "<Lock(owner=%s)>" % r.name
    assert expected["sem"][-1] == got["sem"][-1] == "<Semaphore(value=0)>"


def release_then_put(q, lock, go, n):
    for i in range(n):
        lock.acquire()
        lock.release()
        q.put(i)
        go.recv()       # (the parent has looked at the lock)


def test_a_release_has_happened_before_what_the_child_does_next(host, ssh_options):
    """The owner serves each object's Connection on its own: a release sent without waiting
    could reach it after the child's next put, and the owner, seeing the item, would find the
    lock still held.  With multiprocessing a release is done when release() returns."""
    lock, q = remoteproc.Lock(), Queue()
    go, child_go = remoteproc.Pipe()
    # (the queue's Connection first: the owner's broker serves ready Connections in that order)
    p = RemoteProcess(host, target=release_then_put, args=(q, lock, child_go, 200), **ssh_options)
    p.start()
    child_go.close()
    failed = 0
    for i in range(200):
        assert q.get(timeout=30) == i
        if lock.acquire(False):
            lock.release()
        else:
            failed += 1
        go.send(None)
    _join_all([p])
    assert failed == 0


def wait_on(cond, conn):
    conn.send(os.getpid())
    with cond:
        woke = cond.wait(30)
    conn.send(woke)


def test_after_join_a_dead_waiter_s_wait_is_gone(host, ssh_options):
    """join() returns once the owner has dropped the dead process's Connections: a notify()
    right after it wakes the live waiter, never the dead one (with multiprocessing the notify
    would be lost on the dead sleeper)."""
    cond = remoteproc.Condition()
    procs, conns = [], []
    for _ in range(2):
        a, b = remoteproc.Pipe()
        p = RemoteProcess(host, target=wait_on, args=(cond, b), **ssh_options)
        p.start()
        b.close()
        a.recv()
        procs.append(p)
        conns.append(a)
        deadline = time.monotonic() + 10
        while repr(cond).endswith(", %d)>" % (len(procs) - 1)) and time.monotonic() < deadline:
            time.sleep(0.01)        # (until it sleeps on the condition)
    assert repr(cond).endswith(", 2)>"), repr(cond)
    dead, live = procs
    os.kill(dead.pid, signal.SIGKILL)
    dead.join(30)
    with cond:
        cond.notify()
    assert conns[1].poll(10), "the notify went to the dead waiter"
    assert conns[1].recv() is True
    _join_all([live])


def test_owner_reprs_match_multiprocessing():
    for make in (multiprocessing, remoteproc):
        lock, rlock, sem, bsem = semantics_of("x", make)
        assert repr(lock) == "<Lock(owner=None)>"
        with lock:
            assert repr(lock) == "<Lock(owner=MainProcess)>"
        with rlock, rlock:
            assert repr(rlock) == "<RLock(MainProcess, 2)>"
        assert repr(rlock) == "<RLock(None, 0)>"
        assert repr(sem) == "<Semaphore(value=2)>" and repr(bsem) == "<BoundedSemaphore(value=1, maxvalue=1)>"
        assert repr(make.Condition()) == "<Condition(<RLock(None, 0)>, 0)>"
        assert repr(make.Value("i", 7)) == "<Synchronized wrapper for c_int(7)>"
        assert repr(make.RawValue("d", 1.5)) == "c_double(1.5)"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_counter_in_local_children(method):
    ctx = multiprocessing.get_context(method)
    lock, value, out = remoteproc.Lock(), remoteproc.Value("i", 0, lock=False), Queue()
    procs = [ctx.Process(target=count_under_lock, args=(lock, value, 200, out)) for _ in range(3)]
    for p in procs:
        p.start()
    count_under_lock(lock, value, 200, out)
    for _ in range(4):
        out.get(timeout=60)
    _join_all(procs)
    assert value.value == 800


# -- across hosts -----------------------------------------------------------------------------------------

def test_counter_under_lock_by_four_processes_on_two_hosts(ns):
    h1, h2, options = ns
    lock, value, out = remoteproc.Lock(), remoteproc.Value("i", 0, lock=False), Queue()
    procs = [RemoteProcess(h, target=count_under_lock, args=(lock, value, 100, out), **options)
             for h in (h1, h2, h1, h2)]
    for p in procs:
        p.start()
    done = [out.get(timeout=60) for _ in procs]
    _join_all(procs)
    assert value.value == 400
    assert len({pid for _, pid in done}) == 4


def test_value_get_lock_counter_on_two_hosts(ns):
    h1, h2, options = ns
    value, out = remoteproc.Value("i", 0), Queue()
    procs = [RemoteProcess(h, target=count_with_get_lock, args=(value, 100, out), **options)
             for h in (h1, h2, h1, h2)]
    for p in procs:
        p.start()
    count_with_get_lock(value, 100, out)            # the owner takes part too
    for _ in range(5):
        assert out.get(timeout=60) == "done"
    _join_all(procs)
    assert value.value == 500


def test_barrier_with_parties_on_both_hosts(ns):
    h1, h2, options = ns
    ran = remoteproc.Value("i", 0)

    def action():
        with ran.get_lock():
            ran.value += 1

    barrier, out = remoteproc.Barrier(3, action=action), Queue()
    procs = [RemoteProcess(h, target=barrier_party, args=(barrier, out, 3), **options) for h in (h1, h2)]
    for p in procs:
        p.start()
    mine = [barrier.wait(timeout=30) for _ in range(3)]
    got = [out.get(timeout=30) for _ in range(6)]
    _join_all(procs)
    for r in range(3):
        assert sorted([i for rr, i in got if rr == r] + [mine[r]]) == [0, 1, 2]
    assert ran.value == 3 and not barrier.broken and barrier.n_waiting == 0


def test_killed_lock_holder_releases_the_lock(ns):
    """A lock whose holder is killed is released (multiprocessing's would stay held forever)."""
    h1, _h2, options = ns
    lock, out = remoteproc.Lock(), Queue()
    p = RemoteProcess(h1, target=hold_lock_forever, args=(lock, out), **options)
    p.start()
    out.get(timeout=30)
    assert not lock.acquire(timeout=0.2)
    assert repr(lock) == "<Lock(owner=SomeOtherProcess)>"
    waiter = threading.Thread(target=lambda: out.put(("acquired", lock.acquire(timeout=30))))
    waiter.start()
    p.kill()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert out.get(timeout=30) == ("acquired", True)
    waiter.join(10)
    lock.release()


def test_barrier_party_lost_breaks_the_barrier(host, ssh_options):
    barrier, out = remoteproc.Barrier(3), Queue()
    p = RemoteProcess(host, target=barrier_party, args=(barrier, out, 1), **ssh_options)
    p.start()
    deadline = time.monotonic() + 30
    while barrier.n_waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert barrier.n_waiting == 1
    p.kill()
    p.join(30)
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(timeout=30)
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken


def test_condition_across_hosts(host, ssh_options, plain_user_host, plain_user_options):
    cond, state, out = remoteproc.Condition(), remoteproc.Value("i", 0, lock=False), Queue()
    w = RemoteProcess(host, target=cond_waiter, args=(cond, state, out), **ssh_options)
    w.start()
    assert out.get(timeout=30) == "waiting"
    b = RemoteProcess(plain_user_host, target=cond_bumper, args=(cond, state, 3), **plain_user_options)
    b.start()
    assert out.get(timeout=30) == ("woken", True, 3)
    t = RemoteProcess(host, target=cond_timeout, args=(cond, out), **ssh_options)
    t.start()
    woken, waited, rep = out.get(timeout=30)
    assert woken is False and waited >= 0.25
    assert rep.startswith("<Condition(<RLock(%s, 1)>" % t.name)
    _join_all([w, b, t])


def test_arrays_and_strings_remotely(host, ssh_options):
    arr, s, raw, out = remoteproc.Array("i", range(5)), remoteproc.Array("c", b"hello"), \
        remoteproc.RawValue("d", 1.0), Queue()
    p = RemoteProcess(host, target=arrays, args=(arr, s, raw, out), **ssh_options)
    p.start()
    res = out.get(timeout=30)
    _join_all([p])
    assert res["len"] == 5 and res["item"] == 2 and res["slice"] == [1, 2, 3] and res["all"] == [0, 1, 2, 3, 4]
    assert res["s"] == b"hello" and res["raw"] == 1.0 and res["obj"] == 100
    assert res["repr"].startswith("<SynchronizedArray wrapper for <")
    assert arr[:] == [100, 11, 12, 3, 5] and s.value == b"bye" and raw.value == 2.5
    assert res["str keys"] == ["indices must be integers"] * 6
    for key in ("value", "x"):
        with pytest.raises(TypeError, match="indices must be integers"):
            s[key]          # (the owner's own)


def pool_init(lock, value):
    global _shared
    _shared = (lock, value)


def pool_task(n):
    lock, value = _shared
    for _ in range(n):
        with lock:
            value.value += 1
    return n


def test_pool_workers_get_locks_through_initargs(host, ssh_options):
    lock, value = remoteproc.Lock(), remoteproc.Value("i", 0, lock=False)
    with remoteproc.Pool([host], processes_per_host=2, initializer=pool_init, initargs=(lock, value),
                         **ssh_options) as pool:
        assert sum(pool.map(pool_task, [20] * 10, chunksize=1)) == 200
    assert value.value == 200


def test_proxies_cannot_be_passed_on_or_pickled(host, ssh_options):
    import pickle

    for obj in (remoteproc.Lock(), remoteproc.Barrier(2), remoteproc.Value("i"), remoteproc.Condition()):
        with pytest.raises(RuntimeError, match="should only be shared between processes"):
            pickle.dumps(obj)


@pytest.mark.parametrize("factory,alternative", [
    (lambda: multiprocessing.Lock(), "remoteproc.Lock"),
    (lambda: multiprocessing.RLock(), "remoteproc.RLock"),
    (lambda: multiprocessing.Condition(), "remoteproc.Condition"),
    (lambda: multiprocessing.Barrier(2), "remoteproc.Barrier"),
    (lambda: multiprocessing.Value("i"), "remoteproc.Value"),
    (lambda: multiprocessing.Array("i", 3), "remoteproc.Value or remoteproc.Array"),
    (lambda: __import__("multiprocessing.shared_memory").shared_memory.ShareableList([1]), "remoteproc.Array"),
])
def test_plain_multiprocessing_objects_name_their_remoteproc_kin(factory, alternative):
    p = RemoteProcess("nobody@host.invalid", target=print, args=(factory(),))
    with pytest.raises(remoteproc.PicklingError) as info:
        p.start()
    assert alternative in str(info.value) and "host.invalid" in str(info.value)


# -- parity left over from CPython's tests ----------------------------------------------------------------

def report_reprs_and_level(ev, q, barrier, out):
    import multiprocessing.util

    out.put((repr(ev), repr(q), repr(barrier), multiprocessing.util.get_logger().getEffectiveLevel()))


def test_reprs_and_logger_level_as_multiprocessing_writes_them(host, ssh_options):
    import logging
    import re

    ev, q, barrier, out = remoteproc.Event(), remoteproc.Queue(), remoteproc.Barrier(2), Queue()
    assert re.fullmatch(r"<Event at 0x[0-9a-f]+ unset>", repr(ev))
    ev.set()
    assert re.fullmatch(r"<Event at 0x[0-9a-f]+ set>", repr(ev))
    assert re.fullmatch(r"<remoteproc\.queues\.Queue object at 0x[0-9a-f]+>", repr(q))
    assert re.fullmatch(r"<remoteproc\.synchronize\.Barrier at 0x[0-9a-f]+: waiters=0/2>", repr(barrier))
    logger = multiprocessing.get_logger()
    old, root_old = logger.level, logging.getLogger().level
    try:
        for mine, root, expected in ((logging.WARNING + 3, logging.INFO, logging.WARNING + 3),
                                     (logging.NOTSET, logging.INFO + 2, logging.INFO + 2)):
            logger.setLevel(mine)
            logging.getLogger().setLevel(root)
            p = RemoteProcess(host, target=report_reprs_and_level, args=(ev, q, barrier, out), **ssh_options)
            p.start()
            ev_repr, q_repr, b_repr, level = out.get(timeout=30)
            _join_all([p])
            assert re.fullmatch(r"<Event at 0x[0-9a-f]+ set>", ev_repr)
            assert re.fullmatch(r"<.*Queue object at 0x[0-9a-f]+>", q_repr)
            assert re.fullmatch(r"<remoteproc\.synchronize\.Barrier at 0x[0-9a-f]+: waiters=0/2>", b_repr)
            assert level == expected
    finally:
        logger.setLevel(old)
        logging.getLogger().setLevel(root_old)


def test_pool_refuses_no_processes_and_warns_as_multiprocessing(host, ssh_options):
    import gc
    import warnings

    for n in (0, -1):
        with pytest.raises(ValueError):
            remoteproc.Pool([host], processes_per_host=n, **ssh_options)
    pool = remoteproc.Pool([host], processes_per_host=1, **ssh_options)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pool.__del__()
        assert [str(w.message).startswith("unclosed running multiprocessing pool ") for w in caught] == [True]
        assert caught[0].category is ResourceWarning
    finally:
        pool.terminate()
        pool.join()
    gc.collect()
