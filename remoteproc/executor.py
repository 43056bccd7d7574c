"""``remoteproc.Executor``: a ``concurrent.futures.Executor`` over the Pool's workers and placement."""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from concurrent import futures
from typing import Any, Callable, Iterable, Iterator

from .agent import worker
from .scheduler import Scheduler
from .tasks import ExecutorTraceback
from .workers import Hosts

__all__ = ["Executor"]


class _FutureJob:
    """One submitted call, as the pool's manager sees it."""

    __slots__ = ("future",)
    traceback_class = ExecutorTraceback     # the remote traceback, as ProcessPoolExecutor attaches it

    def __init__(self, future: futures.Future) -> None:
        self.future = future

    def _dispatching(self) -> bool:
        return self.future.set_running_or_notify_cancel()

    def _set(self, start: int, all_ok: bool, data: list) -> None:
        ok, value = (True, data[0]) if all_ok else data[0]
        self.future._remoteproc_executor = None  # type: ignore[attr-defined]  # (before its waiters wake)
        if self.future.done():
            return
        try:
            if ok:
                self.future.set_result(value)
            else:
                self.future.set_exception(value)
        except futures.InvalidStateError:
            pass        # (cancelled by the user since done(): when the pool fails them all, the rest go on)


def _forget_executor(future: futures.Future) -> None:
    """A done-callback: a future that is done (or cancelled) no longer keeps its Executor alive."""
    future._remoteproc_executor = None  # type: ignore[attr-defined]


class Executor(futures.Executor):
    """``concurrent.futures.Executor`` whose calls run on RemoteProcess workers spread over ``hosts``.

    ``hosts``, ``processes_per_host``, ``initializer``, ``initargs`` and the ssh
    options are those of ``remoteproc.Pool``; ``max_tasks_per_child`` is its
    ``maxtasksperchild``.  ``submit`` returns a ``concurrent.futures.Future`` (so
    ``as_completed`` and ``wait`` work); ``map`` takes ``timeout`` and ``chunksize``.
    A call that raises sets that exception on its future, with the remote traceback
    as ``__cause__``; a worker lost with its host fails only the futures it was
    running (``ConnectionLostError``), not the whole executor; with ``retries`` they run
    again elsewhere (so a call may run twice) and lost hosts are reconnected.
    """

    def __init__(self, hosts: Hosts, processes_per_host: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable = (), max_tasks_per_child: int | None = None, *, retries: int = 0,
                 _reconnect: bool = False, _threads: tuple | None = None, **ssh_options: Any) -> None:
        # (``_reconnect``, ``_threads``: the joblib backend's; see Scheduler and worker.limit_threads)
        if max_tasks_per_child is not None:     # (checked as ProcessPoolExecutor checks it, by its own name)
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._core = Scheduler(hosts, processes_per_host, initializer, initargs, max_tasks_per_child,
                               ssh_options, retries, may_have_children=True, reconnect=_reconnect,
                               threads=_threads)
        self._shutdown = False
        # held while a submission checks ``_shutdown`` and hands its chunk over (not while it pickles:
        # a big argument does not hold up ``shutdown``), as ProcessPoolExecutor's ``_shutdown_lock``
        self._shutdown_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._core.terminate, False)
        _wait_at_exit.add(self)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> futures.Future:
        return self._submit(fn, args, kwargs)

    def _submit(self, fn: Callable, args: tuple, kwargs: dict, blobs: dict[str, memoryview] | None = None
                ) -> futures.Future:
        """``submit``; ``blobs``: the large buffers the arguments refer to by key (``Chunk.blobs``,
        the joblib backend's shared arguments)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: futures.Future = futures.Future()
        job = _FutureJob(future)
        try:
            chunks = self._core.make_chunks(job, fn, worker.SUBMIT, [(args, kwargs)], 1)
        except Exception as exc:
            # Cannot be pickled: the future fails with it, as ProcessPoolExecutor's does.
            future.set_exception(exc)
            return future
        if blobs:
            chunks[0].blobs = blobs
        with self._shutdown_lock:
            # (again: a shutdown() while the arguments were pickled either comes after this call,
            # which then runs, or before it, which then raises, never the pool's "not running")
            if self._shutdown:
                self._core.wake()       # (its close() waited for this pickling: see make_chunks)
                raise RuntimeError("cannot schedule new futures after shutdown")
            # the Executor lives while a future of its is pending, as ProcessPoolExecutor finishes its
            # pending calls when collected: ``Executor(h).submit(f, 3).result()`` must not end its call.
            # Dropped when the future is done, cancelled too (a done-callback fires for either).
            future._remoteproc_executor = self  # type: ignore[attr-defined]
            future.add_done_callback(_forget_executor)
            self._core.submit(chunks)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = _chunks(zip(*iterables), chunksize)
        results = super().map(worker.process_chunk, itertools.repeat(fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            for chunk in self._core.cancel_pending():
                if isinstance(chunk.job, _FutureJob):
                    chunk.job.future.cancel()
        self._core.close()
        if wait:
            self._finalizer.detach()
            self._core.join()

    def _kill_running(self, fs: Iterable[futures.Future]) -> int:
        """Kill the workers that run only calls of ``fs`` (those calls fail with ``WorkerDiedError``;
        new workers replace them): the joblib backend's abort."""
        mine = set(fs)
        return self._core.kill_running(lambda job: isinstance(job, _FutureJob) and job.future in mine)

    def _drop_retrying(self, fs: Iterable[futures.Future], why: BaseException) -> int:
        """Fail the calls of ``fs`` that wait to run again on a lost host (the joblib backend's abort)."""
        mine = set(fs)
        return self._core.drop_retrying(lambda job: isinstance(job, _FutureJob) and job.future in mine, why)

    def workers(self) -> list[tuple[str, int]]:
        """``(host, remote pid)`` of each live worker, in placement order."""
        return [(w.host, w.pid) for w in self._core.workers if w.alive]

    @property
    def _processes(self) -> dict[int, Any]:
        """Remote pid -> worker process (ProcessPoolExecutor's attribute of that name)."""
        return {w.pid: w.process for w in self._core.workers if w.alive}

    def hosts_status(self) -> dict[str, dict[str, Any]]:
        """Per host: ``up``, live ``workers``, ``down_since``, ``error``, reconnect ``attempts`` and ``next_try``."""
        return self._core.hosts_status()

    @property
    def _max_workers(self) -> int:
        """How many calls run at once: ``ProcessPoolExecutor``'s attribute, which dask reads (at least
        1, which dask asserts: with no worker left, what it submits fails with this executor's error)."""
        return max(1, sum(1 for w in self._core.workers if w.alive))

    def __repr__(self) -> str:
        return "<remoteproc.Executor workers=%d hosts=%s>" % (
            sum(1 for w in self._core.workers if w.alive), [h for h, _, _ in self._core.hosts])


#: the Executors whose pending calls the program's exit runs first: every one not yet collected,
#: but the joblib backend's (its workers end with the program as loky's do, late tasks dropped)
_wait_at_exit: weakref.WeakSet[Executor] = weakref.WeakSet()


def _finish_at_exit() -> None:
    """The program is ending: run every pending call first, as concurrent.futures promises
    ("the entire Python program will not exit until all pending futures are done executing",
    whatever ``shutdown(wait=...)`` said) and ProcessPoolExecutor does. Without this the exit
    handlers (the finalizer, multiprocessing's for daemonic workers) would stop the workers and
    drop what was submitted. Runs before those, and before non-daemon threads are joined, as
    ProcessPoolExecutor's own hook does; an executor inherited by a forked child is not its own."""
    for executor in list(_wait_at_exit):
        core = executor._core
        if core.pid != os.getpid():
            continue
        with executor._shutdown_lock:
            executor._shutdown = True
        core.close()
        core.join()


# (private, and what concurrent.futures itself uses: it runs before the atexit handlers)
threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]


def _chunks(it: Iterable[Any], size: int) -> Iterator[tuple[Any, ...]]:
    it = iter(it)
    while True:
        chunk = tuple(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk
