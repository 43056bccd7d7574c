"""A process that stalls in the middle of a message stalls only itself, never the owner's broker.

One server thread in the owner serves every Queue, Lock, Event ... of the program to every
process they were given to.  It used to read each request with a blocking
``Connection.recv_bytes`` once a Connection was readable, and to answer with blocking sends:
one attached process that had sent part of a request and then stopped (SIGSTOP, a link that
stalls mid-frame), or that stopped reading a big answer, stopped every Queue and Lock of the
program.  Here such processes write multiprocessing's frames by hand, cut where it hurts
(inside a length, inside a pickle, between a request and its out-of-band item, inside a
-1 long header), while other processes use the same and other objects with bounded waits.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest
from proctable import eventually, state

import remoteproc
from remoteproc import Event, Lock, Queue, RemoteProcess
from remoteproc.agent import proxies as P

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")]

fork = multiprocessing.get_context("fork")
WAIT = 20.0         # bound of every wait that must succeed
BIG = 300 * 1024    # a request bigger than 64 KiB: its item travels as a frame of its own


# -- multiprocessing's framing, written by hand ----------------------------------------------------

def _frames(msg, long: bool = False, mod=P) -> list[bytes]:
    """The frames ``Connection.send_bytes`` writes for ``mod.send_msg(conn, msg)``: a 4-byte
    big-endian length, or (``long``) -1 and an 8-byte length, as CPython 3.8+ frames 2 GiB."""
    sent: list = []

    class Collect:
        def send_bytes(self, buf):
            sent.append(bytes(buf))

    mod.send_msg(Collect(), msg)
    return [(struct.pack("!iQ", -1, len(b)) if long else struct.pack("!i", len(b))) + b for b in sent]


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _put_request(proxy, obj, long: bool = False, mod=P) -> list[bytes]:
    """The frames of an unbounded ``proxy.put(obj)`` (no reply)."""
    return _frames((0, mod.PUT, mod.dumps_queued(proxy, obj), False, None), long, mod)


# where a stalled writer stops: (the request's object, long header?, bytes written before the stop)
CUTS = {
    "in the length": ("small", False, 2),
    "in the pickle": ("small", False, 9),
    "between request and item": ("big", False, None),       # (the whole first frame)
    "in a long header": ("big", True, -6),                   # (6 bytes into the item's 12-byte header)
    "in the item": ("big", True, 100 * 1024),                # (100 KiB into the item)
}


def _stall_mid_request(q, ctl, cut: str) -> None:
    """Forked child: write part of a put request, say so, stop; when continued, the rest."""
    kind, long, where = CUTS[cut]
    proxy = q._proxy
    fd = proxy._client.conn.fileno()
    obj = ("stalled", cut) if kind == "small" else os.urandom(BIG)
    frames = _put_request(proxy, obj, long)
    data = b"".join(frames)
    if where is None:
        where = len(frames[0])
    elif where < 0:
        where = len(frames[0]) - where
    elif kind == "big":
        where = len(frames[0]) + 12 + where
    assert 0 < where < len(data)
    _write(fd, data[:where])
    ctl.send(hashlib.sha256(pickle.dumps(obj)).hexdigest())
    os.kill(os.getpid(), signal.SIGSTOP)
    _write(fd, data[where:])
    q.put("after")          # (the same Connection, after the stalled request)
    ctl.send("done")


def _use_others(q, other, lock, ev, ctl) -> None:
    """Forked child: the same Queue and other objects, each call bounded by the owner's timeout."""
    try:
        for i in range(20):
            with lock:
                q.put(("user", i))
            other.put(i)
            assert other.get(timeout=WAIT) == i
        assert lock.acquire(timeout=WAIT)
        lock.release()
        ev.set()
        ctl.send("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        ctl.send(repr(exc))


def _reap(*procs) -> None:
    """Kill (by pid) what a failed test left running, continue the stopped, join all."""
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        p.join(10)


def _broker_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "remoteproc" and r.levelno >= logging.ERROR]


def _check_users_served(q, ev, user, ctl_user) -> None:
    """The user child's 20 rounds went through while the staller stalled."""
    assert ctl_user.poll(WAIT), "a stalled process stalled the others' Queue/Lock/Event calls"
    assert ctl_user.recv() == "ok"
    assert ev.wait(WAIT)
    got = [q.get(timeout=WAIT) for _ in range(20)]
    assert got == [("user", i) for i in range(20)]
    user.join(WAIT)
    assert user.exitcode == 0


@pytest.mark.parametrize("cut", list(CUTS))
def test_a_child_stopped_mid_request_stalls_no_one(cut, caplog):
    q, other, lock, ev = Queue(), Queue(), Lock(), Event()
    ctl_stall, their_stall = fork.Pipe()
    ctl_user, their_user = fork.Pipe()
    staller = fork.Process(target=_stall_mid_request, args=(q, their_stall, cut))
    user = fork.Process(target=_use_others, args=(q, other, lock, ev, their_user))
    try:
        staller.start()
        assert ctl_stall.poll(WAIT), "the staller never wrote its partial request"
        digest = ctl_stall.recv()
        assert eventually(lambda: state(staller.pid) == "T", WAIT)
        time.sleep(0.1)     # (the owner's thread has seen the partial request)
        user.start()
        _check_users_served(q, ev, user, ctl_user)
        # the owner's own calls, and the stalled request finished: served whole, in order
        assert q.empty()
        os.kill(staller.pid, signal.SIGCONT)
        first = q.get(timeout=WAIT)
        assert hashlib.sha256(pickle.dumps(first)).hexdigest() == digest
        assert q.get(timeout=WAIT) == "after"
        assert ctl_stall.poll(WAIT) and ctl_stall.recv() == "done"
        staller.join(WAIT)
        assert staller.exitcode == 0
        assert not _broker_errors(caplog)
    finally:
        _reap(staller, user)


# -- a frame that arrives byte by byte; big requests in pieces; many in one write -------------------

def _drip(q, ctl) -> None:
    """Forked child: a put and a qsize() call, one byte at a time; then the qsize reply."""
    proxy = q._proxy
    conn = proxy._client.conn
    data = b"".join(_put_request(proxy, "dripped") + _frames((77, P.QSIZE)))
    for i in range(len(data)):
        _write(conn.fileno(), data[i:i + 1])
        time.sleep(0.002)
    ctl.send(P.recv_msg(conn))


def test_requests_that_arrive_byte_by_byte_are_served_and_stall_no_one(caplog):
    q, other, lock, ev = Queue(), Queue(), Lock(), Event()
    ctl_drip, their_drip = fork.Pipe()
    ctl_user, their_user = fork.Pipe()
    dripper = fork.Process(target=_drip, args=(q, their_drip))
    user = fork.Process(target=_use_others, args=(other, Queue(), lock, ev, their_user))
    try:
        dripper.start()
        user.start()
        assert ctl_user.poll(WAIT), "a request arriving byte by byte stalled the others"
        assert ctl_user.recv() == "ok"
        assert ev.wait(WAIT)
        assert ctl_drip.poll(WAIT), "the request that arrived byte by byte got no reply"
        assert ctl_drip.recv() == (77, P.OK, 1)
        assert q.get(timeout=WAIT) == "dripped"
        assert [other.get(timeout=WAIT) for _ in range(20)] == [("user", i) for i in range(20)]
        for p in (dripper, user):
            p.join(WAIT)
            assert p.exitcode == 0
        assert not _broker_errors(caplog)
    finally:
        _reap(dripper, user)


PIECES = [1, 1, 1, 1, 5, 3, 7, 12, 1000, 1, 64 * 1024, 65 * 1024, 3, 100 * 1024]


def _big_in_pieces(q, ctl) -> None:
    """Forked child: two big puts (one with -1 long headers) and 200 small ones, written in
    uneven pieces (some cut inside lengths and pickles), then the 200 small ones in one write."""
    proxy = q._proxy
    fd = proxy._client.conn.fileno()
    items = [os.urandom(BIG), os.urandom(BIG + 17)]
    data = b"".join(_put_request(proxy, items[0], long=True) + _put_request(proxy, items[1]))
    pos, i = 0, 0
    while pos < len(data):
        n = PIECES[i % len(PIECES)]
        _write(fd, data[pos:pos + n])
        pos += n
        i += 1
        time.sleep(0.001)
    _write(fd, b"".join(f for k in range(200) for f in _put_request(proxy, k)))
    ctl.send([hashlib.sha256(b).hexdigest() for b in items])


def test_big_requests_in_pieces_and_many_in_one_write(caplog):
    q = Queue()
    ctl, theirs = fork.Pipe()
    p = fork.Process(target=_big_in_pieces, args=(q, theirs))
    try:
        p.start()
        assert ctl.poll(WAIT)
        digests = ctl.recv()
        got = [q.get(timeout=WAIT) for _ in range(2)]
        assert [hashlib.sha256(b).hexdigest() for b in got] == digests
        assert [q.get(timeout=WAIT) for _ in range(200)] == list(range(200))
        p.join(WAIT)
        assert p.exitcode == 0
        assert not _broker_errors(caplog)
    finally:
        _reap(p)


# -- the reply direction: a child that does not read its answers --------------------------------------

REPLY = 8 << 20     # far more than a socket buffer holds


def _ask_and_stop(q, ctl) -> None:
    """Forked child: a get() whose reply it does not read until it is continued."""
    client = q._proxy._client
    client.send((5, P.GET, True, None))
    ctl.send("asked")
    os.kill(os.getpid(), signal.SIGSTOP)
    rid, status, item = P.recv_msg(client.conn)
    ctl.send((rid, status, len(P.loads_item(item))))


def test_a_child_that_does_not_read_its_reply_stalls_no_one(caplog):
    q, other, lock, ev = Queue(), Queue(), Lock(), Event()
    ctl_stall, their_stall = fork.Pipe()
    ctl_user, their_user = fork.Pipe()
    staller = fork.Process(target=_ask_and_stop, args=(q, their_stall))
    user = fork.Process(target=_use_others, args=(q, other, lock, ev, their_user))
    try:
        staller.start()
        assert ctl_stall.poll(WAIT) and ctl_stall.recv() == "asked"
        assert eventually(lambda: state(staller.pid) == "T", WAIT)
        assert eventually(lambda: len(q._getters) == 1, WAIT), "the get() never reached the owner"
        # the owner's put answers the stopped child's get with 8 MiB it does not read
        putter = threading.Thread(target=q.put, args=(b"r" * REPLY,), daemon=True)
        putter.start()
        putter.join(WAIT)
        assert not putter.is_alive(), "the owner's put() waited for a stopped child to read"
        user.start()
        _check_users_served(q, ev, user, ctl_user)
        os.kill(staller.pid, signal.SIGCONT)
        assert ctl_stall.poll(WAIT), "the stopped child never got its reply"
        assert ctl_stall.recv() == (5, P.OK, REPLY)
        staller.join(WAIT)
        assert staller.exitcode == 0
        assert not _broker_errors(caplog)
    finally:
        _reap(staller, user)


# -- a remote process whose link stalls mid-frame ----------------------------------------------------

def _remote_stall(q, ctl) -> None:
    """A RemoteProcess: part of a put request on its own Connection, then nothing until told."""
    mod = sys.modules[type(q).__module__]       # (the agent's copy of the proxies module)
    fd = q._client.conn.fileno()
    data = b"".join(_put_request(q, ("remote", os.getpid()), mod=mod))
    _write(fd, data[:7])
    ctl.send("cut")
    if not ctl.poll(120):
        return
    ctl.recv()
    _write(fd, data[7:])
    ctl.send("done")


def test_a_remote_process_stalled_mid_request_stalls_no_one(host, ssh_options, caplog):
    q, other, lock, ev = Queue(), Queue(), Lock(), Event()
    ctl_remote, their_remote = multiprocessing.Pipe()
    ctl_user, their_user = fork.Pipe()
    remote = RemoteProcess(host, target=_remote_stall, args=(q, their_remote), **ssh_options)
    user = fork.Process(target=_use_others, args=(q, other, lock, ev, their_user))
    try:
        remote.start()
        their_remote.close()
        assert ctl_remote.poll(60) and ctl_remote.recv() == "cut"
        time.sleep(0.1)     # (the owner's thread has seen the partial request)
        user.start()
        _check_users_served(q, ev, user, ctl_user)
        ctl_remote.send("go")
        assert q.get(timeout=WAIT)[0] == "remote"
        assert ctl_remote.poll(WAIT) and ctl_remote.recv() == "done"
        remote.join(WAIT)
        assert remote.exitcode == 0
        assert not _broker_errors(caplog)
    finally:
        if remote.exitcode is None:
            remote.kill()
            remote.join(10)
        _reap(user)


# -- not multiprocessing's framing --------------------------------------------------------------------

def _bad_length(q, ctl) -> None:
    """Forked child: a frame length below -1, then a call: its Connection must be dropped."""
    _write(q._proxy._client.conn.fileno(), struct.pack("!i", -5) + b"garbage")
    try:
        q.qsize()
        ctl.send("answered")
    except EOFError as exc:
        ctl.send(type(exc).__name__)


def test_a_bad_frame_length_drops_that_connection_only(caplog):
    q, other, lock, ev = Queue(), Queue(), Lock(), Event()
    ctl_bad, their_bad = fork.Pipe()
    ctl_user, their_user = fork.Pipe()
    bad = fork.Process(target=_bad_length, args=(q, their_bad))
    user = fork.Process(target=_use_others, args=(q, other, lock, ev, their_user))
    try:
        bad.start()
        assert ctl_bad.poll(WAIT) and ctl_bad.recv() == "OwnerGone"
        bad.join(WAIT)
        user.start()
        _check_users_served(q, ev, user, ctl_user)
        assert not _broker_errors(caplog)
    finally:
        _reap(bad, user)


# -- fork: every object of the child gets its own line to the owner, whatever happens to one -------

FORK_SCRIPT = r'''
import gc, os, sys, time
# registered before remoteproc's: these run before its after-fork hooks (parent and child)
os.register_at_fork(after_in_parent=gc.collect, after_in_child=lambda: time.sleep(0.5))
import multiprocessing
import remoteproc

def child(queues, broken):
    for i, q in enumerate(queues):
        q.put(i)
    try:
        broken.put("x")
        print("broken: answered", flush=True)
    except RuntimeError as exc:
        print("broken:", exc, flush=True)

gc.disable()
live = [remoteproc.Queue() for _ in range(10)]
for _ in range(10):
    dead = remoteproc.Queue()
    dead.cycle = dead       # garbage the cycle collector frees: in the parent, between the hooks
del dead
broken = remoteproc.Queue()
def fail(child_end):
    raise OSError("no room")
broken._become_proxy = fail
p = multiprocessing.get_context("fork").Process(target=child, args=(live, broken))
p.start()
got = []
for q in live:
    try:
        got.append(q.get(timeout=10))
    except Exception as exc:
        got.append(type(exc).__name__)
p.join(10)
print("got", got, p.exitcode, flush=True)
'''


def test_a_fork_gives_every_object_its_line_even_if_one_fails(tmp_path):
    """Objects that are garbage at a fork (a cycle not yet collected) got a Pipe in the parent's
    hook, which the collector could close in the parent (any thread's allocation) before the
    parent's after-fork hook; the child, which still had them, attached on a dead Pipe (EPIPE),
    and that one exception ended its hook: every later object of the child was left believing it
    owned itself (a put stayed in the child, the owner's get waited in vain).  Seen in
    benchmarks/bench_cliffs.py, where the owner's thread drops 1,000 objects while a fork starts."""
    script = tmp_path / "forkgc.py"
    script.write_text(FORK_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(remoteproc.__file__)))     # (the one under test)
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path), env=env)
    assert "got %s 0" % list(range(10)) in out.stdout, (out.stdout, out.stderr)
    assert "broken: this Queue could not be connected to its owner" in out.stdout, out.stdout
    assert "no room" in out.stdout
    assert "Exception ignored" not in out.stderr, out.stderr
