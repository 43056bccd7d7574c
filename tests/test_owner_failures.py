"""The owner's server thread outlives its own failures, and never leaves a process waiting.

One thread in the owner serves every Queue, Lock and Event of the program to every process
they went to.  An unexpected exception there (a bug of ours, an OS error no path expects) must
not end that service silently: a failure in serving one Connection drops that Connection only
(its process gets ``OwnerGone``, as if the owner had gone), a failure of a whole turn is logged
and the thread goes on with a fresh selector, and a thread that keeps failing disconnects every
attached process (each call raises ``OwnerGone`` instead of waiting for ever) and ends, so that
objects made afterwards get a new one.  The failures are injected into the broker's methods;
everything else (the forked children, their requests, the replies) is real.
"""

from __future__ import annotations

import logging
import multiprocessing

import pytest
from proctable import eventually

from remoteproc import Lock, Queue, owned

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")]

fork = multiprocessing.get_context("fork")
WAIT = 20.0     # bound of every wait that must succeed


def _client(q, lock, ctl) -> None:
    """Forked child: one round of requests per word from ``ctl``; says how each went."""
    while True:
        try:
            word = ctl.recv()
        except EOFError:
            return
        if word == "stop":
            return
        try:
            with lock:              # (a request with a reply: an owner gone shows here)
                q.put((word, 1))
            q.put((word, 2))
            ctl.send("ok")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            ctl.send(type(exc).__name__)


class _Child:
    """A forked client of ``q`` and ``lock``, driven round by round."""

    def __init__(self, q, lock) -> None:
        self.q = q
        self.ctl, theirs = fork.Pipe()
        self.proc = fork.Process(target=_client, args=(q, lock, theirs))
        self.proc.start()
        theirs.close()

    def round(self, word: str) -> str:
        self.ctl.send(word)
        assert self.ctl.poll(WAIT), "the child's requests got no answer in %ss" % WAIT
        return self.ctl.recv()

    def served(self, word: str) -> None:
        assert self.round(word) == "ok"
        assert [self.q.get(timeout=WAIT) for _ in range(2)] == [(word, 1), (word, 2)]

    def end(self) -> None:
        try:
            self.ctl.send("stop")
        except OSError:
            pass
        self.proc.join(WAIT)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(WAIT)


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "remoteproc" and r.levelno >= logging.ERROR]


def _fail_turns(monkeypatch, count: int) -> dict:
    """From now on the server thread's next ``count`` turns raise; then they run as before."""
    real = owned._Broker._turn
    seen = {"failed": 0}

    def turn(self):
        if seen["failed"] < count:
            seen["failed"] += 1
            raise OSError("injected: a turn of the server thread failed")
        return real(self)

    monkeypatch.setattr(owned._Broker, "_turn", turn)
    owned._get_broker().wake()      # (the turn under way ends; the next ones fail)
    return seen


def test_a_failed_turn_is_logged_and_serving_goes_on(monkeypatch, caplog):
    q, lock = Queue(), Lock()
    child = _Child(q, lock)
    try:
        child.served("before")
        seen = _fail_turns(monkeypatch, 2)
        assert eventually(lambda: seen["failed"] == 2, WAIT)
        child.served("after")
        assert owned._broker_running()
        errors = _errors(caplog)
        assert len(errors) == 2 and all("server thread (remoteproc-queues) failed" in e for e in errors), errors
    finally:
        child.end()


@pytest.mark.parametrize("drop_fails", [False, True], ids=["dropped", "drop-fails-too"])
def test_a_thread_that_keeps_failing_disconnects_everyone_and_a_new_one_serves_new_objects(monkeypatch, caplog,
                                                                                          drop_fails):
    q, lock = Queue(), Lock()
    child = _Child(q, lock)
    later = None
    try:
        child.served("before")
        if drop_fails:
            def drop(self, conn):
                raise RuntimeError("injected: dropping a Connection failed")

            monkeypatch.setattr(owned._Broker, "drop", drop)
        seen = _fail_turns(monkeypatch, 3)
        assert eventually(lambda: not owned._broker_running(), WAIT), "the failing thread did not end"
        assert seen["failed"] == 3
        assert child.round("after") == "OwnerGone"      # not a wait for ever
        assert any("keeps failing" in e for e in _errors(caplog)), _errors(caplog)
        assert any("dropping a Connection failed" in e for e in _errors(caplog)) == drop_fails
        monkeypatch.undo()
        # objects given to a process afterwards are served by a new thread
        q2, lock2 = Queue(), Lock()
        later = _Child(q2, lock2)
        later.served("new")
        assert owned._broker_running()
    finally:
        child.end()
        if later is not None:
            later.end()


@pytest.mark.parametrize("drop_fails", [False, True], ids=["dropped", "drop-fails-too"])
def test_a_failure_serving_one_connection_drops_only_that_one(monkeypatch, caplog, drop_fails):
    victim_q, victim_lock = Queue(), Lock()
    q, lock = Queue(), Lock()
    victim, other = _Child(victim_q, victim_lock), _Child(q, lock)
    try:
        victim.served("before")
        other.served("before")
        real_serve, real_drop = owned._Broker._serve, owned._Broker.drop
        lines = owned._get_broker().attached(victim_lock)     # (the other child has one too: forked)

        def serve(self, conn, readable=True):
            if self.objs.get(conn) is victim_lock:
                raise RuntimeError("injected: serving this Connection failed")
            return real_serve(self, conn, readable)

        def drop(self, conn):
            if self.objs.get(conn) is victim_lock:
                raise RuntimeError("injected: dropping this Connection failed")
            return real_drop(self, conn)

        monkeypatch.setattr(owned._Broker, "_serve", serve)
        if drop_fails:
            monkeypatch.setattr(owned._Broker, "drop", drop)
        assert victim.round("after") == "OwnerGone"
        other.served("after")
        assert owned._broker_running()
        errors = _errors(caplog)
        assert any("it is dropped" in e for e in errors), errors
        assert any("dropping that Connection failed too" in e for e in errors) == drop_fails, errors
        assert owned._get_broker().attached(victim_lock) == lines - 1
    finally:
        monkeypatch.undo()
        victim.end()
        other.end()
