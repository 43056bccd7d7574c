"""Suite-wide fixtures: a private OpenSSH server on 127.0.0.1 and its accounts.

The ``sshd`` fixture is the one real SSH server every end-to-end test talks
to. In CI (``CI`` set) a missing or broken sshd fails the tests instead of
skipping them, so a green CI run always means the SSH path was exercised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from remoteproc.testing import (
    LoopbackSSHServer,
    current_user,
    ensure_local_user,
    find_sshd,
)

PLAIN_USER = "rpuser"
"""An account with only the system python3 (no remoteproc, no cloudpickle)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--remote-host",
        action="append",
        default=[],
        dest="remote_hosts",
        metavar="HOST",
        help="an extra real host (user@host[:port]) for remote tests; repeatable",
    )


def _unavailable(reason: str) -> NoReturn:
    """Fail in CI (never silently skip there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def remote_hosts(request: pytest.FixtureRequest) -> list[str]:
    """Hosts given with --remote-host, in order."""
    return list(request.config.getoption("remote_hosts"))


@pytest.fixture(scope="session")
def sshd() -> Iterator[LoopbackSSHServer]:
    """A started OpenSSH server for the current user (and PLAIN_USER as root)."""
    if find_sshd() is None:
        _unavailable("no OpenSSH server binary (sshd) found")
    me = current_user()
    users = [me]
    if os.geteuid() == 0 and me != PLAIN_USER:
        try:
            ensure_local_user(PLAIN_USER)
        except RuntimeError as exc:
            _unavailable(f"cannot set up local user {PLAIN_USER!r}: {exc}")
        users.append(PLAIN_USER)
    server = LoopbackSSHServer(users=users)
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        _unavailable(f"cannot start a loopback sshd: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ssh_options(sshd: LoopbackSSHServer) -> dict[str, Any]:
    """Connection options (port, username, key_filename, known_hosts) for the current user."""
    return sshd.options(current_user())


@pytest.fixture
def host(sshd: LoopbackSSHServer) -> str:
    """'user@127.0.0.1:PORT' for the current user."""
    return sshd.spec(current_user())


def _plain_user(sshd: LoopbackSSHServer) -> str:
    if PLAIN_USER not in sshd.users:
        _unavailable(f"the {PLAIN_USER!r} account needs the tests to run as root")
    return PLAIN_USER


@pytest.fixture
def plain_user_options(sshd: LoopbackSSHServer) -> dict[str, Any]:
    """Connection options for the system-python-only account."""
    return sshd.options(_plain_user(sshd))


@pytest.fixture
def plain_user_host(sshd: LoopbackSSHServer) -> str:
    """'rpuser@127.0.0.1:PORT' for the system-python-only account."""
    return sshd.spec(_plain_user(sshd))
