"""Messages between the user's process and its relay process.

Each message is a pickle preceded by its length and the number of file
descriptors that travel with it (SCM_RIGHTS on a Unix socketpair: no listening
socket, no path in the file system).  Both ends are this library in processes of
the same user, so pickle is safe here.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from collections import deque
from typing import Any, Sequence

_HEAD = struct.Struct("!II")
MAX_FDS = 253           # SCM_MAX_FD on Linux


def send(sock: socket.socket, obj: Any, fds: Sequence[int] = ()) -> None:
    """Send one message (blocking); the caller serialises concurrent senders.

    The fds ride on the message's first bytes, at most MAX_FDS on each (a process may carry
    more Connections than one sendmsg can: the receiver waits until all of them are there)."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = _HEAD.pack(len(body), len(fds)) + body
    fds = list(fds)
    sent = 0
    for i in range(0, len(fds), MAX_FDS):
        sent += socket.send_fds(sock, [data[sent:sent + 1]], fds[i:i + MAX_FDS])
    sock.sendall(data[sent:])


class Receiver:
    """Reassembles messages (and their fds) from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: deque = deque()

    def _parse(self):
        if len(self.buf) < _HEAD.size:
            return None
        n, nfds = _HEAD.unpack_from(self.buf)
        if len(self.buf) < _HEAD.size + n or len(self.fds) < nfds:
            return None
        obj = pickle.loads(self.buf[_HEAD.size:_HEAD.size + n])
        del self.buf[:_HEAD.size + n]
        return obj, [self.fds.popleft() for _ in range(nfds)]

    def _fill(self) -> bool:
        """One recvmsg; False at end of stream.  Raises BlockingIOError if nothing is there."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, MAX_FDS)
        self.fds.extend(fds)
        if not data:
            return False
        self.buf += data
        return True

    def recv(self):
        """Block until a whole message arrived: ``(obj, fds)``; EOFError at the end."""
        while True:
            msg = self._parse()
            if msg is not None:
                return msg
            if not self._fill():
                raise EOFError("the relay socket closed")

    def __iter__(self):
        """Every message, blocking, until the other end closes (or the socket fails)."""
        while True:
            try:
                yield self.recv()
            except (EOFError, OSError):
                return

    def recv_ready(self):
        """Non-blocking socket: ``(messages available now, True if the peer closed)``."""
        eof = False
        while True:
            try:
                if not self._fill():
                    eof = True
                    break
            except (BlockingIOError, InterruptedError):
                break
        out = []
        msg = self._parse()
        while msg is not None:
            out.append(msg)
            msg = self._parse()
        return out, eof



def refuse(status: socket.socket, fds: Sequence[int], exc: Exception) -> None:
    """Answer a start request with an error, and let go of everything it brought."""
    try:
        send(status, ("error", type(exc).__name__, str(exc)))
    except OSError:
        pass            # nobody is listening any more
    status.close()
    for fd in fds:
        os.close(fd)
