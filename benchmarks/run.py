#!/usr/bin/env python3
"""remoteproc's benchmark suite: one command, every peer side by side.

    python3 benchmarks/run.py                 # full run, a few minutes
    python3 benchmarks/run.py --quick         # under a minute
    python3 benchmarks/run.py --write-docs    # also rewrite docs/performance.md and its chart
    python3 benchmarks/run.py --host me@box   # measure a real host too (your ~/.ssh/config applies)

It starts its own OpenSSH sshd on 127.0.0.1 (``remoteproc.testing.LoopbackSSHServer``);
the remote side logs in as the light account ``rpuser`` (system python3 only) when this
runs as root, otherwise as the current user.  Each figure is the median of several runs;
each baseline cell shows the baseline's figure and remoteproc's ratio to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):      # run as a script: make ``benchmarks`` and ``remoteproc`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from benchmarks import report  # noqa: E402
from benchmarks.common import ALIAS, CIPHER, REPO, plan, write_ssh_config  # noqa: E402

LIGHT_USER = "rpuser"

# module, peers it reports, seconds it may take (full run; --quick scales them down)
PEERS = [
    ("peer_local", ["mp-fork", "mp-spawn", "mp-forkserver"], 150),
    ("peer_remoteproc", ["remoteproc"], 200),
    ("peer_remoteproc_openssh", ["remoteproc-openssh"], 200),
    ("peer_paramiko", ["paramiko"], 150),
    ("peer_openssh", ["ssh", "ssh-curve25519"], 120),
    ("peer_execnet", ["execnet"], 200),
    ("peer_mitogen", ["mitogen"], 200),
]
ROOT_METRICS = {
    "peer_remoteproc": ["cold_start", "warm_start", "warm_start_join"],
    "peer_paramiko": ["warm_start", "warm_start_join"],
}


def log(msg: str) -> None:
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def run_peer(module: str, host: dict, p: dict, timeout: float, workdir: str, metrics=None, label=None,
             load_by_remoteproc: bool = False) -> dict:
    """One peer in a subprocess of its own session, bounded by ``timeout`` and stopped by its pid."""
    tag = "%s-%s" % (module, host["tag"])
    cfg_path = os.path.join(workdir, tag + ".json")
    out_path = os.path.join(workdir, tag + ".out.json")
    cfg = {"host": host, "plan": p, "timeout": timeout, "out": out_path, "config_path": cfg_path,
           "peer": module, "metrics": metrics, "load_by_remoteproc": load_by_remoteproc}
    if label:
        cfg["peer_label"] = label
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    log_path = os.path.join(workdir, tag + ".log")
    started = time.monotonic()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks." + module, cfg_path], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        try:
            proc.wait(timeout + 20)
        except subprocess.TimeoutExpired:
            log("%s did not finish in %ds: stopping it (process group %d)" % (module, timeout + 20, proc.pid))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            else:                 # whatever the peer left in its process group (ssh clients, relays)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    try:
        with open(out_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {"peers": {}, "info": {}}
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read().strip()
    if proc.returncode != 0 or data["info"].get("error"):
        data["info"]["failure"] = "exit status %s; %s" % (proc.returncode, (data["info"].get("error") or text)[-800:])
        log("%s: %s" % (module, data["info"]["failure"].splitlines()[-1] if data["info"]["failure"] else "failed"))
    log("%s on %s: %.1fs" % (module, host["label"], time.monotonic() - started))
    return data


def loopback_host(server, user: str, workdir: str) -> dict:
    host = {
        "tag": "loopback-" + user, "label": "loopback sshd, account %s" % user,
        "spec": server.spec(user), "options": server.options(user),
        "hostname": server.host, "port": server.port, "user": user,
        "key": server.client_key, "known_hosts": server.known_hosts,
        "known_hosts_files": [server.known_hosts], "python": "python3",
        "ssh_config": os.path.join(workdir, "ssh_config-" + user),
    }
    write_ssh_config(host["ssh_config"], host)
    host["ssh_opts"], host["ssh_dest"] = ["-F", host["ssh_config"]], ALIAS
    return host


def real_host(spec: str, workdir: str, python: str) -> dict:
    from remoteproc import ssh

    target = ssh.resolve(spec, {})
    known = [k for k in ["/etc/ssh/ssh_known_hosts"] + target.known_hosts if os.path.isfile(k)]
    keys = [k for k in target.key_filenames if os.path.exists(k)]
    host = {
        "tag": "host-" + "".join(c if c.isalnum() else "_" for c in spec), "label": "host %s" % spec,
        "spec": spec, "options": {"python": python} if python != "python3" else {},
        "hostname": target.hostname, "port": target.port, "user": target.username,
        "key": keys[0] if keys else None, "known_hosts_files": known, "python": python,
    }
    # OpenSSH-based peers use the user's own ssh configuration, with the same cipher as paramiko
    user, name, port = ssh.parse_spec(spec)
    host["ssh_opts"] = ["-o", "Ciphers=%s" % CIPHER, "-o", "BatchMode=yes"] + (["-p", str(port)] if port else [])
    host["ssh_dest"] = "%s@%s" % (user, name) if user else name
    return host


def collect_machine() -> dict:
    info = {"nproc": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
        with open("/proc/meminfo", encoding="utf-8") as f:
            kb = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal")))
            info["memory"] = "%.1f GiB" % (kb / (1 << 20))
    except (OSError, StopIteration, ValueError):
        pass
    info["kernel"] = os.uname().release
    try:    # what remoteproc.Pipe's send buffers can be: the busy-thread upload depends on it
        with open("/proc/sys/net/core/wmem_max", encoding="utf-8") as f:
            info["wmem_max"] = int(f.read())
    except (OSError, ValueError):
        pass
    info["loadavg_start"] = os.getloadavg()
    return info


def collect_versions(host: dict | None) -> dict:
    import platform

    v = {"python": platform.python_version()}
    for name in ("paramiko", "cloudpickle", "execnet", "mitogen", "matplotlib", "cryptography"):
        try:
            mod = __import__(name)
            ver = getattr(mod, "__version__", None) or getattr(mod, "__version_info__", "?")
            v[name] = ".".join(map(str, ver)) if isinstance(ver, (tuple, list)) else str(ver)
        except ImportError as exc:
            v[name] = "not installed (%s)" % exc
    try:
        v["openssh"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10).stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        v["openssh"] = "unavailable (%s)" % exc
    try:
        import remoteproc

        v["remoteproc"] = remoteproc.__version__
    except ImportError:
        pass
    try:
        v["commit"] = subprocess.run(["git", "-C", REPO, "log", "--oneline", "-1"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    if host is not None:
        try:
            out = subprocess.run(["ssh", *host["ssh_opts"], host["ssh_dest"], host["python"], "-c",
                                  "'import sys; print(sys.version.split()[0], sys.executable)'"],
                                 capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            v["remote_python"] = out.stdout.strip() or out.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            v["remote_python"] = "unknown (%s)" % exc
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer and smaller runs: under a minute")
    ap.add_argument("--runs", type=int, help="runs per figure (the median is reported)")
    ap.add_argument("--host", action="append", default=[], metavar="USER@HOST[:PORT]",
                    help="also measure this real host (repeatable)")
    ap.add_argument("--python", default="python3", help="the remote python for --host (default python3)")
    ap.add_argument("--user", help="loopback account (default: %s when run as root, else you)" % LIGHT_USER)
    ap.add_argument("--root", dest="root", action="store_true", default=None,
                    help="also measure start-up for root's account (its .bashrc runs pyenv init)")
    ap.add_argument("--no-root", dest="root", action="store_false")
    ap.add_argument("--no-loopback", action="store_true", help="measure only the --host hosts")
    ap.add_argument("--peers", help="comma-separated subset of: local,remoteproc,remoteproc_openssh,paramiko,openssh,"
                                    "execnet,mitogen")
    ap.add_argument("--json", metavar="PATH", help="write the raw samples here")
    ap.add_argument("--from-json", metavar="PATH", help="do not measure: report these saved results")
    ap.add_argument("--write-docs", action="store_true", help="rewrite docs/performance.md and docs/performance.png")
    args = ap.parse_args(argv)

    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            results = json.load(f)
    else:
        results = measure(args, sys.argv[1:] if argv is None else argv)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)
    print(report.render_text(results))
    if args.write_docs:
        md, png = report.write_docs(results, os.path.join(REPO, "docs"))
        log("wrote %s and %s" % (md, png))
    return 0


def measure(args, argv) -> dict:
    from remoteproc.testing import LoopbackSSHServer, current_user, find_sshd

    p = plan(args.quick, args.runs)
    scale = 0.4 if args.quick else 1.0
    wanted = None
    if args.peers:
        wanted = {"peer_" + ("local" if w == "mp" else w).strip() for w in args.peers.split(",")}
    peers = [entry for entry in PEERS if wanted is None or entry[0] in wanted]
    me = current_user()
    user = args.user or (LIGHT_USER if os.geteuid() == 0 and _exists(LIGHT_USER) else me)
    do_root = args.root if args.root is not None else (os.geteuid() == 0 and not args.quick)
    started = time.monotonic()
    results = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join(["python3", "benchmarks/run.py"] + list(argv)),
               "plan": p, "machine": collect_machine(), "hosts": []}
    results["machine"]["bytecompiled"] = _bytecompile()
    workdir = tempfile.mkdtemp(prefix="remoteproc-bench-")
    server = None
    try:
        hosts = []
        if not args.no_loopback:
            if find_sshd() is None:
                raise SystemExit("no OpenSSH sshd found: install openssh-server, or use --host")
            users = [user] + (["root"] if do_root and user != "root" else [])
            server = LoopbackSSHServer(users=users).start()
            log("loopback sshd pid %s on port %d for %s" % (server.pid, server.port, ",".join(users)))
            hosts.append((loopback_host(server, user, workdir), None))
            if do_root and user != "root":
                hosts.append((loopback_host(server, "root", workdir), ROOT_METRICS))
        for spec in args.host:
            hosts.append((real_host(spec, workdir, args.python), None))
        results["versions"] = collect_versions(hosts[0][0] if hosts else None)
        for host, only in hosts:
            entry = {"label": host["label"], "user": host["user"], "peers": {}, "skipped_peers": {},
                     "info": {}, "subset": bool(only)}
            for module, _names, budget in peers:
                if only is not None and module not in only:
                    continue
                data = run_peer(module, host, p, budget * scale, workdir, metrics=only and only[module],
                                load_by_remoteproc=any(m.startswith("peer_remoteproc") for m, _n, _b in peers))
                for name, pdata in data["peers"].items():      # merge metric by metric
                    mine = entry["peers"].setdefault(name, {"metrics": {}, "skipped": {}, "notes": {}})
                    for part in ("metrics", "skipped", "notes"):
                        mine[part].update(pdata.get(part, {}))
                entry["info"][module] = data["info"]
                if data["info"].get("failure") and not data["peers"]:
                    entry["skipped_peers"][module] = data["info"]["failure"]
            results["hosts"].append(entry)
    finally:
        if server is not None:
            server.stop()
            log("loopback sshd stopped")
        _rmtree(workdir)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["duration"] = time.monotonic() - started
    return results


def _bytecompile() -> bool:
    """Write remoteproc's .pyc files, as an installed package has them: with
    PYTHONDONTWRITEBYTECODE set and no __pycache__, every cold start would compile them."""
    import compileall

    return bool(compileall.compile_dir(os.path.join(REPO, "remoteproc"), quiet=1, force=False))


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
