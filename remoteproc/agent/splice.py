"""Bulk stream bytes moved between a pipe and another fd inside the kernel (Linux ``splice``).

Between the user's Connection and ssh, every byte crosses the relay and the agent.
Reading it into Python and writing it out again is two copies and a few Python steps
per read: most of those two processes' CPU per megabyte, on machines where ssh and
sshd need the same cores.  Where the channel is a pipe (the openssh transport's pipes
to ``ssh`` locally; sshd's pipes on the host) and the kernel has splice(2), a DATA
frame's payload goes from its stream to the channel through a private spool pipe,
and from the channel to its stream, without entering Python (see ``endpoint.py``).

Never blocking is the rule: a pipe side is non-blocking (SPLICE_F_NONBLOCK), but a
socket we may not make non-blocking (the user's own, in the relay) is only given what
its send buffer has room for.  Anything not possible here falls back to read and write.
"""

import os
import socket
import stat
import struct

try:
    import fcntl
except ImportError:     # (not a Unix: nothing here is used)
    fcntl = None  # type: ignore[assignment]

#: os.splice exists (Linux, Python 3.10+); elsewhere every move takes the read/write path
_splice = getattr(os, "splice", None)
AVAILABLE = _splice is not None and fcntl is not None
NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
SIOCOUTQ = 0x5411           # bytes a socket has sent and its peer not yet read (Linux's TIOCOUTQ)
SPOOL_SIZE = 1 << 20        # what the spool pipe holds (Linux's default is 64 KiB)
MIN_MOVE = 8 << 10          # below this, read and write cost no more than splice


def is_pipe(fd) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def move(src: int, dst: int, count: int) -> int:
    """Move up to ``count`` bytes from ``src`` to ``dst`` (one of them a pipe); 0 at the end of
    ``src``.  BlockingIOError when a pipe side cannot go on now."""
    return _splice(src, dst, count, flags=NONBLOCK)  # type: ignore[misc]


def socket_room(sock) -> int:
    """Bytes ``sock`` takes without blocking: its send buffer less what its peer has not read.

    Half of the difference, since the kernel counts each buffer's bookkeeping against
    the limit too; a blocking socket would put the whole event loop to sleep."""
    try:
        limit = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0
    return max(0, (limit - queued) // 2)


class Spool:
    """A private pipe between a stream and the channel: what a splice took from the stream
    is known exactly (its DATA header can then go first) and nobody else can read it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        for fd in (self.r, self.w):
            os.set_blocking(fd, False)
        try:
            fcntl.fcntl(self.w, getattr(fcntl, "F_SETPIPE_SZ", 1031), SPOOL_SIZE)
        except OSError:
            pass
        try:
            self.size = fcntl.fcntl(self.w, getattr(fcntl, "F_GETPIPE_SZ", 1032))
        except OSError:
            self.size = 1 << 16
        self.held = 0       # bytes in the pipe, not yet moved on

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.r = self.w = -1
