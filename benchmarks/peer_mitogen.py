"""mitogen over ssh: connect, call round trip, bytes through calls (pipelined with call_async).

mitogen runs ``ssh -o Compression yes`` by default; the payloads are random.
"""

from __future__ import annotations

import sys
import time

from . import mitogen_remote
from .common import MB, MIB, cold_main, cold_sample, payload, peer_main, random_block

NAME = "mitogen"


def _connect(host):
    import mitogen.master

    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    ctx = router.ssh(hostname=host["ssh_dest"], ssh_args=list(host["ssh_opts"]), python_path=host["python"],
                     check_host_keys="enforce", connect_timeout=30)
    return broker, router, ctx


def cold_once(cfg) -> float:
    import mitogen.master  # noqa: F401

    t0 = time.perf_counter()
    broker, _router, ctx = _connect(cfg["host"])
    ctx.call(mitogen_remote.first)
    elapsed = time.perf_counter() - t0
    broker.shutdown()
    broker.join()
    return elapsed


def run(cfg, rec) -> None:
    p = cfg["plan"]
    peer = cfg.get("peer_label", NAME)
    runs = p["runs"]
    rec.note(peer, "cold_start", "router.ssh() + first call")
    if rec.wanted("cold_start"):
        rec.measure(peer, "cold_start", lambda: cold_sample("benchmarks.peer_mitogen", cfg), p["cold_runs"])
    broker, _router, ctx = _connect(cfg["host"])
    try:
        msg = bytes(range(100))

        def call_once() -> float:
            t0 = time.perf_counter()
            ctx.call(mitogen_remote.first)
            return time.perf_counter() - t0

        def rt(batch: int) -> float:
            t0 = time.perf_counter()
            for _ in range(batch):
                ctx.call(mitogen_remote.echo, msg)
            return (time.perf_counter() - t0) / batch

        def up(count: int, data: bytes) -> float:
            t0 = time.perf_counter()
            pending = [ctx.call_async(mitogen_remote.sink, data) for _ in range(count)]
            for r in pending:
                r.get().unpickle()
            return count * len(data) / (time.perf_counter() - t0) / MB

        def down(count: int, size: int) -> float:
            t0 = time.perf_counter()
            pending = [ctx.call_async(mitogen_remote.source, size) for _ in range(count)]
            for r in pending:
                r.get().unpickle()
            return count * size / (time.perf_counter() - t0) / MB

        rec.note(peer, "warm_start", "a function call on the connected context (no new process)")
        rec.measure(peer, "warm_start", call_once, p["start_runs"], warmup=1)
        rt(20)
        rec.note(peer, "rt100", "a call whose argument and result are 100 bytes")
        rec.measure(peer, "rt100", lambda: rt(p["rt_batch"]), runs, warmup=1)
        block = random_block()
        k_1m = max(4, p["k_1m"] // 4)
        rec.measure(peer, "up_1m", lambda: up(k_1m, block), runs, warmup=1)
        rec.measure(peer, "down_1m", lambda: down(k_1m, MIB), runs, warmup=1)
        if p["slow_64m"]:
            data_64m = payload(64 * MIB, block)
            rec.measure(peer, "up_64m", lambda: up(1, data_64m), min(3, p["runs_64m"]))
            rec.measure(peer, "down_64m", lambda: down(1, 64 * MIB), min(3, p["runs_64m"]))
        else:
            for m in ("up_64m", "down_64m"):
                rec.skip(peer, m, "skipped in --quick (mitogen takes seconds per 64 MiB message)")
    finally:
        broker.shutdown()
        broker.join()


if __name__ == "__main__":
    if sys.argv[1] == "--cold":
        cold_main(cold_once)
    else:
        peer_main(run)
