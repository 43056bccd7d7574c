"""Shared pieces of the benchmark suite: host description, timing, CPU load, the remote helper.

Every peer (remoteproc, raw paramiko, OpenSSH, execnet, mitogen, local multiprocessing)
runs in a subprocess of its own (``python3 -m benchmarks.peer_NAME CONFIG``), so that no
peer's threads, imports or leftovers disturb another's figures, and so that the driver
can bound each one with a timeout and stop it by its process id.  A peer writes its
samples to a JSON file after every metric, so a peer that runs out of time still
reports what it measured.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MIB = 1 << 20
MB = 1e6                 # throughput is reported in MB/s (10**6 bytes per second)

# name -> (unit, True if a higher figure is better)
METRICS: dict[str, tuple[str, bool]] = {
    "cold_start": ("s", False),
    "warm_start": ("s", False),
    "warm_start_join": ("s", False),
    "rt100": ("s", False),
    "up_1m": ("MB/s", True),
    "down_1m": ("MB/s", True),
    "up_64m": ("MB/s", True),
    "down_64m": ("MB/s", True),
    "conc100": ("s", False),
    "seq100": ("s", False),
    "rt100_load": ("s", False),
    "up_1m_load": ("MB/s", True),
    # measured run by run alternately with ``ssh HOST cat`` and the sink/source helper
    "rt100_pair": ("s", False),
    "up_1m_pair": ("MB/s", True),
    "down_1m_pair": ("MB/s", True),
    # the same, against ``ssh`` with multiprocessing's Connection framing the messages at both ends
    "rt100_msgpair": ("s", False),
    "up_1m_msgpair": ("MB/s", True),
    "down_1m_msgpair": ("MB/s", True),
}


# -- run-time parameters ------------------------------------------------------------------

def plan(quick: bool, runs: int | None) -> dict[str, Any]:
    """How many runs and how big each run is; ``--quick`` keeps the whole suite under a minute."""
    if quick:
        p = {"runs": 3, "cold_runs": 2, "start_runs": 5, "rt_batch": 200, "load_batch": 20,
             "k_1m": 16, "k_64m": 1, "runs_64m": 2, "slow_64m": False, "hundred_runs": 1}
    else:
        p = {"runs": 7, "cold_runs": 5, "start_runs": 15, "rt_batch": 500, "load_batch": 40,
             "k_1m": 32, "k_64m": 2, "runs_64m": 5, "slow_64m": True, "hundred_runs": 3}
    if runs:
        for key in ("runs", "cold_runs", "start_runs", "runs_64m", "hundred_runs"):
            p[key] = runs
    return p


# -- statistics ------------------------------------------------------------------------------

def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


# -- a CPU-bound pure-Python thread ------------------------------------------------------------

def _burn(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(20000):
            x += i


@contextmanager
def cpu_load():
    """One CPU-bound pure-Python thread in this process while the block runs."""
    stop = threading.Event()
    t = threading.Thread(target=_burn, args=(stop,), name="bench-cpu-load", daemon=True)
    t.start()
    time.sleep(0.05)
    try:
        yield
    finally:
        stop.set()
        t.join(10)


def random_block(size: int = MIB) -> bytes:
    """Incompressible data (ssh -C in execnet and mitogen would make zeros look fast)."""
    return os.urandom(size)


def payload(size: int, block: bytes) -> bytes:
    """``size`` bytes made of a random block repeated (zlib's 32 KiB window sees no repeat)."""
    if size <= len(block):
        return block[:size]
    reps, rest = divmod(size, len(block))
    return block * reps + block[:rest]


# -- the remote helper for the raw transports ---------------------------------------------------

# Runs under the remote python3 (any 3.x): a command loop on stdin/stdout.  A command is one
# op byte and an 8-byte length: 'u' reads that many bytes and answers b"k"; 'd' writes that
# many bytes; 'e' echoes that many bytes.  Reads and writes use 1 MiB pieces.  'U' and 'D' take
# a count of 1 MiB messages framed by multiprocessing's Connection (``message_throughput``).
HELPER = r"""
import os
blk = os.urandom(1 << 20)
buf = bytearray(1 << 20)
mv = memoryview(buf)
def readn(n):
    out = bytearray()
    while len(out) < n:
        c = os.read(0, n - len(out))
        if not c:
            raise SystemExit(0)
        out += c
    return out
def writeall(v):
    v = memoryview(v)
    while v:
        v = v[os.write(1, v):]
while True:
    h = readn(9)
    op, n = h[0], int.from_bytes(h[1:], "big")
    if op == 117:
        while n:
            k = os.readv(0, [mv[:min(n, 1 << 20)]])
            if not k:
                raise SystemExit(0)
            n -= k
        writeall(b"k")
    elif op == 100:
        bv = memoryview(blk)
        while n:
            k = min(n, 1 << 20)
            writeall(bv[:k])
            n -= k
    elif op == 101:
        writeall(readn(n))
    elif op == 82:
        # 'R': n echoes of a message, read and written by multiprocessing's Connection (what
        # remoteproc's child does), for the framed round trip (``message_round_trip``)
        from multiprocessing.connection import Connection
        ci, co = Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False)
        for _ in range(n):
            co.send_bytes(ci.recv_bytes())
        ci.close()
        co.close()
    elif op in (85, 68):
        # 'U' / 'D': n messages of 1 MiB through multiprocessing's own Connection on this end
        # (what a user framing messages over ssh would use, and what remoteproc's child uses)
        from multiprocessing.connection import Connection
        if op == 85:
            c = Connection(os.dup(0), writable=False)
            for _ in range(n):
                c.recv_bytes_into(buf)
            c.close()
            writeall(b"k")
        else:
            c = Connection(os.dup(1), readable=False)
            for _ in range(n):
                c.send_bytes(blk)
            c.close()
    else:
        break
"""

HELLO_PY = "import os; os.write(1, b'x')"


def helper_command(python: str) -> str:
    import shlex

    return "%s -c %s" % (python, shlex.quote(HELPER))


def helper_header(op: str, n: int) -> bytes:
    return op.encode() + n.to_bytes(8, "big")


def echo_round_trip(write: Callable[[bytes], Any], read_exact: Callable[[int], Any]) -> Callable[[int], float]:
    """rt(batch): seconds per 100-byte round trip through a remote `cat`."""
    msg = bytes(range(100))

    def rt(batch: int) -> float:
        t0 = time.perf_counter()
        for _ in range(batch):
            write(msg)
            read_exact(100)
        return (time.perf_counter() - t0) / batch

    return rt


def stream_throughput(write: Callable[[Any], Any], read_exact: Callable[[int], Any]):
    """up(count, data) and down(count, size), in MB/s, through the sink/source helper."""

    def up(count: int, data: bytes) -> float:
        t0 = time.perf_counter()
        write(helper_header("u", count * len(data)))
        for _ in range(count):
            write(data)
        read_exact(1)
        return count * len(data) / (time.perf_counter() - t0) / MB

    def down(count: int, size: int) -> float:
        t0 = time.perf_counter()
        write(helper_header("d", count * size))
        read_exact(count * size)
        return count * size / (time.perf_counter() - t0) / MB

    return up, down


def message_throughput(write_fd: int, read_fd: int, write: Callable[[Any], Any], read_exact: Callable[[int], Any]):
    """up(count, data), down(count, size) and rt(batch) like ``stream_throughput`` and
    ``echo_round_trip``, but as messages framed by ``multiprocessing.connection.Connection`` at
    both ends of ``ssh`` (the echo a Python loop, not ``cat``): the same framing and reading code
    as remoteproc's ends, so that what differs is only what carries the bytes."""
    from multiprocessing.connection import Connection

    out = Connection(os.dup(write_fd), readable=False)
    into = Connection(os.dup(read_fd), writable=False)
    buf = bytearray(MIB)

    def up(count: int, data: bytes) -> float:
        t0 = time.perf_counter()
        write(helper_header("U", count))
        for _ in range(count):
            out.send_bytes(data)
        read_exact(1)
        return count * len(data) / (time.perf_counter() - t0) / MB

    def down(count: int, size: int) -> float:
        if size != MIB:
            raise ValueError("the helper sends 1 MiB messages")
        t0 = time.perf_counter()
        write(helper_header("D", count))
        for _ in range(count):
            if into.recv_bytes_into(buf) != size:
                raise RuntimeError("short message")
        return count * size / (time.perf_counter() - t0) / MB

    def rt(batch: int) -> float:
        msg = bytes(range(100))
        t0 = time.perf_counter()
        write(helper_header("R", batch))
        for _ in range(batch):
            out.send_bytes(msg)
            if len(into.recv_bytes()) != 100:
                raise RuntimeError("short echo")
        return (time.perf_counter() - t0) / batch

    def close() -> None:
        out.close()
        into.close()

    return up, down, rt, close


def measure_streams(rec, peer: str, p: dict[str, Any], up, down, block: bytes, data_64m: bytes) -> None:
    """The four throughput figures (1 MiB and 64 MiB messages, each way)."""
    rec.measure(peer, "up_1m", lambda: up(p["k_1m"], block), p["runs"], warmup=1)
    rec.measure(peer, "down_1m", lambda: down(p["k_1m"], MIB), p["runs"], warmup=1)
    rec.measure(peer, "up_64m", lambda: up(p["k_64m"], data_64m), p["runs_64m"], warmup=1)
    rec.measure(peer, "down_64m", lambda: down(p["k_64m"], 64 * MIB), p["runs_64m"], warmup=1)


# -- the ssh_config file OpenSSH-based peers (ssh, execnet, mitogen) use ---------------------------

ALIAS = "rp-bench"
CIPHER = "aes128-gcm@openssh.com"


def host_or_loopback(spec: str | None) -> tuple[str, dict[str, Any], Any]:
    """(host, options, server) for a benchmark script's ``--host``: SPEC as the user's ssh config has
    it, or a private loopback sshd (account rpuser when it exists and we are root). The caller
    stops ``server`` (None for a real host) when done."""
    if spec:
        return spec, {}, None
    import pwd

    from remoteproc.testing import LoopbackSSHServer

    try:
        pwd.getpwnam("rpuser")
        users = ["rpuser"] if os.geteuid() == 0 else None
    except KeyError:
        users = None
    server = LoopbackSSHServer(users=users).start()
    return server.spec(), server.options(), server


def write_ssh_config(path: str, host: dict[str, Any]) -> None:
    """An ssh_config with one alias for the host, with the same cipher as the paramiko peers."""
    lines = ["Host %s" % ALIAS, "    HostName %s" % host["hostname"]]
    if host.get("port"):
        lines.append("    Port %d" % host["port"])
    if host.get("user"):
        lines.append("    User %s" % host["user"])
    if host.get("key"):
        lines += ["    IdentityFile %s" % host["key"], "    IdentitiesOnly yes"]
    if host.get("known_hosts"):
        lines += ["    UserKnownHostsFile %s" % host["known_hosts"], "    StrictHostKeyChecking yes"]
    lines += ["    Ciphers %s" % CIPHER, "    BatchMode yes", "    LogLevel ERROR", "    ControlMaster no",
              "    ControlPath none"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def ssh_argv(host: dict[str, Any], *extra: str) -> list[str]:
    """``ssh OPTIONS DESTINATION``: the loopback alias in our ssh_config, or a real host as the user has it."""
    return ["ssh", *host["ssh_opts"], *extra, host["ssh_dest"]]


# -- the peer side: run metrics, record samples -----------------------------------------------------

class Recorder:
    """Collects samples per peer and metric; writes them to the output file after each metric."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.out = cfg["out"]
        self.data: dict[str, Any] = {"peers": {}, "info": {}}
        self.soft_deadline = time.monotonic() + cfg["timeout"] * 0.85

    def wanted(self, metric: str) -> bool:
        only = self.cfg.get("metrics")
        return not only or metric in only

    def peer(self, name: str) -> dict[str, Any]:
        return self.data["peers"].setdefault(name, {"metrics": {}, "skipped": {}, "notes": {}})

    def skip(self, peer: str, metric: str, reason: str) -> None:
        self.peer(peer)["skipped"][metric] = reason
        self.save()

    def note(self, peer: str, metric: str, text: str) -> None:
        self.peer(peer)["notes"][metric] = text

    def measure(self, peer: str, metric: str, fn: Callable[[], float], runs: int, warmup: int = 0) -> bool:
        """``fn()`` returns one sample; runs it ``warmup`` + ``runs`` times.  False if it failed."""
        if not self.wanted(metric):
            return True
        samples: list[float] = []
        try:
            for i in range(warmup + runs):
                if time.monotonic() > self.soft_deadline:
                    if not samples:
                        self.skip(peer, metric, "out of time (this peer's budget is %ds)" % self.cfg["timeout"])
                        return False
                    break
                value = fn()
                if i >= warmup:
                    samples.append(value)
        except Exception as exc:  # noqa: BLE001 - a failing peer is reported, the suite goes on
            tb = traceback.format_exc().strip().splitlines()
            self.skip(peer, metric, "%s: %s (%s)" % (type(exc).__name__, exc, tb[-3] if len(tb) > 2 else ""))
            return False
        finally:
            if samples:
                self.peer(peer)["metrics"][metric] = samples
                self.save()
        return True

    def measure_interleaved(self, metric: str, fns: list[tuple[str, Callable[[], float]]], runs: int,
                            warmup: int = 0) -> None:
        """Alternate several peers run by run, so that they see the same conditions (load, noise)."""
        if not self.wanted(metric):
            return
        samples: dict[str, list[float]] = {peer: [] for peer, _fn in fns}
        try:
            for i in range(warmup + runs):
                if time.monotonic() > self.soft_deadline:
                    break
                for peer, fn in fns:
                    value = fn()
                    if i >= warmup:
                        samples[peer].append(value)
        except Exception as exc:  # noqa: BLE001
            for peer, _fn in fns:
                self.skip(peer, metric, "%s: %s" % (type(exc).__name__, exc))
        finally:
            for peer, values in samples.items():
                if values:
                    self.peer(peer)["metrics"][metric] = values
            self.save()

    def save(self) -> None:
        tmp = self.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.out)


def peer_main(run: Callable[[dict[str, Any], Recorder], None]) -> None:
    """Entry point of a peer subprocess: ``python3 -m benchmarks.peer_X CONFIG.json``."""
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    rec = Recorder(cfg)

    def _expire() -> None:      # a hard bound, in case something hangs past the driver's patience
        sys.stderr.write("benchmark peer %s: out of time, exiting\n" % cfg.get("peer"))
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(cfg["timeout"], _expire)
    timer.daemon = True
    timer.start()
    try:
        run(cfg, rec)
    except Exception:  # noqa: BLE001
        rec.data["info"]["error"] = traceback.format_exc()
        traceback.print_exc()
    finally:
        rec.save()
        timer.cancel()


def cold_sample(module: str, cfg: dict[str, Any], timeout: float = 60.0) -> float:
    """One cold start in a fresh interpreter: ``python3 -m MODULE --cold CONFIG`` prints its seconds."""
    proc = subprocess.Popen([sys.executable, "-m", module, "--cold", cfg["config_path"]], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise TimeoutError("a cold start of %s took over %gs" % (module, timeout)) from None
    finally:
        try:
            os.killpg(proc.pid, 9)      # whatever it left behind (a relay process, an ssh client)
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        raise RuntimeError("cold start of %s failed (%d): %s" % (
            module, proc.returncode, err.decode(errors="replace").strip()[-600:]))
    line = [x for x in out.decode().splitlines() if x.startswith("COLD ")][-1]
    return float(line.split()[1])


def cold_main(sample: Callable[[dict[str, Any]], float]) -> None:
    """The ``--cold`` entry of a peer module: one sample, printed as ``COLD seconds``."""
    with open(sys.argv[2], encoding="utf-8") as f:
        cfg = json.load(f)
    print("COLD %.6f" % sample(cfg), flush=True)


def recv_exact_fd(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        c = os.read(fd, n - len(out))
        if not c:
            raise EOFError("the peer closed after %d of %d bytes" % (len(out), n))
        out += c
    return bytes(out)
