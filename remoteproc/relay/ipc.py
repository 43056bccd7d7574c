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
        self.start = 0              # stream offset of buf[0]
        #: stream offsets of the bytes whose fds the kernel dropped (this process was out of
        #: open files: MSG_CTRUNC); the message holding one is returned with fds None
        self.truncated: list[int] = []

    def _parse(self):
        if len(self.buf) < _HEAD.size:
            return None
        n, nfds = _HEAD.unpack_from(self.buf)
        end = self.start + _HEAD.size + n
        if len(self.buf) < _HEAD.size + n:
            return None
        lost = [t for t in self.truncated if t < end]
        if not lost and len(self.fds) < nfds:
            return None
        obj = pickle.loads(self.buf[_HEAD.size:_HEAD.size + n])
        del self.buf[:_HEAD.size + n]
        self.start = end
        if lost:
            # Some of its fds never arrived; those of its chunks that did are its alone: close
            # them, never hand them to the next message.
            begin = end - _HEAD.size - n
            self.truncated = [t for t in self.truncated if t >= end]
            for i in range(0, nfds, MAX_FDS):   # (chunk i // MAX_FDS rides on byte begin + i // MAX_FDS)
                if begin + i // MAX_FDS not in lost:
                    for _ in range(min(MAX_FDS, nfds - i)):
                        os.close(self.fds.popleft())
            return obj, None
        return obj, [self.fds.popleft() for _ in range(nfds)]

    def _fill(self) -> bool:
        """One recvmsg; False at end of stream.  Raises BlockingIOError if nothing is there."""
        data, fds, flags, _addr = socket.recv_fds(self.sock, 1 << 16, MAX_FDS)
        if flags & socket.MSG_CTRUNC:
            for fd in fds:          # (a chunk arrives whole or not at all for its message)
                os.close(fd)
            self.truncated.append(self.start + len(self.buf))
        else:
            self.fds.extend(fds)
        if not data:
            return False
        self.buf += data
        return True

    def recv(self):
        """Block until a whole message arrived: ``(obj, fds)``; EOFError at the end.  ``fds`` is
        None when the kernel could not pass them (this process is out of open files)."""
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
