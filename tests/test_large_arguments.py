"""Large arguments travel like messages: a big start payload streams to the host.

Past ``spill.STREAM_AT`` bytes the pickled process goes to an anonymous file, the
relay streams it as a stream of its own (DATA frames with credit), and the agent hands
it to the child through a pipe (docs/how-it-works.md, start-up).  Here: it arrives
intact through either transport, no side holds it more than once, a loss or a death
midway ends the process as any other, and nothing is left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing.connection import wait

import cloudpickle
import pytest
import spawn_targets
from conftest import _unavailable
from proctable import eventually, fd_table, gone, ppid

import remoteproc
from remoteproc import Pipe, RemoteProcess, reduction, spill
from remoteproc.errors import BootstrapError
from remoteproc.relay import client as relay_client

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(300)

MIB = 1 << 20
BIG = 64 * MIB


def _data(size: int) -> bytes:
    """``size`` bytes, not all alike (a shifted piece would change the hash)."""
    block = os.urandom(MIB)
    reps, rest = divmod(size, MIB)
    return block * reps + block[:rest]


def digests(conn, *args):
    import hashlib

    conn.send([(type(a).__name__, len(a), hashlib.sha256(a).hexdigest()) for a in args])


def _expected(*args):
    return [(type(a).__name__, len(a), hashlib.sha256(a).hexdigest()) for a in args]


def _run(host, options, *args):
    parent, child = Pipe()
    p = RemoteProcess(host, target=digests, args=(child, *args), **options)
    p.start()
    child.close()
    assert wait([parent], 120), "no answer from the remote process"
    got = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    return got


def test_a_large_argument_arrives_intact(host, ssh_options):
    data = _data(BIG)
    extra = bytearray(_data(2 * MIB + 3))      # (pickled as an in-band buffer: another write path)
    assert _run(host, ssh_options, data, extra) == _expected(data, extra)


def test_payloads_at_the_threshold(host, ssh_options):
    """Just under the threshold rides in the start request, just over it streams: both arrive."""
    small, over = _data(spill.STREAM_AT - 4096), _data(spill.STREAM_AT + 1)
    assert _run(host, ssh_options, small) == _expected(small)
    assert _run(host, ssh_options, over) == _expected(over)
    assert _run(host, ssh_options, b"") == _expected(b"")


def test_processes_with_large_arguments_at_once(host, ssh_options):
    """Three streamed payloads on one connection at the same time, each to its own child."""
    datas = [_data(8 * MIB + i) for i in range(3)]
    pipes, procs = [], []
    for data in datas:
        parent, child = Pipe()
        p = RemoteProcess(host, target=digests, args=(child, data), **ssh_options)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    for parent, p, data in zip(pipes, procs, datas):
        assert wait([parent], 120)
        assert parent.recv() == _expected(data)
        p.join(30)
        assert p.exitcode == 0


MEASURE = r"""
import json, os, resource, sys
sys.path[:0] = {path!r}
from multiprocessing.connection import wait
import remoteproc
from remoteproc.relay import client as relay_client

def hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

def answer(conn, data):
    conn.send((len(data), os.getpid()))
    conn.recv()

def main():
    host, options, size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    parent, child = remoteproc.Pipe()
    p = remoteproc.RemoteProcess(host, target=answer, args=(child, b""), **options)
    p.start(); child.close()
    assert wait([parent], 60)
    _n, pid = parent.recv()
    agent = int(open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[1])
    parent.send(None)
    p.join(30)
    relay = relay_client.current().proc.pid
    before = {{"relay": hwm_kib(relay), "agent": hwm_kib(agent)}}
    import gc; gc.collect()
    base = rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")        # the peak (VmHWM, ru_maxrss) starts again from here
    block = os.urandom(1 << 20)
    data = block * (size >> 20)
    parent, child = remoteproc.Pipe()
    p = remoteproc.RemoteProcess(host, target=answer, args=(child, data), **options)
    p.start(); child.close()
    assert wait([parent], 120)
    assert parent.recv()[0] == size
    parent.send(None)
    p.join(30)
    assert p.exitcode == 0
    peak = hwm_kib(os.getpid())
    print(json.dumps({{"parent": (peak - base) * 1024 / size,
                      "kib": [base, peak_before, peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss],
                      "relay": (hwm_kib(relay) - before["relay"]) * 1024 / size,
                      "agent": (hwm_kib(agent) - before["agent"]) * 1024 / size}}))

main()
"""


@pytest.mark.loopback_only      # reads the relay's and the agent's memory from /proc
def test_no_side_holds_a_large_argument_twice(host, ssh_options, tmp_path):
    """The parent's peak grows by the argument and little more (its pickle is in a memfd,
    which the relay streams from); the relay and the agent hold a few windows of it."""
    script = tmp_path / "measure.py"
    script.write_text(textwrap.dedent(MEASURE.format(path=sys.path)))
    out = subprocess.run([sys.executable, str(script), host, json.dumps(ssh_options), str(BIG)],
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=240)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    growth = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert growth["parent"] < 1.6, growth       # the argument itself is 1.0 of it (before: 3x)
    assert growth["relay"] < 0.5, growth
    assert growth["agent"] < 0.5, growth


class Stall:
    """Unpickles as a pause: the child stops reading its payload midway (and says so)."""

    def __init__(self, marker: str | None) -> None:
        self.marker = marker

    def __reduce__(self):
        say = "open(%r, 'w').close()\n" % self.marker if self.marker else ""
        return exec, (say + "import time\ntime.sleep(120)",)


def first_message(conn, stall, data):
    conn.send(len(data))        # (never reached in these tests)


def _stalled(host, options, tmp_path):
    """A process whose child pauses while its 64 MiB payload is still streaming in."""
    marker = str(tmp_path / "stalled")
    parent, child = Pipe()
    p = RemoteProcess(host, target=first_message, args=(child, Stall(marker), _data(BIG)), **options)
    p.start()
    child.close()
    assert eventually(lambda: os.path.exists(marker), 60), "the child did not start unpickling"
    return p, parent


def _payload_files(pid: int) -> list[str]:
    """The memfds of start payloads that process ``pid`` holds."""
    return [target for target in fd_table(pid).values() if "remoteproc-payload" in target]


@pytest.mark.loopback_only      # kills the loopback sshd's session; reads /proc
def test_connection_lost_mid_payload(host, ssh_options, tmp_path):
    p, conn = _stalled(host, ssh_options, tmp_path)
    agent = ppid(p.pid)
    session = ppid(agent)
    with open("/proc/%d/cmdline" % session, "rb") as f:
        assert b"sshd" in f.read()
    os.kill(session, signal.SIGKILL)
    p.join(60)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    assert isinstance(p.connection_error, remoteproc.ConnectionLostError)
    with pytest.raises(EOFError):
        conn.recv()
    assert gone(p.pid) and gone(agent), "remote processes outlived the connection"
    relay = relay_client.current()
    assert relay is not None
    assert eventually(lambda: not _payload_files(relay.proc.pid), 15), "the relay kept the payload open"
    assert _run(host, ssh_options, b"again") == _expected(b"again")


def hold(conn):
    """Sends its pid, then waits for the parent to close its end."""
    conn.send(os.getpid())
    try:
        conn.recv()
    except EOFError:
        pass


def _fd_count(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def _settled_fd_count(pid: int) -> int:
    """How many fds ``pid`` holds once the count stops moving (bounded)."""
    last = -1
    for _ in range(50):
        now = _fd_count(pid)
        if now == last:
            return now
        last = now
        time.sleep(0.2)
    return last


@pytest.mark.loopback_only      # kills the remote child by pid; reads /proc
def test_child_dies_before_reading_its_payload(host, ssh_options, tmp_path):
    parent, child = Pipe()
    warm = RemoteProcess(host, target=hold, args=(child,), **ssh_options)
    warm.start()
    child.close()
    assert wait([parent], 60)
    agent = ppid(parent.recv())
    parent.close()
    warm.join(30)
    idle_fds = _settled_fd_count(agent)
    idle_table = fd_table(agent)
    p, conn = _stalled(host, ssh_options, tmp_path)
    assert ppid(p.pid) == agent
    os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    assert p.connection_error is None
    with pytest.raises(EOFError):
        conn.recv()
    relay = relay_client.current()
    assert relay is not None
    assert eventually(lambda: not _payload_files(relay.proc.pid), 15), "the relay kept the payload open"
    # (<=: under load the idle count can be taken while the warm-up child's fds still close)
    assert eventually(lambda: _fd_count(agent) <= idle_fds, 15), "the agent kept fds of the dead child: %s" % (
        {fd: link for fd, link in fd_table(agent).items() if idle_table.get(fd) != link})
    # The connection carries on, big payloads included.
    data = _data(3 * MIB)
    assert _run(host, ssh_options, data) == _expected(data)


def test_terminate_while_the_payload_streams(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=first_message, args=(child, Stall(None), _data(BIG)), **ssh_options)
    p.start()
    child.close()
    p.terminate()
    p.join(60)
    assert p.exitcode == -signal.SIGTERM
    with pytest.raises(EOFError):
        parent.recv()


def _own_payload_files() -> list[str]:
    return _payload_files(os.getpid())


def test_the_pickle_of_a_large_argument_is_a_file(host, ssh_options):
    """What the relay gets: an anonymous file at offset 0 holding exactly the pickle."""
    import pickle

    data = _data(spill.STREAM_AT + 10)
    p = RemoteProcess(host, target=digests, args=(data,), **ssh_options)
    payload, bridged = reduction.dumps_process(p, host)
    assert isinstance(payload, spill.Streamed) and not bridged
    try:
        assert os.lseek(payload.fd, 0, os.SEEK_CUR) == 0
        assert os.fstat(payload.fd).st_size == payload.size
        with os.fdopen(os.dup(payload.fd), "rb") as f:
            assert pickle.load(f)._args == (data,)      # (the process object; then its source lines)
            assert isinstance(pickle.load(f), dict)
            assert f.read() == b""
    finally:
        payload.close()
    small, _ = reduction.dumps_process(RemoteProcess(host, target=digests, args=(b"x",), **ssh_options), host)
    assert isinstance(small, bytes)
    assert not _own_payload_files()


def test_an_unpicklable_argument_after_a_large_one_leaves_no_file(host, ssh_options):
    import threading

    p = RemoteProcess(host, target=digests, args=(_data(3 * MIB), threading.Lock()), **ssh_options)
    with pytest.raises(remoteproc.PicklingError):
        p.start()
    assert not _own_payload_files()


@pytest.mark.loopback_only      # reads the agent's pid from /proc
def test_a_refused_start_with_a_large_argument_leaves_the_connection_up(host, ssh_options):
    """The agent refuses the start (no such cwd) while its payload is already on the way:
    those frames are dropped, and the same agent serves the next start."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=hold, args=(child,), **ssh_options)
    p.start()
    child.close()
    assert wait([parent], 60)
    agent = ppid(parent.recv())
    refused = RemoteProcess(host, target=digests, args=(_data(8 * MIB),), cwd="/no/such/dir", **ssh_options)
    with pytest.raises(BootstrapError) as info:
        refused.start()
    assert "/no/such/dir" in str(info.value)
    data = _data(3 * MIB)
    parent2, child2 = Pipe()
    p2 = RemoteProcess(host, target=hold, args=(child2,), **ssh_options)
    p2.start()
    child2.close()
    assert wait([parent2], 60)
    assert ppid(parent2.recv()) == agent, "the connection was lost after the refusal"
    assert _run(host, ssh_options, data) == _expected(data)
    for conn, proc in ((parent, p), (parent2, p2)):
        conn.close()
        proc.join(30)
        assert proc.exitcode == 0


def test_a_large_argument_in_spawn_mode(plain_user_host, plain_user_options):
    """Another Python on the host (PyPy 3.9): the payload is a plain pickle, streamed alike."""
    if shutil.which("pypy3") is None:
        _unavailable("pypy3 (a second Python, 3.9) is not installed; scripts/test.sh installs it")
    data = _data(16 * MIB + 5)
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=spawn_targets.digest, args=(child, data), python="pypy3",
                      **plain_user_options)
    p.start()
    child.close()
    assert wait([parent], 120)
    assert parent.recv() == (len(data), hashlib.sha256(data).hexdigest())
    p.join(30)
    assert p.exitcode == 0 and p._popen.mode == "spawn"
