"""remoteproc's pytest plugin: a private loopback SSH host for your own tests, with no SSH set-up.

Installing remoteproc registers it (entry point ``pytest11``)::

    def test_square_remotely(remoteproc_host):
        with remoteproc.Pool([remoteproc_host], processes_per_host=2) as pool:
            assert pool.map(square, [1, 2]) == [1, 4]

``remoteproc_host`` (session-scoped) is a host spec that carries its own ssh options:
``RemoteProcess(remoteproc_host, target=f)``, ``Pool(remoteproc_host)`` and
``remoteproc.run(remoteproc_host, ...)`` work as they are.  It is a throwaway
OpenSSH ``sshd`` on 127.0.0.1 for the current user (or remoteproc's embedded
paramiko server where there is no sshd), started on first use and stopped at
the end of the session.  ``pytest --remoteproc-host alice@node1`` makes it that
host instead, reached with your ``~/.ssh/config``.

A session that does not use the fixture pays only for importing this module
(the standard library and pytest): no server, no paramiko.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterator, Optional

import pytest

if TYPE_CHECKING:
    from .testing import LoopbackSSHServer

OPTION = "--remoteproc-host"


class RemoteHost(str):
    """A host spec (a ``str``) that carries ssh options: remoteproc merges ``ssh_options`` in.

    ``spec`` is the plain spec, ``ssh_options`` the options (explicit keyword options win
    over them), ``server`` the loopback server behind it (None for ``--remoteproc-host``).
    """

    ssh_options: dict[str, Any]
    server: Optional[LoopbackSSHServer]

    def __new__(cls, spec: str, ssh_options: Optional[dict[str, Any]] = None,
                server: Optional[LoopbackSSHServer] = None) -> RemoteHost:
        self = super().__new__(cls, spec)
        self.ssh_options = dict(ssh_options or {})
        self.server = server
        return self

    @property
    def spec(self) -> str:
        return str.__str__(self)

    @property
    def options(self) -> dict[str, Any]:
        """The ssh options, for APIs that take them apart: ``f(host.spec, **host.options)``."""
        return dict(self.ssh_options)

    def __reduce__(self):
        return (str, (self.spec,))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("remoteproc")
    group.addoption(OPTION, dest="remoteproc_host", default=None, metavar="HOST",
                    help="run the remoteproc_host fixture's tests on this real host (user@host[:port] or an "
                         "alias of ~/.ssh/config) instead of a private loopback SSH server")


@pytest.fixture(scope="session")
def remoteproc_host(request: pytest.FixtureRequest) -> Iterator[RemoteHost]:
    """A host spec for RemoteProcess, Pool and Executor: a private loopback SSH server, or --remoteproc-host."""
    given = request.config.getoption("remoteproc_host")
    if given:
        yield RemoteHost(given)
        return
    from .testing import LoopbackSSHServer  # only now: paramiko may come with it

    server = LoopbackSSHServer()
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        raise RuntimeError("remoteproc_host: cannot start a loopback SSH server (%s); give a real host "
                                "with %s user@host" % (exc, OPTION)) from exc
    try:
        yield RemoteHost(server.spec(), server.options(), server)
    finally:
        # The joblib backend keeps its workers between calls (as loky does): they stop first, so
        # that the server's end is not reported as a lost connection in the last test's report.
        backend = sys.modules.get("remoteproc.joblib")
        if backend is not None:
            backend.shutdown()
        server.stop()
