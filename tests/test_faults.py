"""Faults with real processes: what the user sees when pieces die, and that nothing is left.

Every remote process here runs on this machine (a loopback sshd), so the "remote"
process table is /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.connection import wait

import cloudpickle
import pytest
from proctable import children_of, cmdline, fd_table, gone, ppid

import remoteproc
from remoteproc import Pipe, RemoteProcess
from remoteproc.relay import client as relay_client

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(180), pytest.mark.loopback_only]   # reads this machine's /proc

LOST_WITHIN = 30.0     # seconds: the documented bound for noticing a lost connection here


def streamer(conn):
    """Sends its pid, then 1 MiB messages until the connection breaks."""
    conn.send(os.getpid())
    block = b"x" * (1 << 20)
    while True:
        conn.send_bytes(block)


def sleeper(conn):
    conn.send(os.getpid())
    time.sleep(120)


def echo(conn):
    conn.send(os.getpid())
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


def _start(host, options, target):
    parent, child = Pipe()
    p = RemoteProcess(host, target=target, args=(child,), **options)
    p.start()
    child.close()
    assert wait([parent], 30), "no first message from the remote process"
    return p, parent, parent.recv()


def _drain_until_eof(conn, timeout):
    """Read until EOFError; returns the seconds it took (fails past the timeout).

    A message cut off by the loss raises OSError("got end of file during message"),
    exactly as a local peer dying mid-message does; the next recv() raises EOFError.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if wait([conn], 1.0):
            try:
                conn.recv_bytes()
            except EOFError:
                return time.monotonic() - t0
            except OSError as exc:
                assert "end of file during message" in str(exc)
                with pytest.raises(EOFError):
                    conn.recv_bytes()
                return time.monotonic() - t0
    raise AssertionError("recv() did not see EOF within %ss" % timeout)


def _assert_lost(p):
    p.join(LOST_WITHIN)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    assert isinstance(p.connection_error, remoteproc.ConnectionLostError)
    assert isinstance(p.connection_error, EOFError)


@pytest.fixture
def bystander(plain_user_host, plain_user_options):
    """A process on another connection (another account): it must not notice the fault."""
    p, conn, _pid = _start(plain_user_host, plain_user_options, echo)
    yield conn
    conn.close()
    p.join(30)
    assert p.exitcode == 0


def _check_bystander(conn):
    conn.send("still here?")
    assert wait([conn], 30)
    assert conn.recv() == "still here?"


def test_sshd_session_killed_mid_transfer(host, ssh_options, bystander):
    p, conn, pid = _start(host, ssh_options, streamer)
    agent = ppid(pid)
    session = ppid(agent)          # sshd's process for this connection
    assert "sshd" in cmdline(session)
    conn.recv_bytes()               # the transfer is under way
    os.kill(session, signal.SIGKILL)
    assert _drain_until_eof(conn, LOST_WITHIN) < LOST_WITHIN
    _assert_lost(p)
    # (the host's sshd ended it, or, as the transport may see first, the agent's channel closed: either
    # way it says what that means for the processes there)
    assert "every process of this connection there ended with it" in str(p.connection_error), p.connection_error
    assert gone(pid) and gone(agent), "remote processes outlived their sshd session"
    _check_bystander(bystander)
    # The host is usable again at once: a new connection is made.
    p2, conn2, _ = _start(host, ssh_options, echo)
    conn2.close()
    p2.join(30)
    assert p2.exitcode == 0


def test_remote_child_killed(host, ssh_options):
    p, conn, pid = _start(host, ssh_options, sleeper)
    other, other_conn, _ = _start(host, ssh_options, echo)
    os.kill(pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert p.connection_error is None
    with pytest.raises(EOFError):
        conn.recv()
    _check_bystander(other_conn)        # same connection, same agent: untouched
    other_conn.close()
    other.join(30)
    assert other.exitcode == 0


def test_remote_agent_killed(host, ssh_options, bystander):
    p, conn, pid = _start(host, ssh_options, sleeper)
    agent = ppid(pid)
    os.kill(agent, signal.SIGKILL)
    _assert_lost(p)
    assert "agent" in str(p.connection_error) or "closed" in str(p.connection_error)
    with pytest.raises(EOFError):
        conn.recv()
    assert gone(pid), "the child outlived its agent"
    _check_bystander(bystander)
    p2, conn2, _ = _start(host, ssh_options, echo)
    conn2.close()
    p2.join(30)
    assert p2.exitcode == 0


def test_a_start_on_a_connection_that_died_unseen_moves_to_a_new_one(host, ssh_options):
    """After a network blip, the host's cached connection may be dead without a sign (here: its
    agent stopped, so nothing answers).  A link that was idle proves it is alive before a start
    goes on it; this one does not answer its ping within the connect timeout (not the keepalive's
    minute), so the start (never sent) runs on a new connection, as a fresh ``ssh`` would."""
    # (a python path of its own: a link, and an agent, nobody else uses)
    options = dict(ssh_options, keepalive_interval=15, connect_timeout=2, idle_timeout=60, python="/usr/bin/python3")
    p, conn, pid = _start(host, options, echo)
    agent = ppid(pid)
    conn.close()
    p.join(30)
    assert p.exitcode == 0
    time.sleep(2.5)                         # silent for longer than the link's PROVE_AFTER
    os.kill(agent, signal.SIGSTOP)
    try:
        p2, conn2, pid2 = _start(host, options, echo)
        assert ppid(pid2) != agent, "the start must have gone to a new connection's agent"
        conn2.send("still here")
        assert conn2.recv() == "still here"
        conn2.close()
        p2.join(30)
        assert p2.exitcode == 0
    finally:
        with contextlib.suppress(ProcessLookupError):     # (gone already once its session closed)
            os.kill(agent, signal.SIGKILL)      # (the agent this test's first process started)
            os.kill(agent, signal.SIGCONT)


def test_local_parent_killed(sshd, host, ssh_options, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from remoteproc import Pipe, RemoteProcess

        def sleeper(conn):
            import os
            conn.send(os.getpid())
            time.sleep(120)

        if __name__ == "__main__":
            parent, child = Pipe()
            p = RemoteProcess(sys.argv[1], target=sleeper, args=(child,), port=int(sys.argv[2]),
                              key_filename=sys.argv[3], known_hosts=sys.argv[4])
            p.start()
            print(parent.recv(), flush=True)
            time.sleep(120)
    """))
    opts = ssh_options
    proc = subprocess.Popen([sys.executable, str(script), "%s@127.0.0.1" % opts["username"], str(opts["port"]),
                             opts["key_filename"], opts["known_hosts"]],
                            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        ready, _, _ = __import__("select").select([proc.stdout], [], [], 60)
        assert ready, "the parent script did not start its remote process"
        pid = int(proc.stdout.readline())
        relays = [c for c in children_of(proc.pid)]
        assert relays, "no relay process under the parent"
        proc.kill()
        proc.wait(10)
        assert all(gone(h) for h in relays), "the relay process outlived its parent"
        assert gone(pid), "the remote child outlived the local parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sshd_restart_leaves_running_processes_alone(sshd, host, ssh_options):
    p, conn, _pid = _start(host, ssh_options, echo)
    os.kill(sshd.pid, signal.SIGHUP)        # sshd re-executes itself; sessions stay
    conn.send("across a restart")
    assert wait([conn], 30)
    assert conn.recv() == "across a restart"
    # A new connection works once the listener is back (bounded retry while it re-executes).
    deadline = time.monotonic() + 20
    while True:
        try:
            p2, conn2, _ = _start(host, dict(ssh_options, idle_timeout=5.5), echo)
            break
        except remoteproc.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    for c, proc in ((conn, p), (conn2, p2)):
        c.close()
        proc.join(30)
        assert proc.exitcode == 0


def test_relay_killed_ends_processes_and_a_new_relay_starts(host, ssh_options):
    p, conn, pid = _start(host, ssh_options, sleeper)
    relay = relay_client.get()
    os.kill(relay.proc.pid, signal.SIGKILL)
    relay.proc.wait(10)
    _assert_lost(p)
    message = str(p.connection_error)
    # (how it ended, every time: its socket closes a moment before its exit status can be had)
    assert "relay process ended unexpectedly (killed by signal 9)" in message, message
    assert "The next start() starts a new relay" in message, message
    assert gone(pid)
    with pytest.raises(EOFError):
        conn.recv()
    p2, conn2, _ = _start(host, ssh_options, echo)
    assert relay_client.get() is not relay
    conn2.close()
    p2.join(30)
    assert p2.exitcode == 0


def test_no_listening_socket_on_either_side(host, ssh_options):
    """During a run, none of our processes (user, relay, agent, child) listens on anything."""
    p, conn, pid = _start(host, ssh_options, sleeper)
    try:
        ours = {os.getpid(), relay_client.get().proc.pid, pid, ppid(pid)}
        listening = _listening_inodes()
        for proc_pid in ours:
            for target in fd_table(proc_pid).values():
                if target.startswith("socket:["):
                    assert int(target[8:-1]) not in listening, "pid %d listens on %s" % (proc_pid, target)
    finally:
        p.terminate()
        p.join(30)


def _listening_inodes() -> set[int]:
    inodes = set()
    for name in ("tcp", "tcp6"):
        with open("/proc/net/" + name) as f:
            for line in list(f)[1:]:
                parts = line.split()
                if parts[3] == "0A":                 # TCP_LISTEN
                    inodes.add(int(parts[9]))
    with open("/proc/net/unix") as f:
        for line in list(f)[1:]:
            parts = line.split()
            if int(parts[3], 16) & 0x10000:          # __SO_ACCEPTCON: a listening socket
                inodes.add(int(parts[6]))
    return inodes


def test_no_leaks_over_many_processes(host, ssh_options):
    def one(conn, i):
        conn.send(i)

    def fds():
        return len(os.listdir("/proc/self/fd"))

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def run_one(i):
        parent, child = Pipe()
        p = RemoteProcess(host, target=one, args=(child, i), **ssh_options)
        p.start()
        child.close()
        assert parent.recv() == i
        p.join(30)
        assert p.exitcode == 0
        p.close()
        parent.close()

    # Under the suite's coverage every remote child writes a data file of its own (about 0.1 s):
    # fewer of them then, or this one test takes two minutes.  (The leaks it looks for grow with
    # each process: a few hundred show them as well as five.)
    measured = bool(os.environ.get("COVERAGE_PROCESS_START"))
    one_by_one, at_once = (100, 30) if measured else (500, 100)
    for i in range(20):                       # warm up: relay, connection, caches
        run_one(i)
    relay = relay_client.get().proc.pid
    base = (fds(), threading.active_count(), rss(), len(os.listdir("/proc/%d/fd" % relay)))
    for i in range(one_by_one):
        run_one(i)
    pairs = [Pipe() for _ in range(at_once)]
    procs = [RemoteProcess(host, target=one, args=(c, i), **ssh_options) for i, (_, c) in enumerate(pairs)]
    for p in procs:
        p.start()
    for (parent, child), i in zip(pairs, range(at_once)):
        child.close()
        assert parent.recv() == i
        parent.close()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
        p.close()
    del procs, pairs
    time.sleep(0.5)
    after = (fds(), threading.active_count(), rss(), len(os.listdir("/proc/%d/fd" % relay)))
    assert after[0] <= base[0], "local fds leaked: %s -> %s" % (base, after)
    assert after[1] <= base[1], "threads leaked: %s -> %s" % (base, after)
    assert after[2] - base[2] < 32 << 20, "memory grew: %s -> %s" % (base, after)
    assert after[3] <= base[3], "relay fds leaked: %s -> %s" % (base, after)
    parent, child = Pipe()
    p = RemoteProcess(host, target=lambda c: c.send(os.getppid()), args=(child,), **ssh_options)
    p.start()
    child.close()
    agent = parent.recv()
    p.join(30)
    live = [c for c in children_of(agent) if not gone(c, 0.5)]
    assert not live, "children left under the agent: %s" % live


def test_paramikos_eof_on_send_is_the_channel_lost():
    """paramiko raises EOFError (not OSError) from send() once its socket is gone: the
    channel reports that as lost, with the reason."""
    from remoteproc.relay.channel import ChannelLost
    from remoteproc.relay.paramiko_channel import ParamikoChannel

    class DeadParamikoChannel:
        def settimeout(self, t):
            pass

        def send(self, data):
            raise EOFError()

    chan = ParamikoChannel(DeadParamikoChannel(), conn=None, pool=None, connect_ms=0.0)
    with pytest.raises(ChannelLost, match="sending failed: EOFError"):
        chan.send(memoryview(b"credit"))


def test_send_on_a_lost_channel_marks_the_link_lost_once():
    """Once the channel is lost, later sends (credit frames while the link flushes the
    user's streams before closing them) must not try again and kill the link's thread."""
    from remoteproc import ssh
    from remoteproc.errors import ConnectionLostError
    from remoteproc.relay.channel import ChannelLost
    from remoteproc.relay.link import Link

    class LostChannel:
        calls = 0

        def send(self, data):
            LostChannel.calls += 1
            raise ChannelLost("sending failed: EOFError")

        def close(self):
            pass

    finished = []
    link = Link(ssh.resolve("rp@h", {}, ssh.Config([])), opener=None, on_finish=finished.append)
    link.chan = LostChannel()       # the loop's state, without its thread or a connection
    link.send(b"credit")
    assert link.dead and isinstance(link.lost, ConnectionLostError)
    assert "rp@h: connection lost: sending failed: EOFError" in str(link.lost) and not link.endpoint.out
    link.send(b"more credit")
    assert LostChannel.calls == 1 and not link.endpoint.out
    link._finish()
    assert finished == [link] and link.thread is None


def test_a_send_refused_because_the_agent_went_says_why_it_went():
    """An agent that runs out of memory right after its hello is gone by the time the first start is
    sent: the send fails on the closed channel.  The error is the agent's end (its exit status and its
    last words, which name the limit and the fix), not "the SSH connection closed"."""
    import types

    from remoteproc import ssh
    from remoteproc.relay.channel import ChannelLost
    from remoteproc.relay.link import Link
    from remoteproc.relay.paramiko_channel import ParamikoChannel

    class ClosedParamikoChannel:        # paramiko's Channel once the agent's EOF and close came
        eof_received = closed = True

        def settimeout(self, t):
            pass

        def send(self, data):
            raise OSError("Socket is closed")

    live = types.SimpleNamespace(transport=types.SimpleNamespace(is_active=lambda: True))
    chan = ParamikoChannel(ClosedParamikoChannel(), conn=live, pool=None, connect_ms=0.0)
    with pytest.raises(ChannelLost) as info:
        chan.send(memoryview(b"start"))
    assert info.value.ended

    class EndedChannel:
        def send(self, data):
            raise ChannelLost("the SSH connection closed (sending failed: Socket is closed)", ended=True)

        def describe_loss(self):
            return "the remote agent exited with status 1"

        def recv_stderr(self):
            return b"remoteproc: the agent ran out of memory: (ulimit -v 20000 KiB). Fix: raise it\n"

        def close(self):
            pass

    link = Link(ssh.resolve("rp@h", {}, ssh.Config([])), opener=None, on_finish=lambda link: None)
    link.chan = EndedChannel()
    link.send(b"start")
    assert link.dead and str(link.lost) == (
        "rp@h: connection lost: the remote agent exited with status 1; before it went, the agent said: "
        "the agent ran out of memory: (ulimit -v 20000 KiB). Fix: raise it")
    link._finish()


def test_the_links_tick_counts_bytes_heard_as_life_and_pings_only_a_silent_host():
    """While messages flow the loop reads its clock once a tick: bytes read since the last tick
    (``heard``) count as the host's answer then, so a talking host gets no ping (unless we have
    sent it nothing for the interval: the agent's own keepalive) and is never taken for a silent
    one; a silent one is pinged after the interval and lost after the bound."""
    import time

    from remoteproc import ssh
    from remoteproc.relay.link import Link

    class Channel:
        sent: list = []

        def send(self, data):
            Channel.sent.append(bytes(data))
            return len(data)

        def close(self):
            pass

        def recv_stderr(self):
            return b""

        def suspect(self):
            Channel.suspected = True

    link = Link(ssh.resolve("rp@h", {"keepalive_interval": 10, "keepalive_count": 2}, ssh.Config([])),
                opener=None, on_finish=lambda link: None)
    link.chan = Channel()
    link.endpoint.write = link.chan.send
    now = time.monotonic()
    link.idle_since = link.last_ping = now
    link.last_heard, link.heard = now - 29, True        # (bytes came in since the last tick)
    assert link._tick(now) and link.last_heard == now and not link.heard
    assert Channel.sent == []                           # a host that talks is not pinged
    assert link._tick(now + 10) and b'"op":"ping"' in b"".join(Channel.sent)     # silent for the interval
    assert not link._tick(now + 31) and link.dead       # silent past 10 s * (2 + 1)
    assert "no answer from the host for 31s (keepalive)" in str(link.lost)
    assert Channel.suspected        # (its connection must answer before it is used again)
