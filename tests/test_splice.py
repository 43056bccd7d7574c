"""Payloads moved in the kernel (``agent/splice.py``): two frame endpoints joined by pipes.

The openssh transport's relay and the agent on the host both talk to a pipe; here the
two endpoints talk to each other over two pipes, in one thread, with streams bridging
socketpairs as the user's Connections do.  Every test runs with splice and without it
(the path of a host whose Python has no ``os.splice``): the bytes that come out must be
the same, in order, and only the share moved in the kernel differs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import selectors
import signal
import socket
import struct
import time

import pytest

from remoteproc.agent import frames, mux, poller, splice
from remoteproc.agent.endpoint import FrameEndpoint

MIB = 1 << 20
needs_splice = pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice: Linux and Python 3.10+")


class Wire:
    """Endpoint ``a`` (the relay's side) and ``b`` (the agent's), a pipe each way."""

    def __init__(self, use_splice: bool, window: int = mux.WINDOW, pipe_size: int = MIB) -> None:
        self.sel = poller.make()      # (the relay's and the agent's own)
        self.controls: list = []
        self.blobs: list[bytes] = []
        self.fds: list[int] = []
        ab_r, ab_w = os.pipe()
        ba_r, ba_w = os.pipe()
        self.fds += [ab_r, ab_w, ba_r, ba_w]
        for fd in self.fds:
            os.set_blocking(fd, False)
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, pipe_size)      # (as the relay and the agent ask)
        self.a = self._end(ab_w, ba_r, use_splice, window, "a")
        self.b = self._end(ba_w, ab_r, use_splice, window, "b")
        self.users: list[socket.socket] = []

    def _end(self, out_fd: int, in_fd: int, use_splice: bool, window: int, name: str) -> FrameEndpoint:
        ep = FrameEndpoint(self.sel, lambda view: os.write(out_fd, view),
                           lambda t, sid, v, p: self._frame(ep, name, t, sid, v, p),
                           self._lost, write_fd=out_fd)
        ep.mux.window = window
        ep.mux.ack_at = min(ep.mux.ack_at, window // 4)
        if use_splice:
            ep.enable_splice(in_fd, out_fd)
        scratch = memoryview(bytearray(MIB))
        self.sel.register(in_fd, selectors.EVENT_READ, lambda mask: self._pull(ep, in_fd, scratch))
        return ep

    def _pull(self, ep: FrameEndpoint, fd: int, scratch) -> None:
        try:
            assert ep.pull(fd, scratch), "a channel pipe ended"
        except BlockingIOError:
            pass

    def _frame(self, ep, name, ftype, sid, value, payload) -> None:
        if ftype == frames.CONTROL:
            msg, blob = frames.parse_control(payload)
            self.controls.append((name, msg))
            self.blobs.append(bytes(blob))
        else:
            ep.mux.on_frame(ftype, sid, value)

    def _lost(self, exc) -> None:
        raise AssertionError("the channel was lost: %r" % (exc,))

    def bridge(self, sid: int, a_shared: bool = False) -> tuple[socket.socket, socket.socket]:
        """(user_a, user_b): what is written to one comes out of the other."""
        ua, ma = socket.socketpair()
        ub, mb = socket.socketpair()
        for user in (ua, ub):
            user.setblocking(False)
            self.users.append(user)
        if a_shared:        # the relay's case: the user's own socket, which we may not make non-blocking
            self.users.append(ma)
            self.a.mux.add(sid, os.dup(ma.fileno()), reading=True, writing=True, shared=True)
        else:
            self.a.mux.add(sid, ma.detach(), reading=True, writing=True)
        self.b.mux.add(sid, mb.detach(), reading=True, writing=True)
        return ua, ub

    def spin(self, seconds: float = 0.01) -> None:
        for key, mask in self.sel.select(seconds):
            key.data(mask)

    def close(self) -> None:
        for ep in (self.a, self.b):
            for s in list(ep.mux.streams.values()):
                ep.mux.close(s)
            ep.stop()
        self.sel.close()
        for fd in self.fds:
            os.close(fd)
        for user in self.users:
            user.close()


@pytest.fixture(params=["splice", "read-write"])
def wire_kind(request, monkeypatch):
    if request.param == "splice" and not splice.AVAILABLE:
        pytest.skip("os.splice: Linux and Python 3.10+")
    moved = []
    real = splice.move

    def counting(src, dst, count):
        n = real(src, dst, count)
        moved.append(n)
        return n

    monkeypatch.setattr(splice, "move", counting)
    return request.param, moved


def _pump(wire: Wire, sends: dict, expect: dict, timeout: float = 60.0) -> dict:
    """Write ``sends`` ({user socket: bytes}) and read until each ``expect`` socket holds its count."""
    views = {sock: memoryview(data) for sock, data in sends.items()}
    got = {sock: bytearray() for sock in expect}
    deadline = time.monotonic() + timeout
    while any(views.values()) or any(len(got[s]) < n for s, n in expect.items()):
        assert time.monotonic() < deadline, "stalled: %r" % {s.fileno(): len(g) for s, g in got.items()}
        for sock, view in views.items():
            if view:
                try:
                    views[sock] = view[sock.send(view[:MIB]):]
                except BlockingIOError:
                    pass
        wire.spin(0.001)
        for sock in got:
            try:
                got[sock] += sock.recv(4 * MIB)
            except BlockingIOError:
                pass
    return got


def test_bulk_both_ways_with_small_messages_between_arrives_intact(wire_kind):
    kind, moved = wire_kind
    wire = Wire(kind == "splice")
    try:
        up_a, up_b = wire.bridge(1, a_shared=True)
        down_a, down_b = wire.bridge(2)
        chat_a, chat_b = wire.bridge(3)
        up, down = os.urandom(24 * MIB), os.urandom(24 * MIB)
        chat = b"".join(struct.pack(">I", i) * 25 for i in range(3000))
        got = _pump(wire, {up_a: up, down_b: down, chat_a: chat},
                    {up_b: len(up), down_a: len(down), chat_b: len(chat)})
        assert got[up_b] == up and got[down_a] == down and got[chat_b] == chat
        total = len(up) + len(down)
        if kind == "splice":
            # a payload crosses two splices going out (stream to spool, spool to channel) and one
            # coming in: 3x the bytes if none entered Python; most of them did not
            assert sum(moved) >= 2 * total
        else:
            assert moved == []
        assert not wire.a.pending and not wire.b.pending
    finally:
        wire.close()


@needs_splice
def test_a_payload_spooled_while_corked_goes_out_at_uncork():
    """The agent's loop corks its endpoint while it handles several events of one wait
    (``FrameEndpoint.cork``); a stream's payload spooled then (its ``send()``, with no parts, comes
    while corked) waited in the output queue for a flush that nothing asked for: a 16 MiB echo over
    ``ssh`` hung once in a full run.  ``uncork`` writes it."""
    sel = poller.make()
    src_r, src_w = os.pipe()
    chan_r, chan_w = os.pipe()
    try:
        for fd in (src_r, chan_r, chan_w):
            os.set_blocking(fd, False)
        ep = FrameEndpoint(sel, lambda view: os.write(chan_w, view), lambda *f: None,
                           lambda exc: None, write_fd=chan_w)
        ep.enable_splice(None, chan_w)
        payload = os.urandom(32 << 10)
        os.write(src_w, payload)
        stream = ep.mux.add(7, src_r, reading=True, writing=False)
        ep.cork()
        assert ep._splice_out(stream, len(payload)) == len(payload)
        ep.send()                   # (what the stream's read does next: nothing goes out, corked)
        ep.uncork()
        out = os.read(chan_r, 1 << 20)
        assert out == frames.header(frames.DATA, 7, len(payload)) + payload
        assert not ep.pending
        ep.mux.close(stream)
        ep.stop()
    finally:
        sel.close()
        for fd in (src_w, chan_r, chan_w):
            os.close(fd)


def test_a_stream_whose_reader_stalls_does_not_stall_the_others(wire_kind):
    kind, _moved = wire_kind
    wire = Wire(kind == "splice", window=1 * MIB)
    try:
        slow_a, _slow_b = wire.bridge(1, a_shared=True)     # nobody reads _slow_b
        fast_a, fast_b = wire.bridge(2)
        stuffed = 0
        for _ in range(400):                # more than the window and every kernel buffer
            try:
                stuffed += slow_a.send(b"s" * MIB)
            except BlockingIOError:
                pass
            wire.spin(0.001)
        assert stuffed > MIB and wire.a.mux.streams[1].credit == 0
        payload = os.urandom(8 * MIB)
        assert _pump(wire, {fast_a: payload}, {fast_b: len(payload)})[fast_b] == payload
    finally:
        wire.close()


@pytest.mark.parametrize("sizes", [[MIB], [5000, MIB, 3000, 200 << 10]], ids=["big", "small-between-big"])
def test_a_shared_socket_that_nobody_reads_never_blocks_the_loop(wire_kind, sizes):
    """The relay may not make the user's socket non-blocking: a splice into it gets no more
    than its send buffer has room for, or the whole relay would sleep in the kernel; small
    messages written to it between splices count against that room too."""
    kind, _moved = wire_kind
    wire = Wire(kind == "splice")
    previous = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("the loop blocked")))
    try:
        _unread_a, unread_b = wire.bridge(1, a_shared=True)    # the user never reads _unread_a
        other_a, other_b = wire.bridge(2)
        data = os.urandom(32 * MIB)
        view = memoryview(data)
        signal.alarm(30)
        for i in range(2000):
            try:
                view = view[unread_b.send(view[:sizes[i % len(sizes)]]):]
            except BlockingIOError:
                pass
            wire.spin(0.001)
            if wire.b.mux.streams[1].credit == 0:
                break
        assert wire.b.mux.streams[1].credit == 0        # the window is in flight: nothing more moves
        back = os.urandom(MIB)
        assert _pump(wire, {other_b: back}, {other_a: len(back)})[other_a] == back
        signal.alarm(0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        wire.close()


def test_frames_sent_after_a_payload_wait_behind_it_when_the_channel_is_full(wire_kind):
    """A control frame the relay sends after it took N bytes of a stream reaches the agent
    after those N bytes: a spliced payload still on its way must not be overtaken."""
    kind, _moved = wire_kind
    wire = Wire(kind == "splice", pipe_size=4096)       # the smallest pipe: payloads go in pieces
    try:
        user_a, user_b = wire.bridge(1, a_shared=True)
        mine_a = wire.users[-1]             # the relay's copy of user_a's peer
        data = os.urandom(4 * MIB)
        got = bytearray()
        arrived = []                        # (bytes the relay had taken, bytes the agent had passed on)
        orig = wire.b.reader._on_frame

        def record(ftype, sid, value, payload):
            if ftype == frames.CONTROL:
                arrived.append((frames.parse_control(payload)[0]["taken"], len(got) + _queued(user_b)))
            orig(ftype, sid, value, payload)

        wire.b.reader._on_frame = record
        view = memoryview(data)
        deadline = time.monotonic() + 60
        while len(got) < len(data):
            assert time.monotonic() < deadline, "stalled at %d bytes" % len(got)
            if view:
                try:
                    view = view[user_a.send(view[:256 << 10]):]
                except BlockingIOError:
                    pass
            wire.spin(0.001)
            wire.a.control({"op": "mark", "taken": len(data) - len(view) - _queued(mine_a)})
            wire.spin(0.001)
            try:
                got += user_b.recv(MIB)
            except BlockingIOError:
                pass
        assert bytes(got) == data
        assert len(arrived) > 10 and arrived[-1][0] > 0
        late = [(taken, passed) for taken, passed in arrived if passed < taken]
        assert not late, "controls overtook stream bytes: %r" % late[:3]
    finally:
        wire.close()


def _queued(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), 0x541B, b"\0\0\0\0"))[0]     # FIONREAD


def test_end_of_stream_and_a_reader_that_goes_away_behave_as_without_splice(wire_kind):
    kind, _moved = wire_kind
    wire = Wire(kind == "splice")
    try:
        ua, ub = wire.bridge(1)
        va, vb = wire.bridge(2)
        data = os.urandom(6 * MIB)
        got = _pump(wire, {ua: data}, {ub: len(data)})[ub]
        ua.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 30
        end = None
        while end is None and time.monotonic() < deadline:
            wire.spin(0.01)
            try:
                end = ub.recv(10)
            except BlockingIOError:
                pass
        assert got == data and end == b""       # all of it, then the end, and nothing after
        vb.close()                              # a reader goes away: its writer gets a broken pipe
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() < deadline:
                try:
                    va.send(b"x" * MIB)
                except BlockingIOError:
                    pass
                wire.spin(0.01)
        assert time.monotonic() < deadline
    finally:
        wire.close()


def test_splice_is_off_where_the_channel_is_not_a_pipe(monkeypatch):
    a, b = socket.socketpair()
    sel = selectors.DefaultSelector()
    try:
        ep = FrameEndpoint(sel, a.send, lambda *f: None, lambda exc: None, write_fd=a.fileno())
        ep.enable_splice(a.fileno(), a.fileno())
        assert ep.pull_fd is None and ep.mux.splice_out is None and ep.fds() == []
        monkeypatch.setattr(splice, "AVAILABLE", False)
        r, w = os.pipe()
        try:
            ep2 = FrameEndpoint(sel, lambda v: os.write(w, v), lambda *f: None, lambda exc: None, write_fd=w)
            ep2.enable_splice(r, w)
            assert ep2.pull_fd is None and ep2.mux.splice_out is None
        finally:
            os.close(r)
            os.close(w)
    finally:
        sel.close()
        a.close()
        b.close()


@needs_splice
def test_the_spool_closes_with_the_endpoint():
    r, w = os.pipe()
    sel = selectors.DefaultSelector()
    try:
        ep = FrameEndpoint(sel, lambda v: os.write(w, v), lambda *f: None, lambda exc: None, write_fd=w)
        ep.enable_splice(r, w)
        spool_fds = ep.fds()
        assert len(spool_fds) == 2 and all(splice.is_pipe(fd) for fd in spool_fds)
        ep.stop()
        assert ep.fds() == []
        for fd in spool_fds:
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        sel.close()
        os.close(r)
        os.close(w)


def test_a_kernel_that_refuses_splice_leaves_the_read_and_write_path(monkeypatch):
    """EINVAL (an fd kind that cannot splice, or an old kernel): bytes take the usual path."""
    if not splice.AVAILABLE:
        pytest.skip("os.splice: Linux and Python 3.10+")
    refused = []

    def refuse(src, dst, count):
        refused.append(count)
        raise OSError(errno.EINVAL, "Invalid argument")

    wire = Wire(True)
    monkeypatch.setattr(splice, "move", refuse)
    try:
        ua, ub = wire.bridge(1, a_shared=True)
        va, vb = wire.bridge(2)
        up, down = os.urandom(4 * MIB), os.urandom(4 * MIB)
        got = _pump(wire, {ua: up, vb: down}, {ub: len(up), va: len(down)})
        assert got[ub] == up and got[va] == down and refused
    finally:
        wire.close()


@needs_splice
def test_the_channel_closing_under_a_spooled_payload_is_a_lost_channel():
    wire = Wire(True, pipe_size=4096)
    lost = []
    wire.a.on_lost = lost.append
    try:
        ua, _ub = wire.bridge(1)
        data = os.urandom(2 * MIB)
        sent = 0
        for _ in range(50):                 # bulk, so that the relay side spools it
            try:
                sent += ua.send(data[sent:sent + MIB])
            except BlockingIOError:
                pass
            wire.a.mux._ready(wire.a.mux.streams[1], selectors.EVENT_READ)
            if wire.a.pending and any(type(x) is list for x in wire.a._ahead):
                break
        assert any(type(x) is list for x in wire.a._ahead), "nothing was spooled"
        os.close(wire.fds[0])               # the agent's side of the channel goes away
        wire.fds[0] = os.open(os.devnull, os.O_RDONLY)      # (for close())
        wire.a.flush()
        assert len(lost) == 1 and isinstance(lost[0], OSError)
        assert wire.a.stopped and not wire.a.pending and wire.a.fds() == []
        wire.a.send(b"more")                # later frames are dropped, not an error
        assert len(lost) == 1
    finally:
        wire.close()


@needs_splice
def test_a_channel_that_ends_inside_a_payload_ends_the_pull():
    r, w = os.pipe()
    sel = selectors.DefaultSelector()
    try:
        ep = FrameEndpoint(sel, lambda v: os.write(w, v), lambda *f: None, lambda exc: None)
        ep.enable_splice(r, None)
        ua, ma = socket.socketpair()
        ep.mux.add(1, ma.detach(), reading=False, writing=True)
        os.write(w, frames.header(frames.DATA, 1, MIB) + b"x" * 20000)
        os.close(w)
        w = -1
        scratch = memoryview(bytearray(MIB))
        taken = [ep.pull(r, scratch) for _ in range(3)]
        assert taken[0] > 0 and 0 in taken and sum(taken) == frames.HEADER_SIZE + 20000
        assert ua.recv(MIB) == b"x" * 20000
        ua.close()
    finally:
        sel.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def test_what_cannot_be_asked_of_the_kernel_is_taken_as_no_room_and_no_pipe():
    """A socket closed under us has no room (the caller then reads and writes), a closed fd
    is no pipe, and a spool closes once even if asked twice."""
    a, b = socket.socketpair()
    assert splice.socket_room(a) > 0
    a.close()
    assert splice.socket_room(a) == 0
    r, w = os.pipe()
    assert splice.is_pipe(r) and not splice.is_pipe(b.fileno())
    os.close(r)
    os.close(w)
    assert not splice.is_pipe(r)
    b.close()
    if splice.AVAILABLE:
        spool = splice.Spool()
        assert spool.size >= 1 << 16 and spool.held == 0
        spool.close()
        spool.close()
        assert spool.r == spool.w == -1


def test_big_control_frames_between_payloads_arrive_whole(wire_kind):
    """A package's frames are CONTROL frames of about 1 MiB: read whole, between spliced payloads."""
    kind, _moved = wire_kind
    wire = Wire(kind == "splice")
    try:
        ua, ub = wire.bridge(1)
        blobs = [os.urandom((1 << 20) + i) for i in range(3)]
        data = os.urandom(8 * MIB)
        view = memoryview(data)
        got = bytearray()
        sent = 0
        deadline = time.monotonic() + 60
        while len(got) < len(data) or len(wire.blobs) < len(blobs):
            assert time.monotonic() < deadline
            if view:
                try:
                    view = view[ua.send(view[:MIB]):]
                except BlockingIOError:
                    pass
            wire.spin(0.001)
            if sent < len(blobs) and len(data) - len(view) >= (sent + 1) * 2 * MIB:
                wire.a.control({"op": "pkg", "n": sent}, blobs[sent])     # while payloads flow
                sent += 1
            try:
                got += ub.recv(4 * MIB)
            except BlockingIOError:
                pass
        assert bytes(got) == data
        assert [msg["n"] for _name, msg in wire.controls] == [0, 1, 2] and wire.blobs == blobs
    finally:
        wire.close()
