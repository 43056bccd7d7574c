"""Spawn mode, remote side: a child on another Python than the user's.

When the host runs another Python version (or implementation) than the user's,
nothing can travel by value: the process object and everything sent to it are
pickled by reference, as ``multiprocessing``'s *spawn* start method does.  Like
spawn, the child first imports the user's main script as ``__mp_main__`` (so
its ``if __name__ == "__main__":`` block does not run) and makes it
``sys.modules["__main__"]`` too, so that references to ``__main__.func`` resolve.

The pickled process object calls ``prepare`` while it is being unpickled, before
its target and arguments are loaded (see ``remoteproc/reduction.py``).  Shipped
with the agent: standard library only, and Python 3.8 syntax.
"""

import re
import sys
import types

#: True in a child that runs in spawn mode: its items (Queue, Pool results) go by reference
ACTIVE = False
_imported: list = []      # the user's main module, once imported here
#: the user's Python ("cpython 3.11"), from the main script's record; None until known
USER_PYTHON = None


class StandInUsed(RuntimeError):
    """A stand-in of remoteproc used in a spawn-mode child (``_script_failed`` tells it apart)."""


class StandIn:
    """What ``from remoteproc import X`` gives a spawn-mode child: a name that exists.

    The user's script imports remoteproc at its top; here (another Python, where
    remoteproc itself does not run) those names only have to exist.
    """

    def __init__(self, *args, **kwargs):
        raise _stand_in_used(self)


def _stand_in_used(obj):
    return StandInUsed("remoteproc.%s cannot be used inside a remote process that runs another Python "
                       "version than the caller's (spawn mode): start remote processes from the "
                       "caller's side" % type(obj).__name__)


#: remoteproc's process classes: their stand-ins are ``multiprocessing.Process`` classes, so that the
#: user's subclass (``class Worker(RemoteProcess)`` in the script) is one here, and runs as in a
#: same-version child (where its class comes by value with ``multiprocessing.Process`` as its base)
PROCESS_CLASSES = ("RemoteProcess", "RemoteScript")


def _process_stand_in():
    import multiprocessing

    class ProcessStandIn(multiprocessing.Process):
        """A process class of remoteproc here: the user's subclass of it runs (its object comes
        pickled, without ``__init__``); making a new one is refused as every stand-in is."""

        def __init__(self, *args, **kwargs):
            raise _stand_in_used(self)

    return ProcessStandIn


def _install_stand_in(names):
    pkg = sys.modules.get("remoteproc")
    if pkg is None:     # pragma: no cover - the agent is the remoteproc package here
        return
    made = {}

    def __getattr__(name):
        if name.startswith("__") or name not in names:
            raise AttributeError("module 'remoteproc' has no attribute %r" % name)
        if name not in made:
            base = _process_stand_in() if name in PROCESS_CLASSES else StandIn
            made[name] = type(name, (base,), {"__module__": "remoteproc"})
        return made[name]

    pkg.__getattr__ = __getattr__     # type: ignore[method-assign]  # (a module's own __getattr__)


#: modules that a newer Python's pickles name and an older one lacks: name -> (the older
#: Python's module that holds the same names, the first version that has the name itself).
#: Python 3.13 moved pathlib's classes to ``pathlib._local``: its ``Path`` pickles as
#: ``pathlib._local.PosixPath``, which 3.12 and older cannot import.
RENAMED = {"pathlib._local": ("pathlib", (3, 13))}


class _Renamed(types.ModuleType):
    """A newer Python's module name, standing for the module that holds its names here
    (imported at the first look-up: nothing is imported until a pickle names it)."""

    def __init__(self, name, target):
        super().__init__(name)
        self._target = target

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        import importlib

        return getattr(importlib.import_module(self._target), attr)


def accept_newer_pickles():
    """Let objects pickled by a newer Python load here: a spawn-mode child, and the user's process
    that talks to one, may run different versions (docs/python-versions.md, "Spawn mode")."""
    from importlib.machinery import ModuleSpec

    for name, (target, since) in RENAMED.items():
        if sys.version_info[:2] < since and name not in sys.modules:
            module = _Renamed(name, target)
            module.__spec__ = ModuleSpec(name, None)
            sys.modules[name] = module


def prepare(main):
    """Unpickling hook, called before the process object's state is loaded.

    ``main``: None, or a dict with the user's main script (``path``, ``source``), the
    public names of ``remoteproc`` (``names``) and the parent's ``sys.argv`` (``argv``).
    """
    global ACTIVE
    ACTIVE = True
    accept_newer_pickles()
    if main is None:
        return None
    global USER_PYTHON
    USER_PYTHON = main.get("python") or USER_PYTHON
    if main.get("argv"):
        sys.argv[:] = main["argv"]      # (as multiprocessing's spawn: the script may parse them)
    _install_stand_in(frozenset(main.get("names", ())))
    # (multiprocessing's __init__ makes __mp_main__ the running __main__, the agent's here)
    if not _imported and main.get("source") is not None:
        module = types.ModuleType("__mp_main__")
        module.__file__ = main["path"]
        # A spec named "__main__": this child's own spawn and forkserver children (forkserver is
        # 3.14's default) then leave their __main__ alone, as for ``python -m pkg``, instead of
        # running the script from its path, which is the user's and not on this host.
        from importlib.machinery import ModuleSpec

        module.__spec__ = ModuleSpec("__main__", None)
        sys.modules["__mp_main__"] = module
        try:
            code = compile(main["source"], main["path"], "exec", dont_inherit=True)
            exec(code, module.__dict__)
        except BaseException as exc:
            del sys.modules["__mp_main__"]
            if isinstance(exc, Exception):
                exc._remoteproc_hint = _script_failed(main, exc)  # type: ignore[attr-defined]  # (child.py prints it)
            raise
        _remember_lines(main["path"], main["source"])
        from . import grandchild

        grandchild.remember_script(main)
        _imported.append(module)
        sys.modules["__main__"] = module
    return None


def _script_failed(main, exc):
    """What to tell the user whose script failed here, under another Python than theirs."""
    ours = _this_python()
    module = module_failed(exc, main.get("path"))
    if module is not None:      # (the script compiled: a module it imports did not)
        return module
    if isinstance(exc, StandInUsed):
        # (a script without ``if __name__ == "__main__":`` starts processes at its top level; under
        # multiprocessing's spawn that is its "bootstrapping phase" RuntimeError)
        return ("this host runs %s, not %s as you do (spawn mode): the child imports your script %s first, as "
                "multiprocessing's spawn does, and its top level starts remote processes itself: the script has "
                "no `if __name__ == \"__main__\":` around that code. Fix: put the code that starts processes "
                "under `if __name__ == \"__main__\":` (as multiprocessing requires with spawn), or pass python= "
                "with a Python like yours on the host (then the script's top level does not run there; "
                "docs/python-versions.md)" % (ours, main.get("python") or "the same", main.get("path")))
    if isinstance(exc, SyntaxError):
        what = "cannot compile it: its syntax is newer (match needs 3.10, except* 3.11, type statements 3.12)"
        keep = "keep the script to the syntax of %s (newer code can go into a module the target does not import)" % ours
    elif isinstance(exc, ImportError) and (gap := stdlib_gap(exc)):
        what = "its top level's import of %r failed here: %s" % (exc.name, gap)
        keep = ("move that import under `if __name__ == \"__main__\":` or into the functions that use it (or "
                "make it conditional: try/except ImportError)")
    elif isinstance(exc, ImportError):
        # (the error above says what is missing and, for a package of the user's, how to install it)
        what = "its top level's import of %r failed here (above: why)" % (exc.name or "a module")
        keep = ("install it on the host for %s as the error above says, or move that import under "
                "`if __name__ == \"__main__\":` or into the functions that use it" % ours)
    elif isinstance(exc, (TypeError, AttributeError, NameError)):
        what = "its top level failed here"
        keep = "keep the script's top level to what %s runs" % ours
    else:
        # (not a matter of versions: a file of the user's machine that the top level opens, ...)
        what = ("its top level failed here, on the host, where it runs as in every spawn child (%s: %s)"
                % (type(exc).__name__, exc))
        keep = ("move what needs your machine (its files, its devices, ...) under `if __name__ == "
                "\"__main__\":` or into the functions that use it")
    return ("this host runs %s, not %s as you do (spawn mode): the child imports your script %s first, as "
            "multiprocessing's spawn does, and %s. Fix: %s, or pass python= with a Python like yours on the "
            "host (docs/python-versions.md)" % (ours, main.get("python") or "the same", main.get("path"), what, keep))


def _this_python():
    ours = "Python %d.%d.%d" % sys.version_info[:3]
    if sys.implementation.name != "cpython":
        ours = "%s (%s)" % (ours, sys.implementation.name)
    return ours


def _hosts_own(path):
    """True for a file of this host's Python (its standard library, its site-packages)."""
    import os
    import site

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except (AttributeError, OSError):
        pass
    real = os.path.realpath(path)
    return any(r and (path.startswith(r + os.sep) or real.startswith(os.path.realpath(r) + os.sep))
               for r in roots)


#: the top-level modules of CPython's standard library that one Python from 3.8 on has and another
#: lacks: an import of one fails on a host of another version, and installing it is no fix
_STDLIB_CHANGES = dict(
    [(m, "new in Python 3.9") for m in ("graphlib", "zoneinfo")]
    + [("tomllib", "new in Python 3.11")]
    + [(m, "new in Python 3.14") for m in ("annotationlib", "compression")]
    + [(m, "removed in Python 3.12") for m in ("asynchat", "asyncore", "distutils", "imp", "smtpd")]
    + [(m, "removed in Python 3.13") for m in (
        "aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "lib2to3", "mailcap", "msilib", "nis",
        "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib")])
#: backports on PyPI of what a newer standard library has
_BACKPORTS = {"tomllib": "tomli", "zoneinfo": "backports.zoneinfo", "graphlib": "graphlib_backport"}


def stdlib_gap(exc):
    """Why ``exc`` (an ImportError) is a matter of the two standard libraries, or None: a module
    that is standard in one version and not in the host's (``tomllib`` on 3.10, ``imp`` on 3.12), or
    a name that the host's own standard module lacks (``from enum import StrEnum`` on 3.10)."""
    name = getattr(exc, "name", None)
    if not isinstance(exc, ImportError) or not isinstance(name, str):
        return None
    top = name.split(".")[0]
    if isinstance(exc, ModuleNotFoundError):
        if top not in _STDLIB_CHANGES:
            return None
        gap = "%r is a module of the standard library %s, and the host's has none" % (top, _STDLIB_CHANGES[top])
        if top in _BACKPORTS and "new" in _STDLIB_CHANGES[top]:
            gap += " (its backport on PyPI: %s)" % _BACKPORTS[top]
        return gap
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None) or ""
    import sysconfig

    stdlib = sysconfig.get_paths().get("stdlib") or ""
    if module is None or not stdlib or not (path.startswith(stdlib) and "-packages" not in path):
        return None
    return ("%r is the host's standard library module, which lacks what is imported from it: the standard "
            "library differs between Python versions" % name)


def module_failed(exc, script=None):
    """Why one of the user's modules failed to import in a spawn-mode child, or None.

    A module of the user's that uses syntax newer than the host's Python (``match`` on 3.9),
    or whose top level needs a newer Python (``int | None`` on 3.9), failed with the bare
    SyntaxError or TypeError: nothing said that the host runs another Python, nor what to do
    (the main script has its own words, ``_script_failed``).  Only a SyntaxError of a user's
    file, a TypeError, AttributeError or NameError raised at a user's module top level, or an
    import that the two standard libraries decide (``stdlib_gap``), get them; the host's own
    files never do."""
    if not ACTIVE or getattr(exc, "_remoteproc_hint", None):
        return None
    script = script or (_imported[0].__file__ if _imported else None)
    if isinstance(exc, SyntaxError):
        path = exc.filename
        what = "cannot compile it: its syntax is newer (match needs 3.10, except* 3.11, type statements 3.12)"
        keep = "keep that module to the syntax of %s" % _this_python()
    elif isinstance(exc, ImportError) and (gap := stdlib_gap(exc)):
        tb, path = exc.__traceback__, None
        while tb is not None:       # (the last frame of a file: importlib's own frames are "<frozen ...>")
            name = tb.tb_frame.f_code.co_filename
            if not name.startswith("<") and not _hosts_own(name):
                path = name
            tb = tb.tb_next
        what = "its import of %r failed here: %s" % (exc.name, gap)
        keep = "make that import conditional (try/except ImportError), or use what %s has" % _this_python()
    elif isinstance(exc, (TypeError, AttributeError, NameError)):
        tb, last = exc.__traceback__, None
        while tb is not None:
            last, tb = tb, tb.tb_next
        if last is None or last.tb_frame.f_code.co_name != "<module>":
            return None
        path = last.tb_frame.f_code.co_filename
        what = "its top level failed here (it may use what only a newer Python has: X | None, ...)"
        keep = "keep that module's top level to what %s runs" % _this_python()
    else:
        return None
    if not path or path.startswith("<") or path == script or _hosts_own(path):
        return None
    return ("this host runs %s, not %s as you do (spawn mode): the child imports your module %s, and %s. "
            "Fix: %s, or pass python= with a Python like yours on the host (docs/python-versions.md)"
            % (_this_python(), USER_PYTHON or "another Python", path, what, keep))


_MAIN_LACKS = re.compile(r"Can't get attribute '([^']+)' on <module '__main__'|"
                         r"module '__main__' has no attribute '([^']+)'")


def main_lacks(exc):
    """Why the script's ``__main__`` lacks what the payload names, in a spawn-mode child, or None:
    the host imports the script as ``__mp_main__`` (as multiprocessing's spawn does), so what only
    its ``if __name__ == "__main__":`` block defines does not exist here, though it did at home."""
    if not ACTIVE or not isinstance(exc, AttributeError):
        return None
    found = _MAIN_LACKS.search(str(exc))
    if found is None:
        return None
    name = found.group(1) or found.group(2)
    return ("this host runs %s, not %s as you do (spawn mode): the child imports your script as "
            "__mp_main__, as multiprocessing's spawn does, so what only its if __name__ == '__main__': block "
            "(or code run from there) defines, as %s, does not exist here. Fix: define %s at the script's top "
            "level, outside that block, or in a module of yours; or pass python= with a Python like yours on "
            "the host (docs/python-versions.md)" % (_this_python(), USER_PYTHON or "another Python", name, name))


def explain(exc):
    """Add ``module_failed``'s words (or ``child._shadowed``'s: a module of the host's own lacks
    what the task names), with the host's name, to ``exc``'s message (it travels back to the user
    as it is: a Pool's or Executor's task that could not be unpickled)."""
    from .child import _shadowed

    if getattr(exc, "_remoteproc_hint", None):
        return exc._remoteproc_hint         # (already said: a Pool's task error passes here twice)
    hint = module_failed(exc) or _shadowed(exc) or main_lacks(exc)
    if hint is None:
        return None
    host = this_host()
    if add_to_message(exc, "%s: %s" % (host, hint) if host else hint):
        exc._remoteproc_hint = hint  # (said once)
    return hint


def this_host():
    """The host's name as the user gave it, in a remote child (its importer knows it); else None."""
    from .child import ParentImporter

    return next((f.host for f in sys.meta_path if isinstance(f, ParentImporter)), None)


def add_to_message(exc, text):
    """Append `` (text)`` to ``exc``'s message, which travels back to the user as it is; False when
    its arguments are not one message (an OSError's errno and text) or cannot be set."""
    try:
        if isinstance(exc, SyntaxError):
            exc.msg = "%s (%s)" % (exc.msg, text)
            exc.args = (exc.msg,) + tuple(exc.args[1:])
        elif len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = ("%s (%s)" % (exc.args[0], text),)
        else:
            return False
    except (AttributeError, TypeError):
        return False
    return True


def _remember_lines(path, source):
    """The script exists only on the caller's host: keep its lines for tracebacks."""
    import linecache

    lines = source.splitlines(True)
    linecache.cache[path] = (len(source), None, lines, path)


def rebuild_process(_prepared, cls, state):
    """Unpickling hook: the process object (``_prepared`` is ``prepare``'s result, loaded first)."""
    from .child import inherit

    inherit(state)
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj
