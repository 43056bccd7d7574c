"""The paramiko channel adapter: big sends go out from a thread of their own, in order.

paramiko encrypts in the thread that sends.  ``ParamikoChannel`` hands sends over
``INLINE_MAX`` to its sender thread so that the relay's link keeps reading the user's
sockets; small sends with nothing queued go out at once.  These tests drive the adapter
with a stand-in for paramiko's ``Channel`` (the transport itself runs in every host test):
a channel that takes one packet per call and whose window the test opens and shuts.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from remoteproc.relay import paramiko_channel
from remoteproc.relay.channel import ChannelLost
from remoteproc.relay.paramiko_channel import INLINE_MAX, QUEUE_MAX, ParamikoChannel

PACKET = 32 << 10


class FakeChannel:
    """paramiko's Channel as the adapter uses it: one packet per send(), TimeoutError while
    the window is shut, and ``out_buffer_cv.notify_all()`` when it opens."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.out_buffer_cv = threading.Condition(self.lock)
        self.data = bytearray()
        self.threads: set[str] = set()
        self.open_window = threading.Event()
        self.open_window.set()
        self.fail: BaseException | None = None
        self.closed = False

    def settimeout(self, t: float) -> None:
        assert t == 0.0

    def send(self, view) -> int:
        if self.fail is not None:
            raise self.fail
        if not self.open_window.is_set():
            raise TimeoutError()
        n = min(len(view), PACKET)
        with self.lock:
            self.data += view[:n]
            self.threads.add(threading.current_thread().name)
        return n

    def set_window(self, is_open: bool) -> None:
        if is_open:
            self.open_window.set()
            with self.out_buffer_cv:
                self.out_buffer_cv.notify_all()
        else:
            self.open_window.clear()

    def close(self) -> None:
        self.closed = True


def _channel():
    fake = FakeChannel()
    chan = ParamikoChannel(fake, conn=None, pool=None, connect_ms=0.0)
    woken = []
    chan.on_writable(lambda: woken.append(time.monotonic()))
    return fake, chan, woken


def _send_all(chan: ParamikoChannel, data: bytes, timeout: float = 30.0) -> None:
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        assert time.monotonic() < deadline, "the channel took nothing for %.0f s" % timeout
        n = chan.send(view)
        view = view[n:]
        if not n:
            time.sleep(0.001)


def _wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_big_and_small_sends_arrive_in_order_and_big_ones_leave_the_callers_thread():
    fake, chan, _woken = _channel()
    try:
        parts = [b"s1", os.urandom(3 << 20), b"s2" * 10, os.urandom(INLINE_MAX + 1), b"s3"]
        for part in parts:
            _send_all(chan, part)
        _wait_for(lambda: len(fake.data) == sum(map(len, parts)))
        assert bytes(fake.data) == b"".join(parts)
        assert "remoteproc-paramiko-send" in fake.threads         # the big ones
        assert threading.current_thread().name in fake.threads    # the first small one
    finally:
        chan.close()


def test_a_small_send_waits_behind_a_queued_big_one():
    fake, chan, _woken = _channel()
    try:
        fake.set_window(False)
        big = os.urandom(1 << 20)
        _send_all(chan, big)                # queued: the window is shut
        assert chan.send(memoryview(b"after")) == 5     # queued behind it, not sent before it
        assert not fake.data
        fake.set_window(True)
        _wait_for(lambda: len(fake.data) == len(big) + 5)
        assert bytes(fake.data) == big + b"after"
    finally:
        chan.close()


def test_a_full_queue_takes_nothing_until_it_drains_then_wakes_the_link():
    fake, chan, woken = _channel()
    try:
        fake.set_window(False)
        taken = 0
        block = memoryview(os.urandom(1 << 20))
        for _ in range(QUEUE_MAX // len(block) + 2):
            taken += chan.send(block)
        assert taken == QUEUE_MAX and chan.send(block) == 0
        before = len(woken)
        fake.set_window(True)
        _wait_for(lambda: len(woken) > before)
        assert chan.send(block) > 0         # room again
    finally:
        chan.close()


def test_a_failure_in_the_sender_is_the_channel_lost():
    fake, chan, woken = _channel()
    try:
        fake.fail = EOFError()
        before = len(woken)
        assert chan.send(memoryview(os.urandom(INLINE_MAX + 1))) == INLINE_MAX + 1
        _wait_for(lambda: len(woken) > before)      # the link hears of it
        with pytest.raises(ChannelLost, match="sending failed: EOFError"):
            chan.send(memoryview(b"credit"))
    finally:
        chan.close()


def test_close_ends_the_sender_thread_even_while_the_window_is_shut(monkeypatch):
    monkeypatch.setattr(paramiko_channel, "WINDOW_WAIT", 0.05)
    fake, chan, _woken = _channel()
    fake.set_window(False)
    chan.send(memoryview(os.urandom(INLINE_MAX + 1)))
    sender = chan._sender
    assert sender is not None and sender.is_alive()
    chan.close()
    sender.join(10)
    assert not sender.is_alive() and fake.closed


def test_a_recv_whose_window_adjustment_finds_the_socket_gone_is_the_channels_end():
    """Found by a full run: sshd killed mid-transfer, paramiko's recv() sent its window adjustment
    on the dead socket and raised EOFError in the relay's thread ("the relay failed: EOFError()"),
    where the connection's loss, with its explanation, was due."""
    fake, chan, _woken = _channel()
    fake.recv_ready = lambda: True
    for exc in (EOFError(), OSError(32, "Broken pipe")):
        def recv(limit, exc=exc):
            raise exc
        fake.recv = recv
        assert chan.recv(1 << 20) == b""
