"""The remote child: what runs in the process the agent forks for one RemoteProcess.

It rewires the standard streams to the pipes the agent relays, rebuilds the
bridged Connections from the fds it was given, unpickles the process object and
runs it with multiprocessing's own ``_bootstrap``, so exit codes and tracebacks are
exactly those of a local child.
"""

import os
import signal
import sys
import threading

from . import limits

_fds = {}  # type: dict[int, int]  # placeholder index -> fd of the child's end
METADATA_PREFIX = "dist-info:"  # a request for a distribution's metadata, by canonical name (not a module)
METADATA_LISTING = METADATA_PREFIX + "*"    # ... for the user's distributions, for a listing
METADATA_FILES = METADATA_PREFIX + "="      # ... for the files of one a listing named (from memory)
GRACE = 2.0         # seconds between SIGTERM and SIGKILL when the agent vanishes


def rebuild_connection(index, readable, writable):
    """Unpickling hook: the bridged Connection number ``index`` of this child."""
    from multiprocessing.connection import Connection

    return Connection(_fds[index], readable=readable, writable=writable)


def rebuild_process(cls, state, main=None):
    """Unpickling hook: the process object, without re-running ``__init__``.  ``main``: the
    parent's ``sys.argv`` (a forked child has it) and the classes and functions of its main
    script, pickled by value (see ``reduction.main_definitions``)."""
    if main:
        sys.argv[:] = main.get("argv") or [""]
        _serve_main_definitions(main.get("definitions") or {}, state)
        from . import byvalue

        byvalue.enable(["__main__"] + list(main.get("by_value") or ()))     # (cloudpickle's by-value modules)
    inherit(state)
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def inherit(state):
    """Take what the parent's start said about itself out of the process object's ``state``
    and apply it here, as a forked child inherits it (and as spawn carries it): multiprocessing's
    logger level and ``log_to_stderr()``, ``python -u`` (unbuffered stdout and stderr), ``-W``
    options, and a SIGINT the parent ignores (``nohup``, ``prog &`` in a script)."""
    level = state.pop("_remoteproc_log_level", None)
    parent = state.pop("_remoteproc_parent", None) or {}
    if level is not None or parent.get("log_to_stderr"):
        from multiprocessing import util

        if parent.get("log_to_stderr"):
            util.log_to_stderr()
        if level is not None:
            # multiprocessing's logger level in the parent (or the root logger's, when that
            # one is unset), as spawn carries it into its children.
            util.get_logger().setLevel(level)
    if parent.get("unbuffered"):
        _unbuffered_stdio()
    options = parent.get("warnoptions")
    if options:
        import warnings

        sys.warnoptions[:] = list(options)
        process = getattr(warnings, "_processoptions", None)   # (what the interpreter does with -W)
        if process is not None:
            process(list(options))
    if parent.get("sigint_ignored"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _unbuffered_stdio():
    """``python -u``'s stdout and stderr: every write goes to the fd at once."""
    import io

    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        if old is None:
            continue
        try:
            old.flush()
        except (OSError, ValueError):
            pass
        new = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=old.encoding, errors=old.errors,
                               line_buffering=old.line_buffering, write_through=True)
        setattr(sys, name, new)
        setattr(sys, "__%s__" % name, new)


def _serve_main_definitions(blobs, state):
    """Let ``__main__.Item`` resolve here as in the user's script: a message over a Pipe names a
    class or function of the script by reference.  Each is loaded when first named.

    ``__main__`` becomes a module of its own: the agent's stub runs as ``python3 -c``, whose
    namespace holds names of its own (``r``, ``b``, ``m``) that must not shadow the user's.
    What the start payload already brought (the target, its arguments, and every script global
    their code names: cloudpickle gives them one globals dict) is ``__main__``'s own, so a
    function sent back by reference is the very one the child's code uses."""
    import types

    main = types.ModuleType("__main__")
    target = state.get("_target")
    brought = list(getattr(target, "__globals__", {}).items())
    brought += [(getattr(obj, "__qualname__", None), obj)
                for obj in (target, *(state.get("_args") or ()), *(state.get("_kwargs") or {}).values())]
    for name, obj in brought:
        if name in blobs and isinstance(obj, (type, types.FunctionType)) \
                and getattr(obj, "__module__", None) in ("__main__", "__mp_main__") and obj.__qualname__ == name:
            setattr(main, name, obj)
    main.__getattr__ = lazy_definitions(blobs, lambda: main)  # type: ignore[method-assign]  # (PEP 562)
    sys.modules["__main__"] = main
    # (the user's program may itself be a spawn or forkserver child, whose script is __mp_main__:
    # what it sends names __mp_main__.Item, which multiprocessing had made the agent's __main__)
    sys.modules["__mp_main__"] = main
    from . import grandchild

    grandchild.remember_definitions(blobs)


def lazy_definitions(blobs, home):
    """A module ``__getattr__`` (PEP 562) that loads the script's definition ``name`` from its
    blob when first named, and keeps it on the module ``home()`` returns."""

    def __getattr__(name):
        blob = blobs.get(name)
        if blob is None:
            raise AttributeError("module '__main__' has no attribute %r" % name)
        import pickle

        obj = pickle.loads(blob)
        setattr(home(), name, obj)
        return obj

    return __getattr__


def _exit_none_is_success(process_obj):
    """``sys.exit()`` in the target is exit code 0, as in the user's multiprocessing (3.9+):
    a 3.8 host's ``_bootstrap`` would report 1."""
    run = process_obj.run

    def run_exit_none_is_success():
        try:
            run()
        except SystemExit as exc:
            if exc.code is None:
                raise SystemExit(0) from None
            raise

    process_obj.run = run_exit_none_is_success


def refuse_handle(obj):
    """Reducer for Connections and sockets inside a message: they cannot cross hosts."""
    raise TypeError(
        "cannot send a %s inside a message from a remote process: a file descriptor "
        "cannot cross hosts; pass Connections as RemoteProcess arguments instead"
        % type(obj).__name__
    )


def _refuse_in_messages(reduction, cls):
    """Refuse ``cls`` in messages, but keep multiprocessing's own reducer for a local child that
    this process starts with *spawn* or *forkserver* (the default on Python 3.14): its Pool
    passes the Connections of its queues to its workers that way."""
    from multiprocessing import context

    theirs = getattr(reduction.ForkingPickler, "_extra_reducers", {}).get(cls)

    def reduce(obj):
        if theirs is not None and context.get_spawning_popen() is not None:
            return theirs(obj)
        return refuse_handle(obj)

    reduction.register(cls, reduce)


def _explain_foreign_handles(host):
    """A Connection or socket inside a message from the user's machine arrives as a ticket for the
    sender's resource sharer, a Unix socket of *that* machine, which is not here: say so, rather
    than multiprocessing's ``FileNotFoundError``.  (One of this host's, from the child's own
    processes, is fetched as before.)"""
    from multiprocessing import resource_sharer

    dupfd = resource_sharer.DupFd
    fetch = dupfd.detach

    def detach(self):
        try:
            return fetch(self)
        except OSError as exc:
            address = self._id[0] if isinstance(getattr(self, "_id", None), tuple) else None
            if isinstance(address, str) and os.path.exists(address):
                raise
            raise ConnectionError(
                "%s: a Connection or socket sent inside a message from another host cannot be "
                "received here (%s): a file descriptor cannot cross hosts. Fix: pass Connections "
                "as arguments of the RemoteProcess, where they are bridged" % (host, exc)) from exc

    dupfd.detach = detach  # type: ignore[method-assign]


class ParentImporter:
    """Imports what this host lacks from the user's machine (module forwarding).

    It sits last on ``sys.meta_path``, so modules installed on this host win. The
    agent answers from its per-connection cache (inherited here at fork) or asks
    the relay, which serves the module by name from the user's ``sys.path``.
    """

    def __init__(self, fd, cache, host):
        """``fd`` None: answer from ``cache`` alone (a spawn/forkserver child of a remote child,
        see grandchild.py)."""
        import socket

        self.sock = socket.socket(fileno=fd) if fd is not None else None
        self.file = self.sock.makefile("rb") if self.sock is not None else None
        if self.sock is not None:
            self.sock.setblocking(True)
        self.cache = cache
        self.host = host
        self.lock = threading.Lock()
        self.dirs = {}      # type: dict[str, str]  # directory standing for a forwarded package -> its name

    def _ask(self, name):
        import json

        with self.lock:
            if name in self.cache:
                return
            if self.sock is None:
                self.cache[name] = None
                return
            self.sock.sendall(json.dumps({"name": name}).encode() + b"\n")
            line = self.file.readline()  # type: ignore[union-attr]  # (a sock, a file)
            if not line:
                raise ImportError("no module named %r on %s (the agent is gone)" % (name, self.host), name=name)
            self.cache.update(json.loads(line))
            self.cache.setdefault(name, None)

    def find_spec(self, name, path=None, target=None):
        refused = _host_package_lacks(name, self.host)
        if refused:
            # finders put after this one (pkg_resources' VendorImporter for pkg_resources.extern.*)
            # may still have it: theirs, else the reason
            later = sys.meta_path[sys.meta_path.index(self) + 1:] if self in sys.meta_path else []
            for finder in later:
                spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
                if spec is not None:
                    return spec
            raise ModuleNotFoundError(refused, name=name)
        if name not in self.cache:
            self._ask(name)
        entry = self.cache.get(name)
        if entry is None:
            return None
        if "error" in entry:
            raise ImportError(entry["error"], name=name)
        if "path" in entry:
            return _from_package_cache(name, entry["path"])
        import importlib.util

        spec = importlib.util.spec_from_loader(
            name, self, origin=entry["file"], is_package=entry["pkg"])  # type: ignore[arg-type]  # (exec_module only)
        if spec is not None and entry["pkg"]:
            # __path__: the package's own directory (as __file__ names it) stands for the package,
            # so that pkgutil.iter_modules(__path__) lists its modules (see _ForwardedPackage); a
            # namespace package's: its parts' directories
            where = [os.path.dirname(entry["file"])] if entry["file"] else \
                [p for p in entry.get("portions") or () if isinstance(p, str)]
            for directory in where:
                self._package_dir(directory, name)
            spec.submodule_search_locations = where
        return spec

    def portions(self, name, have):
        """The directories of the parts of namespace package ``name`` on the user's machine that
        are not in ``have`` (its ``__path__`` here), each standing for the user's part (see
        ``_package_dir``); [] when the user has no such namespace package."""
        try:
            if name not in self.cache:
                self._ask(name)
        except (ImportError, OSError):
            return []
        entry = self.cache.get(name)
        if not entry or entry.get("file") or not entry.get("pkg"):
            return []
        out = []
        for directory in entry.get("portions") or ():
            if isinstance(directory, str) and directory not in have:
                self._package_dir(directory, name)
                out.append(directory)
        return out

    def _package_dir(self, where, name):
        """Make ``where`` (a package's directory on the user's machine) stand for package ``name``
        on ``sys.path_hooks``: a path entry of ours, whatever this host has at that path."""
        if not self.dirs:
            sys.path_hooks.insert(0, self._path_hook)
        self.dirs[where] = name
        if not isinstance(sys.path_importer_cache.get(where), _ForwardedPackage):
            sys.path_importer_cache.pop(where, None)

    def _path_hook(self, entry):
        name = self.dirs.get(entry) if isinstance(entry, str) else None
        if name is None:
            raise ImportError("not a package forwarded from the user's machine")
        return _ForwardedPackage(self, name)

    def find_distributions(self, context=None):
        """importlib.metadata: the distributions of the user's machine that this host lacks (the
        host's own come first: this importer is last on ``sys.meta_path``).  One asked for by name
        is looked up there (once per connection, as a module is); a distribution that goes through
        the package cache is then fetched, and its entry appended to ``sys.path``, as its import
        would.  A listing (no name: ``entry_points()``, ``distributions()``) holds the user's
        distributions whose names the host has none of (``_listed``)."""
        if context is not None and "path" in vars(context):
            return      # a search of given directories, not of sys.path
        name = getattr(context, "name", None)
        if not name:
            yield from self._listed()
            return
        key = METADATA_PREFIX + _canonical(name)
        if key not in self.cache:
            try:
                self._ask(key)
            except (ImportError, OSError):
                return
        entry = self.cache.get(key)
        if not entry or "error" in entry:
            return
        if "info" in entry:
            yield _forwarded_distribution(entry)
        elif "path" in entry and entry["path"] not in sys.path:
            # (on sys.path already: the host's own lookup, before this one, found it there)
            import importlib.metadata

            _add_entry(entry["path"])
            yield from importlib.metadata.MetadataPathFinder.find_distributions(
                importlib.metadata.DistributionFinder.Context(name=name, path=[entry["path"]]))

    def _listed(self):
        """The user's distributions for a listing: one round trip per connection (the agent keeps
        the list, for later children too, until the user's sys.path changes), which brings each
        one's name, version and the files a plugin registry reads (``entry_points.txt``); the
        rest of a distribution's files are fetched when read.  Left out: those whose names the
        host has a distribution of (the host's wins, as its modules do), and those a lookup by
        name found nothing of (or refused)."""
        try:
            if METADATA_LISTING not in self.cache:
                self._ask(METADATA_LISTING)
        except (ImportError, OSError):
            return
        listing = self.cache.get(METADATA_LISTING)
        dists = listing.get("dists") if isinstance(listing, dict) else None
        if not isinstance(dists, list):
            return
        host = _host_distributions()
        for item in dists:
            key = item.get("key") if isinstance(item, dict) else None
            if not isinstance(key, str) or key in host:
                continue
            known = self.cache.get(METADATA_PREFIX + key, item)
            if known and "info" in known:
                yield _forwarded_distribution(known)      # (all its files are here already)
            elif known is item or known and "path" in known:
                # (in the host's package cache, for another child: its entry is not on this one's sys.path)
                yield _listed_distribution(self, item)

    def listed_files(self, key):
        """The metadata files of the user's distribution ``key`` (canonical name), from memory."""
        name = METADATA_FILES + key
        try:
            if name not in self.cache:
                self._ask(name)
        except (ImportError, OSError):
            return None
        entry = self.cache.get(name)
        return entry.get("info") if entry else None

    def children(self, package):
        """[(name, is a package)] of the modules directly in forwarded ``package``."""
        entry = self.cache.get(package)
        listed = entry.get("children") if entry else None
        if listed is None:      # (none sent: what the bundle holds)
            prefix = package + "."
            listed = sorted([m[len(prefix):], bool(e.get("pkg"))] for m, e in list(self.cache.items())
                            if m.startswith(prefix) and "." not in m[len(prefix):] and e is not None)
        return [(str(n), bool(p)) for n, p in listed]

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        entry = self.cache[name]
        if entry["file"]:
            module.__file__ = entry["file"]
        exec(self.get_code(name), module.__dict__)

    def get_code(self, name):
        """The module's code object (compiled once): ``exec_module``'s, and runpy's, which runs a
        module by its loader's code (``python3 -m``, ``runpy.run_module``)."""
        entry = self.cache.get(name)
        if not entry or "src" not in entry:
            raise ImportError("%s was not forwarded from the user's machine" % name, name=name)
        code = entry.get("code")
        if code is None:
            code = entry["code"] = compile(entry["src"], entry["file"] or "<%s>" % name, "exec")
            self._teach(name, code)
        return code

    def is_package(self, name):
        entry = self.cache.get(name)
        return bool(entry and entry.get("pkg"))

    def _teach(self, name, code):
        """Give the agent the compiled module: children forked later inherit it, compiled."""
        import base64
        import json
        import marshal

        if self.sock is None:
            return
        line = json.dumps({"compiled": name, "code": base64.b64encode(marshal.dumps(code)).decode()})
        with self.lock:
            try:
                self.sock.sendall(line.encode() + b"\n")
            except OSError:
                pass

    def get_source(self, name):
        entry = self.cache.get(name)
        return entry["src"] if entry else None


class _ForwardedPackage:
    """The path entry finder of a package forwarded from memory (its ``__path__``): it finds
    the package's modules through the ``ParentImporter``, and lists them for ``pkgutil``."""

    def __init__(self, importer, package):
        self.importer = importer
        self.package = package

    def find_spec(self, fullname, target=None):
        return self.importer.find_spec(fullname)

    def iter_modules(self, prefix=""):
        for name, ispkg in self.importer.children(self.package):
            yield prefix + name, ispkg

    def invalidate_caches(self):
        pass


def _list_users_namespace_parts():
    """``pkgutil.iter_modules(ns.__path__)`` (and ``walk_packages``) of a namespace package this host
    has a part of lists the user's parts too, as it would on the user's machine: the packaging
    guide's way of discovering plugins.  The host's ``__path__`` itself stays as it is (its parts
    are the host's directories, which ``importlib.resources`` and ``os.listdir`` read); the user's
    parts are asked for (once per connection) only when such a path is listed."""
    import pkgutil

    original = pkgutil.iter_modules
    if getattr(original, "_remoteproc", False):
        return

    def iter_modules(path=None, prefix=""):
        name = getattr(path, "_name", None)
        if isinstance(name, str) and type(path).__name__ == "_NamespacePath":
            importer = next((f for f in sys.meta_path if isinstance(f, ParentImporter)), None)
            have = list(path)
            extra = importer.portions(name, have) if importer is not None else []
            if extra:
                path = have + extra
        yield from original(path, prefix)

    iter_modules.__doc__ = original.__doc__
    iter_modules._remoteproc = True  # type: ignore[attr-defined]
    pkgutil.iter_modules = iter_modules


def _from_package_cache(name, path):
    """A package in the host's package cache: imported from its files, as if installed there.

    The entry holds the distribution's files as its site-packages did, so a package inside a
    namespace package (``google.protobuf``) is under ``<entry>/google/``: that is where it is
    looked for (the namespace's own ``__path__`` on this host need not include the entry)."""
    import importlib.machinery

    _add_entry(path)
    _pin_siblings(path)
    return importlib.machinery.PathFinder.find_spec(name, [os.path.join(path, *name.split(".")[:-1])])


def _add_entry(path):
    """Put the package cache's entry ``path`` on ``sys.path`` (once)."""
    if path in sys.path:
        return
    sys.path.append(path)       # (appended: the host's own packages still win)
    # pkg_resources built its working set when it was imported: tell it (nothing is
    # imported here that the user's code has not imported already)
    working_set = getattr(sys.modules.get("pkg_resources"), "working_set", None)
    if working_set is not None:
        try:
            working_set.add_entry(path)
        except Exception:   # noqa: BLE001 - pkg_resources' own trouble must not fail the import
            pass


_host_dirs = {}     # type: dict[str, tuple[int, frozenset]]  # sys.path entry -> (mtime, distributions there)


def _host_distributions():
    """The canonical names of the distributions this host's ``sys.path`` holds (as importlib.metadata
    finds them there: ``*.dist-info``, ``*.egg-info``), each directory listed again only when it
    changed."""
    names = set()  # type: set[str]
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        where = entry or "."
        try:
            mtime = os.stat(where).st_mtime_ns
        except OSError:
            continue
        known = _host_dirs.get(where)
        if known is None or known[0] != mtime:
            try:
                listed = os.listdir(where)
            except OSError:
                listed = []
            found = frozenset(_canonical(_info_name(fn)) for fn in listed if fn.endswith((".dist-info", ".egg-info")))
            known = _host_dirs[where] = (mtime, found)
        names |= known[1]
    return names


def _info_name(info):
    """The distribution's name in a metadata directory's name (``name-1.0.dist-info``, ``name.egg-info``)."""
    return info.rsplit(".", 1)[0].partition("-")[0]


def _canonical(name):
    """A distribution's name as its dist-info directory's is compared (PEP 503, with ``_``)."""
    import re

    return re.sub(r"[-_.]+", "_", str(name)).lower()


_Forwarded = None


_Listed = None


def _listed_distribution(importer, item):
    """An ``importlib.metadata.Distribution`` of one of the user's distributions, as a listing
    brought it: its name and version, and ``entry_points.txt`` and ``top_level.txt``; any
    other file (METADATA, RECORD) is fetched when first read, once (``listed_files``)."""
    global _Listed
    if _Listed is None:
        import importlib.metadata
        import pathlib

        class ListedDistribution(importlib.metadata.Distribution):
            def __init__(self, importer, item):
                self._importer = importer
                self._item = item

            @property
            def name(self):     # (3.10+: entry_points() tells distributions apart by name)
                return self._item.get("name")

            @property
            def version(self):
                return self._item.get("version")

            def read_text(self, filename):
                filename = str(filename)
                files = self._item.get("files") or {}
                if filename in files:
                    return files[filename]
                if filename in self._item.get("listed", ()):
                    return None     # (it has none)
                full = self._importer.listed_files(self._item["key"])
                return full.get(filename) if full else None

            def locate_file(self, path):
                return pathlib.Path(self._item.get("site") or "/", str(path))

        _Listed = ListedDistribution
    return _Listed(importer, item)


def _forwarded_distribution(entry):
    """An ``importlib.metadata.Distribution`` of a distribution forwarded from memory: its
    dist-info files as the relay sent them (``entry["info"]``), under its local directory."""
    global _Forwarded
    if _Forwarded is None:
        import importlib.metadata
        import pathlib

        class ForwardedDistribution(importlib.metadata.Distribution):
            def __init__(self, files, site):
                self._files = files
                self._site = site

            def read_text(self, filename):
                return self._files.get(str(filename))

            def locate_file(self, path):
                return pathlib.Path(self._site, str(path))

        _Forwarded = ForwardedDistribution
    return _Forwarded(entry["info"], entry.get("site") or "/")


class _EntryPins:
    """Keeps one distribution whole: once a package was imported from an entry of the package
    cache, the entry's other top-level modules and packages that are not imported yet come
    from that entry too, not from the host (cffi's ``_cffi_backend`` beside ``cffi``: a host
    that has another release of it alone would otherwise split the distribution).  It sits
    before ``PathFinder`` on ``sys.meta_path``."""

    def __init__(self):
        self.pins = {}      # type: dict[str, str]  # top-level name -> entry directory

    def find_spec(self, name, path=None, target=None):
        entry = self.pins.get(name) if path is None else None
        if entry is None:
            return None
        import importlib.machinery

        return importlib.machinery.PathFinder.find_spec(name, [entry])

    def invalidate_caches(self):
        pass


_pins = None    # type: _EntryPins | None


def _pin_siblings(path):
    """Pin the top-level modules and regular packages of entry ``path`` that are not imported
    yet to that entry (see ``_EntryPins``)."""
    global _pins
    import importlib.machinery

    try:
        names = os.listdir(path)
    except OSError:
        return
    suffixes = tuple(importlib.machinery.all_suffixes())
    found = {}
    for fn in names:
        full = os.path.join(path, fn)
        if fn.isidentifier():
            if os.path.isfile(os.path.join(full, "__init__.py")):
                found[fn] = path        # (a namespace package's directory is not the entry's alone)
        elif fn.endswith(suffixes):
            mod = fn.split(".", 1)[0]
            if mod.isidentifier() and os.path.isfile(full):
                found[mod] = path
    found = {k: v for k, v in found.items() if k not in sys.modules}
    if not found:
        return
    if _pins is None:
        _pins = _EntryPins()
        finders = [type(f) if not isinstance(f, type) else f for f in sys.meta_path]
        at = finders.index(importlib.machinery.PathFinder) if importlib.machinery.PathFinder in finders else 0
        sys.meta_path.insert(at, _pins)
    for mod, entry in found.items():
        _pins.pins.setdefault(mod, entry)


def _interrupted_while_starting():
    """Ctrl-C before the target ran (it reached the child while it started): end by SIGINT, as
    python3 does on an uncaught KeyboardInterrupt, with no traceback of this module."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        os.kill(os.getpid(), signal.SIGINT)


def _could_not_start(exc, host):
    """The traceback of what stopped the child before its target ran, and the hint that names why."""
    import traceback

    from . import spawn

    sys.stderr.write("remoteproc: the remote child could not start:\n")
    traceback.print_exc()
    hint = (getattr(exc, "_remoteproc_hint", None) or _shadowed(exc) or spawn.module_failed(exc)
            or spawn.main_lacks(exc) or _left_out(exc))
    if hint:
        sys.stderr.write("remoteproc: %s: %s\n" % (host, hint))
    if limits.reached(exc):
        sys.stderr.write("remoteproc: %s: %s\n" % (host, limits.hint()))


def _explain_run(process_obj):
    """The hint for what the target raised, collected as it propagates: in spawn mode, a module of
    the user's that it imports and that this host's Python cannot run (``spawn.module_failed``); in
    any mode, a file of the user's package that was not sent (``_left_out``).  multiprocessing
    prints the traceback, the caller the hint after it."""
    spawn = sys.modules.get(__package__ + ".spawn")
    if spawn is not None and not spawn.ACTIVE:
        spawn = None
    # (a fork child's traceback is a local one's: before 3.11 a re-raise keeps this wrapper's frame in it)
    if spawn is None and sys.version_info < (3, 11):   # noqa: UP036 - the agent runs on 3.8 hosts too
        return []
    hints = []
    run = process_obj.run

    def run_and_explain():
        try:
            return run()
        except BaseException as exc:
            hint = (spawn.module_failed(exc) if spawn is not None else None) or _left_out(exc)
            if hint:
                hints.append(hint)
            tb = exc.__traceback__
            if tb is not None and tb.tb_frame is sys._getframe() and sys.version_info >= (3, 11):
                exc.__traceback__ = tb.tb_next      # (3.11+: the re-raise takes it, this frame not shown)
            raise

    process_obj.run = run_and_explain
    return hints


def _shadowed(exc):
    """Why the payload names something the module of that name here lacks, when that module is
    the host's own and the user's machine has another of that name (a ``test.py`` beside the
    user's script, and the host's standard library ``test`` package): the host's modules win,
    as forwarded ones come last.  None if that is not the case (a round trip, only on failure)."""
    import re

    m = re.search(r"on <module '([A-Za-z_][\w.]*)'", str(exc)) if isinstance(exc, AttributeError) else None
    name = m.group(1) if m else ""
    mod = sys.modules.get(name)
    importer = next((f for f in sys.meta_path if isinstance(f, ParentImporter)), None)
    if mod is None or importer is None or isinstance(getattr(mod, "__loader__", None), ParentImporter):
        return None
    try:
        if name not in importer.cache:
            importer._ask(name)
    except (ImportError, OSError):
        return None
    entry = importer.cache.get(name)
    if not entry or "error" in entry:
        return None
    here = getattr(mod, "__file__", None) or "built in"
    yours = entry.get("file") or entry.get("path") or "on your sys.path"
    version = _version(sys.modules.get(name.split(".")[0]))
    if isinstance(version, str):
        here += ", version %s" % version
    parts = os.path.normpath(yours).split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        # (an installed package: the host has another release of it, which renaming would not help)
        fix = _same_release(name.split(".")[0], version)
    else:
        fix = "rename your module to a name the host's Python does not have"
    return ("this host has a module %r of its own (%s), which is imported instead of yours (%s): the host's "
            "modules come before those forwarded from your machine. Fix: %s" % (name, here, yours, fix))


def _left_out(exc):
    """Why a file that the user's code opened beside its package is missing here: it was not among
    what was sent (a bare ``FileNotFoundError`` named the cache's path, neither the host nor that
    the file stayed behind).  Only paths inside a package cache entry on ``sys.path`` (a file its
    manifest does not list) or beside a module forwarded from memory (whose other files never
    come); None otherwise.  Nothing is asked of the user's machine: only on failure, a stat or two."""
    # (a path of the user's machine may exist here, unreadable: another account's, on a shared machine)
    name = getattr(exc, "filename", None) if isinstance(exc, (FileNotFoundError, PermissionError)) else None
    if not isinstance(name, str) or not os.path.isabs(name):
        return None
    path = os.path.normpath(name)      # (``HERE/../shared_data/x.csv``: beside the package)
    from .pkgcache import MANIFEST, recorded_content

    for entry in sys.path if isinstance(exc, FileNotFoundError) else ():
        if not (isinstance(entry, str) and os.path.isabs(entry) and path.startswith(entry.rstrip(os.sep) + os.sep)
                and os.path.isfile(os.path.join(entry, MANIFEST))):
            continue
        rel = os.path.relpath(path, entry)
        content = recorded_content(entry)
        if content is not None and rel in content:
            return None     # (it was sent: the code removed it since)
        return ("%r is not among the files sent to this host's package cache (entry %s): a package goes "
                "there as the files its distribution's RECORD lists, or, when no distribution owns it, as its "
                "directory without hidden files (.env) and symbolic links; nothing outside the package's "
                "directory goes (../data). Fix: make it a regular file inside the package (not hidden; a copy, "
                "not a link), or copy it to the host and read it from its path there (docs/modules.md)"
                % (rel, entry))
    for mod in list(sys.modules.values()):
        if not isinstance(getattr(mod, "__loader__", None), ParentImporter):
            continue
        topname = mod.__name__.split(".")[0]
        top = sys.modules.get(topname)
        where = getattr(top, "__file__", None)
        if not isinstance(where, str):
            continue
        base = os.path.dirname(where)
        if getattr(top, "__path__", None) is not None:
            base = os.path.dirname(base)     # (the sys.path directory the package is in)
        if base.rstrip(os.sep) and path.startswith(base.rstrip(os.sep) + os.sep):
            return ("%s is a path of your machine, beside module %s, which came from memory (its Python "
                    "source only: no other file of yours is sent, nor is a hidden file or a link of its "
                    "package). Fix: put the file in the package as a regular file (a package with data "
                    "files goes to the host's package cache, files and all), or copy it to the host and "
                    "read it from its path there (docs/modules.md)" % (path, topname))
    return None


def _version(module):
    """A module's ``__version__`` if it has one already, read without running anything: a module
    ``__getattr__`` may make it (toolz's does, into its globals, which tlz is iterating while it
    imports: "dictionary changed size during iteration" for every ``import dask``)."""
    return getattr(module, "__dict__", {}).get("__version__")


#: package file -> whether it is one release, whole (``_one_release``): read once per package
_ONE_RELEASE = {}  # type: dict[str, bool]


def _one_release(package, origin):
    """Whether the package whose ``__init__`` is ``origin`` is a release of its own, to which no
    module may be added: not one of the package cache's (the user's, whole) nor a namespace
    package made with ``pkgutil.extend_path`` / ``pkg_resources.declare_namespace``.  (A package
    may be asked about for each of its missing submodules: the files are read once.)"""
    known = _ONE_RELEASE.get(origin)
    if known is not None:
        return known
    from .pkgcache import MANIFEST

    whole = True
    where = os.path.dirname(origin)
    for _ in range(package.count(".") + 2):
        if os.path.isfile(os.path.join(where, MANIFEST)):
            whole = False
            break
        where = os.path.dirname(where)
    if whole:
        try:
            with open(origin, "rb") as f:
                text = f.read(1 << 20)
        except OSError:
            text = b""
        whole = b"extend_path" not in text and b"declare_namespace" not in text
    _ONE_RELEASE[origin] = whole
    return whole


def _host_package_lacks(name, host):
    """Why submodule ``name`` is not forwarded: its package is this host's own (another release of
    it, or another package of that name), and modules of the user's machine added to it would mix
    two versions (a numpy 2 pickle names ``numpy._core``, which numpy 1 lacks: numpy 2's source of
    it, run inside numpy 1, fails deep inside).  None when the package is not the host's: forwarded,
    in the package cache, the agent's own ``remoteproc``, or a namespace package (PEP 420, or one
    made with ``pkgutil.extend_path`` / ``pkg_resources.declare_namespace``, whose parts may come
    from anywhere); and for a package of the host's standard library (the user's ``test/``
    package of tests and the standard ``test``: a clash of names, whose submodules were forwarded
    into it before, and run)."""
    package, _, _ = name.rpartition(".")
    parent = sys.modules.get(package) if package else None
    origin = getattr(parent, "__file__", None)
    if parent is None or not isinstance(origin, str) or getattr(parent, "__path__", None) is None:
        return None
    loader = getattr(getattr(parent, "__spec__", None), "loader", None)
    if isinstance(loader, ParentImporter) or type(loader).__name__ == "_ShippedImporter":
        return None
    stdlib = os.path.dirname(os.__file__)
    parts = os.path.normpath(origin).split(os.sep)
    if origin.startswith(stdlib + os.sep) and "site-packages" not in parts and "dist-packages" not in parts:
        return None     # (a name clash with the standard library, not another release: as before)
    if not _one_release(package, origin):
        return None
    top = name.split(".")[0]
    version = _version(sys.modules.get(top))
    return ("No module named %r: %s has a package %r of its own (%s%s), which is imported instead of yours "
            "and has no such module; remoteproc adds no module of your machine to a package of the host's "
            "(two releases mixed fail in obscure ways). Fix: %s, or rename your package if it is your own"
            % (name, host, package, origin, ", version %s" % version if isinstance(version, str) else "",
               _same_release(top, version)))


def _same_release(top, version):
    """The fix for two releases of an installed package: the same one on both sides, whichever
    side moves (the user's newest release may not run on the host's older Python: numpy 2.4
    needs 3.11, a 3.9 host has numpy 1.26 at most)."""
    theirs = "%s==%s" % (top, version) if isinstance(version, str) else "the host's release"
    return ("install there the release of %s you have here (with the host's own Python and pip), or, if "
            "it does not support the host's Python, install here %s (or a release both Pythons take); or "
            "take the host's copy off that Python's path (its user site-packages, a PYTHONPATH)" % (top, theirs))


def _complete_package(importer):
    """The agent's ``remoteproc`` package holds only the agent. User code that runs
    here may ``import remoteproc`` (a test module, say): the first missing attribute
    loads the user's real ``remoteproc/__init__.py`` into it, by module forwarding."""
    pkg = sys.modules.get("remoteproc")
    if pkg is None or hasattr(pkg, "__getattr__") or hasattr(pkg, "RemoteProcess"):
        return

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        del pkg.__getattr__
        importer._ask("remoteproc")
        entry = importer.cache.get("remoteproc")
        if entry and entry.get("src"):
            exec(compile(entry["src"], entry["file"], "exec"), pkg.__dict__)
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__  # type: ignore[method-assign]  # (a module's __getattr__, PEP 562)


#: run by a process of its own group: SIGTERM a group, SIGKILL what is left of it after GRACE,
#: then remove the directories named (``python -E -s -c`` it, and not from the cwd's modules:
#: no user code; ``-I`` is not every host Python's)
_GROUP_KILLER = (
    "import sys\n"
    "sys.path[:]=[p for p in sys.path if p not in ('','.')]\n"
    "import os,shutil,signal,time\n"
    "g,end=int(sys.argv[1]),time.monotonic()+float(sys.argv[2])\n"
    "def kill(s):\n"
    " try:\n  os.killpg(g,s);return True\n"
    " except OSError:\n  return False\n"
    "kill(signal.SIGTERM)\n"
    "while kill(0) and time.monotonic()<end:\n time.sleep(0.02)\n"
    "kill(signal.SIGKILL)\n"
    "for d in sys.argv[3:]:\n shutil.rmtree(d,True)\n")


def _kill_group_from_outside():
    """Have a process outside this child's group kill it: the group's SIGTERM ends this child (its
    default action) before it could send the SIGKILL to its own children that ignore SIGTERM, and
    with the agent gone nobody else would; the directory of its spawn children goes too, which the
    agent removes when it reaps a killed child.  False if no such process could start."""
    spawn = getattr(os, "posix_spawn", None)        # (not a fork: no at-fork hooks of the user's run)
    if spawn is None or not sys.executable:
        return False
    from . import grandchild

    where = grandchild._state.get("dir")
    argv = [sys.executable, "-E", "-s", "-c", _GROUP_KILLER, str(os.getpgid(0)), str(GRACE)]
    argv += [where] if where else []
    try:
        spawn(sys.executable, argv, os.environ, setpgroup=0)
    except (OSError, TypeError):
        return False
    return True


_group_ending = threading.Lock()     # held by whoever ends this child's group once the agent is gone


def _end_group():
    """The agent is gone: have this child's process group killed, once (by the watchdog thread or
    by the child's exit, whichever comes first)."""
    if not _group_ending.acquire(blocking=False) or _kill_group_from_outside():
        return
    try:
        os.killpg(0, signal.SIGTERM)
        threading.Event().wait(GRACE)
        os.killpg(0, signal.SIGKILL)
    except OSError:
        pass


def _watchdog(fd):
    """Kill this child's process group if the agent dies without doing it."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        return          # the user closed the fd: not a sign of the agent's death
    _end_group()


def _end_group_if_agent_gone(fd):
    """At this child's exit: if the agent is gone, have the group killed now.  A target blocked in
    ``conn.recv()`` ends as soon as the agent dies (EOFError), before the watchdog thread has
    had its turn, and the exit would leave the child's own children running for good."""
    import select

    try:
        ready = select.select([fd], [], [], 0)[0] and os.read(fd, 1) == b""
    except (OSError, ValueError):
        return          # (the fd closed or replaced by the user's code: not a sign of the agent's death)
    if ready:
        _end_group()


def _os_threads():
    """The number of threads of this process, as CPython 3.12+ counts them for its fork() warning."""
    try:
        with open("/proc/self/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[17])
    except (OSError, IndexError, ValueError):
        return threading.active_count()


_FORK_WARNING = r"This process .*is multi-threaded, use of fork"


def _quiet_fork_warning(watchdog):
    """CPython 3.12+ warns at fork() in a process with more than one thread (a DeprecationWarning,
    which a target of ``__main__`` shows).  The watchdog thread is ours: a forked child has no such
    thread locally, and it holds no lock.  Before each fork, a filter that ignores that warning is
    put first when the watchdog is the only other thread, and taken away when the user has threads
    of their own (the warning is theirs then).  (Before each fork: 3.13 warns after the hooks that
    run after it.)"""
    if sys.version_info < (3, 12) or not hasattr(os, "register_at_fork"):
        return
    import warnings

    def before():
        if watchdog.is_alive() and _os_threads() == 2:
            warnings.filterwarnings("ignore", message=_FORK_WARNING, category=DeprecationWarning)  # (to the front)
            return
        ours = [f for f in warnings.filters if f[1] is not None and f[1].pattern == _FORK_WARNING]
        for f in ours:
            warnings.filters.remove(f)
        if ours and hasattr(warnings, "_filters_mutated"):
            warnings._filters_mutated()     # (what filterwarnings calls)

    os.register_at_fork(before=before)


#: signals the agent handles itself; blocked across fork until the child has reset them
RESET_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)


def _reset_signals():
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RESET_SIGNALS)   # what came meanwhile lands now


def run(payload, fds, stdout_fd, stderr_fd, sentinel_fd, close_fds, tty, import_fd=None, modules=None,
        host="the remote host", nofile=None):
    """Set up and run the child; never returns.  ``payload``: the pickled process, or the
    fd of the pipe it streams in on.  ``nofile``: the open-files limit the agent had
    before it raised its own (the user's code gets the usual limit)."""
    code = 1
    ran = False
    try:
        _reset_signals()
        if nofile is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        os.setpgid(0, 0)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        for fd in {devnull, stdout_fd, stderr_fd} - {0, 1, 2}:
            os.close(fd)
        if tty:
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # (a TextIOWrapper)
        # as CPython's own stderr: a traceback naming a path its encoding lacks is still written (PyPy)
        sys.stderr.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        for fd in fds.values():
            os.set_blocking(fd, True)
        _fds.update(fds)
        if import_fd is not None:
            importer = ParentImporter(import_fd, modules if modules is not None else {}, host)
            sys.meta_path.append(importer)
            _complete_package(importer)
            _list_users_namespace_parts()
        # a Queue this child shares with a spawn-mode child of a newer Python brings its pickles
        from . import spawn

        spawn.accept_newer_pickles()
        from . import grandchild

        grandchild.enable(importer if import_fd is not None else None)
        watchdog = threading.Thread(target=_watchdog, args=(sentinel_fd,), daemon=True, name="remoteproc-watchdog")
        watchdog.start()
        _quiet_fork_warning(watchdog)

        import socket
        from multiprocessing import reduction
        from multiprocessing.connection import Connection

        _refuse_in_messages(reduction, Connection)
        _refuse_in_messages(reduction, socket.socket)
        _explain_foreign_handles(host)

        import io
        import linecache
        import pickle

        import cloudpickle  # noqa: F401  (registers what the payload refers to)

        # a big payload is read from the agent's pipe as it streams in: never held twice
        stream = open(payload, "rb", buffering=1 << 16) if isinstance(payload, int) else io.BytesIO(payload)
        del payload
        from multiprocessing import process as mp_process

        # As spawn does: proxies of a manager rebuilt here take no reference of their own
        # (the parent holds one while the child starts).
        mp_process.current_process()._inheriting = True  # type: ignore[attr-defined]
        try:
            process_obj = pickle.load(stream)
        finally:
            del mp_process.current_process()._inheriting  # type: ignore[attr-defined]
        for filename, lines in pickle.load(stream).items():
            # mtime None: linecache keeps these lines, the file need not exist here
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
        stream.close()
        del stream
        if sys.version_info < (3, 9):  # noqa: UP036 - the agent runs on 3.8 hosts too
            _exit_none_is_success(process_obj)
        hints = _explain_run(process_obj)
        ran = True      # (from here on the target runs: what escapes is no failure to start)
        code = process_obj._bootstrap(parent_sentinel=sentinel_fd)
        if hints:       # (after the traceback that _bootstrap printed, as the start's hints are)
            sys.stderr.write("remoteproc: %s: %s\n" % (host, hints[0]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        if ran:
            # out of _bootstrap's own ending (a Ctrl-C while it joins the target's threads, its
            # flush of a stdout that is a closed pipe): exit 1, saying nothing, as a forked
            # child does (popen_fork's os._exit(1))
            code = 1
        elif isinstance(exc, KeyboardInterrupt):
            _interrupted_while_starting()
        else:
            _could_not_start(exc, host)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            _end_group_if_agent_gone(sentinel_fd)
            os._exit(code)
