"""Integrations met as a new user meets them, beyond the documented happy path: joblib (nested
Parallel, a task that kills its worker, require="sharedmem"), Slurm host lists and allocations,
the Executor swapped in for ProcessPoolExecutor, the pytest plugin on a failing remote test,
and the command line's script mode (stdin, sibling modules, --transport openssh).

Each case states what the reference tool (joblib with loky, ProcessPoolExecutor, Slurm,
``python3 script.py``) does; the report is /tmp/audit_integrations.md of the audit that wrote them.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import textwrap
import time
import warnings

import cloudpickle
import joblib
import pytest

import remoteproc
import remoteproc.joblib as rjoblib
from remoteproc import hostlist
from remoteproc.hostlist import Host, HostlistError
from remoteproc.testing import current_user

cloudpickle.register_pickle_by_value(sys.modules[__name__])     # the task functions travel by value

rjoblib.register()

pytestmark = pytest.mark.timeout(120)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module", autouse=True)
def _joblib_workers_end_with_the_module():
    """The joblib tests share one configuration's workers (as a user's calls do); stop them at the end."""
    yield
    rjoblib.shutdown()


# -- task functions (by value: see register_pickle_by_value above) --------------------------------------

def nested_parallel(n):
    """A task that runs a Parallel of its own, as scikit-learn estimators inside a grid search do."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend, _ = joblib.parallel.get_active_backend()
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(n))
    return type(backend).__name__, out, [str(w.message) for w in caught]


def exit_on_1(x):
    if x == 1:
        os._exit(3)
    return x


def append_and_pid(out, x):
    out.append(x)
    return os.getpid()


def chained(x):
    try:
        raise KeyError("the inner cause")
    except KeyError as exc:
        raise ValueError("the outer error %d" % x) from exc


# -- joblib ------------------------------------------------------------------------------------------------

@pytest.mark.one_transport
def test_joblib_nested_parallel_runs_in_threads_as_under_loky(host, ssh_options):
    """loky: a Parallel inside a task gets joblib's nested backend (threads), silently.  The
    remote worker is daemonic, so joblib's default (loky) there warned "Loky-backed parallel loops
    cannot be called in a multiprocessing, setting n_jobs=1" and ran the inner loop serially."""
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        out = joblib.Parallel(n_jobs=2, batch_size=1)(joblib.delayed(nested_parallel)(n) for n in (2, 3))
    assert out == [("ThreadingBackend", [0, 1], []), ("ThreadingBackend", [0, 1, 2], [])]


@pytest.mark.one_transport
def test_joblib_a_task_that_kills_its_worker_is_a_broken_process_pool_and_the_next_call_works(host, ssh_options):
    """loky raises TerminatedWorkerError, a BrokenProcessPool; so does remoteproc (WorkerDiedError)."""
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        with pytest.raises(cf.process.BrokenProcessPool, match="exitcode 3"):
            joblib.Parallel(n_jobs=2, batch_size=1)(joblib.delayed(exit_on_1)(i) for i in range(4))
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(exit_on_1)(i) for i in (0, 2)) == [0, 2]


@pytest.mark.one_transport
def test_joblib_require_sharedmem_falls_back_to_local_threads_as_with_loky(host, ssh_options):
    out: list = []
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        pids = joblib.Parallel(n_jobs=2, require="sharedmem")(joblib.delayed(append_and_pid)(out, i) for i in range(4))
    assert set(pids) == {os.getpid()} and sorted(out) == [0, 1, 2, 3]


# -- Executor in place of ProcessPoolExecutor ---------------------------------------------------------------

@pytest.mark.one_transport
def test_executor_chained_cause_and_shutdown_without_waiting(host, ssh_options):
    """As ProcessPoolExecutor: the remote traceback (the __cause__) shows the task's own chain;
    shutdown(wait=False, cancel_futures=True) returns at once, cancels what no worker started,
    and the running calls' workers are gone afterwards."""
    ex = remoteproc.Executor([host], processes_per_host=2, **ssh_options)
    with pytest.raises(ValueError, match="the outer error 5") as info:
        ex.submit(chained, 5).result(60)
    cause = str(info.value.__cause__)
    assert "KeyError: 'the inner cause'" in cause and "direct cause" in cause
    fs = [ex.submit(time.sleep, 0.5) for _ in range(6)]
    t0 = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - t0 < 1.0
    # (cf.wait() would not count them: a future cancelled by cancel() is never "notified", with
    # ProcessPoolExecutor as here)
    assert sum(f.cancelled() for f in fs) >= 2        # a worker may hold a second call, as PPE queues one
    assert all(f.cancelled() or f.result(30) is None for f in fs)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, 1)
    ex._core.join()         # the workers end (what wait=True would have waited for)
    assert ex.workers() == []


# -- Slurm host lists -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("rack[1-2]-node[01-02]", "rack1-node01 rack1-node02 rack2-node01 rack2-node02"),
    ("node[001-004]", "node001 node002 node003 node004"),
    ("gpu[1-2],cpu[098-101]", "gpu1 gpu2 cpu098 cpu099 cpu100 cpu101"),
])
def test_slurm_forms_users_meet(text, expected):
    assert hostlist.expand(text) == expected.split()


def test_slurm_allocation_errors_name_the_variable_and_the_position():
    """A malformed SLURM_JOB_NODELIST or SLURM_TASKS_PER_NODE is a HostlistError that says which
    variable it read (the user called slurm(), not expand()), with the position in its value."""
    with pytest.raises(HostlistError) as info:
        hostlist.slurm({"SLURM_JOB_NODELIST": "n[1-3", "SLURM_TASKS_PER_NODE": "1(x3)"})
    assert info.value.position == 1 and "SLURM_JOB_NODELIST" in str(info.value)
    with pytest.raises(HostlistError) as info:
        hostlist.slurm({"SLURM_NODELIST": "n[1-2],m[", "SLURM_TASKS_PER_NODE": "1(x3)"})
    assert info.value.position == 8 and "SLURM_NODELIST" in str(info.value)
    with pytest.raises(HostlistError) as info:
        hostlist.slurm({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2),1(x"})
    assert info.value.position == 6 and "SLURM_TASKS_PER_NODE" in str(info.value)
    assert str(info.value).splitlines()[-1] == "  " + " " * 6 + "^"


def test_slurm_a_node_with_no_tasks_gets_no_workers():
    env = {"SLURM_JOB_NODELIST": "a[1-2],b", "SLURM_TASKS_PER_NODE": "2(x2),0"}
    assert hostlist.slurm(env) == [Host("a1", {}, 2), Host("a2", {}, 2)]


# -- the pytest plugin: a test that fails remotely ---------------------------------------------------------

FAILING_USER_TEST = '''
import remoteproc


def divide(x):
    return 1 / x


def test_fails_remotely(remoteproc_host):
    with remoteproc.Pool(remoteproc_host, processes_per_host=1) as pool:
        pool.apply(divide, (0,))


def test_never_reached_with_x(remoteproc_host):
    pass
'''


@pytest.mark.loopback_only
def test_pytest_plugin_shows_the_remote_traceback_and_honours_x(tmp_path):
    (tmp_path / "test_user.py").write_text(textwrap.dedent(FAILING_USER_TEST))
    env = dict(ENV, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "remoteproc.pytest_plugin", "-p", "no:cacheprovider",
                          "-q", "-x", "test_user.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed" in run.stdout and "passed" not in run.stdout
    # the remote frame (file, line and source of divide) is in the report, as a local failure's would be
    assert "return 1 / x" in run.stdout and "ZeroDivisionError: division by zero" in run.stdout
    assert "direct cause" in run.stdout


# -- the command line: script mode -------------------------------------------------------------------------

def remoteproc_cmd(*args, stdin_text=None):
    return subprocess.run([sys.executable, "-m", "remoteproc", *args], capture_output=True, text=True, timeout=60,
                          env=ENV, input=stdin_text, stdin=None if stdin_text is not None else subprocess.DEVNULL)


SIBLING_SCRIPT = """
    import sys
    from helper import greet
    from multiprocessing.connection import Connection
    import os
    conn = Connection(int(os.environ["REMOTEPROC_FD"]))
    conn.send(greet(sys.argv[1]))
"""


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_cli_run_a_script_that_imports_a_module_of_its_directory(sshd, scripts, transport):
    """As ``python3 dir/main.py``: the script's directory is first on sys.path."""
    scripts("helper.py", "def greet(name):\n    return 'hello ' + name\n")
    path = scripts("main.py", SIBLING_SCRIPT)
    out = remoteproc_cmd("run", "-F", sshd.ssh_config, "--transport", transport, "remoteproc-" + current_user(),
                         path, "world")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['"hello world"']


STDIN_SCRIPT = """
    import sys
    first = input()
    print("read:", (first + " " + sys.stdin.read()).strip())
"""


def test_cli_run_forwards_stdin_to_the_script(sshd, scripts):
    """As ``ssh HOST python3 script.py``: this command's stdin is the script's; ``-n``: /dev/null."""
    path = scripts("reader.py", STDIN_SCRIPT)
    out = remoteproc_cmd("run", "-F", sshd.ssh_config, "remoteproc-" + current_user(), path,
                         stdin_text="lines from\na pipe\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "read: lines from a pipe"
    out = remoteproc_cmd("run", "-n", "-F", sshd.ssh_config, "remoteproc-" + current_user(), path,
                         stdin_text="not for the script\n")
    assert out.returncode == 1 and "EOFError" in out.stderr, out.stderr     # input() at once: /dev/null


BIG_STDIN_SCRIPT = """
    import hashlib, sys
    from multiprocessing.connection import Connection
    import os
    conn = Connection(int(os.environ["REMOTEPROC_FD"]))
    first = sys.stdin.buffer.readline().decode().strip()
    rest = sys.stdin.buffer.read()
    conn.send((first, len(rest), hashlib.sha256(rest).hexdigest()))
"""


@pytest.mark.one_transport
def test_run_with_stdin_passes_megabytes_intact_and_a_script_that_reads_none_still_ends(host, ssh_options, scripts,
                                                                                      tmp_path):
    import hashlib

    import remoteproc

    blob = os.urandom(3 << 20)
    source = tmp_path / "input.bin"
    source.write_bytes(b"first line\n" + blob)
    path = scripts("big_reader.py", BIG_STDIN_SCRIPT)
    with open(source, "rb") as f:                 # a file object
        job = remoteproc.run(host, path, stdin=f, **ssh_options)
        try:
            assert job.conn.poll(60)
            assert job.conn.recv() == ("first line", len(blob), hashlib.sha256(blob).hexdigest())
            job.join(30)
            assert job.exitcode == 0
        finally:
            job.conn.close()
    r, w = os.pipe()                              # an fd that never ends: the script ignores it
    try:
        job = remoteproc.run(host, scripts("quiet.py", "print('no reading')\n"), stdin=r, **ssh_options)
        job.join(30)
        assert job.exitcode == 0
        job.conn.close()
    finally:
        os.close(w)
        os.close(r)
    with pytest.raises(TypeError, match="stdin must be"):
        remoteproc.run(host, path, stdin="not a file", **ssh_options)
