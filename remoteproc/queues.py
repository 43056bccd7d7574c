"""Queue, JoinableQueue, SimpleQueue and Event across hosts: the owner's side.

The process that creates one of these objects owns it: the items (or the flag) live
there, and other processes reach them through the broker of ``owned.py``.
"""

from __future__ import annotations

import operator
import queue as _queue
from collections import deque
from typing import Any

from .agent import proxies as P
from .errors import PicklingError
from .owned import _Owned, _Waiter, check_timeout

__all__ = ["Event", "JoinableQueue", "Queue", "SimpleQueue"]


class _Queue(_Owned):
    """What every queue of this module is: items kept in this process, ``put``/``get``,
    ``empty``, ``close`` (``SimpleQueue``'s whole API, as multiprocessing's)."""

    def __init__(self, maxsize: int = 0) -> None:
        maxsize = operator.index(maxsize)     # (a float is a TypeError, as multiprocessing's semaphore makes it)
        super().__init__()
        self._maxsize = maxsize if maxsize > 0 else 0
        self._items: deque = deque()
        self._getters: deque = deque()
        self._putters: deque = deque()
        self._unfinished = 0
        self._joiners: deque = deque()

    def _config(self) -> dict:
        return {"owner": self._owner, "maxsize": self._maxsize}

    def _waitlists(self):
        return (self._getters, self._putters, self._joiners)

    def _room(self) -> bool:
        return not self._maxsize or len(self._items) < self._maxsize

    def _accept(self, item) -> None:
        self._items.append(item)
        self._unfinished += 1

    def _dispatch(self) -> None:
        """Hand items to waiting getters and room to waiting putters, first come first served."""
        progressed = True
        while progressed:
            progressed = False
            while self._getters and self._items:
                w = self._getters.popleft()
                item = self._items.popleft()
                if not self._fulfil(w, P.OK, item):
                    self._items.appendleft(item)    # that child is gone: the item is not lost
                progressed = True
            while self._putters and self._room():
                w = self._putters.popleft()
                self._accept(w.item)
                w.item = None
                self._fulfil(w, P.OK, None)
                progressed = True

    def _start(self, op, args, conn, rid):
        if op == P.PUT:
            return self._start_put(args, conn, rid)
        if op == P.GET:
            return self._start_get(args, conn, rid)
        if op == P.QSIZE:
            return P.OK, len(self._items)
        if op == P.EMPTY:
            return P.OK, not self._items
        if op == P.FULL:
            return P.OK, not self._room()
        if op == P.TASK_DONE:
            return self._task_done()
        if op == P.PUT_BACK:            # (a child's get() interrupted as the item came: see _abandon)
            self._items.appendleft(args[0])
            self._dispatch()
            return P.OK, None
        if op == P.JOIN:
            if not self._unfinished:
                return P.OK, None
            w = _Waiter(self, self._joiners, conn, rid)
            self._joiners.append(w)
            return w
        raise ValueError("%s: unknown request %r" % (self._kind, op))

    def _start_put(self, args, conn, rid):
        item, block, timeout = args
        check_timeout(timeout)
        if self._room() and not self._putters:
            self._accept(item)
            self._dispatch()
            return P.OK, None
        if not block or (timeout is not None and timeout <= 0):
            return P.TIMEOUT, None
        w = _Waiter(self, self._putters, conn, rid, timeout, item)
        self._putters.append(w)
        return w

    def _start_get(self, args, conn, rid):
        block, timeout = args
        check_timeout(timeout)
        if self._items:
            item = self._items.popleft()
            self._dispatch()
            return P.OK, item
        if not block or (timeout is not None and timeout <= 0):
            return P.TIMEOUT, None
        w = _Waiter(self, self._getters, conn, rid, timeout)
        self._getters.append(w)
        return w

    def _task_done(self):
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if not self._unfinished:
            while self._joiners:
                self._fulfil(self._joiners.popleft(), P.OK, None)
        return P.OK, None

    def _abandon(self, w) -> None:
        with self._lock:
            if not w.done:
                w.done = True
                w.waitlist.remove(w)
            elif w.waitlist is self._getters and w.status == P.OK and w.value is not None:
                # interrupted just after an item was handed to us: put it back, in front
                self._items.appendleft(w.value)
                self._dispatch()

    def _items_by_reference(self) -> None:
        """Items put here before a process on another Python got the queue were pickled for this
        Python: by value (cloudpickle: bytecode, this version's dataclass ``Field``s), which that
        process cannot load (3.8: ``code() takes at most 16 arguments``; 3.12: a segfault). Those
        that hold anything by value are pickled again, by reference, as later ones are; one that
        cannot be is left as it was (only processes of this Python can get it)."""
        spawn_to = self._spawn_to
        assert spawn_to is not None
        from .reduction import respawn_item

        def again(item):
            if not isinstance(item, (bytes, bytearray)) or b"cloudpickle" not in item:
                return item     # (plain data and by-reference pickles: every Python reads them)
            try:
                return respawn_item(item, *spawn_to)
            except Exception:   # noqa: BLE001 - it stays as it was
                return item

        self._items = deque(again(item) for item in self._items)
        for w in self._putters:
            w.item = again(w.item)

    def _dumps_spawn(self, obj: Any) -> bytes | None:
        """An item for a queue that a process on another Python shares: by reference; what
        cannot cross raises PicklingError here, anything else unpicklable is dropped (as queued)."""
        from .reduction import dumps_spawn_item

        assert self._spawn_to is not None
        try:
            return dumps_spawn_item(obj, *self._spawn_to)
        except (PicklingError, P.Refused):
            raise
        except Exception as exc:
            self._on_queue_feeder_error(exc, obj)
            return None

    # -- the API, in the owner (or, after fork, through the proxy) ----------------------------------
    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        if self._proxy is not None:
            return self._proxy.put(obj, block, timeout)
        self._check_closed()
        by_value = self._spawn_to is None
        item = P.dumps_queued(self, obj) if by_value else self._dumps_spawn(obj)
        if by_value and item is not None and self._spawn_to is not None and b"cloudpickle" in item:
            item = self._dumps_spawn(obj)   # (given to another Python while it was pickled)
        if item is None:
            return None
        status, _ = self._call(P.PUT, item, block, timeout, timeout=timeout)
        if status == P.TIMEOUT:
            raise _queue.Full

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._proxy is not None:
            return self._proxy.get(block, timeout)
        self._check_closed()
        status, item = self._call(P.GET, block, timeout, timeout=timeout)
        if status == P.TIMEOUT:
            raise _queue.Empty
        return P.loads_item(item)

    def empty(self) -> bool:
        if self._proxy is not None:
            return self._proxy.empty()
        return not self._items

    def close(self) -> None:
        """No more ``put``/``get`` from this process; other processes keep their use of it."""
        if self._proxy is not None:
            return self._proxy.close()
        self._closed = True

    _on_queue_feeder_error = staticmethod(P.on_queue_feeder_error)


class Queue(_Queue):
    """``multiprocessing.Queue`` for local and remote processes; the items live in this process.

    ``put``/``get`` with ``block`` and ``timeout`` (``queue.Full``/``queue.Empty``),
    ``qsize``, ``empty``, ``full``, ``put_nowait``, ``get_nowait``, ``close``.
    Pass it to a ``RemoteProcess`` or a ``multiprocessing.Process`` as an argument.
    """

    _kind = "Queue"

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def qsize(self) -> int:
        if self._proxy is not None:
            return self._proxy.qsize()
        return len(self._items)

    def full(self) -> bool:
        if self._proxy is not None:
            return self._proxy.full()
        with self._lock:
            return not self._room()

    def join_thread(self) -> None:
        """For API parity: there is no feeder thread (a ``put`` has left when it returns); as
        multiprocessing's, only a closed queue may be joined (``AssertionError`` otherwise)."""
        if self._proxy is not None:
            return self._proxy.join_thread()
        if not self._closed:        # (multiprocessing asserts; raised here as in the agent, whose code is optimized)
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """For API parity: there is no feeder thread to wait for."""


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: ``Queue`` plus ``task_done`` and ``join``."""

    _kind = "JoinableQueue"

    def task_done(self) -> None:
        if self._proxy is not None:
            return self._proxy.task_done()
        with self._lock:
            self._start(P.TASK_DONE, (), None, 0)

    def join(self) -> None:
        if self._proxy is not None:
            return self._proxy.join()
        self._call(P.JOIN)


class SimpleQueue(_Queue):
    """``multiprocessing.SimpleQueue``: ``put``, ``get``, ``empty``, ``close``; unbounded."""

    _kind = "SimpleQueue"

    def __init__(self) -> None:
        super().__init__(0)

    @staticmethod
    def _on_queue_feeder_error(e: BaseException, obj: Any) -> None:
        raise e     # no feeder thread: an item that cannot be pickled raises in put(), as multiprocessing's

    def _check_closed(self) -> None:
        if self._closed:
            raise OSError("handle is closed")      # (multiprocessing's closed its pipe)

    def put(self, obj: Any) -> None:    # type: ignore[override]
        if self._proxy is not None:
            return self._proxy.put(obj)
        super().put(obj)

    def get(self) -> Any:               # type: ignore[override]
        if self._proxy is not None:
            return self._proxy.get()
        return super().get()

    def empty(self) -> bool:
        self._check_closed()
        return super().empty()


class Event(_Owned):
    """``multiprocessing.Event`` for local and remote processes; the flag lives in this process."""

    _kind = "Event"

    def __init__(self) -> None:
        super().__init__()
        self._flag = False
        self._waiters: deque = deque()

    def _waitlists(self):
        return (self._waiters,)

    def _timeout_value(self):
        return False

    def _start(self, op, args, conn, rid):
        if op == P.IS_SET:
            return P.OK, self._flag
        if op == P.SET:
            self._flag = True
            while self._waiters:
                self._fulfil(self._waiters.popleft(), P.OK, True)
            return P.OK, None
        if op == P.CLEAR:
            self._flag = False
            return P.OK, None
        if op == P.WAIT:
            (timeout,) = args
            if self._flag:
                return P.OK, True
            if timeout is not None and timeout <= 0:
                return P.TIMEOUT, False
            w = _Waiter(self, self._waiters, conn, rid, timeout)
            self._waiters.append(w)
            return w
        raise ValueError("Event: unknown request %r" % (op,))

    def is_set(self) -> bool:
        if self._proxy is not None:
            return self._proxy.is_set()
        return self._flag

    def set(self) -> None:
        if self._proxy is not None:
            return self._proxy.set()
        self._call(P.SET)

    def clear(self) -> None:
        if self._proxy is not None:
            return self._proxy.clear()
        self._call(P.CLEAR)

    def wait(self, timeout: float | None = None) -> bool:
        if self._proxy is not None:
            return self._proxy.wait(timeout)
        return self._call(P.WAIT, timeout, timeout=timeout)[0] == P.OK

    def __repr__(self) -> str:
        return "<%s at %#x %s>" % (type(self).__qualname__, id(self), "set" if self.is_set() else "unset")
