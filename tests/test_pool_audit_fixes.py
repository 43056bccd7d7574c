"""Pool fixes from an audit against multiprocessing.Pool, end to end against the loopback sshd.

Behaviours covered here:

* a task's exception whose pickle refers to a function of ``__main__`` (an exception class whose
  ``__reduce__`` returns a helper of the script; ``ValueError(obj)`` with ``obj`` holding one)
  comes back as itself, as multiprocessing's does (it is pickled by value, as results are);
* a task's exception whose rebuilding here raises ``SystemExit`` or ``KeyboardInterrupt`` fails
  that task only (a ``RemoteProcessError`` naming why), and the pool goes on;
* ``imap``/``imap_unordered`` over an input with an element that cannot be pickled: that
  position fails with the ``PicklingError`` that ``map`` raises for it, and the iteration goes on
  (with ``chunksize`` > 1, the other elements of its chunk too);
* ``imap``'s input is read no further ahead of the consumer than a few chunks per worker: a slow
  consumer bounds what is read and what results wait; ``close()``/``join()`` still run the whole
  input when nobody reads, and ``terminate()`` stops the reading; an iterator its consumer drops
  unfinished stops the reading too, and no longer keeps its pool alive.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
import weakref

import cloudpickle
import pytest

import remoteproc
from remoteproc import Executor, PicklingError, Pool, RemoteProcessError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(180), pytest.mark.one_transport, pytest.mark.loopback_only]

#: pytest sets it in the test's process only: a remote child's environment is its SSH login's,
#: whether this module reaches it by value or is imported there (a pid, by value, missed that case)
HERE = "PYTEST_CURRENT_TEST"
#: where the remoteproc under test is, for the script's own import of it
SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(remoteproc.__file__)))


# -- remote targets ------------------------------------------------------------------------------

def identity(x):
    return x


def _rebuild_refusing(kind, message):
    """Rebuilds the exception on the host; in the test's process raises ``kind`` instead."""
    if HERE in os.environ:
        raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}[kind]("refused here")
    return RefusedHere(kind, message)


class RefusedHere(Exception):
    """An exception that pickles anywhere, and whose unpickling in the test's process raises ``args[0]``."""

    def __reduce__(self):
        return (_rebuild_refusing, self.args)


def raise_refused_here(kind):
    raise RefusedHere(kind, "from the task")


def _never_rebuilt(message):
    raise SystemExit(message)


class NeverRebuilt(Exception):
    """An exception whose unpickling raises SystemExit everywhere, the worker's own check too."""

    def __reduce__(self):
        return (_never_rebuilt, self.args)


def raise_never_rebuilt(x):
    raise NeverRebuilt("cannot come back")


def worker_pid(_x=None):
    return os.getpid()


# -- 1. an exception whose pickle refers to a function of __main__ ---------------------------------

SCRIPT = '''
import json
import sys

import remoteproc


def rebuild(a, b):
    return Custom(a, b)


class Custom(Exception):
    def __init__(self, a, b):
        super().__init__(a)
        self.b = b

    def __reduce__(self):
        return (rebuild, (self.args[0], self.b))


def helper():
    return "helped"


class Holder:
    def __init__(self):
        self.f = helper


def raise_custom():
    raise Custom("a", "b")


def raise_holder():
    raise ValueError(Holder())


def raise_custom_for(_x):
    raise Custom("a", "b")


def outcome(call):
    try:
        call()
    except Custom as exc:
        return ["Custom", type(exc) is Custom, exc.args[0], exc.b]
    except ValueError as exc:
        held = exc.args[0]
        return ["ValueError", type(held).__name__, type(held) is Holder and held.f()]
    except BaseException as exc:
        return ["other", type(exc).__name__, str(exc)]
    return ["returned"]


if __name__ == "__main__":
    host, options = json.loads(sys.argv[1])
    out = {}
    with remoteproc.Pool([host], processes_per_host=1, **options) as pool:
        out["pool_reduce"] = outcome(lambda: pool.apply(raise_custom))
        out["pool_holder"] = outcome(lambda: pool.apply(raise_holder))
        out["map_reduce"] = outcome(lambda: pool.map(raise_custom_for, [1, 2]))
    with remoteproc.Executor([host], processes_per_host=1, **options) as ex:
        out["executor_reduce"] = outcome(lambda: ex.submit(raise_custom).result(60))
        out["executor_holder"] = outcome(lambda: ex.submit(raise_holder).result(60))
    print(json.dumps(out))
'''


def test_an_exception_whose_pickle_refers_to_a_function_of_main_comes_back_as_itself(scripts, host, ssh_options):
    program = scripts("audit_exc_main.py", SCRIPT)
    proc = subprocess.run([sys.executable, program, json.dumps([host, ssh_options])], capture_output=True,
                          text=True, timeout=150, cwd=os.path.dirname(program), env=dict(os.environ, PYTHONPATH=SOURCE))
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    custom = ["Custom", True, "a", "b"]
    holder = ["ValueError", "Holder", "helped"]
    assert out == {"pool_reduce": custom, "pool_holder": holder, "map_reduce": custom,
                   "executor_reduce": custom, "executor_holder": holder}, proc.stderr[-4000:]


# -- 2. an exception whose rebuilding here raises SystemExit or KeyboardInterrupt ---------------------

@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_an_exception_whose_unpickling_raises_a_base_exception_fails_that_task_only(host, ssh_options, kind):
    with Pool([host], processes_per_host=1, **ssh_options) as pool:
        result = pool.apply_async(raise_refused_here, (kind,))
        with pytest.raises(RemoteProcessError) as info:
            result.get(timeout=60)
        text = str(info.value)
        assert "RefusedHere" in text and "rebuilding it here raised %s: refused here" % kind in text, text
        assert "from the task" in str(info.value.__cause__)     # the remote traceback
        # the pool goes on: its manager thread lives
        assert pool.map(identity, range(5), chunksize=2) == list(range(5))
        assert pool.apply_async(identity, (7,)).get(timeout=60) == 7


def test_a_worker_whose_exception_cannot_be_rebuilt_even_there_goes_on(host, ssh_options):
    """Found by a CI run: the worker checks that a task's exception survives the trip by rebuilding
    it; a rebuilding that raised SystemExit ended the worker (WorkerDiedError) instead of the task's
    error going back as text."""
    with Pool([host], processes_per_host=1, **ssh_options) as pool:
        pid = pool.apply(worker_pid)
        with pytest.raises(RemoteProcessError, match="NeverRebuilt: cannot come back.*could not be sent back"):
            pool.apply(raise_never_rebuilt, (1,))
        assert pool.apply(worker_pid) == pid, "the worker died of its check"


def test_an_executor_future_whose_exception_cannot_be_rebuilt_here_fails_alone(host, ssh_options):
    with Executor([host], processes_per_host=1, **ssh_options) as ex:
        future = ex.submit(raise_refused_here, "SystemExit")
        with pytest.raises(RemoteProcessError, match="rebuilding it here raised SystemExit"):
            future.result(60)
        assert ex.submit(identity, 3).result(60) == 3


# -- 4. imap over an input element that cannot be pickled --------------------------------------------

def _outcomes(iterator):
    out = []
    while True:
        try:
            out.append(iterator.next(timeout=60))
        except StopIteration:
            return out
        except PicklingError as exc:
            assert "cannot send the arguments" in str(exc) and "lock" in str(exc), exc
            out.append("PicklingError")


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_fails_only_the_position_of_an_element_that_cannot_be_pickled(host, ssh_options, chunksize):
    def items():
        yield from (1, 2, 3)
        yield threading.Lock()
        yield from (5, 6, 7)
        yield threading.Lock()
        yield 9

    expected = [1, 2, 3, "PicklingError", 5, 6, 7, "PicklingError", 9]
    with Pool([host], processes_per_host=2, **ssh_options) as pool:
        # what map raises for such an input, and what each position of imap's then gives
        with pytest.raises(PicklingError):
            pool.map(identity, list(items()), chunksize=chunksize)
        assert _outcomes(pool.imap(identity, items(), chunksize=chunksize)) == expected
        unordered = _outcomes(pool.imap_unordered(identity, items(), chunksize=chunksize))
        assert sorted(unordered, key=str) == sorted(expected, key=str)
        assert pool.apply(identity, (10,)) == 10


def test_imap_still_ends_where_the_input_raises(host, ssh_options):
    def items():
        yield threading.Lock()
        yield 2
        raise OSError("input broke")

    with Pool([host], processes_per_host=1, **ssh_options) as pool:
        it = pool.imap(identity, items())
        with pytest.raises(PicklingError):
            next(it)
        assert next(it) == 2
        with pytest.raises(OSError, match="input broke"):
            next(it)
        with pytest.raises(StopIteration):
            next(it)


# -- 5. imap's read-ahead is bounded by its consumer -----------------------------------------------------

class Counted:
    """An input that counts what was read of it."""

    def __init__(self, n):
        self.n = n
        self.read = 0

    def __iter__(self):
        for i in range(self.n):
            self.read += 1
            yield i


#: elements read ahead of the consumer at most, with 2 workers and chunksize 10 (pool.AHEAD chunks
#: per chunk in flight, and 8 chunks in flight), with room for one chunk being read
BOUND = 4 * 8 * 10 + 10


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_a_slow_consumer_bounds_what_imap_reads_and_close_join_still_run_the_rest(host, ssh_options, method):
    data = Counted(20000)
    with Pool([host], processes_per_host=2, **ssh_options) as pool:
        it = getattr(pool, method)(identity, data, chunksize=10)
        got = [next(it) for _ in range(5)]
        time.sleep(2.0)         # (unbounded, the input is read at thousands of elements a second)
        assert data.read <= 5 + BOUND, data.read
        got.append(next(it))
        time.sleep(0.5)
        assert data.read <= 6 + BOUND, data.read
        # nobody reads for a while: close() and join() still run the whole input, as multiprocessing's
        pool.close()
        joiner = threading.Thread(target=pool.join, daemon=True)
        joiner.start()
        joiner.join(90)
        assert not joiner.is_alive(), "join() did not return: %d read" % data.read
        assert data.read == 20000
        got.extend(it)
    if method == "imap":
        assert got == list(range(20000))
    else:
        assert sorted(got) == list(range(20000))


def test_a_consumer_that_stops_reading_leaves_imap_parked_and_terminate_ends_it(host, ssh_options):
    data = Counted(10 ** 7)
    feeders = {t for t in threading.enumerate() if t.name == "remoteproc-pool-feeder"}
    with Pool([host], processes_per_host=2, **ssh_options) as pool:
        it = pool.imap(identity, data, chunksize=10)
        for i, value in enumerate(it):
            assert value == i
            if i == 10:
                break
        time.sleep(2.0)
        assert data.read <= 11 + BOUND, data.read
    read = data.read
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not {t for t in threading.enumerate() if t.name == "remoteproc-pool-feeder"} - feeders:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the feeder thread did not end after terminate()")
    assert data.read <= read + 10


@pytest.mark.filterwarnings("ignore:unclosed running multiprocessing pool:ResourceWarning")
def test_an_imap_iterator_dropped_unfinished_stops_its_input_and_frees_its_pool(host, ssh_options):
    data = Counted(10 ** 7)
    feeders = {t for t in threading.enumerate() if t.name == "remoteproc-pool-feeder"}
    pool = Pool([host], processes_per_host=2, **ssh_options)
    freed = weakref.ref(pool)
    try:
        it = pool.imap(identity, data, chunksize=10)
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        time.sleep(1.0)
        del it, pool        # (the ResourceWarning of a running pool that is collected, as multiprocessing's)
        deadline = time.monotonic() + 30
        while freed() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.1)
        assert freed() is None, "the pool was not collected: %d elements read" % data.read
        while time.monotonic() < deadline:
            if not {t for t in threading.enumerate() if t.name == "remoteproc-pool-feeder"} - feeders:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the feeder thread did not end")
        assert data.read <= 3 + BOUND, data.read
    finally:
        left = freed()
        if left is not None:
            left.terminate()
