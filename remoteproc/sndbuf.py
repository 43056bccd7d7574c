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

from .agent.mux import SEND_BUFFER, widen_send_buffer

log = logging.getLogger("remoteproc")

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_UDIAG_SHOW_PEER = 4
_UNIX_DIAG_PEER = 2
_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_MAX_SCAN = 1024            # fds looked at (1-2 us each) when the peer is not next to the end we were given

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


def fd_of(inode: int, near: int) -> Optional[int]:
    """This process's fd for the socket ``inode``: first next to ``near`` (``Pipe()`` makes its two
    ends one after the other), then among all fds."""
    for fd in (near - 1, near + 1):
        if fd >= 0 and _is_socket(fd, inode):
            return fd
    name = "socket:[%d]" % inode
    try:
        with os.scandir("/proc/self/fd") as entries:
            for count, entry in enumerate(entries):
                if count >= _MAX_SCAN:
                    break
                try:
                    if os.readlink(entry.path) == name and _is_socket(int(entry.name), inode):
                        return int(entry.name)
                except (OSError, ValueError):
                    continue
    except OSError:
        pass
    return None


def widen_peer(fd: int) -> None:
    """Widen the send buffer of the other end of the Unix socket ``fd`` if this process holds it
    (never narrowing one that someone made larger)."""
    inode = peer_inode(fd)
    peer = fd_of(inode, fd) if inode is not None else None
    if peer is None:
        return
    sock = socket.socket(fileno=peer)
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= SEND_BUFFER:
            return
    except OSError:
        return
    finally:
        sock.detach()
    widen_send_buffer(peer)
