"""Cost of remoteproc's Lock and Value from a child, beside multiprocessing's in a local child.

    python3 benchmarks/bench_primitives.py                 # through a private loopback sshd
    python3 benchmarks/bench_primitives.py --host u@h1

Rows (each the median of ``--runs`` runs of ``--n`` operations, per operation):
``lock``: an uncontended ``acquire()`` + ``release()``; ``value``: ``with v.get_lock():
v.value += 1`` (acquire, read, write, release); ``read``: ``v.value``; ``jq``: a JoinableQueue
consumer's ``get()`` + ``task_done()`` (the items put beforehand by the parent).  multiprocessing's
run in a local forked child (shared memory and a semaphore, no round trip), remoteproc's
in a RemoteProcess (each call a round trip to the owner, through SSH on loopback).
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


def measure(lock, value, jq, n, runs, out):
    """In the child: seconds per operation of each kind, median of the runs."""
    rows = {}
    for name in ("lock", "value", "read", "jq"):
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            if name == "lock":
                for _ in range(n):
                    lock.acquire()
                    lock.release()
            elif name == "value":
                for _ in range(n):
                    with value.get_lock():
                        value.value += 1
            elif name == "read":
                for _ in range(n):
                    _ = value.value
            else:
                for _ in range(n):
                    jq.get()
                    jq.task_done()
            samples.append((time.perf_counter() - t0) / n)
        rows[name] = statistics.median(samples)
    out.put(rows)


def run(make, start, n, runs):
    lock, value, jq, out = make.Lock(), make.Value("i", 0), make.JoinableQueue(), make.Queue()
    for i in range(n * runs):
        jq.put(i)
    p = start(measure, (lock, value, jq, n, runs, out))
    rows = out.get(timeout=600)
    jq.join()                   # (every task_done() counted)
    p.join(60)
    assert value.value == n * runs, (value.value, n * runs)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help="user@host[:port] (default: a private loopback sshd)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=500, help="operations per run")
    args = ap.parse_args(argv)

    server = None
    if args.host:
        host, options, where = args.host, {}, args.host
    else:
        from remoteproc.testing import LoopbackSSHServer, current_user

        user = current_user()
        server = LoopbackSSHServer(users=[user]).start()
        host, options, where = server.spec(user), server.options(user), "loopback sshd"
    try:
        def start_local(target, a):
            p = multiprocessing.get_context("fork").Process(target=target, args=a)
            p.start()
            return p

        def start_remote(target, a):
            p = RemoteProcess(host, target=target, args=a, **options)
            p.start()
            return p

        local = run(multiprocessing, start_local, args.n * 20, args.runs)
        remote = run(remoteproc, start_remote, args.n, args.runs)
    finally:
        if server is not None:
            server.stop()
    print("per operation from a child (%s), median of %d runs, Python %s, %d CPUs"
          % (where, args.runs, sys.version.split()[0], os.cpu_count()))
    print("%-44s %18s %18s" % ("operation", "multiprocessing", "remoteproc"))
    names = {"lock": "Lock acquire + release, uncontended",
             "value": "with v.get_lock(): v.value += 1",
             "read": "v.value",
             "jq": "JoinableQueue get() + task_done()"}
    for key, name in names.items():
        print("%-44s %15.2f us %15.1f us" % (name, local[key] * 1e6, remote[key] * 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
