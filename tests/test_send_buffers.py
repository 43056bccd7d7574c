"""The user's end of a bridged Pipe gets a send buffer that holds a big message (``sndbuf.py``).

Why is measured in benchmarks/ (a 1 MiB upload from a program with a busy thread); here, what
it does: the peer of the end passed to a RemoteProcess is found in this process wherever its
fd is, its send buffer is widened and never narrowed, and where Linux cannot say (no sock_diag,
the peer elsewhere) nothing changes and nothing fails."""

from __future__ import annotations

import os
import socket
import struct
import sys
from multiprocessing import Pipe

import cloudpickle
import pytest

from remoteproc import RemoteProcess, sndbuf

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/sys/net/core/wmem_max"), reason="Linux's sock_diag")

MIB = 1 << 20


def granted(asked: int) -> int:
    """What SO_SNDBUF gives an unprivileged process asking for ``asked``: twice it, capped at
    twice net.core.wmem_max."""
    with open("/proc/sys/net/core/wmem_max") as f:
        return 2 * min(asked, int(f.read()))


def sndbuf_of(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        sock.detach()


def test_the_peer_is_found_next_to_its_end_and_anywhere_else(monkeypatch):
    a, b = Pipe()
    far = os.dup2(a.fileno(), 900)
    try:
        inode = os.fstat(a.fileno()).st_ino
        assert sndbuf.peer_inode(b.fileno()) == inode
        assert sndbuf.peer_inode(a.fileno()) == os.fstat(b.fileno()).st_ino
        assert sndbuf.fd_of(inode, b.fileno()) == a.fileno()
        a.close()                           # only the far copy is left
        assert sndbuf.fd_of(inode, b.fileno()) == far
        monkeypatch.setattr(sndbuf, "_MAX_SCAN", 0)     # a program with more fds than are looked at
        assert sndbuf.fd_of(inode, b.fileno()) is None
    finally:
        os.close(far)
        b.close()


def test_the_peer_is_widened_and_the_end_given_is_not():
    a, b = Pipe()
    try:
        before = sndbuf_of(b.fileno())
        sndbuf.widen_peer(b.fileno())
        assert sndbuf_of(a.fileno()) == granted(4 * MIB) > before
        assert sndbuf_of(b.fileno()) == before
    finally:
        a.close()
        b.close()


def test_a_buffer_someone_made_larger_is_left_alone():
    asked = 3 * MIB
    if granted(asked) < 4 * MIB:
        pytest.skip("net.core.wmem_max is below 2 MiB here: no buffer can be made that large")
    a, b = Pipe()
    try:
        sock = socket.socket(fileno=a.fileno())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, asked)
        sock.detach()
        sndbuf.widen_peer(b.fileno())
        assert sndbuf_of(a.fileno()) == granted(asked)
    finally:
        a.close()
        b.close()


def test_a_peer_gone_or_in_no_process_of_ours_changes_nothing():
    a, b = socket.socketpair()
    a.close()
    try:
        assert sndbuf.fd_of(os.fstat(b.fileno()).st_ino + 10**9, b.fileno()) is None
        sndbuf.widen_peer(b.fileno())       # (its peer is closed: nothing to widen, no error)
    finally:
        b.close()


def test_answers_without_a_peer_give_none():
    nlmsg = struct.pack("=IHHII", 0, 0, 0, 0, 0)
    diag = struct.pack("=BBBBIII", socket.AF_UNIX, 1, 1, 0, 7, 0, 0)

    def answer(kind, *attrs):
        body = nlmsg[:0] + diag + b"".join(attrs)
        return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body

    peer = struct.pack("=HHI", 8, 2, 1234)
    name = struct.pack("=HH", 6, 0) + b"ab\0\0"
    assert sndbuf._peer_attribute(answer(20, name, peer)) == 1234
    assert sndbuf._peer_attribute(answer(20, name)) is None
    assert sndbuf._peer_attribute(answer(2)) is None             # NLMSG_ERROR: the socket is gone
    assert sndbuf._peer_attribute(answer(20, struct.pack("=HH", 0, 2))) is None   # a broken length
    assert sndbuf._peer_attribute(b"short") is None


def test_without_sock_diag_nothing_changes_and_it_is_not_asked_again(monkeypatch):
    made = []
    real = socket.socket

    def no_netlink(family=-1, *args, **kwargs):
        if family == socket.AF_NETLINK:
            made.append(family)
            raise OSError(97, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(sndbuf, "_unavailable", False)
    monkeypatch.setattr(socket, "socket", no_netlink)
    a, b = Pipe()
    try:
        before = sndbuf_of(a.fileno())
        sndbuf.widen_peer(b.fileno())
        sndbuf.widen_peer(b.fileno())
        assert made == [socket.AF_NETLINK]
        monkeypatch.undo()
        assert sndbuf_of(a.fileno()) == before
    finally:
        a.close()
        b.close()


def test_out_of_fds_is_not_taken_for_a_missing_sock_diag(monkeypatch):
    real = socket.socket
    failing = [True]

    def emfile_once(family=-1, *args, **kwargs):
        if family == socket.AF_NETLINK and failing:
            failing.clear()
            raise OSError(24, "Too many open files")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(sndbuf, "_unavailable", False)
    monkeypatch.setattr(socket, "socket", emfile_once)
    a, b = Pipe()
    try:
        assert sndbuf.peer_inode(b.fileno()) is None            # (this time: no fd for netlink)
        assert sndbuf.peer_inode(b.fileno()) == os.fstat(a.fileno()).st_ino
    finally:
        a.close()
        b.close()


def _echo_sizes(conn):
    for msg in iter(conn.recv_bytes, b"q"):
        conn.send(len(msg))


def test_a_started_process_widens_the_parents_end_of_each_duplex_pipe(host, ssh_options):
    """multiprocessing's own Pipe (the "change one name" program) gets the buffer at start()."""
    parent, child = Pipe()
    down_r, down_w = Pipe(duplex=False)
    before = sndbuf_of(parent.fileno())
    p = RemoteProcess(host, target=_echo_sizes, args=(child,), kwargs={}, daemon=True, **ssh_options)
    q = RemoteProcess(host, target=_echo_sizes, args=(down_r,), daemon=True, **ssh_options)
    try:
        p.start()
        q.start()                           # (a one-way pipe's writer is left as it is)
        child.close()
        down_r.close()
        assert sndbuf_of(parent.fileno()) == granted(4 * MIB) > before
        for size in (0, 100, 3 * MIB):
            parent.send_bytes(b"x" * size)
            assert parent.recv() == size
        parent.send_bytes(b"q")
        down_w.send_bytes(b"q")
        p.join(30)
        q.join(30)
        assert p.exitcode == 0 and q.exitcode == 0
    finally:
        for proc in (p, q):
            if proc.is_alive():
                proc.kill()
        parent.close()
        down_w.close()
