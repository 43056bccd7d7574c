"""The user's side of the relay process: start it, hand it work, hear its logs.

One relay process per user process, started on first use (the constructor of a
RemoteProcess already starts it in the background, so that importing paramiko
there overlaps with the caller's own work).  A forked child of the user's process
gets a relay of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing import util
from typing import Any, Sequence

from .. import stdio
from ..errors import ConnectionLostError
from . import ipc

log = logging.getLogger("remoteproc")

_lock = threading.Lock()
_relay: "RelayHandle | None" = None


def _editable_roots() -> dict[str, str]:
    """``modules.editable_roots()``, worked out for every start (about 8 us).

    Not cached by the ids of ``sys.meta_path``'s finders: a finder that was replaced and
    collected can leave its id to a new one, and the new project was then not sent.
    """
    from .. import modules

    return modules.editable_roots()


def _socketpair() -> tuple[socket.socket, socket.socket]:
    """A Unix socketpair whose fds are above 0-2: in a process whose stdout is closed, a remote
    child's output (sent to fd 1, as a local child's) went into the relay's own socket."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return socket.socket(fileno=stdio.above(a.detach())), socket.socket(fileno=stdio.above(b.detach()))


def user_path() -> list[str]:
    """This process's ``sys.path`` with every entry absolute, for the relay's own imports and for
    module forwarding.  ``''`` (``python -c``, ``python -``, the REPL) and relative entries are the
    current directory; where it is gone (deleted, or a parent made unreadable, after the program
    started: ``os.getcwd()`` fails) they are the directory the program started in, as
    multiprocessing's spawn has them, or left out when even that is unknown."""
    try:
        cwd: str | None = os.getcwd()
    except OSError:
        from multiprocessing import process

        cwd = getattr(process, "ORIGINAL_DIR", None)     # (private: the cwd when multiprocessing was imported)
    path = []
    for entry in sys.path:
        if os.path.isabs(entry):
            path.append(os.path.normpath(entry))
        elif cwd is not None:
            path.append(os.path.normpath(os.path.join(cwd, entry)) if entry else cwd)
    return path


def _interpreter_flags() -> list[str]:
    """The flags that keep this interpreter from its environment, for the relay as multiprocessing's
    spawn passes them on: a program run with ``-E`` or ``-I`` (a service's ``python3 -I``) ignores
    ``PYTHONHOME`` and ``PYTHONPATH``, and a relay that read them failed to start (``PYTHONHOME`` of
    another Python: no ``encodings``) or imported other modules than the program's."""
    if sys.flags.isolated:
        return ["-I"]
    flags = []
    if sys.flags.ignore_environment:
        flags.append("-E")
    if sys.flags.no_user_site:
        flags.append("-s")
    if getattr(sys.flags, "safe_path", False):     # (Python 3.11+)
        flags.append("-P")
    return flags


class RelayHandle:
    """A running relay process and the socket to it."""

    def __init__(self) -> None:
        self.pid_owner = os.getpid()
        ours, theirs = _socketpair()
        code = ("import sys; sys.path[:0] = %r; from remoteproc.relay.process import main; main(%d)"
                % (_package_path() + user_path(), theirs.fileno()))
        # -S: the relay gets this process's sys.path as it is, so the site module (and the
        # .pth files it runs, 5-40 ms) is not needed; coverage measurement needs its .pth.
        flags = _interpreter_flags() + ([] if os.environ.get("COVERAGE_PROCESS_START") else ["-S"])
        # SIGINT blocked until the relay has its handler (relay/process.py): a Ctrl-C while it
        # starts up is then passed on to the remote children, not a traceback of its imports.
        # (In this thread only, for the few ms of the spawn: a Ctrl-C meanwhile waits, then lands.)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *flags, "-c", code], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            if signal.SIGINT not in blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        theirs.close()
        self.sock = ours
        self.send_lock = threading.Lock()
        #: request id -> (error class name, message): starts the relay could not take, said on
        #: this socket because their status socket never reached it (out of open files)
        self.refused: dict[int, tuple[str, str]] = {}
        self.refused_cond = threading.Condition()
        self.next_id = itertools.count(1)
        self.synced = 0             # the last sync() the relay answered (under refused_cond)
        # At interpreter exit, after multiprocessing has terminated and joined the remote
        # children (its finalizers of priority >= 0 and the joins come first): stop the relay.
        util.Finalize(None, _shutdown_at_exit, exitpriority=-10)
        self.reader = threading.Thread(target=self._read, name="remoteproc-relay-reader", daemon=True)
        self.reader.start()
        self.level = logging.getLogger("remoteproc").getEffectiveLevel()
        try:
            self.send_to_relay(("level", self.level))
        except OSError:
            # The relay ended at once (it could not start: its own words are on stderr).  The
            # constructor of a RemoteProcess raised a bare BrokenPipeError here; start() now
            # says it, as a ConnectionLostError with the relay's exit status.
            pass

    def send_to_relay(self, msg, fds: Sequence[int] = ()) -> None:
        with self.send_lock:
            ipc.send(self.sock, msg, fds)

    def _read(self) -> None:
        for msg, fds in ipc.Receiver(self.sock):
            for fd in fds or ():
                os.close(fd)
            if msg[0] == "refused":
                with self.refused_cond:
                    self.refused[msg[1]] = (msg[2], msg[3])
                    self.refused_cond.notify_all()
            elif msg[0] == "log":
                _log_here(*msg[1:])
            elif msg[0] == "synced":
                with self.refused_cond:
                    self.synced = msg[1]
                    self.refused_cond.notify_all()
        if os.getpid() == self.pid_owner:
            log.debug("the relay process ended")

    def start(self, request: dict[str, Any], fds: Sequence[int]) -> socket.socket:
        """Send a start request; returns the process's status socket."""
        request.setdefault("path", user_path())
        request.setdefault("editable", _editable_roots())
        # (the program's own, now: a notebook that sets one after its first start, the relay's would
        # be the environment it was started with)
        request["environ"] = {name: os.environ.get(name) for name in SSH_ENVIRON}
        request["id"] = next(self.next_id)
        ours, theirs = _socketpair()
        level = logging.getLogger("remoteproc").getEffectiveLevel()
        try:
            if level != self.level:     # (the program changed its logging since: the relay logs as asked now)
                self.level = level
                self.send_to_relay(("level", level))
            self.send_to_relay(("start", request), [theirs.fileno(), *fds])
        except OSError as exc:
            ours.close()
            raise ConnectionLostError("the local relay process is gone (%s); start a new RemoteProcess "
                                      "to get a new one" % exc, request.get("host")) from None
        finally:
            theirs.close()
        return ours

    def refusal(self, request_id: int, timeout: float) -> tuple[str, str] | None:
        """Why the relay refused start ``request_id`` without answering on its status socket
        (waits up to ``timeout`` for the word, which may trail the socket's end), or None."""
        deadline = time.monotonic() + timeout
        with self.refused_cond:
            while request_id not in self.refused and self.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.refused_cond.wait(min(left, 0.1))
            return self.refused.pop(request_id, None)

    def sync(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until every log record the relay sent before now has been
        re-emitted here; False if it did not answer in time.

        A record and a process's status travel on different sockets, so a program can hear of
        an end (a lost connection) before the relay's warning of it: a command that reports the
        end itself and then removes its log handler had the warning printed bare after its report.
        """
        token = next(self.next_id)
        try:
            self.send_to_relay(("sync", token))
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        with self.refused_cond:
            while self.synced < token and self.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.refused_cond.wait(min(left, 0.1))
            return self.synced >= token

    def alive(self) -> bool:
        return os.getpid() == self.pid_owner and self.proc.poll() is None

    def ended_how(self, wait: float = 1.0) -> str:
        """How the relay process ended, for a message: `` (exit status 1: ...)``, or ""."""
        if os.getpid() != self.pid_owner:
            return ""
        try:
            code = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            return ""
        if code < 0:
            return " (killed by signal %d)" % -code
        return (" (exit status %d: what it said is on this program's standard error; it runs %s with this "
                "program's environment and flags)" % (code, sys.executable)) if code else ""


def _log_here(name: str, level: int, text: str) -> None:
    """Log a record of the relay's with this program's logging.  A filter or handler of the program's
    that raises must not end the thread reading the relay: the relay's next records would fill the
    socket, and its threads (every start) block on it for good.  Said as logging says a handler's
    own failure (``Handler.handleError``)."""
    try:
        logging.getLogger(name).log(level, "%s", text)
    except Exception:
        if logging.raiseExceptions:
            traceback.print_exc()


def _package_path() -> list[str]:
    return [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]


def _forget_in_child() -> None:
    """A forked child must not keep its parent's relay socket open, nor use it."""
    global _relay
    if _relay is not None:
        try:
            _relay.sock.close()
        except OSError:
            pass
    _relay = None


os.register_at_fork(after_in_child=_forget_in_child)


#: set once the interpreter's exit has stopped the relay (pid of the process that exits)
_exited_in: int | None = None


#: environment variables that choose how connections are made (the ssh program, the ssh-agent), which
#: the relay takes from each start request: a change in the program applies to its next connection
SSH_ENVIRON = ("REMOTEPROC_SSH", "SSH_AUTH_SOCK")


def get(host: str | None = None) -> RelayHandle:
    """The relay process of this process, started if needed (but not once the program exits:
    ``host``, the start's, is then named in the error)."""
    global _relay
    with _lock:
        if _relay is None or not _relay.alive():
            if _exited_in == os.getpid():
                # A thread still starting processes while the program exits (a Pool whose
                # start-up a Ctrl-C interrupted) would start a relay that nothing stops: it
                # would outlive the program, holding its stdout and stderr (``prog | cat``
                # and ``subprocess.run(capture_output=True)`` would wait for it).
                # (An atexit handler registered before RemoteProcess was imported runs after this stop
                # too: atexit runs the last registered first, and multiprocessing's exit function,
                # which stops the relay, is registered when multiprocessing.util is first imported.)
                raise ConnectionLostError("%sthe program is exiting: its relay process is stopped and no "
                                          "new one starts. Fix: start remote processes before the "
                                          "interpreter exits (join the threads that start them); an atexit "
                                          "handler that starts them must be registered after `from remoteproc "
                                          "import RemoteProcess` (which registers multiprocessing's exit "
                                          "function, the one that stops the relay: atexit runs the last "
                                          "registered first)"
                                          % ("%s: " % host if host else ""), host)
            _relay = RelayHandle()
        return _relay


def current() -> "RelayHandle | None":
    """The relay process of this process if one was started (none is started here)."""
    relay = _relay
    return relay if relay is not None and relay.alive() else None


def shutdown(timeout: float = 10.0, exiting: bool = False) -> None:
    """Stop the relay process, if it runs: every SSH connection closes and every remote
    agent kills what it started.  The next RemoteProcess starts a new relay.  ``exiting``:
    this process ends, so the relay does not wait to hand its Connections what they would get."""
    global _relay
    with _lock:
        relay, _relay = _relay, None
    if relay is None or os.getpid() != relay.pid_owner:
        return
    if exiting:
        with contextlib.suppress(OSError):
            relay.send_to_relay(("exiting",))
    try:
        relay.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    relay.sock.close()
    try:
        relay.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        relay.proc.kill()
        relay.proc.wait(timeout)


def _shutdown_at_exit() -> None:
    """The interpreter exits: stop the relay, and start none after it."""
    global _exited_in
    _exited_in = os.getpid()
    shutdown(exiting=True)


def prestart() -> None:
    """Start the relay process now, if it isn't running yet (cheap when it is; a no-op once
    the program exits, or when it cannot start now, out of open files: ``start()`` then says why)."""
    if _exited_in != os.getpid():
        with contextlib.suppress(OSError):
            get()
