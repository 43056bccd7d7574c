"""Coverage of the remote agents: when the test suite measures itself, measure its agents too.

Every agent the suite starts runs on this machine (the loopback sshd, the namespace
hosts), under an sshd that passes no environment on.  ``measure_agents()`` hands the
coverage settings of this process to the agents' interpreters through
``remoteproc.bootstrap.AGENT_ENV``, which also keeps the shipped modules' local file
names so that coverage finds their source.  The relay process inherits the setting, and
local subprocesses (a user's program run by a test, in a directory of its own) get the
data file's absolute path, so that their data is combined with the rest.

Forked children are measured too (``patch = ["fork", "_exit"]`` in pyproject.toml), and
coverage.py 7.17's ``_exit`` patch saves, in every forked child that leaves through
``os._exit`` (each remote child, each local ``fork`` Process), the data its parent had
gathered before the fork as well as the child's own: the whole of a long-lived agent's, or
pytest's, again and again, into a data file of its own, which the report then combines.
That was most of the suite's time under coverage (a remote start and join of 0.03 s took
0.4-0.6 s).  ``FORK_FIX`` keeps a child to its own data: the parent saves its data itself.
It runs here and, through a ``.pth`` file next to coverage's own, in every interpreter
of this Python that starts coverage (the agents, the relay, a test's own programs).
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig

from ..bootstrap import AGENT_ENV

__all__ = ["measure_agents"]

#: Run where coverage is measuring: in a forked child, the parent's Coverage (the one
#: current before the fork) no longer saves; the child's own saves the child's data.
#: Self-contained: it also runs from a .pth file, where nothing but coverage is imported.
FORK_FIX = '''
def _remoteproc_fork_fix():
    import os, sys
    coverage = sys.modules.get("coverage")
    if coverage is None or not hasattr(coverage.Coverage, "current") or getattr(os, "_remoteproc_fork_fix", 0):
        return
    os._remoteproc_fork_fix = True
    held = []

    def before():
        held[:] = [coverage.Coverage.current()]

    def after_in_child():
        if held and held[0] is not None and held[0] is not coverage.Coverage.current():
            held[0].save = lambda: None     # (its _exit patch calls it)
        del held[:]

    os.register_at_fork(before=before, after_in_child=after_in_child)

_remoteproc_fork_fix()
'''

#: processed after coverage's own ``a1_coverage.pth``, which starts coverage in a subprocess
PTH_NAME = "a2_remoteproc_coverage_fork.pth"


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
    if "coverage" in sys.modules:
        exec(FORK_FIX, {})
        _install_pth()
    return True


def _install_pth() -> None:
    """Write the .pth file that runs ``FORK_FIX`` in this Python's subprocesses under coverage
    (where it cannot be written, forked children only cost more time)."""
    text = "import sys; 'coverage' in sys.modules and exec(%r)\n" % FORK_FIX
    path = os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    except OSError:
        pass
