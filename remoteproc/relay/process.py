"""The relay process: owns every SSH connection of one user process.

The user's process starts it on first use (``relay/client.py``) and talks to it over
a Unix socketpair; it never opens a listening socket.  Running the SSH transport
here keeps the message path free of the user's GIL: a CPU-bound thread in the
user's program does not slow its remote processes' messages.  When the user's
process dies, its socket reads EOF here, every connection is closed, and each
remote agent kills what it started.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import types

from .. import ssh
from ..agent.fdlimit import raise_fd_limit
from ..errors import RemoteProcessError
from . import ipc
from .link import Link

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


class Relay:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.pool = ssh.ConnectionPool()
        self.links: dict[tuple, Link] = {}
        self.links_lock = threading.Lock()
        self.config_cache: dict = {}

    def send_to_user(self, msg) -> None:
        with self.send_lock:
            ipc.send(self.sock, msg)

    def forget(self, link: Link) -> None:
        with self.links_lock:
            if self.links.get(link.target.key) is link:
                del self.links[link.target.key]

    def serve(self) -> None:
        for msg, fds in ipc.Receiver(self.sock):
            op = msg[0]
            if op == "start":
                self.start(msg[1], fds)
            elif op == "level":
                logging.getLogger("remoteproc").setLevel(msg[1])
            else:
                for fd in fds:
                    os.close(fd)
        self.shutdown()

    def start(self, request: dict, fds: list[int]) -> None:
        status = socket.socket(fileno=fds[0])
        fds = fds[1:]
        try:
            target = ssh.resolve(request["host"], request["options"])
        except RemoteProcessError as exc:
            ipc.refuse(status, fds, exc)
            return
        except Exception as exc:  # noqa: BLE001
            ipc.refuse(status, fds, RemoteProcessError("%s: %s" % (request["host"], exc), request["host"]))
            return
        while True:
            with self.links_lock:
                link = self.links.get(target.key)
                if link is None:
                    link = self.links[target.key] = Link(self, target)
            if link.submit(request, status, fds):
                return
            self.forget(link)

    def interrupt(self, signum, frame) -> None:
        """Ctrl-C reaches the whole foreground process group: pass it on to the remote children."""
        with self.links_lock:
            links = list(self.links.values())
        for link in links:
            link.interrupt()

    def shutdown(self) -> None:
        with self.links_lock:
            links = list(self.links.values())
        for link in links:
            link.close()
        for link in links:
            link.thread.join(10)
        self.pool.close_all()


def _preload() -> None:
    """Import paramiko while the user's process is still busy elsewhere.

    paramiko imports ``invoke`` (about 100 ms) only for its own ``Match exec`` support,
    which remoteproc does not use (remoteproc.ssh evaluates the config itself).
    """
    if "invoke" not in sys.modules:
        sys.modules["invoke"] = None    # type: ignore[assignment]
    if "paramiko" in sys.modules or "importlib.metadata" in sys.modules:
        import paramiko  # noqa: F401
        return
    # paramiko's __init__ asks importlib.metadata for its own version: importing that
    # (email, zipfile, ...) and scanning sys.path costs 40-55 ms of every cold start.
    # Answer that one question from the dist-info directory next to the package.
    shim = types.ModuleType("importlib.metadata")
    shim.version = _dist_version    # type: ignore[attr-defined]
    sys.modules["importlib.metadata"] = shim
    try:
        import paramiko  # noqa: F401
    finally:
        if sys.modules.get("importlib.metadata") is shim:
            del sys.modules["importlib.metadata"]
        if getattr(importlib, "metadata", None) is shim:
            del importlib.metadata


def _dist_version(name: str) -> str:
    """``importlib.metadata.version(name)`` for an installed package, usually without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin:
        top = os.path.dirname(spec.origin) if spec.submodule_search_locations is not None else spec.origin
        prefix = name.lower().replace("-", "_") + "-"
        try:
            found = [e for e in os.listdir(os.path.dirname(top))
                     if e.lower().startswith(prefix) and e.endswith(".dist-info")]
        except OSError:
            found = []
        if len(found) == 1:
            return found[0][len(prefix):-len(".dist-info")]
    if getattr(sys.modules.get("importlib.metadata"), "version", None) is _dist_version:
        del sys.modules["importlib.metadata"]     # not unique or not beside the package: ask properly
    from importlib import metadata

    return metadata.version(name)


def main(fd: int) -> None:
    """Entry point of the relay process; ``fd`` is its end of the socketpair."""
    threading.Thread(target=_preload, name="remoteproc-preload", daemon=True).start()
    raise_fd_limit()        # every remote process costs the relay about four fds
    sock = socket.socket(fileno=fd)
    relay = Relay(sock)
    root = logging.getLogger("remoteproc")
    root.addHandler(_ForwardHandler(relay))
    root.propagate = False
    root.setLevel(logging.INFO)
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False
    signal.signal(signal.SIGINT, relay.interrupt)
    relay.serve()     # returns when the user's process is gone; threads here are daemons
