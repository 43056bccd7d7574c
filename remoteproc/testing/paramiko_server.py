"""An in-process SSH server on paramiko, for where no OpenSSH sshd exists (the demo).

It logs in one user (the current one) with one client key and serves exec requests
only: each command runs under ``/bin/sh -c`` in a session of its own, with stdin,
stdout and stderr pumped by threads, and is killed when its channel goes away.
``remoteproc.testing.loopback`` imports this module only when it needs the fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Optional

import paramiko
from paramiko.common import cMSG_CHANNEL_FAILURE, cMSG_CHANNEL_SUCCESS

from .keys import write_private_key
from .net import HOST
from .proctree import STOP_TIMEOUT, kill_group

__all__ = ["ParamikoSSHServer"]

log = logging.getLogger("remoteproc.testing")

_REPLIES = (cMSG_CHANNEL_SUCCESS, cMSG_CHANNEL_FAILURE)
_CHANNEL_ERRORS = (OSError, EOFError, paramiko.SSHException)
_CHUNK = 65536


class ParamikoSSHServer:
    """In-process SSH server on 127.0.0.1 running exec requests with /bin/sh -c.

    ``start()`` generates the host key and the client key (written to
    ``client_key_path``), binds a free port and starts accepting.  ``pid`` is
    None: the server is this process.
    """

    host_public: str
    port: int
    pid: Optional[int] = None

    def __init__(self, user: str, client_key_path: str) -> None:
        self.user = user
        self.home, self.env = _login_environment(user)
        self.client_key_path = client_key_path
        self.host_key = paramiko.ECDSAKey.generate()
        self.host_public = f"{self.host_key.get_name()} {self.host_key.get_base64()}"
        self.client_public = b""
        self.port = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.transports: list[_ExecTransport] = []
        self.procs: set[subprocess.Popen[bytes]] = set()
        self.listener: Optional[socket.socket] = None

    def start(self) -> None:
        """Write the client key, listen on a free port, and start accepting."""
        client_key = paramiko.ECDSAKey.generate()
        write_private_key(client_key, self.client_key_path)
        self.client_public = client_key.asbytes()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, 0))
            listener.listen(128)
            listener.settimeout(0.2)
        except OSError:
            listener.close()
            raise
        self.listener = listener
        self.port = int(listener.getsockname()[1])
        self.spawn(self.accept_loop, listener)

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        """Run TARGET in a daemon thread that stop() joins."""
        thread = threading.Thread(
            target=target,
            args=args,
            name=f"remoteproc-sshd-{target.__name__}",
            daemon=True,
        )
        with self.lock:
            self.threads = [t for t in self.threads if t.is_alive()]
            self.threads.append(thread)
        thread.start()

    def accept_loop(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:     # (on 3.9 not a TimeoutError: an OSError)
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.spawn(self.serve_connection, sock)

    def serve_connection(self, sock: socket.socket) -> None:
        transport = _ExecTransport(sock)
        transport.add_server_key(self.host_key)
        with self.lock:
            self.transports.append(transport)
        try:
            transport.start_server(server=_ServerInterface(self, transport))
            self._drain_channels(transport)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.debug("fallback ssh connection ended: %s", exc)
        finally:
            transport.close()
            with self.lock, contextlib.suppress(ValueError):
                self.transports.remove(transport)

    def _drain_channels(self, transport: _ExecTransport) -> None:
        """Sessions are driven by exec requests; accept() only drains the queue. Keep the
        channels referenced: paramiko closes a channel when it is garbage-collected."""
        channels: list[paramiko.Channel] = []
        while transport.is_active() and not self.stopping.is_set():
            chan = transport.accept(timeout=0.5)
            channels = [c for c in channels if not c.closed]
            if chan is not None:
                channels.append(chan)

    def track(self, proc: subprocess.Popen[bytes], running: bool) -> None:
        """Remember (or forget) a running command, for stop() to kill."""
        with self.lock:
            if running:
                self.procs.add(proc)
            else:
                self.procs.discard(proc)

    def stop(self) -> None:
        """Close the listener and every connection, kill every command, join the threads."""
        self.stopping.set()
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
        with self.lock:
            transports = list(self.transports)
            procs = list(self.procs)
            threads = list(self.threads)
        for transport in transports:
            with contextlib.suppress(Exception):
                transport.close()
        for proc in procs:
            kill_group(proc)
        deadline = time.monotonic() + STOP_TIMEOUT
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("fallback ssh server threads still running: %s", stuck)


def _login_environment(user: str) -> tuple[str, dict[str, str]]:
    """(working directory, environment) of a command run for USER, as a login would set them."""
    account = pwd.getpwnam(user)
    home = account.pw_dir if os.path.isdir(account.pw_dir) else "/"
    env = {
        "HOME": account.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "SHELL": account.pw_shell or "/bin/sh",
        "PATH": os.environ.get("PATH") or os.defpath,
    }
    for name in ("LANG", "LC_ALL", "TZ", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    return home, env


class _ExecTransport(paramiko.Transport):
    """Transport that signals when an exec request has been answered.

    paramiko sends the reply to "exec" only after check_channel_exec_request
    returns; a fast command could otherwise close its channel before that
    reply, which paramiko clients report as "Channel closed".
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.pending_replies: dict[int, threading.Event] = {}
        self.pending_lock = threading.Lock()

    def expect_reply(self, chanid: int) -> threading.Event:
        """An event set once the reply to CHANID's pending request has been sent."""
        replied = threading.Event()
        with self.pending_lock:
            self.pending_replies[chanid] = replied
        return replied

    def _send_user_message(self, data: Any) -> None:
        super()._send_user_message(data)
        raw = data.asbytes() if hasattr(data, "asbytes") else bytes(data)
        if raw[:1] in _REPLIES and len(raw) >= 5:
            chanid = int.from_bytes(raw[1:5], "big")
            with self.pending_lock:
                event = self.pending_replies.pop(chanid, None)
            if event is not None:
                event.set()


class _ServerInterface(paramiko.ServerInterface):
    """Public-key auth for one user and one key; exec requests only."""

    def __init__(self, owner: ParamikoSSHServer, transport: _ExecTransport) -> None:
        self.owner = owner
        self.transport = transport

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.owner.user and key.asbytes() == self.owner.client_public:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        session = _ExecSession(self.owner, self.transport, channel, command)
        session.replied = self.transport.expect_reply(channel.remote_chanid)
        self.owner.spawn(session.run)
        return True


class _ExecSession:
    """One exec request: run the command, pump its streams, send its exit status, close."""

    def __init__(self, owner: ParamikoSSHServer, transport: _ExecTransport, chan: paramiko.Channel,
                 command: bytes) -> None:
        self.owner = owner
        self.transport = transport
        self.chan = chan
        self.command = command
        self.replied = threading.Event()

    def run(self) -> None:
        """Run the command to completion and close the channel."""
        try:
            proc = self._spawn()
        except OSError as exc:
            with contextlib.suppress(OSError, EOFError):
                self.chan.sendall_stderr(f"cannot run /bin/sh: {exc}\n".encode())
            self._finish(127)
            return
        self.owner.track(proc, True)
        try:
            status = self._supervise(proc)
        finally:
            self.owner.track(proc, False)
        self._finish(status)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["/bin/sh", "-c", os.fsdecode(self.command)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.owner.home,
            env=self.owner.env,
            start_new_session=True,
            bufsize=0,
        )

    def _supervise(self, proc: subprocess.Popen[bytes]) -> Optional[int]:
        """Pump data until PROC exits; kill it if the channel goes away first."""
        assert proc.stdin and proc.stdout and proc.stderr
        pumps = [
            threading.Thread(target=_pump_out, args=(proc.stdout, self.chan.sendall), daemon=True),
            threading.Thread(target=_pump_out, args=(proc.stderr, self.chan.sendall_stderr), daemon=True),
        ]
        feeder = threading.Thread(target=_pump_in, args=(self.chan, proc.stdin), daemon=True)
        for thread in (*pumps, feeder):
            thread.start()
        while True:
            try:
                proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.chan.closed or not self.transport.is_active() or self.owner.stopping.is_set():
                kill_group(proc)
        for thread in pumps:
            thread.join(timeout=10.0)
        code = proc.returncode
        # a command killed by a signal gets no exit-status (as with OpenSSH's
        # exit-signal, paramiko clients then report -1)
        return code if code is not None and code >= 0 else None

    def _finish(self, status: Optional[int]) -> None:
        """EOF, the exit status (if any), then close, once the exec reply is out."""
        if self.chan.closed:
            return
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.chan.shutdown_write()
            if status is not None:
                self.chan.send_exit_status(status)
            self.replied.wait(2.0)
            self.chan.close()


def _pump_out(pipe: IO[bytes], send: Callable[[bytes], Any]) -> None:
    """Copy a process pipe to the channel until EOF (or the channel dies)."""
    fd = pipe.fileno()
    try:
        while True:
            data = os.read(fd, _CHUNK)
            if not data:
                break
            send(data)
    except _CHANNEL_ERRORS as exc:  # channel closed under us: stop copying
        log.debug("output pump stopped: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            pipe.close()


def _pump_in(chan: paramiko.Channel, pipe: IO[bytes]) -> None:
    """Copy channel data to the process's stdin; close it at channel EOF."""
    fd = pipe.fileno()
    broken = False
    try:
        while True:
            data = chan.recv(_CHUNK)
            if not data:
                break
            if not broken:
                broken = not _write_all(fd, data)
    except _CHANNEL_ERRORS as exc:
        log.debug("input pump stopped: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            pipe.close()


def _write_all(fd: int, data: bytes) -> bool:
    """Write DATA to FD; False if the reader has gone (the rest is discarded)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        return False
    return True
