"""remoteproc.Queue, JoinableQueue, SimpleQueue and Event: in the owner, in local children, across hosts."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import sys
import threading
import time

import cloudpickle
import pytest

import remoteproc
from remoteproc import RemoteProcess
from remoteproc.owned import _broker_running
from remoteproc.queues import Event, JoinableQueue, Queue, SimpleQueue

# Targets below are shipped by value: this test module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _join_all(procs, timeout=30):
    for p in procs:
        p.join(timeout)
    assert [p.exitcode for p in procs] == [0] * len(procs), [p.exitcode for p in procs]


def _join_queue(jq, timeout=30):
    """JoinableQueue.join() has no timeout (as multiprocessing's): bound it with a thread."""
    joined = threading.Event()
    threading.Thread(target=lambda: (jq.join(), joined.set()), daemon=True).start()
    return joined.wait(timeout)


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Point:
    """Defined in the test module: travels by value (cloudpickle), not by reference."""

    def __init__(self, x, y):
        self.x, self.y = x, y


# -- targets (run remotely or in local children) --------------------------------------------------------

def produce(q, start, n, done):
    for i in range(start, start + n):
        q.put(i, timeout=20)
    done.put(("produced", os.getuid(), n))


def consume(q, out):
    got = []
    while True:
        item = q.get(timeout=20)
        if item is None:
            break
        got.append(item)
    out.put(("consumed", os.getuid(), got))


def timeouts(q, out):
    t0 = time.monotonic()
    try:
        q.get(timeout=0.3)
    except queue.Empty:
        out.put(("empty", time.monotonic() - t0))
    try:
        q.get_nowait()
    except queue.Empty:
        out.put(("empty_nowait", 0))
    q.put("a")
    q.put("b")
    try:
        q.put("c", timeout=0.3)     # maxsize=2: full
    except queue.Full:
        out.put(("full", q.qsize(), q.full()))
    try:
        q.put_nowait("c")
    except queue.Full:
        out.put(("full_nowait", 0))
    t0 = time.monotonic()
    q.put("c", timeout=20)          # blocks until the parent takes one
    out.put(("unblocked", time.monotonic() - t0))


def joinable_worker(jq, out):
    n = 0
    while True:
        item = jq.get(timeout=20)
        if item is None:
            jq.task_done()
            break
        time.sleep(0.001)
        n += 1
        jq.task_done()
    out.put(n)


def task_done_too_often(jq, out):
    try:
        jq.task_done()
    except ValueError as exc:
        out.put(str(exc))


def event_waiter(ev, ready, out, name):
    ready.put(name)
    t0 = time.monotonic()
    flag = ev.wait(30)
    out.put((name, flag, os.getuid(), time.monotonic() - t0))


def event_setter(ev, ready, n):
    for _ in range(n):
        ready.get(timeout=20)
    time.sleep(0.2)
    ev.set()


def event_short_wait(ev, out):
    t0 = time.monotonic()
    out.put((ev.wait(0.3), ev.is_set(), time.monotonic() - t0))
    ev.set()
    out.put(ev.is_set())
    ev.clear()
    out.put(ev.is_set())


def send_points(q):
    q.put(Point(1, 2))
    q.put(lambda v: v + 1)


def echo_simple(inq, outq):
    outq.put(("echo", inq.get(), inq.empty()))


def two_threads(q, out):
    """One thread blocks in get() while another put()s through the same proxy and Connection."""
    got = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=20)))
    t.start()
    time.sleep(0.2)
    q.put("from the other thread", timeout=20)     # bounded queue: a request with a reply
    t.join(30)
    out.put(got)


def local_child(q, ev, out):
    ev.wait(10)
    out.put(sum(q.get(timeout=10) for _ in range(3)))


# -- in the owner alone ----------------------------------------------------------------------------

@pytest.mark.timeout(20)
def put_close_join_then_say(q, conn, n):
    for i in range(n):
        q.put(i)
    q.close()
    q.join_thread()     # (multiprocessing's: the feeder thread has flushed every item)
    conn.send("flushed")


def test_join_thread_returns_once_the_items_are_in_the_queue(host, ssh_options):
    """Found by an audit (F3): after ``put``, ``close()`` and ``join_thread()`` a child's items are in
    the queue, as multiprocessing's feeder thread has flushed them; join_thread() did nothing, and a
    message the child sent next on a Pipe could come first."""
    from multiprocessing import Pipe

    q = Queue()
    for _ in range(3):
        a, b = Pipe()
        p = RemoteProcess(host, target=put_close_join_then_say, args=(q, b, 50), **ssh_options)
        p.start()
        b.close()
        assert a.poll(60) and a.recv() == "flushed"
        assert [q.get_nowait() for _ in range(50)] == list(range(50))
        p.join(30)
        assert p.exitcode == 0


def test_owner_semantics_with_threads():
    q = Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    threading.Timer(0.2, q.get).start()
    q.put(3, timeout=10)            # released by the Timer's get
    assert [q.get(), q.get()] == [2, 3]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    q.close()
    with pytest.raises(ValueError):
        q.put(1)

    jq = JoinableQueue()
    for i in range(3):
        jq.put(i)
    joined = threading.Event()
    threading.Thread(target=lambda: (jq.join(), joined.set()), daemon=True).start()
    for _ in range(3):
        jq.get()
        assert not joined.wait(0.05)
        jq.task_done()
    assert joined.wait(5)
    with pytest.raises(ValueError, match="too many times"):
        jq.task_done()

    ev = Event()
    assert not ev.is_set() and ev.wait(0.05) is False
    threading.Timer(0.1, ev.set).start()
    assert ev.wait(10) is True and ev.is_set()
    ev.clear()
    assert not ev.is_set()


@pytest.mark.timeout(20)
def test_only_process_arguments_or_inheritance():
    q = Queue()
    with pytest.raises(RuntimeError, match="process arguments"):
        pickle.dumps(q)
    with pytest.raises(RuntimeError):
        q.put(Event())
    r, w = multiprocessing.Pipe()
    with pytest.raises(TypeError, match="Connection"):
        q.put({"conn": r})
    r.close()
    w.close()


# -- local multiprocessing children ---------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_local_children(method):
    ctx = multiprocessing.get_context(method)
    q, out, ev = Queue(), Queue(), Event()
    p = ctx.Process(target=local_child, args=(q, ev, out))
    p.start()
    for i in (1, 2, 3):
        q.put(i)
    ev.set()
    assert out.get(timeout=30) == 6
    p.join(30)
    assert p.exitcode == 0

    jq, res = JoinableQueue(), Queue()
    workers = [ctx.Process(target=joinable_worker, args=(jq, res)) for _ in range(2)]
    for w in workers:
        w.start()
    for i in range(50):
        jq.put(i)
    jq.put(None)
    jq.put(None)
    assert _join_queue(jq)
    assert res.get(timeout=10) + res.get(timeout=10) == 50
    _join_all(workers)


# -- across hosts ------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_producer_consumer_across_two_hosts(host, ssh_options, plain_user_host, plain_user_options):
    q = Queue(maxsize=5)
    out = Queue()
    producers = [RemoteProcess(host, target=produce, args=(q, 0, 300, out), **ssh_options),
                 RemoteProcess(plain_user_host, target=produce, args=(q, 300, 300, out), **plain_user_options)]
    consumers = [RemoteProcess(plain_user_host, target=consume, args=(q, out), **plain_user_options),
                 RemoteProcess(host, target=consume, args=(q, out), **ssh_options)]
    for p in producers + consumers:
        p.start()
    produced = [out.get(timeout=30), out.get(timeout=30)]
    assert sorted(m[0] for m in produced) == ["produced", "produced"]
    assert len({m[1] for m in produced}) == 2          # one producer per account (host)
    assert q.qsize() <= 5
    q.put(None)
    q.put(None)
    consumed = [out.get(timeout=30), out.get(timeout=30)]
    items = sorted(i for m in consumed for i in m[2])
    assert items == list(range(600))                   # nothing lost, nothing twice
    for m in consumed:                                  # each producer's items stay in order
        assert [i for i in m[2] if i < 300] == sorted(i for i in m[2] if i < 300)
        assert [i for i in m[2] if i >= 300] == sorted(i for i in m[2] if i >= 300)
    _join_all(producers + consumers)
    assert _wait_for(lambda: not _broker_running()), "the server thread outlived its children"


@pytest.mark.timeout(60)
def test_timeouts_and_maxsize_blocking_remotely(host, ssh_options):
    q, out = Queue(maxsize=2), Queue()
    p = RemoteProcess(host, target=timeouts, args=(q, out), **ssh_options)
    p.start()
    kind, waited = out.get(timeout=20)
    assert kind == "empty" and 0.25 <= waited < 5
    assert out.get(timeout=20)[0] == "empty_nowait"
    assert out.get(timeout=20) == ("full", 2, True)
    assert out.get(timeout=20)[0] == "full_nowait"
    time.sleep(0.3)
    assert q.get(timeout=5) == "a"                      # makes room: the blocked put goes through
    kind, waited = out.get(timeout=20)
    assert kind == "unblocked" and waited >= 0.25
    assert [q.get(timeout=5), q.get(timeout=5)] == ["b", "c"]
    _join_all([p])


@pytest.mark.timeout(60)
def test_joinable_queue_join_across_hosts(host, ssh_options, plain_user_host, plain_user_options):
    jq, out = JoinableQueue(), Queue()
    workers = [RemoteProcess(host, target=joinable_worker, args=(jq, out), **ssh_options),
               RemoteProcess(plain_user_host, target=joinable_worker, args=(jq, out), **plain_user_options)]
    for w in workers:
        w.start()
    for i in range(200):
        jq.put(i)
    assert _join_queue(jq), "JoinableQueue.join() did not return once every task was done"
    assert jq.empty()
    jq.put(None)
    jq.put(None)
    assert out.get(timeout=20) + out.get(timeout=20) == 200
    _join_all(workers)
    assert _join_queue(jq, 10)      # every task_done() came back, sentinels included

    p = RemoteProcess(host, target=task_done_too_often, args=(jq, out), **ssh_options)
    p.start()
    assert "too many times" in out.get(timeout=20)
    _join_all([p])


@pytest.mark.timeout(60)
def test_event_set_on_one_host_releases_waiters_on_another(host, ssh_options, plain_user_host,
                                                            plain_user_options):
    ev, ready, out = Event(), Queue(), Queue()
    waiters = [RemoteProcess(plain_user_host, target=event_waiter, args=(ev, ready, out, "w%d" % i),
                             **plain_user_options) for i in range(2)]
    waiters.append(RemoteProcess(host, target=event_waiter, args=(ev, ready, out, "local-account"),
                                 **ssh_options))
    setter = RemoteProcess(host, target=event_setter, args=(ev, ready, 3), **ssh_options)
    for p in waiters + [setter]:
        p.start()
    results = sorted(out.get(timeout=30) for _ in range(3))
    assert [r[0] for r in results] == ["local-account", "w0", "w1"]
    assert all(r[1] is True for r in results)
    assert all(r[3] >= 0.15 for r in results)          # they did wait for the set
    assert ev.is_set()
    _join_all(waiters + [setter])

    ev.clear()
    p = RemoteProcess(plain_user_host, target=event_short_wait, args=(ev, out), **plain_user_options)
    p.start()
    flag, is_set, waited = out.get(timeout=20)
    assert flag is False and is_set is False and 0.25 <= waited < 5
    assert out.get(timeout=20) is True
    assert out.get(timeout=20) is False
    _join_all([p])


@pytest.mark.timeout(60)
def test_items_travel_by_value_and_simple_queue(host, ssh_options):
    q = Queue()
    p = RemoteProcess(host, target=send_points, args=(q,), **ssh_options)
    p.start()
    point = q.get(timeout=20)
    assert isinstance(point, Point)
    assert (point.x, point.y) == (1, 2)
    assert q.get(timeout=20)(41) == 42
    _join_all([p])

    inq, outq = SimpleQueue(), SimpleQueue()
    p = RemoteProcess(host, target=echo_simple, args=(inq, outq), **ssh_options)
    p.start()
    inq.put({"x": 1})
    assert outq.get() == ("echo", {"x": 1}, True)
    assert outq.empty()
    _join_all([p])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("factory,alternative", [
    (lambda: multiprocessing.Queue(), "remoteproc.Queue"),
    (lambda: multiprocessing.JoinableQueue(), "remoteproc.JoinableQueue"),
    (lambda: multiprocessing.SimpleQueue(), "remoteproc.SimpleQueue"),
    (lambda: multiprocessing.Event(), "remoteproc.Event"),
])
def test_plain_multiprocessing_objects_are_refused(factory, alternative):
    obj = factory()
    # The host does not exist: reaching the network would raise ConnectError instead.
    p = RemoteProcess("nobody@host.invalid", target=print, args=(obj,))
    with pytest.raises(remoteproc.PicklingError) as info:
        p.start()
    assert alternative in str(info.value)
    assert "host.invalid" in str(info.value)


@pytest.mark.timeout(30)
def test_threads_of_one_child_share_its_proxy(host, ssh_options):
    q, out = Queue(maxsize=3), Queue()
    p = RemoteProcess(host, target=two_threads, args=(q, out), **ssh_options)
    p.start()
    assert out.get(timeout=20) == ["from the other thread"]
    _join_all([p])


@pytest.mark.timeout(30)
def test_a_proxy_cannot_be_passed_on(host, ssh_options):
    def pass_on(q, out):
        try:
            pickle.dumps(q)
        except TypeError as exc:
            out.put(str(exc))

    q, out = Queue(), Queue()
    p = RemoteProcess(host, target=pass_on, args=(q, out), **ssh_options)
    p.start()
    assert "cannot be passed on" in out.get(timeout=20)
    _join_all([p])


def test_a_spawner_collected_while_its_thread_holds_the_broker_lock_does_not_deadlock():
    """The garbage collector may run the spawner's finalizer in any thread, even one inside the
    broker's lock (which is not reentrant): the release is handed to the broker's thread."""
    import gc
    from multiprocessing import Pipe

    from remoteproc import owned

    broker = owned._Broker()        # (private: no public way to hold the broker's lock)
    ours, theirs = Pipe()

    class Spawner:
        pass

    class Owned:        # what the broker needs of an owned object when a connection ends
        _lock = threading.Lock()

        def _forget(self, conn):
            pass

    spawner = Spawner()
    broker.add(ours, Owned(), child_end=theirs, spawner=spawner)
    done = threading.Event()

    def collect_inside_the_lock():
        nonlocal spawner
        with broker.lock:
            del spawner
            gc.collect()        # the finalizer runs here, in a thread that holds the lock
        done.set()

    worker = threading.Thread(target=collect_inside_the_lock, daemon=True)
    worker.start()
    assert done.wait(10), "the finalizer deadlocked on the broker's lock"
    deadline = time.monotonic() + 10
    while not theirs.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert theirs.closed, "the broker's thread never released the child's end"
    with broker.lock:
        broker.objs.clear()
        thread = broker.thread
    broker.wake()
    if thread is not None:
        # (it may be dropping our end, which reached EOF with theirs: closed by both at once, one
        # close met EBADF now and then)
        thread.join(10)
        assert not thread.is_alive()
    ours.close()
