"""multiprocessing managers' proxies passed to RemoteProcess: bridged over our SSH connection."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection
from multiprocessing.managers import BaseManager

import cloudpickle
import pytest

import remoteproc
from remoteproc import RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ns(netns):
    from conftest import PLAIN_USER

    options = netns.options()
    return netns, netns.hosts["h1"].spec(PLAIN_USER), netns.hosts["h2"].spec(PLAIN_USER), options


def fill(d, results, ns_, lock, name, n):
    server_address = os.environ["SSH_CONNECTION"].split()[2]     # which host this is

    for i in range(n):
        with lock:
            d["%s-%d" % (name, i)] = server_address
            ns_.count = ns_.count + 1
    results.append(name)
    nested = d["nested"]            # a proxy stored in the dict: connects through the link too
    nested.append(name)


def _run(procs, timeout=60):
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_manager_dict_filled_from_both_hosts(ns):
    rig, h1, h2, options = ns
    with remoteproc.Manager() as manager:
        assert isinstance(manager.address, str)         # a Unix socket: no host can reach it directly
        d, results, ns_, lock = manager.dict(), manager.list(), manager.Namespace(), manager.Lock()
        ns_.count = 0
        d["nested"] = manager.list()
        procs = [RemoteProcess(h, target=fill, args=(d, results, ns_, lock, "p%d" % i, 20), **options)
                 for i, h in enumerate((h1, h2, h1, h2))]
        _run(procs)
        assert sorted(results) == ["p0", "p1", "p2", "p3"]
        assert ns_.count == 80 and len(d) == 81
        assert sorted(d["nested"]) == ["p0", "p1", "p2", "p3"]
        assert len({v for k, v in d.items() if k != "nested"}) == 2        # two hosts


class Tally:
    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(x)
        return len(self.items)

    def get(self):
        return list(self.items)


class TallyManager(BaseManager):
    pass


TallyManager.register("Tally", Tally)


def use_tally(tally, out):
    out.put(tally.add(os.getpid()))


def test_custom_base_manager_and_local_children_side_by_side(host, ssh_options):
    with TallyManager() as manager:
        tally, out = manager.Tally(), remoteproc.Queue()
        remote = RemoteProcess(host, target=use_tally, args=(tally, out), **ssh_options)
        local = multiprocessing.get_context("spawn").Process(target=use_tally, args=(tally, out))
        _run([remote, local])
        assert sorted([out.get(timeout=10), out.get(timeout=10)]) == [1, 2]
        assert len(tally.get()) == 2


def connect_with(d, out):
    try:
        d["x"] = 1
        out.put("connected")
    except Exception as exc:
        out.put(type(exc).__name__)


def test_the_managers_authkey_is_still_checked(host, ssh_options):
    """A child given a wrong authkey is refused by the manager through the bridge, as a local one is."""
    with remoteproc.Manager() as manager:
        d, out = manager.dict(), remoteproc.Queue()
        good = d._authkey
        d._authkey = multiprocessing.process.AuthenticationString(b"not the key")
        remote = RemoteProcess(host, target=connect_with, args=(d, out), **ssh_options)
        local = multiprocessing.get_context("spawn").Process(target=connect_with, args=(d, out))
        for p in (remote, local):
            p.start()
            p.join(60)
        d._authkey = good
        assert remote.exitcode == local.exitcode == 0
        assert [out.get(timeout=10), out.get(timeout=10)] == ["AuthenticationError"] * 2
        assert "x" not in d.keys()


def test_manager_with_a_reachable_address_is_connected_directly(ns):
    """A manager that listens where the host can reach it is not bridged (as locally)."""
    rig, h1, _h2, options = ns
    from remoteproc.managers import bridged

    address = (rig.address(1), 0)           # the root namespace's address on the hosts' bridge
    with multiprocessing.managers.SyncManager(address=address) as manager:
        assert not bridged(manager.address)
        d, out = manager.dict(), remoteproc.Queue()
        _run([RemoteProcess(h1, target=connect_with, args=(d, out), **options)])
        assert out.get(timeout=30) == "connected" and d["x"] == 1


def blocked_in_get(conn, q):
    conn.send(os.getpid())
    q.get()


def test_a_child_killed_inside_a_proxy_call_leaves_no_thread_error(host, ssh_options, monkeypatch):
    """The link ends the dead child's manager channel while its reading thread is blocked in it:
    that thread must see the end (EOF) and finish, not stay blocked on a Connection closed under
    it (then a TypeError deep in multiprocessing on the user's stderr, or a read of a reused fd)."""
    import signal
    import threading
    import time

    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    with remoteproc.Manager() as manager:
        q = manager.Queue()
        a, b = remoteproc.Pipe()
        p = RemoteProcess(host, target=blocked_in_get, args=(b, q), **ssh_options)
        p.start()
        b.close()
        os.kill(a.recv(), signal.SIGKILL)
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        q.put("x")      # the dead child's manager thread takes it and answers on the gone channel
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline and any(
                t.name == "remoteproc-manager-channel" for t in threading.enumerate()):
            time.sleep(0.05)
        assert errors == []
        assert not any(t.name == "remoteproc-manager-channel" for t in threading.enumerate())  # none left reading


class _WatchedEnd:
    """The link's end of its Pipe, saying whether it was closed while a send was on its way."""

    def __init__(self, conn):
        self.conn = conn
        self.sending = threading.Event()
        self.in_send = 0
        self.closed_mid_send = False

    def send_bytes(self, data):
        self.in_send += 1
        self.sending.set()
        time.sleep(0.3)         # (a thread taken off the CPU between the closed check and the write)
        try:
            self.conn.send_bytes(data)
        finally:
            self.in_send -= 1

    def recv_bytes(self):
        return self.conn.recv_bytes()

    def close(self):
        self.closed_mid_send = self.closed_mid_send or self.in_send > 0
        self.conn.close()


def test_the_link_never_closes_its_end_under_a_channel_still_sending(tmp_path):
    """Found in CI: when the child ended, the link's thread closed its end of the Pipe while a channel's
    thread was inside send_bytes (past its closed check); the write went to the fd number's next owner,
    the program's new connection to its manager, which took the frame for its digest ("digest sent was
    rejected" in the parent's next proxy call)."""
    from remoteproc import managers as parent_side
    from remoteproc.agent import managers as M

    listener = connection.Listener(str(tmp_path / "manager"))
    accepted = []

    def manager():                  # says one thing to each connection, as a manager's challenge
        c = listener.accept()
        accepted.append(c)
        c.send_bytes(b"#CHALLENGE#")

    server = threading.Thread(target=manager, daemon=True)
    server.start()
    link = parent_side._Link(listener.address, None)
    watched = link.parent_end = _WatchedEnd(link.parent_end)
    try:
        link.child_end.send_bytes(pickle.dumps((1, M.OPEN, None)))
        assert watched.sending.wait(10), "the manager's first message was never forwarded"
        link._release()             # the child's end closes (its process ended) mid-send
        deadline = time.monotonic() + 10
        while not watched.conn.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watched.conn.closed, "the link did not close its end after the child's went"
        assert not watched.closed_mid_send
    finally:
        server.join(10)
        for c in accepted:
            c.close()
        listener.close()


def test_a_request_for_a_channel_the_manager_just_ended_goes_nowhere_else(tmp_path):
    """Found by an audit: the manager ended a channel (as it does after a one-shot request) and its reader
    thread was closing the Connection when the child's next request for it arrived: the link's thread,
    past the closed check, wrote the frame to the fd number's next owner (any socket of the program),
    or died of a TypeError, cutting every channel of the child."""
    from remoteproc import managers as parent_side
    from remoteproc.agent import managers as M

    listener = connection.Listener(str(tmp_path / "manager"))
    link = parent_side._Link(listener.address, None)
    others = []
    try:
        link.child_end.send_bytes(pickle.dumps((1, M.OPEN, None)))
        manager_side = listener.accept()
        deadline = time.monotonic() + 10
        while 1 not in link.conns and time.monotonic() < deadline:
            time.sleep(0.01)
        conn = link.conns[1][0]
        fd, closed = conn.fileno(), threading.Event()

        def close_slowly():         # the reader's close, taken off the CPU before it marks the Connection closed
            os.close(fd)
            closed.set()
            time.sleep(0.5)

        conn._close = close_slowly
        manager_side.close()
        assert closed.wait(10), "the channel's reader did not close it after the manager did"
        for _ in range(20):         # the program's next socket takes the number
            a, b = socket.socketpair()
            others += [a, b]
            if fd in (a.fileno(), b.fileno()):
                break
        assert fd in [s.fileno() for s in others]
        link.child_end.send_bytes(pickle.dumps((1, M.DATA, b"late request")))
        for s in others:
            s.settimeout(0.3)
            with pytest.raises(socket.timeout):
                print(s.recv(100))
        told = []           # (the reader's close at EOF, and the refused request's)
        while link.child_end.poll(0.5) and len(told) < 5:
            told.append(pickle.loads(link.child_end.recv_bytes()))
        assert told and set(told) == {(1, M.CLOSE, None)}
    finally:
        for s in others:
            s.close()
        link._release()
        listener.close()


# -- proxies in Pool and Executor tasks ------------------------------------------------------------

def _keep(q):
    import builtins

    # (in a module of the worker's: a task shipped by value may get its own copy of this module's globals)
    builtins._remoteproc_test_kept = q  # type: ignore[attr-defined]


def _put_task(args):
    q, x = args
    q.put(x)
    return x


def _put_kept(x):
    import builtins

    builtins._remoteproc_test_kept.put(x)  # type: ignore[attr-defined]
    return x


def test_a_proxy_in_a_pool_task_says_to_pass_it_in_initargs_and_that_works(plain_user_host, plain_user_options):
    """Found by an audit: a manager's proxy inside a Pool task (the way multiprocessing's own
    Queue cannot go) failed on a host of another account with a bare PermissionError (on another
    machine, FileNotFoundError): a task brings no link to the manager.  The error says why and
    what to do now; through initargs, as it says, the same proxy works."""
    with multiprocessing.Manager() as manager:
        q = manager.Queue()
        with remoteproc.Pool([plain_user_host], 1, **plain_user_options) as pool:
            with pytest.raises(OSError) as info:
                pool.map(_put_task, [(q, 1)])
            assert "initargs=" in str(info.value) and "has no link" in str(info.value), info.value
        with remoteproc.Executor([plain_user_host], 1, **plain_user_options) as executor:
            # (the proxy connects as it is unpickled: a task that cannot be, as ProcessPoolExecutor says)
            with pytest.raises(BrokenProcessPool, match="initargs="):
                executor.submit(_put_task, (q, 2)).result(60)
        with remoteproc.Pool([plain_user_host], 1, initializer=_keep, initargs=(q,), **plain_user_options) as pool:
            assert pool.map(_put_kept, [3, 4]) == [3, 4]
        assert sorted(q.get(timeout=10) for _ in range(2)) == [3, 4]
