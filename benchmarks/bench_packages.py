"""Packages through the host's cache: `import numpy` on a host without numpy, against a local import.

    python3 benchmarks/bench_packages.py            # loopback sshd, account rpuser (needs root)
    python3 benchmarks/bench_packages.py --host u@h # a real host (its cache is cleared first!)

On loopback the cache is one of the benchmark's own (XDG_CACHE_HOME for the agent, set
through python=), so that nothing else using the account's cache is disturbed.

Each figure is the time of the statement `import numpy` inside the remote child (the
child's own clock), median of --runs:

- "first": empty cache, new connection: the relay hashes numpy, the agent misses, the
  files stream over, the entry is written and renamed into place, then the import runs
  (and writes its bytecode into the entry);
- "cached, new connection": the entry is there; the agent checks it against its hash once
  for this connection, then the import is a local one plus one round trip;
- "cached, same connection": a later child of the same agent (entry already checked);
- "local": `import numpy` in a fresh local interpreter.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cloudpickle  # noqa: E402

from remoteproc import Pipe, RemoteProcess  # noqa: E402
from remoteproc.relay import client  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def timed_import(conn):
    import time

    t = time.perf_counter()
    import numpy

    conn.send((time.perf_counter() - t, numpy.__file__))


def clear_cache(conn):
    """Empty the cache for a cold first import: recent entries too (no other program uses this
    one), once the previous connection's agent has let go of its entries (bounded)."""
    import time

    from remoteproc.agent import pkgcache

    deadline = time.monotonic() + 15
    removed, kept = pkgcache.clear(recent=0)
    while kept and time.monotonic() < deadline:
        time.sleep(0.2)
        more, kept = pkgcache.clear(recent=0)
        removed += more
    conn.send((removed, kept))


def own_cache(options: dict, user: str) -> tuple[dict, str]:
    """Options whose agent keeps its package cache in a new directory of ``user``'s."""
    import pwd
    import tempfile

    pw = pwd.getpwnam(user)
    base = tempfile.mkdtemp(prefix="rp-bench-xdg-")
    os.chown(base, pw.pw_uid, pw.pw_gid)
    return dict(options, python="env XDG_CACHE_HOME=%s python3" % base), base


def call(host, options, target):
    parent, child = Pipe()
    p = RemoteProcess(host, target=target, args=(child,), **options)
    p.start()
    child.close()
    got = parent.recv()
    p.join(30)
    assert p.exitcode == 0, p.exitcode
    return got


def local_import() -> float:
    out = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import numpy; "
                          "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
    return float(out.stdout)


def measure(host, options, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"first": [], "cached, new connection": [], "cached, same connection": [],
                                   "local": []}
    for _ in range(runs):
        call(host, options, clear_cache)
        client.shutdown()
        out["first"].append(call(host, options, timed_import)[0])
        client.shutdown()
        out["cached, new connection"].append(call(host, options, timed_import)[0])
        out["cached, same connection"].append(call(host, options, timed_import)[0])
        out["local"].append(local_import())
        client.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help="user@host (default: a private loopback sshd, account rpuser)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    server = None
    base = None
    if args.host:
        host, options = args.host, {}
    else:
        from remoteproc.testing import LoopbackSSHServer

        server = LoopbackSSHServer(users=["rpuser"]).start()
        host, options = server.spec(), server.options()
        options, base = own_cache(options, "rpuser")
    import numpy

    from remoteproc import distributions
    from remoteproc.agent import pkgcache

    dist = distributions.find("numpy", sys.path)
    assert dist is not None
    plain = dist.size
    distributions.add_bytecode(dist, pkgcache.abi())
    try:
        t0 = time.perf_counter()
        m = measure(host, options, args.runs)
        took = time.perf_counter() - t0
    finally:
        client.shutdown()
        if server is not None:
            server.stop()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
    local = statistics.median(m["local"])
    print("| `import numpy` (numpy %s: %d files, %.0f MB; %.0f MB with bytecode) | median | min | vs local |"
          % (numpy.__version__, len(dist.files), plain / 1e6, dist.size / 1e6))
    print("|---|---:|---:|---:|")
    for key in m:
        print("| %s | %.0f ms | %.0f ms | x%.1f |" % (key, statistics.median(m[key]) * 1e3, min(m[key]) * 1e3,
                                                   statistics.median(m[key]) / local))
    print("(%d runs in %.0f s, %s CPUs, load average %.1f at the end)" % (args.runs, took, os.cpu_count(),
                                                                       os.getloadavg()[0]))


if __name__ == "__main__":
    main()
