"""Edges of remoteproc's Lock, RLock, Semaphore, Condition, Barrier, Value and Array, checked as a user meets
them, next to what multiprocessing (or threading) does with the same code where the two can be compared.

Covered: every primitive used through its proxy in a forked local child and in a remote child (reprs,
``get_value``, ``acquire(False)``/timeouts, ``Condition.wait``/``notify`` without the lock, ``wait(0)``,
``wait_for``, Barrier ``parties``/``n_waiting``/``broken``/``abort``/``reset``, ``get_obj``); reprs naming
another thread; bad constructor arguments (``Semaphore(-1)``, ``Queue(maxsize=1.5)``,
``Value("z")``); ``Condition`` over an explicit ``Lock``, over a foreign lock, and made
in a forked child; a notified waiter that times out while the lock is still held; an owner's
``acquire``/``Condition.wait`` interrupted by an exception (before and after the grant); a waiter that dies
while queued for the lock; a Value guarded by a Semaphore, with a waiting access that fails; Barrier
``wait(0)``, an action that raises, arrivals while the action runs, ``abort`` during the action, the action's
process dying; use from a process forked from a child ("unknown" reprs, RuntimeError); Value/Array with a
lock of another kind, Structure fields, ``.raw``, the wrapper's ``acquire``/``release``/``with``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time

import cloudpickle
import owner_calls
import pytest
from owner_calls import Interrupted, every_call_in, interrupt_main_once_blocked, join_all, until

import remoteproc
from remoteproc import RemoteProcess
from remoteproc.queues import Queue

# Targets below are shipped by value: this test module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(owner_calls)     # (its helpers run in remote targets too)

pytestmark = [pytest.mark.timeout(90), pytest.mark.one_transport]     # (owner-side logic, alike on both)

FORK = multiprocessing.get_context("fork")


# -- targets --------------------------------------------------------------------------------------------

def every_call(lock, rlock, sem, bsem, cond, barrier, value, arr, raw, out):
    """The whole API of each primitive, in a child: the results, with reprs made comparable."""
    res = {}
    me = multiprocessing.current_process().name
    res["lock"] = [lock.acquire(False), lock.acquire(False), lock.acquire(timeout=0.05), repr(lock).replace(me, "ME")]
    lock.release()
    res["lock_free"] = repr(lock)
    res["rlock"] = [rlock.acquire(), rlock.acquire(False), repr(rlock).replace(me, "ME")]
    rlock.release()
    rlock.release()
    res["rlock_free"] = repr(rlock)
    res["sem"] = [sem.get_value(), sem.acquire(False), sem.get_value(), repr(sem)]
    sem.release()
    res["bsem"] = [bsem.get_value(), repr(bsem)]
    try:
        bsem.release()
    except ValueError as exc:
        res["bsem_release"] = str(exc)
    for name, call in (("wait", lambda: cond.wait(0.01)), ("notify", cond.notify), ("notify_all", cond.notify_all)):
        try:
            call()
            res["cond_" + name] = "no error"
        except AssertionError as exc:
            res["cond_" + name] = str(exc)
    with cond:
        res["cond_wait0"] = cond.wait(0)
        res["cond_wait_short"] = cond.wait(0.05)
        res["cond_wait_for_true"] = cond.wait_for(lambda: "yes")
        res["cond_wait_for_timeout"] = cond.wait_for(lambda: 0, timeout=0.05)
        cond.notify()
        cond.notify_all()
        res["cond_repr"] = repr(cond).replace(me, "ME")
        if hasattr(cond, "_sleeping_count"):     # (private: multiprocessing's, and the owner class's for CPython's)
            res["cond_sleeping"] = cond._sleeping_count.get_value()
    res["cond_repr_free"] = repr(cond)
    res["barrier"] = [barrier.parties, barrier.n_waiting, barrier.broken]
    res["barrier_wait"] = barrier.wait(10)            # one party: it is the last, no waiting
    barrier.abort()
    res["barrier_aborted"] = barrier.broken
    try:
        barrier.wait(10)
        res["barrier_wait_broken"] = "no error"
    except threading.BrokenBarrierError:
        res["barrier_wait_broken"] = "BrokenBarrierError"
    barrier.reset()
    res["barrier_reset"] = [barrier.broken, barrier.n_waiting]
    res["value"] = [value.value, repr(value), value.get_obj().value, repr(raw), raw.value]
    value.get_obj().value = 41
    with value:
        value.value += 1
    value.acquire()
    value.release()
    res["arr"] = [len(arr), arr[1], arr[-1], arr[::2], list(arr), arr.get_obj()[2], repr(arr)]
    arr[0:2] = [7, 8]
    out.put(res)


def make_all(lib):
    return (lib.Lock(), lib.RLock(), lib.Semaphore(2), lib.BoundedSemaphore(1), lib.Condition(),
            lib.Barrier(1), lib.Value("i", 5), lib.Array("i", [1, 2, 3]), lib.RawValue("d", 2.5))


def wait_for_lock(lock, conn):
    conn.send("waiting")
    lock.acquire()      # (killed while it waits)


def wait_on_condition(cond, conn):
    with cond:
        conn.send("waiting")
        cond.wait(60)


def read_when_free(value, arr, out):
    try:
        arr[10]
        out.put("no error")
    except IndexError as exc:
        out.put(("IndexError", str(exc)))
    out.put(("value", value.value))


def barrier_last_party(barrier, started, out):
    sys.rp_edges_started = started       # what the action signals through (it runs in this process)
    try:
        out.put(("index", barrier.wait(30)))
    except Exception as exc:
        out.put((type(exc).__name__, str(exc)))


def slow_action():
    sys.rp_edges_started.set()
    time.sleep(1.0)


def failing_action():
    raise ValueError("the action failed")


def dying_action():
    sys.rp_edges_started.set()
    os._exit(0)


def barrier_twice(barrier, started, out):
    sys.rp_edges_started = started
    out.put(("first", barrier.wait(30)))
    out.put(("second", barrier.wait(30)))


def use_after_second_fork(lock, rlock, sem, bsem, cond, w):
    """In a child: fork a grandchild, which inherited the child's proxies, and report what it sees."""
    pid = os.fork()
    if pid == 0:
        try:
            res = [repr(lock), repr(rlock), repr(sem), repr(bsem)]
            try:
                lock.acquire(False)
                res.append("no error")
            except RuntimeError as exc:
                res.append(str(exc))
            w.send(res)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def condition_in_child(lock, out):
    try:
        remoteproc.Condition(lock)
        out.put("no error")
    except RuntimeError as exc:
        out.put(str(exc))


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def structure_child(pt, s, out):
    pt.x = pt.x + 10
    pt.y = 0.5
    s.raw = s.raw.upper()
    first = s.value
    s.value = b"z"
    out.put((pt.x, pt.y, repr(pt), first, s.raw))


# -- the whole API through a proxy -------------------------------------------------------------------------

def test_every_call_in_forked_and_remote_children_matches_multiprocessing(host, ssh_options):
    expected_out = multiprocessing.Queue()
    p = FORK.Process(target=every_call, args=make_all(multiprocessing) + (expected_out,))
    p.start()
    expected = expected_out.get(timeout=30)
    join_all([p])

    for where in ("fork", "remote"):
        objs = make_all(remoteproc)
        got = every_call_in(where, every_call, objs, host, ssh_options)
        assert got["value"] == expected["value"] == [5, "<Synchronized wrapper for c_int(5)>", 5, "c_double(2.5)", 2.5]
        arr_got, arr_expected = got.pop("arr"), expected["arr"]
        assert arr_got[:6] == arr_expected[:6] == [3, 2, 3, [1, 3], [1, 2, 3], 3], where
        assert arr_got[6].startswith("<SynchronizedArray wrapper for <"), where
        skip = ("arr",) if where == "fork" else ("arr", "cond_sleeping")
        assert got == {k: v for k, v in expected.items() if k not in skip}, where
        value, arr = objs[6], objs[7]
        assert value.value == 42 and arr[:] == [7, 8, 3]
    assert expected["cond_wait"] == "must acquire() condition before using wait()"
    assert expected["cond_notify"] == "lock is not owned"
    assert expected["barrier_wait_broken"] == "BrokenBarrierError" and expected["barrier_reset"] == [False, 0]


def test_reprs_name_another_thread_of_the_same_process():
    for lib in (multiprocessing, remoteproc):
        lock, rlock, held, done = lib.Lock(), lib.RLock(), threading.Event(), threading.Event()

        def hold(lock=lock, rlock=rlock, held=held, done=done):
            with lock, rlock, rlock:
                held.set()
                done.wait(10)

        t = threading.Thread(target=hold)
        t.start()
        assert held.wait(10)
        try:
            assert repr(lock) == "<Lock(owner=SomeOtherThread)>", lib
            assert repr(rlock) == "<RLock(SomeOtherThread, nonzero)>", lib
            assert rlock.acquire(timeout=0.05) is False
            with pytest.raises(AssertionError, match="not owned"):
                rlock.release()
        finally:
            done.set()
            t.join(10)
        assert repr(lock) == "<Lock(owner=None)>" and repr(rlock) == "<RLock(None, 0)>"


def test_bad_constructor_arguments_fail_as_multiprocessing_s():
    """A negative semaphore value (sem_open's EINVAL), a float queue size, a typecode ctypes lacks:
    the same error types (and words) as multiprocessing's, and nothing is created."""
    import errno

    for lib in (multiprocessing, remoteproc):
        for factory in (lib.Semaphore, lib.BoundedSemaphore):
            with pytest.raises(OSError) as info:
                factory(-1)
            assert info.value.errno == errno.EINVAL, lib
        with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
            lib.Queue(maxsize=1.5)
        with pytest.raises(TypeError, match="this type has no size"):
            lib.Value("z", 1)
        with pytest.raises(TypeError, match="this type has no size"):
            lib.Array("z", 3)
    assert remoteproc.Semaphore(0).acquire(timeout=0.01) is False


def bad_arguments(q, cond, out):
    said = []
    for call in (lambda: q.put(1, timeout="x"), lambda: q.get(timeout="x"), lambda: cond.notify("x")):
        try:
            with cond:
                call()
            said.append(None)
        except TypeError:
            said.append("TypeError")
    out.put(said)


def test_a_timeout_or_count_that_is_not_a_number_is_a_type_error_as_multiprocessing_s(host, ssh_options):
    """Found by an audit (F, minor): a bounded put with room took ``timeout='x'``, and ``notify('x')``
    with no sleeper did nothing; multiprocessing raises TypeError for both (and for a get with items)."""
    for lib in (multiprocessing, remoteproc):
        q, cond = lib.Queue(2), lib.Condition()
        q.put(0)
        out = queue.Queue()
        bad_arguments(q, cond, out)
        assert out.get() == ["TypeError"] * 3, lib
    q, cond, out = remoteproc.Queue(2), remoteproc.Condition(), remoteproc.Queue()
    q.put(0)
    p = RemoteProcess(host, target=bad_arguments, args=(q, cond, out), **ssh_options)
    p.start()
    assert out.get(timeout=60) == ["TypeError"] * 3
    p.join(30)


# -- Condition -------------------------------------------------------------------------------------------

def cond_with_lock_waiter(cond, out):
    with cond:
        out.put(("waiting", repr(cond.acquire(False))))
        out.put(("woken", cond.wait(30)))


def test_condition_over_an_explicit_lock_across_hosts(host, ssh_options):
    lock = remoteproc.Lock()
    cond, out = remoteproc.Condition(lock), Queue()
    assert repr(cond) == "<Condition(<Lock(owner=None)>, 0)>" == repr(multiprocessing.Condition(multiprocessing.Lock()))
    p = RemoteProcess(host, target=cond_with_lock_waiter, args=(cond, out), **ssh_options)
    p.start()
    assert out.get(timeout=30) == ("waiting", "False")     # a Lock is not recursive: its holder cannot take it again
    assert until(lambda: repr(cond).endswith(", 1)>"))
    with lock:                      # the lock itself is the condition's
        cond.notify()
    assert out.get(timeout=30) == ("woken", True)
    join_all([p])


def test_condition_needs_a_remoteproc_lock_of_its_own_process():
    with pytest.raises(TypeError, match="needs a remoteproc.Lock or remoteproc.RLock"):
        remoteproc.Condition(threading.Lock())
    with pytest.raises(TypeError):
        remoteproc.Condition(remoteproc.Semaphore())
    lock, out = remoteproc.Lock(), Queue()
    p = FORK.Process(target=condition_in_child, args=(lock, out))
    p.start()
    assert "must be created in the process that owns its lock" in out.get(timeout=30)
    join_all([p])


def test_a_notified_waiter_whose_timeout_passes_before_it_has_the_lock_returns_true():
    """wait(0.3) notified in time, but the notifier keeps the lock past the timeout: wait returns True
    once it holds the lock again (as multiprocessing's and threading's)."""
    for lib in (multiprocessing, remoteproc):
        cond, results = lib.Condition(), []

        def notifier(cond=cond):
            with cond:
                cond.notify()
                time.sleep(1.0)

        with cond:
            t = threading.Timer(0.05, notifier)
            t.start()
            t0 = time.monotonic()
            results.append(cond.wait(0.3))
            results.append(time.monotonic() - t0)
        t.join(10)
        assert results[0] is True and results[1] >= 0.9, (lib, results)


# -- an owner's call interrupted (KeyboardInterrupt) --------------------------------------------------------

def test_an_owner_acquire_interrupted_before_its_turn_leaves_no_waiter():
    lock, holding, done = remoteproc.Lock(), threading.Event(), threading.Event()

    def holder():
        with lock:
            holding.set()
            done.wait(20)

    t = threading.Thread(target=holder)
    t.start()
    assert holding.wait(10)
    restore = interrupt_main_once_blocked()
    try:
        with pytest.raises(Interrupted):
            lock.acquire(timeout=30)
    finally:
        restore()
        done.set()
        t.join(10)
    assert lock.acquire(False) is True      # the interrupted request was not granted later
    lock.release()
    assert repr(lock) == "<Lock(owner=None)>"


def test_an_owner_acquire_interrupted_just_after_the_grant_gives_the_lock_back():
    """The grant and the interruption cross: the lock must not stay held by a thread that saw an exception."""
    for kind in (remoteproc.Lock, remoteproc.RLock):
        lock, holding, release_it, done = kind(), threading.Event(), threading.Event(), threading.Event()

        def holder(lock=lock, holding=holding, release_it=release_it, done=done):
            lock.acquire()
            holding.set()
            release_it.wait(20)
            lock.release()
            done.set()

        t = threading.Thread(target=holder)
        t.start()
        assert holding.wait(10)
        restore = interrupt_main_once_blocked(lambda r=release_it, d=done: (r.set(), d.wait(10)))
        try:
            with pytest.raises(Interrupted):
                lock.acquire(timeout=30)
        finally:
            restore()
            release_it.set()
            t.join(10)
        assert "None" in repr(lock), repr(lock)
        assert lock.acquire(False) is True
        lock.release()


def test_an_owner_condition_wait_interrupted_holds_the_lock_again_as_multiprocessing():
    """As multiprocessing's ``finally``: the exception goes on once the waiter holds the lock again, whether
    it was still asleep or already notified."""
    for notified in (False, True):
        cond, helper_done = remoteproc.Condition(), threading.Event()
        restore = interrupt_main_once_blocked(_notify_from_a_thread(cond, helper_done) if notified else None)
        try:
            with cond:
                with pytest.raises(Interrupted):
                    cond.wait(30)
                assert repr(cond.acquire(False)) == "True"      # held: an RLock, taken once more
                cond.release()
                assert repr(cond) == "<Condition(<RLock(MainProcess, 1)>, 0)>"
        finally:
            restore()
        if notified:
            assert helper_done.wait(10)
        assert repr(cond) == "<Condition(<RLock(None, 0)>, 0)>"


# -- a child's call interrupted (KeyboardInterrupt) -----------------------------------------------------------

def test_an_interruption_right_after_the_reader_takes_the_lock_again_does_not_hang():
    """Found by an audit: two Ctrl-C 20-200 us apart hung a remote child for good in 4 of 60 tries
    (Lock.acquire, Condition.wait): the second landed in the reader's ``finally`` just after it took
    the client's lock again, so the flag "someone reads" stayed set, the reply just read was dropped,
    and the same thread's withdrawal waited for ever for a reader that was itself.  Here the lock's
    ``acquire`` raises at that very point, as the signal handler would."""
    from remoteproc.agent import proxies

    ours, owners = multiprocessing.Pipe()
    client = proxies._Client(ours, "Lock")
    take, stung = client.cond.acquire, []

    def acquire(*args):
        got = take(*args)
        if not stung:
            stung.append(True)
            raise KeyboardInterrupt
        return got

    client.cond.acquire = acquire
    ended, undone = [], []

    def child_call():
        try:
            client.call(proxies.GET, True, None, undo=lambda *reply: undone.append(reply))
        except BaseException as exc:
            ended.append(type(exc).__name__)

    caller = threading.Thread(target=child_call, daemon=True)
    caller.start()
    rid = proxies.recv_msg(owners)[0]
    proxies.send_msg(owners, (rid, proxies.OK, "item"))         # answered: the item is the child's
    caller.join(10)
    assert not caller.is_alive(), "the interrupted call hangs in its withdrawal"
    assert ended == ["KeyboardInterrupt"]
    assert proxies.recv_msg(owners) == (0, proxies.CANCEL, rid)
    assert undone == [(proxies.OK, "item")], "the item handed over goes back (undo), not lost"


def _condition_wait(cond):
    with cond:          # (its exit releases the lock: it must be held again, as multiprocessing's finally makes it)
        cond.wait()


CHILD_CALLS = {"Lock": lambda obj: obj.acquire(), "Semaphore": lambda obj: obj.acquire(),
               "Queue": lambda obj: obj.get(), "Barrier": lambda obj: obj.wait(), "Condition": _condition_wait}


def interrupted_child(kind, obj, conn, cancel_late):
    """``kind``'s blocking call, interrupted 0.5 s in; says how it ended, then lives on a while (what it
    would still hold stays held).  ``cancel_late``: its withdrawal reaches the owner that much later, after
    the parent has given it its turn (the lock, the item, the notify, the last party)."""
    from remoteproc.agent import proxies

    if cancel_late:
        send = proxies._Client.send

        def late(self, msg, send=send):
            if msg[1] == proxies.CANCEL:
                time.sleep(cancel_late)
            send(self, msg)

        proxies._Client.send = late

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, interrupt)
    conn.send("blocking")
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        CHILD_CALLS[kind](obj)
        conn.send("returned")
    except BaseException as exc:
        conn.send(type(exc).__name__)
    time.sleep(2)


def _give_the_turn(kind, obj):
    if kind in ("Lock", "Semaphore"):
        obj.release()
    elif kind == "Queue":
        obj.put("item")
    elif kind == "Condition":
        with obj:
            obj.notify()
    else:
        with pytest.raises(threading.BrokenBarrierError):   # (alone: the interrupted party has gone)
            obj.wait(0.5)


@pytest.mark.parametrize("kind", list(CHILD_CALLS))
@pytest.mark.parametrize("turn", ["before", "after"], ids=["turn after the interruption", "turn before the withdrawal"])
def test_a_child_s_call_interrupted_while_it_waits_has_done_nothing(host, ssh_options, kind, turn):
    """Found by an audit: a remote child's blocked call, interrupted (Ctrl-C), stayed with the owner: its
    lock granted later was held by the interrupted thread, a Semaphore unit or a Queue item went to it and
    was lost, a Barrier counted it as a party, a Condition's ``with`` ended on a lock given up
    (AssertionError).  As with multiprocessing, it did nothing; a turn that came before the owner
    withdrew it is given back."""
    made = {"Lock": remoteproc.Lock, "Semaphore": lambda: remoteproc.Semaphore(0), "Queue": Queue,
            "Barrier": lambda: remoteproc.Barrier(2), "Condition": remoteproc.Condition}
    obj = made[kind]()
    if kind == "Lock":
        obj.acquire()
    parent, child = remoteproc.Pipe()
    p = RemoteProcess(host, target=interrupted_child, args=(kind, obj, child, 1.5 if turn == "after" else 0),
                      **ssh_options)
    p.start()
    try:
        assert parent.poll(60) and parent.recv() == "blocking"
        if turn == "after":
            if kind == "Barrier":
                time.sleep(1.0)
                assert obj.wait(5) in (0, 1)        # (the last party: the child's wait had not gone yet)
            else:
                time.sleep(1.0)
                _give_the_turn(kind, obj)
        assert parent.poll(30), "the interrupted call never ended"
        assert parent.recv() == "KeyboardInterrupt"
        if turn == "before" and kind != "Barrier":
            _give_the_turn(kind, obj)
        # the child lives on: nothing of the call is its
        if kind == "Lock":
            assert obj.acquire(False) is True
        elif kind == "Semaphore":
            assert obj.get_value() == 1
        elif kind == "Queue":
            assert obj.get(timeout=5) == "item"
        elif kind == "Condition":
            assert obj.acquire(timeout=5) is True
        elif turn == "before":
            assert obj.n_waiting == 0
            _give_the_turn(kind, obj)
        assert p.is_alive()
    finally:
        p.join(30)
    assert p.exitcode == 0


def _notify_from_a_thread(cond, done):
    """For the signal handler: a thread notifies the main thread and keeps the lock a while."""
    def notify_and_hold():
        with cond:
            cond.notify()
            time.sleep(0.3)
        done.set()

    def before():
        threading.Thread(target=notify_and_hold).start()
        until(lambda: not _sleeping(cond), 10)
    return before


def _sleeping(cond):
    return cond._sleeping_count.get_value()


# -- a process that goes away while it waits ----------------------------------------------------------------

def test_a_child_killed_while_waiting_for_the_lock_does_not_get_it():
    lock = remoteproc.Lock()
    lock.acquire()
    a, b = FORK.Pipe()
    p = FORK.Process(target=wait_for_lock, args=(lock, b))
    p.start()
    assert a.poll(30) and a.recv() == "waiting"
    time.sleep(0.2)                 # (its request has reached the owner)
    p.kill()
    p.join(30)
    lock.release()                  # the grant to the dead child fails, or its wait is gone already
    assert lock.acquire(timeout=5) is True
    lock.release()


def test_a_notified_waiter_killed_before_it_has_the_lock_again_does_not_keep_it(host, ssh_options):
    """The waiter was moved from the condition to the lock's queue by notify(), then killed: the lock
    comes back to the owner, not to the dead process."""
    cond = remoteproc.Condition(remoteproc.Lock())
    a, b = remoteproc.Pipe()
    p = RemoteProcess(host, target=wait_on_condition, args=(cond, b), **ssh_options)
    p.start()
    b.close()
    assert a.poll(30) and a.recv() == "waiting"
    assert until(lambda: _sleeping(cond) == 1)
    with cond:
        cond.notify()               # it now waits for the lock, which we hold
        assert _sleeping(cond) == 0
        p.kill()
        p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert cond.acquire(timeout=5) is True
    assert repr(cond) == "<Condition(<Lock(owner=MainProcess)>, 0)>"
    cond.release()


# -- shared values guarded by a Semaphore; a waiting access that fails ---------------------------------------------

def test_a_value_guarded_by_a_semaphore_waits_for_it_and_a_failing_access_raises_in_the_child(host, ssh_options):
    sem = remoteproc.Semaphore(1)
    value, arr, out = remoteproc.Value("i", 5, lock=sem), remoteproc.Array("i", 3, lock=sem), Queue()
    assert value.get_lock() is sem and arr.get_lock() is sem
    with pytest.raises(IndexError) as local:
        multiprocessing.Array("i", 3, lock=multiprocessing.Semaphore(1))[10]
    sem.acquire()
    p = RemoteProcess(host, target=read_when_free, args=(value, arr, out), **ssh_options)
    p.start()
    with pytest.raises(queue.Empty):
        out.get(timeout=1.0)        # both accesses wait while the semaphore is taken
    value.get_obj().value = 7       # (the ctypes object itself: no lock)
    sem.release()
    assert out.get(timeout=30) == ("IndexError", str(local.value))
    assert out.get(timeout=30) == ("value", 7)
    join_all([p])
    assert sem.get_value() == 1


def read_value(value, out):
    out.put(value.value)


def test_a_child_s_access_waits_until_the_owner_has_released_the_rlock_entirely(host, ssh_options):
    value, out = remoteproc.Value("i", 1), Queue()
    lock = value.get_lock()
    with lock, lock:
        p = RemoteProcess(host, target=read_value, args=(value, out), **ssh_options)
        p.start()
        with pytest.raises(queue.Empty):
            out.get(timeout=1.0)
        lock.release()                  # held once more: the access still waits
        with pytest.raises(queue.Empty):
            out.get(timeout=0.3)
        value.get_obj().value = 2
        lock.acquire()
    assert out.get(timeout=30) == 2
    join_all([p])


# -- Barrier --------------------------------------------------------------------------------------------------

def test_barrier_wait_zero_breaks_it_as_threading_does():
    for lib in (multiprocessing, remoteproc):
        barrier = lib.Barrier(2)
        with pytest.raises(threading.BrokenBarrierError):
            barrier.wait(0)
        assert barrier.broken and barrier.n_waiting == 0
        barrier.reset()
        assert not barrier.broken
        assert repr(barrier).endswith(": waiters=0/2>")
        barrier.abort()
        assert repr(barrier).endswith(": broken>")       # as threading writes it
        single = lib.Barrier(1, action=failing_action)
        with pytest.raises(ValueError, match="the action failed"):
            single.wait(10)                             # the last party (here, the owner) runs the action
        assert single.broken
    b = remoteproc.Barrier(2, timeout=0.2)          # the default timeout applies
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        b.wait()
    assert time.monotonic() - t0 >= 0.15 and b.broken


def _owner_party(barrier, results, timeout=30):
    def run():
        try:
            results.append(("index", barrier.wait(timeout)))
        except threading.BrokenBarrierError:
            results.append(("BrokenBarrierError", ""))
    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_barrier_action_that_raises_breaks_the_barrier_as_threading_does(host, ssh_options):
    """The last party runs the action; its exception is raised there, the others get BrokenBarrierError."""
    expected = []
    local = threading.Barrier(2, action=failing_action)
    t = _owner_party(local, expected)
    assert until(lambda: local.n_waiting == 1)
    with pytest.raises(ValueError, match="the action failed"):
        local.wait(10)
    t.join(10)

    barrier, results, out = remoteproc.Barrier(2, action=failing_action), [], Queue()
    t = _owner_party(barrier, results)
    assert until(lambda: barrier.n_waiting == 1)
    p = RemoteProcess(host, target=barrier_last_party, args=(barrier, remoteproc.Event(), out), **ssh_options)
    p.start()
    assert out.get(timeout=30) == ("ValueError", "the action failed")
    t.join(30)
    join_all([p])
    assert results == expected == [("BrokenBarrierError", "")]
    assert barrier.broken == local.broken is True


def test_arrivals_while_the_action_runs_make_the_next_round(host, ssh_options):
    barrier, started, out, results = remoteproc.Barrier(2, action=slow_action), remoteproc.Event(), Queue(), []
    first = _owner_party(barrier, results)
    assert until(lambda: barrier.n_waiting == 1)
    p = RemoteProcess(host, target=barrier_twice, args=(barrier, started, out), **ssh_options)
    p.start()
    assert started.wait(30)         # the child is the last party: its action runs now, for a second
    started.clear()
    second = _owner_party(barrier, results)     # arrives during the action: a party of the next round
    assert out.get(timeout=30) == ("first", 1)
    first.join(30)
    assert results == [("index", 0)]
    assert out.get(timeout=30) == ("second", 1)      # it comes last again, runs the action again
    second.join(30)
    assert results == [("index", 0), ("index", 0)]
    assert started.is_set()
    join_all([p])
    assert not barrier.broken and barrier.n_waiting == 0


def test_abort_while_the_action_runs(host, ssh_options):
    """abort() during the action: the waiting parties get BrokenBarrierError; the one that ran the action
    returns its index once the action is done (as with threading, where abort waits for the action)."""
    barrier, started, out, results = remoteproc.Barrier(2, action=slow_action), remoteproc.Event(), Queue(), []
    t = _owner_party(barrier, results)
    assert until(lambda: barrier.n_waiting == 1)
    p = RemoteProcess(host, target=barrier_last_party, args=(barrier, started, out), **ssh_options)
    p.start()
    assert started.wait(30)
    barrier.abort()
    t.join(30)
    assert results == [("BrokenBarrierError", "")]
    assert out.get(timeout=30) == ("index", 1)
    join_all([p])
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken and barrier.n_waiting == 0


def test_the_process_running_the_action_dies_breaks_the_barrier(host, ssh_options):
    barrier, started, out, results = remoteproc.Barrier(2, action=dying_action), remoteproc.Event(), Queue(), []
    t = _owner_party(barrier, results)
    assert until(lambda: barrier.n_waiting == 1)
    p = RemoteProcess(host, target=barrier_last_party, args=(barrier, started, out), **ssh_options)
    p.start()
    p.join(30)
    assert p.exitcode == 0 and started.is_set()
    t.join(30)
    assert results == [("BrokenBarrierError", "")]
    assert barrier.broken


# -- a process forked from a child -------------------------------------------------------------------------

def test_a_process_forked_from_a_child_cannot_use_the_child_s_proxies():
    """Only the owner may hand its objects on: in a grandchild the reprs say "unknown" (as multiprocessing's
    do when the state cannot be read) and a call raises RuntimeError naming the way to do it."""
    objs = (remoteproc.Lock(), remoteproc.RLock(), remoteproc.Semaphore(2), remoteproc.BoundedSemaphore(2),
            remoteproc.Condition())
    r, w = FORK.Pipe(duplex=False)
    p = FORK.Process(target=use_after_second_fork, args=objs + (w,))
    p.start()
    assert r.poll(30)
    got = r.recv()
    join_all([p])
    assert got[:4] == ["<Lock(owner=unknown)>", "<RLock(unknown, unknown)>", "<Semaphore(value=unknown)>",
                       "<BoundedSemaphore(value=unknown, maxvalue=2)>"]
    assert "a process forked from it" in got[4] and "as an argument" in got[4]


# -- Value and Array: other locks, Structures, raw strings, the wrapper's lock API ----------------------------------

def test_value_and_array_with_a_lock_of_another_kind_in_the_owner():
    for lib in (multiprocessing, remoteproc):
        lock = threading.Lock()
        v, a = lib.Value("i", 1, lock=lock), lib.Array("d", [0.5, 1.5], lock=threading.RLock())
        assert v.get_lock() is lock
        v.value += 1
        a[1] = a[0] + a[1]
        with a.get_lock():
            a[0] = 4.0          # an RLock: the access takes it again
        assert (v.value, a[:], repr(v)) == (2, [4.0, 2.0], "<Synchronized wrapper for c_int(2)>"), lib
        assert not lock.locked()
        with pytest.raises(AttributeError, match="has no method 'acquire'"):
            lib.Value("i", 1, lock=42)


def test_structure_fields_raw_strings_and_the_wrapper_s_lock_api(host, ssh_options):
    results = {}
    for lib in (multiprocessing, remoteproc):
        pt = lib.Value(Point, 1, 2.0)
        pt.x = 5
        pt.y = pt.y * 2
        s = lib.Array("c", b"abc")
        s.raw = b"xy\0"
        raw_s = lib.RawArray("c", 3)
        raw_s.raw = b"pq\0"
        assert pt.acquire() is True
        pt.release()
        assert pt.acquire(False) is True        # an RLock by default
        pt.release()
        with pt:
            pt.x += 1
        with pytest.raises(AttributeError):
            pt.z        # noqa: B018
        s.value = b"q"
        ints, unlocked = lib.RawArray("i", [1, 2]), lib.Array("h", 3, lock=False)
        ints[1] += 5
        unlocked[:] = [4, 5, 6]
        assert not hasattr(unlocked, "get_lock")
        results[lib.__name__] = (pt.x, pt.y, s.value, s.raw, raw_s.value, raw_s.raw, ints[:], unlocked[:])
    assert results["remoteproc"] == results["multiprocessing"] == (6, 4.0, b"q", b"q\0\0", b"pq", b"pq\0", [1, 7],
                                                                   [4, 5, 6])

    pt, s, out = remoteproc.Value(Point, 1, 2.0), remoteproc.RawArray("c", b"ab\0"), Queue()
    p = RemoteProcess(host, target=structure_child, args=(pt, s, out), **ssh_options)
    p.start()
    x, y, rep, first, raw = out.get(timeout=30)
    join_all([p])
    assert (x, y, pt.x, pt.y) == (11, 0.5, 11, 0.5)
    assert (first, raw, s.value) == (b"AB", b"z\0\0", b"z")
    assert rep.startswith("<Synchronized wrapper for <") and "Point" in rep


# -- kill(): the process waits for nothing any more ------------------------------------------------------------

def blocked_child(kind, obj, conn):
    conn.send("blocking")
    CHILD_CALLS[kind](obj)
    conn.send("returned")       # (never: killed first)


@pytest.mark.parametrize("kind", ["Semaphore", "Queue", "Condition"])
def test_a_turn_given_right_after_kill_goes_to_a_live_waiter(host, ssh_options, kind):
    """Found by an audit: a remote child blocked in ``Semaphore(0).acquire()`` (``Queue.get()``,
    ``Condition.wait()``), then ``p.kill()`` and at once ``release()`` (``put``, ``notify``): the owner
    handed the unit (the item, the notify) to the killed child, whose wait it drops only at the EOF
    of its Connections, a round trip later: the unit was lost (5 of 5 tries), the item too, the
    notify woke nobody.  As with multiprocessing, a killed process takes nothing any more."""
    made = {"Semaphore": lambda: remoteproc.Semaphore(0), "Queue": Queue, "Condition": remoteproc.Condition}
    obj = made[kind]()
    parent, child = remoteproc.Pipe()
    p = RemoteProcess(host, target=blocked_child, args=(kind, obj, child), **ssh_options)
    p.start()
    try:
        assert parent.poll(60) and parent.recv() == "blocking"
        time.sleep(0.3)             # (its request has reached the owner)
        p.kill()
        if kind == "Condition":
            got, ready = [], threading.Event()

            def live_waiter():
                with obj:
                    ready.set()         # (the lock is ours until wait() gives it up: then it waits)
                    got.append(obj.wait(10))

            waiter = threading.Thread(target=live_waiter, daemon=True)
            waiter.start()
            assert ready.wait(5)
        _give_the_turn(kind, obj)
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        if kind == "Semaphore":
            assert obj.get_value() == 1
        elif kind == "Queue":
            assert obj.get(timeout=5) == "item"
        else:
            waiter.join(10)
            assert got == [True], "the notify went to the killed child, not to the live waiter"
    finally:
        p.kill()
        p.join(30)
