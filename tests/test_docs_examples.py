"""The documentation's examples, run as written against the loopback sshd.

Only the host is replaced: each doc names a host such as ``"user@host"``; here it is the
suite's loopback sshd with its options. The examples of README.md, docs/api.md,
docs/queues-and-pool.md, docs/primitives.md, docs/python-versions.md, docs/integrations.md
(its host list; joblib, dask and the pytest fixture have test_joblib.py, test_dask.py and
test_pytest_plugin.py) and docs/ssh.md, kept small so that the file runs in seconds.
"""

from __future__ import annotations

import socket

import pytest

import remoteproc
from remoteproc import Barrier, Event, Lock, Pipe, Pool, Queue, RemoteProcess, Value
from remoteproc.pytest_plugin import RemoteHost

pytestmark = [pytest.mark.timeout(60), pytest.mark.one_transport]


# README.md: the main example
def work(conn, n):
    print("hello from the remote side")
    conn.send(n * 2)
    conn.close()


def test_readme_main_example(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=work, args=(child, 21), **ssh_options)
    p.start()
    child.close()
    assert parent.recv() == 42
    p.join()
    assert p.exitcode == 0


# docs/api.md: script mode, train.py on the remote host and the local side
TRAIN_PY = """\
# train.py, on the remote host
import sys
from remoteproc.agent.script import args, connection
conn = connection()
epochs, config = args()
for epoch in range(epochs):
    conn.send({"epoch": epoch, "lr": config["lr"]})
"""


def test_api_script_mode_example(host, ssh_options, scripts):
    path = scripts("train.py", TRAIN_PY)
    job = remoteproc.run(host, path, 3, {"lr": 0.1}, **ssh_options)
    got = []
    while True:
        try:
            got.append(job.conn.recv())
        except EOFError:
            break
    job.join()
    assert job.exitcode == 0
    assert got == [{"epoch": e, "lr": 0.1} for e in range(3)]


# docs/queues-and-pool.md: the first example (two "hosts": the same sshd twice)
def qwork(q, ev):
    ev.wait(30)
    q.put(socket.gethostname())


def pow2(x):
    return x ** 2


def test_queues_and_pool_example(host, ssh_options):
    hosts = [RemoteHost(host, ssh_options)] * 2
    q, ev = Queue(), Event()
    procs = [RemoteProcess(h, target=qwork, args=(q, ev)) for h in hosts]
    for p in procs:
        p.start()
    ev.set()
    assert [q.get(timeout=30), q.get(timeout=30)] == [socket.gethostname()] * 2
    for p in procs:
        p.join(30)
    with Pool(hosts, processes_per_host=1) as pool:
        assert pool.map(pow2, range(1000)) == [x ** 2 for x in range(1000)]


# docs/primitives.md: Lock, Value and Barrier across two processes
def pwork(lock, counter, barrier):
    for _ in range(1000):
        with lock:
            counter.value += 1
    barrier.wait()


def test_primitives_example(host, ssh_options):
    hosts = [RemoteHost(host, ssh_options)] * 2
    lock, counter, barrier = Lock(), Value("i", 0, lock=False), Barrier(3)
    procs = [RemoteProcess(h, target=pwork, args=(lock, counter, barrier)) for h in hosts]
    for p in procs:
        p.start()
    barrier.wait()
    assert counter.value == 2000
    for p in procs:
        p.join(30)


# docs/integrations.md: a Slurm host list, and the message a malformed one gives
def simulate(x):
    return x * 3


def test_integrations_hostlist_example(sshd):
    from remoteproc import hostlist

    with pytest.raises(hostlist.HostlistError) as info:
        hostlist.expand("node[")
    assert info.value.position == 4
    assert str(info.value).splitlines() == ["'[' is never closed at position 5 of 'node['", "  node[", "      ^"]
    alias = "remoteproc-" + sshd.users[0]          # a Host alias of the loopback server's ssh_config
    env = {"SLURM_JOB_NODELIST": alias, "SLURM_TASKS_PER_NODE": "2"}
    with Pool(hostlist.slurm(env), ssh_config=sshd.ssh_config) as pool:
        assert pool.map(simulate, range(6)) == [0, 3, 6, 9, 12, 15]
        assert len(pool.workers()) == 2


# docs/ssh.md: the BootstrapError quoted for a failing setup= line
def noop():
    pass


def test_ssh_failing_setup_line_message(host, ssh_options):
    with pytest.raises(remoteproc.BootstrapError) as info:
        RemoteProcess(host, target=noop, setup="false", **ssh_options).start()
    assert "setup line 1 'false' failed with exit status 1; its output: (none). Fix the line" in str(info.value)


# docs/api.md: a subclass that overrides run() and keeps the child's end on self
class Accumulator(RemoteProcess):
    def __init__(self, host, conn):
        super().__init__(host)
        self.conn = conn                      # the child's end
        self.total = 0

    def run(self):
        for n in iter(self.conn.recv, None):
            self.total += n
            self.conn.send(self.total)


def test_api_subclass_example(host, ssh_options):
    parent, child = Pipe()
    acc = Accumulator(RemoteHost(host, ssh_options), child)
    acc.start()
    child.close()
    sums = []
    for n in (1, 2, 3):
        parent.send(n)
        sums.append(parent.recv())
    parent.send(None)
    acc.join(30)
    assert sums == [1, 3, 6] and acc.exitcode == 0
    assert acc.total == 0                     # the remote copy is a copy


# docs/primitives.md: a manager's proxy passed to remote processes
def record(results):
    import os
    results[os.getpid()] = os.environ.get("DOCS_EXAMPLE")


def test_primitives_manager_example(host, ssh_options):
    hosts = [RemoteHost(host, ssh_options)] * 2
    with remoteproc.Manager() as manager:
        results = manager.dict()
        procs = [RemoteProcess(h, target=record, args=(results,), env={"DOCS_EXAMPLE": "yes"}) for h in hosts]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0]
        assert sorted(results.keys()) == sorted(p.pid for p in procs)
        assert set(results.values()) == {"yes"}


# docs/queues-and-pool.md: retries and hosts_status(); docs/python-versions.md: setup= lines
def read_env(_):
    import os
    return os.environ.get("OMP_NUM_THREADS")


def test_pool_retries_and_setup_examples(host, ssh_options):
    hosts = [RemoteHost(host, ssh_options)] * 2
    with Pool(hosts, retries=2) as pool:
        assert pool.map(pow2, range(10)) == [x ** 2 for x in range(10)]
        status = pool.hosts_status()
    assert list(status) == [host] and status[host]["up"] and status[host]["down_since"] is None
    assert set(status[host]) == {"up", "workers", "down_since", "error", "attempts", "next_try"}
    with Pool(hosts, processes_per_host=1, setup=["true", "export OMP_NUM_THREADS=4"]) as pool:
        assert pool.map(read_env, range(2)) == ["4", "4"]
