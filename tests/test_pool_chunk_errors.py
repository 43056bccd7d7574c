"""Errors inside a chunk of a Pool's or an Executor's work, as a user's program meets them: one
element of a chunk raises, or returns a result that cannot be pickled.  Each element's outcome
arrives at its own position (what multiprocessing gives with ``chunksize=1``); a ``map``
fails with the first error, as multiprocessing's; a ``chunksize`` below 1 is refused as by
multiprocessing and concurrent.futures.  An exception that cannot come back as an object (its
class cannot be rebuilt from its arguments, or exists only on the host) arrives as a
``RemoteProcessError`` naming it, with the remote traceback as its cause.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading

import cloudpickle
import pytest

from remoteproc import Executor, Pool, RemoteProcessError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.one_transport]


def tenfold_but_two_and_seven(x):
    if x in (2, 7):
        raise ValueError("bad element %d" % x)
    return x * 10


def a_lock_for_three(x):
    return threading.Lock() if x == 3 else x


class NeedsTwo(Exception):
    """An exception that pickles but cannot be rebuilt: unpickling calls ``NeedsTwo(message)``."""

    def __init__(self, what, code):
        super().__init__("%s (code %d)" % (what, code))


def raise_needs_two(_x):
    raise NeedsTwo("disk full", 28)


def raise_an_exception_only_the_host_has(_x):
    """Raise an exception whose class is in a module that only the host can import."""
    directory = tempfile.mkdtemp()
    try:
        with open(os.path.join(directory, "only_on_the_host.py"), "w") as f:
            f.write("class QuotaExceeded(Exception):\n    pass\n")
        sys.path.insert(0, directory)
        module = importlib.import_module("only_on_the_host")
    finally:
        sys.path.remove(directory)
        shutil.rmtree(directory)
    raise module.QuotaExceeded("over quota")


def _outcomes(iterator):
    """Every element's result, or its error's type and text, until the iterator ends."""
    out = []
    for _ in range(100):
        try:
            out.append(next(iterator))
        except StopIteration:
            return out
        except Exception as exc:    # noqa: BLE001 - what the user's loop sees
            out.append((type(exc).__name__, str(exc)[:40]))
    raise AssertionError("the iterator did not end")


@pytest.fixture(scope="module")
def local_outcomes():
    """What multiprocessing gives element by element (chunksize=1)."""
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return {
            "raises": _outcomes(pool.imap(tenfold_but_two_and_seven, range(10), chunksize=1)),
            "unpicklable": _outcomes(pool.imap(a_lock_for_three, range(6), chunksize=1)),
        }


def test_imap_with_chunks_gives_each_element_its_own_result_or_error(host, ssh_options, local_outcomes):
    """A chunk of three with a failing element: the elements beside it still arrive, each error
    at its position, and the iteration goes on to the end."""
    with Pool([host, host], **ssh_options) as pool:
        got = _outcomes(pool.imap(tenfold_but_two_and_seven, range(10), chunksize=3))
        unordered = _outcomes(pool.imap_unordered(tenfold_but_two_and_seven, range(10), chunksize=3))
        unpicklable = _outcomes(pool.imap(a_lock_for_three, range(6), chunksize=4))
        with pytest.raises(ValueError, match="bad element 2"):
            pool.map(tenfold_but_two_and_seven, range(6), chunksize=4)     # (one failing element: 2)
        with pytest.raises(ValueError, match="Chunksize must be 1"):
            pool.map(tenfold_but_two_and_seven, range(3), chunksize=0)
    assert got == local_outcomes["raises"]
    assert sorted(map(str, unordered)) == sorted(map(str, local_outcomes["raises"]))
    assert unpicklable == local_outcomes["unpicklable"]
    assert unpicklable[3][0] == "MaybeEncodingError"


def test_executor_map_with_chunks_yields_up_to_the_first_error(host, ssh_options):
    """As ProcessPoolExecutor.map: the results of the chunks before the failing one, then its
    exception (with the remote traceback as its cause); a chunksize below 1 is a ValueError."""
    with concurrent.futures.ProcessPoolExecutor(2) as local:
        expected = _outcomes(local.map(tenfold_but_two_and_seven, range(10), chunksize=3))
    with Executor([host], **ssh_options) as ex:
        got = _outcomes(ex.map(tenfold_but_two_and_seven, range(10), chunksize=3))
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            ex.map(tenfold_but_two_and_seven, range(3), chunksize=0)
        future = ex.submit(tenfold_but_two_and_seven, 7)
        exc = future.exception(60)
    assert got == expected, (got, expected)
    assert isinstance(exc, ValueError) and host.split("@")[-1].split(":")[0] in str(exc.__cause__)


@pytest.mark.parametrize("func, summary", [(raise_needs_two, "NeedsTwo: disk full (code 28)"),
                                           (raise_an_exception_only_the_host_has, "QuotaExceeded: over quota")])
def test_an_exception_that_cannot_come_back_as_an_object_arrives_as_its_text(host, ssh_options, func, summary):
    """Pool and Executor: the task's exception cannot be rebuilt on the worker (NeedsTwo) or here
    (its module is the host's alone): a RemoteProcessError names the task's exception and the host,
    with the remote traceback as its cause; the pool goes on with the next task."""
    hostname = host.split("@")[-1].split(":")[0]
    with Pool([host], processes_per_host=1, **ssh_options) as pool:
        with pytest.raises(RemoteProcessError) as info:
            pool.apply(func, (0,))
        assert pool.apply(tenfold_but_two_and_seven, (3,)) == 30
    with Executor([host], 1, **ssh_options) as ex:
        exc = ex.submit(func, 0).exception(60)
    for err in (info.value, exc):
        assert isinstance(err, RemoteProcessError), repr(err)
        text = str(err)
        assert summary in text and "could not be sent back as an object" in text and hostname in text, text
        assert func.__name__ in str(err.__cause__) and hostname in str(err.__cause__)
