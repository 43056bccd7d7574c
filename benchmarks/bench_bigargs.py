"""A large argument: start to first message, and the parent's peak memory, against local spawn.

    python3 benchmarks/bench_bigargs.py                 # through a private loopback sshd
    python3 benchmarks/bench_bigargs.py --host u@h      # against a real host (your ssh config)
    python3 benchmarks/bench_bigargs.py --sizes 25,200 --runs 5
    python3 benchmarks/bench_bigargs.py --transport openssh

For each size, a process is started with ``args=(conn, data)``, ``data`` being that
many bytes, and its target answers at once with ``len(data)``.  "start" is the time
from ``start()`` to that first message, on a connection that is already open (a
trivial process ran first).  "peak" is how much the parent's peak resident memory
(``ru_maxrss``) grew from just before ``data`` was made to the end, as a multiple of
the argument's size (the argument itself counts as 1.0).  "send" is the same bytes
as one ``conn.send_bytes()`` to a process that is already running, until its
answer: the message path, for comparison.  Local ``spawn`` is
``multiprocessing.get_context("spawn")``.  Each sample runs in a fresh subprocess;
each figure is a median.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import host_or_loopback  # noqa: E402

MIB = 1 << 20


def first(conn, data):
    conn.send(len(data))


def sink(conn):
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        conn.send(len(data))


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _data(size: int) -> bytes:
    block = os.urandom(MIB)
    reps, rest = divmod(size, MIB)
    return block * reps + block[:rest]


def sample(kind: str, size: int, host: str, options: dict) -> dict:
    """One measurement in this (fresh) process: seconds and peak growth / size."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if kind == "spawn":
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        make = ctx.Process
        pipe = ctx.Pipe
    else:
        import remoteproc

        def make(**kw):
            return remoteproc.RemoteProcess(host, **kw, **options)

        pipe = remoteproc.Pipe
        parent, child = pipe()
        warm = make(target=first, args=(child, b""))   # the connection is open before we measure
        warm.start()
        child.close()
        parent.recv()
        warm.join(30)
    if kind == "send":
        parent, child = pipe()
        p = make(target=sink, args=(child,))
        p.start()
        child.close()
    base = _rss_kib()
    data = _data(size)
    t0 = time.perf_counter()
    if kind == "send":
        parent.send_bytes(data)
    else:
        parent, child = pipe()
        p = make(target=first, args=(child, data))
        p.start()
        child.close()
    got = parent.recv()
    elapsed = time.perf_counter() - t0
    assert got == size, got
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    parent.close()
    p.join(60)
    return {"seconds": elapsed, "peak": (peak - base) * 1024 / size}


def _run_sample(kind: str, size: int, host: str, options: dict) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--sample", kind, str(size), host,
                          json.dumps(options)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=300,
                         check=True)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--sample":
        kind, size, host, options = sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
        print(json.dumps(sample(kind, size, host, options)))
        sys.stdout.flush()
        os._exit(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help="user@host (default: a private loopback sshd, account rpuser if it exists)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="25,100,200", help="argument sizes in MiB (default: 25,100,200)")
    ap.add_argument("--kinds", default="remoteproc,send,spawn")
    ap.add_argument("--transport", choices=("paramiko", "openssh"), default="paramiko")
    args = ap.parse_args()
    host, options, server = host_or_loopback(args.host)
    if args.transport != "paramiko":
        options = dict(options, transport=args.transport)
    kinds = args.kinds.split(",")
    results: dict = {}
    try:
        for mib in [int(s) for s in args.sizes.split(",")]:
            for _ in range(args.runs):
                for kind in kinds:      # interleaved: a disturbance hits every kind alike
                    r = _run_sample(kind, mib * MIB, host, options)
                    results.setdefault((mib, kind), []).append(r)
    finally:
        if server is not None:
            server.stop()
    labels = {"remoteproc": "RemoteProcess start", "send": "conn.send_bytes to a running one",
              "spawn": "local spawn start"}
    print("transport: %s" % args.transport)
    print("| argument | %s |" % " | ".join(labels[k] + ": time, peak" for k in kinds))
    print("|---|%s" % ("---:|" * len(kinds)))
    for mib in [int(s) for s in args.sizes.split(",")]:
        cells = []
        for kind in kinds:
            rs = results[(mib, kind)]
            cells.append("%.2f s, %.1fx" % (statistics.median(r["seconds"] for r in rs),
                                            statistics.median(r["peak"] for r in rs)))
        print("| %d MiB | %s |" % (mib, " | ".join(cells)))


if __name__ == "__main__":
    main()
