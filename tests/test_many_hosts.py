"""Eight hosts at once, reached as a user reaches them: their ``~/.ssh`` alone, no option but the host.

The rig: nine network-namespace hosts (tests/netns.py), ``n1``..``n8`` and a bastion ``bast``, each
with its own sshd; ``n6``..``n8`` also present a host certificate signed by a test CA.  The user
is a local account of its own (``SCALE``) whose ``~/.ssh`` holds what such a user has:

* ``config``: a ``Host node*`` block (User, IdentityFile, Port 2222), aliases ``node1``..``node8``
  with a ``HostName`` each, a ``bastion`` alias, and an ``Include config.d/*.conf`` whose
  ``Match host`` blocks send node5..node8 through ``ProxyJump bastion`` and give the certificate
  hosts their ``HostKeyAlias``;
* ``known_hosts``: node1, node2 and the bastion by plain line, node3..node5 by hashed line, node6
  and node7 only through ``@cert-authority *.cluster``, node8 only through ``@cert-authority node*``.

One program (``PROGRAM``), run as that account with ``runuser`` and nothing but host names (and
``transport=``), starts a process on every host at once, maps 200 tasks over a Pool and an
Executor of all of them, shares one Queue and one Event with a child on every host, hands the two
ends of one Pipe to children on node1 and node5, loses two hosts (an sshd killed by pid, a link cut)
while the others keep echoing, and checks its own fds, threads and child processes against the
baseline, with the relay running and once it is stopped (as at the program's exit; remoteproc has
no public call for it).  The paramiko transport cannot check host certificates: node6..node8 give the
documented ``HostKeyError`` naming the host and ``transport='openssh'``, and it runs the rest on
node1..node5.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import select
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PLAIN_USER, _unavailable, netns_prerequisites
from proctable import cmdline, descendants, eventually
from test_ssh_user_setups import User, as_account, client_account

pytestmark = [pytest.mark.timeout(120), pytest.mark.loopback_only]

SCALE = "rpscale"
"""This module's own account (modules run in parallel; rpclient is test_ssh_user_setups')."""
NODES = ["n%d" % i for i in range(1, 9)]
ALIASES = ["node%d" % i for i in range(1, 9)]
JUMPED = ALIASES[4:]                      # only through the bastion
CERT_ONLY = ["node6", "node7", "node8"]   # known only by @cert-authority
PROGRAM_TIMEOUT = 100.0

PROGRAM = textwrap.dedent('''\
    import hashlib, json, multiprocessing, os, sys, threading, time
    import remoteproc
    from remoteproc import Event, Executor, Pipe, Pool, Queue, RemoteProcess, RemoteProcessError

    def address():
        return os.environ["SSH_CONNECTION"].split()

    def stay(conn):
        """Says where it runs, then echoes until None or EOF."""
        conn.send(address())
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg is None:
                return
            conn.send(msg)

    def where(x):
        return x, address()[2]

    def share(q, ev, tag):
        q.put(("ready", tag))
        q.put(("set", tag, ev.wait(30), address()[2]))

    def sender(conn, n):
        """n checked messages and raw bytes; then the receiver's answer, its big message, and EOF
        (the receiver exited right after writing it): the exit status says how it went."""
        for i in range(n):
            data = os.urandom(i * 37 % 5000)
            conn.send((i, data, hashlib.sha256(data).hexdigest()))
        conn.send_bytes(b"raw")
        reply = conn.recv()
        big, digest = conn.recv()
        if hashlib.sha256(big).hexdigest() != digest or len(big) != 12 << 20:
            raise SystemExit(8)
        try:
            conn.recv()
            raise SystemExit(9)
        except EOFError:
            pass
        conn.close()
        raise SystemExit(0 if reply == ("ack", n) else 7)

    def receiver(conn, n, out):
        got, bad = 0, 0
        for _ in range(n):
            i, data, digest = conn.recv()
            got += 1
            bad += hashlib.sha256(data).hexdigest() != digest
        raw = conn.recv_bytes()
        out.put({"got": got, "bad": bad, "raw": raw.decode()})
        conn.send(("ack", got))
        big = os.urandom(12 << 20)      # past a stream's 4 MiB window, and exit at once
        conn.send((big, hashlib.sha256(big).hexdigest()))

    def state():
        me = str(os.getpid())
        kids = []
        for pid in os.listdir("/proc"):
            try:
                with open("/proc/%s/stat" % pid) as f:
                    if pid.isdigit() and f.read().rsplit(")", 1)[1].split()[1] == me:
                        kids.append(int(pid))
            except OSError:
                pass
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[fd] = os.readlink("/proc/self/fd/" + fd)
            except OSError:
                pass
        names = {}
        for pid in kids:
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    names[pid] = f.read().replace(b"\\0", b" ").decode()[:100]
            except OSError:
                pass
        return {"fds": len(fds), "threads": len(os.listdir("/proc/self/task")), "children": sorted(kids),
                "fd_targets": sorted(fds.values()), "child_names": sorted(names.values()),
                "thread_names": sorted(t.name for t in threading.enumerate())}

    def step(name):
        print("STEP %.2f %s" % (time.monotonic() - T0, name), file=sys.stderr, flush=True)

    T0 = time.monotonic()

    def err(exc):
        return {"type": type(exc).__name__, "message": str(exc), "host": getattr(exc, "host", None)}

    def pair(a, b, out, run_a, run_b):
        """The sender gets a, the receiver b; both ends closed here once both started."""
        pa, pb = run_a(sender, (a, 100)), run_b(receiver, (b, 100, out))
        pa.start(); pb.start()
        a.close(); b.close()
        result = out.get(timeout=60)
        pa.join(30); pb.join(30)
        result["exitcodes"] = [pa.exitcode, pb.exitcode]
        return result

    def work(spec, report):
        opts = {"transport": spec["transport"]}
        hosts, ok = spec["hosts"], spec["ok"]

        step("start")
        # -- a process on every host at once ----------------------------------------------
        conns, procs, hello, failed, when = {}, {}, {}, {}, {}
        def start(h):
            parent, child = Pipe()
            p = RemoteProcess(h, target=stay, args=(child,), **opts)
            try:
                p.start()
            except RemoteProcessError as exc:
                failed[h] = err(exc)
                return
            finally:
                child.close()
            procs[h], conns[h] = p, parent
            if parent.poll(60):
                hello[h] = parent.recv()
                when[h] = time.monotonic() - t0
        t0 = time.monotonic()
        threads = [threading.Thread(target=start, args=(h,)) for h in hosts]
        for t in threads: t.start()
        for t in threads: t.join(90)
        report["connect_seconds"] = time.monotonic() - t0
        report["per_host_seconds"] = when
        report["hello"], report["start_failed"] = hello, failed
        # a second round on the warm connections
        t1 = time.monotonic()
        again = []
        for h in ok:
            parent, child = Pipe()
            p = RemoteProcess(h, target=stay, args=(child,), **opts); p.start(); child.close()
            again.append((p, parent))
        for p, parent in again:
            parent.recv(); parent.send(None); p.join(30)
        report["warm_round_seconds"] = time.monotonic() - t1
        report["warm_exitcodes"] = [p.exitcode for p, _ in again]

        step("pool")
        # -- Pool and Executor ---------------------------------------------------------------
        for name, make in (("pool", lambda hs: Pool(hs, **opts)), ("executor", lambda hs: Executor(hs, **opts))):
            for label, hs in (("all", hosts), ("ok", ok)):
                if label == "ok" and ok == hosts:
                    continue
                t1 = time.monotonic()
                try:
                    with make(hs) as runner:
                        got = list(runner.map(where, range(200)))
                        extra = runner.submit(where, -1).result(60) if name == "executor" else \\
                            runner.apply_async(where, (-1,)).get(60)
                    report["%s_%s" % (name, label)] = {"order": [g[0] for g in got] == list(range(200)),
                                                       "addresses": sorted({g[1] for g in got}),
                                                       "extra": extra[0], "seconds": time.monotonic() - t1}
                except RemoteProcessError as exc:
                    report["%s_%s" % (name, label)] = {"error": err(exc)}

        step("shared")
        # -- one Queue and one Event on every host -----------------------------------------------
        q, ev = Queue(), Event()
        sharers = [RemoteProcess(h, target=share, args=(q, ev, h), **opts) for h in ok]
        for p in sharers: p.start()
        ready = sorted(q.get(timeout=60)[1] for _ in sharers)
        ev.set()
        report["shared"] = {"ready": ready, "set": sorted(tuple(q.get(timeout=60)[1:]) for _ in sharers)}
        for p in sharers: p.join(30)
        report["shared"]["exitcodes"] = [p.exitcode for p in sharers]

        step("pipe")
        # -- the two ends of one Pipe on two hosts, and the same between two local children ---------------
        out = Queue()
        a, b = Pipe()
        first, second = spec["pipe"]
        report["pipe_remote"] = pair(a, b, out, lambda f, args: RemoteProcess(first, target=f, args=args, **opts),
                                     lambda f, args: RemoteProcess(second, target=f, args=args, **opts))
        step("pipe_local")
        ctx = multiprocessing.get_context("spawn")     # (a forked child would hold the other end too)
        a, b = Pipe()
        report["pipe_local"] = pair(a, b, out, lambda f, args: ctx.Process(target=f, args=args),
                                    lambda f, args: ctx.Process(target=f, args=args))

        step("kill")
        # -- two hosts die: the test kills one's sshd and cuts the other's link -----------------------------
        print("KILL", flush=True)
        sys.stdin.readline()
        t1 = time.monotonic()
        dead = spec["dead"]
        for h in dead:
            procs[h].join(30)
        report["dead_after_seconds"] = time.monotonic() - t1
        report["dead"] = {h: {"exitcode": procs[h].exitcode, "error": err(procs[h].connection_error)
                              if procs[h].connection_error else None} for h in dead}
        survivors = {}
        for h, conn in conns.items():
            if h in dead:
                continue
            conn.send(("still", h))
            survivors[h] = conn.poll(30) and conn.recv() == ("still", h) and procs[h].is_alive()
        report["survivors"] = survivors
        report["restart_dead"] = {}
        for h in dead:
            try:
                RemoteProcess(h, target=where, args=(0,), **opts).start()
                report["restart_dead"][h] = {"type": None}
            except RemoteProcessError as exc:
                report["restart_dead"][h] = err(exc)
        live = [h for h in ok if h not in dead]
        with Pool(live, **opts) as pool:
            report["pool_after"] = sorted({r[1] for r in pool.map(where, range(50))})
        for h, conn in conns.items():
            if h not in dead:
                conn.send(None)
            procs[h].join(30)
            conn.close()
        report["final_exitcodes"] = {h: p.exitcode for h, p in procs.items()}

    def main():
        spec = json.loads(sys.argv[1])
        from multiprocessing import resource_tracker
        resource_tracker.ensure_running()       # (the local pair's spawn starts it; it stays, by design)
        report = {"baseline": state()}
        for _ in range(100):    # (the tracker between its fork and exec has no command line yet)
            if all(report["baseline"]["child_names"]):
                break
            time.sleep(0.05)
            report["baseline"] = state()
        work(spec, report)                      # (its objects are gone when it returns)
        import gc
        gc.collect()
        report["before_shutdown"] = state()
        from remoteproc.relay import client
        client.shutdown()
        report["after"] = state()
        return report

    if __name__ == "__main__":
        print("RESULT " + json.dumps(main()), flush=True)
    ''')


# -- the rig --------------------------------------------------------------------------------------------


def hashed(name: str) -> str:
    """A known_hosts host field as ``HashKnownHosts yes`` writes it."""
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return "|1|%s|%s" % (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


@pytest.fixture(scope="module")
def rig() -> Iterator[Any]:
    """n1..n8 and the bastion, the certificate hosts signed by a CA of the rig's own."""
    sshd_path = netns_prerequisites()
    from netns import KEYGEN, NetnsRig, run

    class CertRig(NetnsRig):
        """Hosts n6..n8 present a certificate for node6.cluster, node7.cluster, node8."""

        principals = {"n6": "node6.cluster", "n7": "node7.cluster", "n8": "node8"}

        def sshd_lines(self, host):
            if host.name not in self.principals:
                return []
            ca = os.path.join(self.workdir, "host_ca")
            if not os.path.exists(ca):
                run(KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "test-host-ca", "-f", ca)
            cert = host.host_key + "-cert.pub"
            if not os.path.exists(cert):
                run(KEYGEN, "-q", "-s", ca, "-h", "-I", host.name, "-n", self.principals[host.name],
                    "-V", "-1h:+1d", host.host_key + ".pub")
            return ["HostCertificate %s" % cert]

    built = CertRig(NODES + ["bast"], [PLAIN_USER], sshd_path)
    t0 = time.monotonic()
    try:
        built.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"cannot build the network namespace hosts: {exc}")
    built.build_seconds = time.monotonic() - t0
    try:
        yield built
    finally:
        built.stop()


@pytest.fixture(scope="module")
def scale_user(rig) -> Iterator[User]:
    """SCALE's account and ~/.ssh as described at the top."""
    with client_account(SCALE, PROGRAM) as account:
        u = User(account)
        u.reset()
        try:
            write_dot_ssh(u, rig)
            yield u
        finally:
            import shutil
            shutil.rmtree(u.dot, ignore_errors=True)


def write_dot_ssh(u: User, rig: Any) -> None:
    hosts = rig.hosts
    addr = {alias: hosts[n].address for alias, n in zip(ALIASES, NODES)}
    u.copy(rig.client_key, "id_node")
    with open(os.path.join(rig.workdir, "host_ca.pub")) as f:
        ca = " ".join(f.read().split()[:2])
    lines = ["%s %s" % (hosts["bast"].address, hosts["bast"].host_public)]
    for alias, n in zip(ALIASES, NODES):
        name = "[%s]:2222" % addr[alias]
        if alias in ("node1", "node2"):
            lines.append("%s %s" % (name, hosts[n].host_public))
        elif alias in ("node3", "node4", "node5"):
            lines.append("%s %s" % (hashed(name), hosts[n].host_public))
    lines += ["@cert-authority *.cluster %s" % ca, "@cert-authority node* %s" % ca]
    u.put("known_hosts", "\n".join(lines) + "\n")
    u.put("config", "".join("Host %s\n    HostName %s\n" % (a, addr[a]) for a in ALIASES) + textwrap.dedent("""\
        Host node*
            User {user}
            IdentityFile ~/.ssh/id_node
            Port 2222
            ConnectTimeout 5
            ServerAliveInterval 1
            ServerAliveCountMax 2
        Host bastion
            HostName {bastion}
            Port 22
            User {user}
            IdentityFile ~/.ssh/id_node
        Host *
            HashKnownHosts yes
            IdentitiesOnly yes
            Include config.d/*.conf
        """).format(user=PLAIN_USER, bastion=hosts["bast"].address))
    u.put("config.d/10-jump.conf", "Match host %s\n    ProxyJump bastion\n" % ",".join(addr[a] for a in JUMPED))
    u.put("config.d/20-certs.conf", "".join("Match host %s\n    HostKeyAlias %s\n" % (addr[a], p) for a, p in
                                            zip(CERT_ONLY, ("node6.cluster", "node7.cluster", "node8"))))
    os.chmod(os.path.join(u.dot, "config.d"), 0o700)
    os.chown(os.path.join(u.dot, "config.d"), u.uid, u.gid)


def ours(rig: Any, name: str) -> list[int]:
    """Python processes under a host's sshd: what remoteproc runs there."""
    host = rig.hosts[name]
    if host.proc is None:
        return []
    return [p for p in descendants(host.proc.pid) if cmdline(p).startswith("python")]


def account_processes(uid: int) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if pid.isdigit() and os.stat("/proc/" + pid).st_uid == uid:
                found.append(cmdline(int(pid)))
    return found


def run_program(u: User, rig: Any, spec: dict, kill: Any) -> dict:
    """PROGRAM as SCALE; at its ``KILL`` line, ``kill()``; its report."""
    argv = as_account(u.account, [u.client["python"], u.client["program"], json.dumps(spec)], u.client["env"])
    errors = os.path.join(u.client["scratch"], "stderr-%s" % spec["transport"])
    with open(errors, "w+") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd="/",
                                start_new_session=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], PROGRAM_TIMEOUT / 2)
            line = proc.stdout.readline() if ready else "(nothing within %gs)" % (PROGRAM_TIMEOUT / 2)
            if line.strip() != "KILL":
                err.seek(0)
                raise AssertionError("%s: %s" % (line, err.read()[-6000:]))
            kill()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=PROGRAM_TIMEOUT / 2)
        finally:
            if proc.poll() is None:         # runuser and the program under it: their own session
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        err.seek(0)
        stderr = err.read()
    results = [x for x in out.splitlines() if x.startswith("RESULT ")]
    assert results, "no result (status %s): %s" % (proc.returncode, stderr[-4000:])
    report = json.loads(results[-1][len("RESULT "):])
    report["stderr"] = stderr
    return report


TIMINGS: dict[str, Any] = {}


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_eight_hosts_from_the_users_ssh_dir_alone(scale_user, rig, transport):
    """Everything a program does over eight hosts at once, with two of them lost on the way."""
    addr = {alias: rig.hosts[n].address for alias, n in zip(ALIASES, NODES)}
    def named(alias):
        """How every message names a host: the alias the user wrote, then user@HostName:port and the
        route (``.host``: the alias)."""
        return "%s (%s@%s:2222%s)" % (alias, PLAIN_USER, addr[alias], " via bastion" if alias in JUMPED else "")

    ok = ALIASES if transport == "openssh" else [a for a in ALIASES if a not in CERT_ONLY]
    dead = ["node3", "node5"]                     # sshd killed by pid; link cut (behind the bastion)
    spec = {"transport": transport, "hosts": ALIASES, "ok": ok, "dead": dead, "pipe": ["node1", "node5"]}

    def kill():
        rig.kill_sshd("n3")
        rig.hosts["n5"].set_link(False)

    try:
        got = run_program(scale_user, rig, spec, kill)
    finally:
        rig.hosts["n5"].set_link(True)
        if rig.hosts["n3"].proc is None:
            rig.restart_sshd("n3")
    if os.environ.get("REMOTEPROC_SCALE_REPORT"):      # (a file for the one who runs it by hand)
        with open(os.environ["REMOTEPROC_SCALE_REPORT"] % transport, "w") as f:
            json.dump(got, f, indent=1)
    TIMINGS[transport] = {k: got[k] for k in ("connect_seconds", "per_host_seconds", "warm_round_seconds")}
    print("\n%s timings: %s" % (transport, json.dumps(TIMINGS[transport])))

    # every reachable host, at once; node5..node8 through the bastion
    assert sorted(got["hello"]) == sorted(ok), got
    for alias in ok:
        client_address, server_address = got["hello"][alias][0], got["hello"][alias][2]
        assert server_address == addr[alias]
        assert client_address == (rig.hosts["bast"].address if alias in JUMPED else rig.address(1)), alias
    assert got["warm_exitcodes"] == [0] * len(ok)
    if transport == "paramiko":
        assert sorted(got["start_failed"]) == CERT_ONLY
        for alias, e in got["start_failed"].items():
            assert e["type"] == "HostKeyError", e
            # named as every message names a host: user@HostName:port and the route (.host: the alias)
            assert e["message"].startswith(named(alias) + ": "), e
            assert e["host"] == alias, e
            assert "transport='openssh'" in e["message"] and "cert" in e["message"], e
        for name in ("pool", "executor"):      # a pool over all eight: the first host's error
            assert got["%s_all" % name]["error"]["type"] == "HostKeyError", got["%s_all" % name]
            assert got["%s_all" % name]["error"]["host"].split()[0] in CERT_ONLY
    else:
        assert got["start_failed"] == {}
    for key in ("pool_ok", "executor_ok") if transport == "paramiko" else ("pool_all", "executor_all"):
        assert got[key]["order"] and got[key]["extra"] == -1, got[key]
        assert got[key]["addresses"] == sorted(addr[a] for a in ok), got[key]

    # one Queue and one Event on every host
    assert got["shared"]["ready"] == sorted(ok)
    assert got["shared"]["set"] == sorted([a, True, addr[a]] for a in ok)
    assert got["shared"]["exitcodes"] == [0] * len(ok)

    # one Pipe, its ends on node1 and node5: as between two local children
    assert got["pipe_local"] == {"got": 100, "bad": 0, "raw": "raw", "exitcodes": [0, 0]}
    assert got["pipe_remote"] == got["pipe_local"]

    # two hosts lost: typed errors naming them, the others unaffected
    for alias in dead:
        d = got["dead"][alias]
        assert d["exitcode"] == 255 and d["error"]["type"] == "ConnectionLostError", d
        assert d["error"]["host"] == alias and d["error"]["message"].startswith(named(alias)), d
        r = got["restart_dead"][alias]
        assert r["type"] == "ConnectError" and r["host"] == alias and r["message"].startswith(named(alias)), r
    assert got["survivors"] == {a: True for a in ok if a not in dead}
    assert got["pool_after"] == sorted(addr[a] for a in ok if a not in dead)
    assert {a: c for a, c in got["final_exitcodes"].items() if a not in dead} == {a: 0 for a in ok if a not in dead}

    # the program's fds, threads and processes back to its baseline, nothing left anywhere
    # while the relay still runs: its socket and its reader thread more, nothing of the processes'
    before = got["before_shutdown"]
    assert before["thread_names"] == ["MainThread", "remoteproc-relay-reader"], before
    assert len(before["children"]) == len(got["baseline"]["children"]) + 1, before
    assert before["fds"] == got["baseline"]["fds"] + 3 + 1, before
    # once it stopped, as before the first start (but the owner's broker: one epoll and its waker
    # pipe, made once per process and kept)
    after, baseline = dict(got["after"]), dict(got["baseline"])
    extra = list(after.pop("fd_targets"))
    for fd in baseline.pop("fd_targets"):
        extra.remove(fd)
    assert sorted(x.split(":")[0] for x in extra) == ["anon_inode", "pipe", "pipe"], (extra, got["after"])
    assert len(set(extra)) == 2, extra
    assert after.pop("fds") == baseline.pop("fds") + 3
    assert after == baseline, (got["after"], got["baseline"], got["before_shutdown"])
    assert "Traceback" not in got["stderr"], got["stderr"][-3000:]
    assert eventually(lambda: not any(ours(rig, n) for n in NODES + ["bast"]), 15), \
        {n: [cmdline(p)[:60] for p in ours(rig, n)] for n in NODES + ["bast"]}
    assert eventually(lambda: not account_processes(scale_user.uid), 10), account_processes(scale_user.uid)


# -- the bug this module found ---------------------------------------------------------------------------


def test_a_read_event_selected_before_the_credit_ran_out_is_not_an_end_of_stream():
    """Fixed: a stream's read with no credit left read 0 bytes and took that for the end of the stream.

    The agent drains a child's streams when it reaps the child (its last output goes out before its
    exit status), which can spend a stream's whole credit; a readiness event of that stream that
    ``select()`` returned in the same batch then reached ``Mux._read`` with no credit: a read of 0
    bytes, an EOF frame, and the rest of what the child had written was lost.  Seen as a Pipe whose
    ends were on node1 and node5 (transport='openssh'): node1's ``recv()`` of node5's last 30 MB
    message raised "got end of file during message", in 1 of 7 fresh runs."""
    import selectors
    import socket

    from remoteproc.agent import frames, mux

    sent: list[bytes] = []
    sel = selectors.DefaultSelector()
    m = mux.Mux(sel, lambda *parts: sent.append(b"".join(bytes(p) for p in parts)), window=64 << 10)
    ours_end, childs_end = socket.socketpair()
    try:
        s = m.add(1, ours_end.detach(), reading=True, writing=False)
        data = os.urandom(100 << 10)
        childs_end.sendall(data)
        childs_end.close()                       # the child wrote and exited
        m.drain(s)                               # as the agent does when it reaps the child
        assert s.credit == 0 and not s.read_done
        s.handler(selectors.EVENT_READ)          # the event selected before the drain
        assert not s.read_done, "a read without credit was taken for the end of the stream"
        assert frames.header(frames.EOF, 1, 0) not in sent
        m.on_frame(frames.CREDIT, 1, 64 << 10)   # the peer wrote it out: the rest, then the end
        s.handler(selectors.EVENT_READ)
        s.handler(selectors.EVENT_READ)
        got = b"".join(x[frames.HEADER_SIZE:] for x in sent if x[:1] == bytes([frames.DATA]))
        assert got == data and sent[-1] == frames.header(frames.EOF, 1, 0)
    finally:
        for x in list(m.streams.values()):
            m.close(x)
        sel.close()
