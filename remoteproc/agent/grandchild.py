"""A remote child's own *spawn* and *forkserver* children (forkserver is Python 3.14's default).

Those are new interpreters on the host.  ``multiprocessing`` gives them the child's
``sys.path`` and the name or path of its main module, and they import what they run by
reference.  The user's script is not on the host and module forwarding lives in the child's
memory, so ``__main__.work`` or a forwarded module's function would not be found there.

So before such a process starts (``spawn.get_preparation_data``, which both start methods
call), the child writes a directory of its own: a loader module and a ``marshal`` of what the
child has in memory (the shipped agent and cloudpickle, the forwarded modules it knows, and
its ``__main__``: the script's definitions by value, or in spawn mode the script's source).
The new process is told to run the loader as its main module (``init_main_from_name``, as
for ``python -m``).  The loader installs the same importers, from memory, and becomes the
user's ``__main__``: definitions are loaded when first named, as in the child, and a script
runs as ``__mp_main__``, as local spawn runs it.  The directory goes when the child exits
(or is reaped by the agent, if it was killed).
"""

import os
import sys
import threading

#: the loader's module name: the main module of a remote child's spawn/forkserver children
LOADER = "_remoteproc_mp_main"
#: the child's directory in the host's temp dir: ``PREFIX`` + uid-pid (mode 0700)
PREFIX = "remoteproc-mp-"

_LOADER_SOURCE = '''\
"""remoteproc: sets up a remote child's spawn/forkserver child (remoteproc/agent/grandchild.py)."""
import marshal, os, sys, types
_name = "handoff-%s-%d%d" % (sys.implementation.name, sys.version_info[0], sys.version_info[1])
try:
    with open(os.path.join(os.path.dirname(__file__), _name), "rb") as _f:
        _h = marshal.load(_f)
except OSError:
    _h = None   # (another Python than the child's, set by set_executable: it imports as it can)
if _h is not None:
    _boot = types.ModuleType("remoteproc.agent.boot")
    _code = _h["shipped"]["remoteproc.agent.boot"][1]
    exec(compile(_code, "<remoteproc>/boot.py", "exec") if isinstance(_code, str) else _code, _boot.__dict__)
    sys.meta_path.insert(0, _boot._ShippedImporter(_h["shipped"]))
    from remoteproc.agent.grandchild import graft as _graft
    _graft(_h, globals())
    del _f, _boot, _code, _graft
del _h, _name
'''

_lock = threading.Lock()
_state = {"importer": None, "definitions": None, "script": None, "dir": None, "host_script": False,
          "written": None}  # type: dict


def remember_definitions(blobs) -> None:
    """The user's script definitions, by value (a same-version child's ``__main__``)."""
    _state["definitions"] = blobs


def remember_script(main) -> None:
    """The user's script (a spawn-mode child runs it as ``__mp_main__``): path, source, remoteproc names."""
    _state["script"] = {"path": main["path"], "source": main["source"], "names": list(main.get("names", ()))}


def host_script() -> None:
    """Script mode: ``__main__`` is a file of this host's, which multiprocessing's children run
    from its path themselves (and the user's machine has no script to hand over)."""
    _state["host_script"] = True


def enable(importer) -> None:
    """In a remote child: hand what it has to the spawn/forkserver processes it starts."""
    from multiprocessing import spawn

    _state["importer"] = importer
    original = spawn.get_preparation_data

    def get_preparation_data(name):
        data = original(name)
        if _state["host_script"]:
            return data         # a script of this host's (script mode): they run it from its path, as locally
        try:
            with _lock:         # (two threads of the child starting processes at once)
                where = _write()
        except OSError as exc:  # (a read-only or full temp dir: they start as multiprocessing has it)
            import logging

            logging.getLogger("remoteproc").warning(
                "remoteproc: %s: cannot write %s for a spawn/forkserver child (%s): it will not find "
                "your script's functions or forwarded modules", _host(), _path(), exc)
            where = None
        if where is not None:
            data["sys_path"] = [where] + [p for p in data.get("sys_path", ()) if p != where]
            data.pop("init_main_from_path", None)
            data["init_main_from_name"] = LOADER
        return data

    spawn.get_preparation_data = get_preparation_data


#: shipped modules that only the agent itself runs: a new process needs none of them (half the size)
_AGENT_ONLY = frozenset("remoteproc.agent." + name for name in (
    "endpoint", "fdlimit", "frames", "mux", "pkgcache", "poller", "probe", "script", "splice",
    "supervisor", "waker", "worker"))


def _shipped():
    for finder in sys.meta_path:
        if type(finder).__name__ == "_ShippedImporter":
            return finder.modules  # type: ignore[attr-defined]
    return None


def _handoff():
    """What a new process needs, in a form ``marshal`` writes: entries it cannot write are left out."""
    import marshal

    importer = _state["importer"]
    forwarded = {}  # type: dict
    for name, entry in list(importer.cache.items()) if importer is not None else ():
        try:
            marshal.dumps(entry)
        except ValueError:
            continue
        forwarded[name] = entry
    shipped = {name: entry for name, entry in _shipped().items() if name not in _AGENT_ONLY}
    from . import byvalue

    return {"shipped": shipped, "forwarded": forwarded, "definitions": _state["definitions"],
            "script": _state["script"], "host": _host(), "by_value": byvalue.names()}


def _write():
    """This child's directory, with the loader and an up-to-date handoff (None: nothing to hand)."""
    import marshal

    shipped = _shipped()
    if shipped is None or "remoteproc.agent.boot" not in shipped:
        return None
    where = _state["dir"]
    if where is None:
        where = _state["dir"] = _make_dir()
        _on_exit(where)
        with open(os.path.join(where, LOADER + ".py"), "w", encoding="utf-8") as f:
            f.write(_LOADER_SOURCE)
    importer = _state["importer"]
    known = (len(importer.cache) if importer is not None else 0, len(_state["definitions"] or ()))
    if _state["written"] != known:
        name = "handoff-%s-%d%d" % (sys.implementation.name, sys.version_info[0], sys.version_info[1])
        temp = os.path.join(where, name + ".new")
        with open(temp, "wb") as f:
            marshal.dump(_handoff(), f)
        os.replace(temp, os.path.join(where, name))   # (a process starting now reads a whole one)
        _state["written"] = known
    return where


def _path(pid=None):
    import tempfile

    return os.path.join(tempfile.gettempdir(), "%s%d-%d" % (PREFIX, os.getuid(), pid or os.getpid()))


def _make_dir():
    """The directory, private (0700); one a killed child of the same pid left is replaced, and
    one of another account's there (a shared temp dir) is passed over for a random name."""
    import tempfile

    path = _path()
    for _ in range(2):
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            if not _ours(path):
                break
            import shutil

            shutil.rmtree(path, True)
    return tempfile.mkdtemp(prefix=PREFIX)


def _ours(path):
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _host():
    importer = _state["importer"]
    return importer.host if importer is not None else "the remote host"


def _on_exit(where):
    """Remove the directory when the child exits, after multiprocessing has joined its children
    (a negative priority runs in the last pass of ``util._exit_function``)."""
    import shutil
    from multiprocessing import util

    util.Finalize(None, shutil.rmtree, args=(where, True), exitpriority=-100)


def remove_for(pid, temps=()) -> None:
    """In the agent, after reaping child ``pid``: remove the directory it left if it was killed.
    A few ``lstat`` calls when there is none: the temp dirs the child may have chosen (``temps``,
    those its ``env=`` named, then the agent's) are looked at, not probed as
    ``tempfile.gettempdir()`` probes them (by writing a file)."""
    name = "%s%d-%d" % (PREFIX, os.getuid(), pid)
    tops = list(temps) + [os.environ.get(v) for v in ("TMPDIR", "TEMP", "TMP")] + ["/tmp", "/var/tmp", "/usr/tmp"]
    for top in dict.fromkeys(t for t in tops if t):
        path = os.path.join(top, name)
        if _ours(path):
            import shutil

            shutil.rmtree(path, True)


def graft(handoff, namespace) -> None:
    """In the new process, run as its main module: the child's importers and its ``__main__``."""
    from . import child

    host = handoff["host"]
    importer = child.ParentImporter(None, handoff["forwarded"], host)
    sys.meta_path.append(importer)
    child._complete_package(importer)
    child._list_users_namespace_parts()
    script = handoff.get("script")
    if script is not None:
        namespace["__file__"] = script["path"]
        from . import spawn

        spawn._install_stand_in(frozenset(script["names"]))     # (``from remoteproc import Pipe`` at its top)
        spawn._remember_lines(script["path"], script["source"])
        exec(compile(script["source"], script["path"], "exec", dont_inherit=True), namespace)
    elif handoff.get("definitions"):
        namespace["__getattr__"] = child.lazy_definitions(handoff["definitions"],
                                                          lambda: sys.modules.get("__main__"))
    from . import byvalue

    byvalue.enable(handoff.get("by_value"))     # (its results and its own children: by value too)
