"""Pool and Executor with retries: a host's sshd and its sessions are killed mid-map; every result still
arrives, in order, and the host rejoins once its sshd is back (namespace hosts of their own)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

import cloudpickle
import pytest

from remoteproc import Executor, Pool

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(240), pytest.mark.loopback_only]


@pytest.fixture
def pair(netns):
    """(rig, 'h1', 'h2', options): the plain account on two namespace hosts."""
    options = netns.options(keepalive_interval=1, keepalive_count=2)
    return netns, netns.hosts["h1"], netns.hosts["h2"], options


def where(x):
    time.sleep(0.02)
    return x, socket.gethostname(), os.environ.get("SSH_CONNECTION", "").split()[2]


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _outage(rig, name: str, down_for: float) -> threading.Thread:
    """Kill the host's sshd and sessions now; start it again ``down_for`` seconds later (in a thread)."""
    rig.kill_sshd(name)

    def back():
        time.sleep(down_for)
        rig.restart_sshd(name)

    t = threading.Thread(target=back, daemon=True)
    t.start()
    return t


def _retried(caplog) -> int:
    return sum(1 for r in caplog.records if "run again elsewhere" in r.getMessage())


def test_pool_retries_lost_chunks_and_takes_the_host_back(pair, caplog):
    caplog.set_level(logging.INFO, logger="remoteproc.pool")
    rig, h1, h2, options = pair
    spec1, spec2 = h1.spec("rpuser"), h2.spec("rpuser")
    with Pool([spec1, spec2], processes_per_host=2, retries=2, **options) as pool:
        assert {r[2] for r in pool.map(where, range(200))} == {h1.address, h2.address}
        n = 600
        results = []
        restart = None
        for i, value in enumerate(pool.imap(where, range(n), chunksize=2)):
            results.append(value)
            if i == 60:
                restart = _outage(rig, "h2", down_for=2.0)     # (back before the second try, 3 s on)
        assert [r[0] for r in results] == list(range(n))             # every result, in order, none failed
        assert _retried(caplog) >= 1                                   # and some did run twice
        status = pool.hosts_status()
        assert set(status) == {spec1, spec2}
        assert status[spec1]["up"] and status[spec1]["workers"] == 2
        restart.join(60)
        # h2 comes back: its workers are started again in the background (1 s, 2 s, 4 s ... apart)
        assert _wait_for(lambda: pool.hosts_status()[spec2]["up"] and pool.hosts_status()[spec2]["workers"] == 2,
                         90), pool.hosts_status()
        assert pool.hosts_status()[spec2]["down_since"] is None
        assert {h for h, _ in pool.workers()} == {spec1, spec2}
        assert {r[2] for r in pool.map(where, range(200))} == {h1.address, h2.address}


def test_a_pool_whose_only_host_goes_away_waits_for_it(pair, caplog):
    """Nothing is lost: with no worker left, the tasks wait for the host to come back, then finish."""
    caplog.set_level(logging.INFO, logger="remoteproc.pool")
    rig, h1, _h2, options = pair
    with Pool([h1.spec("rpuser")], processes_per_host=2, retries=1, **options) as pool:
        n = 200
        results = []
        restart = None
        for i, value in enumerate(pool.imap(where, range(n))):
            results.append(value)
            if i == 30:
                restart = _outage(rig, "h1", down_for=2.0)     # (back before the second try, 3 s on)
        assert [r[0] for r in results] == list(range(n))
        assert _retried(caplog) >= 1
        restart.join(60)
        assert pool.hosts_status()[h1.spec("rpuser")]["workers"] == 2
        late = pool.map_async(where, range(10))         # submitted while up: no waiting needed
        assert [r[0] for r in late.get(60)] == list(range(10))


def test_a_host_down_reports_since_when_and_why(pair):
    rig, h1, h2, options = pair
    spec1, spec2 = h1.spec("rpuser"), h2.spec("rpuser")
    with Pool([spec1, spec2], processes_per_host=1, retries=1, **options) as pool:
        t0 = time.time()
        rig.kill_sshd("h2")
        try:
            assert _wait_for(lambda: not pool.hosts_status()[spec2]["up"], 30)
            assert _wait_for(lambda: pool.hosts_status()[spec2]["attempts"] >= 1, 30), pool.hosts_status()
            st = pool.hosts_status()[spec2]
            assert st["workers"] == 0 and t0 - 1 <= st["down_since"] <= time.time()
            assert st["error"] and st["next_try"] > st["down_since"]
            assert pool.map(where, range(20))[19][0] == 19          # the other host goes on
        finally:
            rig.restart_sshd("h2")
        assert _wait_for(lambda: pool.hosts_status()[spec2]["workers"] == 1, 90), pool.hosts_status()


def test_executor_retries_the_futures_of_a_lost_host(pair, caplog):
    caplog.set_level(logging.INFO, logger="remoteproc.pool")
    rig, h1, h2, options = pair
    spec1, spec2 = h1.spec("rpuser"), h2.spec("rpuser")
    with Executor([spec1, spec2], processes_per_host=2, retries=1, **options) as ex:
        futures = [ex.submit(where, i) for i in range(300)]
        assert _wait_for(lambda: sum(f.done() for f in futures) >= 40, 60)
        restart = _outage(rig, "h2", down_for=2.0)
        assert [f.result(120)[0] for f in futures] == list(range(300))
        assert _retried(caplog) >= 1
        restart.join(60)
        assert _wait_for(lambda: ex.hosts_status()[spec2]["workers"] == 2, 90), ex.hosts_status()


def test_without_retries_nothing_is_retried_nor_reconnected(pair):
    rig, h1, h2, options = pair
    spec1, spec2 = h1.spec("rpuser"), h2.spec("rpuser")
    with Pool([spec1, spec2], processes_per_host=1, **options) as pool:
        rig.kill_sshd("h2")
        try:
            assert _wait_for(lambda: not pool.hosts_status()[spec2]["up"], 30)
        finally:
            rig.restart_sshd("h2")
        time.sleep(3)          # a reconnect would have happened by now (the first try is after 1 s)
        st = pool.hosts_status()[spec2]
        assert not st["up"] and st["workers"] == 0 and st["attempts"] == 0 and "lost" in st["error"]
