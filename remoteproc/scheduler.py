"""The scheduler that ``remoteproc.Pool`` and ``remoteproc.Executor`` share: workers, chunks, placement.

The workers (``remoteproc.workers``) are RemoteProcesses on several hosts.  One
manager thread in the caller's process hands out tasks (chunks of calls) and
collects results:

* placement is *least busy*: the next chunk goes to the worker with the fewest
  chunks in flight, ties broken round-robin over a worker list that interleaves
  the hosts.  A worker gets a second chunk while it runs one (hiding the round
  trip) only as it returns a result quickly (that chunk, and chunks on average,
  took less than ``FAST`` seconds); a chunk that finds every worker busy
  otherwise waits for the first one free, so a long task does not hold a short
  one back while another worker is idle.  Nothing smarter: this is not a
  cluster scheduler.
* a worker whose connection is lost fails the chunks it was running with a
  ``ConnectionLostError`` naming its host; its host gets no new workers, and the
  other workers go on.  A worker that dies otherwise fails its chunks with a
  ``WorkerDiedError`` and is replaced (so is one that reached ``maxtasksperchild``).
  Both errors are also ``concurrent.futures.process.BrokenProcessPool``, as
  ProcessPoolExecutor reports a dead worker (which breaks it whole; here, only the
  chunks of that worker fail).
* an exception raised by a task is re-raised in the caller with the remote
  traceback attached as ``__cause__`` (a ``multiprocessing.pool.RemoteTraceback``,
  as ``multiprocessing`` does; for the Executor, ProcessPoolExecutor's
  ``concurrent.futures.process._RemoteTraceback``).

The manager writes tasks with non-blocking sends (a worker that is slow to read
never stalls the others) and blocks in a selector when there is nothing to do.
Chunks, jobs and the errors a task fails with are ``remoteproc.tasks``.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import selectors
import threading
import time
import weakref
from multiprocessing.connection import Connection
from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]  # (not in typeshed)
from typing import Any, Callable, Iterable

from . import reduction
from .agent import proxies
from .agent.waker import Waker
from .bootstrap import looked_in
from .errors import CONNECTION_LOST, ConfigError, ConnectError, ConnectionLostError, PicklingError, RemoteProcessError
from .reconnect import Reconnector
from .tasks import Chunk, Job, ResultUnpicklingError, WorkerDiedError, WorkerLostError, frame, frame_header, task_error
from .workers import TERMINATE_GRACE, Hosts, Starter, Worker, last_words, parse_hosts, workers_per_host

log = logging.getLogger("remoteproc.pool")

PREFETCH = 2            # chunks in flight per worker: one running, one waiting in its pipe...
FAST = 0.05             # ...given as it returns a chunk that took less than this (seconds), as on average; else one
READ_BATCH = 64         # messages read from one worker before looking at the others
SHARED_CACHE = 1 << 30  # bytes of shared arguments (Chunk.blobs) a worker keeps, at most (but the current chunk's)

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


class Scheduler:
    """The workers and the manager thread of one Pool or Executor (the thread works on this, never on them)."""

    def __init__(self, hosts: Hosts, processes_per_host: int | None, initializer: Callable[..., Any] | None,
                 initargs: Iterable[Any], maxtasks: int | None, ssh_options: dict[str, Any],
                 retries: int = 0, may_have_children: bool = False, reconnect: bool = False,
                 threads: tuple[Any, ...] | None = None) -> None:
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError("retries must be an int >= 0")
        if processes_per_host is not None and (not isinstance(processes_per_host, int)
                                               or isinstance(processes_per_host, bool) or processes_per_host < 1):
            # (a ConfigError, still the ValueError it was: the pool's own misuse, said with its fix)
            raise ConfigError("processes_per_host must be an int of at least 1 (workers on each host), not %r. "
                              "Fix: pass processes_per_host=1 or more, or leave it out (None) for one worker per "
                              "CPU a process may use on each host" % (processes_per_host,))
        if maxtasks is not None and (not isinstance(maxtasks, int) or maxtasks <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self.hosts = parse_hosts(hosts, ssh_options)
        self.starter = Starter(initializer, tuple(initargs), maxtasks, may_have_children, threads)
        self.starter.per_host = workers_per_host(self.hosts, processes_per_host)
        self.retries = retries
        # (``reconnect``: lost hosts come back in the background even without retries, for the
        # joblib backend's next call; tasks then fail at once when no worker is left, not wait)
        self.reconnector = Reconnector(self.starter, self._rejoin) if retries or reconnect else None
        self.rejoined: list[tuple[str, list[Worker]]] = []     # from the reconnector, for the manager
        self.refused: list[tuple[Chunk, BaseException]] = []   # chunks that cannot go to a rejoined worker
        self.maxtasks = maxtasks
        self.lock = threading.Lock()
        self.dispatched = threading.Condition(self.lock)    # notified after each dispatch pass
        self.passes = 0
        self.pending: collections.deque[Chunk] = collections.deque()
        self.chunks: dict[int, Chunk] = {}
        self.workers: list[Worker] = []
        self.lost_hosts: dict[str, str] = {}
        self.broken_hosts: dict[str, str] = {}
        self.down_since: dict[str, float] = {}     # time.time() a host was lost or broken, until it rejoins
        self.feeders = 0
        self.making = 0             # make_chunks() calls under way (pickling): the pool is not idle yet
        self.state = RUN
        self.stopped = False        # the workers were told to stop (CLOSE, nothing left) or the manager ended
        self.rr = 0
        self.chunk_time: float | None = None      # moving average of a chunk's time on a worker, round trip included
        # poll(), not epoll: a RemoteProcess sentinel may be swapped for another file under the same
        # fd once its exit was read (by anyone, e.g. multiprocessing's _cleanup() in start()), and an
        # epoll registration would then never fire again.
        self.sel = selectors.PollSelector()
        self.waker = Waker()
        self.sel.register(self.waker.fileno(), selectors.EVENT_READ, (self._on_wake, None))
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        try:
            self.starter.start_all(self.hosts, processes_per_host, self.workers)
        except BaseException:
            for w in self.workers:
                w.process.kill()
            for w in self.workers:
                w.process.join(TERMINATE_GRACE)
                w.close()
            self.sel.close()
            self.waker.close()
            raise
        for w in self.workers:
            self._register(w)
        self.thread = threading.Thread(target=self._run, name="remoteproc-pool", daemon=True)
        self.thread.start()
        _schedulers.add(self)

    def _register(self, w: Worker) -> None:
        w.events = selectors.EVENT_READ
        self.sel.register(w.conn.fileno(), w.events, (self._on_conn, w))
        self.sel.register(w.process.sentinel, selectors.EVENT_READ, (self._on_sentinel, w))

    # -- from the callers' threads ----------------------------------------------------------------------
    def wake(self) -> None:
        self.waker.wake()

    def check_running(self) -> None:
        if self.state != RUN:
            raise ValueError("Pool not running")

    @property
    def size(self) -> int:
        return max(1, sum(1 for w in self.workers if w.alive))

    def make_chunks(self, job: Job, func: Callable[..., Any], mode: int, items: list[Any], chunksize: int,
                    start: int = 0) -> list[Chunk]:
        """Pickle a job's calls (in the caller's thread, so errors surface there).

        Meanwhile the pool is not idle: a close() then does not stop the workers before this
        call's ``submit`` (multiprocessing's map, checked before close(), runs). A caller that
        does not submit what this returns wakes the manager (``wake``): a close() may wait."""
        with self.lock:
            self.making += 1
        try:
            fbytes = self.dumps(func, "the function", reduction.dumps_function)
            chunks = []
            for i in range(0, len(items), chunksize):
                part = items[i:i + chunksize]
                # (functions among the arguments keep their file names too: joblib's and dask's calls
                # travel there, and their tracebacks then name the user's files and lines)
                chunks.append(Chunk(job, start + i, len(part), mode, fbytes,
                                    self.dumps(part, "the arguments", reduction.dumps_function), (func, part)))
        except BaseException:
            with self.lock:
                self.making -= 1
            self.wake()
            raise
        with self.lock:
            self.making -= 1        # (no wake: the caller's submit() follows at once, and wakes it)
        return chunks

    def dumps(self, obj: object, what: str, dumps: Callable[[Any], bytes] = proxies.dumps_item) -> dict[str, bytes]:
        """``obj`` pickled for each Python mode among the workers: "same" with ``dumps`` (by
        value where needed), "spawn" by reference, for hosts with another Python."""
        modes: dict[str, str] = {}
        for w in self.workers:
            modes.setdefault(w.mode, w.host)
        return {mode: self._dumps_for(obj, what, dumps, mode, host) for mode, host in (modes or {"same": ""}).items()}

    def _dumps_for(self, obj: object, what: str, dumps: Callable[[Any], bytes], mode: str, host: str) -> bytes:
        """``obj`` pickled for the workers of Python mode ``mode`` (``host`` is one of theirs)."""
        try:
            if mode == "spawn":
                return reduction.dumps_spawn_item(obj, host, looked_in())
            return dumps(obj)
        except PicklingError:
            raise
        except (pickle.PicklingError, TypeError) as exc:
            hosts = list(dict.fromkeys(h for h, _options, _n in self.hosts))
            refused = isinstance(exc, proxies.Refused)      # (its words name the way out)
            raise PicklingError(
                "cannot send %s to the pool's workers on %s: %s%s" % (
                    what, ", ".join(hosts[:3]) + (", ..." if len(hosts) > 3 else ""),
                    "" if refused else "%s: " % type(exc).__name__, exc)
                + ("" if refused else ". Fix: pass only what pickles (the function and its arguments go "
                                      "to each host: locks, open files and sockets cannot)"),
                hosts[0] if len(hosts) == 1 else None) from exc
        # anything else (an object's own __reduce__ raised it) goes on as it is, as multiprocessing's

    def _message_for(self, chunk: Chunk, w: Worker) -> bytes | None:
        """The chunk's message for ``w``'s Python mode: pickled now if the chunk was made before any
        worker had that mode (a host whose connection was lost came back running another Python, and
        cloudpickle's bytecode for ours would crash it); None, and the chunk refused (told outside the
        lock, ``_tell_refused``), if its function or arguments cannot go there."""
        data = chunk.data.get(w.mode)
        if data is not None:
            return data
        if chunk.source is None:        # (made by hand, without its source: as before)
            return next(iter(chunk.data.values()))
        func, part = chunk.source
        try:
            fbytes = self._dumps_for(func, "the function", reduction.dumps_function, w.mode, w.host)
            abytes = self._dumps_for(part, "the arguments", reduction.dumps_function, w.mode, w.host)
        except Exception as exc:  # noqa: BLE001 - the chunk's error, as at its submission
            self.refused.append((chunk, exc))
            return None
        log.info("%s: a chunk made for the pool's other workers was pickled again for this host's Python (%s "
                 "mode)", w.host, w.mode)
        return chunk.add(w.mode, fbytes, abytes)

    def _tell_refused(self) -> None:
        """Fail the chunks ``_message_for`` refused (outside the lock: a callback may submit)."""
        if not self.refused:
            return
        with self.lock:
            refused, self.refused = self.refused, []
        for chunk, exc in refused:
            chunk.job._set(chunk.start, False, [(False, exc)] * chunk.n)

    def submit(self, chunks: list[Chunk]) -> None:
        failed = None
        with self.lock:
            # After close(), a call that passed the Pool's check_running() before it (its arguments
            # were being pickled: ``making``) still runs, as multiprocessing's map does; only once
            # the workers were told to stop is the pool no longer running.
            if self.state == CLOSE and self.stopped and not self.feeders:
                raise ValueError("Pool not running")
            if self.state == TERMINATE:
                failed = RemoteProcessError("the pool was terminated before this task was sent")
            elif not any(w.alive for w in self.workers) and not self._reconnecting():
                failed = self._no_workers_error()
            else:
                self.pending.extend(chunks)
        if failed is not None:
            for c in chunks:
                c.job._set(c.start, False, [(False, failed)] * c.n)
            return
        self.wake()

    def close(self) -> None:
        with self.lock:
            if self.state == RUN:
                self.state = CLOSE
        self.wake()

    def terminate(self, wait: bool = True) -> None:
        with self.lock:
            self.state = TERMINATE
        if self.reconnector is not None:
            self.reconnector.stop()
        self.wake()
        if wait:
            self.join()

    def join(self, timeout: float | None = None) -> None:
        if self.state == RUN:
            raise ValueError("Pool is still running")
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def cancel_pending(self) -> list[Chunk]:
        """Executor.shutdown(cancel_futures=True): drop what no worker has started, and return it.

        First one dispatch pass of the manager thread, so that what a free worker can start now
        runs (as ProcessPoolExecutor keeps a call per worker queued), and only the rest is dropped.
        Called on the manager thread itself (from a done-callback), that pass is made here: the
        thread cannot make it while it runs the callback."""
        here = threading.current_thread() is self.thread
        with self.lock:
            if here:
                self._pass()
            elif self.thread is not None and self.thread.is_alive() and self.state != TERMINATE:
                target = self.passes + 1
                self.waker.wake()
                self.dispatched.wait_for(lambda: self.passes >= target, timeout=5.0)
            dropped = [c for c in self.pending if not c.tries]     # a retry was started: it runs again
            self.pending = collections.deque(c for c in self.pending if c.tries)
        if here:
            self._tell_refused()
        return dropped

    def kill_running(self, owned: Callable[[Job], bool]) -> int:
        """Kill (SIGKILL) each worker whose chunks in flight all belong to jobs that ``owned`` accepts,
        and return how many: the joblib backend's abort after an error, a timeout or Ctrl-C, as
        loky kills its workers, so that no host goes on with work nobody waits for. They end as
        workers that died: their chunks fail with ``WorkerDiedError`` and new workers replace
        them. A worker that also holds another job's chunk is left alone."""
        killed = 0
        with self.lock:         # (held: no chunk of another job is handed to a worker being killed)
            if self.state == TERMINATE:
                return 0
            for w in self.workers:
                if not w.alive or w.stopping or w.aborted or not w.outstanding:
                    continue
                chunks = [self.chunks.get(cid) for cid in w.outstanding]
                if all(c is not None and owned(c.job) for c in chunks):
                    w.aborted = True
                    w.process.kill()
                    killed += 1
        return killed

    def drop_retrying(self, owned: Callable[[Job], bool], why: BaseException) -> int:
        """Fail, with ``why``, the chunks that ``owned`` accepts and that wait in the queue to run
        again (their worker's connection was lost: with no worker left they wait for the host to
        come back), and return how many: the joblib backend's abort, whose call nobody waits for
        any more.  Left, they would hold the executor's ``shutdown()`` until the host returned."""
        with self.lock:
            dropped = [c for c in self.pending if c.tries and owned(c.job)]
            if dropped:
                self.pending = collections.deque(c for c in self.pending if not (c.tries and owned(c.job)))
        for chunk in dropped:
            chunk.job._set(chunk.start, False, [(False, why)] * chunk.n)
        if dropped:
            self.wake()
        return len(dropped)

    # -- the manager thread ------------------------------------------------------------------------
    def _run(self) -> None:
        terminating_since = None
        try:
            while True:
                with self.lock:
                    state = self._pass()
                    idle = not self.pending and not self.chunks and not self.feeders and not self.making
                self._tell_refused()
                if state == TERMINATE and terminating_since is None:
                    terminating_since = time.monotonic()
                    self._terminate_workers()
                if state == CLOSE and idle and self._stop_workers() and self.reconnector is not None:
                    self.reconnector.stop()
                live = [w for w in self.workers if w.alive]
                if state != RUN and not live and (state == TERMINATE or idle or not self._reconnecting()):
                    return
                timeout = None
                if terminating_since is not None:
                    waited = time.monotonic() - terminating_since
                    if waited > 2 * TERMINATE_GRACE:
                        log.warning("pool workers did not end: %s", live)
                        return
                    if waited > TERMINATE_GRACE:
                        for w in live:
                            w.process.kill()
                    timeout = 0.2
                for key, mask in self.sel.select(timeout):
                    handler, w = key.data
                    handler(w, mask)
        except BaseException:      # (a SystemExit of ours must not leave a pool taking tasks nobody runs)
            log.exception("the pool's manager thread failed")
            with self.lock:
                self.state = TERMINATE
            self._terminate_workers()
        finally:
            with self.lock:
                self.stopped = True
            self._fail_everything(RemoteProcessError("the pool was terminated before this task finished"))
            for w in self.workers:
                w.close()
            self.sel.close()
            self.waker.close()

    def _pass(self) -> str:
        """One pass of the manager thread (lock held): take rejoined workers, dispatch; the state."""
        state = self.state
        if self.rejoined:
            self._take_rejoined()
        if state != TERMINATE:
            self._dispatch()
        self.passes += 1
        self.dispatched.notify_all()
        return state

    def _on_wake(self, _w: None, _mask: int) -> None:
        self.waker.clear()

    def _pick(self, quick: Worker | None = None) -> Worker | None:
        """The least busy worker that may take a chunk now: an idle one, or ``quick`` (the worker
        that just returned a quick result, ``_on_message``) up to ``PREFETCH`` chunks. Never a
        busy other: its chunk may be a long one, and a chunk sent there would wait behind it
        while a worker that is free sooner sits idle (the chunk waits here for the first free)."""
        best, best_load = None, None
        n = len(self.workers)
        for k in range(n):
            w = self.workers[(self.rr + k) % n]
            if not w.alive or w.stopping or w.aborted or not w.conn_open or w.host in self.lost_hosts:
                continue
            if self.maxtasks is not None and w.sent >= self.maxtasks:
                continue
            load = len(w.outstanding)
            if load >= (PREFETCH if w is quick else 1):
                continue
            if best_load is None or load < best_load:
                best, best_load = w, load
                if load == 0:
                    break
        if best is not None:
            self.rr = (self.workers.index(best) + 1) % n
        return best

    def _dispatch(self, quick: Worker | None = None) -> None:
        """Hand pending chunks to workers (called with the lock held); ``quick``: see ``_pick``."""
        while self.pending:
            w = self._pick(quick)
            if w is None:
                return
            chunk = self.pending.popleft()
            if not chunk.tries and not chunk.job._dispatching():
                continue            # a cancelled future
            data = self._message_for(chunk, w)
            if data is None:
                continue
            chunk.tries += 1
            self.chunks[chunk.cid] = chunk
            if not w.outstanding:
                w.busy_since = time.monotonic()
            w.outstanding.append(chunk.cid)
            w.sent += 1
            if chunk.blobs:
                self._send_blobs(w, chunk.blobs)
            w.out += data
            if not self.retries:
                chunk.data = {}
                chunk.source = None
                chunk.blobs = None
            self._flush(w)

    def _send_blobs(self, w: Worker, blobs: dict[str, memoryview]) -> None:
        """Before a chunk: the shared arguments it refers to that ``w`` does not hold yet, each sent
        once per worker (a message, then its bytes straight from the caller's buffer). The worker
        keeps them, up to ``SHARED_CACHE`` bytes: the least recently used others are dropped first."""
        for key, view in blobs.items():
            if key in w.blobs:
                w.blobs.move_to_end(key)
                continue
            drops = []
            for old in list(w.blobs):
                if w.blob_bytes + view.nbytes <= SHARED_CACHE:
                    break
                if old not in blobs:
                    w.blob_bytes -= w.blobs.pop(old)
                    drops.append(old)
            w.out += frame(pickle.dumps(("blob", key, drops), pickle.HIGHEST_PROTOCOL))
            w.out += frame_header(view.nbytes)
            w.out.add_view(view)
            w.blobs[key] = view.nbytes
            w.blob_bytes += view.nbytes

    def _flush(self, w: Worker) -> None:
        while w.out:
            try:
                w.out.send(w.sock)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                w.out.clear()       # the worker is gone; its sentinel says how
                break
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if w.out else 0)
        if w.conn_open and want != w.events:
            w.events = want
            self.sel.modify(w.conn.fileno(), want, (self._on_conn, w))

    def _on_conn(self, w: Worker, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            with self.lock:
                self._flush(w)
        if mask & selectors.EVENT_READ:
            self._read(w, READ_BATCH)

    def _read(self, w: Worker, batch: int | None) -> None:
        n = 0
        while w.conn_open and (batch is None or n < batch):
            try:
                data = w.conn.recv_bytes()
            except (EOFError, OSError):
                self._conn_closed(w)
                return
            self._on_message(w, data)
            n += 1
            try:
                if not w.conn.poll(0):
                    return
            except (EOFError, OSError):
                self._conn_closed(w)
                return

    def _conn_closed(self, w: Worker) -> None:
        if w.conn_open:
            w.conn_open = False
            try:
                self.sel.unregister(w.conn.fileno())
            except (KeyError, ValueError):
                pass

    def _on_message(self, w: Worker, data: bytes) -> None:
        try:
            msg = pickle.loads(data)
            kind = msg[0]
        except Exception as exc:
            log.warning("%r sent something that is not a message (%s); ignoring it", w, exc)
            return
        if kind == "hello":
            w.hello = True
            w.pid, w.agent_pid, w.cpus = msg[1], msg[2], msg[3]
            return
        if kind == "init-error":
            w.init_error = msg[1]
            return
        if kind not in ("result", "failed"):
            return
        cid = msg[1]
        with self.lock:
            chunk = self.chunks.pop(cid, None)
            try:
                w.outstanding.remove(cid)
            except ValueError:
                pass
            now = time.monotonic()
            took = now - w.busy_since
            self.chunk_time = took if self.chunk_time is None else 0.7 * self.chunk_time + 0.3 * took
            w.busy_since = now
            if self.pending:
                # a quick result: its worker gets its next chunk and one more (hiding the round trip)
                quick = took < FAST and self.chunk_time < FAST
                self._dispatch(w if quick else None)
        self._tell_refused()
        if chunk is None:
            return
        tb_class = getattr(chunk.job, "traceback_class", RemoteTraceback)
        if kind == "failed":
            error = task_error(w, msg[2], tb_class)
            chunk.job._set(chunk.start, False, [(False, error)] * chunk.n)
            return
        all_ok, payload = msg[2], msg[3]
        try:
            values = pickle.loads(payload)
        except BaseException as exc:       # even SystemExit: that result's, not the manager thread's
            err = ResultUnpicklingError("cannot unpickle the results of a task from %s: %s: %s"
                                        % (w.host, type(exc).__name__, exc), w.host)
            chunk.job._set(chunk.start, False, [(False, err)] * chunk.n)
            return
        if not all_ok:
            values = [(True, v) if ok else (False, task_error(w, v, tb_class)) for ok, v in values]
        chunk.job._set(chunk.start, all_ok, values)

    def _on_sentinel(self, w: Worker, _mask: int) -> None:
        """A worker ended: deliver what it sent, fail what it was running, maybe replace it."""
        if w.conn_open and _poll(w.conn):
            self._read(w, None)
        try:
            self.sel.unregister(w.process.sentinel)
        except (KeyError, ValueError):
            pass
        self._conn_closed(w)
        w.process.join(TERMINATE_GRACE)
        code = w.process.exitcode
        w.alive = False
        w.close()
        state = self.state
        err: RemoteProcessError
        if code == CONNECTION_LOST:
            reason = "%s" % (w.process.connection_error or "connection lost")
            err = WorkerLostError("%s: the connection to this host was lost while pool worker pid %s ran "
                                  "this task (%s)" % (w.host, w.pid, reason), w.host)
            self._host_lost(w, reason, state)
        elif w.init_error is not None:
            err = RemoteProcessError("%s: a replacement pool worker's initializer raised:\n%s"
                                     % (w.host, w.init_error), w.host)
            self.broken_hosts[w.host] = "its initializer raised"
            self.down_since.setdefault(w.host, time.time())
        else:
            said = last_words(getattr(w.process._popen, "stderr_tail", ""))
            err = WorkerDiedError("%s: pool worker pid %s exited with exitcode %s while running this task%s"
                                  % (w.host, w.pid, code, "; its stderr ended with:\n" + said if said else ""), w.host)
        with self.lock:
            lost = [self.chunks.pop(cid) for cid in w.outstanding if cid in self.chunks]
            w.outstanding.clear()
            if code == CONNECTION_LOST and state != TERMINATE:
                again = [c for c in lost if c.tries <= self.retries]
                self.pending.extendleft(reversed(again))        # first, in their order
                lost = [c for c in lost if c.tries > self.retries]
                if again:
                    log.info("%s: %d chunks lost with the connection run again elsewhere", w.host, len(again))
        replace = (state == RUN or (state == CLOSE and (self.pending or self.chunks or self.feeders or self.making)))
        if replace and not w.stopping and w.host not in self.lost_hosts and w.host not in self.broken_hosts:
            try:
                new = self.starter.spawn(w.host, w.options)
            except (ConnectError, ConnectionLostError) as exc:
                # the connection, not the host's setup: lost like its workers' (reconnected with retries)
                log.warning("%s: cannot replace a pool worker: %s", w.host, exc)
                self._host_lost(w, str(exc), state)
            except Exception as exc:
                log.warning("%s: cannot replace a pool worker: %s", w.host, exc)
                self.broken_hosts[w.host] = str(exc)
                self.down_since.setdefault(w.host, time.time())
            else:
                self.workers[self.workers.index(w)] = new
                self._register(new)
        # Told only now, with the replacement in place: a caller that submits again at once
        # (as soon as its future fails) finds a worker.
        for chunk in lost:
            chunk.job._set(chunk.start, False, [(False, err)] * chunk.n)
        if not any(x.alive for x in self.workers) and not self._reconnecting():
            self._fail_everything(self._no_workers_error())

    def _reconnecting(self) -> bool:
        """Some lost host is being reconnected and tasks may wait for it (``retries``): with no worker
        left, they wait instead of failing."""
        return bool(self.retries) and self.reconnector is not None and self.reconnector.active()

    def _rejoin(self, host: str, workers: list[Worker]) -> bool:
        """From a reconnect thread: the host's workers are up again (False: the pool is ending)."""
        with self.lock:
            if self.state == TERMINATE or self.reconnector is None or self.reconnector.stopping.is_set():
                return False
            self.rejoined.append((host, workers))
        self.wake()
        return True

    def _host_lost(self, w: Worker, reason: str, state: str) -> None:
        """``w``'s host lost its connection: down until it rejoins (tried again with retries)."""
        if w.host in self.lost_hosts:
            return
        self.lost_hosts[w.host] = reason
        self.down_since.setdefault(w.host, time.time())
        if state == RUN:
            log.warning("%s: pool workers lost with their connection (%s); the other hosts go on%s", w.host, reason,
                        "" if self.reconnector is not None else " (this one is not connected again: retries=0)")
        if state != TERMINATE and self.reconnector is not None:
            slots = sum(1 for x in self.workers if x.host == w.host)
            self.reconnector.lost(w.host, w.options, slots, reason)

    def _take_rejoined(self) -> None:
        """Put rejoined workers in the places of the lost ones (manager thread, lock held)."""
        for host, new in self.rejoined:
            self.lost_hosts.pop(host, None)
            self.down_since.pop(host, None)
            slots = [i for i, x in enumerate(self.workers) if x.host == host and not x.alive]
            for w in new:
                if slots:
                    self.workers[slots.pop(0)] = w
                else:
                    self.workers.append(w)
                self._register(w)
        self.rejoined.clear()

    def hosts_status(self) -> dict[str, dict[str, Any]]:
        """Per host spec: ``up``, live ``workers``, ``down_since`` (time.time()), ``error``, reconnect ``attempts``."""
        out: dict[str, dict[str, Any]] = {}
        for host, _options, _n in self.hosts:
            if host in out:
                continue
            down = self.reconnector.status(host) if self.reconnector is not None else None
            error = self.lost_hosts.get(host) or self.broken_hosts.get(host)
            out[host] = {
                "up": host not in self.lost_hosts and host not in self.broken_hosts,
                "workers": sum(1 for w in self.workers if w.host == host and w.alive),
                "down_since": down["down_since"] if down else self.down_since.get(host),
                "error": down["error"] if down else error,
                "attempts": down["attempts"] if down else 0,
                "next_try": down["next_try"] if down else None,
            }
        return out

    def _no_workers_error(self) -> RemoteProcessError:
        why = dict(self.broken_hosts, **self.lost_hosts)
        # (a lost connection's reason names its host already)
        detail = "; ".join(reason if reason.startswith(host + ":") else "%s: %s" % (host, reason)
                           for host, reason in why.items()) or "the pool was shut down"
        fix = ""
        if self.lost_hosts and self.reconnector is None:
            # A long-running program's pool is broken for good by one network blip: say how not to be.
            fix = (". Without retries a host whose connection was lost is not connected again: make the pool "
                   "with retries=N (N > 0) to have it reconnected in the background while tasks wait, or make "
                   "a new pool")
        return RemoteProcessError("no pool worker is left to run this task (%s)%s" % (detail, fix))

    def _fail_everything(self, err: BaseException) -> None:
        with self.lock:
            chunks = list(self.pending) + list(self.chunks.values())
            self.pending.clear()
            self.chunks.clear()
            for w in self.workers:
                w.outstanding.clear()
        for chunk in chunks:
            chunk.job._set(chunk.start, False, [(False, err)] * chunk.n)

    def _stop_workers(self) -> bool:
        """CLOSE and nothing left: tell the workers to stop (False: a call came in meanwhile)."""
        with self.lock:
            if self.pending or self.chunks or self.feeders or self.making:
                return False
            self.stopped = True
            for w in self.workers:
                if w.alive and not w.stopping:
                    w.stopping = True
                    w.out += frame(pickle.dumps(("stop",)))
                    self._flush(w)
        return True

    def _terminate_workers(self) -> None:
        self._fail_everything(RemoteProcessError("the pool was terminated before this task finished"))
        for w in self.workers:
            if w.alive:
                w.stopping = True
                try:
                    w.process.terminate()
                except Exception:
                    pass

    # -- after fork, in a child of the caller's process ------------------------------------------------
    def abandon(self) -> None:
        self.state = TERMINATE
        for w in self.workers:
            w.close()


def _poll(conn: Connection) -> bool:
    try:
        return conn.poll(0)
    except (EOFError, OSError):
        return True


_schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for core in list(_schedulers):
        if core.pid != os.getpid():
            core.abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)
