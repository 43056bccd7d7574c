"""Pickling a process object for the remote side.

cloudpickle ships the target (by value where it is not importable); this module
adds what it must not do silently: every ``multiprocessing`` Connection found in
the object, at any depth, becomes a placeholder that names a bridged stream (the
fd itself is handed to the relay), and the RemoteProcess class becomes the plain
``multiprocessing`` Process class, which the remote host has in its stdlib.
"""

from __future__ import annotations

import contextlib
import copy
import io
import linecache
import logging
import os
import pickle
import socket
import stat
import sys
import threading
import types
import weakref
from collections.abc import Iterator
from multiprocessing import context as mp_context
from multiprocessing import util as mp_util
from multiprocessing.connection import _ConnectionBase
from multiprocessing.process import BaseProcess
from typing import Any

import cloudpickle
from cloudpickle.cloudpickle import _code_reduce

from .agent import byvalue, child, proxies
from .errors import PicklingError, out_of_files
from .spill import Spill, Streamed

log = logging.getLogger("remoteproc")

_DYNAMIC = "<dynamic-code>"
MAX_SOURCE = 4 << 20     # bytes of source lines shipped for remote tracebacks


class Bridged:
    """What the relay needs to know of one Connection passed to a remote process."""

    __slots__ = ("conn", "fd", "kind", "readable", "writable")

    def __init__(self, conn: _ConnectionBase, fd: int, kind: str, readable: bool, writable: bool) -> None:
        self.conn = conn        # keeps a Connection made during pickling open until its fd is sent
        self.fd = fd
        self.kind = kind
        self.readable = readable
        self.writable = writable


def _refuse_local_only(obj, host: str) -> None:
    """Raise PicklingError for an object that rests on this host's shared memory or semaphores."""
    refused = proxies.local_only(obj)
    if refused:
        raise PicklingError("a %s cannot be passed to a remote process on %s: it rests on shared "
                            "memory or semaphores of this host. %s" % (type(obj).__name__, host, refused), host)


def _keep_filename(code: types.CodeType):
    """cloudpickle renames shipped code to "<dynamic-code>": keep the real file name,
    so remote tracebacks point at the user's files and lines."""
    func, args = _code_reduce(code)
    try:
        i = args.index(_DYNAMIC)
    except ValueError:  # pragma: no cover - a cloudpickle that keeps file names
        return func, args
    return func, args[:i] + (code.co_filename,) + args[i + 1:]


_function_pickler: Any = None


#: this thread's reducer of large arrays while a joblib batch is pickled (``sharing``)
_large = threading.local()


@contextlib.contextmanager
def sharing(reduce: Any) -> Iterator[None]:
    """While a Pool or Executor task is pickled in this thread, ``reduce(obj)`` may give an object's
    reduction instead (not None): the joblib backend sends large arrays once per worker, wherever
    the task holds them (an argument, a DataFrame's blocks, an estimator's attribute)."""
    _large.reduce = reduce
    try:
        yield
    finally:
        _large.reduce = None


def _shared(obj: Any) -> Any:
    reduce = getattr(_large, "reduce", None)
    return None if reduce is None else reduce(obj)


def dumps_function(func: Any) -> bytes:
    """A Pool or Executor task's function (and its arguments), pickled as queue items are, but
    with the real file names in its code (the worker's tracebacks then name them, and show their
    lines where the file exists on that host)."""
    global _function_pickler
    spawned_main_by_value()
    unimportable_by_value()
    if _function_pickler is None:
        from .agent import proxies

        class FunctionPickler(proxies._item_pickler()):   # type: ignore[misc]
            def reducer_override(self, obj):
                if isinstance(obj, types.CodeType):
                    return _keep_filename(obj)
                shared = _shared(obj)
                if shared is not None:
                    return shared
                managers = sys.modules.get("multiprocessing.managers")
                if managers is not None and isinstance(obj, managers.BaseProxy):
                    from .managers import reduce_task_proxy

                    reduced = reduce_task_proxy(obj)
                    if reduced is not None:
                        return reduced
                return super().reducer_override(obj)

        _function_pickler = FunctionPickler
    buf = io.BytesIO()
    _function_pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(func)
    return buf.getvalue()


def _crossing(pickler: Any, obj: Any) -> Any:
    """What both process picklers do alike: a Connection becomes a bridged stream, an object that
    knows how to cross hosts (Queue, Event, a manager's proxy) reduces itself (its reduce value may
    hold Connections, bridged like any other), and one resting on this host's shared memory is
    refused.  None where the pickler's own rules decide."""
    if isinstance(obj, _ConnectionBase):
        return pickler._connection(obj)
    hook = getattr(type(obj), "__remoteproc_reduce__", None)
    if hook is not None:
        return hook(obj, pickler)
    if isinstance(obj, types.MethodType) and hasattr(type(obj.__self__), "__remoteproc_reduce__"):
        # ``target=q.put``, ``target=ev.set``: the object arrives as its proxy, a class of its own
        # there, so the method is looked up on it by name (as multiprocessing reduces methods);
        # cloudpickle's (function, self) would call the owner's function on the proxy
        return getattr, (obj.__self__, obj.__func__.__name__)
    reduced = proxies.registered_reduce(obj)      # (ForkingPickler.register: as a local child's pickler)
    if reduced is not None:
        return reduced
    managers = sys.modules.get("multiprocessing.managers")
    if managers is not None and isinstance(obj, managers.BaseProxy):
        from .managers import reduce_proxy  # its connections ride a bridged link

        return reduce_proxy(obj, pickler)
    _refuse_local_only(obj, pickler.host)
    name = proxies.open_file(obj) if isinstance(obj, proxies.FILE_TYPES) else None
    if name is not None:
        raise PicklingError("an open file (%s) cannot be passed to a remote process on %s: its file descriptor "
                            "is of this host. Fix: pass its path and open it in the target (the file must exist "
                            "on %s), or pass its content (f.read())" % (name, pickler.host, pickler.host),
                            pickler.host)
    return None


def _is_our_process_class(obj: Any) -> bool:
    return isinstance(obj, type) and obj.__module__.startswith("remoteproc.") and issubclass(obj, BaseProcess)


class _Pickler(cloudpickle.Pickler):
    def __init__(self, file, host: str) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.host = host
        self.mode = "same"
        self.bridged: list[Bridged] = []
        self.files: set[str] = set()
        self._by_fd: dict[int, int] = {}

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.CodeType):
            return self._code(obj)
        reduced = _crossing(self, obj)
        if reduced is not None:
            return reduced
        if _is_our_process_class(obj):
            # RemoteProcess, RemoteScript (as a class of the object or a base of the user's
            # subclass): the remote host has multiprocessing, so it runs as a plain Process.
            return getattr, (mp_context, "Process")
        reduced = byvalue.ctypes_type_reduce(obj)
        if reduced is not None:
            return reduced
        return byvalue.keep_slots(obj, super().reducer_override(obj))

    def _code(self, code: types.CodeType):
        self.files.add(code.co_filename)
        return _keep_filename(code)

    def _connection(self, conn: _ConnectionBase):
        if conn.closed:
            raise PicklingError("a closed Connection was passed to the remote process on %s; pass "
                                "an open end of a Pipe()" % self.host, self.host)
        fd = conn.fileno()
        index = self._by_fd.get(fd)
        if index is None:
            mode = os.fstat(fd).st_mode
            kind = "socket" if stat.S_ISSOCK(mode) else "pipe"
            if kind == "pipe" and conn.readable and conn.writable:
                raise PicklingError("a duplex Connection over a pipe cannot be bridged to %s" % self.host,
                                    self.host)
            index = len(self.bridged)
            self.bridged.append(Bridged(conn, fd, kind, conn.readable, conn.writable))
            self._by_fd[fd] = index
        return child.rebuild_connection, (index, conn.readable, conn.writable)


#: the pickle protocol of spawn mode: multiprocessing's spawn pickles with 4 (the default of
#: 3.8-3.13), and packages keep what they pickle under 4 readable by their older releases, which a
#: host of another Python often has: numpy 2 pickles an array under 5 by a function numpy 1 lacks
SPAWN_PROTOCOL = 4


def _cell_contents(cell) -> object:
    try:
        return cell.cell_contents
    except ValueError:      # (a cell not yet filled)
        return None


def _zip_application(path: str) -> str:
    """The zip file (``python3 app.pyz``) that holds ``path``, a ``__main__.py`` inside it; "" if none."""
    import zipfile

    head = os.path.dirname(path)
    while head and head != os.path.dirname(head):
        if os.path.isfile(head):
            return head if zipfile.is_zipfile(head) else ""
        head = os.path.dirname(head)
    return ""


def _not_importable(obj) -> str:
    """Why a function or class cannot be pickled by reference ("" if it can)."""
    import sys

    module: str = getattr(obj, "__module__", None) or ""
    qualname: str = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or ""
    mod = sys.modules.get(module)
    if "<lambda>" in qualname:
        return "a lambda, which has no name to be imported by: write it as a def"
    if "<locals>" in qualname:
        # (a decorator that returns its own inner function: the module's name for it is not its name)
        alias = next((k for k, v in list(vars(mod).items()) if v is obj), None) if mod is not None else None
        if alias is not None and isinstance(obj, types.FunctionType):
            if any(getattr(_cell_contents(c), "__name__", None) == alias for c in obj.__closure__ or ()):
                return ("the inner function of a decorator (%s.%s is %s): decorate that inner function with "
                        "functools.wraps(func) in the decorator, so that its name is the one it has in %s"
                        % (module, alias, qualname, module))
            return ("a closure that %s made (%s.%s is %s): define it at the top level, taking what it captures "
                    "as arguments; functools.partial(function, value) of it goes by reference"
                    % (qualname.rsplit(".<locals>.", 1)[0], module, alias, qualname))
        return "defined inside a function (a closure or local %s)" % ("class" if isinstance(obj, type) else "function")
    if mod is None:
        return "its module %r is not importable" % module
    where = "" if module.startswith("__") else unimportable(module, mod)     # (the script: as __mp_main__)
    if where:
        return "its module %r was %s: the host cannot import it; put its directory on sys.path" % (module, where)
    if module == "__main__" and not os.path.isfile(getattr(mod, "__file__", None) or ""):
        archive = _zip_application(getattr(mod, "__file__", None) or "")
        if archive:
            return ("defined in the __main__.py of the zip application %s, which another Python cannot import as "
                    "a script: define it in a module of the application that its __main__.py imports" % archive)
        return ("defined interactively (in a notebook cell, at the >>> prompt, with python -c, or in a script "
                "read from stdin)")
    if module == "__main__" and getattr(mod, "__spec__", None) is not None:
        return "%s%s" % (_RUN_WITH_M, mod.__file__)
    found: object = mod
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not obj:
        return "%s.%s is not this object (redefined, or made at run time)" % (module, qualname)
    return ""


class _SpawnPickler(pickle.Pickler):
    """For another Python on the host: functions and classes go by reference only."""

    def __init__(self, file, host: str, looked: str) -> None:
        super().__init__(file, protocol=SPAWN_PROTOCOL)
        self.host = host
        self.mode = "spawn"
        self.looked = looked
        self.bridged: list[Bridged] = []
        self.files: set[str] = set()
        self._by_fd: dict[int, int] = {}

    def _connection(self, conn: _ConnectionBase):
        return _Pickler._connection(self, conn)     # type: ignore[arg-type]  # (the same attributes)

    def reducer_override(self, obj):
        reduced = _crossing(self, obj)
        if reduced is not None:
            return reduced
        if _is_our_process_class(obj):
            return copy.copy, (mp_context.Process,)     # (a class's copy is itself; a module cannot go)
        if isinstance(obj, (types.FunctionType, type)):
            why = _not_importable(obj)
            if why:
                raise spawn_refusal(obj, why, self.host, self.looked)
        return NotImplemented


#: why a function of ``python -m pkg.mod``'s main module cannot go, followed by that module's file
_RUN_WITH_M = "defined in a main module run with python -m, which is not shipped (only a script run by its path is): "


def spawn_refusal(obj, why: str, host: str, looked: str) -> PicklingError:
    """The PicklingError for an object that cannot go to another Python version."""
    import sys

    ver = "%d.%d" % sys.version_info[:2]
    name = "%s.%s" % (getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", repr(obj)))
    fix = "define it at the top level of a module or of your script"
    if why.startswith(_RUN_WITH_M):
        fix = ("run that module as a script, by its path (python3 %s), or move the function into a module "
               "that it imports" % why[len(_RUN_WITH_M):])
    return PicklingError(
        "%s: cannot send %s (%s) to a Python of another version: %s runs another Python than this one "
        "(%s), so functions and classes travel by reference, as with multiprocessing's spawn start method. "
        "Fix: %s, or give %s a Python %s (we looked for it in: %s; or pass python= with its path)."
        % (host, name, why, host, ver, fix, host, ver, looked), host)


class _ItemSpawnPickler(pickle.Pickler):
    """Items and Pool tasks for a spawn-mode host: by reference; fds refused as in same mode."""

    def __init__(self, file, host: str, looked: str) -> None:
        super().__init__(file, protocol=SPAWN_PROTOCOL)
        self.host = host
        self.looked = looked

    def reducer_override(self, obj):
        if isinstance(obj, (_ConnectionBase, socket.socket)):
            proxies._refuse(obj)
        if isinstance(obj, proxies.FILE_TYPES):
            proxies.refuse_open_file(obj)
        if isinstance(obj, (types.FunctionType, type)):
            why = _not_importable(obj)
            if why:
                raise spawn_refusal(obj, why, self.host, self.looked)
        shared = _shared(obj)
        return NotImplemented if shared is None else shared


class _RespawnPickler(_ItemSpawnPickler):
    """An item this process pickled by value, loaded again to go to another Python: a function
    that cloudpickle rebuilt from one of the script's goes by the original's name (classes come
    back as the originals already: cloudpickle tracks them)."""

    def reducer_override(self, obj):
        if isinstance(obj, types.FunctionType):
            original = _original_function(obj)
            if original is not None:
                return copy.copy, (original,)   # (a function's copy is itself: by reference)
        return super().reducer_override(obj)


def _original_function(fn: types.FunctionType) -> types.FunctionType | None:
    """The function its module and qualified name give here, if it is another with the same code."""
    import sys

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    qualname = getattr(fn, "__qualname__", "") or ""
    if module is None or "<" in qualname:
        return None
    found: object = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, types.FunctionType) and found is not fn and found.__code__ == fn.__code__:
        return found
    return None


def respawn_item(blob: bytes, host: str = "", looked: str = "") -> bytes:
    """A Queue item that this process pickled for a same-version process (by value), pickled again
    by reference for a spawn-mode one (``queues.Queue._items_by_reference``)."""
    import sys

    if "__main__" in sys.modules:
        sys.modules.setdefault("__mp_main__", sys.modules["__main__"])
    buf = io.BytesIO()
    _RespawnPickler(buf, host, looked).dump(pickle.loads(blob))
    return buf.getvalue()


def dumps_spawn_item(obj, host: str = "", looked: str = "") -> bytes:
    """Pickle a Queue item or Pool task for a spawn-mode process: by reference (a same-mode one's
    go through ``agent.proxies.dumps_item``)."""
    import sys

    if "__main__" in sys.modules:
        sys.modules.setdefault("__mp_main__", sys.modules["__main__"])     # what spawn children refer to
    buf = io.BytesIO()
    _ItemSpawnPickler(buf, host, looked).dump(obj)
    return buf.getvalue()


_main_cache: dict[tuple, str] = {}


def main_info() -> dict | None:
    """The user's main script for a spawn-mode child: its path, its source, remoteproc's names."""
    import sys

    import remoteproc

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    impl = "Python" if sys.implementation.name == "cpython" else sys.implementation.name
    info: dict = {"names": list(getattr(remoteproc, "__all__", ())), "path": None, "source": None,
                  "argv": list(sys.argv), "python": "%s %d.%d" % (impl, *sys.version_info[:2])}
    if path and getattr(main, "__spec__", None) is None:     # a script run by its path, as spawn ships
        path = os.path.abspath(path)
        try:
            key = (path, os.stat(path).st_mtime_ns)
            if key not in _main_cache:
                from .modules import source_text

                with open(path, "rb") as f:
                    _main_cache.clear()
                    _main_cache[key] = source_text(f.read())     # (its coding declaration or BOM honoured)
            info["source"], info["path"] = _main_cache[key], path
        except (OSError, UnicodeDecodeError):
            pass
    if main is not None:
        sys.modules.setdefault("__mp_main__", main)     # what the remote's results refer to
    return info


class _Prepare:
    """Unpickles first, on the remote side, as ``spawn.prepare(main)``: imports ``__mp_main__``."""

    def __init__(self, main: dict | None) -> None:
        self.main = main

    def __reduce__(self):
        from .agent import spawn

        return spawn.prepare, (self.main,)


class _SpawnShipped:
    def __init__(self, cls: type, state: dict, main: dict | None) -> None:
        self.cls = cls
        self.state = state
        self.main = main

    def __reduce__(self):
        from .agent import spawn

        return spawn.rebuild_process, (_Prepare(self.main), self.cls, self.state)


class _Shipped:
    """Unpickles on the remote side as the process object itself."""

    def __init__(self, cls: type, state: dict, main: dict) -> None:
        self.cls = cls
        self.state = state
        self.main = main

    def __reduce__(self):
        return child.rebuild_process, (self.cls, self.state, self.main)


#: a class or function of the main script bigger than this, pickled, does not go with every
#: start (its globals may hold big data); it then cannot cross a Pipe by reference
MAIN_DEF_MAX = 256 << 10
_main_def_blobs: "weakref.WeakKeyDictionary[Any, bytes | None]" = weakref.WeakKeyDictionary()


class _Capped(io.BytesIO):
    """A pickle's output that gives up past MAIN_DEF_MAX (a big one costs no more than that)."""

    def write(self, data) -> int:
        if self.tell() + len(memoryview(data).cast("B")) > MAIN_DEF_MAX:
            raise ValueError("over %d bytes" % MAIN_DEF_MAX)
        return super().write(data)


def _defined_at_top(name: str, obj: Any, main_name: str = "__main__") -> bool:
    """A class or function that the main script's own top level defines under this name
    (``main_name``: the script's module name, ``__mp_main__`` in a spawn or forkserver child)."""
    return (isinstance(obj, (type, types.FunctionType)) and obj.__module__ == main_name
            and getattr(obj, "__qualname__", "") == name)


def main_definitions() -> dict[str, bytes]:
    """The classes and functions defined at the top of the user's main script (or notebook),
    each pickled by value, for a same-mode child's ``__main__``.

    Messages over a Pipe are plain pickles, which name a class or a function by reference:
    ``__main__.Item``. A forked child has the parent's ``__main__``; a remote one gets its
    definitions here, loaded only when a message names them (cloudpickle rebuilds a class once
    per process, so they are the very classes the target's own code uses)."""
    main = sys.modules.get("__main__")
    if main is None:
        return {}
    out: dict[str, bytes] = {}
    main_name = getattr(main, "__name__", "__main__")
    for name, obj in list(vars(main).items()):
        if not _defined_at_top(name, obj, main_name):
            continue
        try:
            blob = _main_def_blobs[obj]
        except KeyError:
            out_file = _Capped()
            try:
                byvalue.pickler()(out_file, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
                blob = out_file.getvalue()
            except Exception:  # noqa: BLE001 - too big, or cannot go by value: it stays here
                blob = None
            try:
                _main_def_blobs[obj] = blob
            except TypeError:
                pass        # (a class that takes no weak reference: pickled again next time)
        if blob is not None:
            out[name] = blob
    return out


def spawned_main_by_value() -> None:
    """In a spawn or forkserver child of the user's program (multiprocessing runs the script there
    as ``__mp_main__``), its functions and classes go by value, as ``__main__``'s do: cloudpickle
    would name them ``__mp_main__.work``, which a remote child cannot import (its own
    ``__mp_main__`` is not the script).  Registered with cloudpickle once, so the process payload,
    Pool tasks and Queue items all carry them."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__name__", None) != "__mp_main__" or sys.modules.get("__mp_main__") is not main:
        return
    listed = getattr(cloudpickle, "list_registry_pickle_by_value", None)
    if listed is None or "__mp_main__" not in listed():
        cloudpickle.register_pickle_by_value(main)


#: module name -> the module object found importable or not (``unimportable_by_value``), once each
_checked: dict[str, Any] = {}


def _path_roots() -> tuple[str, ...]:
    return tuple(os.path.join(os.path.abspath(p), "") for p in sys.path if isinstance(p, str) and p)


def unimportable(name: str, module: Any, roots: tuple[str, ...] | None = None) -> str:
    """Where ``module`` came from if a fresh interpreter with this ``sys.path`` could not import it by
    name (so neither can a remote child, whose imports of our modules follow ``sys.path``), else "":
    a plugin loaded from its file (``spec_from_file_location``) or a module made at run time
    (``types.ModuleType``) and put into ``sys.modules``.  A local fork inherits such modules."""
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) if spec is not None else getattr(module, "__file__", None)
    if spec is None and origin is None:
        made = name not in sys.builtin_module_names and "." not in name and not name.startswith("_")
        # (with functions or classes of its own: not a library's placeholder, such as Cython's cython_runtime)
        own = made and isinstance(module, types.ModuleType) and any(
            isinstance(v, (types.FunctionType, type)) and getattr(v, "__module__", None) == name
            for v in list(vars(module).values()))
        return "made at run time" if own else ""
    if not isinstance(origin, str) or not origin.endswith(".py") or getattr(spec, "name", name) != name:
        return ""       # (not source, or a module known under another name too: an alias of a library's)
    rel = name.replace(".", os.sep)
    for ending in (rel + ".py", os.path.join(rel, "__init__.py")):
        if origin.endswith(ending) and origin[:-len(ending)] in (_path_roots() if roots is None else roots):
            return ""   # (the common case, told apart without a search: where its name leads on sys.path)
    parent_path = None
    if "." in name:
        parent_path = getattr(sys.modules.get(name.rpartition(".")[0]), "__path__", None)
        if parent_path is None:
            return ""
    for finder in sys.meta_path:        # (an editable install's finder too)
        find = getattr(finder, "find_spec", None)
        try:
            if find is not None and find(name, parent_path) is not None:
                return ""
        except Exception:
            return ""       # (a finder that fails here: leave the module to the usual import)
    return "loaded from %s, on no sys.path entry" % origin


def unimportable_by_value() -> None:
    """Modules the remote side could not import by name (``unimportable``) go by value, as if
    registered with ``cloudpickle.register_pickle_by_value``: their functions and classes then
    reach a same-version child whole (the child's import failed with a bare ModuleNotFoundError).
    Each module is looked at once."""
    roots = None
    for name, module in list(sys.modules.items()):
        if module is None or name.startswith("__") or _checked.get(name) is module:
            continue
        _checked[name] = module
        roots = _path_roots() if roots is None else roots
        where = unimportable(name, module, roots)
        if where:
            log.debug("module %s (%s) goes to remote children by value", name, where)
            cloudpickle.register_pickle_by_value(module)


def by_value_modules() -> list[str]:
    """The modules registered with ``cloudpickle.register_pickle_by_value``: a same-version child
    passes their functions and classes on by value too (remoteproc/agent/byvalue.py)."""
    listed = getattr(cloudpickle, "list_registry_pickle_by_value", None)
    return sorted(listed()) if listed is not None else []


#: the process object's attributes that stay here (a RemoteScript's ``_stdin`` is fed by a thread of ours;
#: ``_stdout_fd`` is the CLI's pipe for the script's output, cli.py)
_LOCAL_ONLY = ("_popen", "_host", "_ssh_options", "_sentinel", "_remote_error", "_cwd", "_env", "_stdin",
               "_stdout_fd")


def dumps_process(process_obj, host: str, mode: str = "same",
                  looked: str = "") -> tuple[bytes | Streamed, list[Bridged]]:
    """Pickle ``process_obj`` for ``rebuild_process`` on the remote side.

    ``mode`` "same": the host runs this Python (cloudpickle ships by value what is not
    importable); "spawn": another Python (everything by reference, ``__main__`` as
    ``__mp_main__``; ``looked`` says where a Python of ours was looked for).
    Returns the payload (bytes; a big one as a ``spill.Streamed`` file, which the
    caller closes) and the Connections to bridge, in placeholder order.
    Raises PicklingError naming the host for anything that cannot be shipped.
    """
    state = {k: v for k, v in process_obj.__dict__.items() if k not in _LOCAL_ONLY}
    state["_popen"] = None      # as in a local child: current_process().exitcode is None
    config = state.get("_config")
    if isinstance(config, dict) and "tempdir" in config:
        # multiprocessing's temp dir (pymp-*) of this process, once made: a path of this machine,
        # which the host lacks (or another account owns); the child makes its own there
        state["_config"] = {k: v for k, v in config.items() if k != "tempdir"}
    mp_logger = getattr(mp_util, "_logger", None)
    if mp_logger is not None:
        state["_remoteproc_log_level"] = mp_logger.getEffectiveLevel()
    buf = Spill()
    pickler: _Pickler | _SpawnPickler
    spawned_main_by_value()
    unimportable_by_value()
    if mode == "spawn":
        pickler = _SpawnPickler(buf, host, looked)
        main = main_info()
        if main is not None and not getattr(process_obj, "_ships_main", True):
            # (script mode: the child runs a script of the host's, and the caller's own script, whose
            # top level may not run there nor be guarded, has nothing it needs, as for the same version)
            main = dict(main, source=None, path=None)
        shipped: object = _SpawnShipped(type(process_obj), state, main)
    else:
        pickler = _Pickler(buf, host)
        shipped = _Shipped(type(process_obj), state, {"definitions": main_definitions(), "argv": list(sys.argv),
                                                      "by_value": by_value_modules()})
    mp_context.set_spawning_popen(process_obj)     # lets the authkey travel, as with spawn
    try:
        pickler.dump(shipped)
    except PicklingError:
        buf.discard()
        raise
    except Exception as exc:
        buf.discard()
        raise out_of_files(host, exc) or PicklingError("cannot send the target or its arguments to %s: %s: %s"
                                                       % (host, type(exc).__name__, exc), host) from exc
    finally:
        mp_context.set_spawning_popen(None)
    # The source lines of code shipped by value, for the remote side's linecache:
    # its tracebacks then show the lines, although the files exist only here.
    lines: dict[str, list[str]] = {}
    total = 0
    for filename in sorted(pickler.files):
        got = linecache.getlines(filename)
        total += sum(map(len, got))
        if got and total <= MAX_SOURCE:
            lines[filename] = got
    pickle.dump(lines, buf, protocol=pickle.HIGHEST_PROTOCOL)
    return buf.result(), pickler.bridged
