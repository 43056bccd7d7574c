"""More agents on one host than sshd's ``MaxSessions`` allows on one connection.

Each agent is a session channel (one per ``setup=``, ``python=`` or ``cache_size=`` value on a
host), and OpenSSH allows 10 per connection by default; the suite's own sshd raises that to 200,
so these tests run an sshd of their own with ``MaxSessions 2``.  A program must not see the
limit: with paramiko the relay opens another connection to the host (same credentials, same
route), as separate ``ssh`` commands would; with ``transport="openssh"`` each connection is an
``ssh`` of its own, and over a ``ControlMaster`` the ``ssh`` goes on without it by itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from own_sshd import USER, own_sshd
from proctable import cmdline, descendants, eventually, ppid

from remoteproc import CONNECTION_LOST, Pipe, RemoteProcess, RemoteProcessError
from remoteproc.testing.net import HOST

pytestmark = pytest.mark.timeout(120)

TRANSPORTS = ["paramiko", "openssh"]
LIMIT = 2


@pytest.fixture
def limited(tmp_path: Any) -> Iterator[Any]:
    """An sshd that allows ``LIMIT`` sessions per connection."""
    with own_sshd(str(tmp_path / "sshd"), "MaxSessions %d" % LIMIT) as server:
        yield server


@pytest.fixture
def control_dir() -> Iterator[str]:
    """A directory for ssh's ControlPath (a Unix socket's path: at most 107 bytes, which pytest's
    tmp_path may exceed)."""
    path = tempfile.mkdtemp(prefix="rp-cm-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def spec(server: Any) -> str:
    return "%s@%s:%d" % (USER, HOST, server.port)


def options(server: Any, **extra: Any) -> dict[str, Any]:
    return dict(dict(key_filename=server.client_key, known_hosts=server.known_hosts, connect_timeout=30), **extra)


def where(conn) -> None:
    """Say where this child runs (pid, its agent, the connection's client port), answer once, end."""
    conn.send((os.getpid(), os.getppid(), os.environ["SSH_CONNECTION"].split()[1]))
    conn.send(("echo", conn.recv()))


class Started:
    """A process started with its own ``setup=`` (so an agent of its own), and where it runs."""

    def __init__(self, server: Any, i: int, **extra: Any) -> None:
        self.parent, child = Pipe()
        self.proc = RemoteProcess(spec(server), target=where, args=(child,),
                                  **options(server, setup="AGENT_NO=%d" % i, **extra))
        self.proc.start()
        child.close()
        assert self.parent.poll(30), "no word from process %d" % i
        self.pid, self.agent, self.port = self.parent.recv()

    def finish(self) -> int | None:
        self.parent.send(1)
        assert self.parent.poll(30) and self.parent.recv() == ("echo", 1)
        self.proc.join(30)
        return self.proc.exitcode


def refusals(server: Any) -> int:
    """How often sshd refused a session ("no more sessions" in its log)."""
    with open(server.log_file, errors="replace") as f:
        return f.read().count("no more sessions")


def agents(server: Any) -> list[int]:
    """The Python processes under the sshd (agents, children)."""
    return [p for p in descendants(server.pid) if cmdline(p).split(" ", 1)[0].rsplit("/", 1)[-1].startswith("python")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_more_agents_than_max_sessions_all_run(limited, transport, caplog):
    """Fixed: with paramiko, the third agent on a host whose sshd allows 2 sessions per connection
    failed ``start()`` with "the server refused a session channel ... Check MaxSessions" (and so did
    the 11th one on a stock sshd).  Now the relay opens another connection; it learns the limit, so
    only the first agent past it costs a refusal."""
    with caplog.at_level(logging.INFO, logger="remoteproc"):
        procs = [Started(limited, i, transport=transport) for i in range(5)]
        ports = [p.port for p in procs]
        assert [p.finish() for p in procs] == [0] * 5
    if transport == "paramiko":
        # 2 + 2 + 1 agents; the limit is learned at the first refusal
        assert ports[0] == ports[1] and ports[2] == ports[3] and len(set(ports)) == 3, ports
        assert refusals(limited) == 1
        assert any("MaxSessions" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    else:
        assert len(set(ports)) == 5, ports      # one ssh, one connection each
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


def test_agents_started_at_once_past_max_sessions(limited):
    """Six agents whose session requests reach one connection at the same moment: those the server
    refused go on with other connections, none fails (a refusal waits for the answers to the others'
    requests before it decides that the connection is full, rather than that the host refuses)."""
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        try:
            started = Started(limited, 100 + i)
            results[i] = (started.port, started.finish())
        except (RemoteProcessError, AssertionError) as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert sorted(results) == list(range(6)) and all(isinstance(r, tuple) for r in results.values()), {
        i: r if isinstance(r, tuple) else repr(r) for i, r in results.items()}
    assert [code for _port, code in results.values()] == [0] * 6
    ports = [port for port, _code in results.values()]
    assert len(set(ports)) >= 3 and max(ports.count(p) for p in ports) <= LIMIT, ports


def test_a_lost_extra_connection_ends_only_its_processes(limited):
    """The processes of the connection that was cut end with CONNECTION_LOST; those of the host's other
    connection go on, and the next agent gets a connection again."""
    procs = [Started(limited, i) for i in range(4)]
    first, second = procs[0].port, procs[2].port
    assert [p.port for p in procs] == [first, first, second, second]
    os.kill(ppid(procs[2].agent), signal.SIGKILL)       # the sshd process of the second connection
    for p in procs[2:]:
        p.proc.join(30)
        assert p.proc.exitcode == CONNECTION_LOST
    assert [p.finish() for p in procs[:2]] == [0, 0]
    assert eventually(lambda: not set(agents(limited)) & {procs[2].agent, procs[3].agent}, 15)
    again = Started(limited, 9)
    assert again.finish() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_past_max_sessions_through_a_jump_host(limited, tmp_path, transport):
    """The other connection takes the same route: here through a jump host (the same sshd as
    ``localhost``, which forwards to itself; a forwarding is no session)."""
    known = tmp_path / "known_hosts"
    known.write_text("[%s]:%d %s\n[localhost]:%d %s\n" % (HOST, limited.port, limited.host_public, limited.port,
                                                          limited.host_public))
    jump = {"proxy_jump": "%s@localhost:%d" % (USER, limited.port), "known_hosts": str(known)}
    procs = [Started(limited, i, transport=transport, **jump) for i in range(3)]
    assert [p.finish() for p in procs] == [0] * 3
    if transport == "paramiko":
        assert len({p.port for p in procs}) == 2
        with open(limited.log_file, errors="replace") as f:
            # one connection to the jump host, shared by both connections through it
            assert f.read().count("Accepted publickey") == 3


PROGRAM = """
import os, sys, time
from remoteproc import Pipe, RemoteProcess

def wait(conn):
    conn.send(os.getpid())
    time.sleep(600)

if __name__ == "__main__":
    spec, key, known, transport = sys.argv[1:]
    for i in range(5):
        parent, child = Pipe()
        RemoteProcess(spec, target=wait, args=(child,), key_filename=key, known_hosts=known, transport=transport,
                      setup="AGENT_NO=%d" % i, daemon=True).start()
        assert parent.poll(30)
        parent.recv()
    print("started", flush=True)
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_programs_exit_closes_every_connection_and_leaves_no_agent(limited, tmp_path, transport):
    """A program with five agents on the host (three connections with paramiko) ends: every
    connection closes and no agent or child is left on the host."""
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(PROGRAM))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH")] if p))
    out = subprocess.run([sys.executable, str(script), spec(limited), limited.client_key, limited.known_hosts,
                          transport], capture_output=True, timeout=90, env=env, check=False)
    assert out.returncode == 0 and out.stdout.strip() == b"started", out
    assert eventually(lambda: not descendants(limited.pid), 20), [cmdline(p) for p in descendants(limited.pid)]
    if transport == "paramiko":
        assert refusals(limited) == 1


@pytest.mark.parametrize("jump", [None, "*", "localhost"])
def test_ssh_as_the_master_of_one_connection_does_not_cut_another(limited, tmp_path, control_dir, jump):
    """Fixed: with ``ControlMaster auto`` (and no ``ControlPersist``) in the user's ssh config, the
    ``ssh`` of one connection became the master and the ``ssh`` of the next one (another agent:
    another ``setup=``) rode its connection; when the first closed (idle, here), the second's
    processes ended with "connection lost: the remote agent's channel closed".  Through a jump host
    whose config says so (for every host, or for the jump host alone) it was the first one's
    ``ssh -W`` to the jump host, and the second's ended with "ssh lost the connection".  Now no
    ``ssh`` of ours becomes a master that ends with it (``ControlMaster no``; an open master is still
    used)."""
    config = tmp_path / "ssh_config"
    config.write_text("Host %s\n    ControlMaster auto\n    ControlPath %s/%%C\n    ControlPersist no\n"
                      % (jump or "*", control_dir))
    opts: dict[str, Any] = dict(transport="openssh", ssh_config=str(config))
    if jump is not None:
        known = tmp_path / "known_hosts"
        known.write_text("[%s]:%d %s\n[localhost]:%d %s\n" % (HOST, limited.port, limited.host_public,
                                                              limited.port, limited.host_public))
        opts.update(proxy_jump="%s@localhost:%d" % (USER, limited.port), known_hosts=str(known))
    port = str(limited.port)
    short = Started(limited, 0, idle_timeout=1, **opts)
    long = Started(limited, 1, **opts)
    running = len(ssh_processes(port))      # (each connection's ssh, and its ssh -W)
    assert running == (2 if jump is None else 4)
    assert short.finish() == 0
    # the first connection's ssh ends (idle), within its close's grace and terminate (1 s and more)
    assert eventually(lambda: len(ssh_processes(port)) <= running // 2, 15), "the first connection stayed"
    assert long.proc.is_alive()
    assert long.finish() == 0


def ssh_processes(word: str) -> list[int]:
    """The ssh processes on this machine with ``word`` among their arguments."""
    found = []
    for name in os.listdir("/proc"):
        words = cmdline(int(name)).split(" ") if name.isdigit() else []
        if words and words[0].rsplit("/", 1)[-1] == "ssh" and word in words:
            found.append(int(name))
    return found


def test_ssh_past_max_sessions_on_a_persistent_master(limited, tmp_path, control_dir, caplog):
    """With ``ControlMaster auto`` and ``ControlPersist``, our first ``ssh`` starts a master that the
    others ride; past MaxSessions, ``ssh`` itself goes on with a connection of its own.  Its words
    about it are logged at INFO, not shown as warnings."""
    config = tmp_path / "ssh_config"
    path = "%s/%%C" % control_dir
    config.write_text("Host *\n    ControlMaster auto\n    ControlPath %s\n    ControlPersist 30\n" % path)
    opts = dict(transport="openssh", ssh_config=str(config))
    try:
        with caplog.at_level(logging.INFO, logger="remoteproc"):
            procs = [Started(limited, i, **opts) for i in range(4)]
            assert [p.finish() for p in procs] == [0] * 4
        ports = [p.port for p in procs]
        assert ports[0] == ports[1] and len(set(ports)) == 3, ports
        assert refusals(limited) == 2
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
        assert sum("ControlMaster connection had no session left" in r.getMessage() for r in caplog.records) == 2
    finally:
        subprocess.run(["ssh", "-F", str(config), "-o", "ControlPath=" + path, "-p", str(limited.port), "-O", "exit",
                        HOST], capture_output=True, timeout=10, check=False)


def test_a_refusal_waits_for_the_answers_to_sessions_opened_at_the_same_moment(tmp_path):
    """Two agents ask a fresh connection for a session at the same moment, and the server allows one:
    the refused one must not take the connection for one that allows none (the host's error) because
    the other's success has not been counted yet.  (paramiko wakes the two threads in any order; here
    the success is held back on purpose, with a real sshd.)"""
    from remoteproc import ssh
    from remoteproc.relay.paramiko_channel import ParamikoOpener

    with own_sshd(str(tmp_path / "sshd"), "MaxSessions 1") as server:
        target = ssh.resolve(spec(server), options(server))
        opener = ParamikoOpener()
        shared = opener.pool.acquire(target)
        real = shared.transport.open_session

        def slow_success(*args: Any, **kwargs: Any) -> Any:
            chan = real(*args, **kwargs)
            time.sleep(0.5)
            return chan

        shared.transport.open_session = slow_success
        results: list[Any] = []

        def one() -> None:
            try:
                results.append(opener.open(target, lambda: "sleep 30"))
            except RemoteProcessError as exc:
                results.append(exc)

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        try:
            assert len(results) == 2 and not [r for r in results if isinstance(r, Exception)], results
            assert sorted(r.conn.slot for r in results) == [0, 1]
        finally:
            for r in results:
                if not isinstance(r, Exception):
                    r.close()
            opener.pool.release(shared)
            opener.close()
