"""Module forwarding: first and repeated start of a target from a 100-module package.

    python3 benchmarks/bench_modules.py            # through a private loopback sshd
    python3 benchmarks/bench_modules.py --host u@h # against a real host (your ssh config)

A package of 100 modules (about 2 KiB of source each) exists only on this machine.
The target lives in it and imports every module. "first" is the first start of
that target on an open connection (the agent asks for the package: one round
trip brings all of it); "repeated" is every later start (the agent's cache,
inherited at fork: nothing crosses the network). "baseline" is the same start of
a target shipped by value, with nothing to import. Each figure is a median.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cloudpickle  # noqa: E402

from benchmarks.common import host_or_loopback  # noqa: E402
from remoteproc import Pipe, RemoteProcess  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODULES = 100


def trivial(conn):
    conn.send(0)


def make_package(root: str) -> str:
    name = "rpbench_" + uuid.uuid4().hex[:8]
    pkg = os.path.join(root, name)
    os.makedirs(pkg)
    filler = "".join("CONSTANT_%d = %r\n" % (i, "x" * 40) for i in range(40))
    for i in range(MODULES - 1):
        with open(os.path.join(pkg, "mod%02d.py" % i), "w") as f:
            f.write('"""Module %d."""\n\n%s\n\ndef value():\n    return %d\n' % (i, filler, i))
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write("")
    with open(os.path.join(pkg, "entry.py"), "w") as f:
        f.write("import importlib\n\n\ndef run(conn):\n"
                "    total = sum(importlib.import_module(__package__ + '.mod%%02d' %% i).value()"
                " for i in range(%d))\n    conn.send(total)\n" % (MODULES - 1))
    return name


def start_to_answer(host, options, target) -> float:
    parent, child = Pipe()
    t0 = time.perf_counter()
    p = RemoteProcess(host, target=target, args=(child,), **options)
    p.start()
    child.close()
    parent.recv()
    elapsed = time.perf_counter() - t0
    p.join(30)
    assert p.exitcode == 0
    return elapsed


def measure(host, options, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        sys.path.insert(0, root)
        try:
            out: dict[str, list[float]] = {"first": [], "repeated": [], "baseline": []}
            for _ in range(runs):
                name = make_package(root)         # a new package: not in any agent's cache
                importlib.invalidate_caches()
                entry = importlib.import_module(name + ".entry")
                start_to_answer(host, options, trivial)          # the connection is open
                out["baseline"].append(start_to_answer(host, options, trivial))
                out["first"].append(start_to_answer(host, options, entry.run))
                out["repeated"] += [start_to_answer(host, options, entry.run) for _ in range(3)]
            return {k: statistics.median(v) for k, v in out.items()}
        finally:
            sys.path.remove(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help="user@host (default: a private loopback sshd, account rpuser if it exists)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    host, options, server = host_or_loopback(args.host)
    try:
        m = measure(host, options, args.runs)
    finally:
        if server is not None:
            server.stop()
    print("| start of a target from a %d-module package | median | vs a target sent by value |" % MODULES)
    print("|---|---:|---:|")
    for key, label in (("first", "first start on a connection (package forwarded)"),
                       ("repeated", "repeated start (agent's cache)"),
                       ("baseline", "target sent by value, nothing to import")):
        print("| %s | %.1f ms | x%.2f |" % (label, m[key] * 1e3, m[key] / m["baseline"]))


if __name__ == "__main__":
    main()
