"""Edges of multiprocessing managers' proxies in a RemoteProcess (bridged over the SSH connection), next to a
local spawn child given the same proxies.

Covered: which manager addresses are bridged and where the parent connects for them (Unix socket, loopback
and wildcard binds, a reachable address); a manager on a loopback TCP port used by a remote child; the
manager shut down under a child: a call on a connection the child already had, and the first call of a
new thread (which opens a new connection), fail as they do in a local child; the child ending with a
manager connection that had already gone.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from multiprocessing.managers import SyncManager

import cloudpickle
import pytest

import remoteproc
from remoteproc import RemoteProcess
from remoteproc.managers import _local, bridged

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.one_transport]     # (the link carries it alike on both transports)


def _run(procs, timeout=60):
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    assert [p.exitcode for p in procs] == [0] * len(procs)


# -- targets ---------------------------------------------------------------------------------------------

def fill_and_count(d, lst, out):
    d["from"] = "child"
    lst.extend([1, 2, 3])
    out.put((len(lst), d.get("from"), sorted(d.keys())))


def _attempt(call):
    try:
        call()
        return "no error"
    except Exception as exc:
        return type(exc).__name__, isinstance(exc, (EOFError, OSError))


def use_after_shutdown(d, conn):
    d["before"] = 1                 # this thread's connection to the manager is open from here on
    conn.send("connected")
    conn.recv()                     # the manager has been shut down meanwhile
    res = {"same thread": _attempt(lambda: d.__setitem__("after", 2))}
    got = []
    t = threading.Thread(target=lambda: got.append(_attempt(lambda: d["before"])))     # a new connection
    t.start()
    t.join(30)
    res["new thread"] = got[0] if got else "hung"
    conn.send(res)


# -- tests -------------------------------------------------------------------------------------------------

def test_which_addresses_are_bridged_and_where_the_parent_connects_for_them():
    """docs/primitives.md: Unix sockets, 127.x, ::1, localhost and wildcard binds are bridged (a wildcard
    bind is reached on loopback); an address another host can reach is not."""
    for address in ("/tmp/x/listener-abc", ("127.0.0.1", 5000), ("127.1.2.3", 5000), ("localhost", 5000),
                    ["::1", 5000], ("", 5000), ("0.0.0.0", 5000), ("::", 5000)):
        assert bridged(address), address
    for address in (("10.0.0.5", 50000), ("node1.example", 50000), None, ()):
        assert not bridged(address), address
    assert _local(("", 5000)) == _local(("0.0.0.0", 5000)) == ("127.0.0.1", 5000)
    assert _local(("::", 5000, 0, 0)) == ("::1", 5000, 0, 0)
    assert _local(["127.0.0.1", 5000]) == ("127.0.0.1", 5000)
    assert _local("/tmp/x/listener-abc") == "/tmp/x/listener-abc"


def test_a_manager_on_a_loopback_port_is_bridged_for_a_remote_child(host, ssh_options):
    with SyncManager(address=("127.0.0.1", 0)) as manager:
        assert isinstance(manager.address, tuple) and bridged(manager.address)
        d, lst, out = manager.dict(), manager.list(), remoteproc.Queue()
        _run([RemoteProcess(host, target=fill_and_count, args=(d, lst, out), **ssh_options)])
        assert out.get(timeout=30) == (3, "child", ["from"])
        assert d["from"] == "child" and list(lst) == [1, 2, 3]


def _after_shutdown(host, ssh_options):
    """What use_after_shutdown reports in a local spawn child and in a remote child."""
    results = {}
    for where in ("local", "remote"):
        manager = remoteproc.Manager()
        try:
            d = manager.dict()
            a, b = remoteproc.Pipe()
            if where == "local":
                p = multiprocessing.get_context("spawn").Process(target=use_after_shutdown, args=(d, b))
            else:
                p = RemoteProcess(host, target=use_after_shutdown, args=(d, b), **ssh_options)
            p.start()
            b.close()
            assert a.poll(60) and a.recv() == "connected"
            assert d["before"] == 1
        finally:
            manager.shutdown()
        a.send("go")
        assert a.poll(60)
        results[where] = a.recv()
        p.join(60)
        assert p.exitcode == 0, where
    return results


def test_calls_after_the_manager_shut_down_fail_as_in_a_local_child(host, ssh_options):
    """A call on the connection a child already had fails with EOFError or an OSError (the manager closed
    it: locally BrokenPipeError, remotely EOFError); the first call of a new thread cannot connect (an
    OSError).  Then the child ends normally (its link hangs up a manager connection that was gone already)."""
    for where, res in _after_shutdown(host, ssh_options).items():
        for which, got in res.items():
            assert got != "hung" and got != "no error" and got[1] is True, (where, which, got)


def test_a_new_connection_to_a_gone_manager_raises_the_same_error_as_in_a_local_child(host, ssh_options):
    results = _after_shutdown(host, ssh_options)
    assert results["remote"]["new thread"] == results["local"]["new thread"]
