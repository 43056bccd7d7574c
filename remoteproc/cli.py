"""The ``remoteproc`` command line (also ``python -m remoteproc``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

DEMO_EPILOG = """examples:
  python -m remoteproc demo                 # through a private loopback SSH server
  python -m remoteproc demo alice@build01   # against a real host (uses ~/.ssh/config)
"""


def _demo_target(conn, n):
    import os
    import socket

    print("hello from pid %d on %s" % (os.getpid(), socket.gethostname()))
    conn.send(n * 2)
    conn.close()


def demo(host: str | None, options: dict | None = None) -> int:
    """Run one real RemoteProcess round trip and say how long each step took."""
    from . import Pipe, RemoteProcess

    server = None
    t0 = time.perf_counter()
    if host is None:
        from .testing import LoopbackSSHServer

        server = LoopbackSSHServer().start()
        host, options = server.spec(), server.options()
        print("started a private %s SSH server on %s:%d (%.0f ms)"
              % (server.kind, server.host, server.port, (time.perf_counter() - t0) * 1e3))
    try:
        parent, child = Pipe()
        t1 = time.perf_counter()
        p = RemoteProcess(host, target=_demo_target, args=(child, 21), **(options or {}))
        p.start()
        child.close()
        t2 = time.perf_counter()
        print("started %r on %s: remote pid %d (%.0f ms: relay, SSH connection, agent, fork)"
              % (p.name, host, p.pid, (t2 - t1) * 1e3))
        answer = parent.recv()
        t3 = time.perf_counter()
        print("parent.recv() -> %r (%.1f ms after start)" % (answer, (t3 - t2) * 1e3))
        p.join(30)
        t4 = time.perf_counter()
        print("joined: exitcode %s (%.1f ms)" % (p.exitcode, (t4 - t3) * 1e3))
        parent2, child2 = Pipe()
        p2 = RemoteProcess(host, target=_demo_target, args=(child2, 50), **(options or {}))
        p2.start()
        child2.close()
        parent2.recv()
        p2.join(30)
        print("a second process on the same connection: start to answer and join in %.1f ms"
              % ((time.perf_counter() - t4) * 1e3))
        ok = answer == 42 and p.exitcode == 0 and p2.exitcode == 0
        print("round trip OK" if ok else "round trip FAILED")
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remoteproc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run a real round trip (loopback SSH server if no host)",
                            epilog=DEMO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_demo.add_argument("host", nargs="?", help="user@host[:port] or an ~/.ssh/config alias")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .errors import RemoteProcessError

        try:
            return demo(args.host)
        except RemoteProcessError as exc:
            print("remoteproc demo: %s" % exc, file=sys.stderr)
            return 1
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
