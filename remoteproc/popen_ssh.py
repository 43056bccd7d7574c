"""The Popen-like object behind RemoteProcess, as ``popen_fork.Popen`` is locally.

``multiprocessing.process.BaseProcess`` hands all OS work to this object: it
pickles the process object, asks the relay process to start it on the host, and
then follows it through a status socket that is also its sentinel (readable
exactly when the remote process has ended).
"""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import socket
import sys
import threading
import weakref
from multiprocessing import util
from typing import Any

from . import owned, reduction, sndbuf, spill, stdio
from .errors import CONNECTION_LOST, RemoteProcessError, from_wire, out_of_files
from .relay import client as relay_client
from .relay import ipc

#: (host, options) -> "same" or "spawn", as the relay last reported for that host
_modes: dict[tuple, str] = {}


#: seconds a start whose status socket ended at once waits for the relay's word on why
REFUSAL_WAIT = 2.0
#: seconds the program's exit waits for a process it signalled (multiprocessing terminates daemonic
#: children, then joins every child without a timeout) to report its end
EXIT_WAIT = 5.0

log = logging.getLogger("remoteproc")


class Popen:
    method = "ssh"
    found: str | None = None        # where the host's interpreter was found (docs/python-versions.md)
    executable: str | None = None
    #: the last of what the process wrote on stderr, if it ended with a failure (the relay keeps mux.TAIL)
    stderr_tail = ""

    def __init__(self, process_obj: Any) -> None:
        util._flush_std_streams()  # type: ignore[attr-defined]  # (private; popen_fork does the same)
        self.returncode: int | None = None
        self.pid: int | None = None
        self.error: RemoteProcessError | None = None
        self.host: str = process_obj._host
        self._status: socket.socket | None = None
        self._lock = threading.Lock()     # one reader of the status socket at a time
        self._signalled = False
        self._process = weakref.ref(process_obj)
        key = (self.host, repr(sorted(process_obj._ssh_options.items())))
        self.mode = _modes.get(key, "same")     # the host's mode, once a start there told us
        for _attempt in range(3):
            reply = self._request(process_obj)
            if reply[0] != "mode":
                break
            # The host runs another Python than we assumed: pickle again for it (docs/python-versions.md).
            self.close()
            owned.release_unstarted(process_obj)    # (the Queues, Locks ... pickled for the first try)
            self.mode = _modes[key] = reply[1]
        if reply[0] == "mode":      # (the host changed its Python between every try: a reconnect loop)
            reply = ("error", "BootstrapError", "%s: the host's Python changed while starting; try again"
                     % self.host)
        if reply[0] != "started":
            self.close()
            owned.release_unstarted(process_obj)
            raise from_wire(reply[1], reply[2], self.host)
        self.pid = reply[1]
        _modes[key] = self.mode = reply[2]
        if self.mode == "spawn":    # (its messages may name modules of a newer Python's)
            from .agent import spawn

            spawn.accept_newer_pickles()
        self.found, self.executable = reply[3], reply[4]

    def _request(self, process_obj):
        """Pickle for ``self.mode``, send the start request, return the relay's first reply."""
        looked = ""
        if self.mode == "spawn":
            from .bootstrap import looked_in

            looked = looked_in()
        # What a forked child would inherit from this interpreter travels with the process
        # object, for the child to apply (agent/child.py: inherit).
        process_obj.__dict__["_remoteproc_parent"] = _parent_state()
        try:
            payload, bridged = reduction.dumps_process(process_obj, self.host, self.mode, looked)
        except BaseException:
            owned.release_unstarted(process_obj)    # (what it pickled before the refusal)
            raise
        finally:
            process_obj.__dict__.pop("_remoteproc_parent", None)
        out_fd, err_fd = _std_fd(1), _std_fd(2)
        tty = os.isatty(out_fd)
        # (the CLI's run passes the script's stdout through a pipe of its own, to keep each of
        # the script's lines whole beside its message lines: the terminal is still fd 1's)
        out_fd = getattr(process_obj, "_stdout_fd", None) or out_fd
        for b in bridged:
            if b.kind == "socket" and b.readable:
                sndbuf.widen_peer(b.fd)     # (the user's sends to the child: see sndbuf.py)
        fds = [b.fd for b in bridged] + [out_fd, err_fd]
        request = {
            "host": self.host,
            "options": process_obj._ssh_options,
            "payload": payload,
            "streams": [(b.kind, b.readable, b.writable) for b in bridged],
            "tty": tty,
            "mode": self.mode,
            "cwd": getattr(process_obj, "_cwd", None),
            "env": getattr(process_obj, "_env", None),
        }
        if isinstance(payload, spill.Streamed):
            # A big pickle: the relay streams it from its file, as it streams messages.
            request["payload"], request["streamed"] = b"", payload.size
            fds.append(payload.fd)
        try:
            relay = self._relay = relay_client.get(self.host)
            self._status = relay.start(request, fds)
        except OSError as exc:
            err = out_of_files(self.host, exc)
            if err is None:
                raise
            raise err from exc
        finally:
            if isinstance(payload, spill.Streamed):
                payload.close()     # (the relay has its own copy of the fd)
            del payload
        # Closed when this object goes, or at interpreter exit after multiprocessing has
        # joined its children (negative priority), as popen_fork closes its sentinel.
        self._finalizer = util.Finalize(self, self._status.close, exitpriority=-5)
        self._receiver = ipc.Receiver(self._status)
        self.sentinel = self._status.fileno()
        try:
            reply = self._next()
            if reply[0] == "error" and reply[1] == "ConnectionLostError" and relay.alive():
                # (the relay lives: it could not take the start, and said why on its own socket)
                refused = relay.refusal(request["id"], REFUSAL_WAIT)
                if refused is not None:
                    return ("error", *refused)
            return reply
        except BaseException:
            # Interrupted (Ctrl-C) while the start was under way: start() raises, so nothing
            # here can join or stop that process; it must not run on behind the user's back.
            # The kill follows the start on its way to the agent (or finds it already ended).
            self._send_signal(signal.SIGKILL)
            self.close()
            raise

    def _next(self) -> tuple[Any, ...]:
        try:
            msg, _fds = self._receiver.recv()
            return msg
        except (EOFError, OSError):
            relay = getattr(self, "_relay", None)
            # (its socket closes as it exits, a moment before its exit status can be had)
            how = "" if relay is None else relay.ended_how(1.0 if self.pid is None else 0.2)
            return ("error", "ConnectionLostError", "%s: the local relay process ended unexpectedly%s; every "
                    "process of this program that it carried ended with it (on the host too). The next start() "
                    "starts a new relay" % (self.host, how))

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """The exit code, or None while the remote process runs (``flag`` 0: wait for it)."""
        if self.returncode is not None or self._status is None:
            return self.returncode
        # Threads may join and poll the same process at once: one reads the status
        # socket, the others see its result.  A non-blocking poll never waits for the lock.
        if not self._lock.acquire(flag != os.WNOHANG):
            return self.returncode
        try:
            if self.returncode is None and self._status is not None:
                if flag == os.WNOHANG:
                    poller = select.poll()      # (select.select fails for fds >= 1024)
                    poller.register(self.sentinel, select.POLLIN)
                    if not poller.poll(0):
                        return None
                msg = self._next()
                if msg[0] == "exited":
                    if msg[2]:
                        self.error = from_wire(msg[2][0], msg[2][1], self.host)
                    self.stderr_tail = msg[3] if len(msg) > 3 else ""
                    self.returncode = msg[1]
                else:
                    self.error = from_wire(msg[1], msg[2], self.host)
                    self.returncode = CONNECTION_LOST
                self._keep_sentinel_ready()
                owned = sys.modules.get("remoteproc.owned")
                if owned is not None:       # (its queues, locks, ...: their owner lets go of it first)
                    owned.settle(self._process())
        finally:
            self._lock.release()
        return self.returncode

    def _keep_sentinel_ready(self) -> None:
        """After the exit report, the sentinel must stay readable, as a local one does.

        The relay closes its end right after the report, but not atomically with it:
        wait (bounded) for that EOF, after which the socket stays readable for good and
        keeps its identity (an epoll registration of the sentinel still works).
        """
        sock = self._status
        if sock is None:
            return
        try:
            sock.settimeout(5.0)
            while sock.recv(4096):
                pass
        except OSError:
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None and timeout is None and self._signalled and getattr(util, "_exiting", False):
            # The program exits: a local child signalled dies at once (stopped or not), while a remote
            # one whose host stalled reports nothing until the keepalive's verdict (60 s by default).
            # The host's agent ends it by itself once it hears nothing from us (keepalive).
            if self.wait(EXIT_WAIT) is None:
                log.warning("%s: process %s did not report its end within %gs of its signal; the program exits "
                            "without it (if the host is unreachable, its agent ends it within the keepalive "
                            "bound)", self.host, self.pid, EXIT_WAIT)
            return self.returncode
        if self.returncode is None:
            if timeout is not None:
                from multiprocessing.connection import wait

                if not wait([self.sentinel], timeout):
                    return None
            return self.poll(os.WNOHANG if timeout == 0.0 else 0)
        return self.returncode

    def _send_signal(self, sig: int) -> None:
        self._signalled = True
        if self.returncode is None and self._status is not None:
            try:
                ipc.send(self._status, ("signal", int(sig)))
            except OSError:
                pass    # the relay already reported the end; poll() will see it

    def terminate(self) -> None:
        self._send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self._send_signal(signal.SIGKILL)
        owned = sys.modules.get("remoteproc.owned")
        if owned is not None and self.returncode is None:
            owned.killed(self._process())       # (its waits are withdrawn now, not at its EOF)

    def close(self) -> None:
        if self._status is not None:
            self._finalizer()
            self._status = None


def _parent_state() -> dict[str, Any]:
    """What a child forked here would inherit from this interpreter, beyond the process object:
    ``multiprocessing.log_to_stderr()``, ``-u``, ``-W`` options, an ignored SIGINT."""
    state: dict[str, Any] = {}
    if getattr(util, "_log_to_stderr", False):
        state["log_to_stderr"] = True
    if isinstance(getattr(sys.__stdout__, "buffer", None), io.RawIOBase):
        state["unbuffered"] = True      # (-u or PYTHONUNBUFFERED: stdio has no buffer)
    if sys.warnoptions:
        state["warnoptions"] = list(sys.warnoptions)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        state["sigint_ignored"] = True
    return state


_devnull: int | None = None


def _std_fd(fd: int) -> int:
    """Where a remote child's output goes: this process's fd 1 or 2, as a local child's would.

    Not ``sys.stdout.fileno()``: Jupyter's kernel captures fds 1 and 2 into the running
    cell, while its ``sys.stdout.fileno()`` is a copy of the terminal it was started from.
    A closed fd (a daemon without stdio), or one this interpreter started without, becomes
    /dev/null.
    """
    global _devnull
    try:
        # (a Python started with the fd closed has no sys.__stdout__: its own print()s go
        # nowhere, and a local child's too; the fd's number may be taken by a Pipe since)
        if getattr(sys, "__stdout__" if fd == 1 else "__stderr__") is None:
            raise OSError("no std stream")
        os.fstat(fd)
        return fd
    except OSError:
        if _devnull is None:
            _devnull = stdio.above(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
        return _devnull
