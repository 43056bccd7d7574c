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


# -- found by a managers audit: forks, threads, xmlrpclib, proxies that came in a message ------------------
# (as rpuser, who cannot open root's /tmp/pymp-* socket: every connection must go through the link, as
# on another host)

def noop():
    pass


def use_in_grandchild(d):
    d["grandchild"] = 1


def fork_then_use(d, out):
    ctx = multiprocessing.get_context("fork")
    g = ctx.Process(target=noop)        # (the proxy's after-fork incref must not hang the fork)
    g.start()
    g.join(20)
    user = ctx.Process(target=use_in_grandchild, args=(d,))
    user.start()
    user.join(20)
    d["child"] = 1                      # (the remote child's own link still works)
    out.put((g.exitcode, user.exitcode))


def test_a_fork_of_a_remote_child_holding_a_proxy_starts_and_cannot_hang_on_the_link(
        plain_user_host, plain_user_options, capfd):
    """A fork-started process of a remote child that holds a proxy hung for ever in the proxy's
    after-fork incref (its copy of the link has no reader thread). Now it starts, and using the proxy
    there raises, naming the fix."""
    with remoteproc.Manager() as m:
        d, out = m.dict(), remoteproc.Queue()
        p = RemoteProcess(plain_user_host, target=fork_then_use, args=(d, out), **plain_user_options)
        p.start()
        assert out.get(timeout=60) == (0, 1)
        p.join(30)
        assert p.exitcode == 0 and dict(d) == {"child": 1}
    assert "is a fork of it, which cannot use that link" in capfd.readouterr().err


def set_from_threads(d, n, ready, done):
    for i in range(n):
        t = threading.Thread(target=d.__setitem__, args=(i, i))
        t.start()
        t.join()
    import gc

    gc.collect()
    ready.set()
    done.wait(60)


def _threads_of(pid):
    import os

    return len(os.listdir("/proc/%d/task" % pid))


def test_a_thread_s_manager_connection_ends_with_the_thread(plain_user_host, plain_user_options):
    """Each thread of a remote child that used a proxy kept a manager connection (and a serving thread of
    the manager's, a pump thread here) until the child ended; a local child's closes as the thread ends."""
    with remoteproc.Manager() as m:
        d, ready, done = m.dict(), remoteproc.Event(), remoteproc.Event()
        before = _threads_of(m._process.pid)
        p = RemoteProcess(plain_user_host, target=set_from_threads, args=(d, 30, ready, done), **plain_user_options)
        p.start()
        try:
            assert ready.wait(60)
            assert len(d) == 30
            import time

            deadline = time.monotonic() + 10       # (the manager's threads end as the CLOSEs arrive)
            while _threads_of(m._process.pid) > before + 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _threads_of(m._process.pid) <= before + 3, (before, _threads_of(m._process.pid))
        finally:
            done.set()
            p.join(30)
        assert p.exitcode == 0


class Box:
    def __init__(self):
        self.v = []

    def add(self, x):
        self.v.append(x)
        return len(self.v)


def add_to_box(box, out):
    out.put(box.add("child"))


def test_a_manager_with_the_xmlrpclib_serializer_is_bridged_too(plain_user_host, plain_user_options):
    from multiprocessing.managers import BaseManager

    class XmlManager(BaseManager):
        pass

    XmlManager.register("Box", Box)
    with XmlManager(serializer="xmlrpclib") as m:
        box, out = m.Box(), remoteproc.Queue()
        p = RemoteProcess(plain_user_host, target=add_to_box, args=(box, out), **plain_user_options)
        p.start()
        assert out.get(timeout=60) == 1
        p.join(30)
        assert p.exitcode == 0 and box.add("here") == 2


def use_from_queue(linked, q, out):
    try:
        q.get(timeout=30)["x"] = 1
        out.put("no error")
    except OSError as exc:
        out.put((type(exc).__name__, str(exc)))


def test_a_proxy_that_came_in_a_message_says_to_pass_it_as_an_argument(plain_user_host, plain_user_options):
    """Only proxies given as arguments bring a link; one of another manager that came in a Queue item
    cannot reach the program's side: the child gets the OSError a local connect would give, saying so."""
    with remoteproc.Manager() as m1, remoteproc.Manager() as m2:
        q, out = remoteproc.Queue(), remoteproc.Queue()
        p = RemoteProcess(plain_user_host, target=use_from_queue, args=(m1.dict(), q, out), **plain_user_options)
        p.start()
        q.put(m2.dict())
        got = out.get(timeout=60)
        p.join(30)
    assert got != "no error" and "Fix: pass the proxy as an argument of the process" in got[1], got
