"""The byte stream between the relay and one remote agent, whatever carries it.

A transport gives the relay two things: an ``AgentOpener``, which reaches a target
and runs the agent's command there, and the ``AgentChannel`` it returns: the
command's stdin and stdout carrying frames, its stderr, and its exit status.  The
link (``link.py``) and the bootstrap (``bootstrap.py``) use nothing else, so a new
transport is one new module: ``paramiko_channel.py`` is the first.

A channel is driven from one thread, the link's, and never blocks: the link selects
on ``fileno()`` for input and, when a ``send`` fell short, either on
``writable_fileno()`` or on the wake-up the channel gives through ``on_writable``.
"""

from __future__ import annotations

import abc
import select
import time
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from ..errors import RemoteProcessError
    from ..ssh.target import Target


class ChannelLost(OSError):
    """The channel can carry nothing more; ``str()`` says why, in words for the user.

    ``ended``: the remote command's side ended it (the agent exited, or was killed), so
    ``describe_loss()`` and its stderr say why, better than the failed send does."""

    def __init__(self, message: str, ended: bool = False) -> None:
        super().__init__(message)
        self.ended = ended


class AgentChannel(abc.ABC):
    """The agent's command on one host: frames in and out, its stderr, its exit status."""

    #: the transport said that it logged in (``ssh``'s "Authenticated to", ``Target.says_login``)
    logged_in = False

    @abc.abstractmethod
    def fileno(self) -> int:
        """An fd that selects readable when ``recv`` has data or the stream has ended."""

    def writable_fileno(self) -> Optional[int]:
        """An fd that selects writable when ``send`` can take more, or None: then the
        channel calls the ``on_writable`` callback instead."""
        return None

    def pipe_fds(self) -> "tuple[Optional[int], Optional[int]]":
        """(read fd, write fd) when ``recv`` and ``send`` read and write local pipes: the link
        then reads and writes them itself, and moves bulk payloads with splice.  (None, None):
        go through ``recv`` and ``send``."""
        return None, None

    @abc.abstractmethod
    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback()``, from any thread, whenever ``send`` can take more after it
        fell short (a channel with a ``writable_fileno()`` may ignore this)."""

    @abc.abstractmethod
    def recv(self, limit: int) -> Optional[bytes]:
        """Up to ``limit`` bytes of the agent's output; ``b""`` once it has ended; None
        when nothing is there now."""

    @abc.abstractmethod
    def recv_stderr(self) -> bytes:
        """What the remote side wrote on stderr since the last call (``b""``: nothing)."""

    @abc.abstractmethod
    def send(self, data: memoryview) -> int:
        """Take a prefix of ``data`` without blocking and return its length (0: nothing
        fits now).  Raises ``ChannelLost`` once the channel can carry nothing more."""

    @abc.abstractmethod
    def exit_status(self) -> Optional[int]:
        """The remote command's exit status once it is known, else None; -1 if the
        command ended without one (its connection was cut, say)."""

    @abc.abstractmethod
    def describe_loss(self) -> str:
        """Why the stream ended, for the error users see (called after ``recv`` gave ``b""``, or a
        send raised ``ChannelLost`` with ``ended``).  It waits (bounded) for the command's exit
        status, after which ``recv_stderr`` has all it wrote."""

    def details(self) -> str:
        """A few words about the connection for the debug log (e.g. its cipher)."""
        return ""

    def answers(self, timeout: float) -> bool:
        """Whether the connection under the channel still carries anything (asked within ``timeout``),
        for a command that has said nothing for long: the network, or the host's startup files?
        (``ssh`` watches its own connection: ``ServerAliveInterval``.)"""
        return True

    def suspect(self) -> None:
        """The agent stopped answering: the connection is to prove it lives before it is used again
        (``ssh`` needs nothing: each agent is an ``ssh`` of its own, or a session of a master it checks)."""
        return None

    def startup_error(self, status: Optional[int]) -> Optional[RemoteProcessError]:
        """When the command ended before the agent's hello: the transport's own failure
        (host key, login, network) as a typed error, or None if the command itself failed."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """End the command (its agent then kills what it started) and let go of the
        connection; safe to call twice."""


class AgentOpener(abc.ABC):
    """One per transport in the relay process: reaches targets and runs commands there."""

    @abc.abstractmethod
    def open(self, target: Target, command: Callable[[], str]) -> AgentChannel:
        """Connect to ``target`` (or reuse a connection) and run ``command()`` there.

        ``command`` is called once the transport is ready for it (building it may take
        a while: it can overlap with connecting).  Raises ``RemoteProcessError``
        subclasses that name the host and the fix.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection (the relay is shutting down)."""


# -- blocking helpers for the bootstrap, before the link's loop takes over -------------------------

def _wait(fd: int, events: int, timeout: float) -> None:
    # poll, not select(): the relay raises its fd limit, and select() fails on fds >= 1024
    poller = select.poll()
    poller.register(fd, events)
    poller.poll(timeout * 1e3)


def wait_readable(chan: AgentChannel, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``chan`` to have input."""
    _wait(chan.fileno(), select.POLLIN, timeout)


def send_all(chan: AgentChannel, data: bytes, deadline: float) -> bool:
    """Send all of ``data`` by ``deadline`` (monotonic); False if the channel was lost or
    the time ran out."""
    view = memoryview(data)
    while view:
        try:
            n = chan.send(view)
        except ChannelLost:
            return False
        if n:
            view = view[n:]
            continue
        if time.monotonic() > deadline:
            return False
        fd = chan.writable_fileno()
        if fd is not None:
            _wait(fd, select.POLLOUT, 0.05)
        else:
            time.sleep(0.005)
    return True
