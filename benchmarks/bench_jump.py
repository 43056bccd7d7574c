"""Small round trips through a jump host, beside the same direct, with both transports.

    python3 benchmarks/bench_jump.py                 # a target and a jump host: two loopback sshds
    python3 benchmarks/bench_jump.py --n 2000

Routes: direct, ``proxy_jump`` to a jump host, and ``ProxyCommand ssh -W %h:%p`` to the same
jump host (the older way many configs still have).  Rows: a ``Queue`` round trip (the parent
``put``s, a remote child ``get``s and ``put``s it on a second Queue, the parent ``get``s it:
several frames each way through the owner) and a Pipe round trip whose answer comes on two
Connections at once.  Each as median and mean per round trip and the count of round trips over
20 ms: a delayed ACK (40 ms) shows there, not in the median (docs/performance.md, "Two messages
at once through a jump host").  Direct is the baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cloudpickle  # noqa: E402

import remoteproc  # noqa: E402
from remoteproc import Pipe, RemoteProcess  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

STALL = 0.020


def queue_echo(q_in, q_out):
    while True:
        item = q_in.get()
        q_out.put(item)
        if item is None:
            return


def pair_echo(c1, c2):
    while True:
        m = c1.recv_bytes()
        c1.send_bytes(m)
        c2.send_bytes(m)
        if not m:
            return


def queue_rt(host, options, n):
    q_in, q_out = remoteproc.Queue(), remoteproc.Queue()
    p = RemoteProcess(host, target=queue_echo, args=(q_in, q_out), **options)
    p.start()
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        q_in.put(i)
        q_out.get(timeout=60)
        times.append(time.perf_counter() - t0)
    q_in.put(None)
    q_out.get(timeout=60)
    p.join(30)
    return times


def pair_rt(host, options, n):
    (a1, b1), (a2, b2) = Pipe(), Pipe()
    p = RemoteProcess(host, target=pair_echo, args=(b1, b2), **options)
    p.start()
    b1.close()
    b2.close()
    msg = b"x" * 100
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        a1.send_bytes(msg)
        a1.recv_bytes()
        a2.recv_bytes()
        times.append(time.perf_counter() - t0)
    a1.send_bytes(b"")
    p.join(30)
    return times


def jump_config(target, jump, user, workdir):
    """An ssh_config naming the jump host as users do (an alias with its key), and one known_hosts
    with both hosts' keys (a jump host is checked with the target's known_hosts)."""
    o = jump.options(user)
    known = os.path.join(workdir, "known_hosts")
    with open(known, "w") as out:
        for server in (target, jump):
            with open(server.options(user)["known_hosts"]) as f:
                out.write(f.read())
    path = os.path.join(workdir, "config")
    with open(path, "w") as f:
        f.write("Host bench-jump\n  HostName 127.0.0.1\n  User %s\n  Port %d\n  IdentityFile %s\n"
                "  UserKnownHostsFile %s\n  LogLevel ERROR\n" % (user, jump.port, o["key_filename"], known))
        # the older way to the same jump host, still in many configs: a ProxyCommand running ``ssh -W``
        f.write("Host bench-target-pc\n  HostName 127.0.0.1\n  Port %d\n"
                "  ProxyCommand ssh -F %s -W %%h:%%p bench-jump\n" % (target.port, path))
    os.chmod(path, 0o600)
    return path, known


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="round trips per row")
    args = ap.parse_args(argv)

    from remoteproc.testing import LoopbackSSHServer, current_user

    user = current_user()
    target = LoopbackSSHServer(users=[user]).start()
    jump = LoopbackSSHServer(users=[user]).start()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="rp-bench-jump-") as workdir:
            config, known = jump_config(target, jump, user, workdir)
            for transport in ("paramiko", "openssh"):
                for kind, measure in (("Queue round trip", queue_rt), ("Pipe round trip, two answers", pair_rt)):
                    for route in ("direct", "jump", "proxycmd"):
                        options = dict(target.options(user), ssh_config=config, known_hosts=known, transport=transport)
                        host = target.spec(user)
                        if route == "jump":
                            options["proxy_jump"] = "bench-jump"
                        elif route == "proxycmd":
                            host, options["port"] = "%s@bench-target-pc" % user, None
                        t = measure(host, options, args.n)
                        rows.append((transport, kind, route, statistics.median(t), statistics.mean(t),
                                     sum(x > STALL for x in t)))
    finally:
        jump.stop()
        target.stop()
    print("%d round trips per row, loopback sshds, Python %s, %d CPUs"
          % (args.n, sys.version.split()[0], os.cpu_count()))
    print("%-9s %-30s %-8s %10s %10s %12s" % ("transport", "operation", "route", "median", "mean", "over 20 ms"))
    for transport, kind, route, med, mean, stalls in rows:
        print("%-9s %-30s %-8s %7.2f ms %7.2f ms %12d" % (transport, kind, route, med * 1e3, mean * 1e3, stalls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
