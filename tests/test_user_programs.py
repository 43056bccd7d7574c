"""The programs users write with multiprocessing, with one name changed to remoteproc's.

Each program in ``tests/user_programs/`` imports its multiprocessing names from
``_mp.py``: run with ``UP_HOSTS`` unset it is a plain multiprocessing program; with
``UP_HOSTS`` set, the same source uses ``RemoteProcess``, ``remoteproc.Queue``, ``Pool``,
``Executor`` ... on the hosts given. Every program runs both ways, as a subprocess of its own
(its own relay and SSH connections, as a user's program has), and the two runs must agree:
stdout, exit code, and the exceptions on stderr. The only differences allowed are those the
docs state (each is named where it is applied below).

Hosts: the loopback sshd through paramiko and through ``ssh`` (``transport="openssh"``), and
for the programs where two hosts matter, the loopback sshd plus a network-namespace host.
All runs start at once (a few at a time) when the first test asks, so the file takes about
as long as its slowest programs, not their sum.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from remoteproc.testing import current_user

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "user_programs")
ROOT = os.path.dirname(HERE)
RUN_TIMEOUT = 90.0          # one program, locally or remotely
PARALLEL = 4                # program runs at a time (most of them mostly wait)
SLOW = {"prog1_pipeline.py"}

pytestmark = [pytest.mark.timeout(240), pytest.mark.loopback_only]

#: which remote configurations each (program, argument) runs on
RUNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("prog1_pipeline.py", ""): ("paramiko", "openssh", "two-hosts"),
    ("prog2_wordcount.py", ""): ("paramiko", "two-hosts"),
    ("prog3_futures.py", ""): ("paramiko", "two-hosts"),
    ("prog4_heartbeat.py", ""): ("paramiko", "openssh", "two-hosts"),
    ("prog5_output.py", ""): ("paramiko", "openssh"),
    ("prog6_shared.py", ""): ("paramiko", "two-hosts"),
    ("prog7_sigint.py", "handled"): ("paramiko", "openssh", "two-hosts"),
    ("prog7_sigint.py", "unhandled"): ("paramiko", "openssh", "two-hosts"),
    ("prog7_sigint.py", "twice"): ("paramiko", "openssh"),
    ("prog7_sigint.py", "pool"): ("paramiko", "two-hosts"),
    ("prog7_sigint.py", "pool-idiom"): ("paramiko", "openssh"),
    ("prog7_sigint.py", "executor"): ("paramiko", "two-hosts"),
    ("prog7_sigint.py", "queue"): ("paramiko", "openssh"),
    ("prog8_lifecycle.py", ""): ("paramiko", "openssh", "two-hosts"),
    ("prog9_exitcodes.py", ""): ("paramiko", "openssh"),
}


def program(prog: str, arg: str = "") -> Any:
    """Parametrize a test over the configurations ``prog arg`` runs on; the fixture ``runs``
    starts the runs of the selected tests only."""
    def mark(fn: Any) -> Any:
        fn.program = (prog, arg)
        return pytest.mark.parametrize("config", list(RUNS[(prog, arg)]))(fn)
    return mark


@dataclass
class Outcome:
    stdout: str
    stderr: str
    returncode: int
    seconds: float
    pids: list[tuple[str, int]]        # (host name, pid) of children and agents the program reported
    involved: list[tuple[int, str]]    # prog7: every process the program had at READY (see _involved)
    left: list[int]                    # of all those, the ones still running well after the program ended
    shape: dict[str, float]            # timings, written to user_programs_timings.json (never asserted)


#: this process's environment when the file was collected: the programs start from threads, and
#: pytest sets and unsets PYTEST_CURRENT_TEST meanwhile (reading os.environ then raced: KeyError)
_BASE_ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def _environment(hosts: Optional[list[Any]]) -> dict[str, str]:
    env = dict(_BASE_ENV)
    env.pop("PYTHONUNBUFFERED", None)          # as a user's shell has it: buffered output when piped
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["UP_HOSTS"] = json.dumps(hosts) if hosts else ""
    return env


def _running(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` for all of them to end."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if _running(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, session, ...)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _involved(program: int, children: list[int]) -> list[tuple[int, str]]:
    """Every process a running program has: its session (the relay, ``ssh`` processes) and each
    child's ancestors up to the program or an sshd listener (agent, ``sshd: user@notty``, ...).
    Namespace hosts share this machine's pid namespace (only the network is their own)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != program:
            fields = _stat(int(entry))
            if fields is not None and fields[3] == str(program):
                found.add(int(entry))
    for pid in children:
        for _ in range(20):
            fields = _stat(pid)
            if pid <= 1 or pid == program or fields is None or "[listener]" in _cmdline(pid):
                break
            found.add(pid)
            pid = int(fields[1])
    return sorted((pid, _cmdline(pid)) for pid in found)


def run_program(prog: str, arg: str, hosts: Optional[list[Any]]) -> Outcome:
    """Run one program to its end; for prog7, send Ctrl-C (SIGINT to its process group) once it says READY."""
    argv = [sys.executable, os.path.join(PROGRAMS, prog)] + ([arg] if arg else [])
    started = time.monotonic()
    involved: list[tuple[int, str]] = []
    interrupted = None
    proc = subprocess.Popen(argv, cwd=PROGRAMS, env=_environment(hosts), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        head = ""
        if prog == "prog7_sigint.py":
            timer = threading.Timer(RUN_TIMEOUT, proc.kill)     # bounds the READY wait
            timer.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    head += line
                    if line.startswith("READY"):
                        break
            finally:
                timer.cancel()
            time.sleep(0.5)
            involved = _involved(proc.pid, [int(line.split()[2]) for line in head.splitlines()
                                            if line.startswith("PIDS ")])
            for press in range(2 if arg == "twice" else 1):
                if press:
                    time.sleep(1.0)                           # the second press, during the clean-up
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)        # what the terminal does on Ctrl-C
                    interrupted = interrupted or time.monotonic()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            tree = subprocess.run(["ps", "-o", "pid,ppid,stat,wchan:24,args", "--forest", "-g", str(proc.pid)],
                                  capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            tree = "(no ps: %s)" % exc
        os.kill(proc.pid, signal.SIGUSR1)          # _mp.py: faulthandler dumps every thread's stack
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        raise AssertionError("%s %s hung; processes:\n%s\nstdout:\n%s\nstderr:\n%s"
                             % (prog, arg, "\n".join(line[:160] for line in tree.splitlines()), out[-3000:],
                                err[-12000:])) from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        raise
    ended = time.monotonic()
    seconds = ended - started
    out = head + out
    pids = []
    for line in out.splitlines():
        if line.startswith("PIDS "):
            _, host, pid, ppid = line.split()
            pids += [(host, int(pid)), (host, int(ppid))]
    left = _gone(sorted({pid for _, pid in pids} | {pid for pid, _ in involved}), 20.0)
    shape = {"run": round(seconds, 2)}
    if interrupted is not None:     # for the report: Ctrl-C to the program's end, and to nothing left
        shape.update(exit_after_ctrl_c=round(ended - interrupted, 2),
                     all_gone_after_ctrl_c=round(time.monotonic() - interrupted, 2))
    return Outcome(out, err, proc.returncode, seconds, pids, involved, left, shape)


class Runs:
    """Every program run of this file, started together, a few at a time."""

    def __init__(self, configs: dict[str, Optional[list[Any]]], wanted: list[tuple[str, str, str]]) -> None:
        self.configs = configs
        self.pool = ThreadPoolExecutor(PARALLEL)
        self.futures: dict[tuple[str, str, str], Future] = {}
        # the slowest first (the pipeline's 1,000 items make 4,000 round trips remotely), then
        # the local runs (quick), then the other remote ones
        remote = [key for key in wanted if configs.get(key[2]) is not None]
        order = [key for key in remote if key[0] in SLOW] + sorted({(p, a, "local") for p, a, _ in wanted}) + \
            [key for key in remote if key[0] not in SLOW]
        for prog, arg, config in order:
            self._submit(prog, arg, config)

    def _submit(self, prog: str, arg: str, config: str) -> None:
        hosts = None if config == "local" else self.configs[config]
        self.futures[(prog, arg, config)] = self.pool.submit(run_program, prog, arg, hosts)

    def get(self, prog: str, arg: str, config: str) -> Outcome:
        if (prog, arg, config) not in self.futures:
            from conftest import _unavailable

            _unavailable("no %s configuration here (network namespace hosts need root)" % config)
        return self.futures[(prog, arg, config)].result(timeout=600)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, sshd: Any) -> Any:
    me = current_user()
    loopback = [sshd.spec(me), sshd.options(me)]
    configs: dict[str, Optional[list[Any]]] = {
        "paramiko": [loopback],
        "openssh": [[loopback[0], dict(loopback[1], transport="openssh")]],
        "two-hosts": None,
    }
    try:
        netns = request.getfixturevalue("netns")
    except pytest.skip.Exception:
        pass
    else:
        options = {"key_filename": netns.client_key, "known_hosts": netns.known_hosts, "allow_agent": False,
                   "look_for_keys": False, "ssh_config": False}
        configs["two-hosts"] = [loopback, [netns.hosts["h1"].spec("rpuser"), options]]
    wanted = [(*item.function.program, item.callspec.params["config"]) for item in request.session.items
              if item.module is sys.modules[__name__] and hasattr(item.function, "program")]
    everything = Runs(configs, wanted)
    yield everything
    everything.close()
    timings = os.path.join(os.environ.get("UP_TIMINGS_DIR", tempfile.gettempdir()), "user_programs_timings.json")
    with open(timings, "w") as f:
        json.dump({"%s %s %s" % key: fut.result().shape for key, fut in everything.futures.items()
                   if fut.done() and not fut.cancelled() and not fut.exception()}, f, indent=1)


# -- comparing a remote run with the local one -----------------------------------------------

#: documented: the default name is RemoteProcess-N (docs/api.md, RemoteProcess)
_NAMES = re.compile(r"\bRemoteProcess-(\d+)")

#: what this machine's root login prints now and then (pyenv in ~/.bashrc, read by the shell sshd
#: starts, when two logins rehash at once: its own words, or its rm's or mktemp's naming a file in
#: its shims), as it would for ``ssh host cmd``: the host's, not the program's (bare, or under the
#: host's name)
HOST_NOISE = re.compile(r"(\S+: )?(pyenv: cannot rehash|.*/\.pyenv/shims/)")


def normal(text: str) -> str:
    return _NAMES.sub(r"Process-\1", text)


def errors(stderr: str) -> list[str]:
    """What stderr says, without the frames: headers ("Process Process-3:"), "Traceback" lines,
    exception lines and log lines, sorted (the order between children, and between stdout and
    stderr, is not preserved across hosts: docs/api.md, differences)."""
    keep = [line for line in normal(stderr).splitlines()
            if line and not line.startswith((" ", "\t", "TIME ")) and not HOST_NOISE.match(line)
            and not set(line) <= set("~^ ")]
    return sorted(keep)


def same(local: Outcome, remote: Outcome, stdout_fix=lambda s: s) -> None:
    assert stdout_fix(normal(remote.stdout)) == local.stdout, (remote.stdout, remote.stderr)
    assert remote.returncode == local.returncode, remote.stderr
    assert errors(remote.stderr) == errors(local.stderr)
    assert remote.left == [], "still running on the host after the program ended: %s" % remote.left


def local_ok(local: Outcome) -> None:
    """The program itself is right: checked on the local run first, so that a broken program
    is not mistaken for a remoteproc difference."""
    assert local.left == []


# -- the programs -------------------------------------------------------------------------

@program("prog1_pipeline.py")
def test_pipeline_with_a_failing_worker(runs: Runs, config: str) -> None:
    local = runs.get("prog1_pipeline.py", "", "local")
    assert local.returncode == 0 and "collected 999 items; lost 1" in local.stdout, local.stderr
    # the failing worker takes items 0, 1, 2 alone and fails on the third (the program's docstring)
    assert errors(local.stderr) == ["Process Process-3:", "Traceback (most recent call last):",
                                    "ValueError: worker 1 cannot handle item 2"]
    remote = runs.get("prog1_pipeline.py", "", config)
    assert normal(remote.stdout) == local.stdout, remote.stderr
    assert remote.returncode == 0
    assert errors(remote.stderr) == errors(local.stderr)


@program("prog2_wordcount.py")
def test_word_count_pools(runs: Runs, config: str) -> None:
    local = runs.get("prog2_wordcount.py", "", "local")
    assert local.returncode == 0 and "ready after terminate False" in local.stdout, local.stderr
    remote = runs.get("prog2_wordcount.py", "", config)
    # documented (docs/queues-and-pool.md, Errors): terminate() fails every unfinished task with
    # RemoteProcessError, where multiprocessing leaves them unanswered (never ready)
    same(local, remote, lambda s: s.replace("ready after terminate True", "ready after terminate False"))


@program("prog3_futures.py")
def test_executor_as_completed_wait_cancel_shutdown(runs: Runs, config: str) -> None:
    local = runs.get("prog3_futures.py", "", "local")
    assert local.returncode == 0 and local.stdout.count("True") >= 10, local.stderr
    same(local, runs.get("prog3_futures.py", "", config))


@program("prog4_heartbeat.py")
def test_heartbeat_wait_terminate_kill(runs: Runs, config: str) -> None:
    local = runs.get("prog4_heartbeat.py", "", "local")
    assert local.returncode == 0 and "exitcode -15" in local.stdout and "exitcode -9" in local.stdout
    same(local, runs.get("prog4_heartbeat.py", "", config))


@program("prog5_output.py")
def test_logging_prints_and_exit_codes(runs: Runs, config: str) -> None:
    local = runs.get("prog5_output.py", "", "local")
    assert local.returncode == 5 and "buffered, lost by os._exit" not in local.stdout
    assert "KeyError: 'missing key'" in local.stderr and "fatal: giving up" in local.stderr
    same(local, runs.get("prog5_output.py", "", config))


@program("prog6_shared.py")
def test_shared_state(runs: Runs, config: str) -> None:
    local = runs.get("prog6_shared.py", "", "local")
    assert local.returncode == 0 and "counter 400" in local.stdout, local.stderr
    same(local, runs.get("prog6_shared.py", "", config))


def _pids_reported(outcome: Outcome, children: int) -> None:
    """The children said who they are, and the check for leftovers covers the SSH side too."""
    assert len({pid for _, pid in outcome.pids[::2]}) == children, outcome.stdout
    kinds = {"relay" if "remoteproc.relay" in cmd else "sshd" if cmd.startswith("sshd:") else
             "agent" if "import marshal," in cmd else cmd[:60] for _, cmd in outcome.involved}
    assert {"relay", "sshd", "agent"} <= kinds, kinds


@program("prog7_sigint.py", "handled")
def test_ctrl_c_handled(runs: Runs, config: str) -> None:
    local = runs.get("prog7_sigint.py", "handled", "local")
    # Locally an exit code can be None for ever: when the KeyboardInterrupt lands in join() right
    # after os.waitpid() reaped the child, CPython's popen_fork loses the status (the next waitpid
    # fails with ECHILD). A remote join() has no such window.
    lost = re.compile(r"\bNone\b")
    assert local.returncode == 130 and re.search(r"exit codes \[(130|None), (130|None), (130|None)\]",
                                                 local.stdout), local.stdout + local.stderr
    remote = runs.get("prog7_sigint.py", "handled", config)
    _pids_reported(remote, 3)
    assert "exit codes [130, 130, 130]" in remote.stdout
    # the order of the parent's and the children's lines is a race (locally too)
    assert sorted(normal(remote.stdout).splitlines()[4:]) == sorted(lost.sub("130", local.stdout).splitlines()[4:])
    assert remote.returncode == 130
    assert local.stderr == "" and errors(remote.stderr) == [], remote.stderr
    assert remote.left == []


@program("prog7_sigint.py", "unhandled")
def test_ctrl_c_unhandled(runs: Runs, config: str) -> None:
    local = runs.get("prog7_sigint.py", "unhandled", "local")
    assert local.returncode == -signal.SIGINT
    # one traceback per child and the parent's, nothing more
    assert errors(local.stderr).count("Traceback (most recent call last):") == 4, local.stderr
    remote = runs.get("prog7_sigint.py", "unhandled", config)
    _pids_reported(remote, 3)
    assert remote.returncode == local.returncode
    assert errors(remote.stderr) == errors(local.stderr), remote.stderr
    assert remote.left == []


@program("prog7_sigint.py", "twice")
def test_ctrl_c_twice_during_the_clean_up(runs: Runs, config: str) -> None:
    """The second Ctrl-C interrupts every child's clean-up and the parent's join(): each shows
    both KeyboardInterrupts; the program still leaves nothing running."""
    local = runs.get("prog7_sigint.py", "twice", "local")
    assert local.returncode == -signal.SIGINT
    assert errors(local.stderr).count("KeyboardInterrupt") == 8, local.stderr
    remote = runs.get("prog7_sigint.py", "twice", config)
    _pids_reported(remote, 3)
    assert remote.returncode == local.returncode
    assert errors(remote.stderr) == errors(local.stderr), remote.stderr
    assert sorted(normal(remote.stdout).splitlines()[4:]) == sorted(local.stdout.splitlines()[4:])
    assert remote.left == []


@program("prog7_sigint.py", "pool")
def test_ctrl_c_during_pool_map(runs: Runs, config: str) -> None:
    local = runs.get("prog7_sigint.py", "pool", "local")
    assert local.returncode == -signal.SIGINT and "parent: map interrupted" in local.stdout
    remote = runs.get("prog7_sigint.py", "pool", config)
    _pids_reported(remote, 2)
    assert remote.returncode == local.returncode
    assert "parent: map interrupted" in remote.stdout
    # how many workers print a KeyboardInterrupt traceback before terminate() reaches them is a
    # race, locally too: at most one per worker, plus the parent's; nothing from remoteproc itself
    said = errors(remote.stderr)
    assert 1 <= said.count("Traceback (most recent call last):") <= 3, remote.stderr
    assert set(said) <= {"Traceback (most recent call last):", "KeyboardInterrupt"} | {
        line for line in said if re.fullmatch(r"Process [\w-]+:", line)}, remote.stderr
    assert remote.left == []


@program("prog7_sigint.py", "pool-idiom")
def test_ctrl_c_with_the_pool_recipe(runs: Runs, config: str) -> None:
    """Workers ignore SIGINT (initializer), the parent catches KeyboardInterrupt and terminates."""
    local = runs.get("prog7_sigint.py", "pool-idiom", "local")
    assert local.returncode == 1 and local.stderr == "", local.stderr
    remote = runs.get("prog7_sigint.py", "pool-idiom", config)
    _pids_reported(remote, 2)
    assert [line for line in remote.stdout.splitlines() if not line.startswith("PIDS")] == \
        [line for line in local.stdout.splitlines() if not line.startswith("PIDS")]
    assert remote.returncode == 1 and errors(remote.stderr) == [], remote.stderr
    assert remote.left == []


@program("prog7_sigint.py", "executor")
def test_ctrl_c_during_executor_map(runs: Runs, config: str) -> None:
    local = runs.get("prog7_sigint.py", "executor", "local")
    assert local.returncode == -signal.SIGINT and "parent: map interrupted" in local.stdout
    remote = runs.get("prog7_sigint.py", "executor", config)
    _pids_reported(remote, 2)
    assert remote.returncode == local.returncode
    assert "parent: map interrupted" in remote.stdout
    assert _without_idle_workers(errors(remote.stderr), 2) == _without_idle_workers(errors(local.stderr), 2), \
        remote.stderr
    assert remote.left == []


def _without_idle_workers(said: list[str], workers: int) -> list[str]:
    """``errors()`` less the tracebacks of Executor workers the Ctrl-C found between two calls:
    a ProcessPoolExecutor worker waiting for its next call dies of the KeyboardInterrupt with
    "Process ForkProcess-N:" and a traceback, and so does a remote one ("Process
    RemotePoolWorker-N:"). Which worker is waiting then is a race, locally too (the remote
    worker waits a round trip for each 0.2 s call: PREFETCH is for quick calls only); at most
    one such traceback per worker."""
    headers = [line for line in said if re.fullmatch(r"Process [\w-]+:", line)]
    assert len(headers) <= workers, said
    rest = [line for line in said if line not in headers]
    for line in ["Traceback (most recent call last):", "KeyboardInterrupt"] * len(headers):
        assert line in rest, said
        rest.remove(line)
    return rest


@program("prog7_sigint.py", "queue")
def test_ctrl_c_while_the_parent_waits_on_a_queue(runs: Runs, config: str) -> None:
    local = runs.get("prog7_sigint.py", "queue", "local")
    assert local.returncode == 0 and "still usable" in local.stdout, local.stderr
    remote = runs.get("prog7_sigint.py", "queue", config)
    _pids_reported(remote, 2)
    assert sorted(normal(remote.stdout).splitlines()[3:]) == sorted(local.stdout.splitlines()[3:])
    assert remote.returncode == 0 and local.stderr == "" and errors(remote.stderr) == [], remote.stderr
    assert remote.left == []


@program("prog8_lifecycle.py")
def test_program_end_joins_and_terminates_children(runs: Runs, config: str) -> None:
    local = runs.get("prog8_lifecycle.py", "", "local")
    assert local.returncode == 0 and local.stdout.endswith("parent ends without join\nnon-daemon child done\n")
    assert local.stdout.count("\nline ") == 20000 and "daemon child was not" not in local.stdout
    remote = runs.get("prog8_lifecycle.py", "", config)
    pids = re.compile(r"^PIDS .*$", re.M)
    assert pids.sub("PIDS", remote.stdout) == pids.sub("PIDS", local.stdout)
    assert remote.returncode == 0
    assert errors(remote.stderr) == errors(local.stderr) == ["chatty done"]
    assert remote.left == []


@program("prog9_exitcodes.py")
def test_exit_codes_of_every_ending(runs: Runs, config: str) -> None:
    local = runs.get("prog9_exitcodes.py", "", "local")
    assert local.returncode == 0 and "segfault                   exitcode -11" in local.stdout
    same(local, runs.get("prog9_exitcodes.py", "", config))
