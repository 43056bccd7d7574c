"""Coverage of the remote agents: when the test suite measures itself, measure its agents too.

Every agent the suite starts runs on this machine (the loopback sshd, the namespace
hosts), under an sshd that passes no environment on.  ``measure_agents()`` hands the
coverage settings of this process to the agents' interpreters through
``remoteproc.bootstrap.AGENT_ENV``, which also keeps the shipped modules' local file
names so that coverage finds their source.  The relay process inherits the setting, and
local subprocesses (a user's program run by a test, in a directory of its own) get the
data file's absolute path, so that their data is combined with the rest.
"""

from __future__ import annotations

import json
import os

from ..bootstrap import AGENT_ENV

__all__ = ["measure_agents"]


def measure_agents() -> bool:
    """If this process measures subprocesses (``COVERAGE_PROCESS_START`` is set), let agents
    started from now on (by this process or its children) measure themselves; True if so."""
    config = os.environ.get("COVERAGE_PROCESS_START")
    if not config:
        return False
    data = os.path.abspath(os.environ.get("COVERAGE_FILE") or ".coverage")
    # (and local subprocesses: a user's program that a test runs in a directory of its own
    # would write its data there, and that directory is removed with the test)
    os.environ["COVERAGE_FILE"] = data
    os.environ[AGENT_ENV] = json.dumps({"COVERAGE_PROCESS_START": config, "COVERAGE_FILE": data})
    return True
