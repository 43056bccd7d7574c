"""execnet over ssh: gateway start, channel round trip, bytes throughput.

execnet runs ``ssh -C`` (compression on) with the suite's ssh options; the payloads are random, so
compression cannot flatter it (nor help it).
"""

from __future__ import annotations

import sys
import time

from .common import MB, MIB, cold_main, cold_sample, payload, peer_main, random_block

NAME = "execnet"

SERVE = """
import os
block = os.urandom(1 << 20)
while True:
    cmd = channel.receive()
    if isinstance(cmd, bytes):
        channel.send(cmd)
    elif cmd[0] == "u":
        for _ in range(cmd[1]):
            channel.receive()
        channel.send(b"k")
    elif cmd[0] == "d":
        reps, rest = divmod(cmd[2], len(block))
        data = block * reps + block[:rest]
        for _ in range(cmd[1]):
            channel.send(data)
    else:
        break
"""


def spec(host) -> str:
    return "ssh=%s//python=%s" % (" ".join(host["ssh_opts"] + [host["ssh_dest"]]), host["python"])


def first_message(gw) -> float:
    t0 = time.perf_counter()
    ch = gw.remote_exec("channel.send(1)")
    ch.receive(30)
    elapsed = time.perf_counter() - t0
    ch.waitclose(30)
    return elapsed


def cold_once(cfg) -> float:
    import execnet

    t0 = time.perf_counter()
    gw = execnet.makegateway(spec(cfg["host"]))
    ch = gw.remote_exec("channel.send(1)")
    ch.receive(30)
    elapsed = time.perf_counter() - t0
    gw.exit()
    return elapsed


def run(cfg, rec) -> None:
    import execnet

    p = cfg["plan"]
    peer = cfg.get("peer_label", NAME)
    runs = p["runs"]
    rec.note(peer, "cold_start", "makegateway + remote_exec to its first message")
    if rec.wanted("cold_start"):
        rec.measure(peer, "cold_start", lambda: cold_sample("benchmarks.peer_execnet", cfg), p["cold_runs"])
    gw = execnet.makegateway(spec(cfg["host"]))
    try:
        rec.note(peer, "warm_start", "remote_exec (a thread in the remote interpreter, not a process)")
        rec.measure(peer, "warm_start", lambda: first_message(gw), p["start_runs"], warmup=1)
        ch = gw.remote_exec(SERVE)
        msg = bytes(range(100))

        def rt(batch: int) -> float:
            t0 = time.perf_counter()
            for _ in range(batch):
                ch.send(msg)
                ch.receive(30)
            return (time.perf_counter() - t0) / batch

        def up(count: int, data: bytes) -> float:
            t0 = time.perf_counter()
            ch.send(("u", count, len(data)))
            for _ in range(count):
                ch.send(data)
            ch.receive(300)
            return count * len(data) / (time.perf_counter() - t0) / MB

        def down(count: int, size: int) -> float:
            t0 = time.perf_counter()
            ch.send(("d", count, size))
            for _ in range(count):
                ch.receive(300)
            return count * size / (time.perf_counter() - t0) / MB

        block = random_block()
        rt(20)
        rec.measure(peer, "rt100", lambda: rt(p["rt_batch"]), runs, warmup=1)
        k_1m = max(4, p["k_1m"] // 4)    # execnet is slow: fewer messages per run
        rec.measure(peer, "up_1m", lambda: up(k_1m, block), runs, warmup=1)
        rec.measure(peer, "down_1m", lambda: down(k_1m, MIB), runs, warmup=1)
        if p["slow_64m"]:
            data_64m = payload(64 * MIB, block)
            rec.measure(peer, "up_64m", lambda: up(1, data_64m), min(3, p["runs_64m"]))
            rec.measure(peer, "down_64m", lambda: down(1, 64 * MIB), min(3, p["runs_64m"]))
        else:
            for m in ("up_64m", "down_64m"):
                rec.skip(peer, m, "skipped in --quick (execnet takes seconds per 64 MiB message)")
        ch.send(("q",))
        ch.waitclose(30)
    finally:
        gw.exit()


if __name__ == "__main__":
    if sys.argv[1] == "--cold":
        cold_main(cold_once)
    else:
        peer_main(run)
