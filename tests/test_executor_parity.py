"""remoteproc.Executor reports failures as concurrent.futures.ProcessPoolExecutor does.

Each case runs against a local ProcessPoolExecutor first, so the expected exception type is
the one CPython gives; remoteproc differs only where documented (a dead worker fails its own
futures, the executor goes on).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool

import cloudpickle
import pytest

import remoteproc
from remoteproc import Executor

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


def die():
    os._exit(3)


def exit_task():
    sys.exit(5)


def pid():
    return os.getpid()


def boom():
    raise RuntimeError(123)  # the marker line


class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("Error in pickle")


class ExitAtPickle:
    def __reduce__(self):
        sys.exit(7)


def _raise_unpickling():
    raise pickle.UnpicklingError("cannot be unpickled here")


class ErrorAtUnpickle:
    def __reduce__(self):
        return _raise_unpickling, ()


def _exit_unpickling():
    sys.exit(9)


class ExitAtUnpickle:
    def __reduce__(self):
        return _exit_unpickling, ()


def make(cls):
    return cls()


def identity(x):
    return x


CASES = [
    ("worker dies", die, (), BrokenProcessPool),
    ("task raises SystemExit", exit_task, (), SystemExit),
    ("argument cannot be pickled", identity, (ErrorAtPickle(),), pickle.PicklingError),
    ("result cannot be pickled", make, (ErrorAtPickle,), pickle.PicklingError),
    ("result pickling exits", make, (ExitAtPickle,), SystemExit),
    ("argument cannot be unpickled on the worker", identity, (ErrorAtUnpickle(),), BrokenProcessPool),
    ("result cannot be unpickled here", make, (ErrorAtUnpickle,), BrokenProcessPool),
    ("result unpickling exits here", make, (ExitAtUnpickle,), BrokenProcessPool),
]


@pytest.mark.parametrize("name,fn,args,expected", CASES, ids=[c[0] for c in CASES])
def test_failures_have_process_pool_executors_types(host, ssh_options, name, fn, args, expected):
    with futures.ProcessPoolExecutor(1) as local:
        with pytest.raises(expected):
            local.submit(fn, *args).result(timeout=60)
    with Executor(host, processes_per_host=1, **ssh_options) as ex:
        before = ex.submit(pid).result(timeout=60)
        with pytest.raises(expected) as info:
            ex.submit(fn, *args).result(timeout=60)
        if expected is BrokenProcessPool and name == "worker dies":
            assert isinstance(info.value, remoteproc.RemoteProcessError)
            assert str(before) in str(info.value) and info.value.host == host   # names the worker
        after = ex.submit(pid).result(timeout=60)       # the executor goes on
        if expected is SystemExit:
            assert after == before                      # and that worker lives on


def test_remote_traceback_attached_as_process_pool_executor_does(host, ssh_options):
    with futures.ProcessPoolExecutor(1) as local:
        local_exc = local.submit(boom).exception(timeout=60)
    with Executor(host, processes_per_host=1, **ssh_options) as ex:
        exc = ex.submit(boom).exception(timeout=60)
    assert type(exc) is type(local_exc) is RuntimeError and exc.args == local_exc.args == (123,)
    assert isinstance(exc.__cause__, type(local_exc.__cause__))     # futures.process._RemoteTraceback
    assert "raise RuntimeError(123)  # the marker line" in exc.__cause__.tb
    assert host in exc.__cause__.tb


class TwoArgumentError(Exception):
    def __init__(self, a, b):       # (pickles as TwoArgumentError(a_and_b_text): __init__ then fails)
        super().__init__("%s and %s" % (a, b))


def raise_two_argument_error():
    raise TwoArgumentError("first", "second")


def test_an_exception_that_cannot_be_unpickled_fails_its_future_only(host, ssh_options):
    """ProcessPoolExecutor breaks for good (every future BrokenProcessPool); here that future gets a
    RemoteProcessError with the exception's text and traceback, and the executor goes on."""
    with Executor(host, processes_per_host=1, **ssh_options) as ex:
        exc = ex.submit(raise_two_argument_error).exception(timeout=60)
        assert type(exc) is remoteproc.RemoteProcessError, repr(exc)
        assert "TwoArgumentError: first and second" in str(exc)
        assert host in str(exc) and "could not be sent back as an object" in str(exc)
        assert 'raise TwoArgumentError("first", "second")' in exc.__cause__.tb     # the remote traceback
        assert ex.submit(pid).result(timeout=60) > 0


def test_pickling_error_is_the_standard_one():
    assert issubclass(remoteproc.PicklingError, pickle.PicklingError)
    assert issubclass(remoteproc.PicklingError, TypeError)


def nap():
    import time

    time.sleep(0.1)


def test_shutdown_cancel_futures_runs_what_workers_can_start_and_cancels_the_rest(host, ssh_options):
    for make in (lambda: futures.ProcessPoolExecutor(2),
                 lambda: Executor(host, processes_per_host=2, **ssh_options)):
        ex = make()
        fs = [ex.submit(nap) for _ in range(50)]
        ex.shutdown(cancel_futures=True)
        cancelled = [f for f in fs if f.cancelled()]
        others = [f for f in fs if not f.cancelled()]
        assert len(cancelled) > 20 and others
        assert all(f.done() and f.exception() is None for f in others)


EXIT_SCRIPT = r'''
import os, sys, time
from concurrent.futures import ProcessPoolExecutor

def record(path, i):
    time.sleep(0.3)
    with open(path, "a") as f:
        f.write("%d\n" % i)

if __name__ == "__main__":
    path, how, host = sys.argv[1], sys.argv[2], sys.argv[3]
    if host == "local":
        ex = ProcessPoolExecutor(1)
    else:
        import remoteproc
        ex = remoteproc.Executor(host, processes_per_host=1, **eval(sys.argv[4]))
    fs = [ex.submit(record, path, i) for i in range(3)]
    if how == "shutdown-nowait":
        ex.shutdown(wait=False)
    elif how == "dropped":
        del ex, fs
    print("main ends", flush=True)
'''


@pytest.mark.parametrize("how", ["shutdown-nowait", "no-shutdown", "dropped"])
def test_the_program_waits_at_exit_for_pending_calls_as_with_process_pool_executor(sshd, tmp_path, how):
    """concurrent.futures: "Regardless of the value of wait, the entire Python program will not
    exit until all pending futures are done executing." A program that submits calls and ends
    (after shutdown(wait=False), without shutdown, or having dropped the executor) runs them all
    first, with ProcessPoolExecutor and with remoteproc's Executor."""
    script = tmp_path / "prog.py"
    script.write_text(EXIT_SCRIPT)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)
    for run in (["local"], [sshd.spec(), repr(sshd.options())]):
        out_file = tmp_path / ("out-%s" % run[0].replace("@", "-").replace(":", "-"))
        out = subprocess.run([sys.executable, str(script), str(out_file), how] + run, capture_output=True,
                             text=True, timeout=60, env=env)
        assert out.returncode == 0 and out.stdout == "main ends\n", out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        assert out_file.exists() and sorted(out_file.read_text().split()) == ["0", "1", "2"], (run[0], out.stderr)


def test_a_future_cancelled_as_its_result_is_set_stops_nothing():
    """Found by an audit: cancelled between the job's done() check and its set_exception (the pool failing
    every pending call as the user cancels one), the InvalidStateError ended the loop failing the rest."""
    from remoteproc.executor import _FutureJob

    class CancelledJustAfterTheCheck(futures.Future):
        def done(self):
            was = super().done()
            self.cancel()
            return was

    job = _FutureJob(CancelledJustAfterTheCheck())
    job._set(0, False, [(False, RuntimeError("the pool was terminated"))])
    assert job.future.cancelled()
