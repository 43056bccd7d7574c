"""CPython's own Lib/test/_test_multiprocessing.py test classes, whole, with remote processes.

``tests/cpython_mp.py`` runs every class of a type ('processes': remoteproc's Queue, Lock,
Value, Pool ... with a RemoteProcess on a loopback sshd; 'manager': a SyncManager's proxies
used by RemoteProcesses); here each test that does not pass must be one of the few that
cannot pass across hosts, for the reason given (docs/primitives.md, "What cannot match").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from remoteproc import bootstrap

HERE = os.path.dirname(os.path.abspath(__file__))

FD_IN_MESSAGE = "a file descriptor sent inside a message cannot cross hosts"
BOTH_SIDES = "one Connection end read by both the parent and a remote child"
SHARED_MEMORY = "multiprocessing.shared_memory is memory of one machine"
CHILD_FILE = "the child writes a file in its working directory, which is on the remote host"
FORK_ONLY = "skip: test not appropriate for fork"      # skipped locally too (the suite runs with fork)

CANNOT_PASS = {
    "processes": {
        "WithProcessesTestConnection.test_fd_transfer": FD_IN_MESSAGE,
        "WithProcessesTestConnection.test_large_fd_transfer": FD_IN_MESSAGE,
        "WithProcessesTestPicklingConnections.test_pickling": FD_IN_MESSAGE,
        "WithProcessesTestPoll.test_boundaries": BOTH_SIDES,
        "WithProcessesTestSharedMemory.test_shared_memory_across_processes": SHARED_MEMORY,
        "WithProcessesTestSubclassingProcess.test_stderr_flush": CHILD_FILE,
        "WithProcessesTestSubclassingProcess.test_sys_exit": CHILD_FILE,
        "WithProcessesTestProcess.test_child_fd_inflation": FORK_ONLY,
        "WithProcessesTestProcess.test_forkserver_sigint": FORK_ONLY,
        "WithProcessesTestProcess.test_forkserver_sigkill": FORK_ONLY,
    },
    "manager": {},      # only the tests CPython skips for managers (checked below)
}


def _test_package_available() -> bool:
    try:
        import test._test_multiprocessing  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("type_", ["processes", "manager"])
def test_cpython_test_classes_pass_with_remote_processes(type_, sshd):
    if not _test_package_available():
        from conftest import _unavailable

        _unavailable("CPython's test package (test._test_multiprocessing) is not installed")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    # not measured: under coverage every remote child writes a data file (a minute of the suite),
    # and what these classes reach, the suite's own tests reach too
    for name in ("COVERAGE_PROCESS_START", bootstrap.AGENT_ENV):
        env.pop(name, None)
    done = subprocess.run([sys.executable, os.path.join(HERE, "cpython_mp.py"), "--type", type_, "--json"],
                          capture_output=True, text=True, timeout=1400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = CANNOT_PASS[type_]
    unexpected = {t: o for t, o in result["not_passed"].items()
                  if t not in expected and not o.startswith("skip: test not appropriate for manager")
                  and not o.startswith("skip: test not applicable to manager")}
    assert not unexpected, unexpected
    assert result["run"] > 60 and result["passed"] == result["run"] - len(result["not_passed"])
