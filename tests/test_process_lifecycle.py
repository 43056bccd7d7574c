"""A remote process's life, end to end through a real OpenSSH sshd: it starts, runs its target
with its output forwarded, exits with its code or its traceback, is terminated or killed,
dies with its connection, and fails early and clearly when it cannot start."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time

import cloudpickle
import pytest
from proctable import gone

import remoteproc
from remoteproc import Pipe, RemoteProcess

# Targets below are shipped by value: this test module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


def double(conn, n):
    print("hello from the remote side")
    conn.send(n * 2)
    conn.close()


def echo(conn):
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


def exit_with(code):
    sys.exit(code)


def raise_error():
    raise ValueError("boom from the remote side")


def sleeper(conn=None, seconds=60):
    if conn is not None:
        conn.send(os.getpid())
    time.sleep(seconds)


def test_round_trip(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=double, args=(child, 21), **ssh_options)
    p.start()
    child.close()
    assert parent.recv() == 42
    p.join(30)
    assert p.exitcode == 0
    assert isinstance(p.pid, int) and p.pid != os.getpid()


def test_stdout_and_stderr_are_forwarded(host, ssh_options, capfd):
    def speak():
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)

    p = RemoteProcess(host, target=speak, **ssh_options)
    p.start()
    p.join(30)
    out, err = capfd.readouterr()
    assert p.exitcode == 0
    assert "to stdout" in out and "to stderr" not in out
    assert "to stderr" in err


def test_twenty_processes_at_once(host, ssh_options):
    pairs = [Pipe() for _ in range(20)]
    procs = [RemoteProcess(host, target=double, args=(child, i), **ssh_options)
             for i, (_parent, child) in enumerate(pairs)]
    for p in procs:
        p.start()
    for _parent, child in pairs:
        child.close()
    assert [parent.recv() for parent, _ in pairs] == [2 * i for i in range(20)]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 20
    assert len({p.pid for p in procs}) == 20


@pytest.mark.parametrize("code", [0, 3])
def test_exit_codes(host, ssh_options, code):
    p = RemoteProcess(host, target=exit_with, args=(code,), **ssh_options)
    p.start()
    p.join(30)
    assert p.exitcode == code


def test_exception_gives_1_and_traceback_on_stderr(host, ssh_options, capfd):
    p = RemoteProcess(host, target=raise_error, **ssh_options)
    p.start()
    p.join(30)
    _out, err = capfd.readouterr()
    assert p.exitcode == 1
    assert "Traceback (most recent call last)" in err
    assert "ValueError: boom from the remote side" in err
    assert "Process %s:" % p.name in err


@pytest.mark.loopback_only
@pytest.mark.parametrize("method,code", [("terminate", -signal.SIGTERM), ("kill", -signal.SIGKILL)])
def test_terminate_and_kill_reach_the_remote_child(host, ssh_options, method, code):
    parent, child = Pipe()
    p = RemoteProcess(host, target=sleeper, args=(child,), **ssh_options)
    p.start()
    child.close()
    assert parent.recv() == p.pid
    getattr(p, method)()
    p.join(30)
    assert p.exitcode == code
    assert gone(p.pid)


def test_unpicklable_argument_fails_in_start_before_any_network_traffic():
    lock = threading.Lock()
    # The host does not exist: reaching the network would raise ConnectError instead.
    p = RemoteProcess("nobody@host.invalid", target=print, args=(lock,))
    with pytest.raises(remoteproc.PicklingError) as info:
        p.start()
    assert "host.invalid" in str(info.value)
    assert isinstance(info.value, TypeError)


def test_unknown_host_is_a_connect_error():
    p = RemoteProcess("nobody@host.invalid", target=print, connect_timeout=5)
    with pytest.raises(remoteproc.ConnectError) as info:
        p.start()
    assert "host.invalid" in str(info.value)


@pytest.mark.loopback_only
def test_remote_children_die_with_their_connection(host, ssh_options):
    from remoteproc.relay import client as relay_client

    parent, child = Pipe()
    p = RemoteProcess(host, target=sleeper, args=(child,), **ssh_options)
    p.start()
    child.close()
    pid = parent.recv()
    assert os.path.exists("/proc/%d" % pid)
    relay = relay_client.get()
    os.kill(relay.proc.pid, signal.SIGKILL)   # the relay (and with it the SSH connection) dies
    relay.proc.wait(10)
    p.join(30)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    assert isinstance(p.connection_error, remoteproc.ConnectionLostError)
    assert gone(pid), "the remote child outlived its connection"
    with pytest.raises(EOFError):
        parent.recv()


def test_system_python_only_account(plain_user_host, plain_user_options):
    def where(conn):
        import subprocess

        import cloudpickle  # the shipped copy: the account has none installed
        installed = subprocess.run([sys.executable, "-c", "import cloudpickle"], capture_output=True)
        conn.send((sys.executable, os.getuid(), cloudpickle.__name__, installed.returncode))

    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=where, args=(child,), **plain_user_options)
    p.start()
    child.close()
    executable, uid, name, installed = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    assert executable == "/usr/bin/python3"
    assert uid != os.getuid()
    assert name == "cloudpickle" and installed != 0


def _divide(x):
    return 1 / x


def _calls_divide():
    _divide(0)


def test_remote_traceback_names_the_users_file_and_lines(host, ssh_options, capfd):
    p = RemoteProcess(host, target=_calls_divide, **ssh_options)
    p.start()
    p.join(30)
    err = capfd.readouterr().err
    assert p.exitcode == 1
    lineno = _divide.__code__.co_firstlineno + 1
    assert 'File "%s", line %d, in _divide' % (__file__, lineno) in err
    assert "    return 1 / x" in err
    assert "<dynamic-code>" not in err


def test_high_file_descriptors(host, ssh_options):
    """A program with over 1024 fds open (select() cannot watch those) still starts, polls
    and joins its remote processes."""
    import gc
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the fd limit here is %d" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    # The fds below 1100 must stay taken until the start: garbage of earlier tests (a killed
    # relay's handle, in a reference cycle) closes its socket when a collection finds it, and
    # one during start() gave the sentinel that low fd.  Collected now, and no collection until
    # the sentinel is made.
    gc.collect()
    gc.disable()
    filler = []
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        filler.append(null)
        while filler[-1] < 1100:
            filler.append(os.dup(null))
        parent, child = Pipe()
        p = RemoteProcess(host, target=echo, args=(child,), **ssh_options)
        p.start()
        child.close()
        gc.enable()
        assert p.sentinel > 1024
        assert p.is_alive() is True         # a non-blocking poll of a high fd
        parent.send_bytes(b"ten")
        assert parent.recv_bytes() == b"ten"
        parent.close()
        p.join(30)
        assert p.is_alive() is False and p.exitcode == 0
    finally:
        gc.enable()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def stream_for(conn, seconds):
    """Send small messages without a pause for ``seconds``, then their count."""
    import time

    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        conn.send_bytes(b"m" * 100)
        n += 1
    conn.send(n)


def test_messages_that_keep_flowing_are_not_silence(host, ssh_options):
    """A host that talks without a pause for many keepalive bounds in a row is never taken for a
    silent one, and nothing it says is lost (the bound here: 0.6 s; the child talks for 2 s; the
    relay's loop reads its clocks once a tick while messages flow)."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=stream_for, args=(child, 2.0), keepalive_interval=0.3, keepalive_count=1,
                      **ssh_options)
    p.start()
    child.close()
    got = 0
    while True:
        assert parent.poll(30), "the stream stopped after %d messages" % got
        msg = parent.recv_bytes()
        if msg != b"m" * 100:
            break
        got += 1
    assert pickle.loads(msg) == got > 100
    p.join(30)
    assert p.exitcode == 0


def test_a_slow_setup_is_not_silence(host, ssh_options):
    """The keepalive bound counts silence once the agent said hello, as ssh's ServerAliveInterval:
    a setup= line (a module load, a conda activation) slower than the bound is not a lost host."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=double, args=(child, 4), setup="sleep 3", keepalive_interval=1,
                      keepalive_count=1, **ssh_options)
    p.start()
    child.close()
    assert parent.poll(60) and parent.recv() == 8
    p.join(30)
    assert p.exitcode == 0
