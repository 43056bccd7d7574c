"""dask graphs on remoteproc's Executor: dask.compute(x, scheduler=remoteproc.Executor(hosts)).

dask's tasks are dask objects: the loopback account has dask, as this process does; the plain account
has none and gets it through package forwarding.
"""

from __future__ import annotations

import os

import dask  # the test extra installs dask[bag]
import dask.bag as db
import pytest
from dask import delayed
from jobtasks import fails_on_3

import remoteproc


@pytest.fixture
def executor(host, ssh_options):
    with remoteproc.Executor([host], processes_per_host=3, **ssh_options) as ex:
        yield ex


def test_dask_sees_every_worker(executor):
    assert executor._max_workers == 3


def test_a_bag_runs_on_the_workers(executor):
    bag = db.from_sequence(range(1000), npartitions=12)
    total = bag.map(lambda x: x + 1).filter(lambda x: x % 2 == 0).sum()
    assert dask.compute(total, scheduler=executor) == (sum(x + 1 for x in range(1000) if (x + 1) % 2 == 0),)
    pids = set(bag.map(lambda _: os.getpid()).compute(scheduler=executor))
    assert os.getpid() not in pids
    assert pids <= {pid for _, pid in executor.workers()}


def test_a_delayed_graph(executor):
    @delayed
    def inc(x):
        return x + 1

    @delayed
    def add(x, y):
        return x + y

    layer = [inc(i) for i in range(10)]
    while len(layer) > 1:           # a reduction tree: each level depends on the one before
        layer = [add(layer[i], layer[i + 1]) if i + 1 < len(layer) else layer[i] for i in range(0, len(layer), 2)]
    assert layer[0].compute(scheduler=executor) == sum(range(1, 11))
    with dask.config.set(scheduler=executor):       # or for every compute in a block
        assert dask.compute(inc(1), add(2, 3)) == (2, 5)


def test_an_error_inside_a_task_arrives_with_the_remote_traceback(executor):
    graph = [delayed(fails_on_3)(i) for i in range(6)]
    with pytest.raises(KeyError, match="three is right out") as info:
        dask.compute(*graph, scheduler=executor)
    cause = str(info.value.__cause__)
    assert "pool worker pid" in cause and "fails_on_3" in cause
    assert dask.compute(delayed(fails_on_3)(4), scheduler=executor) == (4,)     # the executor goes on


@pytest.mark.timeout(180)
def test_a_host_without_dask_gets_it_forwarded(plain_user_host, plain_user_options):
    with remoteproc.Executor([plain_user_host], processes_per_host=2, **plain_user_options) as ex:
        bag = db.from_sequence(range(100), npartitions=4)
        assert bag.map(lambda x: x * 2).sum().compute(scheduler=ex) == 9900
