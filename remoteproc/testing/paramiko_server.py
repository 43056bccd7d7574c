"""The in-process SSH server on paramiko, for where no OpenSSH sshd exists (the demo).

paramiko is imported only when the class is built.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from .keys import write_private_key
from .net import HOST
from .proctree import STOP_TIMEOUT, kill_group

log = logging.getLogger("remoteproc.testing")


@functools.cache
def fallback_server_class() -> type:
    """Build the fallback server class; importing paramiko only when needed."""
    import paramiko
    from paramiko.common import cMSG_CHANNEL_FAILURE, cMSG_CHANNEL_SUCCESS

    replies = (cMSG_CHANNEL_SUCCESS, cMSG_CHANNEL_FAILURE)
    channel_errors = (OSError, EOFError, paramiko.SSHException)

    def _pump_out(pipe: IO[bytes], send: Callable[[bytes], None]) -> None:
        """Copy a process pipe to the channel until EOF (or the channel dies)."""
        fd = pipe.fileno()
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                send(data)
        except channel_errors as exc:  # channel closed under us: stop copying
            log.debug("output pump stopped: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    def _pump_in(chan: Any, pipe: IO[bytes]) -> None:
        """Copy channel data to the process's stdin; close it at channel EOF."""
        fd = pipe.fileno()
        broken = False
        try:
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                view = memoryview(data)
                while view and not broken:
                    try:
                        view = view[os.write(fd, view) :]
                    except OSError:  # the process closed its stdin: discard the rest
                        broken = True
        except channel_errors as exc:
            log.debug("input pump stopped: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    class _Transport(paramiko.Transport):
        """Transport that signals when an exec request has been answered.

        paramiko sends the reply to "exec" only after check_channel_exec_request
        returns; a fast command could otherwise close its channel before that
        reply, which paramiko clients report as "Channel closed".
        """

        def __init__(self, sock: socket.socket) -> None:
            super().__init__(sock)
            self.pending_replies: dict[int, threading.Event] = {}
            self.pending_lock = threading.Lock()

        def _send_user_message(self, data: Any) -> None:
            super()._send_user_message(data)
            raw = data.asbytes() if hasattr(data, "asbytes") else bytes(data)
            if raw[:1] in replies and len(raw) >= 5:
                chanid = int.from_bytes(raw[1:5], "big")
                with self.pending_lock:
                    event = self.pending_replies.pop(chanid, None)
                if event is not None:
                    event.set()

    class _Interface(paramiko.ServerInterface):
        """Public-key auth for one user and one key; exec requests only."""

        def __init__(self, owner: _FallbackServer, transport: _Transport) -> None:
            self.owner = owner
            self.transport = transport

        def get_allowed_auths(self, username: str) -> str:
            return "publickey"

        def check_auth_publickey(self, username: str, key: Any) -> int:
            if (
                username == self.owner.user
                and key.asbytes() == self.owner.client_public
            ):
                return paramiko.AUTH_SUCCESSFUL
            return paramiko.AUTH_FAILED

        def check_channel_request(self, kind: str, chanid: int) -> int:
            if kind == "session":
                return paramiko.OPEN_SUCCEEDED
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

        def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
            replied = threading.Event()
            with self.transport.pending_lock:
                self.transport.pending_replies[channel.remote_chanid] = replied
            self.owner.spawn(
                self.owner.run_exec, self.transport, channel, command, replied
            )
            return True

    class _FallbackServer:
        """In-process SSH server running exec requests with /bin/sh -c."""

        def __init__(self, user: str, client_key_path: str) -> None:
            self.user = user
            account = pwd.getpwnam(user)
            self.home = account.pw_dir if os.path.isdir(account.pw_dir) else "/"
            self.env = {
                "HOME": account.pw_dir,
                "USER": user,
                "LOGNAME": user,
                "SHELL": account.pw_shell or "/bin/sh",
                "PATH": os.environ.get("PATH") or os.defpath,
            }
            for name in ("LANG", "LC_ALL", "TZ", "TMPDIR"):
                if name in os.environ:
                    self.env[name] = os.environ[name]
            self.host_key = paramiko.ECDSAKey.generate()
            self.host_public = (
                f"{self.host_key.get_name()} {self.host_key.get_base64()}"
            )
            client_key = paramiko.ECDSAKey.generate()
            write_private_key(client_key, client_key_path)
            self.client_public = client_key.asbytes()
            self.stopping = threading.Event()
            self.lock = threading.Lock()
            self.threads: list[threading.Thread] = []
            self.transports: list[_Transport] = []
            self.procs: set[subprocess.Popen[bytes]] = set()
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.listener.bind((HOST, 0))
                self.listener.listen(128)
                self.listener.settimeout(0.2)
            except OSError:
                self.listener.close()
                raise
            self.port = int(self.listener.getsockname()[1])
            self.spawn(self.accept_loop)

        def spawn(self, target: Callable[..., None], *args: Any) -> None:
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

        def accept_loop(self) -> None:
            while not self.stopping.is_set():
                try:
                    sock, _ = self.listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.spawn(self.serve_connection, sock)

        def serve_connection(self, sock: socket.socket) -> None:
            transport = _Transport(sock)
            transport.add_server_key(self.host_key)
            with self.lock:
                self.transports.append(transport)
            try:
                transport.start_server(server=_Interface(self, transport))
                # Sessions are driven by exec requests; accept() only drains the
                # queue. Keep the channels referenced: paramiko closes a channel
                # when it is garbage-collected.
                channels: list[Any] = []
                while transport.is_active() and not self.stopping.is_set():
                    chan = transport.accept(timeout=0.5)
                    channels = [c for c in channels if not c.closed]
                    if chan is not None:
                        channels.append(chan)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                log.debug("fallback ssh connection ended: %s", exc)
            finally:
                transport.close()
                with self.lock, contextlib.suppress(ValueError):
                    self.transports.remove(transport)

        def run_exec(
            self,
            transport: _Transport,
            chan: Any,
            command: bytes,
            replied: threading.Event,
        ) -> None:
            """Run one exec request to completion and close its channel."""
            status: int | None = None
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", os.fsdecode(command)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self.home,
                    env=self.env,
                    start_new_session=True,
                    bufsize=0,
                )
            except OSError as exc:
                with contextlib.suppress(OSError, EOFError):
                    chan.sendall_stderr(f"cannot run /bin/sh: {exc}\n".encode())
                status = 127
            else:
                with self.lock:
                    self.procs.add(proc)
                try:
                    status = self.supervise(transport, chan, proc)
                finally:
                    with self.lock:
                        self.procs.discard(proc)
            if chan.closed:
                return
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                chan.shutdown_write()
                if status is not None:
                    chan.send_exit_status(status)
                replied.wait(2.0)
                chan.close()

        def supervise(
            self, transport: _Transport, chan: Any, proc: subprocess.Popen[bytes]
        ) -> int | None:
            """Pump data until PROC exits; kill it if the channel goes away first."""
            assert proc.stdin and proc.stdout and proc.stderr
            pumps = [
                threading.Thread(
                    target=_pump_out, args=(proc.stdout, chan.sendall), daemon=True
                ),
                threading.Thread(
                    target=_pump_out,
                    args=(proc.stderr, chan.sendall_stderr),
                    daemon=True,
                ),
            ]
            feeder = threading.Thread(
                target=_pump_in, args=(chan, proc.stdin), daemon=True
            )
            for thread in (*pumps, feeder):
                thread.start()
            while True:
                try:
                    proc.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if chan.closed or not transport.is_active() or self.stopping.is_set():
                    kill_group(proc)
            for thread in pumps:
                thread.join(timeout=10.0)
            code = proc.returncode
            # a command killed by a signal gets no exit-status (as with OpenSSH's
            # exit-signal, paramiko clients then report -1)
            return code if code is not None and code >= 0 else None

        def close(self) -> None:
            self.stopping.set()
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

    return _FallbackServer
