"""A private loopback SSH server for demos and tests.

``LoopbackSSHServer`` starts a throwaway SSH server on 127.0.0.1 that accepts
one freshly generated client key. It prefers a real OpenSSH ``sshd`` (so tests
exercise the same server that production hosts run) and falls back to a small
in-process paramiko server when no ``sshd`` binary is available.

Nothing here touches the machine's own SSH setup: keys, ``authorized_keys``,
``known_hosts``, ``ssh_config`` and the sshd configuration all live in a
temporary directory that ``stop()`` removes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .accounts import check_user_name, current_user, is_locked, shadow_password
from .keys import generate_keypair, public_line, quote, write_text
from .net import HOST, free_port, ssh_banner
from .openssh import (
    BIND_ATTEMPTS,
    PRIVSEP_DIR,
    READY_TIMEOUT,
    PortInUse,
    find_sshd,
    pidfile_is,
    sshd_supports,
    truncate,
)
from .paramiko_server import fallback_server_class
from .proctree import STOP_TIMEOUT, descendants, die_with_parent, reap_descendants, stop_popen

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("remoteproc.testing")


class LoopbackSSHServer:
    """A throwaway SSH server on 127.0.0.1 for demos and tests.

    Attributes other than ``host``, ``users`` and ``kind`` are valid after
    ``start()``. ``workdir`` (the temp dir holding keys, configs and the sshd
    log) is created under the ``workdir`` argument, or the system temp dir.
    """

    host: str
    port: int
    pid: int | None
    workdir: str
    client_key: str
    known_hosts: str
    ssh_config: str
    kind: str
    users: list[str]

    def __init__(
        self,
        users: Sequence[str] | None = None,
        *,
        prefer_openssh: bool = True,
        workdir: str | None = None,
    ) -> None:
        if isinstance(users, str):
            raise TypeError("users must be a sequence of names, not a string")
        names = list(dict.fromkeys(users)) if users is not None else [current_user()]
        if not names:
            raise ValueError("users must name at least one account")
        for name in names:
            check_user_name(name)
        self.users = names
        self.host = HOST
        self.port = 0
        self.pid = None
        self.workdir = ""
        self.client_key = ""
        self.known_hosts = ""
        self.ssh_config = ""
        self._parent_dir = workdir
        self._sshd = find_sshd() if prefer_openssh else None
        self.kind = "openssh" if self._sshd else "paramiko"
        self.log_file = ""
        self._host_public = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._fallback: Any = None
        self._started = False
        self._lock = threading.RLock()

    # -- public API --------------------------------------------------------

    def start(self) -> Self:
        """Start the server (no-op if running); RuntimeError says why it failed."""
        with self._lock:
            if self._started:
                return self
            self._check_users()
            self.workdir = tempfile.mkdtemp(
                prefix="remoteproc-sshd-", dir=self._parent_dir
            )
            self.client_key = os.path.join(self.workdir, "client_key")
            self.known_hosts = os.path.join(self.workdir, "known_hosts")
            self.ssh_config = os.path.join(self.workdir, "ssh_config")
            started = time.monotonic()
            try:
                if self.kind == "openssh":
                    self._start_openssh()
                else:
                    self._start_paramiko()
                self._write_client_files()
            except BaseException:
                self._teardown()
                raise
            self._started = True
            atexit.register(self.stop)
            log.info(
                "%s server for %s listening on %s:%d (pid %s), ready in %.2f s",
                self.kind,
                ",".join(self.users),
                self.host,
                self.port,
                self.pid,
                time.monotonic() - started,
            )
            return self

    def stop(self) -> None:
        """Stop the server and its sessions, and remove the workdir. Idempotent."""
        with self._lock:
            atexit.unregister(self.stop)
            self._teardown()
            self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def options(self, user: str | None = None) -> dict[str, Any]:
        """Connection options for USER (default: the first user) as a dict."""
        user = self._user(user)
        return {
            "port": self.port,
            "username": user,
            "key_filename": self.client_key,
            "known_hosts": self.known_hosts,
        }

    def spec(self, user: str | None = None) -> str:
        """'user@127.0.0.1:PORT' for USER (default: the first user)."""
        return f"{self._user(user)}@{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<LoopbackSSHServer {self.kind} {state} {self.host}:{self.port} users={self.users}>"

    # -- shared internals --------------------------------------------------

    def _user(self, user: str | None) -> str:
        if user is None:
            return self.users[0]
        if user not in self.users:
            raise ValueError(
                f"user {user!r} is not served by this server ({self.users})"
            )
        return user

    def _check_users(self) -> None:
        """Fail early, with a reason, for users this server cannot log in."""
        me = current_user()
        others = [u for u in self.users if u != me]
        if others and self.kind == "paramiko":
            raise RuntimeError(
                f"the paramiko fallback server runs commands as the current user "
                f"{me!r} only; cannot serve {others}"
            )
        if others and os.geteuid() != 0:
            raise RuntimeError(
                f"sshd running as non-root user {me!r} can only log in {me!r}; "
                f"serving {others} needs root"
            )
        if self.kind == "openssh" and os.geteuid() == 0:
            for name in self.users:
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    raise RuntimeError(
                        f"no local user {name!r}; create it with ensure_local_user({name!r})"
                    ) from None
                if is_locked(shadow_password(name)):
                    raise RuntimeError(
                        f"user {name!r} is locked (password field starts with '!') and "
                        f"sshd with UsePAM=no refuses it; unlock it with "
                        f"ensure_local_user({name!r})"
                    )

    def _write_client_files(self) -> None:
        """known_hosts and ssh_config for the chosen port (client key exists already)."""
        write_text(
            self.known_hosts, f"[{self.host}]:{self.port} {self._host_public}\n", 0o644
        )
        blocks = []
        for user in self.users:
            blocks.append(
                f"Host remoteproc-{user}\n"
                f"    HostName {self.host}\n"
                f"    Port {self.port}\n"
                f"    User {user}\n"
                f"    IdentityFile {quote(self.client_key)}\n"
                f"    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {quote(self.known_hosts)}\n"
                f"    StrictHostKeyChecking yes\n"
                f"    BatchMode yes\n"
            )
        write_text(self.ssh_config, "\n".join(blocks), 0o644)

    def _teardown(self) -> None:
        """Stop whatever runs and remove the workdir; safe to call repeatedly."""
        proc, self._proc = self._proc, None
        if proc is not None:
            sessions = descendants(proc.pid)
            stop_popen(proc, STOP_TIMEOUT)
            reap_descendants(sessions, STOP_TIMEOUT)
            log.info(
                "stopped sshd pid %d (and %d child processes)",
                proc.pid,
                len(sessions),
            )
        fallback, self._fallback = self._fallback, None
        if fallback is not None:
            fallback.close()
        self.pid = None
        if self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- OpenSSH mode ------------------------------------------------------

    def _start_openssh(self) -> None:
        assert self._sshd is not None
        host_key = os.path.join(self.workdir, "ssh_host_key")
        self._generate_keypair(host_key)
        self._generate_keypair(self.client_key)
        self._host_public = public_line(host_key + ".pub")
        client_public = public_line(self.client_key + ".pub")

        keys_dir = os.path.join(self.workdir, "authorized_keys")
        os.mkdir(keys_dir)
        os.chmod(keys_dir, 0o755)
        for user in self.users:
            write_text(os.path.join(keys_dir, user), client_public + "\n", 0o644)

        if os.geteuid() == 0:
            # sshd reads authorized_keys with the target user's uid, so other
            # users must be able to traverse the workdir (private keys stay 0600).
            os.chmod(self.workdir, 0o711)
            if not os.path.isdir(PRIVSEP_DIR):
                os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
                os.chmod(PRIVSEP_DIR, 0o755)

        config = os.path.join(self.workdir, "sshd_config")
        self.log_file = os.path.join(self.workdir, "sshd.log")
        for attempt in range(1, BIND_ATTEMPTS + 1):
            port = free_port()
            write_text(config, self._sshd_config(port, host_key, keys_dir), 0o644)
            try:
                self._launch_sshd(config, port)
            except PortInUse:
                log.debug("sshd could not bind port %d (attempt %d)", port, attempt)
                continue
            return
        raise RuntimeError(
            f"sshd could not bind a free port in {BIND_ATTEMPTS} attempts; "
            f"sshd log:\n{self._log_tail()}"
        )

    def _generate_keypair(self, path: str) -> None:
        generate_keypair(path)

    def _sshd_config(self, port: int, host_key: str, keys_dir: str) -> str:
        assert self._sshd is not None
        lines = [
            f"Port {port}",
            f"ListenAddress {HOST}",
            "AddressFamily inet",
            f"HostKey {quote(host_key)}",
            f"PidFile {quote(os.path.join(self.workdir, 'sshd.pid'))}",
            f"AuthorizedKeysFile {quote(os.path.join(keys_dir, '%u'))}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            "UsePAM no",
            f"PermitRootLogin {'yes' if 'root' in self.users else 'no'}",
            f"AllowUsers {' '.join(self.users)}",
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
        if sshd_supports(self._sshd, "PerSourcePenalties"):
            # OpenSSH >= 9.8 would otherwise throttle 127.0.0.1 after probes/failures.
            lines.append("PerSourcePenalties no")
        return "\n".join(lines) + "\n"

    def _launch_sshd(self, config: str, port: int) -> None:
        """Start sshd on PORT and wait until it is ready; raise PortInUse/RuntimeError."""
        assert self._sshd is not None
        pidfile = os.path.join(self.workdir, "sshd.pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        with open(self.log_file, "ab") as log_fh:
            proc = subprocess.Popen(
                [self._sshd, "-D", "-e", "-f", config],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                start_new_session=True,
                close_fds=True,
                preexec_fn=die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
        started = time.monotonic()
        deadline = started + READY_TIMEOUT
        missing = "the process to start"
        while True:
            code = proc.poll()
            if code is not None:
                text = self._log_tail()
                if (
                    "Address already in use" in text
                    or "Cannot bind any address" in text
                ):
                    truncate(self.log_file)
                    raise PortInUse
                raise RuntimeError(
                    f"sshd ({self._sshd}) exited with status {code} before accepting "
                    f"connections on {HOST}:{port}; sshd log:\n{text}"
                )
            if not pidfile_is(pidfile, proc.pid):
                missing = f"its pid file {pidfile}"
            else:
                banner = ssh_banner(
                    port, timeout=max(0.1, deadline - time.monotonic())
                )
                if banner.startswith(b"SSH-"):
                    break
                missing = f"an SSH banner on {HOST}:{port} (got {banner[:80]!r})"
            if time.monotonic() >= deadline:
                stop_popen(proc, STOP_TIMEOUT)
                raise RuntimeError(
                    f"sshd did not become ready within {READY_TIMEOUT:.0f} s "
                    f"(waiting for {missing}); sshd log:\n{self._log_tail()}"
                )
            time.sleep(0.01)
        self._proc = proc
        self.pid = proc.pid
        self.port = port
        log.debug(
            "sshd pid %d accepted connections on port %d after %.3f s",
            proc.pid,
            port,
            time.monotonic() - started,
        )

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            return "(no sshd log)"
        return text[-limit:].strip() or "(empty sshd log)"

    # -- paramiko fallback -------------------------------------------------

    def _start_paramiko(self) -> None:
        server_cls = fallback_server_class()
        server = server_cls(user=current_user(), client_key_path=self.client_key)
        self._fallback = server
        self._host_public = server.host_public
        self.port = server.port
        self.pid = None
