"""The owner's server thread ("remoteproc-queues") under churn and under other code's fd bugs.

One thread in the owner serves every Queue, Lock, Event ... of the program to every process they
were given to.  If it dies, all of them stop working at once, silently.  Here: many short-lived
RemoteProcesses given such objects, starts that fail (a bad python=, an argument refused after a
Queue), a start that is pickled again for a spawn-mode host, connections lost (the agent killed),
process objects dropped without join, while a thread of the parent keeps using a long-lived
Queue and Lock with a long-lived child; and fds closed twice by "another library" of the owner.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import uuid

import broker_targets as T
import pytest
from conftest import _unavailable
from proctable import eventually, fd_table, ppid

from remoteproc import Event, Lock, Queue, RemoteProcess, RemoteProcessError, owned

pytestmark = [pytest.mark.timeout(180), pytest.mark.loopback_only,    # reads this machine's /proc
              pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")]

PYENV = os.path.join(os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv"), "versions")
WAIT = 30.0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _other_python() -> str:
    """A Python its host runs in spawn mode: a pyenv CPython 3.9+ of another version than ours, else
    pypy3 (another implementation; scripts/test.sh installs it where pyenv has no other version)."""
    ours = "%d.%d" % sys.version_info[:2]
    found = []
    for name in sorted(os.listdir(PYENV)) if os.path.isdir(PYENV) else []:
        m = re.fullmatch(r"3\.(\d+)\.\d+", name)
        exe = os.path.join(PYENV, name, "bin", "python3")
        if m and int(m.group(1)) >= 9 and not name.startswith(ours + ".") and os.access(exe, os.X_OK):
            found.append(exe)
    if not found and sys.implementation.name != "pypy" and shutil.which("pypy3"):
        found.append(shutil.which("pypy3"))
    if not found:
        _unavailable("no pyenv CPython 3.9+ other than %s under %s, and no pypy3 (scripts/test.sh installs it)"
                     % (ours, PYENV))
    return found[0]


class _Spawner:
    """Stands for a process object whose start never happens."""


def _broker_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "remoteproc" and r.levelno >= logging.ERROR and "Queue/Lock/Event" in r.getMessage()]


def _keep_using(q_in, q_out, lock, stop: threading.Event, state: dict) -> threading.Thread:
    """A thread of ours that puts under the long-lived Lock and reads the echo, round after round
    (at most 100,000) until ``stop``; ``state`` counts the rounds and records the first error."""
    def use():
        for i in range(1, 100_001):
            if stop.is_set():
                return
            try:
                with lock:          # the owner's own acquire, against the child's
                    q_in.put(i)
                got = q_out.get(timeout=WAIT)
                if got != i:
                    state["errors"].append("sent %r, got %r" % (i, got))
                    return
                state["done"] += 1
            except Exception as exc:  # noqa: BLE001 - reported by the test
                state["errors"].append(repr(exc))
                return

    t = threading.Thread(target=use, daemon=True)
    t.start()
    return t


@pytest.fixture
def keeper(plain_user_host, plain_user_options):
    """A long-lived child on a connection of its own (another account: the faults below do not
    reach it) echoing a long-lived Queue under a long-lived Lock, and a thread of ours using them."""
    q_in, q_out, lock = Queue(), Queue(), Lock()
    p = RemoteProcess(plain_user_host, target=T.echo_under_lock, args=(q_in, q_out, lock), **plain_user_options)
    p.start()
    stop = threading.Event()
    state: dict = {"done": 0, "errors": []}
    t = _keep_using(q_in, q_out, lock, stop, state)
    yield state
    stop.set()
    t.join(WAIT + 5)
    assert not t.is_alive(), "the long-lived Queue stopped answering"
    assert not state["errors"], state["errors"]
    # still working after everything: one more round trip, then the child ends
    q_in.put("last")
    assert q_out.get(timeout=WAIT) == "last"
    assert lock.acquire(timeout=WAIT)
    lock.release()
    q_in.put(None)
    p.join(WAIT)
    assert p.exitcode == 0


# -- an fd closed twice by other code of the owner ------------------------------------------------

def test_a_pending_end_closed_by_other_code_does_not_stop_the_server_thread(keeper, caplog):
    """Another library of the owner closes an fd twice and so closes one of our pending ends; when
    that end is then released (a failed start), our close got EBADF and ended the server thread:
    every Queue and Lock of the program stopped answering (seen once under Python 3.9)."""
    assert eventually(lambda: keeper["done"] > 3, WAIT), "the long-lived child never answered"
    spawner = _Spawner()
    child_end = Queue()._attach("a test", spawner)
    os.close(child_end.fileno())        # the other library's second close
    with caplog.at_level(logging.WARNING, logger="remoteproc"):
        owned.release_unstarted(spawner)
        assert eventually(lambda: "closed by other code" in caplog.text, 10), caplog.text
    assert owned._broker_running()
    before = keeper["done"]
    assert eventually(lambda: keeper["done"] > before + 3, WAIT), "the long-lived Queue stopped answering"


def test_a_reused_fd_number_is_not_closed_by_the_server_thread(keeper, caplog):
    """The same, and the fd number is reused by a file of someone else before we release our end:
    closing it would close that file under its owner (here a pipe whose data would be lost)."""
    assert eventually(lambda: keeper["done"] > 3, WAIT), "the long-lived child never answered"
    spawner = _Spawner()
    child_end = Queue()._attach("a test", spawner)
    number = child_end.fileno()
    keep = os.dup(number)       # (the socket stays open: its peer, our parent end, sees no EOF yet)
    r, w = os.pipe()
    os.dup2(w, number)          # the other library's close, and the number taken by its pipe at once
    broker = owned._get_broker()
    with caplog.at_level(logging.WARNING, logger="remoteproc"):
        owned.release_unstarted(spawner)
        assert eventually(lambda: all(c is not child_end for c in list(broker.pending.values())), 10)
        os.write(number, b"kept")       # still open, still that pipe (EBADF: the broker closed it)
        assert os.read(r, 4) == b"kept"
        assert eventually(lambda: "now belongs to another file" in caplog.text, 10), caplog.text
    for fd in (number, r, w, keep):
        os.close(fd)
    assert owned._broker_running()
    before = keeper["done"]
    assert eventually(lambda: keeper["done"] > before + 3, WAIT), "the long-lived Queue stopped answering"


def test_a_failing_step_drops_one_connection_and_the_thread_serves_on(keeper, caplog, monkeypatch):
    """Whatever else goes wrong while serving one Connection (here: a request whose handling
    raises), the thread logs it, drops that Connection (its process then gets OwnerGone) and
    serves the others; it used to end, leaving every other process waiting for ever."""
    assert eventually(lambda: keeper["done"] > 3, WAIT), "the long-lived child never answered"
    victim = Event()
    boom = RuntimeError("a failure inside the server thread")

    def failing_start(op, args, conn, rid):
        raise boom

    monkeypatch.setattr(victim, "_request", lambda conn, rid, op, args: failing_start(op, args, conn, rid))
    parent_end, child_end = multiprocessing.Pipe()
    owned._get_broker().add(parent_end, victim)
    from remoteproc.agent import proxies as P

    with caplog.at_level(logging.ERROR, logger="remoteproc"):
        P.send_msg(child_end, (1, P.IS_SET))
        assert child_end.poll(10), "the failing Connection was not dropped"
        with pytest.raises(EOFError):
            child_end.recv_bytes()
        assert "serving a Queue/Lock/Event Connection failed" in caplog.text
    child_end.close()
    assert owned._broker_running()
    before = keeper["done"]
    assert eventually(lambda: keeper["done"] > before + 3, WAIT), "the long-lived Queue stopped answering"


# -- churn with real processes -----------------------------------------------------------------------

def test_churn_of_short_lived_processes_leaves_the_long_lived_objects_working(
        host, ssh_options, plain_user_host, plain_user_options, caplog):
    other = _other_python()
    # warm up: the relay and this host's connection exist before the fd count is taken
    q, lock, ev = Queue(), Lock(), Event()
    p = RemoteProcess(host, target=T.use_and_exit, args=(q, lock, ev, "warm"), **ssh_options)
    p.start()
    assert q.get(timeout=WAIT) == "warm"
    p.join(WAIT)
    del p, q, lock, ev
    gc.collect()
    assert eventually(lambda: not owned._broker_running(), 10)
    base = _fds()
    table = fd_table()

    q_in, q_out, keep_lock = Queue(), Queue(), Lock()
    keeper = RemoteProcess(plain_user_host, target=T.echo_under_lock, args=(q_in, q_out, keep_lock),
                           **plain_user_options)
    keeper.start()
    stop = threading.Event()
    state: dict = {"done": 0, "errors": []}
    user = _keep_using(q_in, q_out, keep_lock, stop, state)

    def objects():
        return Queue(), Lock(), Event()

    with caplog.at_level(logging.WARNING, logger="remoteproc"):
        for _round in range(2):
            # 1. short-lived children that use everything and exit
            for i in range(3):
                q, lock, ev = objects()
                p = RemoteProcess(host, target=T.use_and_exit, args=(q, lock, ev, i), **ssh_options)
                p.start()
                assert q.get(timeout=WAIT) == i
                assert ev.wait(WAIT)
                p.join(WAIT)
                assert p.exitcode == 0
            # 2. a start that fails on the host: a Python that does not exist
            q, lock, ev = objects()
            p = RemoteProcess(host, target=T.use_and_exit, args=(q, lock, ev, 0),
                              **dict(ssh_options, python="/nonexistent/python3-%s" % uuid.uuid4().hex[:6]))
            with pytest.raises(RemoteProcessError):
                p.start()
            del p
            # 3. a start refused while pickling, after a Queue, a Lock and an Event were pickled
            q, lock, ev = objects()
            p = RemoteProcess(host, target=T.use_and_exit, args=(q, lock, ev, multiprocessing.Lock()),
                              **ssh_options)
            with pytest.raises(RemoteProcessError):
                p.start()
            del p
            # 4. a start pickled again for a spawn-mode host (a python= spelling not seen before)
            q, lock, ev = objects()
            p = RemoteProcess(host, target=T.use_and_exit, args=(q, lock, ev, "spawn"),
                              **dict(ssh_options, python="env REMOTEPROC_TEST_RUN=%s %s" % (uuid.uuid4().hex, other)))
            p.start()
            assert q.get(timeout=60) == "spawn"
            p.join(WAIT)
            assert p.exitcode == 0
            # 5. a connection lost: the agent killed while its child holds a Lock and waits on an Event
            q, lock, ev = objects()
            p = RemoteProcess(host, target=T.report_then_sleep, args=(q, lock, ev), **ssh_options)
            p.start()
            pid = q.get(timeout=WAIT)
            os.kill(ppid(pid), signal.SIGKILL)
            p.join(WAIT)
            assert p.exitcode is not None
            assert lock.acquire(timeout=WAIT), "the Lock held by the lost child was not given back"
            lock.release()
            # 6. a process object dropped without join while its child still runs
            q, lock, ev = objects()
            p = RemoteProcess(host, target=T.use_and_exit, args=(q, lock, ev, "dropped"), **ssh_options)
            p.start()
            del p
            gc.collect()
            assert q.get(timeout=WAIT) == "dropped"
            del q, lock, ev
            gc.collect()
            assert owned._broker_running(), "the server thread ended while the long-lived child is attached"

        assert user.is_alive() and not state["errors"], state["errors"]
        done = state["done"]
        assert eventually(lambda: state["done"] > done + 3, WAIT), "the long-lived Queue stopped answering"
        stop.set()
        user.join(WAIT + 5)
        assert not state["errors"], state["errors"]
        q_in.put(None)
        keeper.join(WAIT)
        assert keeper.exitcode == 0
        del keeper
        gc.collect()
        assert not _broker_errors(caplog), _broker_errors(caplog)
    # nothing attached any more: the thread ends, and every end made above is closed.  The dropped
    # process object is reaped by multiprocessing as a local one is: at the next start or at
    # active_children(), once its child has ended (under load that can be after the first call;
    # until then its sentinel stays open, as a local one does)
    def reaped() -> bool:
        multiprocessing.active_children()
        gc.collect()
        return _fds() <= base

    assert eventually(lambda: not owned._broker_running(), 15), "the server thread outlived every child"
    assert eventually(reaped, 15), "fds: %d at the start, %d now; new: %s" % (
        base, _fds(), {k: v for k, v in fd_table().items() if table.get(k) != v})


# -- fork from two threads at once --------------------------------------------------------------------

def _fork_and_put(q, barrier, tag, pids) -> None:
    barrier.wait(WAIT)
    pid = os.fork()
    if pid == 0:        # the child: one put through its own Pipe to us, then out
        code = 0
        try:
            q.put((tag, os.getpid()))
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            os.write(2, ("child %s: %r\n" % (tag, exc)).encode())
            code = 3
        os._exit(code)
    pids.append(pid)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # (3.12+: fork() with threads running)
def test_two_threads_forking_at_once_each_give_their_child_its_own_pipe():
    """Every os.fork() of the owner gives each live object a fresh Pipe for the child.  With one
    slot per object, a second thread forking at the same time overwrote the first's Pipe: one
    child got an end the garbage collector had closed (OwnerGone: broken pipe), or both children
    shared one Pipe and an item was lost (8 trials out of 10 here)."""
    objects = [Queue() for _ in range(200)]     # (many objects: the hooks take long enough to overlap)
    q = objects[0]
    failures = []
    for trial in range(10):
        barrier = threading.Barrier(2)
        pids: list = []
        threads = [threading.Thread(target=_fork_and_put, args=(q, barrier, tag, pids)) for tag in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        codes = [os.waitpid(pid, 0)[1] for pid in pids]
        got = []
        for _ in range(2):
            try:
                got.append(q.get(timeout=5)[0])
            except Exception:  # noqa: BLE001 - reported below
                break
        if sorted(got) != [0, 1] or any(codes):
            failures.append("trial %d: exit statuses %s, items from children %s" % (trial, codes, got))
    assert not failures, failures
    del objects
