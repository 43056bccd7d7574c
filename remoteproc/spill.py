"""Where a process's pickle goes: memory while it is small, past 1 MiB an anonymous file.

A small pickle travels inside the start request and the agent's ``start`` frame.  A
big one (a large argument) is written, as the pickler produces it, into a file with
no name: a memfd (memory outside this process's heap), or a temporary file where
there is none.  The relay gets its fd and streams it to the host like a message
(``docs/how-it-works.md``, start-up), so this process holds the pickle once, and no
thread of ours has to feed it.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from typing import Any, Union

STREAM_AT = 1 << 20      # a bigger pickle streams to the host instead of riding in the start request


class Streamed:
    """A pickle too big for the start request: the file holding it, at offset 0."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _anonymous_file() -> int:
    try:
        return os.memfd_create("remoteproc-payload", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as f:
            return os.dup(f.fileno())


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


class Spill:
    """A file object for the pickler: bytes in memory, moved to an anonymous file once
    there are more than ``limit`` of them."""

    def __init__(self, limit: int = STREAM_AT) -> None:
        self.limit = limit
        self.buf: io.BytesIO | None = io.BytesIO()
        self.fd = -1
        self.size = 0

    def write(self, data: Any) -> int:
        view = pickle.PickleBuffer(data).raw()      # bytes, or a buffer of any shape the pickler passes
        n = len(view)
        if self.buf is not None and self.size + n > self.limit:
            self.fd = _anonymous_file()
            _write_all(self.fd, self.buf.getbuffer())
            self.buf = None
        if self.buf is not None:
            self.buf.write(view)
        else:
            _write_all(self.fd, view)
        self.size += n
        return n

    def result(self) -> Union[bytes, Streamed]:
        """The pickle: its bytes, or the file (which the caller then owns and closes)."""
        if self.buf is not None:
            return self.buf.getvalue()
        os.lseek(self.fd, 0, os.SEEK_SET)
        fd, self.fd = self.fd, -1
        return Streamed(fd, self.size)

    def discard(self) -> None:
        """Let go of the file, if there is one (the pickling failed)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.discard()
