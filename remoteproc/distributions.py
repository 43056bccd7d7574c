"""Installed distributions, local side: which files make up a package, their hash, and
whether a remote host can load them.

A remote child that lacks a top-level package asks for it by name.  When our copy
needs real files on the host (C extensions, the shared libraries wheels vendor in
``<name>.libs/``, package data), the whole distribution is sent to the host's
package cache (``agent/pkgcache.py``).  Its files are those its ``RECORD`` lists (or
the package directory, when no distribution owns it), and only those inside the
directory of ``sys.path`` it was found in: an entry pointing elsewhere (``../../x``,
an absolute path, a link leading out) is never read.  Compiled files go only where
their wheel's tags, and their extension suffixes, say they load, and no distribution
(pure ones included) goes to a Python its ``Requires-Python`` excludes.
"""

from __future__ import annotations

import base64
import csv
import functools
import importlib.machinery
import json
import logging
import os
import re
import stat
import sys
import urllib.parse
from dataclasses import dataclass, field

from . import modules, requires_python
from .agent import pkgcache

log = logging.getLogger("remoteproc.packages")

MAX_BYTES = 4 << 30     # a distribution larger than this is refused (its host would need the space twice)
MAX_FILES = 50000
_CODE = (".py", ".pyi")
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_EXTENSION_MODULE = re.compile(r"\.(cpython-|abi3|pypy)[^/]*\.so$|\.pyd$")
_PLATFORM = re.compile(r"^(manylinux|musllinux)_(\d+)_(\d+)_(\w+)$")


class Unsendable(Exception):
    """This package cannot go to that host (the message says why and what to do)."""


@dataclass
class Distribution:
    """The files of one distribution (or one package directory) under its ``sys.path`` entry."""

    top: str                    # the top-level name that was asked for
    name: str                   # the distribution's name (the package's, with no distribution)
    version: str
    site: str                   # the sys.path entry the files are under
    files: list[tuple[str, int, int, int]] = field(default_factory=list)   # (rel, mode, size, mtime_ns)
    tags: list[str] = field(default_factory=list)       # the WHEEL's Tag lines ([] without a WHEEL)
    refused: list[str] = field(default_factory=list)    # RECORD entries not served (outside the site)
    known: dict[str, str] = field(default_factory=dict)  # rel -> sha256 hex, from RECORD (file unchanged since)
    info: str = ""              # its *.dist-info directory ("" with no distribution)

    @property
    def size(self) -> int:
        return sum(f[2] for f in self.files)

    @property
    def label(self) -> str:
        return "%s %s" % (self.name, self.version) if self.version else self.name


def is_extension(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return base.endswith((".so", ".pyd", ".dylib")) or ".so." in base


def need(dist: Distribution) -> str | None:
    """Why ``dist`` needs real files on the host ("a C extension (x/y.cpython-311-...so)",
    "compiled code (x.libs/z.so.1)", "data files (x/z.pem)"), or None when it is plain Python (and ``py.typed``)."""
    compiled = data = None
    for rel, _mode, _size, _mtime in dist.files:
        if dist.info and rel.startswith(dist.info + "/"):
            continue
        if is_extension(rel):
            if _EXTENSION_MODULE.search(rel):
                return "a C extension (%s)" % rel       # (an extension module: the best example)
            compiled = compiled or "compiled code (%s)" % rel
        elif data is None and not (rel.endswith(_CODE) or rel.endswith("/py.typed")):
            data = "data files (%s)" % rel
    return compiled or data


#: sources of compiled modules, which a package ships beside them but never reads at run time
_COMPILED_SOURCES = (".c", ".h", ".cpp", ".hpp", ".pyx", ".pxd", ".pxi")


def pure_but_compiled(dist: Distribution, unit: "Unit") -> bool:
    """Is package ``unit`` of ``dist`` plain Python once its compiled files are left out (Python
    source, stubs, ``py.typed``, and the C or Cython sources of its extensions)?  Such a package
    can go from memory to a host that cannot load its extensions: many import them in a ``try``
    and fall back to Python code of their own (markupsafe, PyYAML, msgpack, mypyc-compiled
    charset_normalizer), and the others fail at the extension's import, with the refusal."""
    prefix = unit.rel + "/"
    python = False
    for rel, _mode, _size, _mtime in dist.files:
        if not rel.startswith(prefix) or is_extension(rel):
            continue
        if rel.endswith(".py"):
            python = True
        elif not (rel.endswith(_CODE) or rel.endswith("/py.typed") or rel.endswith(_COMPILED_SOURCES)):
            return False        # a data file: the package needs the cache (or the host's own copy)
    return python


@dataclass
class Unit:
    """What a requested module is part of, as a unit that is sent or refused whole: its
    top-level module or package, or, inside a namespace package (no ``__init__.py``), the
    first regular package or module below it (``acme.fast`` for ``acme.fast.x``)."""

    name: str                   # 'requests', 'acme.fast'
    site: str                   # the sys.path entry it is under
    rel: str                    # its path under site: 'requests', 'six.py', 'acme/fast'
    namespace: str = ""         # the namespace package it is inside ('acme'), if any
    info: str | None = None     # the *.dist-info in site whose RECORD lists it

    @property
    def dist_name(self) -> str | None:
        return info_stem(self.info)[0] if self.info else None


def locate(name: str, path: list, editable: dict | None = None) -> Unit | None:
    """The unit that module ``name`` belongs to on ``path`` (the user's sys.path), with the
    distribution that owns it; None when it is not there, not from a file, or a namespace
    package itself.  ``editable``: top-level name -> directory of the projects installed in
    editable mode (``modules.editable_roots``), looked in when ``path`` has no such top-level
    name: such a package is a unit of its own, its directory, owned by no distribution."""
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    search = [p for p in path if isinstance(p, str)]
    spec = importlib.machinery.PathFinder.find_spec(parts[0], search)
    if spec is None and editable:
        return _editable_unit(parts[0], editable.get(parts[0]))
    depth = 0
    while spec is not None and spec.origin is None and spec.submodule_search_locations is not None:
        depth += 1          # a namespace package: the unit is what it holds
        if depth >= len(parts):
            return None
        spec = modules.find_spec(".".join(parts[:depth + 1]), list(spec.submodule_search_locations))
    if spec is None or not spec.origin or not os.path.isabs(spec.origin):
        return None
    base = os.path.dirname(spec.origin) if spec.submodule_search_locations is not None else spec.origin
    site = base
    for _ in range(depth + 1):
        site = os.path.dirname(site)
    rel = os.path.relpath(base, site).replace(os.sep, "/")
    _real_dir.cache_clear()     # (links are looked at afresh for every package)
    return Unit(".".join(parts[:depth + 1]), site, rel, ".".join(parts[:depth]), _owner(site, rel))


def _editable_unit(top: str, where: object) -> Unit | None:
    """The unit of top-level package ``top`` installed in editable mode at directory ``where``
    (its name must be the directory's: the host's entry holds it under that name)."""
    if not isinstance(where, str) or not os.path.isabs(where):
        return None
    where = os.path.normpath(where)
    if os.path.basename(where) != top or not os.path.isfile(os.path.join(where, "__init__.py")):
        return None     # (a module file, or a package under another name: from memory, if pure)
    return Unit(top, os.path.dirname(where), top)


def find(top: str, path: list) -> Distribution | None:
    """The distribution that provides top-level ``top`` on ``path``, if it needs real files
    on the host; None when ``top`` is not there or is plain Python (sent from memory)."""
    if not top.isidentifier():
        return None
    unit = locate(top, path)
    if unit is None or unit.namespace:
        return None         # not found, a namespace package, or not from a file
    return gather(unit)


def gather(unit: Unit) -> Distribution | None:
    """The files of the distribution that ``unit`` comes from (or of its directory, when no
    distribution owns it), if it needs real files on the host; None for plain Python."""
    if unit.info is not None:
        name, _, version = unit.info[:-len(".dist-info")].partition("-")
        dist = Distribution(unit.name, name, version, unit.site, tags=_tags(unit.site, unit.info), info=unit.info)
        _record_files(dist, unit.info)
    else:
        dist = Distribution(unit.name, unit.name, "", unit.site)
        _walk_files(dist, unit.rel)
    if need(dist) is None:
        return None
    dist.files.sort()
    if len(dist.files) > MAX_FILES or dist.size > MAX_BYTES:
        raise Unsendable("%s (%s) is too large to send: %d files, %.0f MB (the limits are %d files, %.0f MB); "
                         "install it on the host instead" % (unit.name, dist.label, len(dist.files),
                                                             dist.size / 1e6, MAX_FILES, MAX_BYTES / 1e6))
    return dist


MAX_INFO_FILE = 4 << 20    # a dist-info file larger than this is not served as metadata


def info_stem(info: str) -> tuple[str, str]:
    """(name, version) of a metadata directory or file by its name: ``name-1.0.dist-info``,
    ``name-1.0-py3.11.egg-info``, ``name.egg-info`` (``setup.py develop``: no version)."""
    stem = info
    for suffix in _INFO_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    name, _, rest = stem.partition("-")
    return name, rest.split("-", 1)[0]


_INFO_SUFFIXES = (".dist-info", ".egg-info")


def _is_info(site: str, info: str) -> bool:
    """Is ``site/info`` a distribution's metadata, as importlib.metadata reads it: a ``*.dist-info``
    directory with METADATA, an ``*.egg-info`` directory with PKG-INFO (``setup.py develop``,
    ``setup.py install``), or an ``*.egg-info`` file, the PKG-INFO itself (what distutils
    installed: Debian's and Fedora's packages of old projects)."""
    full = os.path.join(site, info)
    if info.endswith(".dist-info"):
        return os.path.isfile(os.path.join(full, "METADATA"))
    if not info.endswith(".egg-info"):
        return False
    return os.path.isfile(os.path.join(full, "PKG-INFO")) or os.path.isfile(full)


def installed(path: list, want: str | None = None) -> list[tuple[str, str]]:
    """(site, metadata directory or file) of the distributions on ``path`` (the user's sys.path),
    in its order, the first of each name (compared in canonical form), as importlib.metadata
    finds them by name; only the one named ``want`` (any spelling), if given."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for site in path:
        if not isinstance(site, str) or not os.path.isabs(site):
            continue
        try:
            names = sorted(os.listdir(site))
        except OSError:
            continue
        for info in names:
            if not info.endswith(_INFO_SUFFIXES):
                continue
            key = _canonical(info_stem(info)[0])
            if key in seen or (want is not None and key != want) or not _is_info(site, info):
                continue
            seen.add(key)
            out.append((site, info))
            if want is not None:
                return out
    return out


def find_info(name: str, path: list) -> tuple[str, str] | None:
    """(site, ``*.dist-info`` or ``*.egg-info``) of the distribution named ``name`` (any spelling:
    compared in canonical form) on ``path``, the first one found, as importlib.metadata finds it."""
    found = installed(path, _canonical(name))
    return found[0] if found else None


def info_files(site: str, info: str) -> dict[str, str]:
    """The regular files directly in ``site/info`` (METADATA, RECORD, entry_points.txt,
    top_level.txt...), as text: what importlib.metadata reads of a distribution.  An egg-info
    file is its own PKG-INFO: importlib.metadata reads it as ``read_text("")``, so it is served
    under that name."""
    out: dict[str, str] = {}
    root = os.path.join(site, info)
    if os.path.isfile(root):
        text = _small_text(root)
        return {"": text} if text is not None else out
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for fn in names:
        text = _small_text(os.path.join(root, fn))
        if text is not None:
            out[fn] = text
    return out


def _small_text(full: str, limit: int = 0) -> str | None:
    """The text of regular file ``full`` (not a link), if it is at most ``limit`` bytes
    (MAX_INFO_FILE by default)."""
    try:
        st = os.lstat(full)
        if not stat.S_ISREG(st.st_mode) or st.st_size > (limit or MAX_INFO_FILE):
            return None
        with open(full, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except OSError:
        return None


#: what a listing (``distributions()``, ``entry_points()`` on the host) carries of each
#: distribution besides its name and version: the rest is fetched when read
LISTED_FILES = ("entry_points.txt", "top_level.txt")
MAX_LISTED_FILE = 256 << 10


def listing(path: list, abi: dict | None, cache_on: bool) -> list[dict]:
    """The user's distributions on ``path`` for a listing on a host whose Python is ``abi``
    (None: not known) and whose package cache is on or off (``cache_on``): each one's canonical
    name (``key``), Name and Version, its site, and the small files a plugin registry reads
    (``entry_points.txt``, ``top_level.txt``).  Left out, as a lookup by name leaves them out:
    those whose Requires-Python excludes the host's Python, and those that need files on the
    host (compiled code, data) when its cache is off or their wheel's tags do not fit it.
    Remembered while the directories on ``path`` are unchanged (``key``: what else it depends
    on, say ``modules.path_state``): connections to many hosts of one kind list once."""
    key = (tuple(p for p in path if isinstance(p, str)), modules.dir_times(path), json.dumps(abi, sort_keys=True),
           cache_on)
    known = _listings.get(key)
    if known is not None:
        return known
    out = []
    for site, info in installed(path):
        fields = metadata(site, info)
        name, version = info_stem(info)
        if abi:
            try:
                check_python(Unit(name, site, "", info=info), abi, "")
            except Unsendable:
                continue
            tags = _tags(site, info)
            if (not cache_on or tags and not any(tag_ok(t, abi) for t in tags)) and _needs_files(site, info) \
                    and not _pure_but_compiled_rows(site, info):
                continue
        files = {}
        listed = []     # (the files looked for: one of these not in files, the distribution has none)
        for fn in LISTED_FILES:
            full = os.path.join(site, info, fn)
            text = _small_text(full, MAX_LISTED_FILE)
            if text is not None:
                files[fn] = text
            if text is not None or not os.path.lexists(full):
                listed.append(fn)
        out.append({"key": _canonical(name), "name": fields.get("name") or name,
                    "version": fields.get("version") or version, "site": site, "files": files, "listed": listed})
    if len(_listings) > 16:
        _listings.clear()
    _listings[key] = out
    return out


_listings: dict[tuple, list[dict]] = {}


def _needs_files(site: str, info: str) -> bool:
    """Does the distribution need real files on a host (compiled code, data files), by what its
    RECORD lists (``need``, without looking at the files themselves)?"""
    dist = Distribution(info, info, "", site, info=info)
    dist.files = [(row, 0, 0, 0) for row, _h, _s in _record(site, info) if not row.endswith(".pyc")
                  and not row.startswith(("../", "/")) and "__pycache__/" not in row]
    return need(dist) is not None


def _pure_but_compiled_rows(site: str, info: str) -> bool:
    """Does every top-level name of the distribution go from memory, its compiled modules left
    out, where the host cannot load them (``pure_but_compiled``, by what its RECORD lists)?"""
    dist = Distribution(info, info, "", site, info=info)
    dist.files = [(row, 0, 0, 0) for row, _h, _s in _record(site, info) if not row.endswith(".pyc")
                  and not row.startswith(("../", "/")) and "__pycache__/" not in row]
    tops = top_names(site, info)
    for top in tops:
        if any(rel.startswith(top + "/") for rel, _m, _s, _t in dist.files):
            if not pure_but_compiled(dist, Unit(top, site, top, info=info)):
                return False
        elif not any(rel == top + ".py" for rel, _m, _s, _t in dist.files):
            return False        # (a top-level extension module, or nothing of it here)
    return bool(tops)


def installed_editable(site: str, info: str, unit: Unit, editable: dict | None = None) -> bool:
    """Is ``site/info`` the dist-info of a project installed in editable mode, whose package
    ``unit`` lives apart from it, in the project's own directory?  Either setuptools' finder
    maps the name (``editable``, see ``modules.editable_roots``), or the installer put the
    project's directory on sys.path with a ``.pth`` file (hatchling, flit, pdm, setuptools with
    a ``src/`` layout): its ``direct_url.json`` (PEP 610) says editable, and names the project
    directory that holds the package."""
    if unit.info is not None:
        return False
    if editable and unit.name in editable:
        return True
    try:
        with open(os.path.join(site, info, "direct_url.json"), encoding="utf-8") as f:
            said = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(said, dict) or not isinstance(said.get("dir_info"), dict) \
            or said["dir_info"].get("editable") is not True or not isinstance(said.get("url"), str):
        return False
    url = urllib.parse.urlsplit(said["url"])
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        return False
    project = os.path.join(os.path.realpath(urllib.parse.unquote(url.path)), "")
    return os.path.realpath(os.path.join(unit.site, unit.rel)).startswith(project)


def top_names(site: str, info: str) -> list[str]:
    """The top-level modules and packages of a distribution: its ``top_level.txt``, else the
    first components of what its RECORD lists."""
    names: list[str] = []
    try:
        with open(os.path.join(site, info, "top_level.txt"), encoding="utf-8") as f:
            names = [line.strip().replace("/", ".").split(".")[0] for line in f]
    except (OSError, UnicodeDecodeError):
        for row, _h, _s in _record(site, info):
            first = row.split("/", 1)[0]
            names.append(first[:-3] if first.endswith(".py") and "/" not in row else first)
    seen: list[str] = []
    for n in names:
        if n.isidentifier() and n != "__pycache__" and n not in seen:
            seen.append(n)
    return seen


def owner_name(origin: str, path: list) -> str | None:
    """The distribution whose RECORD lists the file ``origin`` (found on ``path``), by name."""
    for site in path:
        if isinstance(site, str) and site and origin.startswith(os.path.join(site, "")):
            info = _owner(site, os.path.relpath(origin, site).replace(os.sep, "/"))
            if info is not None:
                return info[:-len(".dist-info")].partition("-")[0]
    return None


_owners: dict[str, tuple[int, dict[str, list[str]]]] = {}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _owner(site: str, rel: str) -> str | None:
    """The ``*.dist-info`` directory in ``site`` whose RECORD lists ``rel`` (a module file or a
    package directory: a file under it).  The distribution named like the package is tried
    first (reading every RECORD of a large site-packages takes a few hundred milliseconds);
    inside a namespace package several distributions share the first directory, so the
    candidates' RECORDs are read for the whole path."""
    try:
        mtime = os.stat(site).st_mtime_ns
        names = os.listdir(site)
    except OSError:
        return None
    first = rel.split("/", 1)[0]
    stems = {_canonical(first.split(".", 1)[0]), _canonical(rel.replace("/", "_")),
             _canonical(rel.rsplit("/", 1)[-1].split(".", 1)[0])}
    for info in names:
        if info.endswith(".dist-info") and _canonical(info.split("-", 1)[0]) in stems and _lists(site, info, rel):
            return info
    known = _owners.get(site)
    if known is None or known[0] != mtime:
        index: dict[str, list[str]] = {}
        try:
            names = sorted(os.listdir(site))
        except OSError:
            names = []
        for info in names:
            if info.endswith(".dist-info"):
                for top in {row[0].split("/", 1)[0] for row in _record(site, info)}:
                    if top not in ("", ".", "..", info):
                        index.setdefault(top, []).append(info)
        known = _owners[site] = (mtime, index)
    candidates = known[1].get(first, [])
    if "/" not in rel:
        return candidates[0] if candidates else None
    return next((info for info in candidates if _lists(site, info, rel)), None)


def _lists(site: str, info: str, rel: str) -> bool:
    """Does ``info``'s RECORD list ``rel``, or a file under it?"""
    under = rel + "/"
    return any(row == rel or row.startswith(under) for row, _h, _s in _record(site, info))


def _record(site: str, info: str) -> list[tuple[str, str, str]]:
    """RECORD's rows: (path, hash, size), the last two possibly empty."""
    try:
        with open(os.path.join(site, info, "RECORD"), newline="", encoding="utf-8") as f:
            return [(row[0], (row + ["", ""])[1], (row + ["", ""])[2]) for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _recorded_sha256(value: str, size: str, entry: tuple[str, int, int, int], written: int,
                     full: str = "") -> str | None:
    """The file's sha256 as RECORD states it, if the file is as RECORD describes it: the same
    size, and neither modified nor its times set after RECORD was written (installers write
    RECORD last).  The status-change time counts too: a file rewritten in place and given back
    an old modification time (``cp -p``, ``rsync -a``, ``tar x`` of a backup, ``touch -d``) has a
    new one, which no program can set back; trusting RECORD then sent the old file's hash, and
    the host used the old entry."""
    if not value.startswith("sha256=") or size != str(entry[2]) or entry[3] > written:
        return None
    if full:
        try:
            if os.lstat(full).st_ctime_ns > written:
                return None
        except OSError:
            return None
    try:
        raw = base64.urlsafe_b64decode(value[7:] + "=" * (-len(value[7:]) % 4))
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def _tags(site: str, info: str) -> list[str]:
    try:
        with open(os.path.join(site, info, "WHEEL"), encoding="utf-8") as f:
            return [line.split(":", 1)[1].strip() for line in f if line.lower().startswith("tag:")]
    except (OSError, UnicodeDecodeError):
        return []


@functools.lru_cache(maxsize=4096)
def _real_dir(path: str) -> str:
    """realpath of a directory, with a separator after it (cached: a package has few)."""
    return os.path.join(os.path.realpath(path), "")


def _file(site_real: str, site: str, rel: str) -> tuple[str, int, int, int] | None:
    """(rel, mode, size, mtime) of a regular file inside ``site``; None for anything else."""
    if not rel or os.path.isabs(rel) or "\\" in rel or "\0" in rel:
        return None
    norm = os.path.normpath(rel)
    parts = norm.split(os.sep)
    if parts[0] in ("..", ".") or "__pycache__" in parts or norm.endswith(".pyc"):
        return None
    full = os.path.join(site, norm)
    if not _real_dir(os.path.dirname(full)).startswith(site_real):
        return None     # a link that leads out of the site
    try:
        st = os.lstat(full)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None     # the file itself a link, or not a file
    return norm.replace(os.sep, "/"), pkgcache.file_mode(st.st_mode), st.st_size, st.st_mtime_ns


def _record_files(dist: Distribution, info: str) -> None:
    real = _real_dir(dist.site)
    seen = set()
    try:
        st = os.stat(os.path.join(dist.site, info, "RECORD"))
        written = max(st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        written = -1
    for rel, value, size in _record(dist.site, info):
        entry = _file(real, dist.site, rel)
        if entry is None:
            if not rel.endswith(".pyc"):
                dist.refused.append(rel)
        elif entry[0] not in seen:
            seen.add(entry[0])
            dist.files.append(entry)
            known = _recorded_sha256(value, size, entry, written, os.path.join(dist.site, entry[0]))
            if known:
                dist.known[entry[0]] = known


def _walk_files(dist: Distribution, key: str) -> None:
    """A package directory (or module file) that no distribution owns: all of it but hidden
    files, bytecode and links."""
    real = _real_dir(dist.site)
    root = os.path.join(dist.site, key)
    if not os.path.isdir(root):
        entry = _file(real, dist.site, key)
        dist.files.extend([entry] if entry else [])
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            entry = _file(real, dist.site, os.path.relpath(os.path.join(dirpath, fn), dist.site))
            if entry is not None:
                dist.files.append(entry)
            if len(dist.files) > MAX_FILES:
                return


# -- the hash ------------------------------------------------------------------------------

_digests: dict[tuple, str] = {}


def digest(dist: Distribution) -> str:
    """The content hash that names the host's cache entry (remembered while files are unchanged)."""
    key = (dist.site, tuple(dist.files))
    known = _digests.get(key)
    if known is not None:
        return known
    h = pkgcache.Hasher()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    for rel, mode, size, _mtime in dist.files:
        if pkgcache.is_bytecode(rel):
            continue        # derived from the sources, not content (see agent/pkgcache.py)
        if rel in dist.known:
            h.known(rel, mode, size, dist.known[rel])
            continue
        h.file(rel, mode, size)
        left = size
        with open(os.path.join(dist.site, rel), "rb") as f:
            while left > 0:
                n = f.readinto(buf)
                if not n:
                    raise OSError("%s changed while it was read" % os.path.join(dist.site, rel))
                h.data(view[:min(n, left)])
                left -= n
    if len(_digests) > 256:
        _digests.clear()
    known = _digests[key] = h.hexdigest()
    return known


# -- bytecode ---------------------------------------------------------------------------------

def add_bytecode(dist: Distribution, abi: dict) -> None:
    """Add the ``__pycache__`` files we have that the host's interpreter would take as they
    are (same cache tag and magic number; compiled from exactly these sources): its first
    import then compiles nothing."""
    import importlib.util

    if abi.get("cache_tag") != sys.implementation.cache_tag or abi.get("magic") != importlib.util.MAGIC_NUMBER.hex():
        return
    real = _real_dir(dist.site)
    have = {f[0] for f in dist.files}
    for rel, _mode, size, mtime in list(dist.files):
        if not rel.endswith(".py") or rel.split("/", 1)[0].endswith(".dist-info"):
            continue
        head, _, base = rel.rpartition("/")
        pyc = "%s__pycache__/%s.%s.pyc" % (head + "/" if head else "", base[:-3], sys.implementation.cache_tag)
        if pyc in have:
            continue
        entry = _pyc_file(real, dist.site, pyc)
        if entry is not None and _pyc_matches(os.path.join(dist.site, pyc), size, mtime):
            dist.files.append(entry)
    dist.files.sort()


def _pyc_file(site_real: str, site: str, rel: str) -> tuple[str, int, int, int] | None:
    full = os.path.join(site, rel)
    if not _real_dir(os.path.dirname(full)).startswith(site_real):
        return None
    try:
        st = os.lstat(full)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return rel, pkgcache.file_mode(st.st_mode), st.st_size, st.st_mtime_ns


def _pyc_matches(path: str, size: int, mtime_ns: int) -> bool:
    """A timestamp-based pyc of this interpreter, for a source of this size and time."""
    import importlib.util

    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER or int.from_bytes(head[4:8], "little") != 0:
        return False
    return (int.from_bytes(head[8:12], "little") == (mtime_ns // 1_000_000_000) & 0xFFFFFFFF
            and int.from_bytes(head[12:16], "little") == size & 0xFFFFFFFF)


# -- can the host load it? -------------------------------------------------------------------

def local_abi() -> dict:
    """This interpreter, described as a host's agent describes its own (``pkgcache.abi``)."""
    return pkgcache.abi()


def describe_abi(abi: dict) -> str:
    libc = abi.get("libc") or [None, None]
    return "%s %s on %s%s (extension suffix %s)" % (
        abi.get("implementation"), ".".join(map(str, abi.get("version") or ())), abi.get("machine"),
        " with %s %s" % (libc[0], libc[1] or "") if libc[0] else "", (abi.get("suffixes") or ["?"])[0])


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:2])


def _interpreter_ok(tag: str, abi: dict, stable_abi: bool = False) -> bool:
    """``stable_abi``: the wheel's ABI tag is ``abi3``, whose ``cpXY`` means CPython X.Y *or later*
    (PEP 384, PEP 425; pip installs a ``cp39-abi3`` wheel on CPython 3.9 to 3.13)."""
    impl, ver = abi.get("implementation"), tuple(abi.get("version") or ())
    m = re.match(r"^(py|cp|pp)(\d)(\d*)$", tag)
    if not m:
        return False
    kind, major, minor = m.group(1), int(m.group(2)), m.group(3)
    if kind == "cp" and impl != "cpython" or kind == "pp" and impl != "pypy":
        return False
    if ver[:1] != (major,):
        return False
    if not minor:
        return True
    return (int(minor),) == ver[1:2] or ((kind == "py" or kind == "cp" and stable_abi) and int(minor) <= ver[1])


def _abi_ok(tag: str, abi: dict) -> bool:
    suffixes = abi.get("suffixes") or []
    if tag == "none":
        return True
    if tag == "abi3":
        return ".abi3.so" in suffixes
    if tag.startswith("cp"):
        return any(s.startswith(".cpython-%s-" % tag[2:]) for s in suffixes)
    return any(tag.replace("_", "-") in s for s in suffixes)


def _platform_ok(tag: str, abi: dict) -> bool:
    if tag == "any":
        return True
    machine = abi.get("machine")
    family, version = (abi.get("libc") or [None, None])[:2]
    legacy = re.match(r"^(manylinux1|manylinux2010|manylinux2014)_(\w+)$", tag)
    if legacy:
        need: tuple[int, ...] = _LEGACY[legacy.group(1)]
        kind, arch = "manylinux", legacy.group(2)
    else:
        m = _PLATFORM.match(tag)
        if m is None:
            if tag.startswith("linux_"):
                return abi.get("system") == "linux" and tag[len("linux_"):] == machine
            if tag.startswith("macosx_"):
                return abi.get("system") == "darwin" and tag.rsplit("_", 1)[-1] in (machine, "universal2")
            return False
        kind, need, arch = m.group(1), (int(m.group(2)), int(m.group(3))), m.group(4)
    if arch != machine:
        return False
    if kind == "manylinux":
        return family == "glibc" and _version(version) >= need
    return family == "musl" and (version is None or _version(version) >= need)


def tag_ok(tag: str, abi: dict) -> bool:
    """Does the host described by ``abi`` accept the (possibly compressed) wheel tag ``tag``?"""
    try:
        interp, abi_tag, plat = tag.split("-")
    except ValueError:
        return False
    return (any(_interpreter_ok(i, abi, a == "abi3") and _abi_ok(a, abi)
                for i in interp.split(".") for a in abi_tag.split("."))
            and any(_platform_ok(t, abi) for t in plat.split(".")))


def check(dist: Distribution, abi: dict, display: str, python: str = "python3") -> None:
    """Raise Unsendable (naming the package, both sides' tags and the fix) unless the host
    can load what ``dist`` holds."""
    ours = local_abi()
    exts = [rel for rel, _m, _s, _t in dist.files if is_extension(rel)]
    reason = None
    if dist.tags and not any(tag_ok(t, abi) for t in dist.tags):
        reason = "its wheel's tags are %s" % ", ".join(dist.tags)
    if reason is None:
        alien = [rel for rel in exts if _foreign_suffix(rel, abi)]
        if alien:
            reason = "its extension %s is built for another interpreter" % alien[0]
    if reason is None and exts and not dist.tags:
        same = (abi.get("machine") == ours["machine"] and (abi.get("libc") or [None])[0] == ours["libc"][0])
        if not same:
            reason = "it was built here, for %s" % describe_abi(ours)
    stable = None
    if reason is None and not dist.tags:
        stable = _stable_abi_too_old(exts, abi, ours)
        reason = stable and (
            "its extension %s was built here in place (no wheel's tags say the oldest Python it loads on) for the "
            "stable ABI of %s %s, which may use what older ones lack" % (
                stable, _IMPLEMENTATIONS.get(ours["implementation"], ours["implementation"]),
                ".".join(map(str, ours["version"]))))
    if reason is None:
        return
    if stable:
        major, minor = (list(abi.get("version") or ()) + [0, 0])[:2]
        other = ("build it for the oldest Python you target and install it here from its wheel, whose tag says so "
                 "(Py_LIMITED_API=0x%02x%02x0000 and py_limited_api='cp%d%d' for %d.%d: a cp%d%d-abi3 wheel; a build "
                 "in place says not), or run on that host a %s %s or later (the python= option)" % (
                     major, minor, major, minor, major, minor, major, minor,
                     _IMPLEMENTATIONS.get(ours["implementation"], ours["implementation"]),
                     ".".join(map(str, ours["version"]))))
    elif _same_python(abi, ours):
        other = "install here a build of %s whose tags that host accepts" % dist.name
    else:   # (no build installed here can be for both: the host's Python must be ours, or have its own)
        other = "run on that host a %s %s, as here (the python= option)" % (
            _IMPLEMENTATIONS.get(ours["implementation"], ours["implementation"]), ".".join(map(str, ours["version"])))
    raise Unsendable(
        "cannot send package %r (%s) to %s: %s, but the host runs %s, which cannot load it. Fix: install "
        "%s on the host with its own Python (%s), or %s" % (dist.top, dist.label, display, reason, describe_abi(abi),
                                                           dist.name, _install(dist.name, dist.version, python, abi,
                                                                               origin=installed_from(dist.site,
                                                                                                     dist.info)),
                                                           other))


def _foreign_suffix(rel: str, abi: dict) -> bool:
    """An extension whose file name carries an interpreter tag the host does not load."""
    base = rel.rsplit("/", 1)[-1]
    if not re.search(r"\.(cpython|pypy|abi3)[^/]*\.so$", base):
        return False        # untagged (.so, vendored libraries): the wheel tags speak for it
    return not any(base.endswith(s) for s in abi.get("suffixes") or [] if s != ".so")


def _stable_abi_too_old(exts: list[str], abi: dict, ours: dict) -> str | None:
    """The first of ``exts`` (a distribution's compiled files, with no wheel's tags) built for the
    stable ABI (``.abi3.so``) that the host's Python may not load, or None.  Such a build says
    nothing of the oldest Python it is for (a wheel's ``cpXY-abi3`` tag does: X.Y or later): it is
    taken as built for ours, the interpreter that built it here, so as a ``cpXY-abi3`` wheel of our
    X.Y it goes to that X.Y and later, never to an older Python (whose loader fails on what our
    version added to the stable ABI: ``undefined symbol: PyType_GetName`` on 3.9 for a 3.11 build)."""
    stable = [rel for rel in exts if rel.rsplit("/", 1)[-1].endswith(".abi3.so")]
    if not stable:
        return None
    tag = "cp%s" % "".join(map(str, list(ours["version"])[:2]))
    return None if _interpreter_ok(tag, abi, stable_abi=True) else stable[0]


_IMPLEMENTATIONS = {"cpython": "CPython", "pypy": "PyPy"}


def _same_python(abi: dict, ours: dict) -> bool:
    return abi.get("implementation") == ours["implementation"] and list(abi.get("version") or ())[:2] == \
        list(ours["version"])[:2]


def host_python(found: object, executable: object, setup: tuple | list = ()) -> str:
    """The shell words that run the host's Python in the fixes we suggest (``... -m pip install``):
    the user's own python= words as given (the agent's hello says ``python=WORDS`` when they found
    it: a wrapper, ``env LD_LIBRARY_PATH=... python3``, ``~/venv/bin/python3``), which its path alone
    may not start as; else that path (``sys.executable`` there), quoted for a shell.  After the
    ``setup=`` lines, when there are any (``module load python/3.13 && ...``): the interpreter may
    need what they set up."""
    import shlex

    if isinstance(found, str) and found.startswith("python=") and found[len("python="):].strip():
        words = found[len("python="):].strip()
    elif isinstance(executable, str) and executable:
        words = shlex.quote(executable)
    else:
        words = "python3"
    lines = [line.strip() for line in setup if isinstance(line, str) and line.strip()]
    return " && ".join(lines + [words])


def _install(dist_name: str, version: str, python: str, abi: dict | None = None, note: str = "",
             origin: tuple[str, str] | None = None) -> str:
    """The command that installs ``dist_name`` (``version``, if given) with the host's ``python``:
    pip's ``--user`` (without it in a virtual environment, whose pip refuses it); or, where that
    Python is externally managed (PEP 668: Debian 12, Ubuntu 23.04 and later ..., whose pip
    refuses even ``--user``), a virtual environment, and python= naming it.  ``note``: said after
    the command ("there picks one").  ``origin``: where it came from when not from a package index
    (``installed_from``): pip installs that instead of the name, which on an index may be
    nothing, another release or another project altogether."""
    want = "%s==%s" % (dist_name, version) if version else dist_name
    where = ""
    if origin is not None:
        kind, url = origin
        if kind == "url":
            want = "'%s'" % url
        elif kind == "file" and not url.endswith(".whl"):   # a project directory or sdist of this machine
            want = "./%s" % (os.path.basename(url.rstrip("/")) or dist_name)
            where = (" beside a copy of %s there: %s was installed here from that path, not from a package index"
                     % (url, dist_name))
            note = ""
        else:       # built in place, or from a wheel file built for this Python: its source is what helps
            want = "."
            where = (" in a copy of its project there: %s was %s here, not installed from a package index"
                     % (dist_name, "built in place in %s" % url if kind == "built" else "installed from " + url))
            note = ""
    if abi and abi.get("managed"):
        return ("`%s -m venv ~/venv && ~/venv/bin/pip install %s`%s%s, then python='~/venv/bin/python3': that "
                "Python is externally managed, its pip installs nothing outside a virtual environment"
                % (python, want, where, note))
    return "`%s -m pip install%s %s`%s%s" % (python, "" if abi and abi.get("venv") else " --user", want, where,
                                              note)


def installed_from(site: str, info: str | None) -> tuple[str, str] | None:
    """Where a distribution was installed from when that was not a package index, as pip's
    ``direct_url.json`` (PEP 610) records it: ("file", a local directory or archive), ("url", a
    VCS checkout at its commit or a remote archive, as pip takes it); ("built", ``site``) for a
    package no distribution owns (built in place); None for an index (or nothing recorded)."""
    if not info:
        return ("built", site)
    try:
        with open(os.path.join(site, info, "direct_url.json"), encoding="utf-8") as f:
            said = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(said, dict) or not isinstance(said.get("url"), str):
        return None
    url = said["url"]
    vcs = said.get("vcs_info")
    if isinstance(vcs, dict) and isinstance(vcs.get("vcs"), str):
        commit = vcs.get("commit_id")
        return ("url", "%s+%s%s" % (vcs["vcs"], url, "@" + commit if isinstance(commit, str) else ""))
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return ("file", urllib.parse.unquote(parts.path))
    return ("url", url)


def refuse_cache_off(dist: Distribution, display: str, python: str = "python3", abi: dict | None = None) -> Unsendable:
    """The error for a package that needs files on a host whose package cache is off."""
    return Unsendable(
        "cannot send package %r (%s) to %s: it holds %s, which must be real files there, and the host's package "
        "cache is turned off (cache_size=0). Fix: install %s there with the host's own Python (%s), or leave "
        "cache_size at its default so that it goes to the host's package cache"
        % (dist.top, dist.label, display, need(dist), dist.name,
           _install(dist.name, dist.version, python, abi, origin=installed_from(dist.site, dist.info))))


# -- Requires-Python ----------------------------------------------------------------------------

_metadata: dict[tuple[str, int], dict[str, str]] = {}


def metadata(site: str, info: str) -> dict[str, str]:
    """The header fields of a distribution's METADATA (lower-case names; the first of each); an
    egg-info's PKG-INFO (or the egg-info file itself)."""
    path = os.path.join(site, info)
    if info.endswith(".dist-info"):
        path = os.path.join(path, "METADATA")
    elif not os.path.isfile(path):
        path = os.path.join(path, "PKG-INFO")
    try:
        key = (path, os.stat(path).st_mtime_ns)
    except OSError:
        return {}
    fields = _metadata.get(key)
    if fields is None:
        fields = {}
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.strip():
                        break       # the headers end at the first empty line
                    name, colon, value = line.partition(":")
                    if colon and not line[0].isspace():
                        fields.setdefault(name.strip().lower(), value.strip())
        except OSError:
            return {}
        if len(_metadata) > 1024:
            _metadata.clear()
        fields = _metadata[key] = fields
    return fields


def check_python(unit: Unit, abi: dict, display: str, python: str = "python3") -> None:
    """Raise Unsendable (naming the distribution, its Requires-Python, the host's Python and
    the fix) when the distribution that ``unit`` comes from excludes the host's Python.  A
    specifier that our own Python does not meet either is not enforced here (the package was
    installed regardless, and runs), nor is one we cannot parse."""
    if unit.info is None:
        return
    spec = metadata(unit.site, unit.info).get("requires-python")
    if not spec:
        return
    have = tuple(abi.get("python") or tuple(abi.get("version") or ()) + (0,))[:3]
    if len(have) < 2:
        return
    verdict = requires_python.allows(spec, have)
    if verdict is None:
        log.debug("%s: %s: cannot parse Requires-Python %r; sending it anyway", display, unit.info, spec)
        return
    if verdict or requires_python.allows(spec, tuple(sys.version_info[:3])) is False:
        return
    fields = metadata(unit.site, unit.info)
    name = fields.get("name") or unit.dist_name or unit.name
    version = fields.get("version") or info_stem(unit.info)[1]
    host = "%s %s" % (abi.get("implementation") or "Python", ".".join(map(str, have)))
    raise Unsendable(
        "cannot send %r (%s %s) to %s: it requires Python %s (its Requires-Python), but the host runs %s. Fix: "
        "install a release of %s that supports Python %s on the host with its own Python (%s), or run on that "
        "host a Python that matches (the python= option)"
        % (unit.name, name, version, display, spec, host, name, ".".join(map(str, have[:2])),
           _install(name, "", python, abi, " there picks one", installed_from(unit.site, unit.info))))
