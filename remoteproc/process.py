"""RemoteProcess: ``multiprocessing.Process`` whose target runs on another host."""

from __future__ import annotations

import os
from multiprocessing import process as mp_process
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .errors import ConfigError
from .relay import client as relay_client
from .ssh.spec import check_options, parse_spec

if TYPE_CHECKING:
    from .errors import RemoteProcessError
    from .popen_ssh import Popen


class RemoteProcess(mp_process.BaseProcess):
    """A ``multiprocessing.Process`` that runs its target on ``host`` over SSH.

    ``host`` is ``host``, ``user@host``, ``user@host:port`` or an alias from
    ``~/.ssh/config``; keyword options (``username``, ``port``, ``key_filename``,
    ``known_hosts``, ``host_key_policy``, ``python``, ...) override the config.
    Everything else is ``multiprocessing.Process``: ``start``, ``join``, ``pid``
    (the remote pid), ``exitcode``, ``terminate``, ``kill``, ``close``, ``sentinel``.
    Where a second host makes a difference, docs/api.md says what and why.
    """

    _start_method = None

    if TYPE_CHECKING:       # BaseProcess internals that typeshed does not declare
        _popen: Popen | None
        _kwargs: dict[str, Any]

        def _check_closed(self) -> None: ...

    def __init__(
        self,
        host: str,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] = {},
        *,
        daemon: bool | None = None,
        cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        **ssh_options: Any,
    ) -> None:
        if isinstance(host, str) and type(host) is not str:     # a spec that carries options
            ssh_options = {**getattr(host, "ssh_options", {}), **ssh_options}  # (pytest_plugin.RemoteHost)
            host = str.__str__(host)
        parse_spec(host)
        options = check_options(host, ssh_options)
        super().__init__(group, target, name, args, kwargs, daemon=daemon)
        self._host = host
        self._ssh_options = options
        self._cwd, self._env = check_cwd_env(cwd, env, host)
        if not mp_process.current_process().daemon:
            relay_client.prestart()     # (a daemonic process may not start children: no relay for it)

    @staticmethod
    def _Popen(process_obj):
        from .popen_ssh import Popen

        return Popen(process_obj)

    @property
    def host(self) -> str:
        """The host spec this process runs on, as given."""
        return self._host

    @property
    def connection_error(self) -> RemoteProcessError | None:
        """The error that ended this process if its connection was lost, else None."""
        self._check_closed()        # (as exitcode: after close() there is no answer, not a None)
        popen = self._popen
        return popen.error if popen is not None else None

    def __repr__(self) -> str:
        text = super().__repr__()
        return text[:-1] + " host=%r>" % self._host


def check_cwd_env(cwd: Any, env: Any, host: str | None = None) -> tuple[str | None, dict[str, str] | None]:
    """``cwd`` (a directory on the host, ``~`` expanded there) and ``env`` (variables added),
    checked here: what the remote child could not use would fail there, after its fork."""
    if cwd is not None:
        path = os.fspath(cwd) if isinstance(cwd, (str, os.PathLike)) else cwd
        if not isinstance(path, str) or not path:
            raise TypeError("cwd must be a str path on the remote host, not %r" % (cwd,))
        if "\0" in path:
            raise ConfigError("%s: cwd %r has an embedded null byte: no path can hold one; remove it"
                              % (host, path), host)
        cwd = path
    if env is not None:
        env = dict(env)
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key:
                raise TypeError("env must map variable names (str, no '=') to str; got %r: %r" % (key, value))
            if "\0" in key or "\0" in value:
                raise ConfigError("%s: env %r: %r has an embedded null byte: an environment variable cannot "
                                  "hold one; remove it" % (host, key, value), host)
    return cwd, env
