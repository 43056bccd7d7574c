"""Reducers a program registers with ``multiprocessing.reduction.ForkingPickler.register`` (as torch
does for its tensors) are used for what goes to a remote child, as a local child's pickler uses
them: process arguments, queue items, Pool tasks. Found by a shipping audit: they were ignored,
and an object that pickles only that way could not be sent at all."""

from __future__ import annotations

import sys
from multiprocessing.reduction import ForkingPickler

import cloudpickle
import pytest

import remoteproc
from remoteproc import Pool, RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


class Weird:
    """Refuses plain pickling; the registered reducer sends it."""

    def __init__(self, v):
        self.v = v

    def __reduce__(self):
        raise TypeError("Weird must go through ForkingPickler's reducer")


def rebuild_weird(v, via):
    w = Weird.__new__(Weird)
    w.v, w.via = v, via
    return w


def reduce_weird(w):
    return rebuild_weird, (w.v, "the registered reducer")


ForkingPickler.register(Weird, reduce_weird)


def describe(w):
    return (w.v, w.via)


def report(w, q, out):
    out.put(describe(w))
    out.put(describe(q.get(timeout=30)))


def test_a_registered_reducer_sends_arguments_items_and_tasks(host, ssh_options):
    q, out = remoteproc.Queue(), remoteproc.Queue()
    p = RemoteProcess(host, target=report, args=(Weird(1), q, out), **ssh_options)
    p.start()
    q.put(Weird(2))
    assert out.get(timeout=60) == (1, "the registered reducer")
    assert out.get(timeout=60) == (2, "the registered reducer")
    p.join(30)
    assert p.exitcode == 0
    with Pool(host, processes_per_host=1, **ssh_options) as pool:
        assert pool.apply(describe, (Weird(3),)) == (3, "the registered reducer")


def test_multiprocessing_s_own_reducers_are_not_taken_for_the_program_s():
    """Its reducers for methods, partials and fds are for local children (DupFd): never used here."""
    import functools

    from remoteproc.agent.proxies import registered_reduce

    assert registered_reduce(functools.partial(print, 1)) is None
    assert registered_reduce(Weird(4))[1] == (4, "the registered reducer")
