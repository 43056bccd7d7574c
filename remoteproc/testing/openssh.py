"""The OpenSSH server the tests talk to: ``sshd -D`` on 127.0.0.1, configured in a work directory.

``OpenSSHServer`` writes a host key, one ``authorized_keys`` file per user (all holding
the one client key) and an ``sshd_config`` into a directory it is given, starts
``sshd -D`` on a free port, and waits until sshd has written its pid file and sends
its SSH banner.  ``stop()`` ends sshd and every session process it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Optional

from .keys import generate_keypair, public_line, quote, write_text
from .net import HOST, free_port, ssh_banner
from .proctree import STOP_TIMEOUT, descendants, die_with_parent, stop_popen, terminate_all
from .tools import find_tool, run_tool

__all__ = ["OpenSSHServer", "find_sshd"]

log = logging.getLogger("remoteproc.testing")

READY_TIMEOUT = 10.0
"""Seconds to wait for a freshly started sshd to accept connections."""
BIND_ATTEMPTS = 5
"""How many ports to try when sshd fails to bind the one we picked."""
PRIVSEP_DIR = "/run/sshd"


class _PortInUse(Exception):
    """sshd could not bind the port we chose (someone took it meanwhile)."""


def find_sshd() -> str | None:
    """Absolute path of the OpenSSH server binary, or None if there is none.

    sshd re-executes itself per connection and refuses to run unless started
    by an absolute path, so the result is always absolute.
    """
    candidates = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
    found = shutil.which("sshd")
    if found:
        candidates.append(os.path.abspath(found))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _sshd_supports(sshd: str, keyword: str) -> bool:
    """True if the sshd binary knows config KEYWORD (used for version-specific options)."""
    try:
        with open(sshd, "rb") as fh:
            return keyword.lower().encode() in fh.read().lower()
    except OSError:
        return False


def _pidfile_is(path: str, pid: int) -> bool:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip() == str(pid)
    except (OSError, UnicodeDecodeError):
        return False


def _truncate(path: str) -> None:
    with contextlib.suppress(OSError):
        open(path, "wb").close()


def _sshd_config(sshd: str, workdir: str, users: list[str], port: int, host_key: str, keys_dir: str) -> str:
    """The sshd_config text: key logins of USERS only, everything else off, quiet and unthrottled."""
    lines = [
        f"Port {port}",
        f"ListenAddress {HOST}",
        "AddressFamily inet",
        f"HostKey {quote(host_key)}",
        f"PidFile {quote(os.path.join(workdir, 'sshd.pid'))}",
        f"AuthorizedKeysFile {quote(os.path.join(keys_dir, '%u'))}",
        "StrictModes no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        f"PermitRootLogin {'yes' if 'root' in users else 'no'}",
        f"AllowUsers {' '.join(users)}",
        "MaxSessions 200",
        "MaxStartups 200:30:300",
        "LoginGraceTime 60",
        "LogLevel VERBOSE",
        "PrintMotd no",
        "PrintLastLog no",
        "PermitUserEnvironment no",
        "X11Forwarding no",
        "UseDNS no",
        "ClientAliveInterval 0",
    ]
    if _sshd_supports(sshd, "PerSourcePenalties"):
        # OpenSSH >= 9.8 would otherwise throttle 127.0.0.1 after probes/failures.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


class OpenSSHServer:
    """``sshd -D`` on 127.0.0.1 logging in USERS with the key pair at CLIENT_KEY.

    Keys, config, pid file and log live in WORKDIR (the caller owns and removes it).
    ``host_public``, ``port`` and ``pid`` are valid after ``start()``.
    """

    host_public: str
    port: int
    pid: Optional[int]

    def __init__(self, sshd: str, workdir: str, users: list[str], client_key: str,
                 certificates: bool = False, config_first: Sequence[str] = ()) -> None:
        self.sshd = sshd
        self.certificates = certificates
        #: sshd_config lines that come first (sshd takes a keyword's first value): a test's own setting
        self.config_first = list(config_first)
        #: with ``certificates``: the CA's public key line (it signed the host key and the client key)
        self.ca_public = ""
        self.workdir = workdir
        self.users = list(users)
        self.client_key = client_key
        self.host_public = ""
        self.port = 0
        self.pid = None
        self.log_file = os.path.join(workdir, "sshd.log")
        self._pidfile = os.path.join(workdir, "sshd.pid")
        self._proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        """Write keys and config, start sshd; RuntimeError (with sshd's log) if it does not come up."""
        host_key = os.path.join(self.workdir, "ssh_host_key")
        generate_keypair(host_key)
        generate_keypair(self.client_key)
        self.host_public = public_line(host_key + ".pub")
        keys_dir = self._write_authorized_keys("" if self.certificates else public_line(self.client_key + ".pub"))
        extra: list[str] = []
        if self.certificates:
            extra = self._certify(host_key)
        if os.geteuid() == 0:
            self._open_to_other_users()
        config = os.path.join(self.workdir, "sshd_config")
        for attempt in range(1, BIND_ATTEMPTS + 1):
            port = free_port()
            text = "".join(line + "\n" for line in self.config_first) + _sshd_config(
                self.sshd, self.workdir, self.users, port, host_key, keys_dir)
            write_text(config, text + "".join(line + "\n" for line in extra), 0o644)
            try:
                self._launch(config, port)
            except _PortInUse:
                log.debug("sshd could not bind port %d (attempt %d)", port, attempt)
                continue
            return
        raise RuntimeError(
            f"sshd could not bind a free port in {BIND_ATTEMPTS} attempts; "
            f"sshd log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """End sshd and the session processes it started (by pid); safe to call repeatedly."""
        proc, self._proc = self._proc, None
        self.pid = None
        if proc is None:
            return
        sessions = descendants(proc.pid)
        stop_popen(proc, STOP_TIMEOUT)
        terminate_all(sessions, STOP_TIMEOUT)
        log.info("stopped sshd pid %d (and %d child processes)", proc.pid, len(sessions))

    def log_tail(self, limit: int = 4000) -> str:
        """The end of sshd's log, for error messages."""
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            return "(no sshd log)"
        return text[-limit:].strip() or "(empty sshd log)"

    def _certify(self, host_key: str) -> list[str]:
        """A CA signs the host key and the client key: the server proves itself with a host
        certificate, users log in with a user certificate only (no authorized key)."""
        ca = os.path.join(self.workdir, "ca_key")
        generate_keypair(ca)
        self.ca_public = public_line(ca + ".pub")
        keygen = shutil.which("ssh-keygen") or find_tool("ssh-keygen")
        if keygen is None:
            raise RuntimeError("certificates need ssh-keygen")
        run_tool([keygen, "-q", "-s", ca, "-I", "remoteproc-test-host", "-h", "-n", HOST, host_key + ".pub"])
        run_tool([keygen, "-q", "-s", ca, "-I", "remoteproc-test-user", "-n", ",".join(self.users),
                  self.client_key + ".pub"])
        os.chmod(self.client_key + "-cert.pub", 0o644)
        return [f"HostCertificate {quote(host_key + '-cert.pub')}", f"TrustedUserCAKeys {quote(ca + '.pub')}"]

    def _write_authorized_keys(self, client_public: str) -> str:
        keys_dir = os.path.join(self.workdir, "authorized_keys")
        os.mkdir(keys_dir)
        os.chmod(keys_dir, 0o755)
        for user in self.users:
            write_text(os.path.join(keys_dir, user), client_public + "\n" if client_public else "", 0o644)
        return keys_dir

    def _open_to_other_users(self) -> None:
        """sshd reads authorized_keys with the target user's uid, so other users must be able
        to traverse the workdir (private keys stay 0600); sshd as root needs its privsep dir."""
        os.chmod(self.workdir, 0o711)
        if not os.path.isdir(PRIVSEP_DIR):
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
            os.chmod(PRIVSEP_DIR, 0o755)

    def _launch(self, config: str, port: int) -> None:
        """Start sshd on PORT and wait until it is ready; raise _PortInUse/RuntimeError."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._pidfile)
        with open(self.log_file, "ab") as log_fh:
            proc = subprocess.Popen(
                [self.sshd, "-D", "-e", "-f", config],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                start_new_session=True,
                close_fds=True,
                preexec_fn=die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
        started = time.monotonic()
        self._wait_ready(proc, port, started + READY_TIMEOUT)
        self._proc = proc
        self.pid = proc.pid
        self.port = port
        log.debug("sshd pid %d accepted connections on port %d after %.3f s",
                  proc.pid, port, time.monotonic() - started)

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        """Until DEADLINE: sshd wrote its pid file and answers with an SSH banner."""
        missing = "the process to start"
        while True:
            code = proc.poll()
            if code is not None:
                raise self._exited(code, port)
            if not _pidfile_is(self._pidfile, proc.pid):
                missing = f"its pid file {self._pidfile}"
            else:
                banner = ssh_banner(port, timeout=max(0.1, deadline - time.monotonic()))
                if banner.startswith(b"SSH-"):
                    return
                missing = f"an SSH banner on {HOST}:{port} (got {banner[:80]!r})"
            if time.monotonic() >= deadline:
                stop_popen(proc, STOP_TIMEOUT)
                raise RuntimeError(
                    f"sshd did not become ready within {READY_TIMEOUT:.0f} s "
                    f"(waiting for {missing}); sshd log:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _exited(self, code: int, port: int) -> Exception:
        """What to raise when sshd exited while starting: _PortInUse (retry), or why it failed."""
        text = self.log_tail()
        if "Address already in use" in text or "Cannot bind any address" in text:
            _truncate(self.log_file)
            return _PortInUse()
        return RuntimeError(
            f"sshd ({self.sshd}) exited with status {code} before accepting "
            f"connections on {HOST}:{port}; sshd log:\n{text}"
        )
