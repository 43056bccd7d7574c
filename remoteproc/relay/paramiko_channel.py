"""The agent's channel over paramiko: an exec channel on a pooled SSH connection.

The relay's first transport.  ``ParamikoOpener`` owns the relay's connection pool
(``ssh/pool.py``); each ``ParamikoChannel`` holds one reference to its connection and
gives it back when closed, so the connection closes with its last channel.

paramiko encrypts in the thread that sends, in Python: about 2 ms per MB.  Done in the
link's thread, that would keep the link from reading the user's sockets meanwhile, and a
parent's 1 MiB ``send()`` would take as long as its encryption.  So a big send is handed to
a sender thread of the channel's own (``_Sender``) and the link goes on; small ones, with
nothing waiting before them, are sent at once, so a round trip costs no thread switch.

Each agent is a session channel, and a server caps them per connection (OpenSSH's
``MaxSessions``, 10 by default): more agents on one host than that (other ``setup=``,
``python=`` or ``cache_size=`` values) would be refused.  When the server refuses a
session on a connection where agents of ours run, ``ParamikoOpener`` goes on with
another connection of the same key (``ssh/pool.py``'s slots), as separate ``ssh``
commands would; it learns the limit, so later agents go straight to a connection with
room.  A refusal on a connection with none of ours is the server's answer for the host:
an error that names ``MaxSessions``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from ..errors import AGENT_GONE, ENDED, BootstrapError, describe, jump_lost
from ..ssh.auth import forward_agent
from ..ssh.pool import ConnectionPool
from ..ssh.target import Target
from .channel import AgentChannel, AgentOpener, ChannelLost

log = logging.getLogger("remoteproc")


class _WakingCondition(threading.Condition):
    """paramiko notifies this when the send window opens: call the link's wake-up too."""

    def __init__(self, lock: Any, wake: Callable[[], None]) -> None:
        super().__init__(lock)
        self._wake = wake

    def notify_all(self) -> None:
        super().notify_all()
        self._wake()


def lost_jump(conn: Any) -> Any:
    """The jump host connection of ``conn``'s route that closed, the one nearest to us (where a
    chain broke first), or None: a connection through a jump host ends when the jump's does."""
    found = None
    jump = getattr(conn, "jump", None)
    while jump is not None:
        if not jump.active:
            found = jump
        jump = jump.jump
    return found


def _send_failed(exc: BaseException) -> str:
    """Why a send failed: paramiko's socket is gone (a killed sshd, a jump host's connection lost)."""
    return "the SSH connection closed (sending failed: %s; %s)" % (describe(exc), ENDED)


INLINE_MAX = 64 << 10       # a send this small, with nothing queued, goes out in the caller's thread
QUEUE_MAX = 4 << 20         # what the sender thread may hold (the link's flow control beyond that)
WINDOW_WAIT = 1.0           # the sender's wait for the SSH window before it looks again
STATUS_WAIT = 2.0           # after the channel's end, the wait for the agent's exit status
STDERR_READ = 256 << 10     # what one look at the channel's stderr takes at most


class _Sender(threading.Thread):
    """Sends what the link queued, in order, blocking on the SSH window as paramiko does."""

    def __init__(self, chan: Any, wake: Callable[[], None]) -> None:
        super().__init__(name="remoteproc-paramiko-send", daemon=True)
        self.chan = chan
        self.wake = wake            # the link's: the queue has room again, or sending failed
        self.cv = threading.Condition()
        self.queue: deque[bytes] = deque()
        self.queued = 0             # bytes in the queue
        self.busy = False           # a piece taken from the queue is still being sent
        self.window = threading.Event()     # paramiko says its send window opened
        self.error: Optional[str] = None
        self.closed = False

    def put(self, data: memoryview) -> int:
        """Queue a prefix of ``data``; its length (0: the queue is full)."""
        with self.cv:
            n = min(len(data), QUEUE_MAX - self.queued)
            if n > 0:
                self.queue.append(bytes(data[:n]))      # (data views the link's buffer: copy it)
                self.queued += n
                self.cv.notify()
            return max(n, 0)

    def idle(self) -> bool:
        return not self.queued and not self.busy

    def run(self) -> None:
        while True:
            with self.cv:
                while not self.queue and not self.closed:
                    self.cv.wait()
                if self.closed:
                    return
                piece = self.queue.popleft()
                self.busy = True
                full = self.queued >= QUEUE_MAX // 2
                self.queued -= len(piece)
            try:
                self._send_all(memoryview(piece))
            except Exception as exc:  # noqa: BLE001 - (EOFError once paramiko's socket is gone, or
                # any other failure): the channel is lost either way, and the link must hear of it
                self.error = _send_failed(exc)
            with self.cv:
                self.busy = False
                if self.error is not None:
                    self.closed = True
            if self.error is not None or (full and self.queued < QUEUE_MAX // 2):
                self.wake()
            if self.error is not None:
                return

    def _send_all(self, view: memoryview) -> None:
        while view:
            self.window.clear()
            try:
                n = self.chan.send(view)
            except socket.timeout:     # (TimeoutError from 3.10 on; on 3.9 an OSError, not a TimeoutError)
                self.window.wait(WINDOW_WAIT)
                if self.closed:
                    return
                continue
            if n == 0:
                raise EOFError("the channel closed")
            view = view[n:]

    def stop(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()


class ParamikoChannel(AgentChannel):
    """A paramiko ``Channel`` running the agent's command, made non-blocking."""

    def __init__(self, chan: Any, conn: Any, pool: ConnectionPool, connect_ms: float,
                 on_close: Callable[[Any], None] = lambda conn: None) -> None:
        self.chan = chan
        self.conn = conn
        self.pool: Optional[ConnectionPool] = pool
        self.connect_ms = connect_ms
        self._on_close = on_close
        chan.settimeout(0.0)
        self._sender: Optional[_Sender] = None
        self._wake: Callable[[], None] = lambda: None

    def fileno(self) -> int:
        return self.chan.fileno()

    def on_writable(self, callback: Callable[[], None]) -> None:
        self._wake = callback
        self.chan.out_buffer_cv = _WakingCondition(self.chan.lock, self._window_opened)

    def _window_opened(self) -> None:
        sender = self._sender
        if sender is not None and not sender.idle():
            sender.window.set()     # (the sender sends what waits; it wakes the link when it may)
        else:
            self._wake()

    def recv(self, limit: int) -> Optional[bytes]:
        chan = self.chan
        if not (chan.recv_ready() or chan.eof_received or chan.closed):
            return None
        try:
            return chan.recv(limit)
        except socket.timeout:
            return None
        except (OSError, EOFError):
            # paramiko's recv sends the window adjustment itself, and raises EOFError when the
            # connection's socket is gone before its transport thread has said so (sshd killed
            # mid-transfer): that is the channel's end, which describe_loss explains
            return b""

    def recv_stderr(self) -> bytes:
        """What came on stderr since the last call, at most STDERR_READ bytes: a host that floods
        it (a login's startup file in a loop) cannot keep the caller here, nor in a copy of it all."""
        got = bytearray()
        while len(got) < STDERR_READ and self.chan.recv_stderr_ready():
            got += self.chan.recv_stderr(65536)
        return bytes(got)

    def send(self, data: memoryview) -> int:
        sender = self._sender
        if sender is not None:
            if sender.error is not None:
                raise ChannelLost(sender.error, self._ended())
            if not sender.idle() or len(data) > INLINE_MAX:
                return sender.put(data)
        elif len(data) > INLINE_MAX:
            # (the bootstrap sends before the link gives its wake-up: look it up when needed)
            self._sender = sender = _Sender(self.chan, lambda: self._wake())
            sender.start()
            return sender.put(data)
        try:
            n = self.chan.send(data)
        except socket.timeout:
            return 0        # the window is shut; _WakingCondition calls back when it opens
        except (OSError, EOFError) as exc:      # (paramiko raises EOFError once its socket is gone)
            raise ChannelLost(_send_failed(exc), self._ended()) from None
        if n == 0:
            raise ChannelLost("the channel closed", True)
        return n

    def _ended(self) -> bool:
        """The agent's side ended the channel (its EOF or close came) on a live connection: a send
        that fails then fails because the agent went, which its exit status and stderr explain."""
        chan = self.chan
        return bool(getattr(chan, "eof_received", False) or getattr(chan, "closed", False)) and \
            self.conn is not None and self.conn.transport.is_active()

    def exit_status(self) -> Optional[int]:
        return self.chan.exit_status if self.chan.exit_status_ready() else None

    def describe_loss(self) -> str:
        if self.conn.transport.is_active():
            # sshd sends the exit status after the output's EOF: wait for it (bounded, as the
            # openssh transport waits for ssh to exit), or the end is taken for a killed agent
            self.chan.status_event.wait(STATUS_WAIT)
        status = self.exit_status()
        if status is not None and status != -1:
            return "the remote agent exited with status %d" % status
        if self.conn.transport.is_active():
            return AGENT_GONE
        jump = lost_jump(self.conn)
        if jump is not None:
            return jump_lost(jump.target.display)
        return "the SSH connection closed (%s)" % ENDED

    def answers(self, timeout: float) -> bool:
        return self.conn.answers(timeout)

    def suspect(self) -> None:
        self.conn.suspect = True

    def details(self) -> str:
        extra = ", connection %d of this host" % (self.conn.slot + 1) if self.conn.slot else ""
        return "connected in %.0f ms, cipher %s%s" % (self.connect_ms, self.conn.transport.remote_cipher, extra)

    def close(self) -> None:
        if self._sender is not None:
            self._sender.stop()
            self._sender.window.set()
        try:
            self.chan.close()
        except Exception as exc:  # noqa: BLE001 - a dead transport (a jump host's socket closed) cannot send CLOSE
            log.debug("closing a channel of a lost connection: %s", describe(exc))
        pool, self.pool = self.pool, None
        if pool is not None:
            self._on_close(self.conn)
            pool.release(self.conn)


#: how long after one of our sessions closed sshd may still count it (until its agent has exited:
#: up to 2 s of cleaning up), so that a refusal then is the limit too
SESSION_LINGER = 5.0
#: at most this many connections per key (a bound on the search; sshd's default of 10 sessions
#: each makes that 640 agents on one host)
MAX_SLOTS = 64


class ParamikoOpener(AgentOpener):
    """Exec channels on the relay's pooled paramiko connections."""

    def __init__(self) -> None:
        self.pool = ConnectionPool()
        #: guards every connection's ``sessions``, ``opening`` and ``session_closed_at``, and ``limits``
        self.cond = threading.Condition()
        #: ``Target.conn_key`` -> the most session channels its server was seen to allow on one connection
        self.limits: dict[tuple[Any, ...], int] = {}

    def open(self, target: Target, command: Callable[[], str]) -> AgentChannel:
        t0 = time.monotonic()
        slot = 0
        while True:
            conn = self.pool.acquire(target, slot)
            with self.cond:
                limit = self.limits.get(target.conn_key)
                full = limit is not None and conn.sessions + conn.opening >= limit and slot + 1 < MAX_SLOTS
                if not full:
                    conn.opening += 1
            if full:
                self.pool.release(conn)
                slot += 1
                continue
            connect_ms = (time.monotonic() - t0) * 1e3
            if slot and not conn.sessions:
                log.debug("%s: agent on connection %d of this host (the others have as many sessions as the "
                          "server allows)", target.display, slot + 1)
            chan = self._open_session(conn, target)
            if chan is not None:
                break
            self.pool.release(conn)
            slot += 1
        try:
            if target.forward_agent:
                forward_agent(chan, target)
            chan.exec_command(command())
        except BaseException:
            chan.close()
            self._closed(conn)
            self.pool.release(conn)
            raise
        return ParamikoChannel(chan, conn, self.pool, connect_ms, self._closed)

    def _open_session(self, conn: Any, target: Target) -> Any:
        """A session channel on ``conn``; None when the server refused it there but another
        connection may have room (``conn`` holds other sessions of ours: MaxSessions)."""
        import paramiko

        try:
            chan = conn.transport.open_session(timeout=target.connect_timeout)
        except Exception as exc:
            # The server's CHANNEL_OPEN_FAILURE.  paramiko keeps it in one place per transport, so when
            # two opens fail at once one of them may get "Unable to open channel." (its connection
            # still up) instead of the ChannelException.
            refused = isinstance(exc, paramiko.ChannelException) or (
                isinstance(exc, paramiko.SSHException) and str(exc) == "Unable to open channel."
                and conn.transport.is_active())
            with self.cond:
                conn.opening -= 1
                self.cond.notify_all()
                if refused:
                    # Sessions opened at the same moment count: wait until the server has answered
                    # them too (it answers in order, within the timeout), then see what is open.
                    self.cond.wait_for(lambda: conn.opening == 0, target.connect_timeout)
                others = conn.sessions
                lingering = time.monotonic() - conn.session_closed_at < SESSION_LINGER
                if refused and others:
                    self.limits[target.conn_key] = max(self.limits.get(target.conn_key, 0), others)
            if refused and (others or lingering) and conn.slot + 1 < MAX_SLOTS:
                log.info("%s: the server refused another session channel on a connection with %d of ours (sshd's "
                         "MaxSessions, 10 by default); going on with connection %d to the host", target.display,
                         others, conn.slot + 2)
                return None
            self.pool.release(conn)
            raise BootstrapError("%s: the server refused a session channel: %s. Check MaxSessions in "
                                 "its sshd_config." % (target.display, describe(exc)), target.display) from None
        with self.cond:
            conn.opening -= 1
            conn.sessions += 1
            self.cond.notify_all()
        return chan

    def _closed(self, conn: Any) -> None:
        """One of ``conn``'s sessions closed (called before the channel lets go of the connection)."""
        with self.cond:
            conn.sessions -= 1
            conn.session_closed_at = time.monotonic()

    def close(self) -> None:
        self.pool.close_all()
