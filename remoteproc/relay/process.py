"""The relay process: owns every SSH connection of one user process.

The user's process starts it on first use (``relay/client.py``) and talks to it over
a Unix socketpair; it never opens a listening socket.  Running the SSH transport
here keeps the message path free of the user's GIL: a CPU-bound thread in the
user's program does not slow its remote processes' messages.  When the user's
process dies, its socket reads EOF here, every connection is closed, and each
remote agent kills what it started.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import socket
import threading
from typing import Optional

from .. import ssh, stdio
from ..agent.fdlimit import raise_fd_limit
from ..errors import RemoteProcessError
from . import ipc, paramiko_shims
from .channel import AgentOpener
from .link import Link
from .paramiko_channel import ParamikoOpener

log = logging.getLogger("remoteproc.relay")


class _ForwardHandler(logging.Handler):
    """Sends this process's log records to the user's process, which re-emits them."""

    def __init__(self, relay: "Relay") -> None:
        super().__init__()
        self.relay = relay

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            self.relay.send_to_user(("log", record.name, record.levelno, msg))
        except Exception:   # pragma: no cover - logging must never break the relay
            pass


PRELOAD_WAIT = 30.0     # seconds the paramiko import may still take when the user's process is gone


class Relay:
    """The relay process's state: its socket to the user's process, one ``Link`` per connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.paramiko = ParamikoOpener()
        self.openssh: Optional[AgentOpener] = None
        self.links: dict[tuple, Link] = {}
        self.links_lock = threading.Lock()
        # transport="openssh": (spec, options) -> the Target 'ssh -G' gave, while its link lives
        self.resolved: dict[str, ssh.Target] = {}
        #: each Ctrl-C's links, from the SIGINT handler to the interrupter thread (watch_interrupts)
        self._interrupts: queue.SimpleQueue = queue.SimpleQueue()
        self.exiting = False        # the user's process said it exits (client._shutdown_at_exit)

    def send_to_user(self, msg) -> None:
        with self.send_lock:
            ipc.send(self.sock, msg)

    def opener_for(self, target: ssh.Target) -> AgentOpener:
        """The transport that reaches ``target`` (the one place where a transport is chosen)."""
        if target.transport == "openssh":
            if self.openssh is None:
                from .openssh_channel import OpenSSHOpener

                self.openssh = OpenSSHOpener()
            return self.openssh
        return self.paramiko

    def forget(self, link: Link) -> None:
        with self.links_lock:
            if self.links.get(link.target.key) is link:
                del self.links[link.target.key]
            self.resolved = {k: t for k, t in self.resolved.items() if t.key != link.target.key}

    def serve(self) -> None:
        for msg, fds in ipc.Receiver(self.sock):
            op = msg[0]
            if op == "start" and fds is None:
                self.out_of_files(msg[1])
            elif op == "start":
                self.start(msg[1], fds)
            elif op == "level":
                logging.getLogger("remoteproc").setLevel(msg[1])
            elif op == "exiting":       # (the user's process: what its Connections still get, it never reads)
                self.exiting = True
            elif op == "sync":      # (what this process logged before it has been sent: the answer follows it)
                self.send_to_user(("synced", msg[1]))
            else:
                for fd in fds or ():
                    os.close(fd)
        self.let_go_of_user_stdio()
        self.shutdown()

    def let_go_of_user_stdio(self) -> None:
        """The user's process is gone: stop holding its stdout and stderr (this process's fds 1
        and 2, inherited, and those that starts not yet sent brought), so that a reader of its
        output (``prog | cat``, ``subprocess.run(capture_output=True)``) sees the end now, not
        after the bounded waits of the shutdown. Remote children's output already on its way
        is still written (``Link._finish``: bounded)."""
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
        except OSError:     # pragma: no cover - (no /dev/null: keep them)
            return
        for fd in (1, 2):
            try:
                os.dup2(devnull, fd)
            except OSError:
                pass
        os.close(devnull)
        with self.links_lock:
            links = list(self.links.values())
        for link in links:
            link.drop_pending()

    def out_of_files(self, request: dict) -> None:
        """A start whose fds the kernel could not pass: this process is at its open-files limit.
        Its status socket never arrived, so the answer goes to the user's process by name; the
        processes already running go on."""
        try:
            import resource

            limit = "%d" % resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):     # pragma: no cover
            limit = "?"
        host = request.get("host")
        text = ("%s: the local relay process is out of open files (limit %s, the hard limit of `ulimit -n`; "
                "each running remote process costs it about four): raise the hard limit "
                "(`ulimit -Hn`, /etc/security/limits.conf) or run fewer processes at once" % (host, limit))
        self.send_to_user(("refused", request.get("id"), "RemoteProcessError", text))

    def start(self, request: dict, fds: list[int]) -> None:
        status = socket.socket(fileno=fds[0])
        fds = fds[1:]
        for name, value in (request.get("environ") or {}).items():   # (client.SSH_ENVIRON, as the program has them)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        try:
            target = self.resolve(request["host"], request["options"])
        except RemoteProcessError as exc:
            ipc.refuse(status, fds, exc)
            return
        except Exception as exc:  # noqa: BLE001
            ipc.refuse(status, fds, RemoteProcessError("%s: %s" % (request["host"], exc), request["host"]))
            return
        self.submit(target, request, status, fds)

    def submit(self, target: ssh.Target, request: dict, status: socket.socket, fds: list[int]) -> None:
        """Hand a start to the host's link, opening one if there is none (also from a link's
        thread: a start that a lost link never sent)."""
        while True:
            with self.links_lock:
                link = self.links.get(target.key)
                if link is None:
                    link = self.links[target.key] = Link(target, self.opener_for(target), self.forget,
                                                         functools.partial(self.submit, target))
                    link.start()
            if link.submit(request, status, fds):
                return
            self.forget(link)

    def resolve(self, spec: str, options: dict) -> ssh.Target:
        """The request's target, read from the ssh configuration once per connection: while a link
        to what it said is alive, equal requests reuse its answer.  So a warm start stays a fork:
        'ssh -G' is a process (5-12 ms, transport="openssh"), and a ``Match exec`` of the user's
        config runs a command (the starts of a Pool waited for it one after another).  (A config
        edit applies from the next connection on, as to an ssh that rides a ControlMaster.)"""
        memo = repr((spec, sorted(options.items())))
        with self.links_lock:
            known = self.resolved.get(memo)
            if known is not None and known.key in self.links:
                return known
        target = _resolve(spec, options)
        with self.links_lock:
            self.resolved[memo] = target
        return target

    def interrupt(self, signum, frame) -> None:
        """The SIGINT handler: Ctrl-C reaches the whole foreground process group, so pass it on
        to the remote children.

        A Python signal handler runs in the main thread between two of its bytecodes, possibly
        while that thread holds ``links_lock`` or a link's lock (``submit`` of a start): taking
        either here would deadlock the relay for good (no start served any more, the user's
        exit waits for it). So the handler takes no lock: it notes the links there are now (a
        copy of the dict is one step under the GIL) on a queue whose ``put`` may run in a signal
        handler, and the interrupter thread interrupts them. A link made after the Ctrl-C (a
        start the program makes once it has handled it) is not interrupted, as it was not there.
        """
        self._interrupts.put(list(self.links.values()))

    def _interrupter(self) -> None:
        """Thread: each Ctrl-C the handler noted goes to the links it found (see ``interrupt``)."""
        while True:
            links = self._interrupts.get()
            if links is None:
                return
            for link in links:
                link.interrupt()

    def watch_interrupts(self) -> None:
        """Start the interrupter thread, and the handler that feeds it."""
        threading.Thread(target=self._interrupter, name="remoteproc-interrupt", daemon=True).start()
        signal.signal(signal.SIGINT, self.interrupt)

    def shutdown(self) -> None:
        self._interrupts.put(None)      # (the interrupter thread ends)
        with self.links_lock:
            links = list(self.links.values())
        for link in links:
            link.close(unread=self.exiting)
        for link in links:
            # A link still connecting (no agent channel yet: a host that does not answer, a slow
            # jump host) has no output to flush, and its thread may wait out the connect timeout:
            # the user's Ctrl-C or exit must not wait for it.  Nothing of it runs on the host yet
            # (the connection goes with this process; an ssh of transport="openssh" is ended below).
            link.join(10 if link.chan is not None else 0.2)
        self.paramiko.close()
        if self.openssh is not None:
            self.openssh.close()


def _resolve(spec: str, options: dict) -> ssh.Target:
    """The target of a start request, as its transport sees it."""
    if options.get("transport") == "openssh":
        from ..ssh import openssh

        return openssh.resolve(spec, options)
    return ssh.resolve(spec, options)


def main(fd: int) -> None:
    """Entry point of the relay process; ``fd`` is its end of the socketpair."""
    # A user's process started without stdout or stderr passes that on: the connections made
    # here must not take fds 1 and 2 (a ProxyCommand's stderr goes there, and the shutdown
    # points them at /dev/null).
    stdio.sanitise()
    preload = threading.Thread(target=paramiko_shims.preload, name="remoteproc-preload", daemon=True)
    preload.start()
    raise_fd_limit()        # every remote process costs the relay about four fds
    sock = socket.socket(fileno=fd)
    relay = Relay(sock)
    root = logging.getLogger("remoteproc")
    root.addHandler(_ForwardHandler(relay))
    root.propagate = False
    root.setLevel(logging.INFO)
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False
    relay.watch_interrupts()
    # Ctrl-Z stops the user's program, not the relay: a stopped relay would answer no keepalive,
    # and every agent, hearing nothing past its bound, would end the remote processes (as on a
    # lost link); a stopped local program's remote children keep running, as ssh's do
    signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    # A hangup neither: the relay ends when the user's process does (its socket closes), cleaning up
    # the hosts first.  The ``ssh`` processes it starts inherit the ignored SIGHUP, and ssh keeps it
    # ignored: a jump host's ``ssh -W`` that lost its own connection is then not ended by ssh's
    # SIGHUP before it says so, and the error names the jump host rather than the target.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])     # (blocked by relay/client.py until now)
    relay.serve()     # returns when the user's process is gone; threads here are daemons
    # ... but one still importing paramiko (cryptography's compiled code) when the interpreter
    # finalizes aborts the process ("FATAL: exception not rethrown") in a user whose program
    # ended at once (an error before the first connection): let the import finish first.
    preload.join(PRELOAD_WAIT)
