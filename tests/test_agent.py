"""The agent and its wire format, without SSH: frames, the stream engine, bad input."""

from __future__ import annotations

import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from agentproc import LocalAgent
from proctable import eventually, fd_table

from remoteproc.agent import PROTOCOL_VERSION, frames, mux

pytestmark = pytest.mark.timeout(120)


# -- frames -------------------------------------------------------------------------------

def _collect(chunks):
    got = []
    reader = frames.FrameReader(lambda sid, piece: got.append(("data", sid, bytes(piece))),
                                lambda t, sid, value, payload: got.append((t, sid, value, payload and bytes(payload))))
    for chunk in chunks:
        reader.feed(chunk)
    return got, reader


def test_frames_survive_any_split():
    wire = b"".join([
        frames.header(frames.DATA, 7, 5) + b"hello",
        frames.header(frames.CREDIT, 7, 123),
        frames.control({"op": "ping", "t": 1}, b"blob"),
        frames.header(frames.EOF, 9, 0),
        frames.header(frames.STOP, 9, 0),
    ])
    whole, reader = _collect([wire])
    assert reader.idle
    for cut in range(1, len(wire)):
        got, reader = _collect([wire[:cut], wire[cut:]])
        data = b"".join(g[2] for g in got if g[0] == "data")
        rest = [g for g in got if g[0] != "data"]
        assert data == b"hello"
        assert rest == [g for g in whole if g[0] != "data"]
        assert reader.idle
    one_by_one, _ = _collect([wire[i:i + 1] for i in range(len(wire))])
    assert b"".join(g[2] for g in one_by_one if g[0] == "data") == b"hello"
    msg, blob = frames.parse_control(whole[-3][3])
    assert msg == {"op": "ping", "t": 1} and bytes(blob) == b"blob"


@pytest.mark.parametrize("bad", [
    frames.header(99, 1, 0),                                # unknown type
    frames.header(frames.DATA, 0, 1) + b"x",                # data on the control stream
    frames.header(frames.DATA, 1, 0),                       # empty data frame
    frames.header(frames.DATA, 1, frames.MAX_DATA + 1),     # oversized
    frames.header(frames.CONTROL, 3, 5),                    # control off stream 0
    frames.header(frames.CONTROL, 0, 0),                    # empty control
    frames.header(frames.EOF, 0, 0),                        # EOF on stream 0
    frames.header(frames.STOP, 4, 9),                       # STOP with a length
])
def test_bad_frames_are_refused(bad):
    with pytest.raises(frames.FrameError):
        _collect([bad])


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00\x09{}", struct.pack(">I", 2) + b"[]",
                                     struct.pack(">I", 3) + b"{x}", struct.pack(">I", 2) + b"{}"])
def test_bad_control_payloads_are_refused(payload):
    with pytest.raises(frames.FrameError):
        frames.parse_control(payload)


def test_random_bytes_never_crash_the_reader_otherwise():
    rng = random.Random(1234)
    for _ in range(3000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
        try:
            _collect([data])
        except frames.FrameError:
            pass


# -- the stream engine, two ends in one process ----------------------------------------------

class Pair:
    """Two Mux instances joined back to back, with a stream each bridging a socketpair."""

    def __init__(self, window=64 << 10, ack_at=16 << 10):
        self.sel = selectors.DefaultSelector()
        self.a = mux.Mux(self.sel, lambda *parts: self.b_reader.feed(b"".join(parts)), window, ack_at)
        self.b = mux.Mux(self.sel, lambda *parts: self.a_reader.feed(b"".join(parts)), window, ack_at)
        self.a_reader = frames.FrameReader(self.a.on_data, lambda t, s, v, p: self.a.on_frame(t, s, v))
        self.b_reader = frames.FrameReader(self.b.on_data, lambda t, s, v, p: self.b.on_frame(t, s, v))

    def bridge(self, sid):
        """Returns (user_a, user_b): bytes written to one come out of the other."""
        ua, ma = socket.socketpair()
        ub, mb = socket.socketpair()
        self.a.add(sid, ma.detach(), reading=True, writing=True)
        self.b.add(sid, mb.detach(), reading=True, writing=True)
        return ua, ub

    def spin(self, seconds=0.2):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for key, mask in self.sel.select(0.01):
                key.data(mask)


def _recv_exactly(sock, n, pair, timeout=10):
    sock.setblocking(False)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        pair.spin(0.01)
        try:
            out += sock.recv(1 << 20)
        except BlockingIOError:
            pass
    return bytes(out)


def test_mux_carries_bytes_both_ways_and_half_closes():
    pair = Pair()
    ua, ub = pair.bridge(1)
    data = os.urandom(300_000)
    ua.sendall(data[:100_000])
    assert _recv_exactly(ub, 100_000, pair) == data[:100_000]
    ub.sendall(b"back")
    assert _recv_exactly(ua, 4, pair) == b"back"
    ua.shutdown(socket.SHUT_WR)
    pair.spin(0.2)
    ub.setblocking(True)
    ub.settimeout(5)
    assert ub.recv(10) == b""          # EOF went across; the other direction still works
    ub.sendall(b"still")
    assert _recv_exactly(ua, 5, pair) == b"still"
    ub.close()
    pair.spin(0.2)
    ua.settimeout(5)
    assert ua.recv(10) == b""
    pair.spin(0.2)
    assert not pair.a.streams and not pair.b.streams


def test_a_stream_whose_reader_stalls_does_not_stall_the_others():
    pair = Pair(window=64 << 10, ack_at=16 << 10)
    slow_a, _slow_b = pair.bridge(1)       # nobody reads _slow_b
    fast_a, fast_b = pair.bridge(2)
    slow_a.setblocking(False)
    sent = 0
    for _ in range(200):                   # fill the slow stream: kernel buffers plus the window
        try:
            sent += slow_a.send(b"s" * 65536)
        except BlockingIOError:
            pair.spin(0.01)
    stalled = pair.b.streams[1]
    assert stalled.queued <= 64 << 10 and pair.a.streams[1].credit == 0
    payload = os.urandom(200_000)
    fast_a.sendall(payload[:50_000])
    assert _recv_exactly(fast_b, 50_000, pair) == payload[:50_000]


def test_stop_gives_the_writer_a_broken_pipe():
    pair = Pair()
    ua, ub = pair.bridge(1)
    ub.close()                              # the reader on b's side goes away
    ua.setblocking(False)
    deadline = time.monotonic() + 10
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        while time.monotonic() < deadline:
            try:
                ua.send(b"x" * 4096)
            except BlockingIOError:
                pass
            pair.spin(0.01)


def test_credit_beyond_the_window_and_unknown_streams_are_refused():
    pair = Pair()
    pair.bridge(1)
    pair.a.on_frame(frames.CREDIT, 1, 0)   # a zero credit is harmless
    with pytest.raises(frames.FrameError):
        pair.a.on_frame(frames.CREDIT, 1, 1 << 30)
    with pytest.raises(frames.FrameError):
        pair.a.on_data(5, memoryview(b"x"))


# -- the agent process, fed bad input --------------------------------------------------------

def test_agent_says_hello_and_answers_ping():
    agent = LocalAgent()
    assert agent.hello["op"] == "hello" and agent.hello["version"] == PROTOCOL_VERSION
    assert agent.hello["python"][:2] == list(sys.version_info[:2])
    agent.send(frames.control({"op": "ping", "t": 5}))
    assert agent.read_control(10) == {"op": "pong", "t": 5}
    status, err = agent.finish()
    assert status == 0, err


def _garbage(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return frames.header(frames.DATA, rng.randrange(1, 1 << 31), 3) + b"abc"   # unopened stream
    if kind == 2:
        return frames.header(frames.DATA, 1, frames.MAX_DATA + rng.randrange(1, 1000))
    if kind == 3:
        return frames.control({"op": rng.choice(["start", "nonsense", "signal"]), "id": "x"})
    if kind == 4:
        return frames.header(frames.CREDIT, rng.randrange(1, 100), rng.randrange(1 << 32))
    return frames.header(rng.choice([frames.EOF, frames.STOP]), rng.randrange(0, 3), rng.randrange(0, 3))


@pytest.mark.parametrize("seed", range(12))
def test_agent_exits_cleanly_on_garbage(seed):
    rng = random.Random(seed)
    bystander = subprocess.Popen(["sleep", "60"])       # something the agent did not start
    try:
        agent = LocalAgent()
        try:
            agent.send(_garbage(rng))
        except BrokenPipeError:
            pass
        status, err = agent.finish()
        if status != 0:
            assert status == 2
            assert "protocol error" in err
        assert bystander.poll() is None, "the agent killed a process it did not start"
    finally:
        bystander.kill()
        bystander.wait(5)


def test_agent_exits_on_a_truncated_frame_then_eof():
    agent = LocalAgent()
    agent.send(frames.header(frames.CONTROL, 0, 100) + b"{")
    status, err = agent.finish()
    assert status == 0
    assert "in the middle of a frame" in err


def _start_sleeper(agent: LocalAgent, seconds: float) -> None:
    """Ask the agent to start a child that sleeps (a start request as the relay sends it)."""
    from multiprocessing import context

    from remoteproc import reduction

    payload, _bridged = reduction.dumps_process(context.Process(target=time.sleep, args=(seconds,)), "local")
    agent.send(frames.control({"op": "start", "id": 1, "streams": [], "stdout": 1, "stderr": 2}, payload))


def test_agent_kills_its_children_when_the_channel_closes():
    agent = LocalAgent()
    _start_sleeper(agent, 60)
    started = agent.read_control(10)
    assert started["op"] == "started"
    pid = started["pid"]
    os.kill(pid, 0)
    status, _err = agent.finish()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the agent left its child running")


def test_a_child_killed_before_its_payload_ended_leaves_no_pipe_in_the_agent():
    """A big start payload streams into a pipe that only the child reads.  A child killed before
    the payload's end, while the agent has nothing queued for it (no write to fail with EPIPE),
    leaves no fd in the agent: the agent's fds are those it had before the start."""
    from multiprocessing import context

    from remoteproc import reduction

    agent = LocalAgent()
    try:
        agent.settle()      # (its fds once the preload after its hello is done)
        idle = fd_table(agent.proc.pid)
        payload, _bridged = reduction.dumps_process(context.Process(target=time.sleep, args=(60,)), "local")
        agent.send(frames.control({"op": "start", "id": 1, "streams": [], "stdout": 1, "stderr": 2,
                                   "payload": {"sid": 3}}, b""))
        agent.send(frames.header(frames.DATA, 3, 10) + payload[:10])      # then nothing more
        started = agent.read_control(10)
        assert started["op"] == "started"
        assert len(fd_table(agent.proc.pid)) > len(idle)
        os.kill(started["pid"], signal.SIGKILL)
        assert agent.read_control(10) == {"op": "exited", "id": 1, "code": -signal.SIGKILL}
        assert eventually(lambda: fd_table(agent.proc.pid) == idle, 10), (idle, fd_table(agent.proc.pid))
    finally:
        agent.finish()


def _limits(pid: int) -> tuple[int, int]:
    with open("/proc/%d/limits" % pid) as f:
        line = next(x for x in f if x.startswith("Max open files"))
    return int(line.split()[3]), int(line.split()[4])


def test_agent_raises_its_fd_limit_and_children_get_the_usual_one():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard limit above 256")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))     # the agent inherits 256
    try:
        agent = LocalAgent()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    _start_sleeper(agent, 30)
    started = agent.read_control(10)
    try:
        assert _limits(agent.proc.pid) == (hard, hard)      # the agent (sh exec'd into python)
        deadline = time.monotonic() + 10
        while _limits(started["pid"])[0] != 256 and time.monotonic() < deadline:
            time.sleep(0.05)            # the child restores the limit right after fork
        assert _limits(started["pid"]) == (256, hard)
    finally:
        os.kill(started["pid"], signal.SIGKILL)
        agent.finish()


# -- the agent's environment (how the suite measures coverage of its agents) ------------------

def test_agent_env_reaches_the_agents_interpreter(monkeypatch):
    import json

    from remoteproc import BootstrapError, bootstrap
    from remoteproc.testing.coverage import measure_agents

    monkeypatch.setenv(bootstrap.AGENT_ENV, json.dumps({"RP_MARK": "two words"}))
    shell_as_python = "/bin/sh -c 'printf %s \"$RP_MARK\"' sh"      # prints the variable, ignores the stub
    out = subprocess.run(["/bin/sh", "-c", bootstrap.command(shell_as_python)], input=b"", capture_output=True,
                         timeout=30)
    assert (out.returncode, out.stdout) == (0, bootstrap.READY + b"two words"), out.stderr

    monkeypatch.setenv(bootstrap.AGENT_ENV, "[1, 2]")
    with pytest.raises(BootstrapError, match=bootstrap.AGENT_ENV):
        bootstrap.command("python3")

    monkeypatch.setenv(bootstrap.AGENT_ENV, "")
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    assert measure_agents() is False and bootstrap.agent_env() == {}
    monkeypatch.setenv("COVERAGE_PROCESS_START", "/somewhere/pyproject.toml")
    monkeypatch.setenv("COVERAGE_FILE", "/somewhere/.coverage")
    assert measure_agents() is True
    assert bootstrap.agent_env() == {"COVERAGE_PROCESS_START": "/somewhere/pyproject.toml",
                                     "COVERAGE_FILE": "/somewhere/.coverage"}


@pytest.mark.parametrize("code, expected", [(None, 0), (0, 0), (3, 3), ("bye", "bye")])
def test_sys_exit_with_no_code_is_success_on_a_3_8_host(code, expected):
    """A 3.8 host's ``_bootstrap`` reports ``sys.exit()`` as 1; the user's multiprocessing (3.9+)
    as 0, and so must the remote child (the other codes pass through unchanged)."""
    import multiprocessing

    from remoteproc.agent import child

    process = multiprocessing.Process(target=sys.exit, args=(code,))
    child._exit_none_is_success(process)
    with pytest.raises(SystemExit) as info:
        process.run()
    assert info.value.code == expected
