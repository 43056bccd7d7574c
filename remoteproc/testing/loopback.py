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
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from .accounts import check_sshd_can_log_in, check_user_name, current_user
from .keys import quote, write_text
from .net import HOST
from .openssh import OpenSSHServer, find_sshd

if TYPE_CHECKING:
    from .paramiko_server import ParamikoSSHServer

log = logging.getLogger("remoteproc.testing")


class LoopbackSSHServer:
    """A throwaway SSH server on 127.0.0.1 for demos and tests.

    Attributes other than ``host``, ``users`` and ``kind`` are valid after
    ``start()``. ``workdir`` (the temp dir holding keys, configs and the sshd
    log) is created under the ``workdir`` argument, or the system temp dir.
    """

    host: str
    port: int
    pid: Optional[int]
    workdir: str
    client_key: str
    known_hosts: str
    ssh_config: str
    log_file: str
    kind: str
    users: list[str]

    def __init__(
        self,
        users: Optional[Sequence[str]] = None,
        *,
        prefer_openssh: bool = True,
        workdir: Optional[str] = None,
        certificates: bool = False,
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
        self.log_file = ""
        self._parent_dir = workdir
        #: sign the host key and the client key with a test CA: known_hosts then holds only an
        #: @cert-authority line and logins need the user certificate (OpenSSH only)
        self.certificates = certificates
        self._sshd = find_sshd() if prefer_openssh else None
        self.kind = "openssh" if self._sshd else "paramiko"
        self._server: Union[OpenSSHServer, ParamikoSSHServer, None] = None
        self._started = False
        self._lock = threading.RLock()

    # -- public API --------------------------------------------------------

    def start(self) -> LoopbackSSHServer:
        """Start the server (no-op if running); RuntimeError says why it failed."""
        with self._lock:
            if self._started:
                return self
            self._check_users()
            self.workdir = tempfile.mkdtemp(prefix="remoteproc-sshd-", dir=self._parent_dir)
            self.client_key = os.path.join(self.workdir, "client_key")
            self.known_hosts = os.path.join(self.workdir, "known_hosts")
            self.ssh_config = os.path.join(self.workdir, "ssh_config")
            started = time.monotonic()
            try:
                self._server = self._start_server()
                self.port, self.pid = self._server.port, self._server.pid
                self._write_client_files(self._server.host_public)
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

    def __enter__(self) -> LoopbackSSHServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def options(self, user: Optional[str] = None) -> dict[str, Any]:
        """Connection options for USER (default: the first user) as a dict."""
        user = self._user(user)
        return {
            "port": self.port,
            "username": user,
            "key_filename": self.client_key,
            "known_hosts": self.known_hosts,
        }

    def spec(self, user: Optional[str] = None) -> str:
        """'user@127.0.0.1:PORT' for USER (default: the first user)."""
        return f"{self._user(user)}@{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<LoopbackSSHServer {self.kind} {state} {self.host}:{self.port} users={self.users}>"

    # -- internals ---------------------------------------------------------

    def _user(self, user: Optional[str]) -> str:
        if user is None:
            return self.users[0]
        if user not in self.users:
            raise ValueError(f"user {user!r} is not served by this server ({self.users})")
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
                check_sshd_can_log_in(name)

    def _start_server(self) -> Union[OpenSSHServer, ParamikoSSHServer]:
        """The OpenSSH server if there is an sshd, else the paramiko one; started."""
        server: Union[OpenSSHServer, ParamikoSSHServer]
        if self._sshd is not None:
            server = OpenSSHServer(self._sshd, self.workdir, self.users, self.client_key, self.certificates)
            self.log_file = server.log_file
        else:
            if self.certificates:
                raise RuntimeError("certificates=True needs OpenSSH's sshd, and none was found")
            from .paramiko_server import ParamikoSSHServer  # paramiko only when needed

            server = ParamikoSSHServer(user=current_user(), client_key_path=self.client_key)
        self._server = server       # (stopped by _teardown if start fails half-way)
        server.start()
        return server

    def _write_client_files(self, host_public: str) -> None:
        """known_hosts and ssh_config for the chosen port (client key exists already)."""
        if self.certificates:
            assert isinstance(self._server, OpenSSHServer)
            line = f"@cert-authority [{self.host}]:{self.port} {self._server.ca_public}\n"
        else:
            line = f"[{self.host}]:{self.port} {host_public}\n"
        write_text(self.known_hosts, line, 0o644)
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
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        self.pid = None
        if self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)
