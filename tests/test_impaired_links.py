"""Links that are bad the way real ones are: slow, lossy, and black holes.

Hosts of their own (tests/netns.py) whose sshd runs with OpenSSH's default
``ClientAliveInterval 0``, as most servers do: sshd never notices a client that
vanished behind a silent link, so what happens on the host is remoteproc's own doing.
Each host's link is impaired from inside its namespace with ``nft`` (a random share of
packets dropped both ways; or every packet dropped: a black hole, no reset, as a NAT
or firewall that forgot the connection makes) and ``tc``'s token bucket (a rate
limit). Both transports; each test a few seconds.

* a link slower than the keepalive bound for one message is not a lost link (the
  relay's ping waits behind the message: the agent says it hears us meanwhile);
* over a lossy, rate-limited link every message arrives whole (SHA-256) and in order,
  both ways, through a Pipe, a Queue and ``Pool.map``;
* a black hole shorter than the keepalive bound loses nothing;
* a black hole that lasts: the program hears of it within the bound, from a typed
  error naming the host and what to do; and the host ends the agent and every child
  (their own children too) within one more interval, while the link is still dark.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from typing import Any

import cloudpickle
import pytest
from conftest import PLAIN_USER, _unavailable, running_rig
from proctable import cmdline, descendants, eventually
from remote_call import start

import remoteproc
from remoteproc import Pool, Queue, RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(90), pytest.mark.loopback_only]

TRANSPORTS = ["paramiko", "openssh"]
NFT = shutil.which("nft") or "/usr/sbin/nft"
TC = shutil.which("tc") or "/usr/sbin/tc"


@pytest.fixture(scope="module")
def quiet() -> Iterator[Any]:
    """Two namespace hosts whose sshd never checks that its client is still there."""
    for tool in (NFT, TC):
        if not os.path.exists(tool):
            _unavailable("%s is missing (nftables, iproute2)" % tool)
    from netns import NetnsRig

    class QuietRig(NetnsRig):
        client_alive: list = []

    yield from running_rig(QuietRig, ["q1", "q2"])


def _nft(host: Any, script: str) -> None:
    from netns import IP, run

    run(IP, "netns", "exec", host.netns, NFT, script)


@contextlib.contextmanager
def impaired(host: Any, loss: int = 0, rate: str = "") -> Iterator[None]:
    """``loss`` % of the host's packets dropped at random, each way; each way limited to ``rate``."""
    from netns import IP, run

    chains = ("add table inet impair; "
              "add chain inet impair in { type filter hook input priority 0; }; "
              "add chain inet impair out { type filter hook output priority 0; }")
    if loss:
        chains += ("; add rule inet impair in numgen random mod 100 < %d drop"
                   "; add rule inet impair out numgen random mod 100 < %d drop" % (loss, loss))
    _nft(host, chains)
    try:
        if rate:
            shape = ["root", "tbf", "rate", rate, "burst", "32kbit", "latency", "200ms"]
            run(TC, "qdisc", "add", "dev", host.veth, *shape)
            run(IP, "netns", "exec", host.netns, TC, "qdisc", "add", "dev", "eth0", *shape)
        yield
    finally:
        run(IP, "netns", "exec", host.netns, NFT, "delete table inet impair", check=False)
        run(TC, "qdisc", "del", "dev", host.veth, "root", check=False)
        run(IP, "netns", "exec", host.netns, TC, "qdisc", "del", "dev", "eth0", "root", check=False)


@contextlib.contextmanager
def black_hole(host: Any) -> Iterator[None]:
    """Every packet to and from the host dropped silently (its interfaces stay up)."""
    _nft(host, "add table inet hole; "
               "add chain inet hole in { type filter hook input priority 0; policy drop; }; "
               "add chain inet hole out { type filter hook output priority 0; policy drop; }")
    try:
        yield
    finally:
        _nft(host, "delete table inet hole")


def ours(host: Any) -> list[int]:
    """What remoteproc runs on the host: every process under its sshd but sshd's own."""
    if host.proc is None:
        return []
    return [p for p in descendants(host.proc.pid) if "sshd" not in cmdline(p)]


def options(quiet: Any, transport: str, interval: float, count: int) -> dict:
    return quiet.options(transport=transport, keepalive_interval=interval, keepalive_count=count)


# -- targets (shipped by value) ------------------------------------------------------------

def digest(conn):
    """Answers each message with its length and SHA-256."""
    conn.send(os.getpid())
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        conn.send((len(data), hashlib.sha256(data).hexdigest()))


def checked_echo(conn, count, seed):
    """Checks and echoes ``(seq, data, sha256)`` messages, and meanwhile sends ``count`` of its own
    (sizes from ``seed``); then ``("done", bad)``: how many arrived out of order or damaged."""
    import random

    conn.send(os.getpid())
    lock = threading.Lock()

    def own():
        rng = random.Random(seed)
        for i in range(count):
            data = os.urandom(rng.choice((0, 1, 100, 5000, 70000, 300000)))
            with lock:
                conn.send(("own", i, data, hashlib.sha256(data).hexdigest()))

    sender = threading.Thread(target=own)
    sender.start()
    expect, bad = 0, 0
    while True:
        msg = conn.recv()
        if msg is None:
            break
        seq, data, sha = msg
        bad += seq != expect or hashlib.sha256(data).hexdigest() != sha
        expect = seq + 1
        with lock:
            conn.send(("echo", seq, data, sha))
    sender.join()
    conn.send(("done", bad))


def with_a_child_of_its_own(conn):
    """Starts a subprocess that would outlive it, then waits."""
    import subprocess

    sub = subprocess.Popen(["sleep", "120"])
    conn.send((os.getpid(), sub.pid))
    time.sleep(120)


def relay_queue(inq, outq):
    while True:
        item = inq.get()
        if item is None:
            return
        seq, data, sha = item
        outq.put((seq, len(data), hashlib.sha256(data).hexdigest() == sha))


def sha_of(data):
    return hashlib.sha256(data).hexdigest()


# -- the tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_message_slower_than_the_keepalive_bound_is_not_a_lost_link(quiet, fresh, transport):
    """1.25 MiB at 2 Mbit/s takes 5.2 s to reach the host, past the 3 s bound (keepalive 1 s *
    (2 + 1)); the agent returns the stream's credit once a MiB is in (4.2 s), so the relay hears
    nothing back for longer than the bound, and its ping waits behind the message.  The agent
    tells it that bytes come in (an ``alive`` frame each interval): the link lives, the answer comes.
    (With a count of 1, ``ssh``'s own ServerAlive check gave up once in a loaded full run: an alive
    frame a few hundred ms late left it 2 s without a packet.)"""
    host = quiet.hosts["q1"]
    with impaired(host, rate="2mbit"):
        p, parent, _pid = start(host.spec(PLAIN_USER), options(quiet, transport, 1, 2), digest)
        data = os.urandom(5 << 18)
        t0 = time.monotonic()
        parent.send_bytes(data)
        assert parent.poll(30), "no answer"
        try:
            answer = parent.recv()
        except EOFError:
            p.join(5)
            pytest.fail("the link was taken for lost: %s" % p.connection_error)
        assert answer == (len(data), hashlib.sha256(data).hexdigest())
        took = time.monotonic() - t0
    assert took > 3.0, "the link was not slow enough to test anything: %.1f s" % took
    assert p.is_alive() and p.connection_error is None
    parent.close()
    p.join(15)
    assert p.exitcode == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_lossy_slow_link_delivers_every_message_whole_and_in_order(quiet, fresh, transport):
    """3 % of the packets lost each way, 16 Mbit/s each way: a Pipe carries messages of 0 B to
    1 MiB both ways at once (sequence and SHA-256 checked on both sides); a Queue and Pool.map
    carry theirs intact and in order."""
    host = quiet.hosts["q2"]
    spec = host.spec(PLAIN_USER)
    opts = options(quiet, transport, 1, 3)
    sizes = [0, 1, 1000, 65536, 1 << 20, 7, 250000, 1 << 20, 3] * 2
    with impaired(host, loss=3, rate="16mbit"):
        p, parent, _pid = start(spec, opts, checked_echo, 20, 7)
        sent = [os.urandom(n) for n in sizes]

        def send_all():
            for seq, data in enumerate(sent):
                parent.send((seq, data, hashlib.sha256(data).hexdigest()))
            parent.send(None)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        echoed, own, done = [], [], None
        while done is None:
            assert parent.poll(30), "stalled after %d echoes, %d own (process: %r)" % (
                len(echoed), len(own), p.connection_error)
            msg = parent.recv()
            if msg[0] == "done":
                done = msg[1]
                break
            kind, seq, data, sha = msg
            assert hashlib.sha256(data).hexdigest() == sha, (kind, seq)
            (echoed if kind == "echo" else own).append((seq, data))
        sender.join(30)
        assert done == 0, "%d messages arrived at the host out of order or damaged" % done
        assert [s for s, _ in echoed] == list(range(len(sent)))
        assert all(d == sent[s] for s, d in echoed)
        assert [s for s, _ in own] == list(range(20))
        parent.close()
        p.join(15)
        assert p.exitcode == 0

        inq, outq = Queue(), Queue()
        q = RemoteProcess(spec, target=relay_queue, args=(inq, outq), **opts)
        q.start()
        items = [os.urandom(n) for n in (0, 10, 40000, 300000) * 5]
        for seq, data in enumerate(items):
            inq.put((seq, data, hashlib.sha256(data).hexdigest()))
        inq.put(None)
        got = [outq.get(timeout=30) for _ in items]
        assert got == [(seq, len(data), True) for seq, data in enumerate(items)]
        q.join(15)
        assert q.exitcode == 0

        chunks = [os.urandom(n) for n in (1, 5000, 100000, 0) * 6]
        with Pool([spec], processes_per_host=2, **opts) as pool:
            assert pool.map(sha_of, chunks, chunksize=2) == [hashlib.sha256(c).hexdigest() for c in chunks]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_black_hole_shorter_than_the_bound_loses_nothing(quiet, fresh, transport):
    """A 1.5 s black hole (every packet dropped, no reset) with messages flowing both ways, the
    bound 7 s here and 8 s on the host: the process goes on, every message arrives, in order.
    (Not a tighter bound: TCP's retransmission timer backs off during the hole, so the link may
    stay silent for a second or two after it; with 1 s x 3, ssh's own ServerAliveCountMax gave up
    once in a full run under load.)"""
    host = quiet.hosts["q1"]
    p, parent, _pid = start(host.spec(PLAIN_USER), options(quiet, transport, 1, 6), checked_echo, 0, 0)
    stop = threading.Event()
    sent: list = []

    def send_all():
        seq = 0
        while not stop.is_set() and seq < 10000:
            data = os.urandom(seq % 3000)
            sent.append(data)
            parent.send((seq, data, hashlib.sha256(data).hexdigest()))
            seq += 1
            time.sleep(0.01)
        parent.send(None)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    time.sleep(0.5)
    with black_hole(host):
        time.sleep(1.5)
    time.sleep(1.0)
    stop.set()
    echoed, done = [], None
    while done is None:
        assert parent.poll(20), "stalled after %d echoes (process: %r)" % (len(echoed), p.connection_error)
        msg = parent.recv()
        if msg[0] == "done":
            done = msg[1]
        else:
            echoed.append(msg)
    sender.join(10)
    assert done == 0
    assert [m[1] for m in echoed] == list(range(len(sent)))
    assert all(m[2] == sent[m[1]] for m in echoed)
    parent.close()
    p.join(15)
    assert p.exitcode == 0 and p.connection_error is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_black_hole_ends_the_process_here_and_everything_on_the_host(quiet, fresh, transport):
    """keepalive 1 s * 2: the program hears of the black hole within 3 s (+ slack), from a
    ``ConnectionLostError`` naming the host and the keepalive settings to change; and though sshd
    never notices (ClientAliveInterval 0) and no packet gets through, the agent, the child and the
    child's own subprocess are gone within the agent's bound (4 s) and the SIGTERM grace (2 s)."""
    host = quiet.hosts["q2"]
    p, parent, (pid, sub) = start(host.spec(PLAIN_USER), options(quiet, transport, 1, 2), with_a_child_of_its_own)
    there = ours(host)
    assert pid in there and sub in there, (pid, sub, there)
    with black_hole(host):
        cut = time.monotonic()
        assert wait([p.sentinel], 10), "no end within 10 s of a black hole (bound 3 s)"
        heard_after = time.monotonic() - cut
        assert eventually(lambda: not ours(host), 15), [cmdline(q)[:60] for q in ours(host)]
        cleaned_after = time.monotonic() - cut
    p.join(5)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    error = p.connection_error
    assert isinstance(error, remoteproc.ConnectionLostError), error
    assert host.address in str(error) and "keepalive_interval" in str(error), str(error)
    assert heard_after < 3.0 + 2.5, heard_after
    assert cleaned_after < 4.0 + 2.0 + 3.0, cleaned_after
    with pytest.raises(EOFError):
        parent.recv()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ssh_configs_server_alive_settings_bound_the_host_side_too(quiet, fresh, transport, tmp_path):
    """``ServerAliveInterval 1`` and ``ServerAliveCountMax 2`` in the ssh config, no keepalive options:
    behind a black hole, the agent ends the child within 1 s * (2 + 2) (+ the SIGTERM grace) on
    both transports (with ``ssh``, the relay and the agent used 15 s and 3 whatever the config said)."""
    host = quiet.hosts["q1"]
    config = tmp_path / "ssh_config"
    config.write_text("Host impaired\n    HostName %s\n    User %s\n    ServerAliveInterval 1\n"
                      "    ServerAliveCountMax 2\n" % (host.address, PLAIN_USER))
    opts = dict(quiet.options(transport=transport), ssh_config=str(config))
    p, parent, (pid, sub) = start("impaired", opts, with_a_child_of_its_own)
    assert {pid, sub} <= set(ours(host))
    with black_hole(host):
        cut = time.monotonic()
        assert wait([p.sentinel], 10), "no end within 10 s of a black hole (bound 3 s)"
        assert eventually(lambda: not ours(host), 15), [cmdline(q)[:60] for q in ours(host)]
        cleaned_after = time.monotonic() - cut
    assert cleaned_after < 4.0 + 2.0 + 3.0, cleaned_after
    p.join(5)
    assert p.exitcode == remoteproc.CONNECTION_LOST


def test_a_black_holed_host_at_start_is_a_connect_error_with_openssh(quiet, fresh):
    """``start()`` to a host that drops every packet, ``transport="openssh"``, ``connect_timeout=10``
    (the least the start-up's own waits take): ssh's ConnectTimeout ends it with a ``ConnectError``
    naming the host and the fix, not a ``BootstrapError`` blaming the host's shell startup files
    for a login that never happened (the wait for the shell, as long, used to run out first)."""
    host = quiet.hosts["q1"]
    p = RemoteProcess(host.spec(PLAIN_USER), target=sha_of, args=(b"",),
                      **quiet.options(transport="openssh", connect_timeout=10))
    with black_hole(host):
        t0 = time.monotonic()
        with pytest.raises(remoteproc.RemoteProcessError) as info:
            p.start()
        took = time.monotonic() - t0
    assert isinstance(info.value, remoteproc.ConnectError), repr(info.value)
    assert host.address in str(info.value) and "timed out" in str(info.value), str(info.value)
    assert "startup file" not in str(info.value)
    assert took < 10 + 2 + 2, took


@contextlib.contextmanager
def forgotten(host: Any) -> Iterator[None]:
    """The connections open to the host now are dropped silently (a NAT or firewall that forgot them);
    new ones get through."""
    ports = [line.split()[-1].rsplit(":", 1)[1] for line in host.established()]
    assert ports, "no connection to the host to forget"
    rules = "; ".join("add rule inet forgot in tcp sport %s drop; add rule inet forgot out tcp dport %s drop"
                      % (port, port) for port in ports)
    _nft(host, "add table inet forgot; add chain inet forgot in { type filter hook input priority 0; }; "
               "add chain inet forgot out { type filter hook output priority 0; }; " + rules)
    try:
        yield
    finally:
        _nft(host, "delete table inet forgot")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_start_moved_off_a_connection_the_network_forgot_lands_on_a_new_one(quiet, fresh, transport):
    """Found by an audit: the idle link was lost (no answer to its keepalive) and the next start's new link,
    with paramiko, took the same pooled connection (its transport looks active until a write fails):
    it failed as "the server refused a session channel ... MaxSessions" instead of connecting anew."""
    host = quiet.hosts["q1"]
    opts = options(quiet, transport, 2, 2)
    p = RemoteProcess(host.spec(PLAIN_USER), target=sha_of, args=(b"",), **opts)
    p.start()
    p.join(30)
    assert p.exitcode == 0
    with forgotten(host):
        # (idle past PROVE_AFTER, 2 s, within the keepalive bound, 6 s: the start waits for the idle link's
        # proof of life, gets none, and moves to a new link while the lost one still holds its connection)
        time.sleep(3.0)
        q = RemoteProcess(host.spec(PLAIN_USER), target=sha_of, args=(b"abc",), **opts)
        q.start()
        q.join(30)
    assert q.exitcode == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_link_going_dark_while_the_agent_starts_is_a_connect_error(quiet, fresh, transport):
    """Found by an audit: cut while the login shell ran a setup= line, paramiko's start said a shell
    startup file of the host waited for input (a fix that does not apply); now the connection is asked
    whether it still answers first.  (``ssh`` says so itself: ServerAliveInterval.)"""
    host = quiet.hosts["q2"]
    opts = dict(options(quiet, transport, 1, 2), connect_timeout=3)
    warm = RemoteProcess(host.spec(PLAIN_USER), target=sha_of, args=(b"",), **opts)
    warm.start()            # (the connection is up: the cut comes while a new agent starts on it)
    warm.join(30)
    p = RemoteProcess(host.spec(PLAIN_USER), target=sha_of, args=(b"",), setup=["sleep 2"], **opts)
    hole = black_hole(host)
    timer = threading.Timer(1.0, hole.__enter__)
    timer.start()
    try:
        with pytest.raises(remoteproc.RemoteProcessError) as info:
            p.start()
    finally:
        timer.join(10)
        hole.__exit__(None, None, None)
    assert isinstance(info.value, remoteproc.ConnectError), repr(info.value)
    assert host.address in str(info.value) and "startup file" not in str(info.value), str(info.value)


CTRL_Z_PROGRAM = """
import os, sys
import remoteproc

def echo(conn):
    conn.send(os.getpid())
    while True:
        conn.send(conn.recv())

parent, child = remoteproc.Pipe()
p = remoteproc.RemoteProcess(sys.argv[1], target=echo, args=(child,), **eval(sys.argv[2]))
p.start()
print(parent.recv(), flush=True)
sys.stdin.readline()
parent.send("still there?")
print(parent.recv() if parent.poll(10) else "no answer: %r" % (p.connection_error,), flush=True)
p.kill()
p.join(10)
"""


def test_ctrl_z_of_the_program_keeps_its_remote_processes(quiet, tmp_path):
    """Ctrl-Z (SIGTSTP to the program's process group) for longer than the agent's keepalive bound
    (1 s * (1 + 2)): the relay is not stopped with the program, so it keeps the link alive, and the
    remote child is still there when the program goes on."""
    import signal
    import subprocess

    host = quiet.hosts["q2"]
    script = tmp_path / "program.py"
    script.write_text(CTRL_Z_PROGRAM)
    opts = options(quiet, "paramiko", 1, 1)
    prog = subprocess.Popen([sys.executable, str(script), host.spec(PLAIN_USER), repr(opts)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            # a group of its own in this session (a new session's group would be
                            # orphaned: the kernel discards a SIGTSTP sent to it)
                            preexec_fn=os.setpgrp)
    try:
        pid = int(prog.stdout.readline())
        os.killpg(prog.pid, signal.SIGTSTP)
        assert eventually(lambda: open("/proc/%d/stat" % prog.pid).read().rsplit(")", 1)[1].split()[0] == "T", 5)
        time.sleep(4.5)
        alive = pid in ours(host)
        os.killpg(prog.pid, signal.SIGCONT)
        assert alive, "the remote child ended while the program was stopped"
        prog.stdin.write("go\n")
        prog.stdin.flush()
        assert prog.stdout.readline().strip() == "still there?"
        assert prog.wait(20) == 0
    finally:
        if prog.poll() is None:
            os.killpg(prog.pid, signal.SIGKILL)
            prog.wait(10)
