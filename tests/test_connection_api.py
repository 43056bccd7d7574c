"""multiprocessing Connections bridged across hosts behave as local ones, through a real sshd.

Modelled on CPython's _test_multiprocessing.py (_TestConnection, _TestPoll, TestWait):
each behaviour is checked on the parent's end and, where it matters, on the remote
child's end (the child runs the check and reports).
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import termios
import time
from multiprocessing import BufferTooShort
from multiprocessing.connection import wait

import cloudpickle
import pytest

from remoteproc import Pipe, RemoteProcess

# Targets below are shipped by value: this test module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

IMMEDIATE = 0.5
"""Seconds within which a call that must not wait returns (generous: CI machines are small)."""

SENTINEL = b"\0stop\0"
MSG = b"abcdefghijklmnopqrstuvwxyz"


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001
        return (type(exc).__name__, str(exc))


def start(host, ssh_options, target, *args, **kwargs):
    p = RemoteProcess(host, target=target, args=args, kwargs=kwargs, daemon=True, **ssh_options)
    p.start()
    return p


# -- targets -------------------------------------------------------------------------

def echo(conn):
    for msg in iter(conn.recv_bytes, SENTINEL):
        conn.send_bytes(msg)
    conn.close()


def send_later(conn, delay, *messages):
    time.sleep(delay)
    for m in messages:
        conn.send_bytes(m)


def remote_send_bytes_checks(conn):
    conn.send_bytes(MSG, 5)
    conn.send_bytes(MSG, 7, 8)
    conn.send_bytes(MSG, 26)
    conn.send_bytes(MSG, 26, 0)
    conn.send_bytes(memoryview(MSG), 1, 2)
    conn.send_bytes(array.array("i", range(4)), 4, 8)     # offset and size count bytes
    errors = [_outcome(lambda a=a: conn.send_bytes(MSG, *a)) for a in ((27,), (22, 5), (26, 1), (-1,), (4, -1))]
    conn.send(errors)


def remote_receive_checks(conn):
    """Receive side on the remote end: recv_bytes_into, BufferTooShort, maxlength, poll."""
    out = {}
    out["poll0"] = conn.poll(0)
    out["poll-1"] = conn.poll(-1)
    t = time.monotonic()
    out["poll_timeout"] = conn.poll(0.2)
    out["poll_elapsed"] = time.monotonic() - t
    conn.send("ready")
    out["pollNone"] = conn.poll(None)
    buf = array.array("i", [0] * 10)
    out["into"] = conn.recv_bytes_into(buf, 3 * buf.itemsize)
    out["buf"] = list(buf)
    small = bytearray(8)
    try:
        conn.recv_bytes_into(small)
    except BufferTooShort as exc:
        out["too_short"] = exc.args
    out["empty"] = (conn.poll(5), conn.recv_bytes())
    try:
        conn.recv_bytes(10)
    except OSError as exc:
        out["maxlength"] = (str(exc), conn.closed, conn.readable, conn.writable)
    return out


def remote_receive_checks_target(conn, report):
    report.send(remote_receive_checks(conn))


def remote_local_properties(duplex_a, duplex_b, reader, writer, report):
    out = {
        "duplex": (duplex_a.readable, duplex_a.writable),
        "reader": (reader.readable, reader.writable),
        "writer": (writer.readable, writer.writable),
        "reader.send": _outcome(lambda: reader.send(1)),
        "writer.recv": _outcome(writer.recv),
        "writer.poll": _outcome(writer.poll),
    }
    with duplex_a as entered:
        out["enter_returns_self"] = entered is duplex_a
        out["closed_inside"] = duplex_a.closed
        duplex_a.send("from inside the with block")
    out["closed_after"] = duplex_a.closed
    out["recv_after_close"] = _outcome(duplex_a.recv)
    out["send_after_close"] = _outcome(lambda: duplex_a.send(1))
    out["poll_after_close"] = _outcome(duplex_a.poll)
    out["fileno_after_close"] = _outcome(duplex_a.fileno)
    duplex_a.close()        # closing twice is fine
    writer.send("via the one-way pipe")
    try:
        duplex_b.recv()
    except EOFError:
        out["eof"] = True
    report.send(out)


def remote_sends_handles(conn, other, report):
    results = {}
    for label, value in (("connection", other), ("nested connection", {"x": [other]}),
                         ("socket", socket.socket())):
        try:
            conn.send(value)
        except TypeError as exc:
            results[label] = ("TypeError", str(exc))
        except Exception as exc:  # noqa: BLE001
            results[label] = (type(exc).__name__, str(exc))
        else:
            results[label] = "sent"
    conn.send("still usable")
    report.send(results)


def big_echo(conn, size):
    data = conn.recv_bytes()
    conn.send((len(data), hashlib.sha256(data).hexdigest()))
    del data
    conn.send_bytes(_pattern(size))


def _pattern(size):
    block = bytes(range(256)) * 4096          # 1 MiB
    reps, rest = divmod(size, len(block))
    return block * reps + block[:rest]


def child_sends(w, n, slow):
    import random

    for i in range(n):
        if slow:
            time.sleep(random.random() * 0.05)
        w.send((i, os.getpid()))
    w.close()


def close_and_linger(conn):
    conn.close()
    time.sleep(5)


def poll_then_exit(r):
    r.poll(3)


# -- the CPython connection test, across hosts ------------------------------------------

def test_connection_like_cpython(host, ssh_options):
    conn, child_conn = Pipe()
    p = start(host, ssh_options, echo, child_conn)
    child_conn.close()

    seq = [1, 2.25, None]
    msg = b"hello world"
    longmsg = msg * 10
    arr = array.array("i", range(4))
    assert isinstance(conn.fileno(), int)
    assert conn.send(seq) is None
    assert conn.recv() == seq
    assert conn.send_bytes(msg) is None
    assert conn.recv_bytes() == msg

    buffer = array.array("i", [0] * 10)
    conn.send_bytes(arr)
    assert conn.recv_bytes_into(buffer) == len(arr) * buffer.itemsize
    assert list(buffer) == list(arr) + [0] * 6
    buffer = array.array("i", [0] * 10)
    conn.send_bytes(arr)
    assert conn.recv_bytes_into(buffer, 3 * buffer.itemsize) == len(arr) * buffer.itemsize
    assert list(buffer) == [0] * 3 + list(arr) + [0] * 3
    buffer = bytearray(40)
    conn.send_bytes(longmsg)
    with pytest.raises(BufferTooShort) as info:
        conn.recv_bytes_into(buffer)
    assert info.value.args == (longmsg,)

    for timeout in (None, 0, -1):
        t = time.monotonic()
        assert (conn.poll() if timeout is None else conn.poll(timeout)) is False
        assert time.monotonic() - t < IMMEDIATE
    t = time.monotonic()
    assert conn.poll(0.3) is False
    assert 0.25 < time.monotonic() - t < 2
    conn.send(None)
    assert conn.poll(10)                   # the echo is back
    t = time.monotonic()
    assert conn.poll(0.3) is True
    assert time.monotonic() - t < IMMEDIATE
    assert conn.recv() is None

    really_big_msg = b"X" * (16 << 20)
    conn.send_bytes(really_big_msg)
    assert conn.recv_bytes() == really_big_msg

    conn.send_bytes(SENTINEL)
    assert conn.readable and conn.writable
    with pytest.raises(EOFError):
        conn.recv()
    with pytest.raises(EOFError):
        conn.recv_bytes()
    p.join(30)
    assert p.exitcode == 0


def test_send_bytes_offset_size_and_value_errors(host, ssh_options):
    a, b = Pipe()
    p = start(host, ssh_options, echo, b)
    b.close()
    a.send_bytes(MSG, 5)
    assert a.recv_bytes() == MSG[5:]
    a.send_bytes(MSG, 7, 8)
    assert a.recv_bytes() == MSG[7:15]
    a.send_bytes(MSG, 26)
    assert a.recv_bytes() == b""
    a.send_bytes(MSG, 26, 0)
    assert a.recv_bytes() == b""
    local_errors = [_outcome(lambda args=args: a.send_bytes(MSG, *args))
                    for args in ((27,), (22, 5), (26, 1), (-1,), (4, -1))]
    assert [e[0] for e in local_errors] == ["ValueError"] * 5
    a.send_bytes(b"after the errors")          # the errors sent nothing
    assert a.recv_bytes() == b"after the errors"
    a.send_bytes(SENTINEL)
    p.join(30)

    # The same from the remote end.
    a, b = Pipe()
    p = start(host, ssh_options, remote_send_bytes_checks, b)
    b.close()
    got = [a.recv_bytes() for _ in range(6)]
    assert got == [MSG[5:], MSG[7:15], b"", b"", MSG[1:3], array.array("i", range(4)).tobytes()[4:12]]
    assert a.recv() == local_errors
    p.join(30)
    assert p.exitcode == 0


def test_receive_side_on_the_remote_end(host, ssh_options):
    a, b = Pipe()
    report_r, report_w = Pipe(duplex=False)
    p = start(host, ssh_options, remote_receive_checks_target, b, report_w)
    b.close()
    report_w.close()
    assert a.recv() == "ready"
    time.sleep(0.2)
    a.send_bytes(array.array("i", range(4)))
    a.send_bytes(b"z" * 20)
    a.send_bytes(b"")
    a.send_bytes(b"m" * 100)
    out = report_r.recv()
    p.join(30)
    assert out["poll0"] is False and out["poll-1"] is False and out["poll_timeout"] is False
    assert 0.15 < out["poll_elapsed"] < 2
    assert out["pollNone"] is True
    assert out["into"] == 16 and out["buf"] == [0, 0, 0, 0, 1, 2, 3, 0, 0, 0]
    assert out["too_short"] == (b"z" * 20,)
    assert out["empty"] == (True, b"")
    # as locally: the stream is out of step, so a duplex end stops being readable
    assert out["maxlength"] == ("bad message length", False, False, True)
    assert p.exitcode == 0


def test_recv_bytes_maxlength_on_the_parent_end(host, ssh_options):
    a, b = Pipe()
    p = start(host, ssh_options, send_later, b, 0, b"short", b"x" * 100)
    b.close()
    assert a.recv_bytes(10) == b"short"
    with pytest.raises(OSError, match="bad message length"):
        a.recv_bytes(10)
    # as locally: the stream is out of step, so a duplex end stops being readable
    assert not a.closed and not a.readable and a.writable
    p.join(30)
    assert p.exitcode == 0


def test_poll_timeouts_and_none(host, ssh_options):
    a, b = Pipe()
    p = start(host, ssh_options, send_later, b, 0.5, b"late")
    b.close()
    t = time.monotonic()
    assert a.poll(0) is False and a.poll(-1) is False and a.poll() is False
    assert time.monotonic() - t < IMMEDIATE
    assert a.poll(None) is True            # blocks until the message is there
    assert 0.3 < time.monotonic() - t < 10
    assert a.poll(0) is True and a.poll(-1) is True     # polling does not consume
    assert a.recv_bytes() == b"late"
    p.join(30)


def test_empty_messages_and_boundaries(host, ssh_options):
    """_TestPoll.test_strings / test_dont_merge: messages never merge or split; b'' is a message."""
    strings = (b"hello", b"", b"a", b"b", b"", b"bye", b"", b"lop")
    a, b = Pipe()
    p = start(host, ssh_options, send_later, b, 0.1, *strings)
    b.close()
    for s in strings:
        assert a.poll(10)
        assert a.poll(1.0) is True      # still there
        assert a.recv_bytes() == s
    p.join(30)

    a, b = Pipe()
    p = start(host, ssh_options, echo, b)
    b.close()
    a.send_bytes(b"")
    assert a.poll(10) is True and a.poll(0) is True
    assert a.recv_bytes() == b""
    a.send_bytes(SENTINEL)
    p.join(30)


def test_256_mib_each_way(host, ssh_options):
    size = 256 << 20
    a, b = Pipe()
    p = start(host, ssh_options, big_echo, b, size)
    b.close()
    data = _pattern(size)
    digest = hashlib.sha256(data).hexdigest()
    a.send_bytes(data)
    del data
    assert a.recv() == (size, digest)
    back = a.recv_bytes()
    assert len(back) == size and hashlib.sha256(back).hexdigest() == digest
    del back
    p.join(30)
    assert p.exitcode == 0


def test_directions_closing_and_context_manager_on_both_ends(host, ssh_options):
    duplex_parent, duplex_child = Pipe()
    down_r, down_w = Pipe(duplex=False)          # parent -> child
    up_r, up_w = Pipe(duplex=False)              # child -> parent
    report_r, report_w = Pipe(duplex=False)
    p = start(host, ssh_options, remote_local_properties, duplex_child, Pipe()[1], down_r, up_w, report_w)
    for c in (duplex_child, down_r, up_w, report_w):
        c.close()
    # the parent's ends, as CPython's test_duplex_false checks them
    assert (down_w.readable, down_w.writable) == (False, True)
    assert (up_r.readable, up_r.writable) == (True, False)
    with pytest.raises(OSError):
        up_r.send(2)
    with pytest.raises(OSError):
        down_w.recv()
    with pytest.raises(OSError):
        down_w.poll()

    assert duplex_parent.recv() == "from inside the with block"
    with pytest.raises(EOFError):
        duplex_parent.recv()                     # the child's with block closed its end
    assert up_r.recv() == "via the one-way pipe"
    out = report_r.recv()
    p.join(30)
    assert out["duplex"] == (True, True)
    assert out["reader"] == (True, False) and out["writer"] == (False, True)
    assert out["reader.send"] == ("OSError", "connection is read-only")
    assert out["writer.recv"] == ("OSError", "connection is write-only")
    assert out["writer.poll"] == ("OSError", "connection is write-only")
    assert out["enter_returns_self"] and out["closed_inside"] is False and out["closed_after"] is True
    for key in ("recv_after_close", "send_after_close", "poll_after_close", "fileno_after_close"):
        assert out[key] == ("OSError", "handle is closed")

    with duplex_parent:
        pass
    assert duplex_parent.closed
    for op in (duplex_parent.recv, lambda: duplex_parent.send(1), duplex_parent.poll):
        with pytest.raises(OSError, match="handle is closed"):
            op()


def test_eof_and_broken_pipe_after_the_remote_end_closed(host, ssh_options):
    a, b = Pipe()
    p = start(host, ssh_options, close_and_linger, b)
    b.close()
    assert a.poll(10) is True               # EOF makes poll() true, as locally
    with pytest.raises(EOFError):
        a.recv()
    # Locally the first send raises BrokenPipeError; across hosts the relay learns that the
    # remote end is gone from its first forwarded write, so one more send may be accepted.
    deadline = time.monotonic() + 10
    with pytest.raises(BrokenPipeError):
        while time.monotonic() < deadline:
            a.send("anyone?")
            time.sleep(0.02)
    p.kill()
    p.join(30)


def test_eof_when_the_child_closes_or_exits(host, ssh_options):
    def close_early(conn):
        conn.close()
        time.sleep(0.5)

    parent, child = Pipe()
    p = RemoteProcess(host, target=close_early, args=(child,), **ssh_options)
    p.start()
    child.close()
    assert wait([parent], 30) == [parent]
    with pytest.raises(EOFError):
        parent.recv()
    p.join(30)
    assert p.exitcode == 0


def test_eof_reaches_the_child_when_the_parent_closes(host, ssh_options):
    def wait_eof(conn, report):
        try:
            conn.recv()
        except EOFError:
            report.send("EOF seen")

    parent, child = Pipe()
    report_parent, report_child = Pipe()
    p = RemoteProcess(host, target=wait_eof, args=(child, report_child), **ssh_options)
    p.start()
    child.close()
    report_child.close()
    parent.close()
    assert report_parent.recv() == "EOF seen"
    p.join(30)
    assert p.exitcode == 0


def test_parent_end_works_with_poll_and_wait(host, ssh_options):
    def late(conn):
        time.sleep(0.3)
        conn.send("late")

    parent, child = Pipe()
    p = RemoteProcess(host, target=late, args=(child,), **ssh_options)
    p.start()
    child.close()
    assert parent.poll(0) is False
    ready = wait([parent, p.sentinel], 30)
    assert parent in ready
    assert parent.recv() == "late"
    p.join(30)
    assert p.sentinel in wait([p.sentinel], 0)


def test_handles_inside_messages_from_the_remote_child_raise_type_error(host, ssh_options):
    a, b = Pipe()
    other_parent, other_child = Pipe()
    report_r, report_w = Pipe(duplex=False)
    p = start(host, ssh_options, remote_sends_handles, b, other_child, report_w)
    for c in (b, other_child, report_w):
        c.close()
    results = report_r.recv()
    p.join(30)
    for label in ("connection", "nested connection", "socket"):
        kind, text = results[label]
        assert kind == "TypeError", results
        assert "cannot cross hosts" in text
    assert "Connection" in results["connection"][1] and "socket" in results["socket"][1]
    assert a.recv() == "still usable"      # nothing half-sent: the stream is still in step
    assert p.exitcode == 0


@pytest.mark.parametrize("slow", [False, True])
def test_wait_on_many_remote_children(host, ssh_options, slow):
    readers, procs = [], []
    for _ in range(4):
        r, w = Pipe(duplex=False)
        procs.append(start(host, ssh_options, child_sends, w, 10, slow))
        w.close()
        readers.append(r)
    messages = []
    deadline = time.monotonic() + 30
    while readers and time.monotonic() < deadline:
        for r in wait(readers, 5):
            try:
                messages.append(r.recv())
            except EOFError:
                readers.remove(r)
                r.close()
    for p in procs:
        p.join(30)
    assert sorted(messages) == sorted((i, p.pid) for i in range(10) for p in procs)


def test_wait_timeout_and_mixed_ready(host, ssh_options):
    a, b = Pipe()
    p = start(host, ssh_options, echo, b)
    b.close()
    t = time.monotonic()
    assert wait([a, p.sentinel], 0.5) == []
    assert 0.45 < time.monotonic() - t < 3
    a.send_bytes(b"ping")
    assert wait([a, p.sentinel], 10) == [a]
    assert a.recv_bytes() == b"ping"
    a.send_bytes(SENTINEL)
    ready = []
    deadline = time.monotonic() + 10
    while p.sentinel not in ready and time.monotonic() < deadline:
        ready = wait([a, p.sentinel], 10)
    assert set(ready) == {a, p.sentinel}       # EOF on a and the process end, both ready
    p.join(30)


def test_one_end_read_by_parent_and_remote_child_is_not_supported(host, ssh_options):
    """Documented limitation (docs/api.md): bytes the relay forwarded cannot come back.

    CPython's _TestPoll.test_boundaries lets a child poll() an end the parent reads
    afterwards; across hosts the relay reads that end for the remote child, so the
    parent never sees those messages.
    """
    r, w = Pipe(duplex=False)
    p = start(host, ssh_options, poll_then_exit, r)
    time.sleep(0.5)
    w.send_bytes(b"first")
    w.send_bytes(b"second")
    w.close()
    p.join(30)
    assert p.exitcode == 0
    got = None
    if r.poll(2):
        try:
            got = r.recv_bytes()
        except EOFError:
            got = "EOF"
    assert got in (None, "EOF"), "the parent read %r: update docs/api.md, the limitation is gone" % (got,)


def send_one_mib(conn, report):
    """Send a 1 MiB message; report the send buffer of the child's end and that send() returned."""
    import socket as socket_module

    sock = socket_module.socket(fileno=os.dup(conn.fileno()))
    report.send(sock.getsockopt(socket_module.SOL_SOCKET, socket_module.SO_SNDBUF))
    sock.close()
    conn.send_bytes(b"x" * (1 << 20))
    report.send("sent")
    conn.recv()             # until the parent says done


def _whole_message_fits() -> bool:
    """Linux gives twice what is asked, up to net.core.wmem_max: 4 MiB asked, 1 MiB + framing must fit."""
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return 2 * min(4 << 20, int(f.read())) > (1 << 20) + 65536
    except OSError:
        return False


def test_a_one_mib_message_is_sent_whole_before_the_parent_reads(host, ssh_options):
    """The bridged sockets' writers ask for a send buffer that holds a whole 1 MiB message: the remote
    child's send() returns, and the relay puts the message into the parent's end, before the parent
    reads anything (so a parent with a busy thread gets it in one read, not five)."""
    parent, child = Pipe()
    report_r, report_w = Pipe(duplex=False)
    p = start(host, ssh_options, send_one_mib, child, report_w)
    report_w.close()
    try:
        assert report_r.poll(60)
        remote_sndbuf = report_r.recv()
        if not _whole_message_fits():
            pytest.skip("net.core.wmem_max is too small for a 1 MiB socket buffer here")
        assert remote_sndbuf > (1 << 20), "the remote child's end has the default send buffer"
        assert report_r.poll(60) and report_r.recv() == "sent", "the child's send() waited for a reader"
        queued = array.array("i", [0])

        def whole():
            fcntl.ioctl(parent.fileno(), termios.FIONREAD, queued)
            return queued[0] >= (1 << 20) + 4

        deadline = time.monotonic() + 60
        while not whole() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert whole(), "only %d bytes wait in the parent's end" % queued[0]
        assert len(parent.recv_bytes()) == 1 << 20
        parent.send("done")
    finally:
        parent.close()
        p.join(30)
    assert p.exitcode == 0


MAIN_CLASSES_SCRIPT = '''
import collections, dataclasses, enum, json, sys
from remoteproc import Pipe, Queue, RemoteProcess

@dataclasses.dataclass
class Item:
    v: int

class Color(enum.Enum):
    RED = 1

Point = collections.namedtuple("Point", "x y")

class Oops(Exception):
    pass

def echo(conn):                      # names none of the classes: they come with the message
    got = conn.recv()
    conn.send(got)
    conn.send(sys.argv)

def make(conn):                      # made here, sent by reference to the parent's classes
    conn.send([Item(7), Color.RED, Point(1, 2), Oops("made remotely")])

def from_queue(q, conn):
    conn.send(q.get(timeout=30))

def r(x):                            # a name the agent's own stub also has
    return x * x

def apply(conn):                     # functions by reference, both ways; the target is __main__'s own
    f, x = conn.recv()
    conn.send((f(x), r, apply))

if __name__ == "__main__":
    host, options = json.loads(sys.argv[1])
    out = []
    for target, payload in ((echo, [Item(5), Color.RED, Point(3, 4)]), (make, None)):
        a, b = Pipe()
        p = RemoteProcess(host, target=target, args=(b,), **options)
        p.start()
        b.close()
        if payload is not None:
            a.send(payload)
        got = a.recv()
        out.append([type(x).__name__ for x in got] + [repr(got) if target is echo else str(got[3])])
        if target is echo:
            out.append(a.recv())
        p.join(30)
        out.append(p.exitcode)
    q = Queue()
    a, b = Pipe()
    p = RemoteProcess(host, target=from_queue, args=(q, b), **options)
    p.start()
    q.put(Item(9))
    out.append(repr(a.recv()))
    p.join(30)
    out.append(p.exitcode)
    a, b = Pipe()
    p = RemoteProcess(host, target=apply, args=(b,), **options)
    p.start()
    a.send((r, 7))
    value, f, g = a.recv()
    out.append([value, f is r, g is apply])
    p.join(30)
    out.append(p.exitcode)
    print(json.dumps(out))
'''


def test_the_main_script_s_classes_and_functions_cross_a_pipe_both_ways(host, ssh_options, scripts):
    """A message is a plain pickle, which names a class or function of the script by reference
    (``__main__.Item``): as in a forked child, the remote child resolves it, whether its own
    code names it or not, and so does the parent for instances made remotely; the target is
    the child's ``__main__.apply``, and the agent's own names do not shadow the script's.  The child
    also gets the parent's sys.argv, as a forked one has it."""
    path = scripts("main_classes.py", MAIN_CLASSES_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(cloudpickle.__file__)))
               + os.pathsep + os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    argv1 = json.dumps([host, ssh_options])
    out = subprocess.run([sys.executable, path, argv1, "--flag", "x"], capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == [
        ["Item", "Color", "Point", "[Item(v=5), <Color.RED: 1>, Point(x=3, y=4)]"],
        [path, argv1, "--flag", "x"], 0,
        ["Item", "Color", "Point", "Oops", "made remotely"], 0,
        "Item(v=9)", 0,
        [49, True, True], 0,
    ]


def test_which_definitions_of_the_main_script_go_with_a_start(monkeypatch):
    """Classes and functions defined at the top of __main__, each pickled by value alone; not
    those it imports, not a lambda or an alias, not one too big to go with every start (given
    up on early, not pickled whole), not one that cannot be pickled."""
    import pickle
    import threading
    import types

    from remoteproc import reduction

    main = types.ModuleType("__main__")
    exec("class Small:\n    x = 1\n"
         "class Huge:\n    table = b'x' * (1 << 24)\n"
         "class Locked:\n    lock = LOCK\n"
         "class Nested:\n    class Inner:\n        pass\n"
         "Alias = Small\n"
         "def f(x):\n    return x + 1\n"
         "def g():\n    return BIG\n"
         "h = lambda: 1\n",
         {"__name__": "__main__", "LOCK": threading.Lock(), "BIG": b"x" * (1 << 24),
          "__builtins__": __builtins__}, main.__dict__)
    main.Imported = BufferTooShort
    monkeypatch.setitem(sys.modules, "__main__", main)
    main.imported_function = os.getcwd
    blobs = reduction.main_definitions()
    assert sorted(blobs) == ["Nested", "Small", "f"]
    assert pickle.loads(blobs["Small"]).x == 1
    assert pickle.loads(blobs["f"])(1) == 2
    assert all(len(b) < reduction.MAIN_DEF_MAX for b in blobs.values())
    assert reduction.main_definitions()["Small"] is blobs["Small"]         # pickled once each
    assert reduction.main_definitions()["f"] is blobs["f"]
