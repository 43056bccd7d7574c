"""Lock, RLock, Semaphore, BoundedSemaphore, Condition and Barrier across hosts: the owner's side.

They follow the rules of ``queues.py``: the process that creates one owns its
state; every process it is handed to (a RemoteProcess on any host, a local child, a
Pool worker through ``initargs``) gets a Connection of its own to the owner's broker
thread and a proxy (``agent/synchronize.py``).  A lock is held by a thread of a
process, named by ``(process token, thread id)``; when the last Connection of a
process closes (it exited, was killed, or its host went away), the locks it held are
released and its waits are dropped, so the next ``acquire`` succeeds.

Everything is decided under one mutex per object (a Condition shares its lock's), in
the broker thread for children and in the caller's thread for the owner itself, so
a child's ``Condition.wait`` is one round trip: the owner releases the lock, parks
the waiter, and answers only once it holds the lock again.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from .agent import proxies as P
from .agent import synchronize as S
from .owned import _get_broker, _Owned, _Waiter, is_number

__all__ = ["Barrier", "BoundedSemaphore", "Condition", "Lock", "RLock", "Semaphore"]

log = logging.getLogger("remoteproc")

Holder = tuple      # (process token, thread id)


class _SyncWaiter(_Waiter):
    """A waiter that names its thread: who gets the lock, how often (RLock), and what it is told."""

    __slots__ = ("holder", "count", "result", "access")
    result: Any         # what the waiter is told when it gets its turn (True, False, an index)

    def __init__(self, obj, waitlist, conn, rid, timeout, holder):
        super().__init__(obj, waitlist, conn, rid, timeout)
        self.holder = holder
        self.count = 1
        self.result = True
        self.access: Optional[Callable] = None     # shared values: the access to make once the lock is free


class _Sync(_Owned):
    """What the primitives share: who is asking, and waiting in the owner with a timeout."""

    _rebuild = staticmethod(S.rebuild)

    def _holder(self, conn, tid) -> Holder:
        if conn is None:
            return (P.process_token(), tid)
        return (_get_broker().tokens.get(conn, id(conn)), tid)

    def _me(self) -> Holder:
        return (P.process_token(), threading.get_ident())

    def _call(self, op, *args, timeout=None):
        """The owner's own calls: same code as a child's request; ERROR raises here."""
        with self._lock:
            result = self._start(op, args, None, 0)
        if isinstance(result, _Waiter):
            w = result
            assert w.event is not None          # a waiter of this process
            try:
                remaining = None if w.deadline is None else max(0.0, w.deadline - time.monotonic())
                if not w.event.wait(remaining):
                    self._time_out(w)
                    w.event.wait()
            except BaseException:
                self._abandon(w)
                raise
            result = (w.status, w.value)
        if result[0] == P.ERROR:
            raise result[1]
        return result

    def _time_out(self, w) -> None:
        with self._lock:
            if not w.done:
                self._expire(w)

    def _expire(self, w) -> None:
        w.done = True
        w.waitlist.remove(w)
        self._fulfil(w, P.TIMEOUT, False)

    def _drop_waiters(self, waitlist, token) -> None:
        for w in [w for w in waitlist if w.holder[0] == token]:
            w.done = True
            waitlist.remove(w)

    def _check_proxy_free(self, what: str) -> None:
        if self._proxy is not None:
            raise RuntimeError("a %s must be created in the process that owns its lock (process %d)"
                               % (what, self._owner))


# -- locks and semaphores ---------------------------------------------------------------------

class _SemLock(_Sync):
    """A counter with a FIFO of waiters; Lock and RLock also know which thread holds them."""

    _mode = "sem"       # "lock", "rlock" or "sem"

    def __init__(self, value: int = 1, maxvalue: Optional[int] = None) -> None:
        if value < 0:       # (multiprocessing's sem_open refuses it: EINVAL), before anything is registered
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        super().__init__()
        self._value = value
        self._maxvalue = maxvalue
        self._holder_: Optional[Holder] = None
        self._count = 0
        self._waiters: deque = deque()

    def _config(self) -> dict:
        return {"owner": self._owner, "maxvalue": self._maxvalue}

    def _waitlists(self):
        return (self._waiters,)

    # -- the state, under self._lock ---------------------------------------------------------
    def _available(self, h: Holder) -> bool:
        if self._mode == "rlock":
            return self._holder_ is None or self._holder_ == h
        return self._value > 0

    def _free_for(self, h: Holder) -> bool:
        """A shared value's access may go ahead: nobody else holds the lock."""
        if self._mode == "sem":
            return self._value > 0
        return self._holder_ is None or self._holder_ == h

    def _held_by(self, h: Holder) -> bool:
        return self._holder_ == h

    def _take(self, h: Holder, count: int = 1) -> None:
        if self._mode == "rlock":
            if self._holder_ == h:
                self._count += count
            else:
                self._holder_, self._count = h, count
            return
        self._value -= 1
        if self._mode == "lock":
            self._holder_, self._count = h, 1

    def _untake(self, h: Holder, count: int = 1) -> None:
        if self._mode == "rlock":
            self._count -= count
            if self._count <= 0:
                self._holder_, self._count = None, 0
            return
        self._value += 1
        if self._mode == "lock":
            self._holder_, self._count = None, 0

    def _give(self, h: Holder) -> None:
        if self._mode == "rlock":
            if self._holder_ != h:
                raise AssertionError("attempt to release recursive lock not owned by thread")
        elif self._maxvalue is not None and self._value >= self._maxvalue:
            raise ValueError("semaphore or lock released too many times")
        self._untake(h)
        self._grant()

    def _release_all(self, h: Holder) -> int:
        """Condition.wait: give the lock up entirely; returns how often it was held."""
        count = self._count if self._mode == "rlock" else 1
        self._untake(h, count)
        self._grant()
        return count

    def _enqueue(self, w: _SyncWaiter) -> None:
        w.obj, w.waitlist = self, self._waiters
        self._waiters.append(w)
        self._grant()

    def _grant(self) -> None:
        """Hand the lock to waiters, first come first served."""
        while self._waiters:
            w = self._waiters[0]
            if w.access is not None:
                if not self._free_for(w.holder):
                    return
                self._waiters.popleft()
                try:
                    reply = (P.OK, w.access())
                except Exception as exc:
                    reply = (P.ERROR, exc)
                self._fulfil(w, *reply)
                continue
            if not self._available(w.holder):
                return
            self._waiters.popleft()
            self._take(w.holder, w.count)
            if not self._fulfil(w, P.OK, w.result):
                self._untake(w.holder, w.count)         # that child is gone: not held by it

    def _abandon(self, w) -> None:
        """An owner's acquire interrupted (KeyboardInterrupt): not waiting any more, not holding."""
        with self._lock:
            if not w.done:
                w.done = True
                w.waitlist.remove(w)
            elif w.status == P.OK and w.access is None:
                self._untake(w.holder, w.count)
                self._grant()

    def _withdraw(self, w) -> None:
        super()._withdraw(w)
        self._grant()           # (those behind it may go on: a shared value's access of the holder's)

    def _process_gone(self, token: str) -> None:
        with self._lock:
            self._drop_waiters(self._waiters, token)
            if self._holder_ is not None and self._holder_[0] == token:
                log.debug("remoteproc.%s: released, its holder %s has gone", self._kind, token)
                self._untake(self._holder_, self._count)
            self._grant()

    def _start(self, op, args, conn, rid):
        if op == S.ACQUIRE:
            tid, block, timeout = args
            h = self._holder(conn, tid)
            if self._available(h) and (not self._waiters or self._holder_ == h):
                self._take(h)
                return P.OK, True
            if not block or (timeout is not None and timeout <= 0):
                return P.TIMEOUT, False
            w = _SyncWaiter(self, self._waiters, conn, rid, timeout, self._holder(conn, tid))
            self._waiters.append(w)
            return w
        if op == S.RELEASE:
            self._give(self._holder(conn, args[0]))
            return P.OK, None
        if op == S.STATE:
            return P.OK, self._state(self._holder(conn, args[0]))
        raise ValueError("%s: unknown request %r" % (self._kind, op))

    def _state(self, h: Holder):
        if self._mode == "sem":
            return self._value
        if self._holder_ == h:
            return "mine", self._count
        if self._holder_ is None:
            return "None", 0
        if self._holder_[0] == h[0]:
            return "SomeOtherThread", self._count
        return "SomeOtherProcess", self._count

    # -- the API --------------------------------------------------------------------------------
    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        if self._proxy is not None:
            return self._proxy.acquire(block, timeout)
        return self._call(S.ACQUIRE, threading.get_ident(), block, timeout)[0] == P.OK

    def release(self) -> None:
        if self._proxy is not None:
            return self._proxy.release()
        with self._lock:
            self._give(self._me())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *args) -> None:
        self.release()

    def _my_state(self):
        if self._proxy is not None:
            return self._proxy._state()
        with self._lock:
            return self._state(self._me())


class Lock(_SemLock):
    """``multiprocessing.Lock`` for local and remote processes; held by a thread of a process.

    As multiprocessing's, any thread may release it; unlike it, a holder that dies (or
    whose host is lost) releases it."""

    _kind = "Lock"
    _mode = "lock"

    def __init__(self) -> None:
        super().__init__(1, 1)

    def __repr__(self) -> str:
        try:
            who, count = self._my_state()
            name = S.lock_name(who, count, False)[0]
        except Exception:
            name = "unknown"
        return "<Lock(owner=%s)>" % name


class RLock(_SemLock):
    """``multiprocessing.RLock``: recursive; only the holding thread may release it."""

    _kind = "RLock"
    _mode = "rlock"

    def __init__(self) -> None:
        super().__init__(1, 1)

    def __repr__(self) -> str:
        try:
            who, count = self._my_state()
            name, count = S.lock_name(who, count, True)
        except Exception:
            name, count = "unknown", "unknown"
        return "<RLock(%s, %s)>" % (name, count)


class Semaphore(_SemLock):
    """``multiprocessing.Semaphore``: its value lives in this process."""

    _kind = "Semaphore"

    def __init__(self, value: int = 1) -> None:
        super().__init__(value, None)

    def get_value(self) -> int:
        return self._my_state()

    def __repr__(self) -> str:
        try:
            value = self._my_state()
        except Exception:
            value = "unknown"
        return "<%s(value=%s)>" % (self._kind, value)


class BoundedSemaphore(Semaphore):
    """``multiprocessing.BoundedSemaphore``: ``release()`` above the initial value raises ValueError."""

    _kind = "BoundedSemaphore"

    def __init__(self, value: int = 1) -> None:
        _SemLock.__init__(self, value, value)

    def __repr__(self) -> str:
        try:
            value = self._my_state()
        except Exception:
            value = "unknown"
        return "<BoundedSemaphore(value=%s, maxvalue=%s)>" % (value, self._maxvalue)


# -- condition --------------------------------------------------------------------------------

class Condition(_Sync):
    """``multiprocessing.Condition`` over a remoteproc ``Lock`` or ``RLock`` (a new ``RLock`` by default)."""

    _kind = "Condition"

    def __init__(self, lock: Optional[_SemLock] = None) -> None:
        if lock is None:
            lock = RLock()
        if not isinstance(lock, (Lock, RLock)):
            raise TypeError("remoteproc.Condition needs a remoteproc.Lock or remoteproc.RLock, not %r"
                            % type(lock).__name__)
        super().__init__()
        lock._check_proxy_free("Condition")
        self._lockobj = lock
        self._lock = lock._lock         # one mutex: a wait releases the lock and parks at once
        self._sleepers: deque = deque()

    def _config(self) -> dict:
        return {"owner": self._owner, "lock": self._lockobj}

    def _waitlists(self):
        return (self._sleepers,)

    def _start(self, op, args, conn, rid):
        lock = self._lockobj
        if op == S.COND_WAIT:
            tid, timeout = args
            h = self._holder(conn, tid)
            if not lock._held_by(h):
                raise AssertionError("must acquire() condition before using wait()")
            w = _SyncWaiter(self, self._sleepers, conn, rid, timeout, h)
            w.count = lock._release_all(h)
            self._sleepers.append(w)
            if timeout is not None and timeout <= 0:
                self._expire(w)
            return w
        if op == S.COND_NOTIFY:
            tid, n = args
            if not lock._held_by(self._holder(conn, tid)):
                raise AssertionError("lock is not owned")
            if not is_number(n):    # (multiprocessing's compares it with a count, sleepers or not)
                raise TypeError("'<' not supported between instances of 'int' and '%s'" % type(n).__name__)
            while self._sleepers and n > 0:
                w = self._sleepers.popleft()
                w.deadline = None
                lock._enqueue(w)
                n -= 1
            return P.OK, None
        if op == S.STATE:
            return P.OK, len(self._sleepers)
        raise ValueError("Condition: unknown request %r" % (op,))

    def _expire(self, w) -> None:
        """Timed out: no longer asleep, but it returns (False) only once it holds the lock again."""
        if w.waitlist is self._sleepers:
            self._sleepers.remove(w)
            w.result = False
            w.deadline = None
            self._lockobj._enqueue(w)

    def _abandon(self, w) -> None:
        """An owner's wait interrupted (KeyboardInterrupt): as multiprocessing's ``finally``, it
        holds the lock again before the exception goes on."""
        with self._lock:
            if w.waitlist is self._sleepers and w in self._sleepers:
                self._expire(w)
        assert w.event is not None
        w.event.wait()

    def _cancel(self, conn, rid) -> None:
        """A child's wait interrupted: as multiprocessing's ``finally``, it answers once it holds the
        lock again (asleep: woken now; notified: already in the lock's line, it stays there)."""
        for w in list(self._sleepers):
            if w.conn is conn and w.rid == rid and not w.done:
                self._expire(w)
                return

    def _process_gone(self, token: str) -> None:
        with self._lock:
            self._drop_waiters(self._sleepers, token)

    # multiprocessing's Condition counts its sleepers in three semaphores, which code (CPython's
    # tests among it) reads: the same numbers, read-only.
    @property
    def _sleeping_count(self) -> "_Count":
        return _Count(lambda: self._sleepers_now())

    @property
    def _woken_count(self) -> "_Count":
        return _Count(lambda: 0)

    @property
    def _wait_semaphore(self) -> "_Count":
        return _Count(lambda: 0)

    def _sleepers_now(self) -> int:
        if self._proxy is not None:
            return self._proxy._client.call(S.STATE, threading.get_ident())[1]
        with self._lock:
            return len(self._sleepers)

    # -- the API --------------------------------------------------------------------------------
    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        return self._lockobj.acquire(block, timeout)

    def release(self) -> None:
        self._lockobj.release()

    def __enter__(self) -> bool:
        return self._lockobj.__enter__()

    def __exit__(self, *args) -> None:
        return self._lockobj.__exit__(*args)

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._proxy is not None:
            return self._proxy.wait(timeout)
        return self._call(S.COND_WAIT, threading.get_ident(), timeout)[1]

    def wait_for(self, predicate: Callable, timeout: Optional[float] = None):
        return S.wait_for(self, predicate, timeout)

    def notify(self, n: int = 1) -> None:
        if self._proxy is not None:
            return self._proxy.notify(n)
        self._call(S.COND_NOTIFY, threading.get_ident(), n)

    def notify_all(self) -> None:
        self.notify(sys.maxsize)

    def __repr__(self) -> str:
        if self._proxy is not None:
            return repr(self._proxy)
        with self._lock:
            sleepers = len(self._sleepers)
        return "<Condition(%r, %s)>" % (self._lockobj, sleepers)


class _Count:
    """``get_value()`` of a number kept elsewhere."""

    def __init__(self, get: Callable[[], int]) -> None:
        self.get_value = get


# -- barrier ----------------------------------------------------------------------------------

class Barrier(_Sync):
    """``multiprocessing.Barrier``: ``wait``, ``abort``, ``reset``, ``parties``, ``n_waiting``, ``broken``.

    The last party to arrive runs ``action`` in its own process, as threading's does;
    a party that times out, or whose process goes away while it waits, breaks the barrier."""

    _kind = "Barrier"

    def __init__(self, parties: int, action: Optional[Callable] = None, timeout: Optional[float] = None) -> None:
        super().__init__()
        self._parties = parties
        self._action = action
        self._default_timeout = timeout
        self._waiting: deque = deque()
        self._queued: deque = deque()       # arrivals while the action runs: the next round
        self._running: Optional[Holder] = None
        self._broken = False

    def _config(self) -> dict:
        return {"owner": self._owner, "parties": self._parties, "action": self._action}

    def _waitlists(self):
        return (self._waiting, self._queued)

    def _start(self, op, args, conn, rid):
        if op == S.BARRIER_WAIT:
            tid, timeout = args
            if timeout is None:
                timeout = self._default_timeout
            w = _SyncWaiter(self, self._queued, conn, rid, timeout, self._holder(conn, tid))
            if self._running is not None:
                self._queued.append(w)
                return w
            return self._arrive(w)
        if op == S.ACTION_DONE:
            if self._running is not None:
                self._running = None
                if args[0]:
                    self._release_all()
                else:
                    self._break()
            return P.OK, None
        if op == S.ABORT:
            self._break()
            return P.OK, None
        if op == S.RESET:
            self._break()
            self._broken = False
            return P.OK, None
        if op == S.STATE:
            return P.OK, (0 if self._broken else len(self._waiting), self._broken)
        raise ValueError("Barrier: unknown request %r" % (op,))

    def _arrive(self, w: _SyncWaiter):
        if self._broken:
            raise threading.BrokenBarrierError
        index = len(self._waiting)
        if index + 1 < self._parties:
            w.result = index
            w.waitlist = self._waiting
            self._waiting.append(w)
            if w.deadline is not None and w.deadline <= time.monotonic():
                self._expire(w)
            return w
        w.deadline = None
        if self._action is not None:
            self._running = w.holder
            return P.RUN, index
        self._release_all()
        return P.OK, index

    def _release_all(self) -> None:
        while self._waiting:
            w = self._waiting.popleft()
            self._fulfil(w, P.OK, w.result)
        self._rearrive()

    def _rearrive(self) -> None:
        while self._queued and self._running is None:
            w = self._queued.popleft()
            try:
                reply = self._arrive(w)
            except threading.BrokenBarrierError as exc:
                reply = (P.ERROR, exc)
            if not isinstance(reply, _Waiter):
                self._fulfil(w, *reply)

    def _break(self) -> None:
        self._broken = True
        self._running = None
        for waitlist in (self._waiting, self._queued):
            while waitlist:
                self._fulfil(waitlist.popleft(), P.ERROR, threading.BrokenBarrierError())

    def _expire(self, w) -> None:
        self._break()

    def _forget(self, conn) -> None:
        with self._lock:
            if any(w.conn is conn for w in self._waiting):
                self._break()           # a party that will never arrive again
            super()._forget(conn)

    def _process_gone(self, token: str) -> None:
        with self._lock:
            if any(w.holder[0] == token for w in self._waiting) or (
                    self._running is not None and self._running[0] == token):
                log.debug("remoteproc.Barrier: broken, a party (%s) has gone", token)
                self._drop_waiters(self._waiting, token)
                self._break()
            self._drop_waiters(self._queued, token)

    # -- the API --------------------------------------------------------------------------------
    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        if self._proxy is not None:
            return self._proxy.n_waiting
        return self._call(S.STATE)[1][0]

    @property
    def broken(self) -> bool:
        if self._proxy is not None:
            return self._proxy.broken
        return self._call(S.STATE)[1][1]

    def wait(self, timeout: Optional[float] = None) -> int:
        if self._proxy is not None:
            return self._proxy.wait(timeout)
        status, index = self._call(S.BARRIER_WAIT, threading.get_ident(), timeout)
        if status == P.RUN:
            S.run_action(self._action, lambda ok: self._call(S.ACTION_DONE, ok))
        return index

    def abort(self) -> None:
        if self._proxy is not None:
            return self._proxy.abort()
        self._call(S.ABORT)

    def reset(self) -> None:
        if self._proxy is not None:
            return self._proxy.reset()
        self._call(S.RESET)

    def __repr__(self) -> str:
        return S.barrier_repr(self)
