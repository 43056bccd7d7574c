"""``Pool.imap`` over an input that raises part-way, with ``chunksize`` > 1.

multiprocessing's ``imap`` with ``chunksize=1`` yields every element read before the input raised,
then raises its error and stops (with larger chunks its own pool fails with an AttributeError of
its task generator).  remoteproc's dropped the elements of the chunk the error cut short: with
``chunksize=2`` the element read just before the error was lost.
"""

from __future__ import annotations

import multiprocessing
import sys

import cloudpickle
import pytest

from remoteproc import Pool

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.one_transport]     # (the pool's logic: alike on both)


def square(x):
    return x * x


def breaks_at(n, at):
    for i in range(n):
        if i == at:
            raise RuntimeError("the input broke at %d" % i)
        yield i


def outcomes(iterator, most=10):
    out = []
    for _ in range(most):
        try:
            out.append(iterator.next(30))
        except StopIteration:
            out.append("stop")
            break
        except RuntimeError as exc:
            out.append(str(exc))
    return out


def test_imap_keeps_what_was_read_before_the_input_raised(host, ssh_options):
    with multiprocessing.get_context("fork").Pool(2) as local:
        expected = outcomes(local.imap(square, breaks_at(6, 3), chunksize=1))
    assert expected == [0, 1, 4, "the input broke at 3", "stop"]
    with Pool(host, processes_per_host=2, **ssh_options) as pool:
        for chunksize in (1, 2, 3, 5):
            assert outcomes(pool.imap(square, breaks_at(6, 3), chunksize=chunksize)) == expected, chunksize
        unordered = outcomes(pool.imap_unordered(square, breaks_at(6, 3), chunksize=2))
        assert sorted(v for v in unordered if isinstance(v, int)) == [0, 1, 4]     # (the error may come first)
        assert "the input broke at 3" in unordered and unordered[-1] == "stop" and len(unordered) == 5
