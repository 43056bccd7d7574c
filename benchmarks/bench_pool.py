"""Pool.map throughput of small tasks: remoteproc.Pool against local multiprocessing.Pool.

    python3 benchmarks/bench_pool.py                    # through a private loopback sshd
    python3 benchmarks/bench_pool.py --host u@h1 --host u@h2 [--workers N]

Both pools get the same number of workers (``--workers`` per host, default 2) and
run the same functions: ``inc`` (nothing but the call), and ``spin`` (a loop
calibrated to about 100 microseconds of CPU here).  Each row is the best of ``--runs``
runs; ``ratio`` is remoteproc's throughput over local multiprocessing's.  On
loopback the "hosts" share this machine's CPUs with the caller, so the figures
measure overhead (pickling, the relay, the SSH channel), not added capacity.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cloudpickle  # noqa: E402

from remoteproc.pool import Pool  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPIN_US = 100
SPIN_LOOPS = 0          # set by main(): loops of ``spin`` that take SPIN_US here


def inc(x):
    return x + 1


def spin(x):
    """A fixed amount of CPU work (not of wall time, which oversubscribed CPUs would stretch)."""
    for _ in range(SPIN_LOOPS):
        pass
    return x


def _calibrate(us: float) -> int:
    loops = 100_000
    t0 = time.perf_counter()
    for _ in range(loops):
        pass
    return max(1, int(loops * us / 1e6 / (time.perf_counter() - t0)))


def _best(pool_map, func, items, chunksize, runs):
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        out = pool_map(func, items, chunksize)
        best = min(best, time.perf_counter() - t0)
        assert len(out) == len(items)
    return len(items) / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", action="append", default=[], help="user@host[:port]; repeatable")
    ap.add_argument("--workers", type=int, default=2, help="workers per host (default 2)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=100_000, help="tasks per map with the default chunksize")
    ap.add_argument("--n1", type=int, default=2_000, help="tasks per map with chunksize=1")
    args = ap.parse_args(argv)

    server = None
    if args.host:
        hosts = list(args.host)
        where = ", ".join(hosts)
    else:
        from remoteproc.testing import LoopbackSSHServer, current_user, ensure_local_user

        users = [current_user()]
        if os.geteuid() == 0:
            try:
                ensure_local_user("rpuser")
                users.append("rpuser")
            except RuntimeError:
                pass
        server = LoopbackSSHServer(users=users).start()
        hosts = [(server.spec(u), server.options(u)) for u in users]
        where = "loopback sshd, %d account(s) as hosts" % len(users)
    nworkers = args.workers * len(hosts)
    global SPIN_LOOPS
    SPIN_LOOPS = _calibrate(SPIN_US)      # before the pools start: forked and shipped copies see it
    rows = [("inc, default chunksize", inc, list(range(args.n)), None),
            ("spin %dus, default chunksize" % SPIN_US, spin, list(range(args.n // 5)), None),
            ("inc, chunksize=1", inc, list(range(args.n1)), 1)]
    results = []
    try:
        t0 = time.perf_counter()
        rpool = Pool(hosts, processes_per_host=args.workers)
        start_remote = time.perf_counter() - t0
        t0 = time.perf_counter()
        lpool = multiprocessing.get_context("fork").Pool(nworkers)
        lpool.map(inc, range(nworkers))
        start_local = time.perf_counter() - t0
        try:
            for name, func, items, chunksize in rows:
                local = _best(lpool.map, func, items, chunksize, args.runs)
                remote = _best(rpool.map, func, items, chunksize, args.runs)
                results.append((name, len(items), local, remote))
        finally:
            rpool.terminate()
            lpool.terminate()
    finally:
        if server is not None:
            server.stop()

    print("Pool.map throughput, %d workers (%s), best of %d, Python %s, %d CPUs"
          % (nworkers, where, args.runs, sys.version.split()[0], os.cpu_count()))
    print("pool start: remoteproc %.0f ms, multiprocessing (fork) %.0f ms" % (start_remote * 1e3, start_local * 1e3))
    print("%-32s %8s %16s %16s %7s" % ("tasks", "n", "mp.Pool tasks/s", "remoteproc /s", "ratio"))
    for name, n, local, remote in results:
        print("%-32s %8d %16.0f %16.0f %7.2f" % (name, n, local, remote, remote / local))
    return 0


if __name__ == "__main__":
    sys.exit(main())
