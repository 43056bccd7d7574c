#!/usr/bin/env python3
"""Where the time goes: CPU per operation in every process on the path, and optional py-spy stacks.

    python3 benchmarks/cpuprofile.py rt              # 100-byte round trips
    python3 benchmarks/cpuprofile.py up64 --py-spy /tmp/prof   # 64 MiB uploads, stacks of relay/agent/child

Workloads: rt, up1, down1, up64, down64.  For each process (the parent, the relay process,
the remote agent, the remote child, sshd) it prints CPU microseconds per round trip or CPU
milliseconds per MB, from /proc/PID/task/*/schedstat: a figure that other work on a shared
machine disturbs far less than wall-clock time.  The same workload through a raw paramiko
channel (``cat`` or the sink/source helper) is measured first for comparison; with
``--transport openssh``, through ``ssh`` itself, with the benchmarks' cipher on both.
With ``--py-spy DIR`` it also records ``py-spy record --gil --format raw`` of the relay
process, the agent and the child (``pip install py-spy``), and prints their hottest lines
(``--gil``: only samples of the thread that runs Python code, not of threads waiting).
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import subprocess
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

import cloudpickle  # noqa: E402

from benchmarks import connbench, peer_openssh, targets  # noqa: E402
from benchmarks import peer_paramiko as raw  # noqa: E402
from benchmarks.common import ALIAS, MIB, helper_command, helper_header, write_ssh_config  # noqa: E402

cloudpickle.register_pickle_by_value(targets)


def cpu_ns(pid: int) -> int:
    total = 0
    for path in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def _ppid(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _measure(procs: dict[str, list[int]], work, seconds: float):
    """Run ``work()`` (returns ops done and bytes moved) for ``seconds``; CPU per process group."""
    before = {k: sum(cpu_ns(p) for p in v) for k, v in procs.items()}
    t0 = time.perf_counter()
    ops = nbytes = 0
    while time.perf_counter() - t0 < seconds:
        o, b = work()
        ops += o
        nbytes += b
    wall = time.perf_counter() - t0
    after = {k: sum(cpu_ns(p) for p in v) for k, v in procs.items()}
    return {k: after[k] - before[k] for k in procs}, wall, ops, nbytes


def _print(label: str, cpu: dict, wall: float, ops: int, nbytes: int) -> None:
    if nbytes:
        mb = nbytes / 1e6
        parts = ["%s %.2f" % (k, v / 1e6 / mb) for k, v in cpu.items()]
        print("%-11s %6.0f MB/s   CPU ms per MB: %s   (total %.2f)" % (
            label, mb / wall, "  ".join(parts), sum(cpu.values()) / 1e6 / mb))
    else:
        parts = ["%s %.0f" % (k, v / 1e3 / ops) for k, v in cpu.items()]
        print("%-11s %6.0f us/rt  CPU us per rt: %s   (total %.0f)" % (
            label, wall / ops * 1e6, "  ".join(parts), sum(cpu.values()) / 1e3 / ops))


def _hot(path: str, top: int = 12) -> None:
    own: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not stack:
                continue
            total += int(n)
            own[stack.split(";")[-1]] += int(n)
    print("== %s: %d samples (self time)" % (os.path.basename(path), total))
    for frame, n in own.most_common(top):
        print("  %5.1f%%  %s" % (100 * n / max(total, 1), frame[:140]))


def _raw_workload(client, wl: str, big: bytes):
    """The workload ``wl`` over a bare paramiko exec channel: a callable returning (ops, bytes)."""
    if wl == "rt":
        chan = raw._exec(client, "cat")
        msg = bytes(100)

        def raw_rt():
            for _ in range(200):
                chan.sendall(msg)
                raw._recv_exact(chan, 100)
            return 200, 0
        return raw_rt
    chan = raw._exec(client, helper_command("python3"))
    size, count = (MIB, 32) if wl.endswith("1") else (64 * MIB, 1)

    def raw_work():
        if wl.startswith("up"):
            chan.sendall(helper_header("u", size * count))
            for _ in range(count):
                raw._send_all(chan, big[:size])
            raw._recv_exact(chan, 1)
        else:
            chan.sendall(helper_header("d", size * count))
            raw._recv_exact(chan, size * count)
        return count, size * count
    return raw_work


def _ssh_workload(host: dict, wl: str, big: bytes):
    """The workload ``wl`` through the ``ssh`` program (``cat`` or the sink/source helper)."""
    pipe = peer_openssh.Pipe(host, "cat" if wl == "rt" else helper_command("python3"))
    if wl == "rt":
        msg = bytes(100)

        def ssh_rt():
            for _ in range(200):
                pipe.write(msg)
                pipe.read_exact(100)
            return 200, 0
        return pipe, ssh_rt
    size, count = (MIB, 32) if wl.endswith("1") else (64 * MIB, 1)

    def ssh_work():
        if wl.startswith("up"):
            pipe.write(helper_header("u", size * count))
            for _ in range(count):
                pipe.write(big[:size])
            pipe.read_exact(1)
        else:
            pipe.write(helper_header("d", size * count))
            pipe.read_exact(size * count)
        return count, size * count
    return pipe, ssh_work


def _rp_workload(server, wl: str, big: bytes):
    """The workload ``wl`` through remoteproc (a connbench server child): returns (ops, bytes)."""
    def rp_work():
        if wl == "rt":
            server.rt(200)
            return 200, 0
        size, count = (MIB, 32) if wl.endswith("1") else (64 * MIB, 1)
        if wl.startswith("up"):
            server.up(count, big[:size])
        else:
            server.down(count, size)
        return count, size * count
    return rp_work


def _start_spies(out_dir: str, wl: str, pids: dict, seconds: float) -> list:
    """py-spy recorders of the given processes, writing raw stacks into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    spies = []
    for name, pid in pids.items():
        spies.append(subprocess.Popen(
            ["py-spy", "record", "--nonblocking", "--gil", "-r", "1000", "-d", str(int(seconds)),
             "-f", "raw", "-o", os.path.join(out_dir, "%s-%s.txt" % (wl, name)), "--pid", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    return spies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=["rt", "up1", "down1", "up64", "down64"])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--user", default="rpuser" if os.geteuid() == 0 else None)
    ap.add_argument("--py-spy", metavar="DIR", help="also record py-spy stacks of relay, agent and child here")
    ap.add_argument("--transport", default="paramiko", choices=("paramiko", "openssh"),
                    help="remoteproc's transport (openssh: the relay's ssh process is listed as 'ssh')")
    args = ap.parse_args()
    from remoteproc import RemoteProcess
    from remoteproc.relay import client as relay_client
    from remoteproc.testing import LoopbackSSHServer, current_user
    from remoteproc.testing.proctree import descendants

    user = args.user or current_user()
    block = os.urandom(MIB)
    big = block * 64
    wl = args.workload
    srv = LoopbackSSHServer(users=[user]).start()
    spies: list[subprocess.Popen] = []
    try:
        host = {"hostname": srv.host, "port": srv.port, "user": user, "key": srv.client_key,
                "known_hosts_files": [srv.known_hosts]}
        sessions = lambda: [p for p, _ in descendants(srv.pid)]  # noqa: E731
        options = dict(srv.options(user), transport=args.transport)
        spec = srv.spec(user)
        if args.transport == "openssh":
            config = os.path.join(srv.workdir, "cpuprofile_ssh_config")
            write_ssh_config(config, dict(host, known_hosts=srv.known_hosts))
            pipe, ssh_work = _ssh_workload({"ssh_opts": ["-F", config], "ssh_dest": ALIAS}, wl, big)
            ssh_work()
            time.sleep(0.3)
            _print("ssh", *_measure({"self": [os.getpid()], "ssh": [pipe.proc.pid], "sshd+remote": sessions()},
                                    ssh_work, args.seconds))
            pipe.close()
            spec, options = ALIAS, {"transport": "openssh", "ssh_config": config}
        else:
            client = raw.connect(host)
            raw_work = _raw_workload(client, wl, big)
            raw_work()
            time.sleep(0.3)
            _print("raw paramiko", *_measure({"self": [os.getpid()], "sshd+remote": sessions()}, raw_work,
                                             args.seconds))
            client.close()
        time.sleep(0.5)

        make = functools.partial(RemoteProcess, spec, **options)
        server = connbench.Server(make)
        server.rt(100)
        relay = relay_client.get().proc.pid
        child = server.proc.pid
        agent = _ppid(child)
        procs = {"parent": [os.getpid()], "relay": [relay], "agent": [agent], "child": [child],
                 "sshd": [p for p in sessions() if p not in (agent, child)]}
        if args.transport == "openssh":
            procs["ssh"] = [p for p, _ in descendants(relay)]

        rp_work = _rp_workload(server, wl, big)
        rp_work()
        if args.py_spy:
            spies += _start_spies(args.py_spy, wl, {"relay": relay, "agent": agent, "child": child}, args.seconds)
        _print("remoteproc", *_measure(procs, rp_work, args.seconds))
        for spy in spies:
            spy.wait(args.seconds + 30)
        server.close()
        if args.py_spy:
            for name in ("relay", "agent", "child"):
                path = os.path.join(args.py_spy, "%s-%s.txt" % (wl, name))
                if os.path.exists(path):
                    _hot(path)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
                spy.wait(10)
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
