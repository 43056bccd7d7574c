"""The joblib backend "remoteproc": Parallel on SSH hosts, with joblib's batching, generators and errors."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import joblib  # the test extra installs it
import pytest
from jobtasks import fails_on_3, mark_then_fail_first, slow_where, where

import remoteproc.joblib as rjoblib

rjoblib.register()


@pytest.fixture(autouse=True)
def _workers_end_with_shutdown():
    """Each test starts its own workers; shutdown() stops them all."""
    yield
    rjoblib.shutdown()
    assert not [t for t in threading.enumerate() if t.name == "remoteproc-pool" and t.is_alive()]


@pytest.fixture
def two_accounts(host, ssh_options, plain_user_host, plain_user_options):
    return [(host, ssh_options), (plain_user_host, plain_user_options)]


def test_n_jobs_minus_one_uses_every_worker_of_every_host_and_batches(two_accounts):
    with joblib.parallel_config(backend="remoteproc", hosts=two_accounts, processes_per_host=2):
        parallel = joblib.Parallel(n_jobs=-1)
        assert parallel._effective_n_jobs() == 4
        out = parallel(joblib.delayed(where)(x) for x in range(2000))
    assert [v for v, _ in out] == [x * x for x in range(2000)]
    assert os.getpid() not in {pid for _, pid in out}
    assert 2 <= len({pid for _, pid in out}) <= 4


def test_a_positive_n_jobs_caps_the_batches_at_once(host, ssh_options):
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=4, **ssh_options):
        out = joblib.Parallel(n_jobs=2, batch_size=1)(joblib.delayed(slow_where)(x) for x in range(8))
        assert [x for x, _, _, _ in out] == list(range(8))
        # at most 2 batches ran at once: no task started while two others were running
        # (one host, so one clock; a batch is sent only after another has ended)
        for _, _, s, _ in out:
            assert sum(1 for _, _, a, b in out if a <= s < b) <= 2
        assert joblib.Parallel(n_jobs=2)._effective_n_jobs() == 2
        assert joblib.Parallel(n_jobs=99)._effective_n_jobs() == 4
        assert joblib.Parallel(n_jobs=-2)._effective_n_jobs() == 3


def test_generator_output_in_order_and_unordered(host, ssh_options):
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        gen = joblib.Parallel(return_as="generator")(joblib.delayed(where)(x) for x in range(50))
        assert not isinstance(gen, list)
        assert [v for v, _ in gen] == [x * x for x in range(50)]
        gen = joblib.Parallel(return_as="generator_unordered")(joblib.delayed(where)(x) for x in range(50))
        assert sorted(v for v, _ in gen) == [x * x for x in range(50)]


def test_an_exception_arrives_with_the_remote_traceback(host, ssh_options):
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        with pytest.raises(KeyError, match="three is right out") as info:
            joblib.Parallel(n_jobs=-1, batch_size=1)(joblib.delayed(fails_on_3)(x) for x in range(20))
        cause = info.value.__cause__
        assert cause is not None and "pool worker pid" in str(cause) and "fails_on_3" in str(cause)
        # the backend is still usable after the failure
        assert joblib.Parallel()(joblib.delayed(fails_on_3)(x) for x in range(3)) == [0, 1, 2]


def test_a_failure_drops_the_batches_no_worker_has_started(sshd, tmp_path):
    """joblib pre-dispatches 2 * n_jobs batches; after a fast call the executor would queue a second
    batch in each worker's pipe, out of abort_everything's reach: those ran after the failure (the
    next call waited for them). (A loopback host: the batches leave files in tmp_path.)"""
    with joblib.parallel_config(backend="remoteproc", hosts=[sshd.spec()], processes_per_host=2,
                                **sshd.options()):
        joblib.Parallel(n_jobs=-1, batch_size=1)(joblib.delayed(where)(x) for x in range(20))   # fast
        with pytest.raises(KeyError, match="the first batch fails"):
            joblib.Parallel(n_jobs=-1, batch_size=1)(
                joblib.delayed(mark_then_fail_first)(str(tmp_path), x, 3) for x in range(8))
        # the abort killed the workers of the batches still running (1, and maybe 2, handed to the
        # worker of 0 as 0 failed) and new ones took their places: nothing else started meanwhile
        assert joblib.Parallel(n_jobs=-1, batch_size=1)(joblib.delayed(abs)(-x) for x in range(2)) == [0, 1]
    started = sorted(int(name) for name in os.listdir(tmp_path))
    assert started in ([0, 1], [0, 1, 2]), started


def test_parallel_is_reused_across_calls_without_restarting_workers(host, ssh_options):
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        parallel = joblib.Parallel(n_jobs=-1, batch_size=1)
        first = {pid for _, pid in parallel(joblib.delayed(where)(x) for x in range(20))}
        backend = parallel._backend
        workers = set(pid for _, pid in backend.executor().workers())
        second = {pid for _, pid in parallel(joblib.delayed(where)(x) for x in range(20))}
        third = {pid for _, pid in joblib.Parallel(n_jobs=-1)(joblib.delayed(where)(x) for x in range(20))}
        assert first | second | third <= workers
        assert set(pid for _, pid in backend.executor().workers()) == workers


def test_hosts_given_as_a_generator_serve_every_executor_of_the_configuration(host, ssh_options):
    """Found by a new user's audit: the first executor used the generator up, and the one after a
    shutdown() had no host ("a pool needs at least one host")."""
    with joblib.parallel_config(backend="remoteproc", hosts=(h for h in [host]), processes_per_host=1,
                                **ssh_options):
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(-x) for x in range(3)) == [0, 1, 2]
        rjoblib.shutdown()
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(-x) for x in range(3)) == [0, 1, 2]


def test_lambdas_and_closures_of_main_travel(host, ssh_options):
    k = 7
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=1, **ssh_options):
        assert joblib.Parallel()(joblib.delayed(lambda x: x + k)(x) for x in range(5)) == [7, 8, 9, 10, 11]


def test_without_hosts_the_backend_says_how_to_give_them():
    with pytest.raises(ValueError, match=r"'remoteproc' needs hosts: joblib.parallel_config\(backend='remoteproc'"):
        joblib.Parallel(backend="remoteproc", n_jobs=2)(joblib.delayed(abs)(-1) for _ in range(2))


def test_a_backend_registered_under_another_name_is_named_so_in_its_errors():
    """Found by a new user's audit: register(name="cluster") said to use backend='remoteproc'."""
    rjoblib.register(name="cluster")
    with pytest.raises(ValueError, match=r"'cluster' needs hosts: joblib.parallel_config\(backend='cluster'"):
        joblib.Parallel(backend="cluster", n_jobs=2)(joblib.delayed(abs)(-1) for _ in range(2))


def test_n_jobs_zero_is_refused_before_any_host_is_reached():
    """As joblib's own backends: a ValueError, and no connection tried (the host does not exist)."""
    with joblib.parallel_config(backend="remoteproc", hosts=["nobody@no-such-host.invalid"]):
        with pytest.raises(ValueError, match="n_jobs == 0"):
            joblib.Parallel(n_jobs=0)(joblib.delayed(abs)(-1) for _ in range(2))


def test_the_hosts_need_no_joblib(plain_user_host, plain_user_options):
    """rpuser has only the system python3: batches travel as plain calls, not joblib objects."""
    with joblib.parallel_config(backend="remoteproc", hosts=[plain_user_host], processes_per_host=1,
                                **plain_user_options):
        out = joblib.Parallel()(joblib.delayed(where)(x) for x in range(10))
    assert [v for v, _ in out] == [x * x for x in range(10)]


def test_callbacks_come_from_the_pool_thread_and_stay_consistent(host, ssh_options):
    """Many short batches under a cap: every result arrives once, none is lost in the gate."""
    seen = []
    lock = threading.Lock()
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=3, **ssh_options):
        for v, _ in joblib.Parallel(n_jobs=2, batch_size=1, return_as="generator_unordered")(
                joblib.delayed(where)(x) for x in range(300)):
            with lock:
                seen.append(v)
    assert sorted(seen) == sorted(x * x for x in range(300))


def test_a_timeout_raises_timeout_error(host, ssh_options):
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        with pytest.raises(multiprocessing.TimeoutError):     # what joblib raises
            joblib.Parallel(timeout=0.5, batch_size=1)(joblib.delayed(time.sleep)(3) for _ in range(4))


TIMED_OUT_PROGRAM = r'''
import sys, time
import joblib
import remoteproc.joblib
remoteproc.joblib.register()
backend, cfg = "loky", {}
if sys.argv[1] != "local":
    backend, cfg = "remoteproc", dict(hosts=[sys.argv[1]], processes_per_host=2, **eval(sys.argv[2]))
with joblib.parallel_config(backend=backend, **cfg):
    try:
        joblib.Parallel(n_jobs=2, batch_size=1, timeout=1.0)(joblib.delayed(time.sleep)(25) for _ in range(4))
    except Exception as e:
        print("raised", type(e).__name__, flush=True)
'''


def test_the_program_ends_without_waiting_for_the_batches_of_a_timed_out_parallel(sshd, tmp_path):
    """As with loky: the backend's workers end with the program, late batches and all (a user's own
    remoteproc.Executor is waited for at exit, as ProcessPoolExecutor is; joblib's is not its user's)."""
    import subprocess
    import sys
    script = tmp_path / "prog.py"
    script.write_text(TIMED_OUT_PROGRAM)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for run in (["local"], [sshd.spec(), repr(sshd.options())]):
        t = time.monotonic()
        out = subprocess.run([sys.executable, str(script)] + run, capture_output=True, text=True, timeout=60, env=env)
        assert out.stdout == "raised TimeoutError\n", (run[0], out.stdout, out.stderr)
        assert time.monotonic() - t < 15, run[0]        # not the 25 s the batches would take
