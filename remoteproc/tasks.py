"""What the scheduler sends a pool worker and what comes back, as the caller sees it.

A *job* (``Job``) is whatever a chunk's results go to: a Pool result object, an
Executor future.  A ``Chunk`` is one task message (calls ``start`` to
``start + n - 1`` of a job), framed once per Python mode of the pool's workers.
A task's failure comes back as its exception with the remote traceback as
``__cause__``; a worker that dies or is lost under a task fails it with
``WorkerDiedError`` or ``WorkerLostError`` (``BrokenProcessPool`` too, as
``ProcessPoolExecutor`` says it).
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import struct
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.process import _RemoteTraceback as _FuturesRemoteTraceback
from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]  # (not in typeshed)
from typing import Protocol

from .errors import ConnectionLostError, RemoteProcessError
from .workers import Worker

_chunk_ids = itertools.count(1)


class Job(Protocol):
    """What a chunk's results go to: a Pool result object or an Executor future's job."""

    def _dispatching(self) -> bool:
        """A chunk of this job goes to a worker now; False: the job was cancelled, drop the chunk."""

    def _set(self, start: int, all_ok: bool, data: list) -> None:
        """Results of calls ``start`` on: the values if ``all_ok``, else ``(ok, value or exception)`` pairs."""


def frame(data: bytes) -> bytes:
    """The bytes ``Connection.send_bytes(data)`` writes: the worker reads them with recv_bytes."""
    return frame_header(len(data)) + data


def frame_header(n: int) -> bytes:
    """What ``Connection.send_bytes`` writes before ``n`` bytes of data."""
    if n > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, n)
    return struct.pack("!i", n)


class Chunk:
    """One task message: calls ``start`` to ``start + n - 1`` of a job, framed for the worker's recv_bytes."""

    __slots__ = ("cid", "job", "start", "n", "mode", "data", "source", "tries", "blobs")

    def __init__(self, job: Job, start: int, n: int, mode: int, fbytes: dict[str, bytes],
                 abytes: dict[str, bytes], source: tuple[object, list[object]] | None = None) -> None:
        self.cid = next(_chunk_ids)
        self.job = job
        self.start = start
        self.n = n
        self.mode = mode
        # one message per Python mode of the pool's workers (docs/python-versions.md)
        self.data: dict[str, bytes] = {}
        for m in fbytes:
            if m in abytes:     # (imap's function was pickled before its workers' modes changed)
                self.add(m, fbytes[m], abytes[m])
        #: (function, arguments) as given, for a worker of a Python mode the chunk has no message for
        #: yet (a host that came back from a lost connection running another Python); None once sent
        #: without retries
        self.source = source
        self.tries = 0          # sends so far; a chunk that retries keeps its data until its result
        #: large buffers its arguments refer to by key (the joblib backend's shared arguments): each
        #: goes to a worker before its first chunk that needs it, and stays there (``Worker.blobs``)
        self.blobs: dict[str, memoryview] | None = None

    def add(self, m: str, fbytes: bytes, abytes: bytes) -> bytes:
        """Add (and return) the message for workers of Python mode ``m``."""
        data = self.data[m] = frame(pickle.dumps(("task", self.cid, self.mode, fbytes, abytes),
                                                 pickle.HIGHEST_PROTOCOL))
        return data


class WorkerDiedError(RemoteProcessError, BrokenProcessPool):
    """A pool worker died (killed, crashed, ``os._exit``) while it ran this task."""


class WorkerLostError(ConnectionLostError, BrokenProcessPool):
    """The connection to a pool worker's host was lost while the worker ran this task."""


class ResultUnpicklingError(RemoteProcessError, BrokenProcessPool):
    """A task's result arrived but cannot be unpickled here."""


ExecutorTraceback = _FuturesRemoteTraceback     # the Executor's remote traceback, as ProcessPoolExecutor's


def task_error(w: Worker, err: tuple[bytes | None, str, str], tb_class: type = RemoteTraceback) -> BaseException:
    """An exception as the worker sent it, with the remote traceback as ``__cause__``."""
    blob, text, summary = err
    exc = None
    why = ""
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except BaseException as e:  # even SystemExit: that task's, not the manager thread's (as a result's)
            why = ": rebuilding it here raised %s" % type(e).__name__
            with contextlib.suppress(Exception):
                why += ": %s" % e
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteProcessError("a task on %s raised %s (the exception could not be sent back as "
                                 "an object%s)" % (w.host, summary, why), w.host)
    exc.__cause__ = tb_class('\n"""\nOn host %s, pool worker pid %s:\n%s"""' % (w.host, w.pid, text))
    return exc
