"""RemoteProcess behaves as multiprocessing.Process, through a real sshd.

Modelled on what CPython's Lib/test/_test_multiprocessing.py checks for Process,
subclassing, sys.exit and the interpreter's exit; where the behaviour is plain
multiprocessing's, the test runs a local ``multiprocessing.Process`` beside the
remote one and compares.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from multiprocessing import current_process, parent_process
from multiprocessing.connection import wait

import cloudpickle
import pytest
from proctable import gone

import remoteproc
from remoteproc import Pipe, RemoteProcess

# Targets below are shipped by value: this test module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

IMMEDIATE = 0.5
"""Seconds within which a call that must not wait returns (generous: CI machines are small)."""

LocalProcess = multiprocessing.get_context("fork").Process


# -- targets -------------------------------------------------------------------------

def report(conn, *args, **kwargs):
    me = current_process()
    conn.send({
        "args": args, "kwargs": kwargs, "name": me.name, "daemon": me.daemon,
        "authkey": bytes(me.authkey), "pid": os.getpid(), "ident": me.ident,
        "parent_pid": parent_process().pid, "parent_name": parent_process().name,
        "parent_alive": parent_process().is_alive(),
    })


def report_current_state(conn):
    me = current_process()
    conn.send((me.exitcode, me.is_alive(), me.ident == os.getpid()))


def wait_for(conn, reply=None):
    """Block until the parent sends something (or closes), then optionally answer."""
    try:
        conn.recv()
    except EOFError:
        pass
    if reply is not None:
        conn.send(reply)


def sleep_forever(conn=None):
    if conn is not None:
        conn.send(os.getpid())
    time.sleep(300)


def exit_with(*args):
    sys.exit(*args)


def raise_value_error():
    raise ValueError("remote boom")


def start_threads(conn):
    def slow():
        time.sleep(0.5)
        conn.send("non-daemon thread done")

    def forever():
        time.sleep(300)
        conn.send("daemon thread must not be waited for")

    threading.Thread(target=slow).start()
    threading.Thread(target=forever, daemon=True).start()


# -- constructor and attributes ------------------------------------------------------

def test_constructor_matches_multiprocessing(host, ssh_options):
    with pytest.raises(AssertionError) as local:
        LocalProcess(group=1)
    with pytest.raises(AssertionError) as remote:
        RemoteProcess(host, group=1, **ssh_options)
    assert str(remote.value) == str(local.value) == "group argument must be None for now"

    args, kwargs = [1, "two"], {"three": 3}
    p = RemoteProcess(host, target=report, args=args, kwargs=kwargs, **ssh_options)
    args.append("changed")
    kwargs["changed"] = True
    assert p._args == (1, "two") and p._kwargs == {"three": 3}      # copied, as BaseProcess does
    assert p.daemon is current_process().daemon is False
    assert RemoteProcess(host, daemon=True, **ssh_options).daemon is True
    assert RemoteProcess(host, daemon=False, **ssh_options).daemon is False

    # Default names count with multiprocessing's own counter: TypeName-N.
    a = RemoteProcess(host, **ssh_options)
    b = multiprocessing.Process()
    c = RemoteProcess(host, **ssh_options)
    na, nb, nc = (int(x.name.rsplit("-", 1)[1]) for x in (a, b, c))
    assert a.name.startswith("RemoteProcess-") and b.name.startswith("Process-")
    assert na < nb < nc
    assert p.host == host and p.pid is None and p.ident is None and p.exitcode is None
    assert not p.is_alive()


def test_constructor_rejects_bad_hosts_and_options(host):
    with pytest.raises(remoteproc.ConfigError):
        RemoteProcess("user@host:99999")
    with pytest.raises(remoteproc.ConfigError) as info:
        RemoteProcess(host, no_such_option=1)
    assert "no_such_option" in str(info.value)
    with pytest.raises(AssertionError):
        RemoteProcess(host, print)   # group comes first, as in BaseProcess: not a target


def test_args_kwargs_name_daemon_authkey_arrive(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=report, args=(child, 1, [2]), kwargs={"k": {"v": 3}}, **ssh_options)
    p.name = "Worker 1"
    p.daemon = True
    p.authkey = b"my own key"
    assert p.authkey == b"my own key"
    p.start()
    child.close()
    got = parent.recv()
    p.join(30)
    assert got["args"] == (1, [2]) and got["kwargs"] == {"k": {"v": 3}}
    assert got["name"] == "Worker 1" and got["daemon"] is True
    assert got["authkey"] == b"my own key"
    assert got["pid"] == got["ident"] == p.pid == p.ident
    assert got["parent_pid"] == os.getpid() and got["parent_name"] == current_process().name
    assert got["parent_alive"] is True
    assert p.exitcode == 0


def test_current_process_state_in_the_child(host, ssh_options):
    local_parent, local_child = Pipe()
    local = LocalProcess(target=report_current_state, args=(local_child,))
    local.start()
    expected = local_parent.recv()
    local.join(30)
    assert expected == (None, True, True)
    parent, child = Pipe()
    p = RemoteProcess(host, target=report_current_state, args=(child,), **ssh_options)
    p.start()
    child.close()
    try:
        assert parent.poll(30)
        assert parent.recv() == expected
    finally:
        p.join(30)


def test_child_has_the_parents_authkey(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=report, args=(child,), **ssh_options)
    assert p.authkey == current_process().authkey
    p.start()
    child.close()
    assert parent.recv()["authkey"] == bytes(current_process().authkey)
    p.join(30)


def test_name_and_daemon_checks_match_multiprocessing(host, ssh_options):
    local, remote = LocalProcess(), RemoteProcess(host, target=wait_for, args=(None,), **ssh_options)
    for proc in (local, remote):
        proc.name = "renamed"
        assert proc.name == "renamed"
    with pytest.raises(AssertionError) as le:
        local.name = 5
    with pytest.raises(AssertionError) as re_:
        remote.name = 5
    assert str(le.value) == str(re_.value) == "name must be a string"

    parent, child = Pipe()
    p = RemoteProcess(host, target=wait_for, args=(child,), **ssh_options)
    p.start()
    child.close()
    with pytest.raises(AssertionError, match="process has already started"):
        p.daemon = True
    p.name = "renamed after start"     # allowed, as locally (only the local object changes)
    parent.send("go")
    p.join(30)
    assert p.exitcode == 0


# -- lifecycle -------------------------------------------------------------------------

def test_lifecycle_and_active_children(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=wait_for, args=(child, "bye"), **ssh_options)
    assert p not in multiprocessing.active_children()
    assert p.exitcode is None and not p.is_alive()
    p.start()
    child.close()
    assert p.is_alive() and p.exitcode is None
    assert isinstance(p.pid, int) and p.pid > 0 and p.ident == p.pid
    assert p in multiprocessing.active_children()
    parent.send("go")
    assert parent.recv() == "bye"
    assert p.join(30) is None
    assert p.exitcode == 0 and not p.is_alive()
    assert p not in multiprocessing.active_children()


def test_join_timeouts(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=wait_for, args=(child,), **ssh_options)
    p.start()
    child.close()
    for timeout in (0, -1, 0.0):
        t = time.monotonic()
        assert p.join(timeout) is None
        assert time.monotonic() - t < IMMEDIATE
        assert p.is_alive() and p.exitcode is None
    t = time.monotonic()
    p.join(0.4)
    assert 0.35 < time.monotonic() - t < 3
    assert p.exitcode is None
    parent.send("go")
    p.join(30)
    assert p.exitcode == 0
    for timeout in (None, 0, -1, 5):       # repeated joins return at once
        t = time.monotonic()
        p.join(timeout)
        assert time.monotonic() - t < IMMEDIATE
    assert p.exitcode == 0


def test_concurrent_joins_from_threads(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=wait_for, args=(child,), **ssh_options)
    p.start()
    child.close()
    alive_seen = []
    joiners = [threading.Thread(target=p.join, args=(30,)) for _ in range(4)]
    for t in joiners:
        t.start()
    alive_seen.append(p.is_alive())       # never blocks, although other threads join
    parent.send("go")
    for t in joiners:
        t.join(30)
    assert alive_seen == [True]
    assert p.exitcode == 0


@pytest.mark.parametrize("method,code", [("terminate", -signal.SIGTERM), ("kill", -signal.SIGKILL)])
def test_terminate_and_kill(host, ssh_options, is_loopback, method, code):
    parent, child = Pipe()
    p = RemoteProcess(host, target=sleep_forever, args=(child,), daemon=True, **ssh_options)
    p.start()
    child.close()
    pid = parent.recv()
    assert pid == p.pid
    t = time.monotonic()
    getattr(p, method)()
    p.join(30)
    assert time.monotonic() - t < 5
    assert p.exitcode == code
    assert not p.is_alive() and p not in multiprocessing.active_children()
    if is_loopback:
        assert gone(pid)
    getattr(p, method)()        # a late signal is a no-op, as locally
    p.terminate()
    assert p.exitcode == code


def test_many_processes_terminated_at_once(host, ssh_options):
    procs = [RemoteProcess(host, target=time.sleep, args=(300,), **ssh_options) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [-signal.SIGTERM] * 8


def test_sentinel(host, ssh_options):
    parent, child = Pipe()
    a, b = Pipe()
    p = RemoteProcess(host, target=wait_for, args=(child,), **ssh_options)
    with pytest.raises(ValueError, match="process not started"):
        _ = p.sentinel
    p.start()
    child.close()
    sentinel = p.sentinel
    assert isinstance(sentinel, int)
    os.fstat(sentinel)                       # a real file descriptor
    assert wait([sentinel], 0) == []
    assert wait([a, sentinel, b], 0.3) == []
    b.send(None)
    assert wait([a, sentinel, b], 10) == [a]
    a.recv()
    parent.send("go")
    t = time.monotonic()
    assert wait([a, sentinel, b], 30) == [sentinel]
    assert time.monotonic() - t < 5
    p.join(30)
    assert wait([sentinel], 0) == [sentinel]     # stays ready
    a.send(None)
    assert set(wait([a, sentinel, b], 5)) == {sentinel, b}


def test_close_and_errors_after_close(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=wait_for, args=(child,), **ssh_options)
    p.start()
    child.close()
    with pytest.raises(ValueError, match="Cannot close a process while it is still running"):
        p.close()
    parent.send("go")
    p.join(30)
    sentinel = p.sentinel
    p.close()
    with pytest.raises(OSError):
        os.fstat(sentinel)                   # close() released it
    for name in ("is_alive", "join", "terminate", "kill", "start", "exitcode", "pid", "ident", "sentinel",
                 "connection_error"):
        with pytest.raises(ValueError, match="process object is closed"):
            attr = getattr(p, name)
            if callable(attr):
                attr()
    del attr
    p.close()                                # twice is fine
    assert "closed" in repr(p)
    ref = weakref.ref(p)
    del p
    gc.collect()
    assert ref() is None


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001
        return (type(exc).__name__, str(exc))


def test_wrong_state_errors_match_multiprocessing(host, ssh_options):
    """Each misuse raises what multiprocessing.Process raises, with the same message."""

    def script(make, go):
        out = []
        p = make()
        out.append(("join before start", _outcome(p.join)))
        out.append(("terminate before start", _outcome(p.terminate)[0]))
        out.append(("kill before start", _outcome(p.kill)[0]))
        out.append(("exitcode before start", _outcome(lambda: p.exitcode)))
        out.append(("sentinel before start", _outcome(lambda: p.sentinel)))
        p.start()
        out.append(("start twice", _outcome(p.start)))
        out.append(("daemon after start", _outcome(lambda: setattr(p, "daemon", True))))
        out.append(("close while running", _outcome(p.close)))
        go()
        p.join(30)
        out.append(("exitcode", p.exitcode))
        out.append(("close", _outcome(p.close)))
        out.append(("start after close", _outcome(p.start)))
        out.append(("join after close", _outcome(p.join)))
        q = make()
        out.append(("close before start", _outcome(q.close)))
        out.append(("start a closed one", _outcome(q.start)))
        return out

    lp, lc = Pipe()
    local = script(lambda: LocalProcess(target=wait_for, args=(lc,)), lambda: lp.send("go"))
    rp, rc = Pipe()
    remote = script(lambda: RemoteProcess(host, target=wait_for, args=(rc,), **ssh_options),
                    lambda: rp.send("go"))
    assert remote == local


def test_repr(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=sleep_forever, args=(child,), name="r1", daemon=True, **ssh_options)
    text = repr(p)
    assert text.startswith("<RemoteProcess name='r1' parent=%d initial" % os.getpid())
    assert "daemon" in text and "host=%r" % host in text and text.endswith(">")
    p.start()
    child.close()
    parent.recv()
    assert "pid=%d" % p.pid in repr(p) and " started" in repr(p)
    p.terminate()
    p.join(30)
    text = repr(p)
    assert " stopped exitcode=-SIGTERM daemon" in text and "host=%r" % host in text
    p.close()
    assert " closed" in repr(p)
    # The same shape as a local Process apart from the host.
    local = multiprocessing.Process(name="r1", daemon=True)
    assert repr(local) == "<Process name='r1' parent=%d initial daemon>" % os.getpid()


# -- exit codes ------------------------------------------------------------------------

EXIT_CASES = [(), (0,), (5,), (255,), (True,), (False,), (None,), ("a string reason",), ([1, 2, 3],)]


@pytest.mark.parametrize("args", EXIT_CASES, ids=repr)
def test_sys_exit_matches_multiprocessing(host, ssh_options, capfd, args):
    local = LocalProcess(target=exit_with, args=args)
    local.start()
    local.join(30)
    local_err = capfd.readouterr().err
    remote = RemoteProcess(host, target=exit_with, args=args, **ssh_options)
    remote.start()
    remote.join(30)
    remote_err = capfd.readouterr().err
    assert remote.exitcode == local.exitcode
    assert remote_err == local_err


def test_uncaught_exception_matches_multiprocessing(host, ssh_options, capfd):
    local = LocalProcess(target=raise_value_error, name="same name")
    local.start()
    local.join(30)
    local_err = capfd.readouterr().err
    remote = RemoteProcess(host, target=raise_value_error, name="same name", **ssh_options)
    remote.start()
    remote.join(30)
    remote_err = capfd.readouterr().err
    assert remote.exitcode == local.exitcode == 1
    # Same header, same frames of the user's code, same last line; the frames inside
    # multiprocessing name the remote host's copy of the standard library.
    assert remote_err.splitlines()[0] == local_err.splitlines()[0] == "Process same name:"
    assert remote_err.splitlines()[-1] == local_err.splitlines()[-1] == "ValueError: remote boom"
    user_frame = 'File "%s", line %d, in raise_value_error' % (__file__, raise_value_error.__code__.co_firstlineno + 1)
    assert user_frame in local_err and user_frame in remote_err
    assert '    raise ValueError("remote boom")' in remote_err


def test_child_waits_for_its_non_daemon_threads(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=start_threads, args=(child,), **ssh_options)
    t = time.monotonic()
    p.start()
    child.close()
    p.join(30)
    assert p.exitcode == 0
    assert 0.4 < time.monotonic() - t < 20
    assert parent.poll(5) and parent.recv() == "non-daemon thread done"
    with pytest.raises(EOFError):
        parent.recv()


# -- subclassing -------------------------------------------------------------------------

class Accumulator(RemoteProcess):
    """State on self, the child's Pipe end included; the parent keeps its own end."""

    def __init__(self, host, conn, start_value, **options):
        super().__init__(host, **options)
        self.conn = conn
        self.total = start_value
        self.seen = []

    def run(self):
        for n in iter(self.conn.recv, None):
            self.total += n
            self.seen.append(n)
            self.conn.send(self.total)
        self.conn.send((type(self).__name__, self.seen, self.name, current_process() is self))
        self.conn.close()


def test_subclass_with_state_on_self(host, ssh_options):
    parent, child = Pipe()
    acc = Accumulator(host, child, 100, **ssh_options)
    acc.daemon = True
    acc.start()
    child.close()
    assert [parent.send(n) or parent.recv() for n in (1, 2, 3)] == [101, 103, 106]
    parent.send(None)
    cls_name, seen, name, is_current = parent.recv()
    acc.join(30)
    assert (cls_name, seen, name, is_current) == ("Accumulator", [1, 2, 3], acc.name, True)
    assert acc.exitcode == 0
    assert acc.total == 100 and acc.seen == []      # the remote copy changed, not this one
    assert "host=%r" % host in repr(acc) and repr(acc).startswith("<Accumulator ")


class UpperCaser(RemoteProcess):
    """CPython's _UpperCaser: both ends of one Pipe live on self; the child closes the parent's."""

    def __init__(self, host, **options):
        super().__init__(host, **options)
        self.child_conn, self.parent_conn = Pipe()

    def run(self):
        self.parent_conn.close()
        for s in iter(self.child_conn.recv, None):
            self.child_conn.send(s.upper())
        self.child_conn.close()

    def submit(self, s):
        self.parent_conn.send(s)
        return self.parent_conn.recv()

    def stop(self):
        self.parent_conn.send(None)
        self.parent_conn.close()
        self.child_conn.close()


def test_subclass_holding_both_ends_of_a_pipe(host, ssh_options):
    u = UpperCaser(host, **ssh_options)
    u.daemon = True
    u.start()
    try:
        assert u.parent_conn.poll(0.5) is False
        assert u.submit("hello") == "HELLO"
        assert u.submit("world") == "WORLD"
        u.stop()
        u.join(30)
        assert u.exitcode == 0
    finally:
        if u.exitcode is None:
            u.kill()
            u.join(10)


# -- the parent interpreter's exit -------------------------------------------------------

EXIT_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from remoteproc import RemoteProcess, Pipe

    def forever(conn):
        conn.send(os.getpid())
        time.sleep(300)

    def slow(conn):
        conn.send(os.getpid())
        time.sleep(1.0)
        print("non-daemon finished", flush=True)

    host, opts = sys.argv[1], eval(sys.argv[2])
    pids = []
    keep = []
    for target, daemon in ((forever, True), (forever, True), (slow, False)):
        parent, child = Pipe()
        p = RemoteProcess(host, target=target, args=(child,), daemon=daemon, **opts)
        p.start()
        child.close()
        pids.append(parent.recv())
        keep.append((p, parent))
    print("PIDS", *pids, flush=True)
    # paramiko lives in the relay process: its atexit hook cannot close a transport under us
    assert "paramiko" not in sys.modules
    # no join: multiprocessing's exit handler terminates the daemons and joins the rest
""")


def test_daemons_terminated_and_others_joined_at_interpreter_exit(sshd, tmp_path):
    host, ssh_options = sshd.spec(), sshd.options()      # loopback: the remote pids are in /proc here
    path = tmp_path / "parent.py"
    path.write_text(EXIT_SCRIPT)
    t = time.monotonic()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)
    out = subprocess.run([sys.executable, str(path), host, repr(ssh_options)], capture_output=True,
                         text=True, timeout=60, env=env)
    elapsed = time.monotonic() - t
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    pids = [int(x) for x in lines[0].split()[1:]]
    assert len(pids) == 3
    assert "non-daemon finished" in lines[1:], out     # joined before the parent exited
    assert elapsed < 30
    for pid in pids:
        assert gone(pid, 10), "remote pid %d outlived its parent" % pid
    assert "Traceback" not in out.stderr, out.stderr
