"""Manager proxies passed to a RemoteProcess: the parent's side of their connections.

A ``multiprocessing`` manager listens on a Unix socket (or a loopback port) of this
machine, which a remote host cannot reach.  When the remoteproc pickler meets a proxy
whose manager listens there, it gives the remote child one *link* per manager address:
a ``Pipe()`` whose child end is bridged like any other Connection argument.  In the
child (``agent/managers.py``) every connection the proxy makes to its manager becomes
a channel of that link; here one thread per link opens a real connection to the
manager for each channel and copies messages both ways.  The authkey challenge passes
through unchanged, so the manager checks it as usual; no port is opened on either host.

Managers started with an address another host can reach (``address=("10.0.0.5", 50000)``)
are not bridged: the remote child connects to them directly, as a local one would.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import weakref
from multiprocessing import connection
from multiprocessing import context as mp_context
from typing import Any

from .agent import managers as M

__all__ = ["Manager", "reduce_proxy"]

log = logging.getLogger("remoteproc")

_LOOPBACK = ("", "localhost", "127.0.0.1", "0.0.0.0", "::", "::1")


def bridged(address: Any) -> bool:
    """True for an address only this machine can connect to (a Unix socket, loopback, any)."""
    if isinstance(address, str):
        return True
    if isinstance(address, (tuple, list)) and address:
        return str(address[0]) in _LOOPBACK or str(address[0]).startswith("127.")
    return False


def _local(address: Any) -> Any:
    """Where this process connects for ``address`` (a wildcard bind is reached on loopback)."""
    if isinstance(address, (tuple, list)) and str(address[0]) in ("", "0.0.0.0"):
        return ("127.0.0.1",) + tuple(address[1:])
    if isinstance(address, (tuple, list)) and str(address[0]) == "::":
        return ("::1",) + tuple(address[1:])
    return tuple(address) if isinstance(address, list) else address


class _Link:
    """The parent's end of one link: a thread that opens a manager connection per channel."""

    def __init__(self, address: Any, spawner: Any) -> None:
        self.address = address
        self.parent_end, self.child_end = connection.Pipe()
        self.send_lock = threading.Lock()
        self.release_lock = threading.Lock()
        #: chan -> (its Connection to the manager, its lock): the lock is held by the channel's
        #: reader closing the Connection, and by this thread writing to it or shutting it down
        #: (``_hang_up``): past the close, the fd number may be another socket's
        self.conns: dict = {}
        if spawner is not None:
            try:
                weakref.finalize(spawner, self._release)       # a start that failed: stop waiting
            except TypeError:
                pass
        threading.Thread(target=self._serve, name="remoteproc-manager-link", daemon=True).start()

    def __reduce__(self):
        return M.rebuild_link, (self.child_end, self.address)

    def _release(self) -> None:
        # From the finalizer (a start that failed, or was pickled again for another Python) and
        # from the serving thread, which sees EOF as soon as the first close is under way: one at
        # a time, else both close the fd (EBADF, or the fd of whatever was opened in between).
        with self.release_lock:
            self.child_end.close()

    def _send(self, chan: int, op: int, payload: Any) -> bool:
        try:
            with self.send_lock:
                self.parent_end.send_bytes(pickle.dumps((chan, op, payload), pickle.HIGHEST_PROTOCOL))
            return True
        except (OSError, ValueError):
            return False

    def _serve(self) -> None:
        try:
            while True:
                try:
                    chan, op, payload = pickle.loads(self.parent_end.recv_bytes())
                except (EOFError, OSError):
                    return
                self._handle(chan, op, payload)
        finally:
            for conn, lock in list(self.conns.values()):
                self._hang_up(conn, lock)
            # Under the send lock: a channel's reader may be inside send_bytes, past its closed
            # check; closed now, its write would go to whatever socket takes the fd number next
            # (seen: the program's new connection to its manager, whose challenge got our frame
            # as its digest, and the proxy call failed "digest sent was rejected").
            with self.send_lock:
                self.parent_end.close()
            self._release()

    def _handle(self, chan: int, op: int, payload: Any) -> None:
        if op == M.ATTACHED:
            self._release()
        elif op == M.OPEN:
            try:
                conn = connection.Client(_local(self.address))
            except OSError as exc:
                self._send(chan, M.FAILED, "cannot connect to the manager at %r: %s" % (self.address, exc))
                return
            lock = threading.Lock()
            self.conns[chan] = conn, lock
            threading.Thread(target=self._pump, args=(chan, conn, lock), name="remoteproc-manager-channel",
                             daemon=True).start()
        elif op == M.DATA:
            target, lock = self.conns.get(chan, (None, None))
            if target is not None:
                with lock:      # (a channel the manager ended may be closing: its number is not ours)
                    try:
                        target.send_bytes(payload)      # (OSError once closed)
                    except OSError:
                        self._send(chan, M.CLOSE, None)
        elif op == M.CLOSE:
            gone, lock = self.conns.pop(chan, (None, None))
            if gone is not None:
                self._hang_up(gone, lock)

    def _pump(self, chan: int, conn: connection.Connection, lock: threading.Lock) -> None:
        """The manager's answers on one channel, to the child; the channel's Connection is
        closed here, by its reader (see ``_hang_up``)."""
        try:
            while True:
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    break
                if not self._send(chan, M.DATA, data):
                    break
            self._send(chan, M.CLOSE, None)
        finally:
            with lock:
                conn.close()

    def _hang_up(self, conn: connection.Connection, lock: threading.Lock) -> None:
        """End a channel whose pump thread may be blocked reading it: shut its socket down, so that
        the reader sees EOF and closes it.  Closed from here, the reader would go on with a closed
        fd (a TypeError deep in multiprocessing), or with whatever socket got that fd number next.
        Under the channel's lock: a reader closing the Connection between ``fileno()`` and ``dup()``
        freed the number, and the program's next socket (a proxy's new connection to its manager)
        could take it, and be shut down here (``BrokenPipeError`` in its authentication)."""
        with lock:
            try:
                sock = socket.socket(fileno=os.dup(conn.fileno()))
            except (OSError, ValueError):
                return      # (closed already)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()


def reduce_proxy(proxy: Any, pickler: Any):
    """The remoteproc pickler's reduction of a manager proxy for a remote child."""
    func, args = proxy.__reduce__()
    address = args[1].address
    if not bridged(address):
        return func, args
    links = pickler.__dict__.setdefault("_manager_links", {})
    key = _local(address)
    link = links.get(key)
    if link is None:
        link = links[key] = _Link(address, mp_context.get_spawning_popen())
    return M.rebuild_proxy, (link,) + tuple(args)


def reduce_task_proxy(proxy: Any) -> Any:
    """A manager proxy inside a Pool or Executor task (pickled as queue items are, with no link):
    rebuilt on the worker so that, without a link from its ``initargs``, its error says why; None
    for a manager that other hosts reach directly."""
    func, args = proxy.__reduce__()
    if not bridged(args[1].address):
        return None
    return M.rebuild_task_proxy, (func, args)


def Manager() -> Any:
    """``multiprocessing.Manager()``: a started SyncManager, whose proxies may be passed to a RemoteProcess."""
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=mp_context._default_context.get_context())
    manager.start()
    return manager
