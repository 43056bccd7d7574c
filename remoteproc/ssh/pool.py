"""The connection pool: shared, reference-counted SSH connections per ``Target.conn_key``.

Usually one connection per key.  A server caps the session channels of one connection
(OpenSSH's ``MaxSessions``, 10 by default), and each agent is a session: the relay then
asks for the key's next *slot*, another connection to the same place with the same
credentials and route (``relay/paramiko_channel.py`` decides when).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from ..errors import RemoteProcessError
from .connect import SSHConnection, connect, open_jump
from .target import Target


class _Entry:
    __slots__ = ("lock", "conn", "refs", "attempts", "failure")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: SSHConnection | None = None
        self.refs = 0
        #: connection attempts ended, and the last one's error (None: it succeeded)
        self.attempts = 0
        self.failure: RemoteProcessError | None = None


class ConnectionPool:
    """Shared, reference-counted connections per ``Target.conn_key`` and slot (thread-safe).

    ``acquire`` and ``release`` pair up; a connection closes when its last user
    releases it, and a jump host's connection when the last connection through it
    closes.  A connection found dead is replaced for the next user.  Slot 0 is the
    connection everyone shares; slot N > 0 is an N-th connection of the same key, for
    sessions the first ones' server refused (jump hosts: always slot 0).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], _Entry] = {}

    def acquire(self, target: Target, slot: int = 0) -> SSHConnection:
        key = target.conn_key + (slot,)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.refs += 1
            ended = entry.attempts
        try:
            with entry.lock:
                conn = entry.conn
                if conn is not None and conn.suspect:
                    # a link on it was lost for want of an answer: the network may have dropped it
                    # unseen, and a start moved off that link must not land on it again
                    conn.suspect = not conn.answers(target.answer_wait)
                    if conn.suspect:
                        conn.close()        # (its other agents are as unreachable)
                if conn is None or not conn.active:
                    if entry.attempts != ended and entry.failure is not None:
                        # An attempt that ended while we waited for it failed: that is our answer
                        # too.  Trying again ourselves, one waiter after another, made eight hosts
                        # behind a bastion that does not answer fail in 8 x connect_timeout.
                        raise copy.copy(entry.failure)
                    entry.conn = None
                    if conn is not None:
                        self._close(conn)
                    try:
                        conn = entry.conn = self._open(target)
                    except RemoteProcessError as exc:
                        entry.failure = exc
                        raise
                    else:
                        entry.failure = None
                    finally:
                        entry.attempts += 1
                    conn.slot = slot
                return conn
        except BaseException:
            self._unref(key, entry)
            raise

    def _open(self, target: Target) -> SSHConnection:
        jump = open_jump(target, self.acquire) if target.jump is not None else None
        try:
            return connect(target, jump)
        except BaseException:
            if jump is not None:
                self.release(jump)
            raise

    def release(self, conn: SSHConnection) -> None:
        key = conn.target.conn_key + (conn.slot,)
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:       # pragma: no cover - released twice, or after close_all
            conn.close()
            return
        self._unref(key, entry)

    def _unref(self, key: tuple[Any, ...], entry: _Entry) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.refs > 0 or self._entries.get(key) is not entry:
                return
            del self._entries[key]
            conn, entry.conn = entry.conn, None
        if conn is not None:
            self._close(conn)

    def _close(self, conn: SSHConnection) -> None:
        conn.close()
        if conn.jump is not None and not conn.owns_jump:
            self.release(conn.jump)

    def count(self) -> int:
        """How many connections are open (for tests and diagnostics)."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.conn is not None and e.conn.active)

    def close_all(self) -> None:
        with self._lock:
            conns = [e.conn for e in self._entries.values() if e.conn is not None]
            self._entries.clear()
        for conn in conns:
            conn.close()
