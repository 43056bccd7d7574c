"""The send buffer of the user's end of a bridged Pipe, widened for a reader on another host.

A ``send()`` of a big message sleeps in the kernel until the reader has taken all of it
but the socket's send buffer (about 200 KiB by default).  A local child reads at memory
speed, so the sleep is short; the relay of a remote child reads at the link's speed.  In
a program with a busy Python thread the sleep costs more than itself: the sender gives up
the GIL for it and gets it back a switch interval (5 ms) later, so each message paid the
transfer and the interval one after the other.  With a buffer that holds the message
whole, ``send()`` returns once the kernel has copied it and the relay drains it meanwhile.

The user passes the child's end; the end they write to is its peer, which never passes
through our hands.  Linux names a Unix socket's peer (``sock_diag``, as ``ss -x`` asks),
and the peer is found among this process's fds.  Where any step is not available (not
Linux, no ``unix_diag``, the peer in another process) nothing changes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
from typing import Optional

log = logging.getLogger("remoteproc")

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_UDIAG_SHOW_PEER = 4
_UNIX_DIAG_PEER = 2
_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_MAX_SCAN = 1024            # fds looked at when the peer is not next to the end we were given
#: asked for the user's end: Linux doubles it (4 MiB, which holds a 1 MiB message whole), and caps
#: it at twice net.core.wmem_max
PEER_BUFFER = 2 << 20

#: errors of this moment (out of fds or memory), after which sock_diag is asked again next time
_NOW_ONLY = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN, errno.EINTR)

_unavailable = False        # sock_diag failed once (no netlink, no unix_diag): not asked again


def peer_inode(fd: int) -> Optional[int]:
    """The inode of the peer of the connected Unix socket ``fd``, or None where Linux does not say."""
    global _unavailable
    if _unavailable or not hasattr(socket, "AF_NETLINK"):
        return None
    request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, _ALL_STATES, os.fstat(fd).st_ino,
                          _UDIAG_SHOW_PEER, _NOCOOKIE, _NOCOOKIE)
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.send(header + request)
            reply = nl.recv(4096, socket.MSG_DONTWAIT)     # (the kernel answers within send())
    except OSError as exc:
        if exc.errno not in _NOW_ONLY:
            _unavailable = True
            log.debug("no sock_diag here (%s): bridged Pipes keep their send buffers", exc)
        return None
    return _peer_attribute(reply)


def _peer_attribute(reply: bytes) -> Optional[int]:
    """UNIX_DIAG_PEER of a sock_diag answer (an error answer, e.g. a socket gone, has none)."""
    if len(reply) < 32:
        return None
    length, kind = struct.unpack_from("=IH", reply)
    if kind != _SOCK_DIAG_BY_FAMILY:
        return None
    end, pos = min(length, len(reply)), 32          # (after nlmsghdr and unix_diag_msg)
    while pos + 4 <= end:
        size, attr = struct.unpack_from("=HH", reply, pos)
        if size < 4:
            return None
        if attr == _UNIX_DIAG_PEER and size >= 8:
            return struct.unpack_from("=I", reply, pos + 4)[0] or None
        pos += (size + 3) & ~3
    return None


def _is_socket(fd: int, inode: int) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_ino == inode


def _made_here(fd: int) -> bool:
    """Whether the Unix socket ``fd``'s peer was made by this process (``SO_PEERCRED``): a
    ``Pipe()`` of ours; a connection accepted from another program has that program's pid, and
    its peer is not among our fds to look for."""
    sock = socket.socket(fileno=fd)
    try:
        cred = sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_PEERCRED", 17), struct.calcsize("3i"))
    except OSError:
        return True         # (cannot tell: look)
    finally:
        sock.detach()
    return struct.unpack("3i", cred)[0] in (0, os.getpid())


def fd_of(inode: int, near: int) -> Optional[int]:
    """This process's fd for the socket ``inode``: first next to ``near`` (``Pipe()`` makes its two
    ends one after the other), then among all fds (fstat of each: 1 us)."""
    for fd in (near - 1, near + 1):
        if fd >= 0 and _is_socket(fd, inode):
            return fd
    if not _made_here(near):
        return None
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in names[:_MAX_SCAN]:
        try:
            fd = int(name)
        except ValueError:
            continue
        if _is_socket(fd, inode):
            return fd
    return None


def _system_default() -> Optional[int]:
    """What a new socket's SO_SNDBUF is (net.core.wmem_default), or None where it cannot be read."""
    try:
        with open("/proc/sys/net/core/wmem_default") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def widen_peer(fd: int) -> None:
    """Widen the send buffer of the other end of the Unix socket ``fd`` if this process holds it
    and it is still the system's default: a buffer someone chose, larger or smaller, stays.
    Never raises: a start does not fail for want of a larger buffer (another thread may close
    either end meanwhile)."""
    try:
        _widen_peer(fd)
    except OSError as exc:
        log.debug("the send buffer of fd %d's peer stays as it is: %s", fd, exc)


def _widen_peer(fd: int) -> None:
    inode = peer_inode(fd)
    if inode is None:
        return
    peer = fd_of(inode, fd)
    if peer is None:
        return
    try:
        # (a copy of our own: another thread may close the user's fd meanwhile, and its number go
        # to another file, which must not be touched)
        mine = os.dup(peer)
    except OSError:
        return
    try:
        if not _is_socket(mine, inode):
            return
        sock = socket.socket(fileno=mine)
        try:
            now = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            default = _system_default()
            chosen = now != default if default is not None else now >= 2 * PEER_BUFFER
            if chosen:
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PEER_BUFFER)
        except OSError:
            return
        finally:
            sock.detach()
    finally:
        os.close(mine)
