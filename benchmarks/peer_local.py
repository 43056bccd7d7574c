"""Local multiprocessing: fork, spawn and forkserver start+join; Pipe round trip and throughput."""

from __future__ import annotations

import multiprocessing
import sys

from . import connbench
from .common import peer_main


def run(cfg, rec) -> None:
    p = cfg["plan"]
    fork = multiprocessing.get_context("fork").Process
    for method in ("fork", "spawn", "forkserver"):
        make = multiprocessing.get_context(method).Process
        peer = "mp-" + method
        rec.measure(peer, "warm_start", lambda make=make: connbench.warm_start(make), p["start_runs"], warmup=1)
        rec.measure(peer, "warm_start_join", lambda make=make: connbench.warm_start_join(make), p["start_runs"],
                    warmup=1)
    # when remoteproc runs too, it takes local Pipe's busy-thread figures, alternating run by run with its own
    connbench.measure_all(rec, "mp-fork", cfg, fork, load=not cfg.get("load_by_remoteproc"))


if __name__ == "__main__":
    if sys.argv[1] == "--cold":
        raise SystemExit("local multiprocessing has no cold start")
    peer_main(run)
