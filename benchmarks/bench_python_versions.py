"""Warm start on a host of the same Python, and on another Python (spawn mode).

    python3 benchmarks/bench_python_versions.py                      # loopback sshd, pypy3 as the other
    python3 benchmarks/bench_python_versions.py --host u@h --other python3.9

Both run this same script as ``__main__`` (so spawn mode ships and imports it as
``__mp_main__`` in every child, as spawn does).  A "warm start" is start() to the
target's first message on an open connection; "cold" is the first start of each
(connection, agent start-up, and for spawn mode the agent compiled from source).
Each warm figure is the median of ``--runs`` starts.  The script imports what only its
main() needs inside main(): a spawn-mode child imports the script's top level, and a
heavy import there (``statistics``: 60 ms on PyPy) would be measured in every start.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remoteproc import Pipe, RemoteProcess  # noqa: E402


def trivial(conn):
    conn.send(0)


def start_to_answer(host, options) -> float:
    parent, child = Pipe()
    t0 = time.perf_counter()
    p = RemoteProcess(host, target=trivial, args=(child,), **options)
    p.start()
    child.close()
    parent.recv()
    took = time.perf_counter() - t0
    p.join(30)
    parent.close()
    return took


def measure(host, options, runs) -> tuple[float, float, str]:
    import statistics

    cold = start_to_answer(host, options)
    warm = statistics.median(start_to_answer(host, options) for _ in range(runs))
    p = RemoteProcess(host, target=trivial, args=(Pipe()[1],), **options)
    p.start()
    p.join(30)
    return cold, warm, p._popen.mode


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host")
    ap.add_argument("--other", default="pypy3", help="the host's other Python (default pypy3)")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    server = None
    if args.host:
        host, options = args.host, {}
    else:
        from remoteproc.testing import LoopbackSSHServer

        server = LoopbackSSHServer().start()
        host, options = server.spec(), server.options()
    try:
        rows = [("same version", measure(host, options, args.runs)),
                ("spawn mode (%s)" % args.other, measure(host, dict(options, python=args.other), args.runs))]
    finally:
        if server is not None:
            server.stop()
    print("%-24s %10s %10s  %s" % ("", "cold (ms)", "warm (ms)", "mode"))
    for name, (cold, warm, mode) in rows:
        print("%-24s %10.1f %10.2f  %s" % (name, cold * 1e3, warm * 1e3, mode))
    print("spawn-mode warm start / same-version warm start: %.2f" % (rows[1][1][1] / rows[0][1][1]))


if __name__ == "__main__":
    main()
