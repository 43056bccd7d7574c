"""remoteproc: RemoteProcess over the loopback sshd (or a real host), with Pipe Connections."""

from __future__ import annotations

import functools
import multiprocessing
import sys

import cloudpickle

from . import connbench, targets
from .common import cold_main, cold_sample, peer_main

cloudpickle.register_pickle_by_value(targets)   # the remote host has python3 and nothing else

NAME = "remoteproc"


def _maker(host):
    from remoteproc import RemoteProcess

    return functools.partial(RemoteProcess, host["spec"], **host["options"])


def cold_once(cfg) -> float:
    """New relay process, SSH connection, agent bootstrap, first message back (after the import)."""
    import remoteproc  # noqa: F401

    return connbench.warm_start(_maker(cfg["host"]))


def run(cfg, rec, pair=None) -> None:
    """``pair``: see ``connbench.measure_all``."""
    p = cfg["plan"]
    peer = cfg.get("peer_label", NAME)
    if rec.wanted("cold_start"):
        rec.measure(peer, "cold_start", lambda: cold_sample("benchmarks.peer_remoteproc", cfg), p["cold_runs"])
    make = _maker(cfg["host"])
    connbench.warm_start(make)          # the connection and the agent are up from here on
    rec.measure(peer, "warm_start", lambda: connbench.warm_start(make), p["start_runs"], warmup=1)
    rec.measure(peer, "warm_start_join", lambda: connbench.warm_start_join(make), p["start_runs"], warmup=1)
    # the busy-thread figures alternate with a local Pipe (a forked child) run by run: same load for both
    connbench.measure_all(rec, peer, cfg, make, local=multiprocessing.get_context("fork").Process, pair=pair)
    try:
        from remoteproc.relay import client as relay_client

        relay = relay_client.current()
        if relay is not None:
            rec.data["info"]["relay_pid"] = relay.proc.pid
    except Exception:  # noqa: BLE001 - information only
        pass


if __name__ == "__main__":
    if sys.argv[1] == "--cold":
        cold_main(cold_once)
    else:
        peer_main(run)
