"""The agent's channel over paramiko: an exec channel on a pooled SSH connection.

The relay's first transport.  ``ParamikoOpener`` owns the relay's connection pool
(``ssh/pool.py``); each ``ParamikoChannel`` holds one reference to its connection and
gives it back when closed, so the connection closes with its last channel.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from ..errors import BootstrapError, describe
from ..ssh.pool import ConnectionPool
from ..ssh.target import Target
from .channel import AgentChannel, AgentOpener, ChannelLost


class _WakingCondition(threading.Condition):
    """paramiko notifies this when the send window opens: call the link's wake-up too."""

    def __init__(self, lock: Any, wake: Callable[[], None]) -> None:
        super().__init__(lock)
        self._wake = wake

    def notify_all(self) -> None:
        super().notify_all()
        self._wake()


class ParamikoChannel(AgentChannel):
    """A paramiko ``Channel`` running the agent's command, made non-blocking."""

    def __init__(self, chan: Any, conn: Any, pool: ConnectionPool, connect_ms: float) -> None:
        self.chan = chan
        self.conn = conn
        self.pool: Optional[ConnectionPool] = pool
        self.connect_ms = connect_ms
        chan.settimeout(0.0)

    def fileno(self) -> int:
        return self.chan.fileno()

    def on_writable(self, callback: Callable[[], None]) -> None:
        self.chan.out_buffer_cv = _WakingCondition(self.chan.lock, callback)

    def recv(self, limit: int) -> Optional[bytes]:
        chan = self.chan
        if not (chan.recv_ready() or chan.eof_received or chan.closed):
            return None
        try:
            return chan.recv(limit)
        except TimeoutError:
            return None

    def recv_stderr(self) -> bytes:
        got = b""
        while self.chan.recv_stderr_ready():
            got += self.chan.recv_stderr(65536)
        return got

    def send(self, data: memoryview) -> int:
        try:
            n = self.chan.send(data)
        except TimeoutError:
            return 0        # the window is shut; _WakingCondition calls back when it opens
        except (OSError, EOFError) as exc:      # (paramiko raises EOFError once its socket is gone)
            raise ChannelLost("sending failed: %s" % describe(exc)) from None
        if n == 0:
            raise ChannelLost("the channel closed")
        return n

    def exit_status(self) -> Optional[int]:
        return self.chan.exit_status if self.chan.exit_status_ready() else None

    def describe_loss(self) -> str:
        status = self.exit_status()
        if status is not None and status != -1:
            return "the remote agent exited with status %d" % status
        if self.conn.transport.is_active():
            return "the remote agent's channel closed (agent killed?)"
        return "the SSH connection closed"

    def details(self) -> str:
        return "connected in %.0f ms, cipher %s" % (self.connect_ms, self.conn.transport.remote_cipher)

    def close(self) -> None:
        self.chan.close()
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.release(self.conn)


class ParamikoOpener(AgentOpener):
    """Exec channels on the relay's pooled paramiko connections."""

    def __init__(self) -> None:
        self.pool = ConnectionPool()

    def open(self, target: Target, command: Callable[[], str]) -> AgentChannel:
        t0 = time.monotonic()
        conn = self.pool.acquire(target)
        connect_ms = (time.monotonic() - t0) * 1e3
        try:
            chan = conn.transport.open_session(timeout=target.connect_timeout)
        except Exception as exc:
            self.pool.release(conn)
            raise BootstrapError("%s: the server refused a session channel: %s. Check MaxSessions in "
                                 "its sshd_config." % (target.display, describe(exc)), target.display) from None
        try:
            chan.exec_command(command())
        except BaseException:
            chan.close()
            self.pool.release(conn)
            raise
        return ParamikoChannel(chan, conn, self.pool, connect_ms)

    def close(self) -> None:
        self.pool.close_all()
