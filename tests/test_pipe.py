"""remoteproc.Pipe: the standard library's Connections, with send buffers that hold a big message.

Why it matters is measured in benchmarks/ (a 1 MiB upload from a program with a busy thread);
here, what it does: a duplex pair's send() of a message of a few hundred KiB to a megabyte
returns before anyone reads (multiprocessing's blocks), each end is still a stdlib Connection,
and a one-way pair is multiprocessing's unchanged."""

import multiprocessing
import os
import socket
import threading
from multiprocessing.connection import Connection

import pytest

import remoteproc

MIB = 1 << 20


def _granted() -> int:
    """What SO_SNDBUF can give an unprivileged process here: twice net.core.wmem_max, at most 8 MiB."""
    with open("/proc/sys/net/core/wmem_max") as f:
        return min(2 * int(f.read()), 8 * MIB)


def _sndbuf(conn: Connection) -> int:
    sock = socket.socket(fileno=conn.fileno())
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        sock.detach()


def _sends_unread(conn: Connection, size: int) -> bool:
    """Whether send_bytes() of ``size`` bytes returns while nobody reads the other end."""
    done = threading.Event()

    def send():
        conn.send_bytes(b"x" * size)
        done.set()

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return done.wait(5)


@pytest.mark.skipif(not os.path.exists("/proc/sys/net/core/wmem_max"), reason="Linux's socket limits")
def test_a_duplex_pair_takes_a_big_message_before_it_is_read():
    size = min(MIB, _granted() // 2)        # (skb overhead: half of what the kernel grants is safe)
    a, b = remoteproc.Pipe()
    try:
        assert _sndbuf(a) == _sndbuf(b) == _granted()
        assert _sends_unread(a, size) and _sends_unread(b, size)
        assert len(b.recv_bytes()) == size and len(a.recv_bytes()) == size
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(not os.path.exists("/proc/sys/net/core/wmem_max"), reason="Linux's socket limits")
def test_multiprocessing_pipe_is_left_as_it_is():
    """The standard library's Pipe is not patched: its send blocks on the same message."""
    a, b = multiprocessing.Pipe()
    try:
        assert _sndbuf(a) < _granted()
        assert not _sends_unread(a, 2 * _sndbuf(a))
        b.recv_bytes()                  # (lets the sending thread finish)
    finally:
        a.close()
        b.close()


def test_the_ends_are_standard_connections_both_ways():
    a, b = remoteproc.Pipe()
    r, w = remoteproc.Pipe(duplex=False)
    try:
        assert all(type(c) is Connection for c in (a, b, r, w))
        a.send({"n": 1})
        b.send([2])
        assert b.recv() == {"n": 1} and a.recv() == [2]
        assert r.readable and not r.writable and w.writable and not w.readable
        w.send_bytes(b"one way")
        assert r.recv_bytes() == b"one way"
    finally:
        for c in (a, b, r, w):
            c.close()
