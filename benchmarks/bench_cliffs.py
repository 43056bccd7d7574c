"""Performance cliffs found by the audit: remoteproc beside local multiprocessing, same run.

    python3 benchmarks/bench_cliffs.py                      # both transports, private loopback sshd
    python3 benchmarks/bench_cliffs.py --transport openssh --runs 5

Rows (medians of ``--runs``, the variants alternated run by run):

``broker``: one ``v.value`` read from a child, with 0 and with ``--objects`` other remoteproc
objects passed to that child (each one more Connection the owner's broker serves).  Printed
for a RemoteProcess (each read one round trip through SSH) and for a local forked child of
remoteproc objects (the same broker, no network); the figure to watch is the ratio
many/none, which should stay near 1 (before the fix, 1,000 objects made each request wait
for ~2.5 ms of re-registering them all in ``multiprocessing.connection.wait``).

``queue item``: the owner puts one ``--mib`` MiB bytes item that a child waits for; the
owner's peak RSS above its baseline, in items (local multiprocessing: 1.0, its feeder's
pickle; remoteproc before the fix: 2.0, the pickle and a second copy in the reply's pickle).
Linux only (``/proc/self/clear_refs`` resets the peak).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cloudpickle  # noqa: E402

import remoteproc  # noqa: E402
from remoteproc import RemoteProcess  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

fork = multiprocessing.get_context("fork")


def read_values(value, others, n, out):
    """In the child: microseconds per ``value.value``, median of 3 batches."""
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            _ = value.value
        samples.append((time.perf_counter() - t0) / n * 1e6)
    out.put(statistics.median(samples))


def get_len(q, out):
    out.put(len(q.get(timeout=300)))


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) << 10
    return 0


def broker_row(start, make, objects: int, n: int) -> float:
    value, out = make.Value("i", 0), make.Queue()
    others = [make.Value("i", 0, lock=False) for _ in range(objects)]
    p = start(read_values, (value, others, n, out))
    us = out.get(timeout=300)
    p.join(60)
    return us


def item_row(start, make, size: int) -> float:
    q, out = make.Queue(), make.Queue()
    p = start(get_len, (q, out))
    item = b"i" * size
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _vm("VmRSS")
    q.put(item)
    assert out.get(timeout=300) == size
    peak = _vm("VmHWM")
    p.join(60)
    del item
    return (peak - base) / size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help="user@host (default: a private loopback sshd)")
    ap.add_argument("--transport", choices=("paramiko", "openssh", "both"), default="both")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--n", type=int, default=200, help="reads per batch")
    ap.add_argument("--mib", type=int, default=200, help="size of the queue item")
    args = ap.parse_args()

    server = None
    if args.host:
        host, opts = args.host, {}
    else:
        from remoteproc.testing import LoopbackSSHServer, current_user

        server = LoopbackSSHServer(users=[current_user()]).start()
        host, opts = server.spec(current_user()), server.options(current_user())
    transports = ["paramiko", "openssh"] if args.transport == "both" else [args.transport]

    def remote(tr):
        def start(target, a):
            p = RemoteProcess(host, target=target, args=a, transport=tr, **opts)
            p.start()
            return p
        return start

    def local(target, a):
        p = fork.Process(target=target, args=a)
        p.start()
        return p

    variants = {"local mp": (local, fork), "local rp": (local, remoteproc)}
    variants.update({tr: (remote(tr), remoteproc) for tr in transports})
    try:
        for start, make in variants.values():        # warm up: connections, agents, imports
            broker_row(start, make, 0, 10)
        rows: dict = {}
        for _ in range(args.runs):
            for name, (start, make) in variants.items():
                for k in (0, args.objects):
                    rows.setdefault(("broker", name, k), []).append(broker_row(start, make, k, args.n))
                rows.setdefault(("item", name), []).append(item_row(start, make, args.mib << 20))
        med = {k: statistics.median(v) for k, v in rows.items()}
        print("broker: us per v.value from a child (local mp: multiprocessing.Value in a forked child; "
              "local rp: remoteproc.Value in a forked child)")
        print("  %-10s %12s %16s %10s" % ("child", "0 others", "%d others" % args.objects, "ratio"))
        for name in variants:
            a, b = med[("broker", name, 0)], med[("broker", name, args.objects)]
            print("  %-10s %12.1f %16.1f %10.2f" % (name, a, b, b / a if a else float("nan")))
        print("queue item: owner's peak RSS above baseline while a child gets a %d MiB item, in items" % args.mib)
        for name in variants:
            print("  %-10s %6.2f" % (name, med[("item", name)]))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
