"""The standard fds 0-2 of a process that was started with some of them closed.

Such a process (``prog >&-``, a daemon) makes its next fd with the lowest free number, so a
socket or pipe can take the place of stdout.  Output meant for stdout (a remote child's, a
ProxyCommand's stderr, the relay's own clean-up that points fds 1 and 2 at /dev/null) then
lands in that socket.  The helpers keep the two apart, as OpenSSH's sanitise_stdfd() does.
"""

from __future__ import annotations

import fcntl
import os


def sanitise() -> None:
    """Put /dev/null on each of the fds 0-2 that is closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def above(fd: int) -> int:
    """``fd``, or a copy of it numbered 3 or more (and the original closed) if it took the
    place of a closed fd 0-2."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved
