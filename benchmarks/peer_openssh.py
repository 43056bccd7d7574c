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
    MIB,
    cold_main,
    echo_round_trip,
    helper_command,
    measure_streams,
    payload,
    peer_main,
    random_block,
    recv_exact_fd,
    ssh_argv,
    stream_throughput,
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
    rt = echo_round_trip(cat.write, cat.read_exact)
    rt(20)
    rec.note(peer, "rt100", "100 bytes through remote `cat`")
    rec.measure(peer, "rt100", lambda: rt(p["rt_batch"]), runs, warmup=1)
    cat.close()

    helper = Pipe(host, helper_command(host["python"]))
    block = random_block()
    up, down = stream_throughput(helper.write, helper.read_exact)
    try:
        measure_streams(rec, peer, p, up, down, block, payload(64 * MIB, block))
    finally:
        helper.close()

if __name__ == "__main__":
    if sys.argv[1] == "--cold":
        cold_main(lambda cfg: cold_once(cfg["host"]))
    else:
        peer_main(run)
