"""A bound method of remoteproc's own objects as a target or an argument: ``target=q.put``,
``target=ev.set``, ``initializer=q.put``, as multiprocessing programs write them.

multiprocessing reduces a method as ``getattr(obj, name)``; cloudpickle as ``(function, obj)``,
which in a remote child called the owner's function (``remoteproc.queues.Queue.put``) on the
proxy that ``obj`` became there (``AttributeError: 'Queue' object has no attribute '_proxy'``).
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

import remoteproc
from remoteproc import RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


def call_each(calls):
    for method, args in calls:
        method(*args)


def test_a_bound_method_of_each_object_as_the_target(host, ssh_options):
    q, ev, lock, sem = remoteproc.Queue(), remoteproc.Event(), remoteproc.Lock(), remoteproc.Semaphore(0)
    jq, sq, arr = remoteproc.JoinableQueue(), remoteproc.SimpleQueue(), remoteproc.Array("i", 3)
    targets = [(q.put, (5,)), (ev.set, ()), (lock.acquire, ()), (sem.release, ()), (jq.put, (1,)),
               (sq.put, (2,)), (arr.__setitem__, (1, 9))]
    for target, args in targets:
        p = RemoteProcess(host, target=target, args=args, **ssh_options)
        p.start()
        p.join(60)
        assert p.exitcode == 0, target
    assert q.get(timeout=10) == 5
    assert ev.is_set()
    assert lock.acquire(timeout=10)         # the child held it; it was released when the child ended
    assert sem.acquire(timeout=10)
    assert jq.get(timeout=10) == 1
    assert sq.get() == 2
    assert arr[:] == [0, 9, 0]


def test_bound_methods_as_arguments_and_barrier_wait(host, ssh_options):
    q, barrier = remoteproc.Queue(), remoteproc.Barrier(2)
    p = RemoteProcess(host, target=call_each, args=([(barrier.wait, (30,)), (q.put, ("after",))],),
                      **ssh_options)
    p.start()
    barrier.wait(30)
    assert q.get(timeout=30) == "after"
    p.join(60)
    assert p.exitcode == 0


def test_a_bound_method_as_a_pool_initializer(host, ssh_options):
    q = remoteproc.Queue()
    with remoteproc.Pool(host, processes_per_host=1, initializer=q.put, initargs=("up",), **ssh_options) as pool:
        assert pool.apply(len, ("abc",)) == 3
        assert q.get(timeout=30) == "up"
