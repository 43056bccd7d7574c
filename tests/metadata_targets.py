"""Targets for tests/test_metadata_discovery.py: they also run on CPython 3.8 ... 3.13 hosts in spawn
mode, so standard library only and Python 3.8 syntax; the remote side imports this module by
forwarding.  Each sends what it found, as plain data, so that a test compares it with what the
same function finds locally."""

import importlib
import re


def _canonical(name):
    return re.sub(r"[-_.]+", "_", str(name)).lower()


def _group(group):
    """entry_points() of a group, on any Python (3.8 and 3.9 return a dict of groups)."""
    import importlib.metadata as md

    eps = md.entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=group))
    return list(eps.get(group, ()))


def plugins(conn, group, prefix):
    """A plugin registry: the entry points of ``group``, each loaded, and the distributions whose
    name starts with ``prefix``, as ``distributions()`` lists them (with their versions)."""
    import importlib.metadata as md

    found = []
    for ep in _group(group):
        try:
            loaded = repr(ep.load())
        except Exception as exc:  # noqa: BLE001 - reported to the test
            loaded = "%s: %s" % (type(exc).__name__, exc)
        found.append((ep.name, ep.value, loaded))
    listed = []
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if _canonical(name).startswith(prefix):
            listed.append((_canonical(name), dist.version))
    conn.send({"plugins": sorted(found), "listed": sorted(listed)})


def described(conn, names, group):
    """What importlib.metadata says of the distributions ``names``, by name, before any import;
    and the entry points of ``group``."""
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            out[name] = "PackageNotFoundError"
            continue
        out[name] = {"version": md.version(name), "summary": dist.metadata["Summary"],
                     "requires": md.requires(name),
                     "files": sorted(str(f) for f in md.files(name) or ()),
                     "entry_points": sorted((ep.group, ep.name, ep.value) for ep in dist.entry_points)}
    out["group"] = sorted((ep.name, ep.value) for ep in _group(group))
    conn.send(out)


def submodules(conn, package):
    """pkgutil's view of ``package``: iter_modules of its __path__ (with and without a prefix, and
    of a copy of it), and walk_packages, each module found imported."""
    import pkgutil

    pkg = importlib.import_module(package)
    out = {
        "iter": sorted((m.name, m.ispkg) for m in pkgutil.iter_modules(pkg.__path__)),
        "prefixed": sorted(m.name for m in pkgutil.iter_modules(pkg.__path__, package + ".")),
        "walk": sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")),
    }
    loaded = []
    for name in out["walk"]:
        mod = importlib.import_module(name)
        loaded.append((name, getattr(mod, "WHO", None)))
    out["loaded"] = loaded
    conn.send(out)
