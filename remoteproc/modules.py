"""Module forwarding, local side: find a module's source by name, for a remote child.

When a remote child imports a module its host cannot find, the agent asks the
relay, which answers from the user's ``sys.path`` (sent with each start request).
Only modules are served, by dotted name, as importlib's PathFinder finds them on
that path: no request can name a file.  A package is sent whole (up to a cap) so
that importing it costs one round trip, not one per submodule.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from typing import Any

MAX_FILES = 400
MAX_BYTES = 16 << 20
_EXT = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _valid(name: str) -> bool:
    return 0 < len(name) <= 512 and all(part.isidentifier() for part in name.split("."))


def source_text(data: bytes) -> str:
    """Python source bytes as the import system reads them: a PEP 263 coding declaration
    (``# -*- coding: latin-1 -*-``) or a UTF-8 byte order mark honoured, newlines universal.  The
    child compiles the text it gets, where neither would count any more (the mark would be a
    SyntaxError, a Latin-1 byte an undecodable surrogate).  Source that does not decode (it fails
    to import here too) keeps its bytes as surrogate escapes: the host's import reports it."""
    try:
        return importlib.util.decode_source(data)
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return data.decode("utf-8", "surrogateescape")


def _entry(name: str, spec, host: str, path: list[str]) -> dict[str, Any] | None:
    loader = spec.loader
    if spec.origin is None or loader is None:
        if spec.submodule_search_locations is not None:     # a namespace package: its parts, and what they hold
            portions = [p for p in spec.submodule_search_locations if isinstance(p, str)]
            children: dict[str, bool] = {}
            for portion in portions:
                for child, ispkg in _children(portion):
                    children.setdefault(child, ispkg)
            return {"pkg": True, "src": "", "file": None, "portions": portions,
                    "children": [[k, v] for k, v in children.items()]}
        return None
    if isinstance(loader, importlib.machinery.SourceFileLoader):
        with open(spec.origin, "rb") as f:
            src = source_text(f.read())
        if spec.submodule_search_locations is None:
            return {"pkg": False, "src": src, "file": spec.origin}
        return {"pkg": True, "src": src, "file": spec.origin, "children": _children(os.path.dirname(spec.origin))}
    if type(loader).__name__ == "zipimporter":
        # (not env={'PYTHONPATH': ...}: that sets the variable in a child forked from an agent whose
        # interpreter started before, so its sys.path never gets the zip; the agent's start must see it)
        zipname = os.path.basename(getattr(loader, "archive", "") or "") or "deps.zip"
        return {"error": "module %r is in a zip file (%s), which module forwarding does not serve (it serves "
                         "source files and package directories); copy the zip to %s and put it on the path of "
                         "the Python started there: setup='export PYTHONPATH=/path/on/host/%s' (or "
                         "python='env PYTHONPATH=/path/on/host/%s python3'; env= is set too late to change "
                         "imports), or install the module there" % (name, spec.origin, host, zipname, zipname)}
    what = "a C extension" if isinstance(loader, importlib.machinery.ExtensionFileLoader) else "not Python source"
    dist = _dist(name, spec.origin, path)
    return {"error": "module %r is %s (%s) and cannot be forwarded to %s; install %s there (e.g. `pip install "
                     "%s` with the host's python3)" % (name, what, spec.origin, host, dist, dist)}


def find_spec(name: str, locations: list[str]):
    """``PathFinder.find_spec(name, locations)`` for module ``name`` in the directories
    ``locations`` (a package's ``__path__``), without importing its parent package here.

    Why not PathFinder itself: for a namespace package inside a package (a subdirectory without
    ``__init__.py``, which Python 3 imports as one) it builds a ``_NamespacePath`` that looks up
    the parent in ``sys.modules``, and the parent is imported on the host, not in the relay: a
    ``KeyError``.  Here, as PathFinder does, the first location whose finder has a module or
    regular package wins, and otherwise the namespace portions of all locations are gathered."""
    if "." not in name:
        return importlib.machinery.PathFinder.find_spec(name, locations)
    portions: list[str] = []
    for entry in locations:
        finder = _path_finder(entry)
        find = getattr(finder, "find_spec", None)
        if find is not None:
            spec = find(name)
        elif finder is not None:    # (Python 3.9's zipimporter has only the legacy API, which PathFinder speaks)
            try:
                spec = importlib.machinery.PathFinder.find_spec(name, [entry])
            except KeyError:        # (a namespace portion in a zip file: not forwarded there)
                spec = None
        else:
            spec = None
        if spec is None:
            continue
        if spec.loader is not None:
            return spec
        portions.extend(spec.submodule_search_locations or [])
    if not portions:
        return None
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = portions
    return spec


def _path_finder(entry: str):
    """The finder of ``sys.path_hooks`` for path entry ``entry`` (cached as PathFinder caches it)."""
    if entry in sys.path_importer_cache:
        return sys.path_importer_cache[entry]
    finder = None
    for hook in sys.path_hooks:
        try:
            finder = hook(entry)
            break
        except ImportError:
            continue
    sys.path_importer_cache[entry] = finder
    return finder


def _children(directory: str) -> list[list]:
    """The modules directly in package directory ``directory``, as ``pkgutil.iter_modules``
    lists them there: [[name, is a package], ...] (the child lists a package sent from memory
    from these)."""
    out: dict[str, bool] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for fn in names:
        full = os.path.join(directory, fn)
        if fn.isidentifier() and fn != "__pycache__":
            if os.path.isfile(os.path.join(full, "__init__.py")):
                out[fn] = True
            continue
        mod = fn.split(".", 1)[0]
        if (fn.endswith(".py") or fn.endswith(_EXT)) and mod != "__init__" and mod.isidentifier() \
                and mod not in out and os.path.isfile(full):
            out[mod] = False
    return [[k, v] for k, v in out.items()]


def _dist(name: str, origin: str, path: list[str]) -> str:
    """The distribution to install for module ``name``: the one whose RECORD lists its file
    (exact, also inside a namespace package that several distributions share), else the
    first that importlib.metadata says provides its top-level name."""
    from . import distributions

    owner = distributions.owner_name(origin, path)
    if owner:
        return owner
    top = name.split(".")[0]
    try:
        from importlib.metadata import packages_distributions  # type: ignore[attr-defined]  # (3.10+)

        return (packages_distributions().get(top) or [top])[0]
    except Exception:   # pragma: no cover - Python 3.9, or broken metadata
        return top


def editable_roots() -> dict[str, str]:
    """Top-level name -> directory (or file) of the projects installed in editable mode in this
    process (``pip install -e`` with setuptools): they are on no sys.path entry, a finder in
    ``sys.meta_path`` maps them, and the relay (started without site) has no such finder."""
    roots: dict[str, str] = {}
    for finder in sys.meta_path:
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", "") or ""), "MAPPING", None)
        if isinstance(mapping, dict) and finder not in _STANDARD_FINDERS:
            roots.update((k, v) for k, v in mapping.items() if isinstance(k, str) and isinstance(v, str))
    return roots


_STANDARD_FINDERS = (importlib.machinery.PathFinder, importlib.machinery.BuiltinImporter,
                     importlib.machinery.FrozenImporter)


def _find_top(name: str, path: list[str], editable: dict[str, str]):
    """The spec of the top-level module ``name``, as the user's process finds it: on ``path``, or
    in a project installed in editable mode (see ``editable_roots``)."""
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    where = editable.get(name)
    if spec is not None or not isinstance(where, str):
        return spec
    if os.path.isfile(os.path.join(where, "__init__.py")):
        return importlib.util.spec_from_file_location(name, os.path.join(where, "__init__.py"),
                                                      submodule_search_locations=[where])
    if where.endswith(".py") and os.path.isfile(where):
        return importlib.util.spec_from_file_location(name, where)
    return None


def path_state(path: list, editable: dict[str, str] | None = None) -> tuple:
    """What looking up a top-level module on ``path`` depends on, cheaply (a stat per entry):
    the entries, the editable roots, and each entry's modification time, which a module or
    package added there (or removed) changes.  When it changes between two starts, the names
    the host's agent remembers as found nowhere are looked up again (``recheck``)."""
    return tuple(path), tuple(sorted((editable or {}).items())), dir_times(path)


def dir_times(path: list) -> tuple:
    """The modification times of the directories on ``path`` (None for one that is missing): a
    module, package or distribution added there, or removed, changes its directory's."""
    times = []
    for entry in path:
        try:
            times.append(os.stat(entry).st_mtime_ns if isinstance(entry, str) else None)
        except OSError:
            times.append(None)
    return tuple(times)


def _stdlib_dirs() -> tuple[list[str], list[str]]:
    """(this Python's standard library directories, its site directories inside them)."""
    import sysconfig

    paths = sysconfig.get_paths()
    lib = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if paths.get(k)}
    site = {os.path.realpath(paths[k]) for k in ("purelib", "platlib") if paths.get(k)}
    return sorted(lib), sorted(site)


def from_stdlib(name: str, path: list[str]) -> bool:
    """True if the top-level module of ``name``, as the user's process finds it on ``path``, is
    part of this Python's standard library (not a site-packages distribution, not the user's).

    A host that runs another Python lacks it because its own version has no such module (a new
    one, ``tomllib``, or a removed one, ``imp``): this version's code is not for that Python.
    """
    if not _valid(name):
        return False
    top = name.split(".")[0]
    if top in sys.builtin_module_names:
        return True
    spec = importlib.machinery.PathFinder.find_spec(top, [p for p in path if isinstance(p, str)])
    where = spec.origin if spec is not None and spec.has_location else None
    if not where and spec is not None and spec.submodule_search_locations:
        where = list(spec.submodule_search_locations)[0]
    if not where:
        return False
    where = os.path.realpath(where)
    lib, site = _stdlib_dirs()

    def inside(d: str) -> bool:
        return where == d or where.startswith(d.rstrip(os.sep) + os.sep)

    parts = where.split(os.sep)
    return (any(inside(d) for d in lib) and not any(inside(d) for d in site)
            and "site-packages" not in parts and "dist-packages" not in parts)


def find(name: str, path: list[str], host: str, editable: dict[str, str] | None = None,
         sent: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Entries for ``name`` (None if it is not found) and, for a package, its other modules.

    ``sent``: modules this connection's agent holds already (sent with an earlier answer).  The
    bundle leaves them out, so a package over the caps arrives in a few answers of new modules,
    not in one answer per module past the cap, each repeating the first ``MAX_FILES``."""
    if not _valid(name):
        return {name: {"error": "%r is not a module name" % (name,)}}
    parts = name.split(".")
    search = [p for p in path if isinstance(p, str)]
    top = spec = _find_top(parts[0], search, editable or {})
    for i in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return {name: None}
        spec = find_spec(".".join(parts[:i + 1]), list(spec.submodule_search_locations))
    if spec is None:
        return {name: None}
    out: dict[str, Any] = {name: _entry(name, spec, host, search)}
    if top is not None and top.origin and top.submodule_search_locations is not None:
        _bundle(parts[0], os.path.dirname(top.origin), out, host, search, sent)
    return out


def _bundle(top: str, root: str, out: dict[str, Any], host: str, path: list[str],
            sent: set[str] | frozenset[str] = frozenset()) -> None:
    """Add every module of the package at ``root`` (regular packages only) but those ``sent``
    already, within the caps."""
    files = 0
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d != "__pycache__" and os.path.isfile(os.path.join(dirpath, d, "__init__.py")))
        rel = os.path.relpath(dirpath, root)
        prefix = top if rel == "." else top + "." + rel.replace(os.sep, ".")
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                mod = prefix if fn == "__init__.py" else prefix + "." + fn[:-3]
                full = os.path.join(dirpath, fn)
                if mod in out or mod in sent or not _valid(mod):
                    continue
                size += os.path.getsize(full)
                files += 1
                if files > MAX_FILES or size > MAX_BYTES:
                    return
                with open(full, "rb") as f:
                    out[mod] = {"pkg": fn == "__init__.py", "src": source_text(f.read()),
                                "file": full}
                if fn == "__init__.py":
                    out[mod]["children"] = _children(dirpath)
            elif fn.endswith(_EXT):
                mod = prefix + "." + fn.split(".")[0]
                full = os.path.join(dirpath, fn)
                if fn.split(".")[0] + ".py" in filenames:
                    continue    # (its source beside it, as mypyc leaves it: that goes, and runs there)
                if mod not in out and _valid(mod):
                    out[mod] = {"error": "module %r is a C extension (%s) and cannot be forwarded to %s; install "
                                         "%s there" % (mod, full, host, _dist(mod, full, path))}
