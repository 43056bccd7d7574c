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
import os
from multiprocessing import Pipe
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .agent import script as _remote
from .process import RemoteProcess

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

ENV_FD = _remote.ENV_FD
ENV_JSON = _remote.ENV_JSON

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
    """

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
        **ssh_options: Any,
    ) -> None:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str) or not path:
            raise TypeError("path must be the script's path on the remote host (a non-empty str), not %r"
                            % (path,))
        if isinstance(args, (str, bytes)):
            raise TypeError("args must be a sequence of arguments, not a single %s" % type(args).__name__)
        argv, positions = encode_args(args)
        # cwd and env are the process's own, as for any RemoteProcess: the agent checks the
        # directory before it forks (a missing one is a BootstrapError from start()), and the
        # child enters it before the script's path is resolved there.
        super().__init__(host, target=_remote.run_script, name=name, daemon=daemon,
                         kwargs={"path": path, "argv": argv, "json_positions": positions},
                         cwd=cwd, env=env, **ssh_options)
        self._path = path
        self._argv = argv
        self.conn: Connection | None = None

    @property
    def path(self) -> str:
        """The script's path on the remote host, as given."""
        return self._path

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
        try:
            super().start()
        except BaseException:
            parent.close()
            self._kwargs.pop("conn", None)
            raise
        finally:
            child.close()
        self.conn = parent

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + " path=%r>" % self._path


def run(host: str, path: str | os.PathLike, *args: Any, **options: Any) -> RemoteScript:
    """Start the Python script ``path`` on ``host`` with ``sys.argv[1:]`` from ``args``.

    Strings are passed as given, other values as JSON (the script decodes them with
    ``remoteproc.agent.script.args()``, or ``json.loads``).  ``options`` are
    ``name``, ``daemon``, ``cwd``, ``env`` and the SSH options of ``RemoteProcess``.
    Returns the started ``RemoteScript``: ``.conn``, ``join()``, ``exitcode``,
    ``terminate()``, ``pid`` ...
    """
    script = RemoteScript(host, path, args, **options)
    script.start()
    return script


__all__ = ["ONE_LINER", "RemoteScript", "encode_args", "run"]
