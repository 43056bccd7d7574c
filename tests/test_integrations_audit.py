"""What users of joblib, dask, Slurm, pytest and concurrent.futures do, against remoteproc's
integrations, compared with what those tools do with their own local backends."""

from __future__ import annotations

import _thread
import multiprocessing
import os
import threading
import time

import joblib  # the test extra installs it
import pytest
from audittasks import mark_and_sleep, pids_in

import remoteproc.joblib as rjoblib

rjoblib.register()


@pytest.fixture(autouse=True)
def _joblib_workers_end():
    yield
    rjoblib.shutdown()


def _gone(pids, within: float = 10.0) -> bool:
    """Every pid of this machine's (loopback) host ended within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [p for p in pids if os.path.exists("/proc/%d" % p)]:
            return True
        time.sleep(0.1)
    return False


def _interrupt_after(seconds: float) -> threading.Timer:
    """KeyboardInterrupt in the main thread after ``seconds``, as a SIGINT to this process alone gives
    (``kill -INT``, an IDE's stop button). (A terminal's Ctrl-C signals the whole process group, and
    remoteproc forwards that SIGINT to the remote children, which interrupts the batches there.)"""
    t = threading.Timer(seconds, _thread.interrupt_main)
    t.start()
    return t


# -- joblib: an aborted call stops its running batches, as loky does ---------------------------------------

@pytest.mark.loopback_only
@pytest.mark.parametrize("how", ["timeout", "error", "interrupt"])
def test_joblib_an_aborted_call_stops_its_running_batches_and_the_next_call_does_not_wait(
        host, ssh_options, tmp_path, how):
    """loky kills its workers when a call is aborted (a task raised, ``timeout=`` expired, a
    KeyboardInterrupt), so the next call starts at once. The backend left the running batches to
    run to their end: the next Parallel call waited behind them (30 s here), and the hosts
    computed what nobody wanted."""
    d = str(tmp_path)
    os.chmod(d, 0o777)
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x) for x in range(4))      # the workers are up
        args = [(d, x, 30) for x in range(6)]
        if how == "error":
            args[1] = (d, -1, 1.0)         # (by then the batch of 0 runs)
            with pytest.raises(KeyError, match="this batch fails"):
                joblib.Parallel(n_jobs=2, batch_size=1)(joblib.delayed(mark_and_sleep)(*a) for a in args)
        elif how == "timeout":
            with pytest.raises(multiprocessing.TimeoutError):
                joblib.Parallel(n_jobs=2, batch_size=1, timeout=1.5)(
                    joblib.delayed(mark_and_sleep)(*a) for a in args)
        else:
            timer = _interrupt_after(1.5)
            try:
                with pytest.raises(KeyboardInterrupt):
                    joblib.Parallel(n_jobs=2, batch_size=1)(joblib.delayed(mark_and_sleep)(*a) for a in args)
            finally:
                timer.cancel()
        started = pids_in(d)
        assert started, "no batch started"
        t = time.monotonic()
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x) for x in range(4)) == [0, 1, 2, 3]
        took = time.monotonic() - t
        assert took < 10, "the next call waited %.1f s for the aborted batches" % took
        assert _gone(started), "the aborted batches still run on the host"
        assert len(joblib.Parallel(n_jobs=-1)._backend.executor().workers()) == 2       # replaced


@pytest.mark.one_transport
def test_joblib_a_single_worker_runs_the_tasks_on_its_host_not_here(host, ssh_options):
    """joblib runs a call whose effective n_jobs is 1 as a plain loop in the calling process: with
    one host and processes_per_host=1, Parallel(n_jobs=-1), Parallel() and Parallel(n_jobs=4) ran
    every task here, on the user's machine, instead of on the host. n_jobs=1 itself is joblib's
    local loop, as with every backend."""
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=1, **ssh_options):
        for n_jobs in (-1, None, 4):
            pids = set(joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(os.getpid)() for _ in range(6)))
            assert len(pids) == 1 and os.getpid() not in pids, n_jobs
        with joblib.Parallel(n_jobs=-1) as parallel:       # (a managed backend: the same)
            assert os.getpid() not in set(parallel(joblib.delayed(os.getpid)() for _ in range(3)))
        assert set(joblib.Parallel(n_jobs=1)(joblib.delayed(os.getpid)() for _ in range(3))) == {os.getpid()}
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        assert os.getpid() not in set(joblib.Parallel(n_jobs=-2)(joblib.delayed(os.getpid)() for _ in range(4)))


# -- tracebacks name the user's files, as loky's do ------------------------------------------------------------

def _call(fn, x):
    return fn(x)


@pytest.mark.one_transport
@pytest.mark.loopback_only      # (the source line: the test's file is on the host)
def test_a_failing_call_of_joblib_dask_or_an_argument_names_its_file_and_line(host, ssh_options):
    """loky's remote traceback shows the user's file, line and source for a function of the script.
    A function shipped by value kept its file name only as the task's own function: joblib's calls,
    dask's tasks and the function of Executor.map(chunksize>1) travel among the arguments, and their
    frames said ``File "<dynamic-code>"``."""
    import dask

    import remoteproc

    def fails(x):                   # (by value: a function of no importable module)
        return 1 // (x - 2)

    def check(exc: BaseException) -> None:
        text = str(exc.__cause__)
        assert "<dynamic-code>" not in text and '"%s", line' % __file__ in text, text
        assert "return 1 // (x - 2)" in text, text          # the source line, as the file is on the host

    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        with pytest.raises(ZeroDivisionError) as info:
            joblib.Parallel()(joblib.delayed(fails)(x) for x in range(4))
    check(info.value)
    with remoteproc.Executor([host], 1, **ssh_options) as executor:
        with pytest.raises(ZeroDivisionError) as info:
            executor.submit(_call, fails, 2).result(timeout=60)
        check(info.value)
        with pytest.raises(ZeroDivisionError) as info:      # (map's chunks carry the function as an argument)
            list(executor.map(fails, [1, 2, 3], chunksize=2))
        check(info.value)
        with pytest.raises(ZeroDivisionError) as info:
            dask.compute(dask.delayed(fails)(2), scheduler=executor)
        check(info.value)


# -- joblib: a configuration's workers come back after shutdown() or the loss of every host -------------------

@pytest.mark.one_transport
def test_joblib_shutdown_inside_a_parallel_config_block_then_another_call(host, ssh_options):
    """The docs: shutdown() stops the workers and the next call starts new ones. Inside the same
    parallel_config block the backend kept the executor it had: the next call raised
    RuntimeError("cannot schedule new futures after shutdown")."""
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        first = set(joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(4)))
        rjoblib.shutdown()
        second = set(joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(4)))
    assert os.getpid() not in first | second and not first & second


@pytest.mark.loopback_only
def test_joblib_a_configuration_whose_hosts_were_all_lost_gets_new_workers_at_the_next_call(host, ssh_options):
    """loky replaces a broken executor at the next call. The backend kept its executor with no worker
    left: every later Parallel call of that configuration failed with "no pool worker is left"
    until the program called remoteproc.joblib.shutdown() or ended."""
    import signal
    from concurrent.futures.process import BrokenProcessPool

    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        backend = joblib.Parallel()._backend
        assert joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(4)) == [0, 1, 2, 3]
        agents = {w.agent_pid for w in backend.executor()._core.workers}
        assert agents and None not in agents
        killer = threading.Timer(1.0, lambda: [os.kill(a, signal.SIGKILL) for a in agents])
        killer.start()
        try:
            with pytest.raises(BrokenProcessPool, match="lost"):
                joblib.Parallel(batch_size=1)(joblib.delayed(time.sleep)(5) for _ in range(4))
        finally:
            killer.join()
        for _ in range(2):
            assert joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(4)) == [0, 1, 2, 3]
        assert len(backend.executor().workers()) == 2


@pytest.mark.one_transport
def test_joblib_parallel_naming_the_backend_inside_its_parallel_config_block_takes_the_block_s_hosts(
        host, ssh_options):
    """joblib makes a backend of its own, without arguments, for Parallel(backend="remoteproc"): inside
    parallel_config(backend="remoteproc", hosts=...) that raised "the joblib backend 'remoteproc'
    needs hosts", where naming no backend works."""
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        pids = set(joblib.Parallel(n_jobs=2, backend="remoteproc")(joblib.delayed(os.getpid)() for _ in range(4)))
    assert pids and os.getpid() not in pids
    with pytest.raises(ValueError, match="needs hosts"):        # (outside a block: still the error that says how)
        joblib.Parallel(n_jobs=2, backend="remoteproc")(joblib.delayed(abs)(-1) for _ in range(2))


@pytest.mark.one_transport
def test_joblib_an_aborted_call_leaves_the_batches_of_another_call_on_the_same_workers_alone(
        host, ssh_options, tmp_path):
    """Two threads share one configuration's executor: the abort of one call kills only the workers
    running that call's batches; the other call's batches end with their results."""
    d = str(tmp_path)
    os.chmod(d, 0o777)
    config = dict(backend="remoteproc", hosts=[host], processes_per_host=4, **ssh_options)
    out: dict = {}

    def other_call() -> None:
        with joblib.parallel_config(**config):
            try:
                out["values"] = joblib.Parallel(n_jobs=2, batch_size=1)(
                    joblib.delayed(mark_and_sleep)(d, x, 3) for x in (100, 101))
            except BaseException as exc:        # (reported below, in the test's thread)
                out["error"] = exc

    with joblib.parallel_config(**config):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(-x) for x in range(8))     # the workers are up
        thread = threading.Thread(target=other_call)
        thread.start()
        time.sleep(1.0)         # (the other call's batches run)
        with pytest.raises(KeyError, match="this batch fails"):
            joblib.Parallel(n_jobs=2, batch_size=1)(
                joblib.delayed(mark_and_sleep)(d, x, 0.5 if x == -1 else 30) for x in (1, -1, 2, 3))
        thread.join(60)
    assert not thread.is_alive()
    assert out.get("values") == [100, 101], out


@pytest.mark.one_transport
def test_joblib_register_as_the_default_backend_with_hosts(host, ssh_options):
    """register(make_default=True) made joblib's default a backend it builds without arguments: every
    Parallel() outside a parallel_config block then raised "needs hosts", and nothing could give them.
    register() now takes the configuration, and refuses make_default=True without hosts."""
    import joblib.parallel

    saved = joblib.parallel.DEFAULT_BACKEND
    try:
        with pytest.raises(ValueError, match="needs hosts"):
            rjoblib.register("remoteproc-audit", make_default=True)
        assert joblib.parallel.DEFAULT_BACKEND == saved
        rjoblib.register("remoteproc-audit", make_default=True, hosts=[host], processes_per_host=2, **ssh_options)
        pids = set(joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(6)))
        assert pids and os.getpid() not in pids
        with joblib.parallel_config(backend="remoteproc-audit", processes_per_host=1):     # a block's own win
            assert len(set(joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(6)))) == 1
    finally:
        joblib.parallel.DEFAULT_BACKEND = saved
        joblib.parallel.BACKENDS.pop("remoteproc-audit", None)


@pytest.mark.one_transport
@pytest.mark.loopback_only      # (the batches leave files in tmp_path)
def test_joblib_no_batch_starts_after_one_failed(host, ssh_options, tmp_path):
    """The docs: batches not yet started when a task raises are dropped. The slot of the failed batch
    went to the next waiting batch (in the callback that reported the failure), which started on
    the host before the caller's abort came."""
    d = str(tmp_path)
    os.chmod(d, 0o777)
    with joblib.parallel_config(backend="remoteproc", hosts=[host], processes_per_host=2, **ssh_options):
        joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x) for x in range(4))      # the workers are up
        with pytest.raises(KeyError, match="this batch fails"):
            joblib.Parallel(n_jobs=2, batch_size=1)(
                joblib.delayed(mark_and_sleep)(d, x, 0.5 if x == -1 else 3) for x in (-1, 1, 2, 3, 4, 5))
    assert sorted(int(name.split("-", 1)[1]) for name in os.listdir(d)) == [-1, 1]
