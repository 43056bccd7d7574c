"""Objects owned by the process that creates them, served to every other process by one broker.

The owner keeps the state (a Queue's items, an Event's flag, a Lock's holder); every
process the object is handed to gets a Connection of its own to one server thread in
the owner (the "broker"), and a proxy (``remoteproc.agent.proxies``) that turns method
calls into requests on it:

* a ``RemoteProcess`` argument: ``__remoteproc_reduce__`` makes a fresh ``Pipe()``
  whose child end the remoteproc pickler bridges to the remote host like any
  other Connection;
* a local ``multiprocessing`` child started with *spawn* or *forkserver*:
  ``__reduce__`` does the same and multiprocessing passes the end as an fd;
* a local child started with *fork* (nothing is pickled): an ``os.register_at_fork``
  hook gives every live object a fresh ``Pipe()`` just before the fork; the child
  keeps one end, the owner's broker the other.

No listening socket, no extra SSH connection: the child ends ride the
connections every RemoteProcess already has.  The broker is one daemon thread
per owning process that blocks in one selector holding every attached Connection and exits
when the last child has gone; it never runs while nothing is attached.
``queues.py`` and ``synchronize.py`` build their objects on ``_Owned``.
"""

from __future__ import annotations

import logging
import os
import queue as _queue
import selectors
import threading
import time
import weakref
from multiprocessing import context as mp_context
from multiprocessing.connection import Pipe
from typing import Any

from .agent import proxies as P
from .agent.waker import Waker
from .errors import PicklingError

_READ_BATCH = 64        # requests served from one connection before looking at the others
SETTLE_WAIT = 1.0       # seconds join() waits for the owner to drop an ended process's Connections


class _Waiter:
    """One blocked call: remote (conn, rid) or local (an Event the caller waits on)."""

    __slots__ = ("conn", "rid", "deadline", "item", "event", "status", "value", "done", "waitlist", "obj")

    def __init__(self, obj, waitlist, conn=None, rid=0, timeout=None, item=None):
        self.obj = obj
        self.waitlist = waitlist
        self.conn = conn
        self.rid = rid
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.item = item
        self.event = threading.Event() if conn is None else None
        self.status = None
        self.value = None
        self.done = False


def _send(conn, rid, status, value) -> bool:
    if not rid:
        return True
    try:
        P.send_msg(conn, (rid, status, value))
        return True
    except (OSError, ValueError):
        return False        # the child went away: the broker sees its EOF next


class _Broker:
    """The owner's server thread: every attached Connection of every object."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objs: dict = {}        # parent end -> owning object
        self.pending: dict = {}     # parent end -> child end, open until the child has attached
        self.timed: list = []       # remote waiters with a deadline (server thread only)
        self.waker = Waker()
        # The server thread's selector keeps its registrations from one wait to the next: a
        # wait costs the same with 1 or 1,000 Connections attached (multiprocessing.connection.
        # wait registered every one of them again on each call, so each request cost O(N)).
        # Only the server thread registers and unregisters; ``add`` queues new ends in ``added``.
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.waker, selectors.EVENT_READ)
        self.added: list = []       # parent ends not yet registered (any thread -> server thread)
        self.tokens: dict = {}      # parent end -> the token of the process at the other end
        self.released: _queue.SimpleQueue = _queue.SimpleQueue()     # from finalizers, for the thread
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        self.carriers: dict = {}    # parent end -> weak reference to the process its child end went to
        self.dropped = threading.Condition(self.lock)   # notified when a Connection is dropped
        # Connection -> (st_dev, st_ino) of its socket when we got it.  Another library that closes
        # an fd twice may close one of ours; its number is then reused by whatever is opened next.
        # An end is closed only while its fd is still the socket we got: else it is let go unclosed,
        # and the server thread lives on (an EBADF here ended it; a close would hit that other file).
        self.idents: dict = {}

    # -- any thread ----------------------------------------------------------------------
    def add(self, conn, obj, child_end=None, spawner=None) -> None:
        idents = [(c, _ident(c)) for c in (conn, child_end) if c is not None]
        with self.lock:
            self.objs[conn] = obj
            self.added.append(conn)
            for c, ident in idents:
                self.idents[c] = ident
            if child_end is not None:
                self.pending[conn] = child_end
                if spawner is not None:
                    try:
                        self.carriers[conn] = weakref.ref(spawner)
                    except TypeError:
                        pass
                    # The process (or Popen) that carries the child end: if it goes away without
                    # the child ever attaching (a failed start), stop keeping the end open.
                    try:
                        weakref.finalize(spawner, self.release_soon, conn)
                    except TypeError:
                        pass
            start = self.thread is None
            if start:
                self.thread = threading.Thread(target=self._run, name="remoteproc-queues", daemon=True)
        if start and self.thread is not None:
            # (outside the lock: a finalizer run by the garbage collector in the new thread may
            # call release(), which takes it, while this thread waits for the start)
            self.thread.start()
        self.wake()

    def wake(self) -> None:
        self.waker.wake()

    def release_soon(self, conn) -> None:
        """``release`` from a finalizer: the garbage collector may run it in any thread, even
        one that holds ``self.lock``, so it only queues the work (``SimpleQueue.put`` is safe
        there) and wakes the server thread, which releases."""
        self.released.put(conn)
        self.wake()

    def release(self, conn) -> None:
        """The child has its end (or never will): close the owner's copy so EOF can be seen."""
        with self.lock:
            child_end = self.pending.pop(conn, None)
        if child_end is not None:
            self._close(child_end)

    def _close(self, conn) -> None:
        """Close one of our ends, unless its fd was closed under us (see ``idents``)."""
        with self.lock:
            ident = self.idents.pop(conn, None)
        if conn.closed:
            return
        fd = conn.fileno()
        now = _ident(conn)
        if ident is not None and now != ident:
            log.warning("remoteproc: fd %d of a Queue/Lock/Event Connection was closed by other code of this "
                        "process (a library that closes an fd twice?)%s", fd,
                        "" if now is None else "; the fd now belongs to another file, which is left open")
            _let_go(conn)
            return
        try:
            conn.close()
        except OSError as exc:      # (closed under us between the check and here)
            log.warning("remoteproc: closing fd %d of a Queue/Lock/Event Connection: %s", fd, exc)
            _let_go(conn)

    def drop(self, conn) -> None:
        self._unregister(conn)
        with self.lock:
            obj = self.objs.pop(conn, None)
            child_end = self.pending.pop(conn, None)
            token = self.tokens.pop(conn, None)
            gone = token is not None and token not in self.tokens.values()
        if child_end is not None:
            self._close(child_end)
        if obj is None:
            self._close(conn)
        else:
            with obj._lock:         # nobody may be sending on it while it closes
                try:
                    obj._forget(conn)
                finally:
                    self._close(conn)
        if gone:
            # The process's last Connection to us: what it held (locks) is given back.
            for other in list(_live):
                try:
                    other._process_gone(token)
                except Exception:  # noqa: BLE001 - one object's failure must not end the broker for all
                    log.exception("a %s: dropping a process that went away failed", type(other).__name__)
        with self.lock:
            self.carriers.pop(conn, None)
            self.dropped.notify_all()

    def settle(self, process, timeout: float) -> bool:
        """Wait until every Connection made for ``process``'s arguments is dropped, with what its
        process held or waited for; False if that takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while any(ref() is process for ref in self.carriers.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.dropped.wait(left)
        return True

    def attached(self, obj) -> int:
        with self.lock:
            return sum(1 for o in self.objs.values() if o is obj)

    # -- the server thread ---------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while True:
            try:
                if not self._turn():
                    return
                failures = 0
            except Exception:  # noqa: BLE001 - the thread serves every object of the program: it must not die
                failures += 1
                log.exception("remoteproc: the Queue/Lock/Event server thread (remoteproc-queues) failed")
                if failures >= 3:
                    self._fail_all()
                    return
                self._new_selector()

    def _turn(self) -> bool:
        """One wait and what it found; False once nothing is attached (the thread ends)."""
        with self.lock:
            if not self.objs:
                self.thread = None
                return False
            added, self.added = self.added, []
            added = [c for c in added if c in self.objs]
        for new in added:
            self._guarded(self._register, new)
        for key, _events in self.sel.select(self._timeout()):
            conn: Any = key.fileobj
            if conn is self.waker:
                self.waker.clear()
                while not self.released.empty():
                    self._guarded(self.release, self.released.get_nowait())
            else:
                self._guarded(self._serve, conn)
        self._expire()
        return True

    def _guarded(self, step, conn) -> None:
        """``step(conn)``; if it raises, that Connection is dropped and the others are served on."""
        try:
            step(conn)
        except Exception:  # noqa: BLE001 - one Connection's failure must not stop the others
            log.exception("remoteproc: serving a Queue/Lock/Event Connection failed; it is dropped")
            try:
                self.drop(conn)
            except Exception:  # noqa: BLE001
                log.exception("remoteproc: dropping that Connection failed too")
                with self.lock:
                    self.objs.pop(conn, None)
                    self.pending.pop(conn, None)
                    self.carriers.pop(conn, None)
                    self.dropped.notify_all()

    def _new_selector(self) -> None:
        """After an unexpected failure: a fresh selector holding every attached Connection."""
        old = self.sel
        try:
            old.close()
        except (OSError, ValueError):
            pass
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.waker, selectors.EVENT_READ)
        with self.lock:
            conns = list(self.objs)
            self.added = []
        for conn in conns:
            self._guarded(self._register, conn)

    def _fail_all(self) -> None:
        """The thread cannot go on: close every Connection, so every process attached gets EOF
        (its calls raise ``OwnerGone``) instead of waiting for ever; new ones start a new thread."""
        log.error("remoteproc: the Queue/Lock/Event server thread keeps failing; every process attached "
                  "to them is disconnected (their calls raise OwnerGone)")
        with self.lock:
            conns = list(self.objs)
        for conn in conns:
            try:
                self.drop(conn)
            except Exception:  # noqa: BLE001
                log.exception("remoteproc: dropping a Connection failed")
        with self.lock:
            self.objs.clear()
            self.pending.clear()
            self.carriers.clear()
            self.added = []
            self.thread = None
            self.dropped.notify_all()
        self._new_selector()

    def _register(self, conn) -> None:
        if conn.closed:
            return
        fd = conn.fileno()
        stale = self.sel.get_map().get(fd)
        if stale is not None:
            if stale.fileobj is conn:
                return
            # An fd number closed without drop (by other code), now reused: the Connection that had
            # it is let go (its _close leaves the new owner's fd open).
            self.sel.unregister(fd)
            if stale.fileobj in self.objs:
                self.drop(stale.fileobj)
        if self.idents.get(conn, _ident(conn)) != _ident(conn):
            self.drop(conn)         # closed under us before it was registered
            return
        self.sel.register(conn, selectors.EVENT_READ)

    def _unregister(self, conn) -> None:
        if conn.closed:
            return
        fd = conn.fileno()
        key = self.sel.get_map().get(fd)
        if key is not None and key.fileobj is conn:
            self.sel.unregister(fd)

    def _serve(self, conn) -> None:
        obj = self.objs.get(conn)
        if obj is None:
            return
        for _ in range(_READ_BATCH):
            try:
                msg = P.recv_msg(conn)
                rid, op, args = msg[0], msg[1], msg[2:]
            except (EOFError, OSError):
                self.drop(conn)
                return
            except Exception:       # not our protocol: whoever it is, stop listening to it
                self.drop(conn)
                return
            if op == P.ATTACH:
                if args:
                    with self.lock:
                        self.tokens[conn] = args[0]
                self.release(conn)
            else:
                waiter = obj._request(conn, rid, op, args)
                if waiter is not None and waiter.deadline is not None:
                    self.timed.append(waiter)
            if conn.closed or not conn.poll(0):
                return

    def _timeout(self):
        self.timed = [w for w in self.timed if not w.done and w.deadline is not None]
        if not self.timed:
            return None
        return max(0.0, min(w.deadline for w in self.timed) - time.monotonic())

    def _expire(self) -> None:
        if not self.timed:
            return
        now = time.monotonic()
        for w in self.timed:
            if not w.done and w.deadline is not None and w.deadline <= now:
                w.obj._time_out(w)

    # -- after fork, in the child ------------------------------------------------------------
    def abandon(self) -> None:
        """The owner's Connections are of no use in a forked child: close our copies."""
        for conn in list(self.objs) + list(self.pending.values()):
            try:
                conn.close()
            except OSError:
                pass
        self.waker.abandon()
        # (the epoll set is shared with the owner: close() closes our fd of it and unregisters
        # nothing from it)
        try:
            self.sel.close()
        except OSError:
            pass


def _ident(conn) -> tuple[int, int] | None:
    """What file ``conn``'s fd is now (None: the fd is closed)."""
    try:
        st = os.fstat(conn.fileno())
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _let_go(conn) -> None:
    """Forget a Connection's fd without closing it: it is not ours any more."""
    conn._handle = None     # (multiprocessing's attribute; its __del__ then closes nothing)


_broker: _Broker | None = None
_broker_lock = threading.Lock()
log = logging.getLogger("remoteproc")
_live: weakref.WeakSet = weakref.WeakSet()


def _get_broker() -> _Broker:
    global _broker
    with _broker_lock:
        if _broker is None:
            _broker = _Broker()
        return _broker


def settle(process, timeout: float = SETTLE_WAIT) -> None:
    """``process`` has ended (its exit is known): before ``join()`` returns, let the owner drop
    its Connections, so that what it held is released and its waits are gone (a ``notify()``
    right after the ``join()`` then wakes a live waiter, never the dead one).  Their EOF comes
    a few milliseconds after the exit report; ``timeout`` bounds the wait (a grandchild that
    kept a copy of the Connection open delays the EOF for as long as it lives)."""
    broker = _broker
    if broker is not None and broker.carriers:
        broker.settle(process, timeout)


def release_unstarted(spawner) -> None:
    """The pickling made for ``spawner`` will never reach a child: its start was pickled again
    (the host runs another Python) or failed.  The ends made for it are closed now, so their EOF
    drops them; otherwise they would stay open, and the server thread with them, for as long as
    the process object lives."""
    broker = _broker
    if broker is None:
        return
    with broker.lock:
        ends = [c for c, ref in broker.carriers.items() if ref() is spawner and c in broker.pending]
    for conn in ends:
        broker.release_soon(conn)


def _broker_running() -> bool:
    """True while the owner's server thread runs (for tests and diagnostics)."""
    b = _broker
    return b is not None and b.thread is not None and b.thread.is_alive()


# -- fork: each live object gets a fresh Pipe, the child keeps one end ---------------------------

def _before_fork() -> None:
    # One Pipe per object *per forking thread*: two threads that fork at once each give their own
    # child its own Pipe (with a single slot, the second overwrote the first: one child got an end
    # that the garbage collector closed, the other shared its Pipe with it).
    me = threading.get_ident()
    for obj in list(_live):
        if obj._proxy is None and obj._owner == os.getpid():
            try:
                pair = Pipe()
            except OSError:
                pair = None
            obj.__dict__.setdefault("_fork_pairs", {})[me] = pair


def _take_fork_pair(obj):
    pairs = obj.__dict__.get("_fork_pairs")
    return None if not pairs else pairs.pop(threading.get_ident(), None)


def _after_fork_in_parent() -> None:
    for obj in list(_live):
        pair = _take_fork_pair(obj)
        if pair is not None:
            parent_end, child_end = pair
            child_end.close()
            _get_broker().add(parent_end, obj)


def _after_fork_in_child() -> None:
    global _broker, _broker_lock
    old, _broker = _broker, None
    _broker_lock = threading.Lock()
    if old is not None:
        old.abandon()
    for obj in list(_live):
        pair = _take_fork_pair(obj)
        for others in obj.__dict__.pop("_fork_pairs", {}).values():
            if others is not None:      # (another thread's fork, under way at ours: not this child's)
                for end in others:
                    end.close()
        if pair is not None:
            parent_end, child_end = pair
            parent_end.close()
            obj._become_proxy(child_end)
        elif obj._proxy is None and obj._owner != os.getpid():
            obj._proxy = _Unusable(obj._kind, obj._owner)


class _Unusable:
    """In a forked child that could not be given a Connection (no fds left at fork time)."""

    def __init__(self, kind: str, owner: int) -> None:
        self._why = ("this %s could not be connected to its owner (process %d) when process %d was forked "
                     "from it; pass it to the child as a process argument instead" % (kind, owner, os.getpid()))

    def __getattr__(self, name):
        raise RuntimeError(self._why)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


# -- the objects ---------------------------------------------------------------------------------

class _Owned:
    """What Queue and Event share: ownership, attachment, the local side of waiting."""

    _kind = "object"
    _rebuild = staticmethod(P.rebuild)     # the proxy's module builds it on the other side

    def __init__(self) -> None:
        self._owner = os.getpid()
        self._lock = threading.RLock()
        self._proxy = None          # set in a forked child: then every call goes to the owner
        self._closed = False
        self._spawn_to: tuple[str, str] | None = None     # (host, looked): given to another Python
        _live.add(self)

    def _config(self) -> dict:
        return {"owner": self._owner}

    # -- crossing process boundaries ---------------------------------------------------------
    def _attach(self, where: str, spawner):
        if self._proxy is not None or self._owner != os.getpid():
            raise PicklingError(
                "this %s belongs to process %d; only that process can pass it to %s (this is process "
                "%d, which inherited it)" % (self._kind, self._owner, where, os.getpid()), None)
        parent_end, child_end = Pipe()
        _get_broker().add(parent_end, self, child_end, spawner)
        return child_end

    def __remoteproc_reduce__(self, pickler):
        """Called by remoteproc's pickler for a RemoteProcess argument: a Connection of its own."""
        try:
            child_end = self._attach("a remote process", mp_context.get_spawning_popen())
        except PicklingError as exc:
            raise PicklingError("%s on %s" % (exc, pickler.host), pickler.host) from None
        if getattr(pickler, "mode", "same") == "spawn":
            # a process on another Python gets items: from now on they go by reference
            self._spawn_to = (pickler.host, pickler.looked)
        return self._rebuild, (self._kind, child_end, self._config())

    def __reduce__(self):
        spawner = mp_context.get_spawning_popen()
        if spawner is None:
            raise P.RefusedObject(
                "remoteproc.%s objects should only be shared between processes as process arguments "
                "(RemoteProcess or multiprocessing.Process) or through inheritance" % self._kind)
        child_end = self._attach("a child process", spawner)
        return self._rebuild, (self._kind, child_end, self._config())

    def _become_proxy(self, child_end) -> None:
        self._proxy = self._rebuild(self._kind, child_end, self._config())

    # -- the owner's side ------------------------------------------------------------------------
    def _process_gone(self, token: str) -> None:
        """Every Connection of the process ``token`` has closed (locks override this)."""

    def _forget(self, conn) -> None:
        """A child went away: drop whatever it was waiting for."""
        with self._lock:
            for waitlist in self._waitlists():
                gone = [w for w in waitlist if w.conn is conn]
                for w in gone:
                    w.done = True
                    waitlist.remove(w)

    def _time_out(self, w) -> None:
        with self._lock:
            if not w.done:
                w.done = True
                w.waitlist.remove(w)
                _send(w.conn, w.rid, P.TIMEOUT, self._timeout_value())

    def _timeout_value(self):
        return None

    def _fulfil(self, w, status, value) -> bool:
        w.done = True
        if w.conn is None:
            w.status, w.value = status, value
            w.event.set()
            return True
        return _send(w.conn, w.rid, status, value)

    def _request(self, conn, rid, op, args):
        """Serve one request from a child (broker thread); returns its waiter if it must wait."""
        with self._lock:
            try:
                result = self._start(op, args, conn, rid)
            except Exception as exc:        # a bad request, or task_done() too often: the child raises
                _send(conn, rid, P.ERROR, exc)
                return None
            if isinstance(result, _Waiter):
                return result
            _send(conn, rid, *result)
            return None

    def _call(self, op, *args, timeout=None):
        """The owner's own calls: same code path as a child's request, waiting on an Event."""
        with self._lock:
            result = self._start(op, args, None, 0)
        if not isinstance(result, _Waiter):
            return result
        w = result
        assert w.event is not None      # (a local call's waiter has one)
        try:
            fired = w.event.wait(timeout)
        except BaseException:
            self._abandon(w)
            raise
        if not fired:
            with self._lock:
                if not w.done:
                    w.done = True
                    w.waitlist.remove(w)
                    return P.TIMEOUT, self._timeout_value()
        return w.status, w.value

    def _abandon(self, w) -> None:
        with self._lock:
            if not w.done:
                w.done = True
                w.waitlist.remove(w)

    def _waitlists(self):
        return ()

    def _start(self, op, args, conn, rid):
        raise NotImplementedError

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("Queue %r is closed" % self)      # (queues only: multiprocessing's words)
