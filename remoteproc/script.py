"""Script mode, local side: ``remoteproc.run(host, path, *args)``.

The Python counterpart of cp-remote's ``run(host, module_path, ...args)``: start a
Python script that already lives on the remote host, as ``python3 path args...``
would, with one Connection between it and the caller.  The handle is a started
``RemoteProcess`` (``join``, ``exitcode``, ``terminate``, ``pid`` ...) whose
``conn`` is the caller's end; the script takes its end with one line of standard
library code (see ``remoteproc/agent/script.py``, which is the remote side).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from multiprocessing import Pipe
from multiprocessing.connection import Connection as _Connection
from typing import IO, TYPE_CHECKING, Any, Iterable, Mapping, Union

from .agent import script as _remote
from .process import RemoteProcess

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

ENV_FD = _remote.ENV_FD
ENV_JSON = _remote.ENV_JSON

log = logging.getLogger("remoteproc")

FEED_CHUNK = 1 << 16       # what the stdin feeder reads and writes at a time

KINDS = ("path", "module", "code")
"""What a RemoteScript's ``path`` names: a script's path, a module (python3 -m), a program (python3 -c)."""

ONE_LINER = ('from multiprocessing.connection import Connection; import os; '
             'conn = Connection(int(os.environ["REMOTEPROC_FD"]))')
"""The line a script runs to get its Connection to the parent (standard library only)."""


def encode_args(args: Iterable[Any]) -> tuple[list[str], list[int]]:
    """``sys.argv[1:]`` for ``args``: strings as given, anything else as JSON.

    Returns the strings and the positions (in ``sys.argv``, so from 1) of those that
    are JSON, which the remote helper ``args()`` decodes.  TypeError for a value
    that is neither a string nor JSON-able.
    """
    argv: list[str] = []
    positions: list[int] = []
    for i, value in enumerate(args, 1):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            argv.append(value)
            continue
        try:
            argv.append(json.dumps(value))
        except (TypeError, ValueError) as exc:
            raise TypeError("argument %d (%.60r) of the script is neither a str nor JSON-able: %s"
                            % (i, value, exc)) from None
        positions.append(i)
    return argv, positions


class RemoteScript(RemoteProcess):
    """A Python script on ``host``, run as ``python3 path *args`` with a Connection to it.

    A ``RemoteProcess`` in every other way.  After ``start()``, ``conn`` is this side's
    end of a duplex Pipe; the script's end is the fd in its ``REMOTEPROC_FD``.
    ``cwd`` (default: the remote login directory, where relative paths start) and
    ``env`` (extra environment variables) apply to the script only, as to any
    RemoteProcess: a ``cwd`` that does not exist is a BootstrapError from ``start()``.
    ``stdin`` (a binary file object or an fd, such as ``sys.stdin.buffer``) is the
    script's standard input, as ``ssh HOST python3 path`` forwards its own: a thread
    here copies it to the script until its end.  Without it, the script's stdin is
    ``/dev/null``, as every remote child's.  ``kind="module"`` runs the module named
    ``path`` as ``python3 -m path`` would, ``kind="code"`` the program text ``path`` as
    ``python3 -c path`` would.
    """

    #: a spawn-mode child does not import the caller's main script first (reduction.dumps_process)
    _ships_main = False

    def __init__(
        self,
        host: str,
        path: str | os.PathLike,
        args: Iterable[Any] = (),
        *,
        name: str | None = None,
        daemon: bool | None = None,
        cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        stdin: Union[IO[bytes], int, None] = None,
        kind: str = "path",
        **ssh_options: Any,
    ) -> None:
        if kind not in KINDS:
            raise ValueError("kind must be one of %s, not %r" % (", ".join(map(repr, KINDS)), kind))
        if stdin is not None and not isinstance(stdin, int) and not hasattr(stdin, "read"):
            raise TypeError("stdin must be a binary file object or a file descriptor, not %r" % (stdin,))
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str) or not path:
            raise TypeError("path must be the script's path on the remote host (a non-empty str), not %r"
                            % (path,) if kind == "path" else "the %s to run must be a non-empty str, not %r"
                            % (kind, path))
        if isinstance(args, (str, bytes)):
            raise TypeError("args must be a sequence of arguments, not a single %s" % type(args).__name__)
        argv, positions = encode_args(args)
        # cwd and env are the process's own, as for any RemoteProcess: the agent checks the
        # directory before it forks (a missing one is a BootstrapError from start()), and the
        # child enters it before the script's path is resolved there.
        super().__init__(host, target=_remote.run_script, name=name, daemon=daemon,
                         kwargs={"path": path, "argv": argv, "json_positions": positions, "kind": kind},
                         cwd=cwd, env=env, **ssh_options)
        self._path = path
        self._kind = kind
        self._argv = argv
        self._stdin = _raw_stdin(stdin)
        self.conn: Connection | None = None

    @property
    def path(self) -> str:
        """The script's path on the remote host, as given."""
        return self._path

    @property
    def kind(self) -> str:
        """What ``path`` is: "path" (a script's path), "module" (python3 -m) or "code" (python3 -c)."""
        return self._kind

    @property
    def argv(self) -> list[str]:
        """``sys.argv[1:]`` as the script gets it."""
        return list(self._argv)

    def start(self) -> None:
        """Start the script; ``conn`` is then this side's end of its Connection."""
        self._check_closed()
        assert self._popen is None, "cannot start a process twice"
        parent, child = Pipe()
        self._kwargs["conn"] = child
        feed = script_end = None
        if self._stdin is not None:
            # a one-way pipe, bridged as any Connection: the script reads its end as fd 0
            r, feed = os.pipe()
            script_end = self._kwargs["stdin"] = _Connection(r, writable=False)
        try:
            super().start()
        except BaseException:
            parent.close()
            self._kwargs.pop("conn", None)
            self._kwargs.pop("stdin", None)
            if feed is not None:
                os.close(feed)
            raise
        finally:
            child.close()
            if script_end is not None:
                script_end.close()     # (the relay has its own copy)
        self.conn = parent
        if feed is not None:
            threading.Thread(target=_feed, args=(self._stdin, feed, self.host), name="remoteproc-stdin",
                             daemon=True).start()

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + " %s=%r>" % (self._kind, self._path)


def _raw_stdin(stdin: Union[IO[bytes], int, None]) -> Union[IO[bytes], int, None]:
    """This program's own stdin (``sys.stdin`` or its ``buffer``) as its fd, which the feeder reads as
    ``ssh`` reads fd 0.  Read through the buffered object, a feeder blocked in ``read1()`` at the
    program's exit holds the object's lock as the interpreter closes it: "Fatal Python error:
    _enter_buffered_busy" and SIGABRT, whenever the terminal or a pipe still had no end."""
    stdin_file = sys.stdin
    if stdin is not None and stdin_file is not None and stdin in (stdin_file, getattr(stdin_file, "buffer", None)):
        try:
            return stdin_file.fileno()
        except (OSError, ValueError, AttributeError):    # (replaced by an object without an fd: read it)
            return stdin
    return stdin


def _feed(source: Union[IO[bytes], int], fd: int, host: str) -> None:
    """Copy ``source`` to the pipe ``fd`` until its end (or the script's: the pipe breaks), then close it."""
    read = (lambda: os.read(source, FEED_CHUNK)) if isinstance(source, int) else (
        lambda: source.read1(FEED_CHUNK) if hasattr(source, "read1") else source.read(FEED_CHUNK))
    try:
        while True:
            data = read()
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except (OSError, ValueError) as exc:     # the script is gone, or the source was closed here
        log.debug("%s: stdin for the script ends: %s", host, exc)
    finally:
        os.close(fd)


def run(host: str, path: str | os.PathLike, *args: Any, **options: Any) -> RemoteScript:
    """Start the Python script ``path`` on ``host`` with ``sys.argv[1:]`` from ``args``.

    Strings are passed as given, other values as JSON (the script decodes them with
    ``remoteproc.agent.script.args()``, or ``json.loads``).  ``options`` are
    ``name``, ``daemon``, ``cwd``, ``env``, ``stdin``, ``kind`` and the SSH options of ``RemoteProcess``.
    Returns the started ``RemoteScript``: ``.conn``, ``join()``, ``exitcode``,
    ``terminate()``, ``pid`` ...
    """
    script = RemoteScript(host, path, args, **options)
    script.start()
    return script


__all__ = ["ONE_LINER", "RemoteScript", "encode_args", "run"]
