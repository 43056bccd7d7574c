"""Suite-wide fixtures: a private OpenSSH server on 127.0.0.1 and its accounts.

The ``sshd`` fixture is the one real SSH server every end-to-end test talks
to. In CI (``CI`` set) a missing or broken sshd fails the tests instead of
skipping them, so a green CI run always means the SSH path was exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from remoteproc.testing import (
    LoopbackSSHServer,
    current_user,
    ensure_local_user,
    find_sshd,
)
from remoteproc.testing.coverage import measure_agents

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # tests/netns.py

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


def pytest_configure(config: pytest.Config) -> None:
    measure_agents()        # under coverage (scripts/test.sh), the agents are measured too
    config.addinivalue_line(
        "markers",
        "loopback_only: uses host/ssh_options but inspects the loopback sshd or this machine's "
        "processes, so it does not run against --remote-host hosts",
    )
    config.addinivalue_line(
        "markers",
        "one_transport: checks logic above the transport (an owner's primitives, the pool's "
        "scheduler), which both transports carry alike: the default transport only",
    )


#: The test files that take longest: seconds on one of two workers, under coverage as in CI (the
#: mean of two fresh-clone runs of scripts/test.sh on 2 CPUs, 2026-12-02).  ``--dist loadfile``
#: hands out files by their number of tests, most first, so a long file of few tests (CPython's
#: whole multiprocessing suite is two) started last, and one worker ran it alone at the end while
#: the other had nothing left.  These start first instead, longest first, and the many short files
#: fill in at the end (scripts/test.sh).  Only the order changes: a file missing here (or renamed)
#: keeps xdist's own place.
LONG_FILES = {
    "tests/test_cpython_multiprocessing.py": 96,
    "tests/test_user_programs.py": 84,
    "tests/test_ssh_user_setups.py": 83,
    "tests/test_max_sessions.py": 80,
    "tests/test_long_running.py": 80,
    "tests/test_impaired_links.py": 79,
    "tests/test_host_environments.py": 73,
    "tests/test_cli.py": 72,
    "tests/test_packages.py": 64,
    "tests/test_faults_at_scale.py": 59,
    "tests/test_cli_errors.py": 57,
    "tests/test_relay_edges.py": 55,
    "tests/test_pool_edges.py": 55,
    "tests/test_remote_accounts.py": 51,
    "tests/test_message_integrity.py": 50,
    "tests/test_faults.py": 47,
    "tests/test_new_user.py": 41,
    "tests/test_grandchildren.py": 40,
    "tests/test_ssh_hosts.py": 40,
    "tests/test_process_edges.py": 38,
    "tests/test_host_pythons.py": 38,
    "tests/test_synchronize.py": 34,
    "tests/test_many_hosts.py": 33,
    "tests/test_fault_trees.py": 32,
    "tests/test_python_versions.py": 31,
    "tests/test_joblib_hosts.py": 31,
    "tests/test_connection_api.py": 30,
    "tests/test_executor_parity.py": 30,
    "tests/test_local_pythons.py": 29,
    "tests/test_process_lifecycle.py": 28,
}


@pytest.hookimpl(optionalhook=True, tryfirst=True)     # (optional: not run with -p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the files of LONG_FILES first (the rest in xdist's own order)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node: Any) -> None:
            queue = getattr(self, "workqueue", None)       # (xdist's own: only reordered if it is as known)
            if not getattr(self, "_long_first", False) and hasattr(queue, "move_to_end"):
                self._long_first = True                     # (the queue is complete by the first call)
                first = sorted((scope for scope in queue if scope in LONG_FILES), key=lambda scope: -LONG_FILES[scope])
                for scope in reversed(first):
                    queue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return LongFilesFirst(config, log)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses ``host``/``ssh_options`` runs against the loopback sshd under both
    transports (paramiko, and the user's own ``ssh``), and each --remote-host (unless marked
    ``loopback_only``)."""
    if "remote_target" in metafunc.fixturenames:
        hosts = list(LOOPBACK_TARGETS)
        if metafunc.definition.get_closest_marker("one_transport") is not None:
            hosts = hosts[:1]
        if metafunc.definition.get_closest_marker("loopback_only") is None:
            hosts += list(metafunc.config.getoption("remote_hosts"))
        metafunc.parametrize("remote_target", hosts, indirect=True,
                             ids=[h if h in LOOPBACK_TARGETS else "remote=" + h for h in hosts])


#: the loopback sshd reached by each transport: param -> extra options
LOOPBACK_TARGETS = {"loopback": {}, "loopback-openssh": {"transport": "openssh"}}


@pytest.fixture
def remote_target(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """(host spec, options) of the host a host-facing test runs against.

    The loopback sshd with its own key and known_hosts (through paramiko, or through
    the ``ssh`` program); or a host given with --remote-host, reached with the user's
    ~/.ssh/config alone (no options).
    """
    param = getattr(request, "param", "loopback")
    if param in LOOPBACK_TARGETS:
        server = request.getfixturevalue("sshd")
        return server.spec(current_user()), {**server.options(current_user()), **LOOPBACK_TARGETS[param]}
    return param, {}


@pytest.fixture
def is_loopback(remote_target: tuple[str, dict[str, Any]], request: pytest.FixtureRequest) -> bool:
    """True when the test runs against the loopback sshd (on this machine), not a --remote-host."""
    return request.node.callspec.params.get("remote_target") in LOOPBACK_TARGETS


@pytest.fixture
def ssh_options(remote_target: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """Connection options for the host under test ({} for a --remote-host: its ssh config decides)."""
    return dict(remote_target[1])


@pytest.fixture
def host(remote_target: tuple[str, dict[str, Any]]) -> str:
    """The host spec under test: 'user@127.0.0.1:PORT' for the loopback sshd, or a --remote-host."""
    return remote_target[0]


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


@pytest.fixture
def own_cache(plain_user_options: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(options, cache root): a package cache of this test's own, through XDG_CACHE_HOME set for the
    agent with python= (its own agent, too). Tests that empty or damage a cache use one, so
    that other runs (and workers) on this machine sharing the account neither disturb them nor suffer."""
    import pwd
    import shutil
    import tempfile

    pw = pwd.getpwnam(PLAIN_USER)
    base = tempfile.mkdtemp(prefix="rp-xdg-")
    os.chown(base, pw.pw_uid, pw.pw_gid)
    options = dict(plain_user_options, python="env XDG_CACHE_HOME=%s python3" % base)
    yield options, os.path.join(base, "remoteproc")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh() -> Iterator[None]:
    """A new relay (so a new SSH connection and agent: nothing known per connection) before and after."""
    from remoteproc.relay import client

    client.shutdown()
    yield
    client.shutdown()


# -- hosts of their own: network namespaces -------------------------------------------

NETNS_HOSTS = ["h1", "h2", "h3", "h4"]


def netns_prerequisites() -> str:
    """What namespace hosts need (root, sshd, ip, the PLAIN_USER account): the sshd binary's path;
    skipped without them, failed in CI."""
    if os.geteuid() != 0:
        _unavailable("network namespace hosts need root")
    sshd_path = find_sshd()
    if sshd_path is None:
        _unavailable("no OpenSSH server binary (sshd) found")
    from netns import IP

    if not os.path.exists(IP):
        _unavailable("the ip command (iproute2) is missing")
    try:
        ensure_local_user(PLAIN_USER)
    except RuntimeError as exc:
        _unavailable(f"cannot set up local user {PLAIN_USER!r}: {exc}")
    return sshd_path


@pytest.fixture(scope="session")
def netns() -> Iterator[Any]:
    """Four hosts in network namespaces of their own (see tests/netns.py), each running an sshd
    that logs in PLAIN_USER with ``netns.client_key``.  Needs root: skipped otherwise, failed in CI."""
    from netns import NetnsRig

    yield from running_rig(NetnsRig, NETNS_HOSTS)


def running_rig(rig_class: Any, names: list[str]) -> Iterator[Any]:
    """A fixture's body: a started ``rig_class`` (tests/netns.py) of hosts ``names`` that log in
    PLAIN_USER, stopped after its last test."""
    rig = rig_class(names, [PLAIN_USER], netns_prerequisites())
    try:
        rig.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"cannot build the network namespace hosts: {exc}")
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture(scope="session", autouse=True)
def _stop_relay_at_the_end() -> Iterator[None]:
    """Stop the relay process before the coverage report, so that its data (and that
    of the agents it leaves) is written first; it also proves a clean shutdown."""
    yield
    from remoteproc.relay import client as relay_client

    relay_client.shutdown()


@pytest.fixture
def alias(sshd: LoopbackSSHServer) -> tuple[str, str]:
    """(ssh_config path, alias) for the current user on the loopback sshd."""
    return sshd.ssh_config, "remoteproc-" + current_user()


@pytest.fixture
def scripts() -> Iterator[Any]:
    """write(name, source) -> path of a script file readable by every account (rpuser too)."""
    import shutil
    import tempfile
    import textwrap

    directory = tempfile.mkdtemp(prefix="remoteproc-scripts-")
    os.chmod(directory, 0o755)

    def write(name: str, source: str) -> str:
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(source))
        os.chmod(path, 0o644)
        return path

    yield write
    shutil.rmtree(directory, ignore_errors=True)
