"""The child's side of remoteproc's locks, conditions, barriers and shared values.

Like the queues of ``proxies.py``, these objects live in the process that created
them (``remoteproc/synchronize.py``, ``remoteproc/sharedctypes.py``); a child holds a
proxy that turns each call into one request on its own Connection to the owner.
A lock is held by a thread of a process: every request names the thread, and the
owner knows the process by the token its proxies sent when they attached.
Shipped to remote hosts: standard library only.
"""

import sys
import threading
import time
from multiprocessing import process as _mp_process

from .proxies import OK, RUN, _Proxy

# requests (1-12: proxies.py)
ACQUIRE = 13        # (tid, block, timeout)
RELEASE = 14        # (tid,)
STATE = 15          # (tid,) -> lock: (who, count); semaphore: value; condition: sleepers; barrier: (n_waiting, broken)
COND_WAIT = 16      # (tid, timeout) -> True/False, once the lock is held again
COND_NOTIFY = 17    # (tid, n)
BARRIER_WAIT = 18   # (tid, timeout) -> index; status RUN: run the action, then ACTION_DONE
ACTION_DONE = 19    # (ok,)
ABORT = 20
RESET = 21
GET = 22            # (tid, raw, key): key an attribute name, an index or a slice
SET = 23            # (tid, raw, key, value)
REPR = 24           # () -> repr of the shared ctypes object

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Barrier", "rebuild"]


def _tid():
    return threading.get_ident()


def lock_name(who, count, recursive):
    """multiprocessing's repr of a lock, from the owner's answer to STATE."""
    if who == "mine":
        name = _mp_process.current_process().name
        if threading.current_thread().name != "MainThread":
            name += "|" + threading.current_thread().name
    else:
        name = who
        if recursive and who != "None":
            count = "nonzero"
    return name, count


# -- locks and semaphores ---------------------------------------------------------------------

def item_key(i):
    """An item's key as ctypes takes it (the owner's Array and a child's proxy both check it): a
    str is no index, and in a GET or SET request a str key names an attribute (``value``, ``raw``)."""
    if isinstance(i, str):
        raise TypeError("indices must be integers")
    return i


class _SemLock(_Proxy):
    _what = "Lock"

    def acquire(self, block=True, timeout=None):
        return self._client.call(ACQUIRE, _tid(), block, timeout)[0] == OK

    def release(self):
        # One round trip even where it cannot fail: the release must have happened in the owner
        # before anything this process does next (a put on a Queue, a message on a Pipe), and
        # the owner serves every object's Connection on its own, in no order between them.
        self._client.call(RELEASE, _tid())

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *args):
        self.release()

    def _state(self):
        return self._client.call(STATE, _tid())[1]


class Lock(_SemLock):
    _what = "Lock"

    def __repr__(self):
        try:
            who, count = self._state()
            name = lock_name(who, count, False)[0]
        except Exception:
            name = "unknown"
        return "<Lock(owner=%s)>" % name


class RLock(_SemLock):
    _what = "RLock"

    def __repr__(self):
        try:
            who, count = self._state()
            name, count = lock_name(who, count, True)
        except Exception:
            name, count = "unknown", "unknown"
        return "<RLock(%s, %s)>" % (name, count)


class Semaphore(_SemLock):
    _what = "Semaphore"

    def get_value(self):
        return self._state()

    def __repr__(self):
        try:
            value = self._state()
        except Exception:
            value = "unknown"
        return "<%s(value=%s)>" % (self._what, value)


class BoundedSemaphore(Semaphore):
    _what = "BoundedSemaphore"

    def __repr__(self):
        try:
            value = self._state()
        except Exception:
            value = "unknown"
        return "<BoundedSemaphore(value=%s, maxvalue=%s)>" % (value, self._config["maxvalue"])


# -- condition ------------------------------------------------------------------------------

class _Guarded:
    """An object whose acquire/release and ``with`` are those of its lock, a proxy of its own
    (config["lock"]): a Condition, a synchronized Value or Array."""

    def _guard(self, config):
        self._lock = config["lock"]
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)


class Condition(_Guarded, _Proxy):
    """``multiprocessing.Condition``: its lock is a proxy of its own (config["lock"])."""

    _what = "Condition"

    def __init__(self, conn, config):
        _Proxy.__init__(self, conn, config)
        self._guard(config)

    def wait(self, timeout=None):
        return self._client.call(COND_WAIT, _tid(), timeout)[1]

    def wait_for(self, predicate, timeout=None):
        return wait_for(self, predicate, timeout)

    def notify(self, n=1):
        self._client.call(COND_NOTIFY, _tid(), n)

    def notify_all(self):
        self.notify(sys.maxsize)

    def __repr__(self):
        try:
            sleepers = self._client.call(STATE, _tid())[1]
        except Exception:
            sleepers = "unknown"
        return "<Condition(%r, %s)>" % (self._lock, sleepers)


def wait_for(cond, predicate, timeout=None):
    """``Condition.wait_for``, as multiprocessing (and threading) write it."""
    result = predicate()
    if result:
        return result
    endtime = None if timeout is None else time.monotonic() + timeout
    waittime = None
    while not result:
        if endtime is not None:
            waittime = endtime - time.monotonic()
            if waittime <= 0:
                break
        cond.wait(waittime)
        result = predicate()
    return result


# -- barrier --------------------------------------------------------------------------------

class Barrier(_Proxy):
    """``multiprocessing.Barrier``: the count lives in the owner; the last party runs the action."""

    _what = "Barrier"

    @property
    def parties(self):
        return self._config["parties"]

    @property
    def n_waiting(self):
        return self._client.call(STATE, _tid())[1][0]

    @property
    def broken(self):
        return self._client.call(STATE, _tid())[1][1]

    def wait(self, timeout=None):
        status, index = self._client.call(BARRIER_WAIT, _tid(), timeout)
        if status == RUN:
            run_action(self._config["action"], lambda ok: self._client.call(ACTION_DONE, ok))
        return index

    def abort(self):
        self._client.call(ABORT)

    def reset(self):
        self._client.call(RESET)

    def __repr__(self):
        return barrier_repr(self)


def barrier_repr(barrier):
    """threading's (and multiprocessing's) repr of a Barrier."""
    name = "remoteproc.synchronize.Barrier"
    if barrier.broken:
        return "<%s at %#x: broken>" % (name, id(barrier))
    return "<%s at %#x: waiters=%d/%d>" % (name, id(barrier), barrier.n_waiting, barrier.parties)


def run_action(action, done):
    """The last party runs the barrier's action; if it raises, the barrier breaks."""
    try:
        action()
    except BaseException:
        done(False)
        raise
    done(True)


# -- shared values --------------------------------------------------------------------------

class _Shared(_Proxy):
    """A ctypes object of the owner: every access is one request."""

    _what = "Value"
    _raw = False

    def _get(self, key):
        return self._client.call(GET, _tid(), self._raw, key)[1]

    def _set(self, key, value):
        self._client.call(SET, _tid(), self._raw, key, value)

    def _obj_repr(self):
        return self._client.call(REPR)[1]


class _Synchronized(_Guarded, _Shared):
    """Synchronized, SynchronizedArray, SynchronizedString: the wrapper with a lock."""

    def __init__(self, conn, config):
        _Shared.__init__(self, conn, config)
        self._guard(config)

    def get_lock(self):
        return self._lock

    def get_obj(self):
        return _raw_view(self)

    def __repr__(self):
        return "<%s wrapper for %s>" % (self._config["class"], self._obj_repr())


class _Value(_Shared):
    """``.value`` (and the fields of a Structure) of a shared Value."""

    @property
    def value(self):
        return self._get("value")

    @value.setter
    def value(self, v):
        self._set("value", v)

    def __getattr__(self, name):
        if name in self.__dict__.get("_config", {}).get("fields", ()):
            return self._get(name)
        raise AttributeError("%r object has no attribute %r" % (type(self).__name__, name))

    def __setattr__(self, name, v):
        if name in self.__dict__.get("_config", {}).get("fields", ()):
            self._set(name, v)
        else:
            object.__setattr__(self, name, v)


class _Array(_Shared):
    """Indexing and slicing of a shared Array, each one request; ``len`` is known here."""

    def __len__(self):
        return self._config["length"]

    def __getitem__(self, i):
        return self._get(item_key(i))

    def __setitem__(self, i, v):
        self._set(item_key(i), v)

    def __iter__(self):
        return iter(self._get(slice(None)))      # one request for the whole array


class _String(_Array):
    @property
    def value(self):
        return self._get("value")

    @value.setter
    def value(self, v):
        self._set("value", v)

    @property
    def raw(self):
        return self._get("raw")

    @raw.setter
    def raw(self, v):
        self._set("raw", v)


class Synchronized(_Value, _Synchronized):
    pass


class SynchronizedArray(_Array, _Synchronized):
    pass


class SynchronizedString(_String, _Synchronized):
    pass


class _Raw(_Shared):
    """RawValue / RawArray, and what ``get_obj()`` returns: no lock taken."""

    _raw = True

    def __repr__(self):
        return self._obj_repr()


class RawValue(_Value, _Raw):
    pass


class RawArray(_Array, _Raw):
    pass


class RawString(_String, _Raw):
    pass


_RAW_OF = {Synchronized: RawValue, SynchronizedArray: RawArray, SynchronizedString: RawString}


def _raw_view(wrapper):
    """``get_obj()``: the same Connection, without the lock."""
    view = object.__new__(_RAW_OF[type(wrapper)])
    view.__dict__.update(_client=wrapper._client, _config=wrapper._config)
    return view


KINDS = {
    "Lock": Lock, "RLock": RLock, "Semaphore": Semaphore, "BoundedSemaphore": BoundedSemaphore,
    "Condition": Condition, "Barrier": Barrier,
    "Synchronized": Synchronized, "SynchronizedArray": SynchronizedArray,
    "SynchronizedString": SynchronizedString, "RawValue": RawValue, "RawArray": RawArray,
    "RawString": RawString,
}


def rebuild(kind, conn, config):
    """Unpickling hook: the proxy for one object, on this process's own Connection."""
    return KINDS[kind](conn, config)
