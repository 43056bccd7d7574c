"""OpenSSH's client: ``ssh host cat`` piping, and the same helper as the paramiko peer for throughput.

The ssh options the driver passes select the same cipher (aes128-gcm@openssh.com) and
leaves everything else at OpenSSH's defaults (key exchange: sntrup761x25519).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

from .common import (
    HELLO_PY,
    MB,
    MIB,
    cold_main,
    helper_command,
    helper_header,
    payload,
    peer_main,
    random_block,
    recv_exact_fd,
    ssh_argv,
)

NAME = "ssh"


class Pipe:
    """An ``ssh`` process with our ends of its stdin and stdout."""

    def __init__(self, host, command: str, *extra: str) -> None:
        self.proc = subprocess.Popen(ssh_argv(host, *extra) + [command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        self.w = self.proc.stdin.fileno()
        self.r = self.proc.stdout.fileno()
        for fd in (self.w, self.r):
            try:
                fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
            except OSError:
                pass

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view[:1 << 20]):]

    def read_exact(self, n: int) -> int:
        buf = bytearray(min(n, 1 << 20))
        mv = memoryview(buf)
        got = 0
        while got < n:
            k = os.readv(self.r, [mv[:min(n - got, len(buf))]])
            if not k:
                raise EOFError("ssh closed after %d of %d bytes" % (got, n))
            got += k
        return got

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)
        self.proc.stdout.close()


def cold_once(host, *extra: str) -> float:
    """A new ssh process: connection, authentication, a remote python3 and its first byte."""
    import shlex

    t0 = time.perf_counter()
    p = Pipe(host, "%s -c %s" % (host["python"], shlex.quote(HELLO_PY)), *extra)
    recv_exact_fd(p.r, 1)
    elapsed = time.perf_counter() - t0
    p.close()
    return elapsed


def run(cfg, rec) -> None:
    p = cfg["plan"]
    host = cfg["host"]
    peer = cfg.get("peer_label", NAME)
    runs = p["runs"]
    rec.measure(peer, "cold_start", lambda: cold_once(host), p["cold_runs"], warmup=1)
    rec.note(peer, "cold_start", "OpenSSH's default key exchange (sntrup761x25519)")
    if rec.wanted("cold_start"):
        kex = "ssh-curve25519"
        rec.measure(kex, "cold_start", lambda: cold_once(host, "-o", "KexAlgorithms=curve25519-sha256"),
                    p["cold_runs"], warmup=1)

    cat = Pipe(host, "cat")
    msg = bytes(range(100))

    def rt(batch: int) -> float:
        t0 = time.perf_counter()
        for _ in range(batch):
            os.write(cat.w, msg)
            cat.read_exact(100)
        return (time.perf_counter() - t0) / batch

    rt(20)
    rec.note(peer, "rt100", "100 bytes through remote `cat`")
    rec.measure(peer, "rt100", lambda: rt(p["rt_batch"]), runs, warmup=1)
    cat.close()

    helper = Pipe(host, helper_command(host["python"]))
    block = random_block()
    data_64m = payload(64 * MIB, block)

    def up(count: int, data: bytes) -> float:
        t0 = time.perf_counter()
        helper.write(helper_header("u", count * len(data)))
        for _ in range(count):
            helper.write(data)
        recv_exact_fd(helper.r, 1)
        return count * len(data) / (time.perf_counter() - t0) / MB

    def down(count: int, size: int) -> float:
        t0 = time.perf_counter()
        helper.write(helper_header("d", count * size))
        helper.read_exact(count * size)
        return count * size / (time.perf_counter() - t0) / MB

    try:
        rec.measure(peer, "up_1m", lambda: up(p["k_1m"], block), runs, warmup=1)
        rec.measure(peer, "down_1m", lambda: down(p["k_1m"], MIB), runs, warmup=1)
        rec.measure(peer, "up_64m", lambda: up(p["k_64m"], data_64m), p["runs_64m"], warmup=1)
        rec.measure(peer, "down_64m", lambda: down(p["k_64m"], 64 * MIB), p["runs_64m"], warmup=1)
    finally:
        helper.close()


if __name__ == "__main__":
    if sys.argv[1] == "--cold":
        cold_main(lambda cfg: cold_once(cfg["host"]))
    else:
        peer_main(run)
