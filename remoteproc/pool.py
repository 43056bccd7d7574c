"""``remoteproc.Pool``: the ``multiprocessing.Pool`` API over RemoteProcess workers on several hosts.

The workers, their placement and the manager thread are the scheduler's
(``remoteproc/scheduler.py``, shared with ``remoteproc.Executor``); this module
is the API: ``Pool`` and the result objects it hands out.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import types
import warnings
import weakref
from multiprocessing import TimeoutError
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from . import reduction
from .agent import worker
from .errors import RemoteProcessError
from .scheduler import CLOSE, PREFETCH, RUN, TERMINATE, Scheduler
from .tasks import Chunk
from .workers import Hosts

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "MapResult", "Pool"]

_job_ids = itertools.count()

Callback = Optional[Callable[[Any], object]]        # a result's callback or error_callback
log = logging.getLogger("remoteproc.pool")


def _call_back(result: Any, which: str, callback: Callable[[Any], object], value: Any) -> None:
    """Run a result's ``callback`` or ``error_callback`` in the manager thread.  One that raises is
    logged and the pool goes on (as ``concurrent.futures`` treats a done-callback that raises):
    multiprocessing's result thread dies of it and its pool hangs; ours ended every task."""
    try:
        callback(value)
    except BaseException:       # (SystemExit too: it would end the manager thread, and the pool with it)
        log.exception("the %s of %r raised (the pool goes on)", which, result)


# -- results ----------------------------------------------------------------------------------------

class ApplyResult:
    """What ``apply_async`` returns: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(self, callback: Callback = None, error_callback: Callback = None, pool: Any = None) -> None:
        #: the Pool, kept alive until this is ready, as multiprocessing's results do: a Pool
        #: that nothing else names (``Pool(h).map_async(f, xs).get()``) must not end its own tasks
        self._pool = pool
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False       # both set before the event: read only once ready
        self._value: Any = None
        self._job = next(_job_ids)

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _dispatching(self) -> bool:
        return True

    def _set(self, start: int, all_ok: bool, data: list) -> None:
        ok, value = (True, data[0]) if all_ok else data[0]
        self._success, self._value = ok, value
        try:
            if ok and self._callback is not None:
                _call_back(self, "callback", self._callback, value)
            elif not ok and self._error_callback is not None:
                _call_back(self, "error_callback", self._error_callback, value)
        finally:
            self._event.set()
            self._pool = None

    @classmethod
    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        """``ApplyResult[int]`` in annotations, as with ``multiprocessing.pool.ApplyResult``."""
        return types.GenericAlias(cls, item)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """What ``map_async``/``starmap_async`` return; ready when every chunk is back (as multiprocessing)."""

    def __init__(self, length: int, chunks: int, callback: Callback = None, error_callback: Callback = None,
                 pool: Any = None) -> None:
        super().__init__(callback, error_callback, pool)
        self._success = True
        self._value: Any = [None] * length       # the results, or the first exception
        self._left = chunks
        self._lock = threading.Lock()
        if chunks == 0:
            self._finish()

    def _set(self, start: int, all_ok: bool, data: list) -> None:
        with self._lock:
            self._left -= 1
            if all_ok:
                if self._success:
                    self._value[start:start + len(data)] = data
            else:
                for i, (ok, value) in enumerate(data):
                    if ok:
                        if self._success:
                            self._value[start + i] = value
                    elif self._success:
                        self._success, self._value = False, value     # only the first error counts
            last = self._left == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        try:
            if self._success and self._callback is not None:
                _call_back(self, "callback", self._callback, self._value)
            elif not self._success and self._error_callback is not None:
                _call_back(self, "error_callback", self._error_callback, self._value)
        finally:
            self._event.set()
            self._pool = None


class IMapIterator:
    """What ``imap``/``imap_unordered`` return; ``next(timeout)`` raises ``multiprocessing.TimeoutError``."""

    def __init__(self, ordered: bool, pool: Any = None) -> None:
        self._pool = pool           # kept alive until the last item is yielded (see ApplyResult)
        self._ordered = ordered
        self._cond = threading.Condition(threading.Lock())
        self._by_index: dict[int, tuple[bool, Any]] = {}                        # ordered: results by position
        self._arrived: collections.deque[tuple[bool, Any]] = collections.deque()  # unordered: as they come
        self._index = 0             # next position to yield (ordered) or number yielded (unordered)
        self._length: int | None = None     # known once the input is exhausted
        self._in_flight = 0         # chunks submitted and not yet back (the feeder's back-pressure)
        self._feeder_waits = False  # the feeder waits for next() to hand out results (see _feed)
        self._job = next(_job_ids)

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._ordered:
                    if self._index in self._by_index:
                        ok, value = self._by_index.pop(self._index)
                        break
                elif self._arrived:
                    ok, value = self._arrived.popleft()
                    break
                if self._length is not None and self._index >= self._length:
                    self._pool = None
                    raise StopIteration
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                self._cond.wait(left)
            self._index += 1
            if self._feeder_waits:
                self._cond.notify_all()
        if ok:
            return value
        raise value

    __next__ = next

    def _dispatching(self) -> bool:
        return True

    def _set(self, start: int, all_ok: bool, data: list) -> None:
        with self._cond:
            for i, item in enumerate(data):
                pair = (True, item) if all_ok else item
                if self._ordered:
                    self._by_index[start + i] = pair
                else:
                    self._arrived.append(pair)
            self._in_flight -= 1
            self._cond.notify_all()

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            self._cond.notify_all()


# -- the public class ------------------------------------------------------------------------------------

class Pool:
    """``multiprocessing.Pool`` whose workers are RemoteProcesses spread over ``hosts``.

    ``hosts`` is a host spec, or a list of specs and ``(spec, {ssh options})`` pairs;
    ``**ssh_options`` apply to every host.  ``processes_per_host`` defaults to the CPUs a
    process may use on each host (its CPU affinity).  ``apply``, ``apply_async``, ``map``, ``map_async``, ``imap``,
    ``imap_unordered``, ``starmap``, ``starmap_async``, ``close``, ``terminate``,
    ``join`` and ``with`` (which terminates on exit) work as in multiprocessing.
    ``retries``: a chunk whose worker's connection was lost runs again elsewhere, up to
    that many times (so it may run twice), and lost hosts are reconnected in the background.
    """

    def __init__(self, hosts: Hosts, processes_per_host: int | None = None,
                 initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = (),
                 maxtasksperchild: int | None = None, *, retries: int = 0, **ssh_options: Any) -> None:
        self._state = RUN
        self._core = Scheduler(hosts, processes_per_host, initializer, initargs, maxtasksperchild, ssh_options,
                               retries)
        self._iterators: weakref.WeakSet[IMapIterator] = weakref.WeakSet()    # imap's, while their input is read
        self._finalizer = weakref.finalize(self, self._core.terminate, False)

    # -- introspection ----------------------------------------------------------------------------
    @property
    def hosts(self) -> list[str]:
        """The host specs, as given."""
        return [h for h, _, _ in self._core.hosts]

    def workers(self) -> list[tuple[str, int]]:
        """``(host, remote pid)`` of each live worker, in placement order."""
        return [(w.host, w.pid) for w in self._core.workers if w.alive]

    def hosts_status(self) -> dict[str, dict[str, Any]]:
        """Per host: ``up``, live ``workers``, ``down_since``, ``error``, reconnect ``attempts`` and ``next_try``."""
        return self._core.hosts_status()

    @property
    def _pool(self) -> list[Any]:
        """The live workers' processes (multiprocessing.Pool's attribute of that name)."""
        return [w.process for w in self._core.workers if w.alive]

    def __repr__(self) -> str:
        return "<remoteproc.Pool state=%s workers=%d hosts=%s>" % (
            self._core.state, sum(1 for w in self._core.workers if w.alive), self.hosts)

    # -- the multiprocessing.Pool API ---------------------------------------------------------------------
    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None,
                    callback: Callback = None, error_callback: Callback = None) -> ApplyResult:
        self._core.check_running()
        result = ApplyResult(callback, error_callback, self)
        chunks = self._core.make_chunks(result, func, worker.APPLY, [_call_args(args, kwds)], 1)
        self._core.submit(chunks)
        return result

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None) -> list[Any]:
        return self._map_async(func, iterable, worker.CALL, chunksize).get()

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None,
                  callback: Callback = None, error_callback: Callback = None) -> MapResult:
        return self._map_async(func, iterable, worker.CALL, chunksize, callback, error_callback)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:
        return self._map_async(func, iterable, worker.STAR, chunksize).get()

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None,
                      callback: Callback = None, error_callback: Callback = None) -> MapResult:
        return self._map_async(func, iterable, worker.STAR, chunksize, callback, error_callback)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], mode: int, chunksize: int | None,
                   callback: Callback = None, error_callback: Callback = None) -> MapResult:
        self._core.check_running()
        items = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._core.size * 4)
            if extra:
                chunksize += 1
        if len(items) == 0:
            chunksize = 0
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        nchunks = (len(items) + chunksize - 1) // chunksize if items else 0
        result = MapResult(len(items), nchunks, callback, error_callback, self)
        if items:
            self._core.submit(self._core.make_chunks(result, func, mode, items, chunksize))
        return result

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int, ordered: bool) -> IMapIterator:
        self._core.check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        result = IMapIterator(ordered, self)
        self._iterators.add(result)
        # (fails here, in the caller, if it cannot go; file names kept, as Pool.map's: see make_chunks)
        fbytes = self._core.dumps(func, "the function", reduction.dumps_function)
        core = self._core
        with core.lock:
            core.feeders += 1
        # (the feeder holds the iterator weakly: one that nobody reads any more is collected, and so
        # is a pool that only it kept alive, see _feed)
        threading.Thread(target=_feed, args=(core, weakref.ref(result), result._cond, func, fbytes, iter(iterable),
                                             chunksize),
                         name="remoteproc-pool-feeder", daemon=True).start()
        return result

    def close(self) -> None:
        """No more tasks; the workers exit once every submitted task is done."""
        self._state = CLOSE
        self._core.close()
        self._wake_feeders()

    def terminate(self) -> None:
        """Stop the workers now; unfinished tasks fail (multiprocessing leaves them hanging)."""
        self._state = TERMINATE
        self._finalizer.detach()
        self._core.terminate(wait=False)
        self._wake_feeders()
        self._core.join()

    def _wake_feeders(self) -> None:
        """Wake imap's feeders that wait for their consumer: they go on (close) or stop (terminate)."""
        for result in list(self._iterators):
            with result._cond:
                result._cond.notify_all()

    def join(self) -> None:
        """Wait for the workers to exit, after close() or terminate()."""
        self._core.join()

    def __enter__(self) -> "Pool":
        self._core.check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) == RUN and getattr(self, "_core", None) is not None:
            _warn("unclosed running multiprocessing pool %r" % (self,), ResourceWarning, source=self)

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")


#: imap's read-ahead: at most this many times its chunks in flight may wait, sent or done, for next()
AHEAD = 4


def _feed(core: Scheduler, ref: weakref.ref[IMapIterator], cond: threading.Condition, func: Callable[[Any], Any],
          fbytes: dict[str, bytes], it: Iterator[Any], chunksize: int) -> None:
    """imap's input, consumed lazily in a thread of its own, with back-pressure: at most ``limit``
    chunks in flight, and at most ``AHEAD * limit`` chunks' elements that ``next()`` has not handed
    out yet (in flight, or their results waiting), so that a slow consumer bounds what is read and
    kept.  Once the pool is closed only the first bound holds: ``join()`` waits for the whole input,
    whether anyone reads the results or not (as multiprocessing's).  While it waits, the feeder
    holds the iterator (``ref``, its condition ``cond``) weakly: one that its consumer dropped
    (``break``) is collected once its chunks are back, and the feeder stops reading."""
    index = 0
    limit = max(4, 2 * PREFETCH * core.size)
    ahead = AHEAD * limit * chunksize
    result = ref()
    try:
        while result is not None:
            with cond:
                while core.state != TERMINATE and (
                        result._in_flight >= limit or (core.state == RUN and index - result._index >= ahead)):
                    result._feeder_waits = True
                    result = None
                    cond.wait(1.0)
                    result = ref()
                    if result is None:
                        break
                else:
                    result._feeder_waits = False
            if result is None:
                break       # nobody reads its results: the input is read no further
            if core.state == TERMINATE:
                raise RemoteProcessError("the pool was terminated before this task was sent")
            part = list(itertools.islice(it, chunksize))
            if not part:
                result._set_length(index)
                break
            _send(core, result, func, fbytes, part, index)
            index += len(part)
    except BaseException as exc:
        # the input raised (or the pool was terminated): that is the next result, and the last
        result = ref()
        if result is not None:
            with cond:
                result._in_flight += 1
            result._set(index, False, [(False, exc)])
            result._set_length(index + 1)
    finally:
        result = None
        with core.lock:
            core.feeders -= 1
        core.wake()


def _send(core: Scheduler, result: IMapIterator, func: Callable[[Any], Any], fbytes: dict[str, bytes],
          part: list[Any], start: int) -> None:
    """Submit imap's elements ``part`` (positions ``start`` on) as one chunk.  An element that cannot
    be pickled fails its own position, with the error ``map`` raises for it, and the others go on
    (multiprocessing's imap fails that task's position, and goes on)."""
    runs: list[tuple[int, list[Any], dict[str, bytes] | None]]
    try:
        runs = [(start, part, core.dumps(part, "the arguments", reduction.dumps_function))]
    except BaseException as exc:       # (an object's __reduce__ may raise anything: that element's outcome)
        if len(part) == 1:
            _fail(result, start, [exc])
            return
        # which ones? each element alone; the others go in runs as they came
        runs = []
        run: list[Any] = []
        for i, x in enumerate(part):
            try:
                core.dumps([x], "the arguments", reduction.dumps_function)
            except BaseException as err:
                if run:
                    runs.append((start + i - len(run), run, None))
                    run = []
                _fail(result, start + i, [err])
            else:
                run.append(x)
        if run:
            runs.append((start + len(part) - len(run), run, None))
    for first, elements, abytes in runs:
        if abytes is None:
            try:
                abytes = core.dumps(elements, "the arguments", reduction.dumps_function)
            except BaseException as exc:    # (alone each pickled: an object that pickles only once)
                _fail(result, first, [exc] * len(elements))
                continue
        chunk = Chunk(result, first, len(elements), worker.CALL, fbytes, abytes, (func, elements))
        with result._cond:
            result._in_flight += 1
        core.submit([chunk])


def _fail(result: IMapIterator, start: int, errors: list[BaseException]) -> None:
    """imap's elements from ``start`` on fail with ``errors``, without a chunk."""
    with result._cond:
        result._in_flight += 1          # (_set counts a chunk back)
    result._set(start, False, [(False, e) for e in errors])


def _call_args(args: Any, kwds: Any) -> tuple[Any, Any]:
    """``(args, kwds)`` for ``func(*args, **kwds)`` in the worker.  Arguments that are no sequence or
    mapping travel as given, so the call fails in the worker and the error reaches the result (and
    ``error_callback``), as with multiprocessing, instead of raising from ``apply_async``."""
    try:
        args = tuple(args)
    except TypeError:
        pass
    try:
        kwds = dict(kwds or {})
    except (TypeError, ValueError):
        pass
    return args, kwds
