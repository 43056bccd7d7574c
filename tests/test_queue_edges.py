"""Edges of remoteproc's Queue, JoinableQueue, SimpleQueue and Event as a user meets them, next to
multiprocessing's where the two can be compared.

Covered: the whole API through a proxy in a forked local child and in a remote child (``qsize``/``empty``/
``full``, ``put_nowait``/``get_nowait``, timeouts, an unpicklable item reported and dropped, ``task_done``
too often, ``join``, ``close`` then use, Event ``set``/``clear``/``is_set``/``wait``); an owner's ``get``,
``Event.wait`` and ``JoinableQueue.join`` interrupted by an exception (an item handed over just then goes
back in front); an item handed to a getter that has died is kept; the owner going away (``OwnerGone`` for
the blocked call and the later ones); passing an inherited queue on from a child; ``join()`` bounded when a
grandchild keeps the child's Connection open; a fork that cannot get a Connection (no fds left); a queue
shared with a spawn-mode (other Python) host dropping an item that cannot be pickled by reference; and
SimpleQueue's own ways (no feeder thread: an unpicklable item raises in ``put``; closed, it raises
``OSError``; a forked child uses it).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import cloudpickle
import owner_calls
import pytest
from owner_calls import Interrupted, every_call_in, interrupt_main_once_blocked, join_all, until

import remoteproc
from remoteproc import RemoteProcess
from remoteproc.queues import Event, JoinableQueue, Queue, SimpleQueue

# Targets below are shipped by value: this test module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(owner_calls)     # (its helpers run in remote targets too)

pytestmark = [pytest.mark.timeout(90), pytest.mark.one_transport]     # (owner-side logic, alike on both)

FORK = multiprocessing.get_context("fork")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- targets --------------------------------------------------------------------------------------------

def every_call(q, jq, sq, ev, out):
    res = {}
    res["q"] = [q.empty(), q.qsize(), q.full()]
    q.put_nowait(1)
    q.put(2, timeout=5)
    res["q"] += [until(lambda: not q.empty(), 5), q.qsize(), q.full()]    # (multiprocessing's empty() lags)
    for name, call in (("put_nowait", lambda: q.put_nowait(3)), ("put_timeout", lambda: q.put(3, timeout=0.05)),
                       ("put_noblock", lambda: q.put(3, False))):
        try:
            call()
            res[name] = "no error"
        except queue.Full:
            res[name] = "Full"
    res["got"] = [q.get_nowait(), q.get(timeout=5)]
    for name, call in (("get_nowait", q.get_nowait), ("get_timeout", lambda: q.get(timeout=0.05))):
        try:
            call()
            res[name] = "no error"
        except queue.Empty:
            res[name] = "Empty"
    q.put(threading.Lock())         # cannot be pickled: reported on stderr and dropped, put returns
    q.put("after", timeout=5)
    res["after_bad"] = q.get(timeout=5)
    q.cancel_join_thread()
    jq.put("job")
    res["jq"] = [jq.get(timeout=5), jq.task_done(), jq.join(), jq.empty()]
    try:
        jq.task_done()
    except ValueError as exc:
        res["task_done_too_often"] = str(exc)
    if sq is not None:
        res["sq"] = [sq.empty()]
        sq.put("s")
        res["sq"] += [until(lambda: not sq.empty(), 5), sq.get(), sq.empty()]
        try:
            sq.put(threading.Lock())    # (no feeder thread: it raises here, as multiprocessing's)
        except TypeError:
            res["sq"].append("TypeError")
        sq.close()
        sq.close()
    res["ev"] = [ev.is_set(), ev.wait(0), ev.wait(0.05)]
    ev.set()
    res["ev"] += [ev.is_set(), ev.wait(0), ev.wait(5)]
    ev.clear()
    res["ev"] += [ev.is_set(), ev.wait(0.01)]
    q.close()
    q.join_thread()             # (multiprocessing's asserts that the queue is closed)
    try:
        q.put(4)
        res["put_after_close"] = "no error"
    except ValueError as exc:
        words = str(exc)
        res["put_after_close"] = "ValueError" if words.startswith("Queue <") and "is closed" in words else words
    q2 = jq                         # closed, a queue still answers qsize and full (multiprocessing's
    q2.put("x")                     # empty() then answers or not, depending on its feeder thread)
    until(lambda: not q2.empty(), 5)
    q2.close()
    res["after_close"] = [q2.qsize(), q2.full()]
    out.put(res)


def make_all(lib):
    return lib.Queue(2), lib.JoinableQueue(), lib.SimpleQueue(), lib.Event()


def get_forever(q, conn):
    conn.send("getting")
    q.get(timeout=60)


def owner_that_leaves(report):
    """A process that owns a queue, hands it to a child of its own, then goes away."""
    q = Queue(maxsize=5)
    a, b = FORK.Pipe()
    child = FORK.Process(target=orphan, args=(q, b, report))
    child.start()
    a.recv()                    # the orphan is about to block in get()
    time.sleep(0.3)
    os._exit(0)


def orphan(q, conn, report):
    res = []
    conn.send("getting")
    for name, call in (("get", lambda: q.get(timeout=60)), ("qsize", q.qsize), ("put", lambda: q.put(1))):
        try:
            call()
            res.append((name, "no error"))
        except Exception as exc:
            res.append((name, type(exc).__name__, isinstance(exc, EOFError), str(exc)))
    report.put(res)


def pass_it_on(q, host, report):
    res = []
    try:
        RemoteProcess(host, target=print, args=(q,)).start()
        res.append("no error")
    except remoteproc.PicklingError as exc:
        res.append(str(exc))
    try:
        multiprocessing.get_context("spawn").Process(target=print, args=(q,)).start()
        res.append("no error")
    except remoteproc.PicklingError as exc:
        res.append(str(exc))
    report.put(res)


def leave_a_grandchild(q, seconds):
    q.put("hello")
    if os.fork() == 0:          # keeps a copy of the queue's Connection open
        time.sleep(seconds)
        os._exit(0)


# -- the whole API through a proxy ------------------------------------------------------------------------------

def test_every_call_in_forked_and_remote_children_matches_multiprocessing(host, ssh_options, capfd):
    expected_out = multiprocessing.Queue()
    p = FORK.Process(target=every_call, args=make_all(multiprocessing) + (expected_out,))
    p.start()
    expected = expected_out.get(timeout=30)
    join_all([p])
    assert expected["jq"] == ["job", None, None, True]
    assert expected["task_done_too_often"] == "task_done() called too many times"
    for where in ("fork", "remote"):
        objs = make_all(remoteproc)
        got = every_call_in(where, every_call, objs, host, ssh_options)
        assert got == expected, where
        q, jq, sq, ev = objs
        assert jq.get(timeout=5) == "x"     # (what the child left behind its close())
        assert q.empty() and jq.empty() and sq.empty() and not ev.is_set()
    err = capfd.readouterr().err
    assert err.count("cannot pickle '_thread.lock' object") >= 3, err    # each run reported it, as multiprocessing does


def wait_long(ev, lock, out):
    out.put(("event", ev.wait(30 * 86400)))                  # (past epoll's 2**31 ms)
    out.put(("lock", lock.acquire(timeout=float("inf"))))
    ev.clear()                      # (a set Event answers wait() at once, whatever its timeout, as threading's)
    for call in (lambda: ev.wait(float("nan")), lambda: lock.acquire(timeout=float("nan"))):
        try:
            call()
        except ValueError as exc:
            out.put(("nan", str(exc)))


def bystander(q, out):
    out.put(("bystander", q.get(timeout=60)))


def test_a_child_s_wait_of_30_days_leaves_the_owner_serving_every_other_child(host, ssh_options):
    """Found by a new user's audit: ``ev.wait(30 days)`` in a remote child made the owner's server
    thread wait that long in epoll, which refuses it (OverflowError): the thread failed and every
    Queue, Lock and Event of the program disconnected its children. A NaN timeout hung."""
    ev, lock, q, out = remoteproc.Event(), remoteproc.Lock(), remoteproc.Queue(), remoteproc.Queue()
    lock.acquire()
    waiter = RemoteProcess(host, target=wait_long, args=(ev, lock, out), **ssh_options)
    other = RemoteProcess(host, target=bystander, args=(q, out), **ssh_options)
    waiter.start()
    other.start()
    time.sleep(0.5)                 # (both blocked at the owner; the bound below holds either way)
    q.put("for the bystander")
    assert out.get(timeout=30) == ("bystander", "for the bystander")
    ev.set()
    assert out.get(timeout=30) == ("event", True)
    lock.release()
    assert out.get(timeout=30) == ("lock", True)
    nan = [out.get(timeout=30), out.get(timeout=30)]
    assert nan == [("nan", "timeout is NaN: give a number of seconds, or None to wait without one")] * 2
    join_all([waiter, other])
    assert (waiter.exitcode, other.exitcode) == (0, 0)


# -- an owner's call interrupted (KeyboardInterrupt) ---------------------------------------------------------------

def test_an_owner_get_interrupted_just_after_an_item_was_handed_over_puts_it_back_in_front():
    q = Queue()
    restore = interrupt_main_once_blocked(lambda: q.put("handed over"))
    try:
        with pytest.raises(Interrupted):
            q.get(timeout=30)
    finally:
        restore()
    q.put("second")
    assert [q.get_nowait(), q.get_nowait()] == ["handed over", "second"]


def test_owner_calls_interrupted_while_waiting_leave_no_ghost_waiter():
    q, ev, jq = Queue(), Event(), JoinableQueue()
    jq.put(1)
    for call in (lambda: q.get(timeout=30), lambda: ev.wait(30), jq.join):
        restore = interrupt_main_once_blocked()
        try:
            with pytest.raises(Interrupted):
                call()
        finally:
            restore()
    q.put("kept")
    assert q.get_nowait() == "kept"         # not given to the interrupted get
    ev.set()
    assert ev.wait(0) is True
    jq.get_nowait()
    jq.task_done()
    jq.join()                               # returns: nothing left unfinished


# -- children and owners that go away ---------------------------------------------------------------------------

def test_an_item_handed_to_a_getter_that_has_died_stays_in_the_queue():
    q = Queue()
    a, b = FORK.Pipe()
    p = FORK.Process(target=get_forever, args=(q, b))
    p.start()
    assert a.poll(30) and a.recv() == "getting"
    time.sleep(0.2)                 # (its get has reached the owner)
    p.kill()
    p.join(30)
    q.put("not lost")               # the send to the dead getter fails, or its get is gone already
    assert q.get(timeout=5) == "not lost"


def test_when_the_owner_goes_away_a_blocked_call_and_the_later_ones_raise_owner_gone():
    report = multiprocessing.Queue()
    p = FORK.Process(target=owner_that_leaves, args=(report,))
    p.start()
    got = report.get(timeout=30)
    join_all([p])
    names = [r[0] for r in got]
    assert names == ["get", "qsize", "put"]
    for name, kind, is_eof, text in got:
        assert kind == "OwnerGone" and is_eof, (name, kind)
        assert "the process that owns this Queue went away" in text


def test_a_child_cannot_pass_an_inherited_queue_on():
    """Only the owner hands its objects to processes (docs: "from the owner only")."""
    q, report = Queue(), multiprocessing.Queue()
    p = FORK.Process(target=pass_it_on, args=(q, "nobody@host.invalid", report))
    p.start()
    to_remote, to_spawned = report.get(timeout=30)
    join_all([p])
    assert "belongs to process %d" % os.getpid() in to_remote and "host.invalid" in to_remote
    assert "a remote process" in to_remote
    assert "belongs to process %d" % os.getpid() in to_spawned and "a child process" in to_spawned


def test_join_is_bounded_when_a_grandchild_keeps_the_connection_open(host, ssh_options):
    """join() waits for the owner to let go of the child's Connections, but not for a grandchild that keeps a
    copy of one open: it returns after about a second (docs: "up to 1 s")."""
    q = Queue()
    p = RemoteProcess(host, target=leave_a_grandchild, args=(q, 4), **ssh_options)
    p.start()
    assert q.get(timeout=30) == "hello"
    assert until(lambda: not p.is_alive(), 30)
    t0 = time.monotonic()
    p.join(30)
    took = time.monotonic() - t0
    assert p.exitcode == 0
    assert took < 3.5, took
    q.put("still usable")
    assert q.get(timeout=5) == "still usable"


FORK_WITHOUT_FDS = r"""
import json, os, resource, sys
import remoteproc

q, lock = remoteproc.Queue(), remoteproc.Lock()
r, w = os.pipe()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))      # no fd left for the fork's Pipe()
pid = os.fork()
if pid == 0:
    res = []
    for call in (lambda: q.put(1), lambda: lock.acquire(False)):
        try:
            call()
            res.append("no error")
        except RuntimeError as exc:
            res.append(str(exc))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    os.write(w, json.dumps(res).encode())
    os._exit(0)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
os.close(w)
os.waitpid(pid, 0)
data = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    data += chunk
q.put("the owner goes on")
print(json.dumps([json.loads(data), q.get(timeout=5)]))
"""


def test_a_child_forked_when_no_fd_was_left_gets_a_clear_error():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", FORK_WITHOUT_FDS], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    (queue_error, lock_error), owner = json.loads(done.stdout.strip().splitlines()[-1])
    assert owner == "the owner goes on"
    for text, kind in ((queue_error, "Queue"), (lock_error, "Lock")):
        assert "this %s could not be connected to its owner" % kind in text
        assert "pass it to the child as a process argument instead" in text


# -- a spawn-mode host (another Python) -------------------------------------------------------------------------

class RefusesToBePickled:
    def __reduce__(self):
        raise ValueError("not today")


def test_a_queue_shared_with_another_python_drops_an_item_that_cannot_be_pickled(
        plain_user_host, plain_user_options, capfd):
    if shutil.which("pypy3") is None:
        pytest.skip("pypy3 (a second Python) is not installed")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import spawn_targets

    q_in, q_out = Queue(), Queue()
    p = RemoteProcess(plain_user_host, target=spawn_targets.echo_from_queue, args=(q_in, q_out), python="pypy3",
                      **plain_user_options)
    p.start()
    q_in.put(RefusesToBePickled())          # reported and dropped, as multiprocessing's feeder does
    q_in.put(spawn_targets.Point(3))
    got = q_out.get(timeout=60)
    join_all([p])
    assert isinstance(got, spawn_targets.Point) and got.x == 3
    assert "ValueError: not today" in capfd.readouterr().err
    assert p._popen.mode == "spawn"


def simple_queue_calls(sq, out):
    res = []
    for name, call in (("put", lambda: sq.put("from the child")), ("empty", sq.empty), ("get", sq.get)):
        try:
            res.append((name, call()))
        except Exception as exc:
            res.append((name, "%s: %s" % (type(exc).__name__, exc)))
    out.put(res)


def test_simple_queue_in_a_forked_child_works_as_multiprocessing_s():
    results = []
    for lib in (multiprocessing, remoteproc):
        sq, out = lib.SimpleQueue(), multiprocessing.Queue()
        sq.put("from the parent")
        p = FORK.Process(target=simple_queue_calls, args=(sq, out))
        p.start()
        got = out.get(timeout=30)
        join_all([p])
        results.append(got)
        assert sq.get() == "from the child" if got[0] == ("put", None) else True
    assert results[1] == results[0] == [("put", None), ("empty", False), ("get", "from the parent")]


# -- differences from multiprocessing's SimpleQueue ---------------------------------------------------------

def test_simple_queue_put_of_an_unpicklable_item_raises_as_multiprocessing():
    with pytest.raises(TypeError):
        multiprocessing.SimpleQueue().put(threading.Lock())
    sq = SimpleQueue()
    try:
        with pytest.raises(TypeError):
            sq.put(threading.Lock())
    finally:
        assert sq.empty()


def test_a_closed_simple_queue_raises_what_multiprocessing_s_raises():
    errors = []
    for sq in (multiprocessing.SimpleQueue(), SimpleQueue()):
        sq.close()
        try:
            sq.put(1)
        except Exception as exc:
            errors.append(type(exc))
    assert errors == [OSError, OSError]


def test_a_simple_queue_has_what_multiprocessing_s_has_in_owner_and_children():
    """Found by a docs audit: the owner's SimpleQueue had Queue's qsize, full, put_nowait (a
    TypeError), get_nowait (a TypeError), join_thread and cancel_join_thread, which a child's and
    multiprocessing's have not."""
    extra = ["qsize", "full", "put_nowait", "get_nowait", "join_thread", "cancel_join_thread"]
    local = multiprocessing.SimpleQueue()
    ours = SimpleQueue()
    ours.put(1)
    assert [n for n in extra if hasattr(local, n)] == [] == [n for n in extra if hasattr(ours, n)]
    assert [n for n in ("put", "get", "empty", "close") if not hasattr(ours, n)] == []
    assert ours.get() == 1 and ours.empty()


# -- task_done(): without waiting for an item of one's own, with the owner's answer otherwise ----------------

def get_some(jq, n, out):
    out.put([jq.get(timeout=20) for _ in range(n)])


def done_for_others(jq, n, out):
    """task_done() for items another process got: each one waits for the owner, which may say too many."""
    res = []
    for _ in range(n + 1):
        try:
            jq.task_done()
            res.append("ok")
        except ValueError as exc:
            res.append(str(exc))
    out.put(res)


def get_done_join(jq, n, out):
    for _ in range(n):
        jq.get(timeout=20)
        jq.task_done()
    jq.join()                       # this process's task_done()s reach the owner before its join()
    out.put("joined")


def test_task_done_for_items_of_another_process_is_counted_and_one_too_many_raises(host, ssh_options):
    jq, out = JoinableQueue(), Queue()
    for i in range(3):
        jq.put(i)
    getter = RemoteProcess(host, target=get_some, args=(jq, 3, out), **ssh_options)
    getter.start()
    assert sorted(out.get(timeout=30)) == [0, 1, 2]
    join_all([getter])
    doer = RemoteProcess(host, target=done_for_others, args=(jq, 3, out), **ssh_options)
    doer.start()
    assert out.get(timeout=30) == ["ok", "ok", "ok", "task_done() called too many times"]
    join_all([doer])
    jq.join()                       # returns: the three were counted


def test_a_childs_own_task_done_calls_are_counted_before_its_join(host, ssh_options):
    jq, out = JoinableQueue(), Queue()
    for i in range(200):
        jq.put(i)
    p = RemoteProcess(host, target=get_done_join, args=(jq, 200, out), **ssh_options)
    p.start()
    assert out.get(timeout=60) == "joined"
    join_all([p])
    with pytest.raises(ValueError, match="too many times"):
        jq.task_done()
