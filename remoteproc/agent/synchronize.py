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
import types
from multiprocessing import process as _mp_process
from typing import Any

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
GET = 22            # (tid, raw, key): key an attribute name, an index, a slice, or a path (see PLAIN)
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
        tid = _tid()
        return self._client.call(ACQUIRE, tid, block, timeout, undo=lambda status, _: self._undo(status, tid))[0] == OK

    def _undo(self, status, tid):
        if status == OK:        # (granted as the acquire was interrupted: not held, as locally)
            self._client.call(RELEASE, tid)

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
        status, index = self._client.call(BARRIER_WAIT, _tid(), timeout, undo=self._undo)
        if status == RUN:
            run_action(self._config["action"], lambda ok: self._client.call(ACTION_DONE, ok))
        return index

    def _undo(self, status, _index):
        if status == RUN:       # (the last party, interrupted: its action does not run, and the barrier breaks)
            self._client.call(ACTION_DONE, False)

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

#: the last step of a GET path that asks for the part's value as plain tuples (``plain``)
PLAIN = None


def plain(value):
    """A ctypes Structure, Union or Array (or a child's view of one) as the nested tuples that
    ctypes takes back on assignment; anything else as it is.  What a child sends in a SET: its
    own Structure class need not be the owner's (it may have come by value), tuples always are."""
    if isinstance(value, _View):
        return value._root._get(value._path + (PLAIN,))
    cls = type(value)
    if type(cls).__module__ != "_ctypes":
        return value
    fields = getattr(cls, "_fields_", None)
    if fields is not None and hasattr(value, "_b_base_"):
        return tuple(plain(getattr(value, f[0])) for f in fields)
    if hasattr(cls, "_length_") and hasattr(cls, "_type_"):
        if getattr(cls._type_, "_type_", None) == "c":
            return value.raw
        if getattr(cls._type_, "_type_", None) == "u":
            return value.value
        return tuple(plain(v) for v in value)
    return value


def resolve(obj, key):
    """The owner's side of a path (a tuple key): ``(obj, key)`` with ``obj`` the part the path
    leads to and ``key`` its last step (``PLAIN`` for the part itself)."""
    for step in key[:-1]:
        obj = getattr(obj, step) if isinstance(step, str) else obj[step]
    return obj, key[-1]


def _index(i, n):
    """``i`` as an index of a sequence of ``n`` (ctypes' rules and message)."""
    if isinstance(i, str):
        raise TypeError("indices must be integers")
    i = i.__index__()
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError("invalid index")
    return i


def _part(root, path, shape):
    """A part of a shared object: a view for a Structure or an Array, else its value."""
    if shape is None:
        return root._get(path)
    return (_StructView if shape[0] == "struct" else _ArrayView)(root, path, shape)


def _items(root, path, shape, i):
    """``view[i]`` of an array whose elements are Structures or Arrays: views, as ctypes's items
    are in place (a slice: a list of them)."""
    n, element = shape[2], shape[3]
    if isinstance(i, slice):
        return [_part(root, path + (j,), element) for j in range(*i.indices(n))]
    return _part(root, path + (_index(i, n),), element)


class _View:
    """A Structure or Array inside a shared value, in a child: ``A[0].x = 1``, ``for p in A:
    p.y += 1``, ``v.inner.a`` read and write the owner's object in place, one request each, as
    multiprocessing's (in place in shared memory) do; each access takes the lock as the
    wrapper's own accesses do."""

    __slots__ = ("_root", "_path", "_shape")
    _root: Any          # the proxy of the shared object
    _path: tuple        # the steps from it to this part: indices and field names
    _shape: tuple       # this part's shape (sharedctypes._shape)

    def __init__(self, root, path, shape):
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_shape", shape)

    def __repr__(self):
        return "<view of a %s in a shared object>" % self._shape[1]

    def __reduce__(self):
        raise TypeError("%r is a view of a part of a shared Value or Array (A[i], v.field), which cannot be "
                        "pickled here: send a copy built from its fields (Point(a.x, a.y)), or pass the shared "
                        "object itself as a process argument" % self)


class _StructView(_View):
    __slots__ = ()

    def __getattr__(self, name):
        fields = dict(self._shape[2])
        if name in fields:
            return _part(self._root, self._path + (name,), fields[name])
        raw = _declared(self._shape[3] if len(self._shape) > 3 else None, name)
        if raw is None:
            raise AttributeError("%r object has no attribute %r" % (self._shape[1], name))
        # the Structure class's own methods and properties, on the view: ``self.x`` in them
        # reads and writes the owner's object, as a method of multiprocessing's element does
        if isinstance(raw, property) and raw.fget is not None:
            return raw.fget(self)
        if isinstance(raw, types.FunctionType):
            return types.MethodType(raw, self)
        return getattr(self._shape[3], name)        # (a constant, a staticmethod, a classmethod)

    def __setattr__(self, name, value):
        if name not in dict(self._shape[2]):
            raw = _declared(self._shape[3] if len(self._shape) > 3 else None, name)
            if isinstance(raw, property) and raw.fset is not None:
                raw.fset(self, value)
                return
            raise AttributeError("%r object has no attribute %r" % (self._shape[1], name))
        self._root._set(self._path + (name,), plain(value))


def _declared(cls, name):
    """What the user's Structure (or Union) class ``cls`` itself, or a base of it of the user's, says
    ``name`` is (its ``__dict__`` entry), or None: never ctypes' own attributes."""
    if not isinstance(cls, type) or name.startswith("__"):
        return None
    for klass in cls.__mro__:
        if klass.__module__ == "_ctypes" or klass.__module__ == "ctypes":
            return None
        if name in vars(klass) and name not in ("_fields_", "_pack_", "_anonymous_"):
            return vars(klass)[name]
    return None


class _ArrayView(_View):
    __slots__ = ()

    def __len__(self):
        return self._shape[2]

    def __getitem__(self, i):
        if self._shape[3] is None:
            if not isinstance(i, slice):
                i = _index(i, self._shape[2])
            return self._root._get(self._path + (i,))
        return _items(self._root, self._path, self._shape, i)

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            value = [plain(v) for v in value]
        else:
            i, value = _index(i, self._shape[2]), plain(value)
        self._root._set(self._path + (i,), value)

    def __iter__(self):
        return iter(self[:])

    def __getattr__(self, name):
        if name in ("value", "raw"):            # (an array of chars)
            return self._root._get(self._path + (name,))
        raise AttributeError("%r object has no attribute %r" % (self._shape[1], name))


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
        config = self.__dict__.get("_config", {})
        if name in config.get("fields", ()):
            shape = config.get("shape")
            if shape is None:           # (an owner of a remoteproc before shapes)
                return self._get(name)
            return _part(self, (name,), dict(shape[2])[name])
        raise AttributeError("%r object has no attribute %r" % (type(self).__name__, name))

    def __setattr__(self, name, v):
        if name in self.__dict__.get("_config", {}).get("fields", ()):
            self._set(name, plain(v))
        else:
            object.__setattr__(self, name, v)


class _Array(_Shared):
    """Indexing and slicing of a shared Array, each one request; ``len`` is known here."""

    def __len__(self):
        return self._config["length"]

    def __getitem__(self, i):
        shape = self._config.get("shape")
        if shape is not None and shape[3] is not None:      # Structures or Arrays: views
            return _items(self, (), shape, i)
        return self._get(item_key(i))

    def __setitem__(self, i, v):
        self._set(item_key(i), [plain(x) for x in v] if isinstance(i, slice) else plain(v))

    def __iter__(self):
        shape = self._config.get("shape")
        if shape is not None and shape[3] is not None:
            return iter(self[:])
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
