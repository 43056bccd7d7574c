"""Performance cliffs found by the audit, pinned by counts (never by time).

* The owner's broker keeps one selector for all attached Connections: a request costs the
  same with 1 or 1,000 of them attached (``multiprocessing.connection.wait`` registered every
  Connection again on each wake-up, so each request from a child cost O(attached)).
* A big Queue item (a pickle of ``OUT_OF_BAND`` bytes or more) travels as a message of its
  own, not copied into the request's or the reply's pickle: the owner holds it once.

Speed itself is measured by ``benchmarks/bench_cliffs.py``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import selectors
import sys
import time
import tracemalloc
from multiprocessing.connection import Pipe

import cloudpickle
import pytest

import remoteproc
from remoteproc import RemoteProcess, owned
from remoteproc.agent import proxies as P

cloudpickle.register_pickle_by_value(sys.modules[__name__])

fork = multiprocessing.get_context("fork")


def _read_values(values, conn, n):
    for _ in range(n):
        for v in values[:3]:
            _ = v.value
    conn.send("done")


def _get_len(q, out):
    out.put(len(q.get(timeout=30)))


def _echo_items(q_in, q_out, n):
    for _ in range(n):
        q_out.put(q_in.get(timeout=30))


def test_broker_registers_each_connection_once(monkeypatch):
    """400 attached Connections (200 Values and their Locks), 3 x 50 requests: each
    Connection is registered with a selector once, not once per request (the old loop,
    ``multiprocessing.connection.wait``, registered all of them again on every wake-up:
    150 x 400 registrations)."""
    # Objects of earlier tests, garbage or still held for their children, get a Pipe at the fork
    # too: let them go first, and count what is live at the fork (counted after the child had
    # gone, the count missed those the broker let go meanwhile: 453 and 584 registrations for 400)
    broker = owned._get_broker()
    deadline = time.monotonic() + 10
    while broker.objs and time.monotonic() < deadline:
        time.sleep(0.02)
    gc.collect()
    values = [remoteproc.Value("i", i) for i in range(200)]
    attached = len(owned._live)
    registered = []
    real = selectors._BaseSelectorImpl.register

    def counting(self, fileobj, events, data=None):
        if self.get_map():          # (not a one-fd selector of Connection.poll())
            registered.append(fileobj)
        return real(self, fileobj, events, data)

    monkeypatch.setattr(selectors._BaseSelectorImpl, "register", counting)
    a, b = Pipe()
    p = fork.Process(target=_read_values, args=(values, b, 50))
    p.start()
    b.close()
    assert a.poll(60) and a.recv() == "done"
    p.join(30)
    assert p.exitcode == 0
    assert len(registered) <= attached + 1, (len(registered), attached)
    # every Connection dropped and unregistered once the child has gone; only the waker stays
    deadline = time.monotonic() + 10
    while broker.objs and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not broker.objs
    assert len(broker.sel.get_map()) == 1


def test_send_msg_keeps_big_bytes_out_of_the_pickle():
    a, b = Pipe()
    big = os.urandom(P.OUT_OF_BAND + 1)
    small = b"s" * 100
    msgs = [(1, 2, big, False, None), (3, 0, small), (4, big, small, big), (5, 0, b"")]
    for m in msgs:
        P.send_msg(a, m)
    # the first message on the wire is the tuple's pickle alone, without the item
    assert len(b.recv_bytes()) < 200
    assert b.recv_bytes() == big
    for m in msgs[1:]:
        assert P.recv_msg(b) == m


def test_big_queue_item_is_held_once_by_the_owner():
    """A child waits in get(); the owner's put of a 16 MiB item pickles it once and sends
    that pickle as it is (before: a second copy inside the reply's pickle)."""
    size = 16 << 20
    q, out = remoteproc.Queue(), remoteproc.Queue()
    p = fork.Process(target=_get_len, args=(q, out))
    p.start()
    item = b"x" * size
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        q.put(item)
        assert out.get(timeout=30) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    p.join(30)
    assert p.exitcode == 0
    assert peak < 1.5 * size, peak / size


@pytest.mark.one_transport
def test_big_items_through_a_remote_child(host, ssh_options):
    """Big and small items, interleaved, both ways through a remote child: unchanged, in order."""
    q_in, q_out = remoteproc.Queue(), remoteproc.Queue()
    items = [os.urandom(P.OUT_OF_BAND * 3), b"small", os.urandom(P.OUT_OF_BAND), 7, os.urandom(3 << 20)]
    p = RemoteProcess(host, target=_echo_items, args=(q_in, q_out, len(items)), **ssh_options)
    p.start()
    for it in items:
        q_in.put(it)
    assert [q_out.get(timeout=60) for _ in items] == items
    p.join(30)
    assert p.exitcode == 0
