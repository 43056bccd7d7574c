"""Hosts of their own for the SSH tests: network namespaces, each with an OpenSSH sshd.

``NetnsRig`` builds, as root, a private network of its own:

* a bridge ``rpbr<N>`` in the root namespace holding 10.213.<N>.1/24;
* per host a namespace ``rp<N>-<name>`` whose ``eth0`` (a veth whose other end,
  ``rp<N><name>``, is a port of the bridge) holds 10.213.<N>.<11+i>/24;
* per host an OpenSSH ``sshd`` started inside the namespace (ports 22 and 2222),
  with a host key of its own, accepting one client key for the test accounts.

``N`` is claimed by creating the bridge (which fails if another run holds it), so
concurrent test runs on one machine never share names or addresses.  Every
address the tests reach is inside 10.213.<N>.0/24, which only these namespaces
hold.  ``stop()`` kills the sshd processes it started (by pid) with their session
processes, deletes the namespaces, veths and bridge it created, and removes its
temporary directory.  A run that died without ``stop()`` leaves a marker file in
``STATE_DIR``; the next run removes what that run created.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from proctable import cmdline, running

from remoteproc.testing import proctree

STATE_DIR = "/run/remoteproc-netns"
PREFIX = "10.213"
PORTS = (22, 2222)
READY_TIMEOUT = 15.0
IP = shutil.which("ip") or "/usr/sbin/ip"
KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def run(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run a command; RuntimeError with its output if it fails and ``check``."""
    done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), done.returncode,
                                                   (done.stderr or done.stdout).strip()))
    return done


def _kill_tree(pid: int, must_contain: str) -> None:
    """SIGTERM ``pid`` (if its command line contains ``must_contain``) and its descendants; then SIGKILL."""
    stat = proctree.proc_stat(pid)
    if stat is None or not proctree.alive(pid, stat[2]) or must_contain not in cmdline(pid):
        return
    proctree.terminate_all([(pid, stat[2])] + proctree.descendants(pid), 5.0)


@dataclass
class Host:
    """One namespace host."""

    name: str
    netns: str
    address: str
    veth: str           # the root-namespace end: ``ip link set <veth> down`` cuts the host off
    host_key: str       # path of the private host key
    host_public: str    # "ssh-ed25519 AAAA..."
    config: str = ""
    log: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def spec(self, user: str, port: int = 22) -> str:
        return "%s@%s%s" % (user, self.address, "" if port == 22 else ":%d" % port)

    def known_hosts_line(self, port: int = 22) -> str:
        name = self.address if port == 22 else "[%s]:%d" % (self.address, port)
        return "%s %s\n" % (name, self.host_public)

    def established(self, port: int = 22) -> list[str]:
        """The TCP connections established to the host's sshd on ``port``, seen inside its namespace."""
        done = run(IP, "netns", "exec", self.netns, "ss", "-Htn", "state", "established",
                   "( sport = :%d )" % port)
        return [line for line in done.stdout.splitlines() if line.strip()]

    def set_link(self, up: bool) -> None:
        run(IP, "link", "set", self.veth, "up" if up else "down")


class NetnsRig:
    """A bridge, namespaces and sshds for ``names``; ``start()`` then ``stop()``."""

    #: sshd_config lines that raise sshd's limits on sessions per connection and on unauthenticated
    #: connections; a subclass with ``limits = []`` gets sshd's defaults (MaxSessions 10,
    #: MaxStartups 10:30:100)
    limits = ["MaxSessions 200", "MaxStartups 200:30:300"]
    #: sshd_config lines by which sshd notices a client that vanished (the link-cut tests), so its
    #: sessions end; a subclass with ``client_alive = []`` gets sshd's default (``ClientAliveInterval
    #: 0``: a client behind a black-holed link is never noticed), as most servers run
    client_alive = ["ClientAliveInterval 2", "ClientAliveCountMax 3"]

    def __init__(self, names: list[str], users: list[str], sshd: str) -> None:
        self.names = names
        self.users = users
        self.sshd = sshd
        self.index: int | None = None
        self.hosts: dict[str, Host] = {}
        self.workdir = ""
        self.client_key = ""
        self.known_hosts = ""
        self.marker = ""
        self.created_netns: list[str] = []
        self.created_links: list[str] = []

    # -- naming ------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return "rpbr%d" % self.index

    @property
    def subnet(self) -> str:
        return "%s.%d.0/24" % (PREFIX, self.index)

    def address(self, last: int) -> str:
        return "%s.%d.%d" % (PREFIX, self.index, last)

    @property
    def unused_address(self) -> str:
        """An address of this rig's subnet that no namespace holds."""
        return self.address(250)

    def options(self, **extra: Any) -> dict[str, Any]:
        """RemoteProcess options that reach the namespace hosts with this rig's key and known_hosts
        only (no agent, no default keys, no ssh_config), and ``extra``."""
        return {"key_filename": self.client_key, "known_hosts": self.known_hosts, "allow_agent": False,
                "look_for_keys": False, "ssh_config": False, **extra}

    # -- life cycle ------------------------------------------------------------
    def start(self) -> "NetnsRig":
        cleanup_stale()
        self.workdir = tempfile.mkdtemp(prefix="remoteproc-netns-")
        os.chmod(self.workdir, 0o711)       # sshd reads authorized_keys as the target user
        try:
            self._claim()
            self._save()
            self._keys()
            self.known_hosts = os.path.join(self.workdir, "known_hosts")
            for i, name in enumerate(self.names):
                self._add_host(name, 11 + i)
            self.write_known_hosts(self.known_hosts)
            self._save()
            for host in self.hosts.values():
                self._start_sshd(host)
            self._save()
            for host in self.hosts.values():
                self._wait_ready(host)
        except BaseException:
            self.stop()
            raise
        return self

    def _claim(self) -> None:
        start = os.getpid() % 200
        for k in range(200):
            n = (start + k) % 200 + 20
            if _route_exists("%s.%d.0/24" % (PREFIX, n)):
                continue
            if run(IP, "link", "add", "rpbr%d" % n, "type", "bridge", check=False).returncode == 0:
                self.index = n
                self.created_links.append(self.bridge)
                run(IP, "addr", "add", "%s/24" % self.address(1), "dev", self.bridge)
                run(IP, "link", "set", self.bridge, "up")
                return
        raise RuntimeError("no free rpbrN bridge name / 10.213.N.0/24 subnet found")

    def _keys(self) -> None:
        self.client_key = os.path.join(self.workdir, "client_key")
        run(KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "remoteproc-netns", "-f", self.client_key)
        keys_dir = os.path.join(self.workdir, "authorized_keys")
        os.mkdir(keys_dir)
        os.chmod(keys_dir, 0o755)
        with open(self.client_key + ".pub") as f:
            public = f.read()
        for user in self.users:
            path = os.path.join(keys_dir, user)
            with open(path, "w") as f:
                f.write(public)
            os.chmod(path, 0o644)

    def _add_host(self, name: str, last: int) -> None:
        netns = "rp%d-%s" % (self.index, name)
        veth = "rp%d%s" % (self.index, name)
        run(IP, "netns", "add", netns)
        self.created_netns.append(netns)
        run(IP, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self.created_links.append(veth)
        run(IP, "link", "set", veth, "master", self.bridge)
        run(IP, "link", "set", veth, "up")
        address = self.address(last)
        run(IP, "-n", netns, "addr", "add", "%s/24" % address, "dev", "eth0")
        run(IP, "-n", netns, "link", "set", "eth0", "up")
        run(IP, "-n", netns, "link", "set", "lo", "up")
        key = os.path.join(self.workdir, "host_key_%s" % name)
        run(KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key)
        with open(key + ".pub") as f:
            public = " ".join(f.read().split()[:2])
        self.hosts[name] = Host(name, netns, address, veth, key, public)

    def _start_sshd(self, host: Host) -> None:
        host.config = os.path.join(self.workdir, "sshd_config_%s" % host.name)
        host.log = os.path.join(self.workdir, "sshd_%s.log" % host.name)
        lines = ["Port %d" % p for p in PORTS] + [
            "ListenAddress 0.0.0.0",
            "AddressFamily inet",
            "HostKey %s" % host.host_key,
            "PidFile %s" % os.path.join(self.workdir, "sshd_%s.pid" % host.name),
            "AuthorizedKeysFile %s" % os.path.join(self.workdir, "authorized_keys", "%u"),
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin %s" % ("yes" if "root" in self.users else "no"),
            "AllowUsers %s" % " ".join(self.users),
            "AllowTcpForwarding yes",
        ] + self.limits + [
            "LogLevel VERBOSE",
            "PrintMotd no",
            "UseDNS no",
        ] + self.client_alive + self.sshd_lines(host)
        with open(host.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with open(host.log, "ab") as log:
            host.proc = subprocess.Popen([IP, "netns", "exec", host.netns, self.sshd, "-D", "-e", "-f", host.config],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def sshd_lines(self, host: Host) -> list[str]:
        """More ``sshd_config`` lines for ``host`` (after the rig's own): a subclass's hook, for
        example a ``HostCertificate``."""
        return []

    def _wait_ready(self, host: Host) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if host.proc.poll() is not None:
                raise RuntimeError("sshd in %s exited (%s): %s"
                                   % (host.netns, host.proc.returncode, self.log_tail(host)))
            try:
                with socket.create_connection((host.address, 22), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sshd in %s not ready within %gs: %s" % (host.netns, READY_TIMEOUT,
                                                                          self.log_tail(host)))
            time.sleep(0.05)

    def kill_sshd(self, name: str) -> None:
        """Kill a host's sshd and every session it serves: its clients see their connections lost."""
        host = self.hosts[name]
        if host.proc is not None:
            _kill_tree(host.proc.pid, self.workdir)
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.proc.wait(5)
            host.proc = None

    def restart_sshd(self, name: str) -> None:
        """Start a host's sshd again (after ``kill_sshd``) and wait until it answers."""
        host = self.hosts[name]
        self._start_sshd(host)
        self._wait_ready(host)

    def log_tail(self, host: Host, limit: int = 3000) -> str:
        try:
            with open(host.log, errors="replace") as f:
                return f.read()[-limit:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        for host in self.hosts.values():
            if host.proc is not None:
                _kill_tree(host.proc.pid, self.workdir)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.proc.wait(5)
        _delete(self.created_netns, self.created_links)
        self.created_netns, self.created_links = [], []
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.marker:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.marker)

    # -- bookkeeping for a run that dies --------------------------------------
    def _save(self) -> None:
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        self.marker = os.path.join(STATE_DIR, "%d.json" % self.index)
        state = {"owner": os.getpid(), "sshd": self.sshd, "netns": self.created_netns,
                 "links": self.created_links, "workdir": self.workdir,
                 "pids": [h.proc.pid for h in self.hosts.values() if h.proc is not None]}
        with open(self.marker, "w") as f:
            json.dump(state, f)

    def write_known_hosts(self, path: str, ports=PORTS) -> str:
        with open(path, "w") as f:
            for host in self.hosts.values():
                for port in ports:
                    f.write(host.known_hosts_line(port))
        return path


def _route_exists(subnet: str) -> bool:
    return bool(run(IP, "route", "show", subnet, check=False).stdout.strip())


def _delete(netns: list[str], links: list[str]) -> None:
    for name in netns:
        run(IP, "netns", "del", name, check=False)
    for name in reversed(links):
        run(IP, "link", "del", name, check=False)


def cleanup_stale() -> None:
    """Remove what earlier runs whose process is gone created (from their marker files)."""
    try:
        markers = os.listdir(STATE_DIR)
    except FileNotFoundError:
        return
    for name in markers:
        path = os.path.join(STATE_DIR, name)
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        if running(int(state.get("owner", 0))):
            continue
        for pid in state.get("pids", []):
            _kill_tree(int(pid), state.get("workdir") or "\0")
        _delete(state.get("netns", []), state.get("links", []))
        if state.get("workdir", "").startswith(tempfile.gettempdir() + "/remoteproc-netns-"):
            shutil.rmtree(state["workdir"], ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
