"""Faults on several hosts at once, as a user running on many hosts sees them.

Four namespace hosts (tests/netns.py) reached through ssh_config aliases, one of them
(``ah4``) only through another (``ah1``) as a jump host.  Each test breaks one thing
(an sshd and its sessions, an agent stopped past the keepalive bound, a jump host, a host
holding a lock, the user's own program) while processes on the other hosts keep streaming
sequenced, hashed messages, and checks what each process reports, that the survivors'
streams are intact, that nothing of ours is left on any host, and that new starts work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import pytest
from proctable import cmdline, descendants, eventually, ppid, running

import remoteproc
from remoteproc import ConnectionLostError, Event, Lock, Pipe, Queue, RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(60), pytest.mark.loopback_only]

ALIASES = ["ah1", "ah2", "ah3", "ah4"]
HOST_OF = {"ah1": "h1", "ah2": "h2", "ah3": "h3", "ah4": "h4"}


# -- targets (shipped by value) ---------------------------------------------------------

def echo(conn):
    """Sends its pid, then checks and echoes (seq, data, sha256) messages until None or EOF."""
    conn.send(os.getpid())
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        if hashlib.sha256(msg[1]).hexdigest() != msg[2]:
            raise SystemExit(3)
        conn.send(msg)


def locker(q, out, lock, stop, name, hold):
    """The holder takes the lock and keeps it; the others take items, each under the lock."""
    out.put(("hello", name, os.getpid()))
    if hold:
        lock.acquire()
        out.put(("holding", name, os.getpid()))
        time.sleep(600)
    while not stop.is_set():
        try:
            item = q.get(timeout=0.2)
        except Exception:   # noqa: BLE001 - queue.Empty
            continue
        with lock:
            out.put(("done", name, item))


# -- helpers ------------------------------------------------------------------------------

def write_aliases(rig, tmp_path) -> str:
    """ah1..ah3 direct, ah4 only through ah1 (ProxyJump); the namespace hosts' key and known_hosts."""
    hs = rig.hosts
    text = "".join("Host a%s\n    HostName %s\n" % (n, hs[n].address) for n in ("h1", "h2", "h3"))
    text += "Host ah4\n    HostName %s\n    ProxyJump ah1\n" % hs["h4"].address
    text += textwrap.dedent("""\
        Host *
            User rpuser
            IdentityFile %s
            IdentitiesOnly yes
            UserKnownHostsFile %s
            ServerAliveInterval 1
            ServerAliveCountMax 2
        """ % (rig.client_key, rig.known_hosts))
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return str(path)


def options(config: str, transport: str) -> dict:
    return {"ssh_config": config, "allow_agent": False, "keepalive_interval": 1, "keepalive_count": 2,
            "transport": transport}


def ours(rig, name: str) -> list[int]:
    """Python processes (agents, children) under the host's sshd: what remoteproc runs there."""
    host = rig.hosts[name]
    if host.proc is None:
        return []
    return [p for p in descendants(host.proc.pid) if cmdline(p).startswith("python")]


class Streams:
    """One echo process per (alias, i) and a thread per process that streams checked messages."""

    def __init__(self, aliases, per_host, opts):
        self.procs = []
        for alias in aliases:
            for _ in range(per_host):
                parent, child = Pipe()
                p = RemoteProcess(alias, target=echo, args=(child,), **opts)
                p.start()
                child.close()
                assert parent.poll(30), alias
                self.procs.append({"alias": alias, "p": p, "conn": parent, "pid": parent.recv(),
                                   "ok": 0, "bad": 0, "error": None, "when": None, "then": None})
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(s,), daemon=True) for s in self.procs]
        for t in self.threads:
            t.start()

    def _run(self, s):
        seq = 0
        while not self.stop.is_set():
            data = os.urandom(seq % 3000)
            msg = (seq, data, hashlib.sha256(data).hexdigest())
            try:
                s["conn"].send(msg)
                if not s["conn"].poll(15):
                    s["error"], s["when"] = TimeoutError("no echo in 15 s"), time.monotonic()
                    return
                got = s["conn"].recv()
            except Exception as exc:  # noqa: BLE001 - recorded and checked by the test
                s["error"], s["when"] = exc, time.monotonic()
                try:            # and what a recv() gives afterwards
                    s["conn"].recv()
                except Exception as then:  # noqa: BLE001
                    s["then"] = then
                return
            if got == msg:
                s["ok"] += 1
            else:
                s["bad"] += 1
            seq += 1

    def of(self, alias):
        return [s for s in self.procs if s["alias"] == alias]

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(20)
        for s in self.procs:
            if s["error"] is None:
                s["conn"].send(None)
        for s in self.procs:
            s["p"].join(10)


def survivors_intact(streams, lost_aliases):
    for s in streams.procs:
        if s["alias"] in lost_aliases:
            continue
        assert s["error"] is None and s["bad"] == 0 and s["ok"] > 20, s
        assert s["p"].exitcode == 0, s


def lost_as_documented(streams, alias, fault_at, bound):
    for s in streams.of(alias):
        # a send to a lost process raises BrokenPipeError (as to a dead local one); recv() raises EOFError
        assert isinstance(s["error"], (EOFError, BrokenPipeError)), s
        assert isinstance(s["then"], EOFError), ("recv() must raise EOFError", s)
        assert s["bad"] == 0
        assert s["when"] - fault_at < bound, (s["when"] - fault_at, s)
        p = s["p"]
        p.join(10)
        assert p.exitcode == remoteproc.CONNECTION_LOST
        assert isinstance(p.connection_error, ConnectionLostError)
        assert p.connection_error.host == alias and "connection lost" in str(p.connection_error)


def starts_again(alias, opts):
    parent, child = Pipe()
    p = RemoteProcess(alias, target=echo, args=(child,), **opts)
    p.start()
    child.close()
    assert parent.poll(30)
    parent.recv()
    parent.send(None)
    p.join(10)
    assert p.exitcode == 0


# -- tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_killed_sshd_ends_its_streams_with_eof_and_the_others_go_on(netns, tmp_path, transport):
    """Fixed: the relay closed the Connection of a lost process with the user's last message still
    unread in it, and Linux then resets the peer: ``recv()`` raised ConnectionResetError, not the
    documented EOFError (5 of 6 streams with openssh, some with paramiko)."""
    opts = options(write_aliases(netns, tmp_path), transport)
    streams = Streams(["ah2", "ah2", "ah2", "ah3"], 1, opts)
    try:
        time.sleep(0.7)
        t0 = time.monotonic()
        netns.kill_sshd("h2")
        assert eventually(lambda: all(s["error"] is not None for s in streams.of("ah2")), 10)
        time.sleep(0.5)
    finally:
        streams.finish()
        netns.restart_sshd("h2")
    lost_as_documented(streams, "ah2", t0, 5)
    survivors_intact(streams, {"ah2"})
    starts_again("ah2", opts)


def test_a_lost_jump_host_ends_both_hosts_cleanly(netns, tmp_path, fresh, capfd):
    """Fixed: through paramiko, closing the channel of a connection whose jump host's socket was gone
    raised EOFError in the relay's link thread (a traceback on the user's stderr, and the rest of the
    link's clean-up skipped)."""
    opts = options(write_aliases(netns, tmp_path), "paramiko")
    streams = Streams(["ah1", "ah4", "ah4", "ah2"], 1, opts)
    try:
        time.sleep(0.7)
        t0 = time.monotonic()
        netns.kill_sshd("h1")
        assert eventually(lambda: all(s["error"] is not None for s in streams.of("ah1") + streams.of("ah4")), 10)
        time.sleep(0.5)
    finally:
        streams.finish()
    try:
        lost_as_documented(streams, "ah1", t0, 5)
        lost_as_documented(streams, "ah4", t0, 5)
        assert all("via ah1" in str(s["p"].connection_error) for s in streams.of("ah4"))
        survivors_intact(streams, {"ah1", "ah4"})
        assert eventually(lambda: not ours(netns, "h4"), 10), ours(netns, "h4")
    finally:
        netns.restart_sshd("h1")
    starts_again("ah4", opts)
    assert "Traceback" not in capfd.readouterr().err


def test_an_agent_stopped_past_the_keepalive_bound(netns, tmp_path):
    """SIGSTOP one host's agent for longer than keepalive_interval * (keepalive_count + 1): its processes
    are lost within the bound, the other hosts' streams (one through a jump host) go on intact, nothing
    of the stopped agent is left once it runs again, and a new start there succeeds."""
    opts = options(write_aliases(netns, tmp_path), "paramiko")
    streams = Streams(ALIASES, 1, opts)
    agent = ppid(streams.of("ah3")[0]["pid"])
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        os.kill(agent, signal.SIGSTOP)
        try:
            assert eventually(lambda: streams.of("ah3")[0]["error"] is not None, 8)
        finally:
            os.kill(agent, signal.SIGCONT)
        time.sleep(0.5)
    finally:
        streams.finish()
    lost_as_documented(streams, "ah3", t0, 1 * (2 + 1) + 2)
    survivors_intact(streams, {"ah3"})
    assert eventually(lambda: agent not in ours(netns, "h3"), 10)
    starts_again("ah3", opts)


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_lock_held_on_a_host_whose_link_is_cut_is_released(netns, tmp_path, transport):
    """A Queue and a Lock shared by processes on four hosts; the lock's holder is on ah2, whose link is
    cut: within the keepalive bound the lock is released, the others take every item exactly once."""
    opts = options(write_aliases(netns, tmp_path), transport)
    q, out, lock, stop = Queue(), Queue(), Lock(), Event()
    procs = [RemoteProcess(a, target=locker, args=(q, out, lock, stop, a, a == "ah2"), **opts) for a in ALIASES]
    for p in procs:
        p.start()
    try:
        hello = [out.get(timeout=30) for _ in range(5)]
        assert ("holding", "ah2") in [h[:2] for h in hello]
        for i in range(100):
            q.put(i)
        time.sleep(0.3)
        assert out.empty()              # everyone waits for the lock
        netns.hosts["h2"].set_link(False)
        try:
            done = [out.get(timeout=10) for _ in range(100)]
        finally:
            netns.hosts["h2"].set_link(True)
        assert sorted(d[2] for d in done) == list(range(100))
        assert {d[1] for d in done} <= {"ah1", "ah3", "ah4"}
        procs[1].join(10)
        assert procs[1].exitcode == remoteproc.CONNECTION_LOST
        assert isinstance(procs[1].connection_error, ConnectionLostError)
        assert lock.acquire(timeout=5)
        lock.release()
    finally:
        stop.set()
        for p in procs:
            p.join(10)
    assert [p.exitcode for p in procs] == [0, remoteproc.CONNECTION_LOST, 0, 0]
    holder = [h[2] for h in hello if h[0] == "holding"][0]
    assert eventually(lambda: holder not in ours(netns, "h2"), 10)      # once the link is back


VICTIM = """
import os, sys, time
sys.path.insert(0, %(tests)r)
import cloudpickle
from remoteproc import Pipe, RemoteProcess

def sleeper(conn, ignore_term):
    import os, signal, time
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send(os.getpid())
    time.sleep(600)

cloudpickle.register_pickle_by_value(sys.modules[__name__])
keep = []
for alias in ("ah1", "ah2", "ah3", "ah4"):
    for i in range(2):
        parent, child = Pipe()
        p = RemoteProcess(alias, target=sleeper, args=(child, i == 0), ssh_config=%(config)r,
                          allow_agent=False, transport=%(transport)r)
        p.start()
        child.close()
        assert parent.poll(30)
        keep.append((p, parent, parent.recv()))
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_the_users_program_killed_leaves_nothing_on_any_host(netns, tmp_path, transport, fresh):
    """SIGKILL the user's program with processes (some ignoring SIGTERM) on four hosts, one behind a
    jump host: within the documented bound (about 1 s, SIGKILL 2 s after SIGTERM) nothing is left."""
    config = write_aliases(netns, tmp_path)
    # (this test process's own connections are closed by ``fresh``: wait until their agents are gone)
    assert eventually(lambda: not any(ours(netns, HOST_OF[a]) for a in ALIASES), 10)
    script = tmp_path / "victim.py"
    script.write_text(VICTIM % {"tests": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "config": config, "transport": transport})
    victim = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline().strip() == "ready"
        assert all(len(ours(netns, HOST_OF[a])) >= 3 for a in ALIASES)
        local = descendants(victim.pid)
    finally:
        victim.kill()
        victim.wait(10)
    t0 = time.monotonic()
    assert eventually(lambda: not any(ours(netns, HOST_OF[a]) for a in ALIASES), 6), \
        {a: [cmdline(p)[:40] for p in ours(netns, HOST_OF[a])] for a in ALIASES}
    assert time.monotonic() - t0 < 4
    assert eventually(lambda: not any(running(p) for p in local), 5)       # the relay, the ssh processes


def slow_where(x):
    time.sleep(0.01)
    return x, os.environ.get("SSH_CONNECTION", "").split()[2]


def test_pool_over_four_aliases_survives_a_host_and_takes_it_back(netns, tmp_path):
    """imap_unordered over ah1..ah4 (ah4 through a jump host) with retries=2 while ah2's sshd is killed
    and restarted: every result arrives exactly once, hosts_status() says ah2 is down and why, and
    ah2 gets its worker back."""
    from remoteproc import Pool

    opts = options(write_aliases(netns, tmp_path), "paramiko")
    with Pool(ALIASES, processes_per_host=1, retries=2, **opts) as pool:
        got, restarted = [], None
        t0 = time.time()
        for i, r in enumerate(pool.imap_unordered(slow_where, range(800), chunksize=4)):
            got.append(r)
            if i == 150:
                netns.kill_sshd("h2")
                assert eventually(lambda: not pool.hosts_status()["ah2"]["up"], 5)
                st = pool.hosts_status()
                assert st["ah2"]["workers"] == 0 and t0 <= st["ah2"]["down_since"] <= time.time()
                assert "connection lost" in st["ah2"]["error"] and "10.213." in st["ah2"]["error"]
                assert all(st[a]["up"] and st[a]["workers"] == 1 for a in ("ah1", "ah3", "ah4"))
                restarted = threading.Timer(0.5, netns.restart_sshd, ("h2",))
                restarted.start()
        assert sorted(r[0] for r in got) == list(range(800))          # each exactly once
        restarted.join(20)
        assert eventually(lambda: pool.hosts_status()["ah2"]["workers"] == 1, 15), pool.hosts_status()
        assert pool.hosts_status()["ah2"]["up"] and pool.hosts_status()["ah2"]["down_since"] is None
        assert {r[1] for r in pool.map(slow_where, range(80))} == {netns.hosts[h].address for h in HOST_OF.values()}


OUT_OF_FILES = textwrap.dedent('''\
    import json, os, resource, sys
    from remoteproc import Pipe, RemoteProcess, RemoteProcessError

    def echo(conn):
        while True:
            msg = conn.recv()
            if msg is None:
                return
            conn.send(msg)

    def start(tag):
        a, b = Pipe()
        p = RemoteProcess(sys.argv[1], target=echo, args=(b,), **json.loads(sys.argv[2]))
        try:
            p.start()
        finally:
            b.close()
        return p, a, tag

    def ask(procs):
        for p, a, tag in procs:
            a.send(tag)
        return all(a.poll(20) and a.recv() == tag for p, a, tag in procs)

    def stop(procs):
        for p, a, tag in procs:
            a.send(None)
        for p, a, tag in procs:
            p.join(20)
        return [p.exitcode for p, a, tag in procs]

    procs, error = [], None
    for i in range(200):
        try:
            procs.append(start("old%d" % i))
        except RemoteProcessError as exc:
            error = exc
            break
    out = {"started": len(procs), "error": repr(error), "old_echo": ask(procs)}
    codes = stop(procs[:8])
    new = [start("new%d" % i) for i in range(4)]      # (fds freed: starts work again, wired right)
    out.update(stopped=codes, new_echo=ask(new + procs[8:]), rest=stop(new + procs[8:]))
    print(json.dumps(out))
''')


def test_a_relay_out_of_open_files_refuses_the_start_by_name_and_the_rest_go_on(host, ssh_options, tmp_path):
    """``ulimit -n 128`` (soft and hard, as bash's ``ulimit -n`` sets both): the relay reaches the
    limit first (about four fds per remote process).  The start that finds it full is a
    RemoteProcessError naming the limit and the fix (not a vanished relay); the kernel dropped that
    start's fds, and no later start gets another's (each echo answers its own tag); the running
    processes go on, and once some end, new starts work."""
    import json
    import resource

    program = tmp_path / "fds.py"
    program.write_text(OUT_OF_FILES)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, str(program), host, json.dumps(ssh_options)], preexec_fn=limit,
                          env=env, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 8 < out["started"] < 200, out
    assert "RemoteProcessError" in out["error"] and "out of open files (limit 128" in out["error"], out
    assert host in out["error"] and "ulimit -Hn" in out["error"], out
    assert out["old_echo"] and out["new_echo"], out
    assert out["stopped"] == [0] * 8 and set(out["rest"]) == {0}, out


IDLE_CLOSE = textwrap.dedent('''\
    import sys, time
    from remoteproc import RemoteProcess
    from remoteproc.testing.loopback import LoopbackSSHServer

    def nap(seconds):
        time.sleep(seconds)

    idle, busy = LoopbackSSHServer().start(), LoopbackSSHServer().start()
    done = RemoteProcess(idle.spec(), target=nap, args=(0,), transport=sys.argv[1], **idle.options())
    done.start()
    done.join(20)
    running = RemoteProcess(busy.spec(), target=nap, args=(30,), transport=sys.argv[1], **busy.options())
    running.start()
    print(idle.spec(), busy.spec(), flush=True)
    idle.stop()
    busy.stop()
    running.join(20)
    time.sleep(0.5)
    print(done.exitcode, running.exitcode, flush=True)
''')


def test_a_server_closing_an_idle_connection_is_no_warning(transport_name, tmp_path):
    """A host's sshd goes down (restarted, or a test server stopped at the program's exit) after
    the work on it ended: with ``ssh``, its ``Connection to HOST closed by remote host.`` was a
    WARNING on the user's stderr (one per host: 14 lines for 14 LoopbackSSHServers stopped at
    exit), while paramiko said nothing.  Only a host with a process still running says its loss."""
    program = tmp_path / "idle.py"
    program.write_text(IDLE_CLOSE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, str(program), transport_name], env=env, capture_output=True,
                          text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (idle, busy), codes = (line.split() for line in proc.stdout.strip().splitlines()[-2:])
    assert codes == ["0", str(remoteproc.CONNECTION_LOST)], proc.stdout
    assert idle not in proc.stderr, proc.stderr
    assert busy + ": connection lost" in proc.stderr or "%s: Connection to" % busy in proc.stderr, proc.stderr


@pytest.mark.parametrize("said, level", [
    ("Connection to 127.0.0.1 closed by remote host.", "INFO"),
    # through a jump host, stopped first: its ssh -W's goodbye to the ssh that had gone (found by an audit)
    ("Connection to 127.0.0.1 closed by remote host.\nclient_loop: send disconnect: Broken pipe", "INFO"),
    ("Connection to 127.0.0.1 closed by remote host.\nbash: line 1: kill: (12) - No such process", "WARNING"),
])
def test_what_ssh_says_of_an_idle_connection_s_end_is_a_warning_only_beside_other_words(said, level, caplog):
    from remoteproc import ssh
    from remoteproc.relay.link import Link

    link = Link(ssh.resolve("rp@h", {"transport": "openssh"}, ssh.Config([])), opener=None, on_finish=None)
    with caplog.at_level(logging.INFO, logger="remoteproc"):
        link._note_stderr(said.encode(), final=True)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(level, "rp@h: " + said)]


@pytest.fixture(params=["paramiko", "openssh"])
def transport_name(request) -> str:
    return request.param


STALLED_AT_EXIT = textwrap.dedent('''\
    import json, sys, time
    from remoteproc import RemoteProcess

    def nap():
        time.sleep(600)

    if __name__ == "__main__":
        spec, options = json.loads(sys.argv[1])
        p = RemoteProcess(spec, target=nap, daemon=True, transport=sys.argv[2], **options)
        p.start()
        print("started", flush=True)
        sys.stdin.readline()        # (the host stalls meanwhile); then the program ends
''')


def test_the_program_s_exit_does_not_wait_for_a_stalled_host_s_daemon(transport_name, tmp_path):
    """Found by an audit: multiprocessing's exit terminates daemonic children, then joins them without a
    timeout; a remote one on a host that stalled (its sshd and agent stopped) reported its end only at the
    keepalive's verdict: 60 s, where a local child dies of SIGTERM at once.  The exit now waits 5 s."""
    from remoteproc.testing import LoopbackSSHServer

    program = tmp_path / "stalled.py"
    program.write_text(STALLED_AT_EXIT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    server = LoopbackSSHServer().start()
    stopped: list = []
    proc = subprocess.Popen([sys.executable, str(program), json.dumps([server.spec(), server.options()]),
                             transport_name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "started\n"
        stopped = [server.pid] + descendants(server.pid)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        assert proc.wait(40) == 0       # (the keepalive bound, 60 s, would be past it)
        assert "did not report its end within 5s of its signal" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        server.stop()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


UNREAD_AT_EXIT = textwrap.dedent('''\
    import json, sys
    from remoteproc import Pipe, RemoteProcess

    def flood(conn):
        for i in range(200):
            print("line", i)
        sys.stdout.flush()
        conn.send(b"x" * (50 << 20))    # (nobody reads it: the program ends first)

    if __name__ == "__main__":
        spec, options = json.loads(sys.argv[1])
        parent, child = Pipe()
        p = RemoteProcess(spec, target=flood, args=(child,), daemon=True, **options)
        p.start()
        print("started", flush=True)
        sys.stdin.readline()
        print("last line", flush=True)
''')


def test_the_program_s_exit_does_not_flush_what_its_own_connections_would_get(tmp_path, host, ssh_options):
    """Found by an audit: a daemon child blocked sending 50 MiB that the program never reads; at
    the program's exit the relay tried to hand that message to the program's own end of the Pipe,
    which it was itself waiting for: 5 s (the relay's bound) after the last line, every time, where
    multiprocessing's exit is immediate.  The child's stdout, whose reader outlives the program,
    is still written out whole."""
    program = tmp_path / "unread.py"
    program.write_text(UNREAD_AT_EXIT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, str(program), json.dumps([host, ssh_options])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "started\n"
        time.sleep(2)               # (the child prints, then blocks in its send)
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        before = []
        for _ in range(300):        # (the child's lines come first: up to the program's last one)
            line = proc.stdout.readline()
            if line in ("last line\n", ""):
                break
            before.append(line)
        assert line == "last line\n", before
        ended = time.monotonic()
        out, err = proc.communicate(timeout=30)
        out = "".join(before) + out
        waited = time.monotonic() - ended
        assert proc.returncode == 0, err
        assert waited < 4.0, "the exit waited %.1f s (the relay's flush bound is 5 s)" % waited
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # (the child's lines may come before or after "last line": all of them, once, in order)
    assert [x for x in out.splitlines() if x.startswith("line ")] == ["line %d" % i for i in range(200)], out
