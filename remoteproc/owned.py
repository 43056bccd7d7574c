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

The broker never blocks on one Connection: the owner's ends are non-blocking, requests are
read as bytes arrive and served once whole (``_Chan``), and a reply the peer does not take at
once waits in the owner until its socket takes it.  So a process that stops in the middle of
a message (SIGSTOP, a link that stalls mid-frame) or stops reading its answers stalls only
itself, never the other processes and objects of the program.
``queues.py`` and ``synchronize.py`` build their objects on ``_Owned``.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import queue as _queue
import selectors
import struct
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
_READ_SIZE = 256 << 10  # bytes of one read (into the server thread's one buffer)
_READS_PER_TURN = 8     # reads of one connection before looking at the others
_HEADER = struct.Struct("!i")   # multiprocessing's frame: a signed 4-byte big-endian length, or
_LONG = struct.Struct("!Q")     # -1 and an unsigned 8-byte length (2 GiB and more; CPython 3.8-3.13)
_MINUS_ONE = _HEADER.pack(-1)
SETTLE_WAIT = 1.0       # seconds join() waits for the owner to drop an ended process's Connections
#: the broker's longest sleep: a deadline further away (a child's get(timeout=30 days), inf) is looked
#: at again then; epoll refuses a wait past 2**31 ms, and the broker serves every Queue and Lock
MAX_SLEEP = 3600.0


def is_number(value) -> bool:
    """What multiprocessing takes for a timeout or a count: anything with ``__float__`` or ``__index__``
    (numpy's numbers and Decimal too), never a string."""
    return hasattr(type(value), "__float__") or hasattr(type(value), "__index__")


def check_timeout(timeout) -> None:
    """A timeout that is not a number is a TypeError, as multiprocessing's (whose SemLock refuses it),
    also when the call would not have waited (found by an audit: a bounded put that had room took
    ``timeout='x'``)."""
    if timeout is not None and not is_number(timeout):
        raise TypeError("must be real number, not %s" % type(timeout).__name__)


class _Waiter:
    """One blocked call: remote (conn, rid) or local (an Event the caller waits on)."""

    __slots__ = ("conn", "rid", "deadline", "item", "event", "status", "value", "done", "waitlist", "obj")

    def __init__(self, obj, waitlist, conn=None, rid=0, timeout=None, item=None):
        self.obj = obj
        self.waitlist = waitlist
        self.conn = conn
        self.rid = rid
        if timeout is not None and timeout != timeout:    # (local Queue, Lock and Event refuse it too)
            raise ValueError("timeout is NaN: give a number of seconds, or None to wait without one")
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.item = item
        self.event = threading.Event() if conn is None else None
        self.status = None
        self.value = None
        self.done = False


def _send(conn, rid, status, value) -> bool:
    """Send a reply without ever blocking: what the peer's socket does not take now is written
    by the server thread when it can (a peer that stops reading stalls only itself).  False if
    the peer is already gone (the caller then gives back what the reply handed over)."""
    if not rid:
        return True
    broker = _broker
    chan = None if broker is None else broker.chans.get(conn)
    if broker is None or chan is None:
        return False        # dropped (the child went away)
    collect = _Collect()
    P.send_msg(collect, (rid, status, value))
    ok, later = chan.send(collect.pieces)
    if later:
        broker.flush_soon(conn)
    return ok


class _Collect:
    """Stands for a Connection in ``P.send_msg``: keeps its messages, framed as
    ``Connection.send_bytes`` frames them, for one non-blocking write."""

    __slots__ = ("pieces",)

    def __init__(self) -> None:
        self.pieces: list = []

    def send_bytes(self, buf) -> None:
        view = memoryview(buf)
        if view.itemsize != 1 or not view.c_contiguous:
            view = memoryview(view.tobytes())
        n = view.nbytes
        self.pieces.append(_HEADER.pack(n) if n <= 0x7FFFFFFF else _MINUS_ONE + _LONG.pack(n))
        self.pieces.append(view)


class _BadFrame(ValueError):
    """Bytes that are not multiprocessing's framing (a length below -1)."""


class _Short(Exception):
    """A message's out-of-band frames have not all arrived yet."""


def _rest(pieces: list, n: int) -> list:
    """``pieces`` (memoryviews) without their first ``n`` bytes (a partial write)."""
    i = 0
    while i < len(pieces) and n >= len(pieces[i]):
        n -= len(pieces[i])
        i += 1
    rest = [memoryview(p) for p in pieces[i:]]
    if n:
        rest[0] = rest[0][n:]
    return rest


class _Chan:
    """The owner's end of one attached Connection, both directions, without blocking.

    In: the bytes read so far, cut into multiprocessing's frames (``feed``); a message is served
    once its frames are all here (``take``): a peer that stops in the middle of one (SIGSTOP, a
    link that stalls mid-frame) holds up nothing but itself.  Out: ``send`` writes what the
    socket takes now and keeps the rest, in order, for the server thread (``flush``)."""

    __slots__ = ("fd", "head", "body", "need", "frames", "eof", "out", "lock", "broken")

    def __init__(self, conn) -> None:
        self.fd = conn.fileno()
        self.head = b""         # a frame header split between reads
        self.body: io.BytesIO | None = None     # the frame being read, when it spans reads
        self.need = 0           # bytes of it still to come
        self.frames: list = []  # whole frames, not yet a whole message
        self.eof = False
        self.out: list = []     # memoryviews of replies the socket has not taken yet
        self.lock = threading.Lock()    # (sends come from any thread, flushes from the server thread)
        self.broken = False     # dropped, or a write failed: nothing more is written

    # -- in (server thread) --------------------------------------------------------------------
    def feed(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        frames = self.frames
        while pos < end:
            if self.body is not None:
                take = min(self.need, end - pos)
                self.body.write(data[pos:pos + take])
                pos += take
                self.need -= take
                if not self.need:
                    frames.append(self.body.getvalue())     # (no copy: the buffer is exactly full)
                    self.body = None
                continue
            if not self.head and end - pos >= 4:
                size = _HEADER.unpack_from(data, pos)[0]
                if size >= 0:
                    pos += 4
                elif size == -1 and end - pos >= 12:
                    size = _LONG.unpack_from(data, pos + 4)[0]
                    pos += 12
                elif size == -1:
                    self.head = bytes(data[pos:])
                    return
                else:
                    raise _BadFrame("frame length %d" % size)
            else:
                # a header split between reads: gather it (at most 12 bytes)
                want = 12 if self.head[:4] == _MINUS_ONE else 4
                take = min(want - len(self.head), end - pos)
                self.head += bytes(data[pos:pos + take])
                pos += take
                if len(self.head) < 4 or (len(self.head) < 12 and self.head[:4] == _MINUS_ONE):
                    continue
                if len(self.head) == 4:
                    size = _HEADER.unpack(self.head)[0]
                    if size < 0:
                        raise _BadFrame("frame length %d" % size)
                else:
                    size = _LONG.unpack_from(self.head, 4)[0]
                self.head = b""
            if end - pos >= size:
                frames.append(bytes(data[pos:pos + size]))
                pos += size
            else:
                self.body = io.BytesIO()
                self.body.write(data[pos:])
                self.need = size - (end - pos)
                pos = end

    def take(self):
        """The next whole message (``P.recv_msg``'s tuple), or None until its frames are here."""
        frames = self.frames
        if not frames:
            return None
        used = 1

        def following():
            nonlocal used
            while used < len(frames):
                used += 1
                yield frames[used - 1]
            raise _Short

        try:
            msg = pickle.loads(frames[0], buffers=following())
        except _Short:
            return None
        del frames[:used]
        return msg

    # -- out -------------------------------------------------------------------------------------
    def send(self, pieces: list) -> tuple[bool, bool]:
        """(sent or kept, the server thread must finish it)."""
        with self.lock:
            if self.broken:
                return False, False
            if self.out:                # earlier replies wait: this one goes after them
                self.out.extend(pieces)
                return True, False
            try:
                n = os.writev(self.fd, pieces)
            except BlockingIOError:
                n = 0
            except (OSError, ValueError):
                self.broken = True
                return False, False     # the child went away: the broker sees its EOF next
            if n == sum(len(p) for p in pieces):
                return True, False
            self.out = _rest(pieces, n)
            return True, True

    def flush(self) -> bool:
        """Write what the socket takes now (server thread); True once nothing is left."""
        with self.lock:
            while self.out and not self.broken:
                try:
                    n = os.writev(self.fd, self.out[:64])
                except BlockingIOError:
                    return False
                except (OSError, ValueError):
                    self.broken = True
                    break
                self.out = _rest(self.out, n)
            self.out = [] if self.broken else self.out
            return True

    def close(self) -> None:
        with self.lock:
            self.broken = True
            self.out = []


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
        self.killed: set = set()    # parent ends whose process was sent SIGKILL: it waits for nothing
        self.dropped = threading.Condition(self.lock)   # notified when a Connection is dropped
        # Connection -> (st_dev, st_ino) of its socket when we got it.  Another library that closes
        # an fd twice may close one of ours; its number is then reused by whatever is opened next.
        # An end is closed only while its fd is still the socket we got: else it is let go unclosed,
        # and the server thread lives on (an EBADF here ended it; a close would hit that other file).
        self.idents: dict = {}
        self.chans: dict = {}       # parent end -> its _Chan (bytes read but not served, replies not sent)
        self.backlog: set = set()   # parent ends with whole requests left over from the last turn
        self.flushes: _queue.SimpleQueue = _queue.SimpleQueue()  # parent ends with replies to finish
        self.rbuf = bytearray(_READ_SIZE)
        self.rview = memoryview(self.rbuf)

    # -- any thread ----------------------------------------------------------------------
    def add(self, conn, obj, child_end=None, spawner=None) -> None:
        idents = [(c, _ident(c)) for c in (conn, child_end) if c is not None]
        # (the owner's end only: the child's end keeps its blocking reads and writes)
        os.set_blocking(conn.fileno(), False)
        chan = _Chan(conn)
        with self.lock:
            self.chans[conn] = chan
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

    def flush_soon(self, conn) -> None:
        """A reply the peer's socket did not take whole: the server thread writes the rest when it
        can (only that thread touches the selector)."""
        self.flushes.put(conn)
        self.wake()

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
            chan = self.chans.pop(conn, None)
            obj = self.objs.pop(conn, None)
            child_end = self.pending.pop(conn, None)
            token = self.tokens.pop(conn, None)
            gone = token is not None and token not in self.tokens.values()
        if chan is not None:
            chan.close()            # (no write after this: the fd may be closed and reused)
        self.backlog.discard(conn)
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
            self.killed.discard(conn)
            self.dropped.notify_all()

    def withdraw_waits(self, process) -> None:
        """``process`` was sent SIGKILL: withdraw its waits now, and any that its requests still
        in flight make (``_serve``), so that a release or put before its Connections' EOF goes to
        a live waiter, never to it (it would be lost: the bytes reach a child that is gone)."""
        with self.lock:
            ends = [(c, self.objs.get(c)) for c, ref in self.carriers.items() if ref() is process]
            self.killed.update(c for c, _ in ends)
        for conn, obj in ends:
            if obj is not None:
                obj._forget(conn)

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
        # whole requests left over from the last turn (the batch limit) are served without waiting
        ready = self.sel.select(0 if self.backlog else self._timeout())
        backlog, self.backlog = self.backlog, set()
        for key, events in ready:
            conn: Any = key.fileobj
            if conn is self.waker:
                self.waker.clear()
                while not self.released.empty():
                    self._guarded(self.release, self.released.get_nowait())
                while not self.flushes.empty():
                    self._guarded(self._want_write, self.flushes.get_nowait())
                continue
            if events & selectors.EVENT_WRITE:
                self._guarded(self._flush, conn)
            if events & selectors.EVENT_READ:
                backlog.discard(conn)
                self._guarded(self._serve, conn)
        for conn in backlog:
            self._guarded(self._serve_buffered, conn)
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
                log.exception("remoteproc: dropping that Connection failed too; it is closed")
                self._discard(conn)

    def _discard(self, conn) -> None:
        """What ``drop`` must do at least, each step whatever the others do: forget ``conn`` and
        close it, so that its process gets EOF (``OwnerGone``) rather than waiting for ever, and
        the selector stops reporting it (a Connection left registered but forgotten is readable
        on every turn: the thread would spin)."""
        with self.lock:
            self.objs.pop(conn, None)
            child_end = self.pending.pop(conn, None)
            self.carriers.pop(conn, None)
            chan = self.chans.pop(conn, None)
            self.dropped.notify_all()
        if chan is not None:
            chan.close()
        self.backlog.discard(conn)
        for step, end in ((self._unregister, conn), (self._close, conn), (self._close, child_end)):
            if end is None:
                continue
            try:
                step(end)
            except Exception:  # noqa: BLE001 - the next step still runs
                log.exception("remoteproc: closing a dropped Queue/Lock/Event Connection failed")

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
            self._guarded(self._want_write, conn)   # (replies still waiting for their socket)

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
                log.exception("remoteproc: dropping a Connection failed; it is closed")
                self._discard(conn)
        with self.lock:
            self.objs.clear()
            self.pending.clear()
            self.carriers.clear()
            self.killed.clear()
            chans, self.chans = list(self.chans.values()), {}
            self.added = []
            self.thread = None
            self.dropped.notify_all()
        for chan in chans:
            chan.close()
        self.backlog = set()
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

    def _want_write(self, conn) -> None:
        """Watch ``conn`` for room while replies wait for its socket."""
        chan = self.chans.get(conn)
        if chan is None or conn.closed or not chan.out:
            return
        key = self.sel.get_map().get(chan.fd)
        if key is not None and key.fileobj is conn and not key.events & selectors.EVENT_WRITE:
            self.sel.modify(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def _flush(self, conn) -> None:
        chan = self.chans.get(conn)
        if (chan is None or chan.flush()) and not conn.closed:
            key = self.sel.get_map().get(conn.fileno())
            if key is not None and key.fileobj is conn and key.events & selectors.EVENT_WRITE:
                self.sel.modify(conn, selectors.EVENT_READ)

    def _read(self, chan: _Chan) -> None:
        """What has arrived, without blocking: at most ``_READS_PER_TURN`` reads."""
        size = len(self.rbuf)
        for _ in range(_READS_PER_TURN):
            try:
                n = os.readv(chan.fd, [self.rbuf])
            except BlockingIOError:
                return
            except OSError:
                chan.eof = True         # (a reset: as an EOF, after what came before it)
                return
            if not n:
                chan.eof = True
                return
            chan.feed(self.rview[:n])
            if n < size:                # (the socket is empty: another read would only say so)
                return

    def _serve_buffered(self, conn) -> None:
        self._serve(conn, readable=False)

    def _serve(self, conn, readable: bool = True) -> None:
        obj = self.objs.get(conn)
        chan = self.chans.get(conn)
        if obj is None or chan is None:
            return
        try:
            if readable:
                self._read(chan)
        except Exception:       # not our protocol (a bad frame length): stop listening to it
            self.drop(conn)
            return
        for _ in range(_READ_BATCH):
            try:
                msg = chan.take()
                if msg is None:
                    break
                rid, op, args = msg[0], msg[1], msg[2:]
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
                if waiter is not None and conn in self.killed:
                    obj._forget(conn)       # (sent before its process was killed: it will never take it)
                elif waiter is not None and waiter.deadline is not None:
                    self.timed.append(waiter)
            if conn not in self.objs:
                return
        else:
            self.backlog.add(conn)      # more may be whole: next turn, after the others
            return
        if chan.eof:
            self.drop(conn)             # (every whole request before the EOF was served)

    def _timeout(self):
        self.timed = [w for w in self.timed if not w.done and w.deadline is not None]
        if not self.timed:
            return None
        return min(MAX_SLEEP, max(0.0, min(w.deadline for w in self.timed) - time.monotonic()))

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


def killed(process) -> None:
    """``process`` was sent SIGKILL (``kill()``): as a local process killed, it takes no lock,
    semaphore unit or item any more, though its exit report and EOF are a round trip away."""
    broker = _broker
    if broker is not None and broker.carriers:
        broker.withdraw_waits(process)


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
    paired = []
    for obj in list(_live):
        if obj._proxy is None and obj._owner == os.getpid():
            try:
                pair = Pipe()
            except OSError:
                pair = None
            obj.__dict__.setdefault("_fork_pairs", {})[me] = pair
            paired.append(obj)
    # Held until the after-fork hooks: an object that is already garbage (a cycle not yet
    # collected) could otherwise be collected in the parent between the hooks (by any thread's
    # allocation) with its Pipe, while the child, which still has it, attaches on that Pipe (EPIPE).
    _forking[me] = paired


_forking: dict = {}     # forking thread -> the objects given a Pipe for its fork


def _take_fork_pair(obj):
    pairs = obj.__dict__.get("_fork_pairs")
    return None if not pairs else pairs.pop(threading.get_ident(), None)


def _after_fork_in_parent() -> None:
    for obj in _forking.pop(threading.get_ident(), []):
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
    kept = _forking.pop(threading.get_ident(), None)    # (alive until the loop is done)
    _forking.clear()            # (other threads' forks: they do not go on in this child)
    for obj in list(_live):
        try:
            _adopt_in_child(obj)
        except Exception as exc:  # noqa: BLE001 - one object must not leave the others owned by the child
            try:
                obj._proxy = _Unusable(obj._kind, obj._owner, exc)
            except Exception:  # noqa: BLE001 - (an object another thread was building at the fork)
                pass
    del kept


def _adopt_in_child(obj) -> None:
    """The child's side of one object: a proxy on its end of the Pipe made for this fork."""
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
    """In a forked child that could not be given a Connection (no fds left at fork time, or its
    attach failed)."""

    def __init__(self, kind: str, owner: int, error: BaseException | None = None) -> None:
        self._why = ("this %s could not be connected to its owner (process %d) when process %d was forked "
                     "from it%s; pass it to the child as a process argument instead"
                     % (kind, owner, os.getpid(), "" if error is None else " (%s)" % error))

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
            with self._lock:
                first = self._spawn_to is None
                self._spawn_to = (pickler.host, pickler.looked)
                if first:
                    self._items_by_reference()
        return self._rebuild, (self._kind, child_end, self._config())

    def _items_by_reference(self) -> None:
        """The object is given to a process on another Python for the first time: what it already
        holds must become readable there (a Queue's items; under the lock)."""

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
            if op == P.CANCEL:
                self._cancel(conn, args[0])
                return None
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

    def _cancel(self, conn, rid) -> None:
        """A child's call ``rid`` was interrupted while it waited (``_Client._withdraw``): withdraw
        it if it still waits; one answered already is undone by the child (under ``self._lock``)."""
        for w in [w for waitlist in self._waitlists() for w in waitlist]:
            if w.conn is conn and w.rid == rid and not w.done:
                self._withdraw(w)
                return

    def _withdraw(self, w) -> None:
        """Withdraw a child's waiting request: it did nothing, and its reply says so."""
        w.done = True
        w.waitlist.remove(w)
        _send(w.conn, w.rid, P.CANCELLED, None)

    def _waitlists(self):
        return ()

    def _start(self, op, args, conn, rid):
        raise NotImplementedError

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("Queue %r is closed" % self)      # (queues only: multiprocessing's words)
