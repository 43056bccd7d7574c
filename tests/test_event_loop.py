"""The pieces every event loop shares: the self-pipe waker and the frame endpoint.

No SSH here: the endpoint runs over a socketpair, as the agent's channel is a pair
of fds, and against a channel object that fills up and is lost.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading

import pytest

from remoteproc.agent import frames
from remoteproc.agent.endpoint import FrameEndpoint
from remoteproc.agent.waker import Waker


def _readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def test_a_wake_from_another_thread_makes_the_loop_readable_until_cleared():
    waker = Waker()
    try:
        assert not _readable(waker.fileno(), 0)
        t = threading.Thread(target=lambda: [waker.wake() for _ in range(100_000)])
        t.start()       # (far more wake-ups than the pipe holds: a full pipe is not an error)
        t.join(30)
        assert not t.is_alive() and _readable(waker.fileno(), 5)
        waker.clear()
        assert not _readable(waker.fileno(), 0)
    finally:
        waker.close()
    assert waker.fds() == []
    waker.wake()        # after close: a late wake-up (e.g. paramiko's thread) is a no-op
    waker.clear()


def test_a_forked_child_can_let_go_of_a_waker_whose_lock_a_parent_thread_held():
    waker = Waker()
    held, done = threading.Event(), threading.Event()

    def inside_wake():
        with waker._lock:       # as if this thread was inside wake() at the fork
            held.set()
            done.wait(30)
    t = threading.Thread(target=inside_wake)
    t.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:    # pragma: no cover - the child
        signal.alarm(10)        # a child stuck on the lock dies instead of hanging the test
        waker.abandon()
        os._exit(0 if waker.fds() == [] else 1)
    done.set()
    t.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    waker.close()


def test_a_finalizer_may_wake_the_loop_from_a_thread_inside_wake():
    """The garbage collector runs finalizers in whichever thread allocates: that thread
    may be inside wake() already."""
    waker = Waker()
    woke = threading.Event()

    def reentered():
        with waker._lock:       # inside wake() (or close()), when a finalizer calls wake()
            waker.wake()
        woke.set()
    t = threading.Thread(target=reentered, daemon=True)
    t.start()
    t.join(10)
    try:
        assert woke.is_set() and _readable(waker.fileno(), 5)
    finally:
        waker.close()


def _endpoint_pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    sel = selectors.DefaultSelector()
    got = []
    lost = []
    ep = FrameEndpoint(sel, a.send, lambda *f: got.append(f), lost.append, write_fd=a.fileno())
    return a, b, sel, ep, got, lost


def test_output_the_channel_cannot_take_waits_and_goes_out_when_it_can():
    a, b, sel, ep, _got, lost = _endpoint_pair()
    try:
        big = frames.control({"op": "ping"}, b"x" * (8 << 20))      # more than the socket buffers hold
        ep.send(big)
        assert ep.out and [k.fd for k in sel.get_map().values()] == [a.fileno()]
        received = bytearray()
        for _ in range(10_000):
            if len(received) == len(big):
                break
            for key, mask in sel.select(1):
                key.data(mask)
            try:
                received += b.recv(1 << 20)
            except BlockingIOError:
                pass
        assert bytes(received) == big and not ep.out and not lost
        assert not sel.get_map()        # nothing waits: the write fd is no longer watched
    finally:
        sel.close()
        a.close()
        b.close()


def test_a_lost_channel_is_reported_once_and_later_frames_are_dropped():
    a, b, sel, ep, _got, lost = _endpoint_pair()
    b.close()
    try:
        ep.control({"op": "ping"})
        ep.control({"op": "ping"})
        assert len(lost) == 1 and isinstance(lost[0], OSError)
        assert ep.stopped and not ep.out and not sel.get_map()
    finally:
        sel.close()
        a.close()


def test_frames_fed_in_pieces_reach_the_owner_whole():
    a, b, sel, ep, got, _lost = _endpoint_pair()
    try:
        wire = frames.control({"op": "hello"}, b"blob") + frames.control({"op": "pong", "t": 1})
        for i in range(len(wire)):
            ep.feed(wire[i:i + 1])
        assert [frames.parse_control(f[3])[0]["op"] for f in got] == ["hello", "pong"]
        with pytest.raises(frames.FrameError):
            ep.feed(frames.header(99, 0, 0))
    finally:
        sel.close()
        a.close()
        b.close()


def test_frames_sent_while_corked_go_out_in_one_write_in_order():
    """The agent's (and the relay's) loop corks the endpoint while it handles several events of one
    pass: a child's messages on two streams then leave in one write, so the host's sshd sends them
    in one TCP segment (two segments from an sshd without TCP_NODELAY waited 40 ms for a delayed
    ACK through a jump host).  A payload big enough to be written without a copy is not held."""
    sel = selectors.DefaultSelector()
    writes: list[bytes] = []

    def write(view):
        writes.append(bytes(view))
        return len(view)

    ep = FrameEndpoint(sel, write, lambda *f: None, lambda exc: None)
    try:
        first = (frames.header(frames.DATA, 1, 5), b"hello")
        second = (frames.header(frames.DATA, 3, 5), b"world")
        ep.send(*first)
        assert writes == [b"".join(first)], "uncorked: at once"
        writes.clear()
        ep.cork()
        ep.send(*first)
        ep.send(*second)
        assert writes == [] and ep.pending
        ep.uncork()
        assert writes == [b"".join(first + second)] and not ep.pending
        writes.clear()
        big = b"x" * (1 << 20)
        ep.cork()
        ep.send(*first)
        ep.send(frames.header(frames.DATA, 5, len(big)), big)
        assert b"".join(writes) == b"".join(first) + frames.header(frames.DATA, 5, len(big)) + big
        ep.uncork()
        assert not ep.pending
    finally:
        sel.close()
