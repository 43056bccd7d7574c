"""The user's end of a bridged Pipe gets a send buffer that holds a big message (``sndbuf.py``).

Why is measured in benchmarks/ (a 1 MiB upload from a program with a busy thread); here, what
it does: the peer of the end passed to a RemoteProcess is found in this process wherever its
fd is, its send buffer is widened only while it is the system's default, where Linux cannot say
(no sock_diag, the peer elsewhere) nothing changes and nothing fails, and a child that ends with
bytes unread still gives the parent EOFError."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
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
        assert sndbuf_of(a.fileno()) == granted(2 * MIB) > before
        assert sndbuf_of(b.fileno()) == before
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("asked", [16 << 10, 3 * MIB])
def test_a_buffer_someone_chose_is_left_alone(asked):
    """Only a buffer at the system's default is widened: one a program chose, smaller (its own
    back-pressure) or larger (even past what we would ask), stays as it is."""
    a, b = Pipe()
    try:
        sock = socket.socket(fileno=a.fileno())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, asked)
        sock.detach()
        chosen = sndbuf_of(a.fileno())
        sndbuf.widen_peer(b.fileno())
        assert sndbuf_of(a.fileno()) == chosen == granted(asked)
    finally:
        a.close()
        b.close()


def test_a_closed_or_reused_fd_is_neither_an_error_nor_touched():
    """Another thread may close the user's end while start() runs; its number may go to another
    file meanwhile.  Found by an audit: OSError escaped start(), or a TCP socket got the buffer."""
    a, b = Pipe()
    fd = b.fileno()
    b.close()
    sndbuf.widen_peer(fd)                       # (a closed fd: nothing, no error)
    r, w = os.pipe()
    try:
        sndbuf.widen_peer(r)                    # (not a socket)
    finally:
        os.close(r)
        os.close(w)
        a.close()


def test_a_peer_made_by_another_process_is_not_looked_for(tmp_path):
    path = str(tmp_path / "sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    client = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(socket.AF_UNIX); "
                               "s.connect(%r); time.sleep(30)" % path])
    try:
        server.settimeout(20)
        conn, _ = server.accept()
        try:
            assert sndbuf._made_here(conn.fileno()) is False
            a, b = Pipe()
            assert sndbuf._made_here(b.fileno()) is True
            a.close()
            b.close()
        finally:
            conn.close()
    finally:
        client.kill()
        client.wait(10)
        server.close()


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


def _netlink_fails(monkeypatch, exc, times=None):
    """socket(AF_NETLINK, ...) raises ``exc`` (the first ``times`` calls; None: every call); the
    list of failed calls is returned."""
    made = []
    real = socket.socket

    def fake(family=-1, *args, **kwargs):
        if family == socket.AF_NETLINK and (times is None or len(made) < times):
            made.append(family)
            raise exc
        return real(family, *args, **kwargs)

    monkeypatch.setattr(sndbuf, "_unavailable", False)
    monkeypatch.setattr(socket, "socket", fake)
    return made


def test_without_sock_diag_nothing_changes_and_it_is_not_asked_again(monkeypatch):
    made = _netlink_fails(monkeypatch, OSError(97, "Address family not supported by protocol"))
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
    _netlink_fails(monkeypatch, OSError(24, "Too many open files"), times=1)
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
        assert sndbuf_of(parent.fileno()) == granted(2 * MIB) > before
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


def _ends_unread(conn):
    time.sleep(0.5)
    conn.send("bye")                # ... and ends, never reading what the parent sent


def test_a_child_that_ended_with_messages_unread_gives_eof_not_a_reset(host, ssh_options):
    """Found by an audit: with the wide buffer the parent's send of 12 MiB returned at once, and
    the relay's copy of the child's end, closed with bytes unread, reset the parent's socket: its
    recv() raised ConnectionResetError where docs/api.md promises EOFError.  The relay now drops
    what nobody will read when its copy is the last."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=_ends_unread, args=(child,), daemon=True, **ssh_options)
    try:
        p.start()
        child.close()
        parent.send_bytes(b"x" * (12 * MIB))
        assert parent.recv() == "bye"
        assert parent.poll(10)
        with pytest.raises(EOFError):
            parent.recv()
        p.join(30)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
        parent.close()


def _reads_then_ends(conn, count):
    for _ in range(count):
        conn.recv_bytes()


def _stream(conn, sent: dict) -> None:
    """Send 1 MiB messages until a send fails; the failure goes into ``sent``."""
    try:
        while True:
            conn.send_bytes(b"x" * MIB)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        sent["error"] = exc


@pytest.mark.parametrize("how", ["returns", "killed"])
def test_a_child_that_ends_while_the_parent_still_sends_gives_broken_pipe_then_eof(host, ssh_options, how):
    """Found by an audit: the parent sends 1 MiB messages in a loop while the child returns (or
    is killed) mid-stream.  The relay drained its copy of the child's end and closed it, but the
    parent's blocked send put more in between: the socket closed with bytes unread and reset the
    parent's, whose recv() raised ConnectionResetError in 1-6 of 10 runs.  Locally: BrokenPipeError
    from send, then EOFError from recv.  The relay now shuts its last copy's read side first."""
    for _ in range(5):      # (the race it closed took one run in 2-10)
        parent, child = Pipe()
        p = RemoteProcess(host, target=_reads_then_ends, args=(child, 10 if how == "returns" else 10**9),
                          daemon=True, **ssh_options)
        sent: dict = {}
        try:
            p.start()
            child.close()
            sender = threading.Thread(target=_stream, args=(parent, sent), daemon=True)
            sender.start()
            if how == "killed":
                time.sleep(0.3)
                p.kill()
            sender.join(30)
            assert not sender.is_alive(), "the parent's send never failed"
            assert isinstance(sent["error"], BrokenPipeError), repr(sent["error"])
            assert parent.poll(10)
            with pytest.raises(EOFError):
                parent.recv()
            p.join(30)
            assert p.exitcode == (0 if how == "returns" else -signal.SIGKILL)
        finally:
            if p.is_alive():
                p.kill()
            parent.close()


@pytest.mark.one_transport
def test_unread_bytes_stay_in_an_end_the_program_still_holds(host, ssh_options):
    """The program kept the child's end open: its next reader may take what the child did not, as
    with a local child, so the relay leaves them in the socket."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=_ends_unread, args=(child,), daemon=True, **ssh_options)
    try:
        p.start()
        parent.send_bytes(b"x" * (12 * MIB))
        assert parent.recv() == "bye"
        p.join(30)
        assert p.exitcode == 0
        time.sleep(0.5)                 # (the relay lets go of its copy after the exit report)
        assert child.poll(0)
        assert os.read(child.fileno(), 1) == b"x"   # (the rest of a message the relay did not forward)
    finally:
        if p.is_alive():
            p.kill()
        parent.close()
        child.close()


def test_only_copy_looks_at_the_users_process():
    from remoteproc.relay.link import only_copy

    a, b = socket.socketpair()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert only_copy(os.getpid(), a.fileno()) is False     # (this process holds it)
        assert only_copy(sleeper.pid, a.fileno()) is True      # (that one does not)
    finally:
        sleeper.kill()
        sleeper.wait(10)
        a.close()
        b.close()
    gone = subprocess.Popen(["true"])
    gone.wait(10)
    c, d = socket.socketpair()
    try:
        assert only_copy(gone.pid, c.fileno()) is True          # (its process is gone)
    finally:
        c.close()
        d.close()


def _raises(exc):
    def call(*args):
        raise exc
    return call


def test_what_cannot_be_looked_at_changes_nothing(monkeypatch):
    """No /proc listing (a far peer is then not found), no fd to spare for the copy, no
    wmem_default to read (then only a buffer already as large as ours is left as it is)."""
    a, b = Pipe()
    far = os.dup2(a.fileno(), 901)
    try:
        inode = os.fstat(a.fileno()).st_ino
        a.close()
        with monkeypatch.context() as m:
            m.setattr(os, "listdir", _raises(PermissionError(13, "Permission denied")))
            assert sndbuf.fd_of(inode, b.fileno()) is None
        before = sndbuf_of(far)
        with monkeypatch.context() as m:
            m.setattr(os, "dup", _raises(OSError(24, "Too many open files")))
            sndbuf.widen_peer(b.fileno())
        assert sndbuf_of(far) == before
        with monkeypatch.context() as m:
            m.setattr(sndbuf, "_system_default", lambda: None)
            sndbuf.widen_peer(b.fileno())
            assert sndbuf_of(far) == granted(2 * MIB)       # (below ours: widened)
            sock = socket.socket(fileno=far)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 3 * MIB)
            sock.detach()
            sndbuf.widen_peer(b.fileno())
            assert sndbuf_of(far) == granted(3 * MIB)       # (as large as ours or more: left)
    finally:
        os.close(far)
        b.close()
