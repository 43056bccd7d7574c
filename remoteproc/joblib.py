"""A joblib backend named ``"remoteproc"``: ``joblib.Parallel`` (and scikit-learn's ``n_jobs``) on SSH hosts.

::

    import joblib, remoteproc.joblib
    remoteproc.joblib.register()
    with joblib.parallel_config(backend="remoteproc", hosts=["alice@node1", "alice@node2"],
                                processes_per_host=4):
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(f)(x) for x in data)

The workers outlive each call, as loky's do: one ``remoteproc.Executor`` per
configuration (hosts, workers per host, initializer, ssh options), shared by every
backend with that configuration, until ``shutdown()`` or the end of the program.
A joblib batch travels as its list of calls and runs in
``remoteproc.agent.worker.run_calls``, so the hosts need no joblib.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import sys
import threading
import weakref
from concurrent import futures
from typing import Any, Callable, Iterable, Mapping, Optional

from joblib import register_parallel_backend
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend, ThreadingBackend

from . import reduction
from .agent import worker
from .errors import ConfigError, RemoteProcessError
from .executor import Executor, _wait_at_exit
from .scheduler import RUN
from .tasks import WorkerLostError

__all__ = ["RemoteprocBackend", "register", "shutdown"]

log = logging.getLogger("remoteproc.joblib")

NAME = "remoteproc"
ABORT_WAIT = 10.0       # seconds an abort waits for the killed workers' replacements
#: the variables that cap native thread pools in a worker (joblib's own list, as loky sets them)
THREAD_VARS: tuple = tuple(getattr(ParallelBackendBase, "MAX_NUM_THREADS_VARS", ()) or (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS"))
RETRIES_FIX = ("; joblib.parallel_config(backend=%r, hosts=..., retries=N) runs the batches of a host lost "
               "mid-call again on the other hosts, and the call goes on")

MAX_NBYTES = 1 << 20    # joblib's default max_nbytes ("1M"): larger arrays are shared, as loky memory-maps them
WALK_DEPTH = 3          # containers (tuple, list, dict) looked into for large arguments, nested this deep...
WALK_ITEMS = 1000       # ...and at most this long

_executors: dict[str, Executor] = {}        # configuration -> its running executor
_executors_lock = threading.Lock()


def register(name: str = NAME, make_default: bool = False, **config: Any) -> None:
    """Register the backend with joblib under ``name`` (again is harmless).

    ``config`` (``hosts=``, ``processes_per_host=``, ``initializer=``, ``initargs=``, ssh
    options: what ``parallel_config(backend=name, ...)`` takes) is where every backend of that
    name starts from, a ``parallel_config`` block's own arguments winning. ``make_default=True``
    needs ``hosts``: joblib's default backend is made without arguments (every ``Parallel``
    outside a block, scikit-learn's too), and would have nowhere to run.
    """
    if make_default and config.get("hosts") is None:
        raise ConfigError("remoteproc.joblib.register(make_default=True) needs hosts=['user@host', ...]: "
                          "joblib makes its default backend without arguments, so the hosts must come "
                          "from here (or use joblib.parallel_config(backend=%r, hosts=[...]) blocks "
                          "without make_default)" % name)
    factory: type[RemoteprocBackend] = RemoteprocBackend
    if config or name != NAME:
        defaults = dict(config)

        def __init__(self: RemoteprocBackend, *args: Any, **kwargs: Any) -> None:
            RemoteprocBackend.__init__(self, *args, **{**defaults, **kwargs})

        # (a class, as joblib's backends are, named as the plain one in joblib's messages; its
        # errors name the backend as the program registered it)
        factory = type("RemoteprocBackend", (RemoteprocBackend,), {
            "__init__": __init__, "__module__": __name__, "__qualname__": "RemoteprocBackend",
            "registered_as": name})
    register_parallel_backend(name, factory, make_default=make_default)


def shutdown() -> None:
    """Stop the workers of every configuration (the next Parallel call starts new ones)."""
    with _executors_lock:
        executors = list(_executors.values())
        _executors.clear()
    for executor in executors:
        executor.shutdown(wait=True, cancel_futures=True)


def _usable(executor: Executor) -> bool:
    """The executor can still run a call: not shut down, and a worker alive (or a lost host being
    reconnected, with ``retries``)."""
    core = executor._core
    return (not executor._shutdown and core.state == RUN
            and (any(w.alive for w in core.workers) or core._reconnecting()))


def _nbytes(value: Any) -> Optional[int]:
    """joblib's ``max_nbytes``: None, a number of bytes, or a string such as "1M" (joblib < 1.4 passes it so)."""
    if value is None or isinstance(value, int):
        return value
    from joblib.disk import memstr_to_bytes
    return int(memstr_to_bytes(value))


def _nested(batch: Any) -> Optional[tuple]:
    """The backend joblib's ``BatchedCalls`` would set around its calls, as plain data for the worker.

    ``(name, nesting_level, n_jobs)``: a ``Parallel`` inside a task then runs in threads (deeper
    down, sequentially) as it does under loky, rather than with loky in a daemonic worker.
    """
    backend = getattr(batch, "_backend", None)
    if isinstance(backend, ThreadingBackend):
        name = "threading"
    elif isinstance(backend, SequentialBackend):
        name = "sequential"
    else:
        return None
    return (name, getattr(backend, "nesting_level", None), getattr(batch, "_n_jobs", None))


class _Shared:
    """A large argument of a batch in its pickle: the key of its bytes, which each worker gets once
    (``worker.blob``) and keeps for the batches after, and how to make the object again from them."""

    __slots__ = ("rebuild",)

    def __init__(self, rebuild: tuple) -> None:
        self.rebuild = rebuild

    def __reduce__(self) -> tuple:
        return self.rebuild


class _BlobRef:
    """Unpickled on the worker as the bytes of a shared argument (a private copy if ``writable``)."""

    __slots__ = ("key", "writable")

    def __init__(self, key: str, writable: bool) -> None:
        self.key, self.writable = key, writable

    def __reduce__(self) -> tuple:
        return worker.blob, (self.key, self.writable)


class _Sharing:
    """Finds the large arguments of one batch, as loky memory-maps them: a numpy array (not of
    objects) or ``bytes``/``bytearray`` over ``max_nbytes``, among the calls' arguments and in the
    tuples, lists and dicts they hold (``WALK_DEPTH`` deep), and an array anywhere else in the
    batch as it is pickled (``reduce``). Each becomes a ``_Shared`` in the calls (or its
    reduction in the pickle), and its bytes a blob of the batch, keyed by their hash: the pool sends a blob to a
    worker once, and every later batch with the same bytes finds it there. The task gets a
    read-only array, as under loky's ``mmap_mode="r"`` (``writable``: a copy of its own)."""

    def __init__(self, max_nbytes: int, writable: bool, known: dict[int, tuple[Any, str]]) -> None:
        self.max_nbytes = max_nbytes
        self.writable = writable
        self.known = known                  # the call's arrays seen so far: id -> (weak reference, key)
        self.blobs: dict[str, memoryview] = {}
        self.memo: dict[int, Any] = {}      # id -> its _Shared (the calls hold the objects meanwhile)
        self.np = sys.modules.get("numpy")  # (an array in the calls has imported it)

    def calls(self, calls: list) -> list:
        out = []
        changed = False
        for call in calls:
            try:
                func, args, kwargs = call
            except (TypeError, ValueError):
                out.append(call)
                continue
            new_args, new_kwargs = self.walk(args, 0), self.walk(kwargs, 0)
            if new_args is not args or new_kwargs is not kwargs:
                call, changed = (func, new_args, new_kwargs), True
            out.append(call)
        return out if changed else calls

    def walk(self, obj: Any, depth: int) -> Any:
        kind = type(obj)
        if kind is tuple or kind is list:
            if depth >= WALK_DEPTH or len(obj) > WALK_ITEMS:
                return obj
            items = [self.walk(x, depth + 1) for x in obj]
            if all(a is b for a, b in zip(items, obj)):
                return obj
            return tuple(items) if kind is tuple else items
        if kind is dict:
            if depth >= WALK_DEPTH or len(obj) > WALK_ITEMS:
                return obj
            values = {k: self.walk(v, depth + 1) for k, v in obj.items()}
            if all(values[k] is v for k, v in obj.items()):
                return obj
            return values
        if kind is bytes or kind is bytearray:
            if len(obj) <= self.max_nbytes:
                return obj
            return self._share(obj, memoryview(obj), lambda ref: (worker.blob, (ref.key, kind is bytearray)))
        np = self.np
        if np is not None and (kind is np.ndarray or kind is np.memmap):
            if obj.nbytes <= self.max_nbytes or obj.dtype.hasobject:
                return obj
            order = "C" if obj.flags.c_contiguous else "F" if obj.flags.f_contiguous else None
            data = obj if order else np.ascontiguousarray(obj)
            flat = data.reshape(-1, order=order or "C").view(np.uint8)
            shape, dtype = obj.shape, obj.dtype
            return self._share(obj, memoryview(flat),
                               lambda ref: (np.ndarray, (shape, dtype, ref, 0, None, order or "C")), True)
        return obj

    def reduce(self, obj: Any) -> Optional[tuple]:
        """For the pickler (``reduction.sharing``): a large array held anywhere in the batch (a
        DataFrame's blocks, an estimator's attribute, a closure) as a shared argument; None for
        anything else, which pickles as it would."""
        np = self.np
        if np is None or (type(obj) is not np.ndarray and type(obj) is not np.memmap):
            return None
        shared = self.walk(obj, WALK_DEPTH)
        return shared.rebuild if isinstance(shared, _Shared) else None

    def _share(self, obj: Any, view: memoryview, rebuild: Callable[[_BlobRef], tuple], weak: bool = False
               ) -> _Shared:
        shared = self.memo.get(id(obj))
        if shared is None:
            # The hash of the bytes, not the object's id, across calls: an array changed between
            # calls is new content. Within a call an array is hashed once (its later batches go
            # from the same bytes: the call must not change it meanwhile, as its bytes are sent
            # from it, not from a copy); bytes and bytearray (no weak references) every batch.
            seen = self.known.get(id(obj)) if weak else None
            if seen is not None and seen[0]() is obj:
                key = seen[1]
            else:
                key = "%s-%d" % (hashlib.sha256(view).hexdigest()[:32], view.nbytes)     # (SHA-NI: the fastest here)
                if weak:
                    self.known[id(obj)] = (weakref.ref(obj), key)
            self.blobs[key] = view
            shared = self.memo[id(obj)] = _Shared(rebuild(_BlobRef(key, self.writable)))
        return shared


class RemoteprocBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's batches on the workers of a ``remoteproc.Executor`` over ``hosts``.

    ``hosts``, ``processes_per_host``, ``initializer``, ``initargs`` and any ssh options
    are those of ``remoteproc.Executor``.  ``n_jobs=-1`` uses every worker (``-2`` all
    but one, as joblib counts); a positive ``n_jobs`` runs at most that many batches at
    once.  A numpy array (or bytes) over joblib's ``max_nbytes`` in a batch's arguments goes to
    each worker once and stays there for the later batches (``_Sharing``); ``temp_folder`` does
    not apply.  Each worker's native thread pools (OpenMP,
    OpenBLAS, MKL, ...) are capped as loky caps its workers', per host: that host's CPUs // its
    workers, or ``inner_max_num_threads``.  A host lost mid-call is connected again in the
    background for the next calls; with ``retries`` its batches also run again elsewhere.
    """

    supports_retrieve_callback = True       # and so return_as="generator" and timeouts
    supports_inner_max_num_threads = True   # the workers' BLAS/OpenMP threads: worker.limit_threads
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = -1                     # Parallel() without n_jobs: every worker
    registered_as = NAME                    # the backend's name with joblib (register(name=...))

    def __init__(self, hosts: Any = None, processes_per_host: Optional[int] = None,
                 initializer: Optional[Callable] = None, initargs: Iterable = (),
                 nesting_level: Optional[int] = None, inner_max_num_threads: Optional[int] = None,
                 **ssh_options: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        # (joblib's parallel_config may set it again after this: read when the workers start)
        self.inner_max_num_threads: Optional[int] = inner_max_num_threads
        # (a generator of hosts would be used up by the first executor: the next one, after a
        # shutdown() or the loss of every worker, needs them again; a spec or RemoteHost stays itself,
        # and so does a dict, which the executor refuses: its list was its keys, the counts lost)
        self.hosts = hosts if hosts is None or isinstance(hosts, (str, Mapping)) else list(hosts)
        self.processes_per_host = processes_per_host
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.ssh_options = ssh_options
        self._executor: Optional[Executor] = None
        self._lock = threading.Lock()
        self._limit = 0                          # batches at once (0: no gate, before configure())
        self._running = 0
        self._waiting: collections.deque = collections.deque()
        self._inner: set = set()                 # the executor's futures not yet done
        self._max_nbytes: Optional[int] = MAX_NBYTES     # joblib's max_nbytes and mmap_mode, of configure()
        self._mmap_mode: Optional[str] = "r"
        self._known: dict[int, tuple[Any, str]] = {}    # this call's shared arrays (_Sharing.known)

    # -- the workers ------------------------------------------------------------------------------
    def executor(self) -> Executor:
        """The executor of this configuration: started on first use, and again when the one there
        was can run nothing more (``shutdown()`` stopped it, or every worker was lost with its
        host), as loky replaces a broken executor at the next call."""
        if self._executor is not None and _usable(self._executor):
            return self._executor
        if self.hosts is None:
            self._take_active_configuration()
        if self.hosts is None:
            raise ConfigError("the joblib backend %r needs hosts: joblib.parallel_config(backend=%r, "
                              "hosts=['user@host', ...])" % (self.registered_as, self.registered_as))
        threads = self._thread_limits()
        key = repr((self.hosts, self.processes_per_host, self.initializer, self.initargs,
                    sorted(self.ssh_options.items()), threads))
        stale = None
        with _executors_lock:
            executor = _executors.get(key)
            if executor is not None and not _usable(executor):
                stale, executor = _executors.pop(key), None
            if executor is None:
                # (lost hosts are connected again in the background, retries or not: a later call
                # finds them back, as loky's next call has every CPU of its machine)
                executor = _executors[key] = Executor(self.hosts, self.processes_per_host, self.initializer,
                                                      self.initargs, _reconnect=True, _threads=threads,
                                                      **self.ssh_options)
                # as loky's reusable executor: the program's end stops the workers, whatever
                # they still run (a timed-out or failed Parallel's batches), rather than wait for it
                _wait_at_exit.discard(executor)
        if stale is not None:
            stale.shutdown(wait=False, cancel_futures=True)
        self._executor = executor
        return executor

    def _thread_limits(self) -> tuple:
        """``(inner_max_num_threads, {variable: value} set in this process, variable names)`` for
        ``worker.limit_threads``: what joblib's ``_prepare_worker_env`` gives loky's workers, the
        default worked out on each host (its CPUs // its workers) rather than here."""
        explicit = self.inner_max_num_threads
        if explicit is not None and (not isinstance(explicit, int) or isinstance(explicit, bool) or explicit < 1):
            raise ConfigError("inner_max_num_threads must be a positive int or None, not %r" % (explicit,))
        given = {name: os.environ[name] for name in THREAD_VARS if name in os.environ}
        return explicit, given, THREAD_VARS

    def _take_active_configuration(self) -> None:
        """``Parallel(backend="remoteproc")`` makes a backend of its own, without arguments: inside
        a ``parallel_config(backend="remoteproc", hosts=...)`` block it takes that block's hosts
        and options, as it would have by naming no backend."""
        try:
            from joblib.parallel import get_active_backend
            active, _n_jobs = get_active_backend()
        except Exception:       # (a joblib without it: the error below says what to do)
            return
        if isinstance(active, RemoteprocBackend) and active is not self and active.hosts is not None:
            self.hosts, self.processes_per_host = active.hosts, active.processes_per_host
            self.initializer, self.initargs = active.initializer, active.initargs
            self.ssh_options = dict(active.ssh_options)
            if self.inner_max_num_threads is None:
                self.inner_max_num_threads = active.inner_max_num_threads

    def workers(self) -> int:
        """How many workers are alive now (starting them if needed)."""
        return len(self.executor().workers())

    def _at_once(self, n_jobs: Optional[int]) -> int:
        """How many batches run at once for ``n_jobs`` (joblib's counting, with workers for CPUs)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        total = max(self.workers(), 1)
        if n_jobs is None:
            return total
        if n_jobs < 0:
            return max(total + 1 + n_jobs, 1)
        return min(n_jobs, total)

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        n = self._at_once(n_jobs)
        if n == 1 and n_jobs != 1:
            # joblib runs a call whose n_jobs comes out as 1 in the calling process, as a plain
            # loop: with a single worker (one host, processes_per_host=1) the tasks would run
            # here rather than on the host. 2 makes joblib use the backend; the gate of
            # configure() still runs one batch at a time. (n_jobs=1 itself stays joblib's local loop.)
            return 2
        return n

    def configure(self, n_jobs: Optional[int] = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **joblib_options: Any) -> int:
        self.parallel = parallel
        self._max_nbytes = _nbytes(joblib_options.get("max_nbytes", MAX_NBYTES))
        self._mmap_mode = joblib_options.get("mmap_mode", "r")
        self._known = {}
        n = self.effective_n_jobs(n_jobs)
        with self._lock:
            # one batch per worker at a time, even with every worker: a batch the executor has
            # handed to a worker cannot be cancelled (it may wait in the worker's pipe behind the
            # running one), and joblib pre-dispatches 2 * n_jobs; the others wait here, where an
            # error, a timeout or Ctrl-C (abort_everything) drops them
            self._limit = self._at_once(n_jobs)
        return n

    # -- batches ------------------------------------------------------------------------------------
    def submit(self, func: Callable, callback: Optional[Callable] = None) -> futures.Future:
        outer: futures.Future = futures.Future()
        if callback is not None:
            outer.add_done_callback(callback)
        with self._lock:
            if self._limit and self._running >= self._limit:
                self._waiting.append((func, outer))
                return outer
            self._running += 1
        self._send(func, outer)
        return outer

    apply_async = submit                    # joblib < 1.5 calls it that

    def _send(self, func: Callable, outer: futures.Future) -> None:
        if outer.cancelled():
            self._done(None)
            return
        calls = getattr(func, "items", None)
        try:
            # (the executor configure() found or started: a call does not change it half-way)
            executor = self._executor or self.executor()
            if isinstance(calls, list):     # a joblib BatchedCalls: ship its calls, not joblib
                if self._max_nbytes is not None and self._mmap_mode is not None:
                    sharing = _Sharing(self._max_nbytes, self._mmap_mode != "r", self._known)
                    calls = sharing.calls(calls)
                    # (the arrays held deeper are found as the batch is pickled, into the same blobs)
                    with reduction.sharing(sharing.reduce):
                        inner = executor._submit(worker.run_calls, (calls, _nested(func)), {}, sharing.blobs)
                    if sharing.blobs:
                        log.debug("a batch shares %d large arguments (%d bytes) with its worker", len(sharing.blobs),
                                  sum(v.nbytes for v in sharing.blobs.values()))
                else:
                    inner = executor._submit(worker.run_calls, (calls, _nested(func)), {}, None)
            else:
                inner = executor.submit(func)
        except BaseException as exc:
            outer.set_exception(exc)
            self._done(None)
            return
        with self._lock:
            self._inner.add(inner)
        inner.add_done_callback(lambda f: self._finish(f, outer))

    def _finish(self, inner: futures.Future, outer: futures.Future) -> None:
        if inner.cancelled():
            outer.cancel()
        else:
            exc = inner.exception()
            if exc is not None:
                if isinstance(exc, WorkerLostError) and not self.ssh_options.get("retries"):
                    # (joblib aborts the call on it: say how to have the call go on instead)
                    exc.args = (str(exc) + RETRIES_FIX % NAME,) + exc.args[1:]
                outer.set_exception(exc)
            else:
                outer.set_result(inner.result())
        self._done(inner)

    def _done(self, inner: Optional[futures.Future]) -> None:
        """A batch ended: let the next waiting one go, unless joblib is aborting the call (a batch
        failed: its callback, just before this, told joblib so), whose abort_everything() drops
        the waiting ones: none of them starts after the failure."""
        aborting = getattr(getattr(self, "parallel", None), "_aborting", False)
        with self._lock:
            self._inner.discard(inner)
            if self._waiting and not aborting:  # its slot goes to the next one
                func, outer = self._waiting.popleft()
            else:
                self._running -= 1
                return
        self._send(func, outer)

    def retrieve_result_callback(self, future: futures.Future) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A batch failed, a ``timeout=`` expired or Ctrl-C came: drop the batches no worker has
        started and stop those that run, as loky kills its workers.

        The workers running this call's batches are killed and replaced (the executor and the other
        workers stay for the next call): left running, a long batch nobody waits for would hold
        its worker, and the next ``Parallel`` call would wait for it to end.
        """
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
            inner = list(self._inner)
        for _func, outer in waiting:
            outer.cancel()
        for f in inner:
            f.cancel()
        executor = self._executor
        if executor is None:
            return
        # the scheduler drops cancelled calls when it next looks at its queue: now, so that
        # they (and the joblib objects their callbacks hold) do not wait there for the next call
        executor._core.wake()
        # a batch that waits to run again on a lost host (retries) is running for its future: no
        # cancel() drops it, and it would hold shutdown() until the host came back
        executor._drop_retrying(inner, RemoteProcessError("the call was given up (an error, a timeout= or Ctrl-C) "
                                                          "while this batch waited for its lost host to come back"))
        running = [f for f in inner if not f.done()]
        if running and executor._kill_running(running) and threading.current_thread() is not executor._core.thread:
            # their futures fail once new workers have taken their places: the next call finds them
            futures.wait(running, timeout=ABORT_WAIT)

    def terminate(self) -> None:
        """The end of one Parallel call: keep the workers for the next, forget the batch timings
        and the call's arrays (the next call hashes them again: they may have changed)."""
        self.reset_batch_stats()
        self._known = {}

    def __reduce__(self):
        raise TypeError("the remoteproc joblib backend cannot be pickled (it holds live workers)")
