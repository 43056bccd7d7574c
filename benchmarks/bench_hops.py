"""What each process on a 100-byte round trip's path costs, through the user's own ``ssh``.

    python3 benchmarks/bench_hops.py                 # a loopback sshd (account rpuser as root)
    python3 benchmarks/bench_hops.py --rounds 12 --n 2000

Four paths, measured alternately in one run, the first the baseline of the others:

- ``ssh HOST cat``: six wake-ups a round trip (ssh, sshd, cat, sshd, ssh, caller);
- ``ssh HOST python3`` echoing with ``multiprocessing.connection.Connection`` on its
  standard input and output: the same six, with a Python end (what remoteproc's child is);
- ``ssh HOST python3`` relaying between its standard input and output and a socketpair whose
  other end a forked child echoes through a ``Connection``: eight wake-ups, one Python hop on
  the host and none on the user's side.  It is the path a Pipe would take if ``ssh`` read the
  user's socket itself (docs/performance.md, "The one hop left");
- ``RemoteProcess(transport="openssh")`` with a ``Pipe``: ten wake-ups, the relay's hop on the
  user's side and the agent's on the host.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cloudpickle  # noqa: E402

from benchmarks import peer_openssh  # noqa: E402
from benchmarks.common import ALIAS, write_ssh_config  # noqa: E402
from remoteproc import Pipe, RemoteProcess  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MESSAGE = bytes(100)

ECHO = r'''
import os
from multiprocessing.connection import Connection
ci, co = Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False)
try:
    while True:
        co.send_bytes(ci.recv_bytes())
except EOFError:
    pass
'''

RELAY = r'''
import os, select, socket
from multiprocessing.connection import Connection
mine, theirs = socket.socketpair()
if os.fork() == 0:
    mine.close()
    c = Connection(theirs.detach())
    try:
        while True:
            c.send_bytes(c.recv_bytes())
    except EOFError:
        os._exit(0)
theirs.close()
ep = select.epoll()
ep.register(0, select.EPOLLIN)
ep.register(mine.fileno(), select.EPOLLIN)
while True:
    for fd, _ in ep.poll():
        data = os.read(0, 65536) if fd == 0 else mine.recv(65536)
        if not data:
            raise SystemExit(0)
        if fd == 0:
            mine.sendall(data)
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
'''


def echo(conn) -> None:
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


class SshPath:
    """``ssh HOST COMMAND`` with our ends of its pipes; ``framed`` as a Connection frames a message."""

    def __init__(self, argv: list[str], command: str, framed: bool) -> None:
        self.proc = subprocess.Popen(argv + [command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.out = struct.pack("!i", len(MESSAGE)) + MESSAGE if framed else MESSAGE

    def round_trips(self, n: int) -> float:
        w, r, out = self.proc.stdin.fileno(), self.proc.stdout.fileno(), self.out
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(w, out)
            got = 0
            while got < len(out):
                chunk = os.read(r, len(out) - got)
                if not chunk:
                    raise EOFError("ssh ended")
                got += len(chunk)
        return (time.perf_counter() - t0) / n

    close = peer_openssh.Pipe.close


class PipePath:
    """A remote child echoing on a bridged Pipe."""

    def __init__(self, config: str) -> None:
        self.conn, child = Pipe()
        self.proc = RemoteProcess(ALIAS, target=echo, args=(child,), transport="openssh", ssh_config=config)
        self.proc.start()
        child.close()

    def round_trips(self, n: int) -> float:
        conn = self.conn
        t0 = time.perf_counter()
        for _ in range(n):
            conn.send_bytes(MESSAGE)
            conn.recv_bytes()
        return (time.perf_counter() - t0) / n

    def close(self) -> None:
        self.conn.close()
        self.proc.join(30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="round trips per sample")
    ap.add_argument("--rounds", type=int, default=8, help="samples per path, taken in turn")
    args = ap.parse_args(argv)

    from remoteproc.testing import LoopbackSSHServer
    from remoteproc.testing.accounts import current_user

    user = "rpuser" if os.geteuid() == 0 else current_user()
    server = LoopbackSSHServer(users=[user]).start()
    paths: dict = {}
    workdir = tempfile.mkdtemp(prefix="rp-bench-hops-")
    try:
        options = server.options()
        config = os.path.join(workdir, "config")      # one alias, one cipher, for ssh and for us
        write_ssh_config(config, {"hostname": "127.0.0.1", "port": options["port"], "user": options["username"],
                                  "key": options["key_filename"], "known_hosts": options["known_hosts"]})
        base = ["ssh", "-T", "-F", config, ALIAS]
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
        paths["ssh HOST cat (6 wake-ups)"] = SshPath(base, "cat", framed=False)
        paths["ssh + Connection echo (6)"] = SshPath(base, "%s -c %s" % (python, shlex.quote(ECHO)), framed=True)
        paths["ssh + host relay + child (8)"] = SshPath(base, "%s -c %s" % (python, shlex.quote(RELAY)),
                                                        framed=True)
        paths["RemoteProcess openssh (10)"] = PipePath(config)
        for p in paths.values():
            p.round_trips(200)      # warm-up: connections set, caches hot
        samples: dict = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, p in paths.items():
                samples[name].append(p.round_trips(args.n))
    finally:
        for p in paths.values():
            p.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    base_median = statistics.median(next(iter(samples.values())))
    print("%-32s %10s %8s   samples (us)" % ("path (wake-ups a round trip)", "median", "ratio"))
    for name, values in samples.items():
        med = statistics.median(values)
        print("%-32s %7.0f us %7.2fx   %s" % (name, med * 1e6, med / base_median,
                                           " ".join("%.0f" % (v * 1e6) for v in values)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
