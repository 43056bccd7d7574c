"""Value, Array, RawValue and RawArray across hosts: a ctypes object owned by one process.

``multiprocessing.Value`` lives in shared memory of one machine.  Here the ctypes
object lives in the process that created it, in its own memory; every process it is
handed to (as ``queues.py`` hands over a Queue) reads and writes it with one request
per access: ``v.value``, ``a[i]``, ``a[i:j]``, ``a[:] = ...``.  A synchronized
wrapper's access waits, in the owner, while another thread holds its lock, as
multiprocessing's takes the lock for each access; so ``with v.get_lock(): v.value += 1``
from many processes on many hosts loses nothing.
"""

from __future__ import annotations

import ctypes
import threading
from multiprocessing import sharedctypes as _mp_sharedctypes
from typing import Any, Optional

from .agent import proxies as P
from .agent import synchronize as S
from .synchronize import RLock, _SemLock, _Sync, _SyncWaiter

__all__ = ["Array", "RawArray", "RawValue", "Value"]


_TYPECODES: dict = vars(_mp_sharedctypes)["typecode_to_type"]     # 'i' -> c_int, as multiprocessing reads them


def _ctype(typecode_or_type):
    type_ = _TYPECODES.get(typecode_or_type, typecode_or_type)
    if not isinstance(type_, type):
        raise TypeError("this type has no size")        # (multiprocessing's words for a bad typecode)
    return type_


def _shape(type_) -> Any:
    """How a child reaches the parts of a ctypes type: ``("struct", name, ((field, shape), ...),
    class)`` (the class for its methods and properties, on the child's view), ``("array", name,
    length, element shape)``, or None for a type whose reads give a Python value (a field that is
    an array of chars reads as ``bytes``/``str``, so it is None there)."""
    name = getattr(type_, "__qualname__", type_.__name__)
    if issubclass(type_, (ctypes.Structure, ctypes.Union)):
        fields = []
        for field in type_._fields_:
            ftype = field[1]
            chars = issubclass(ftype, ctypes.Array) and ftype._type_ in (ctypes.c_char, ctypes.c_wchar)
            fields.append((field[0], None if chars else _shape(ftype)))
        return ("struct", name, tuple(fields), type_)
    if issubclass(type_, ctypes.Array):
        return ("array", name, type_._length_, _shape(type_._type_))
    return None


def _new_value(typecode_or_type, *args):
    return _ctype(typecode_or_type)(*args)


def _new_array(typecode_or_type, size_or_initializer):
    type_ = _ctype(typecode_or_type)
    if isinstance(size_or_initializer, int):
        return (type_ * size_or_initializer)()
    init = list(size_or_initializer)
    return (type_ * len(init))(*init)


class _Shared(_Sync):
    """The owner of one ctypes object; ``_kind`` names the proxy a child gets."""

    def __init__(self, obj, lock, kind: str) -> None:
        super().__init__()
        self._obj = obj
        self._lockobj = lock
        self._kind = kind
        if self._our_lock() is not None:
            self._lock = lock._lock     # one mutex: an access can wait for the lock in its queue

    def _our_lock(self) -> Optional[_SemLock]:
        lock = self._lockobj
        if isinstance(lock, _SemLock) and lock._proxy is None and lock._owner == self._owner:
            return lock
        return None

    def _config(self) -> dict:
        obj = self._obj
        config: dict = {"owner": self._owner, "class": type(self).__name__}
        if self._lockobj is not None:
            config["lock"] = self._lockobj
        if isinstance(obj, ctypes.Array):
            config["length"] = len(obj)
        fields = getattr(type(obj), "_fields_", None)
        if fields:
            config["fields"] = tuple(f[0] for f in fields)
        config["shape"] = _shape(type(obj))
        return config

    def _waitlists(self):
        lock = self._our_lock()
        return (lock._waiters,) if lock is not None else ()

    def _access(self, op, key, value=None):
        obj = self._obj
        if isinstance(key, tuple):          # a child's path to a part: ``A[0].x``
            obj, key = S.resolve(obj, key)
            if key is S.PLAIN:
                return S.plain(obj)
        if op == S.GET:
            return getattr(obj, key) if isinstance(key, str) else obj[key]
        if isinstance(key, str):
            setattr(obj, key, value)
        else:
            obj[key] = value
        return None

    def _start(self, op, args, conn, rid):
        if op == S.REPR:
            return P.OK, repr(self._obj)
        if op not in (S.GET, S.SET):
            raise ValueError("%s: unknown request %r" % (self._kind, op))
        tid, raw, key = args[:3]
        value = args[3] if op == S.SET else None
        lock = None if raw else self._our_lock()
        h = self._holder(conn, tid)
        if lock is None or lock._free_for(h):
            return P.OK, self._access(op, key, value)
        w = _SyncWaiter(lock, lock._waiters, conn, rid, None, h)
        w.access = lambda: self._access(op, key, value)
        lock._waiters.append(w)
        return w

    # -- in the owner (or, after fork, through the proxy) ----------------------------------------
    def _get(self, key, raw: bool = False):
        if self._proxy is not None:
            return self._proxy._get(key)
        if not raw and self._lockobj is not None and self._our_lock() is None:
            with self._lockobj:         # a lock of another kind: used here only
                return self._access(S.GET, key)
        return self._call(S.GET, threading.get_ident(), raw, key)[1]

    def _set(self, key, value, raw: bool = False) -> None:
        if self._proxy is not None:
            return self._proxy._set(key, S.plain(value))
        if not raw and self._lockobj is not None and self._our_lock() is None:
            with self._lockobj:
                self._access(S.SET, key, value)
                return None
        self._call(S.SET, threading.get_ident(), raw, key, value)
        return None


class _Fields(_Shared):
    """``.value``, or the fields of a Structure."""

    _raw = False

    @property
    def value(self):
        return self._get("value", self._raw)

    @value.setter
    def value(self, v) -> None:
        self._set("value", v, self._raw)

    def __getattr__(self, name: str):
        obj = self.__dict__.get("_obj")
        if obj is not None and name in dict(getattr(type(obj), "_fields_", ())):
            proxy = self.__dict__.get("_proxy")
            if proxy is not None:           # a forked child: the proxy's view of a nested part
                return getattr(proxy, name)
            return self._get(name, self._raw)
        raise AttributeError("%r object has no attribute %r" % (type(self).__name__, name))

    def __setattr__(self, name: str, v) -> None:
        obj = self.__dict__.get("_obj")
        if obj is not None and name in dict(getattr(type(obj), "_fields_", ())):
            self._set(name, v, self._raw)
        else:
            object.__setattr__(self, name, v)


class _Items(_Shared):
    _raw = False

    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i):
        if self._proxy is not None:     # a forked child: the proxy's views of Structure elements
            return self._proxy[i]
        return self._get(S.item_key(i), self._raw)

    def __setitem__(self, i, v) -> None:
        if self._proxy is not None:
            self._proxy[i] = v
            return
        self._set(S.item_key(i), v, self._raw)

    def __iter__(self):
        if self._proxy is not None:
            return iter(self._proxy)
        return iter(self._get(slice(None), self._raw))


class _String(_Items):
    @property
    def value(self):
        return self._get("value", self._raw)

    @value.setter
    def value(self, v) -> None:
        self._set("value", v, self._raw)

    @property
    def raw(self):
        return self._get("raw", self._raw)

    @raw.setter
    def raw(self, v) -> None:
        self._set("raw", v, self._raw)


class _Wrapper(_Shared):
    """The synchronized wrapper: ``get_lock()``, ``get_obj()``, ``acquire``, ``release``, ``with``."""

    def get_lock(self):
        return self._lockobj

    def get_obj(self):
        """In the owner, the ctypes object itself (no lock taken), as multiprocessing returns it."""
        if self._proxy is not None:
            return self._proxy.get_obj()
        return self._obj

    def acquire(self, *args, **kwargs):
        return self._lockobj.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lockobj.release()

    def __enter__(self):
        return self._lockobj.__enter__()

    def __exit__(self, *args):
        return self._lockobj.__exit__(*args)

    def __repr__(self) -> str:
        if self._proxy is not None:
            return repr(self._proxy)
        return "<%s wrapper for %s>" % (type(self).__name__, self._obj)


class Synchronized(_Fields, _Wrapper):
    """What ``Value()`` returns."""


class SynchronizedArray(_Items, _Wrapper):
    """What ``Array()`` returns."""


class SynchronizedString(_String, _Wrapper):
    """What ``Array('c', ...)`` returns: also ``.value`` and ``.raw``."""


class _RawShared(_Shared):
    _raw = True

    def __repr__(self) -> str:
        if self._proxy is not None:
            return repr(self._proxy)
        return repr(self._obj)


class SharedRawValue(_Fields, _RawShared):
    """What ``RawValue()`` returns (multiprocessing returns the bare ctypes object)."""

    _raw = True


class SharedRawArray(_Items, _RawShared):
    """What ``RawArray()`` returns."""

    _raw = True


class SharedRawString(_String, _RawShared):
    _raw = True


def _lock_for(lock: Any):
    if lock is True or lock is None:
        return RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return lock


def RawValue(typecode_or_type, *args) -> Any:
    """A ctypes value owned by this process, shared with its children (no lock)."""
    obj = _new_value(typecode_or_type, *args)
    if isinstance(obj, ctypes.Array):       # ``RawValue(c_int * 3)``: an array, as multiprocessing's
        return _raw_array(obj)
    return SharedRawValue(obj, None, "RawValue")


def _raw_array(obj):
    if obj._type_ is ctypes.c_char:
        return SharedRawString(obj, None, "RawString")
    return SharedRawArray(obj, None, "RawArray")


def _synchronized_array(obj, lock):
    if obj._type_ is ctypes.c_char:
        return SynchronizedString(obj, lock, "SynchronizedString")
    return SynchronizedArray(obj, lock, "SynchronizedArray")


def RawArray(typecode_or_type, size_or_initializer):
    """A ctypes array owned by this process, shared with its children (no lock)."""
    return _raw_array(_new_array(typecode_or_type, size_or_initializer))


def Value(typecode_or_type, *args, lock: Any = True):
    """``multiprocessing.Value``: a synchronized ctypes value (``lock=False``: a RawValue)."""
    if lock is False:
        return RawValue(typecode_or_type, *args)
    obj = _new_value(typecode_or_type, *args)
    if isinstance(obj, ctypes.Array):       # ``Value(c_int * 3)``: a SynchronizedArray, as multiprocessing's
        return _synchronized_array(obj, _lock_for(lock))
    return Synchronized(obj, _lock_for(lock), "Synchronized")


def Array(typecode_or_type, size_or_initializer, *, lock: Any = True):
    """``multiprocessing.Array``: a synchronized ctypes array (``lock=False``: a RawArray)."""
    if lock is False:
        return RawArray(typecode_or_type, size_or_initializer)
    return _synchronized_array(_new_array(typecode_or_type, size_or_initializer), _lock_for(lock))
