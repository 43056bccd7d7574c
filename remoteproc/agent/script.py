"""Script mode, remote side: run an existing Python script with a Connection to its parent.

Shipped with the agent (standard library only), so it is importable in every remote
child as ``remoteproc.agent.script`` even though remoteproc is not installed there.

``remoteproc.run(host, path, *args)`` starts a RemoteProcess whose target is
``run_script``: it puts the child's end of the Connection on a plain fd named by
``REMOTEPROC_FD``, builds ``sys.argv`` and runs the script as ``__main__``, as
``python3 path args...`` would.  The script takes its Connection in one line that
needs nothing but the standard library::

    from multiprocessing.connection import Connection; import os
    conn = Connection(int(os.environ["REMOTEPROC_FD"]))

Arguments that were not strings arrive in ``sys.argv`` as JSON; ``args()`` gives
them back as values (a dict as a dict), and ``connection()`` is the line above.
"""

import json
import os
import signal
import sys

ENV_FD = "REMOTEPROC_FD"
"""Environment variable: the fd of the script's Connection to its parent."""

ENV_JSON = "REMOTEPROC_JSON_ARGS"
"""Environment variable: the positions in ``sys.argv`` of arguments sent as JSON (comma-separated)."""


# -- helpers for the script ----------------------------------------------------------

def connection():
    """The script's Connection to its parent (call it once: the object owns the fd).

    Raises RuntimeError when the script was not started by ``remoteproc.run``.
    """
    from multiprocessing.connection import Connection

    fd = os.environ.get(ENV_FD)
    if fd is None:
        raise RuntimeError("%s is not set: this script was not started by remoteproc.run()" % ENV_FD)
    return Connection(int(fd))


def args(argv=None):
    """``sys.argv[1:]`` with every argument that ``remoteproc.run`` sent as JSON decoded again.

    Strings given to ``run`` stay strings, even when they look like JSON ("42" stays "42").
    Outside script mode (no ``REMOTEPROC_JSON_ARGS``) the arguments are returned unchanged.
    """
    argv = list(sys.argv if argv is None else argv)
    positions = _json_positions()
    return [json.loads(a) if i in positions else a for i, a in enumerate(argv)][1:]


def _json_positions():
    text = os.environ.get(ENV_JSON, "")
    return {int(p) for p in text.split(",") if p.strip().isdigit()}


# -- the target of remoteproc.run ----------------------------------------------------

def run_script(path, argv=(), json_positions=(), conn=None, stdin=None, kind="path"):
    """Run the script at ``path`` as ``__main__`` with ``sys.argv = [path, *argv]``.

    ``kind`` "module" runs the module named ``path`` as ``python3 -m path`` would, "code" the
    program text ``path`` as ``python3 -c path`` would.

    ``conn`` (the child's end of the script's Pipe) is moved to a plain fd named by
    REMOTEPROC_FD, so that the script builds its own Connection on it.  ``stdin`` (the
    read end of a one-way pipe that the caller feeds, or None: /dev/null) becomes fd 0
    and ``sys.stdin``, as ``ssh HOST python3 path`` forwards its input.  The process's
    ``cwd`` and ``env`` are already in effect (the agent checked the directory before
    it forked, and the child entered it first): a relative ``path`` starts there.
    """
    import runpy

    if stdin is not None:
        _take_stdin(stdin)
    if conn is not None:
        # A second Connection object on the same fd would close it when collected:
        # hand the script a duplicate and close ours.
        fd = os.dup(conn.fileno())
        conn.close()
        os.environ[ENV_FD] = str(fd)
    else:
        os.environ.pop(ENV_FD, None)
    os.environ[ENV_JSON] = ",".join(str(int(i)) for i in json_positions)
    if kind != "path":
        _run_module_or_code(path, argv, kind)
        return
    path = os.path.expanduser(path)
    try:
        if not os.path.isdir(path):
            with open(path, "rb"):
                pass
        if _runs_main_module(path):
            # as python3 runs a directory (or a zip file) by its __main__ module, so does runpy
            _check_main_module(path)
    except OSError as exc:
        # (as python3 says it; where a relative path starts is worth saying only for a missing one)
        hint = ("" if os.path.isabs(path) or not isinstance(exc, FileNotFoundError)
                else " (relative paths start from %s)" % os.getcwd())
        sys.stderr.write("remoteproc: can't open file %r %s: [Errno %s] %s%s\n"
                         % (path, _here(), exc.errno, exc.strerror, hint))
        sys.exit(2)
    sys.argv = [path] + [str(a) for a in argv]
    from . import grandchild

    grandchild.host_script()
    # As "python3 path": the script's directory comes first on sys.path (a directory or a zip
    # file is that entry itself, which runpy puts there while it runs)
    own = None if _runs_main_module(path) else os.path.dirname(os.path.abspath(path))
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    if own is not None:
        sys.path.insert(0, own)
    _run_as_main(lambda: runpy.run_path(path, run_name="__main__"), path)


def _run_as_main(run, origin):
    """``run()`` the user's code as python3 runs ``__main__``: its traceback printed as python3
    prints it (``origin`` names the script), then the interpreter's exit steps, then the exit
    status: 1 after an exception, death by SIGINT after a KeyboardInterrupt."""
    interrupted = failed = False
    try:
        try:
            run()
        except SystemExit:
            raise
        except KeyboardInterrupt as exc:
            _print_script_traceback(exc, origin)
            interrupted = True
        except BaseException as exc:
            _print_script_traceback(exc, origin)
            failed = True
    finally:
        _interpreter_exit()
    if interrupted:
        _die_by_sigint()
    if failed:
        sys.exit(1)


def _run_module_or_code(name, argv, kind):
    """``python3 -m name argv...`` (kind "module") or ``python3 -c name argv...`` (kind "code")."""
    import runpy
    import types

    from . import grandchild

    # as python3 -m and -c: the working directory comes first on sys.path
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    sys.path.insert(0, os.getcwd() if kind == "module" else "")
    origin = "<string>"
    if kind == "module":
        origin = _module_origin(name)
        sys.argv = [origin] + [str(a) for a in argv]
    else:
        sys.argv = ["-c"] + [str(a) for a in argv]
    grandchild.host_script()

    def run():
        if kind == "module":
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            import builtins

            main = types.ModuleType("__main__")
            main.__dict__["__builtins__"] = builtins       # (the module, as in python3's __main__)
            sys.modules["__main__"] = main
            exec(compile(name, "<string>", "exec"), main.__dict__)

    _run_as_main(run, origin)


def _module_origin(name):
    """The file of the module ``name`` runs (its ``__main__`` for a package); exit 1 with
    python3's one line when there is none, as ``python3 -m`` does."""
    import importlib.util

    main = name
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            main = name + ".__main__"
            spec = importlib.util.find_spec(main)
            if spec is None:
                sys.stderr.write("remoteproc: No module named %s %s; %r is a package and cannot "
                                 "be directly executed\n" % (main, _here(), name))
                sys.exit(1)
    except (ImportError, ValueError) as exc:
        sys.stderr.write("remoteproc: Error while finding module specification for %r %s (%s: %s)\n"
                         % (name, _here(), type(exc).__name__, exc))
        sys.exit(1)
    if spec is None:
        sys.stderr.write("remoteproc: No module named %s %s\n" % (main, _here()))
        sys.exit(1)
    return spec.origin or name


def _here():
    """Where python3's words happened, for a reader of the program's stderr on another machine."""
    import socket

    return "on host %s" % socket.gethostname()


def _runs_main_module(path):
    """Whether ``path`` runs as python3 runs a directory or a zip file: by its ``__main__`` module."""
    import pkgutil

    if os.path.isdir(path):
        return True
    try:
        return pkgutil.get_importer(path) is not None     # (a zip file: zipimport takes it)
    except (ImportError, OSError):
        return False


def _check_main_module(path):
    """Exit as python3 does for a directory or a zip file that has no ``__main__`` module (not
    runpy's ImportError traceback among the agent's frames)."""
    import pkgutil

    importer = pkgutil.get_importer(path)
    find_spec = getattr(importer, "find_spec", None)
    if find_spec is not None:
        found = find_spec("__main__") is not None
    else:   # (zipimport before Python 3.10 has find_module only)
        found = importer is not None and importer.find_module("__main__") is not None  # type: ignore[attr-defined]
    if not found:
        sys.stderr.write("remoteproc: can't find '__main__' module in %r %s\n" % (path, _here()))
        sys.exit(1)


def _take_stdin(stdin):
    """Put the pipe behind the one-way Connection ``stdin`` on fd 0, and ``sys.stdin`` over it."""
    import io

    os.dup2(stdin.fileno(), 0)
    stdin.close()
    old = sys.stdin
    encoding = getattr(old, "encoding", None) or "utf-8"
    errors = getattr(old, "errors", None) or "strict"
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=encoding,
                                 errors=errors)
    sys.__stdin__ = sys.stdin  # type: ignore[misc]  # (as the interpreter sets both)


def _interpreter_exit():
    """What the interpreter does when a script ends: join non-daemon threads, then atexit."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()


def _print_script_traceback(exc, path):
    """Print the traceback as ``python3 path`` would: from the script's own frames on."""
    import traceback

    tb = exc.__traceback__
    first = tb
    inside = os.path.join(path, "")     # (the frames of a directory's or a zip file's __main__)
    while tb is not None and tb.tb_frame.f_code.co_filename != path and \
            not tb.tb_frame.f_code.co_filename.startswith(inside):
        tb = tb.tb_next
    if tb is None:
        # The script never ran (a SyntaxError, say): the exception says where.
        tb = None if isinstance(exc, SyntaxError) else first
    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))
    sys.stderr.flush()


def _die_by_sigint():
    """An uncaught KeyboardInterrupt ends Python with SIGINT (exit code -2), as locally."""
    try:
        sys.stdout.flush()
    except (AttributeError, ValueError, OSError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    sys.exit(1)     # pragma: no cover - not reached
