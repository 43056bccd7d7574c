"""Queue, Event and Pool across hosts of their own (network namespaces with an sshd each),
including a host whose network link is cut in the middle of a map."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import cloudpickle
import pytest
from proctable import eventually

import remoteproc
from remoteproc import Event, Pool, Queue, RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.loopback_only]


@pytest.fixture
def ns(netns):
    """(h3 spec, h4 spec, options) for the plain account on two namespace hosts."""
    options = netns.options(keepalive_interval=1, keepalive_count=2)
    return netns.hosts["h3"], netns.hosts["h4"], options


def where(x):
    import time

    time.sleep(0.01)
    return x, socket.gethostname(), os.environ.get("SSH_CONNECTION", "").split()[2:3]


def produce(q, n, tag):
    for i in range(n):
        q.put((tag, i))


def consume(q, out, n):
    got = [q.get(timeout=30) for _ in range(n)]
    out.put(sorted(got))


def wait_then_report(ev, out, tag):
    out.put((tag, ev.wait(30)))


def test_queue_and_event_between_two_hosts(ns):
    h3, h4, options = ns
    q, out, ev = Queue(maxsize=4), Queue(), Event()
    producers = [RemoteProcess(h.spec("rpuser"), target=produce, args=(q, 50, h.name), **options)
                 for h in (h3, h4)]
    consumer = RemoteProcess(h4.spec("rpuser"), target=consume, args=(q, out, 100), **options)
    waiters = [RemoteProcess(h.spec("rpuser"), target=wait_then_report, args=(ev, out, h.name), **options)
               for h in (h3, h4)]
    for p in producers + [consumer] + waiters:
        p.start()
    got = out.get(timeout=60)
    assert got == sorted([("h3", i) for i in range(50)] + [("h4", i) for i in range(50)])
    ev.set()
    assert sorted(out.get(timeout=30) for _ in waiters) == [("h3", True), ("h4", True)]
    for p in producers + [consumer] + waiters:
        p.join(30)
        assert p.exitcode == 0


def test_pool_map_over_two_hosts_and_a_link_cut(ns):
    h3, h4, options = ns
    with Pool([h3.spec("rpuser"), h4.spec("rpuser")], processes_per_host=2, **options) as pool:
        results = pool.map(where, range(1000))
        assert [r[0] for r in results] == list(range(1000))
        assert {tuple(r[2]) for r in results} == {(h3.address,), (h4.address,)}   # both hosts worked
        it = pool.imap(where, range(400))
        outcome = []
        try:
            for i in range(400):
                try:
                    outcome.append(("ok", it.next(timeout=60)))
                except remoteproc.ConnectionLostError as exc:
                    outcome.append(("lost", exc))
                if i == 40:
                    h4.set_link(False)                    # h4 drops off the network
        finally:
            h4.set_link(True)
        lost = [exc for kind, exc in outcome if kind == "lost"]
        ok = [value for kind, value in outcome if kind == "ok"]
        assert lost, "no task failed although a host was cut off"
        assert all(h4.address in str(exc) for exc in lost)
        assert len(ok) + len(lost) == 400
        assert all(value[0] == i for i, (kind, value) in enumerate(outcome) if kind == "ok")
        assert {h for h, _ in pool.workers()} == {h3.spec("rpuser")}
        assert pool.map(where, range(10))[9][0] == 9


def _port_of(x):
    import time

    time.sleep(0.3)
    return x, int(os.environ["SSH_CONNECTION"].split()[3])


def test_one_name_with_two_ports_is_two_hosts_and_losing_one_leaves_the_other(sshd, tmp_path):
    """Found by an audit: two sshds behind one spec (``root@127.0.0.1`` with ``port=A`` and
    ``port=B``: containers, or two tunnels) were one host to the pool: when B's sshd died, A's
    workers were left out too, and with ``retries`` a map waited for B for ever.  The second
    entry is ``root@127.0.0.1:B`` now, a host of its own."""
    from proctable import descendants

    from remoteproc.testing import LoopbackSSHServer, current_user

    other = LoopbackSSHServer(users=[current_user()], workdir=str(tmp_path))
    other.start()
    try:
        spec = "%s@127.0.0.1" % current_user()
        first, second = sshd.options(current_user()), other.options(current_user())
        hosts = [(spec, first, 2), (spec, second, 2)]
        with remoteproc.Executor(hosts, retries=1, keepalive_interval=1, keepalive_count=2) as executor:
            status = executor.hosts_status()
            assert set(status) == {spec, "%s:%d" % (spec, other.port)}, status
            assert {port for _, port in executor.map(_port_of, range(8))} == {sshd.port, other.port}
            results = executor.map(_port_of, range(24))
            time.sleep(1.0)
            for pid in descendants(other.pid) + [other.pid]:    # (B's sshd and its sessions, for good)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            got = list(results)         # (bounded by the test's timeout: it waited for B for ever)
            assert [x for x, _ in got] == list(range(24))
            assert eventually(lambda: not executor.hosts_status()["%s:%d" % (spec, other.port)]["up"], 30)
            assert executor.hosts_status()[spec]["up"] and executor.hosts_status()[spec]["workers"] == 2
            assert {port for _, port in executor.map(_port_of, range(4))} == {sshd.port}
    finally:
        other.stop()
