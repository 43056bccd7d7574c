"""The pool's workers: where they go, how each starts, and the handle the scheduler keeps for it.

A worker is a ``RemoteProcess`` running ``remoteproc.agent.worker.main`` on a
``Pipe()`` of its own; it is ready once it sends its hello (after the pool's
initializer).  The workers of all hosts start at once, one thread per host.
"""

from __future__ import annotations

import collections
import itertools
import os
import pickle
import socket
import threading
from multiprocessing.connection import Connection, Pipe
from multiprocessing.connection import wait as _wait
from typing import Any, Callable, Iterable, Mapping, Optional, Tuple, Union, cast

from .agent import worker
from .errors import CONNECTION_LOST, ConfigError, ConnectionLostError, RemoteProcessError
from .process import RemoteProcess

TERMINATE_GRACE = 5.0   # seconds between terminate() and kill() of the workers

#: a pool's ``hosts``: one spec, or specs, ``(spec, {ssh options})`` pairs and ``(spec, {ssh options}, workers)``
Hosts = Union[str, Iterable[Union[str, Tuple[str, Mapping[str, Any]], Tuple[str, Mapping[str, Any], Optional[int]]]]]


def parse_hosts(hosts: Hosts, ssh_options: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], Optional[int]]]:
    """``hosts`` as a list of ``(spec, options, workers)``.

    Each entry is a spec, ``(spec, {options})``, or ``(spec, {options}, workers)`` (what
    ``remoteproc.hostlist`` returns; ``workers`` None: ``processes_per_host``).
    """
    if isinstance(hosts, str):
        hosts = [hosts]
    if hosts is None or isinstance(hosts, int):
        # (``Pool(4)``, ``Pool()`` or ``ProcessPoolExecutor(None)`` as multiprocessing takes them: a
        # count of local workers; here the first argument says where they run)
        raise ConfigError("the first argument of Pool and Executor is the hosts ('user@host' or a list of them), "
                          "not %r: multiprocessing's number of processes is processes_per_host= here, for example "
                          "Pool(['alice@node1', 'alice@node2'], processes_per_host=4)" % (hosts,))
    if isinstance(hosts, Mapping):
        # (iterating a dict gives its keys: {"node1": 4} ran processes_per_host workers, the 4 unread)
        raise ConfigError("the hosts of Pool and Executor are a list, not a dict (%r): pass a list of specs, or of "
                          "(spec, {ssh options}, workers) triples, for example %r"
                          % (hosts, [(str(k), {}, v) for k, v in list(hosts.items())[:2]]))
    out: list[tuple[str, dict, Optional[int]]] = []
    for entry in hosts:
        if isinstance(entry, str):          # (a spec may carry options: pytest_plugin.RemoteHost)
            out.append((str.__str__(entry), {**getattr(entry, "ssh_options", {}), **ssh_options}, None))
        elif (isinstance(entry, tuple) and len(entry) in (2, 3) and isinstance(entry[0], str)
              and isinstance(entry[1], Mapping)):
            workers = entry[2] if len(entry) == 3 else None
            if not _worker_count(entry[2:]):
                raise ConfigError("pool host %r: its workers must be an int of at least 1 (or None: "
                                  "processes_per_host), not %r. Fix: give it 1 or more workers, or leave it out "
                                  "of the list" % (entry[0], workers), entry[0])
            out.append((entry[0], {**ssh_options, **entry[1]}, workers))
        else:
            raise ConfigError("a pool host is 'user@host[:port]', ('user@host', {ssh options}) or "
                              "('user@host', {ssh options}, workers), not %r" % (entry,))
    if not out:
        raise ConfigError("a pool needs at least one host")
    return _apart(out)


def _apart(hosts: list[tuple[str, dict[str, Any], Optional[int]]]) -> list[tuple[str, dict[str, Any], Optional[int]]]:
    """A spec given again with options that reach another sshd (``port=``) or account
    (``username=``) gets them written into it (``user@host:port``): a pool tells its hosts apart by
    spec (which workers a lost connection took, which to start again, ``hosts_status()``), and two
    sshds behind one name are two hosts.  The same spec with the same port and user stays one
    host ("the same host twice for twice the workers")."""
    first: dict[str, tuple[Any, Any]] = {}
    out = []
    for spec, options, workers in hosts:
        where = (options.get("port"), options.get("username"))
        if first.setdefault(spec, where) != where:
            from .ssh.spec import parse_spec

            user, name, port = parse_spec(spec)
            user, port = options.get("username") or user, options.get("port") or port
            spec = "%s%s%s" % (user + "@" if user else "", "[%s]" % name if ":" in name else name,
                               ":%s" % port if port else "")
        out.append((spec, options, workers))
    return out


def workers_per_host(hosts: list[tuple[str, dict[str, Any], Optional[int]]],
                     processes_per_host: Optional[int]) -> dict[str, Optional[int]]:
    """How many workers each host spec gets (a spec given twice: the sum); None: its CPU count."""
    out: dict[str, Optional[int]] = {}
    for spec, _options, n in hosts:
        count = n or processes_per_host
        before = out.get(spec, 0)
        out[spec] = None if count is None or before is None else before + count
    return out


def _worker_count(rest: tuple) -> bool:
    return not rest or rest[0] is None or (isinstance(rest[0], int) and not isinstance(rest[0], bool) and rest[0] >= 1)


#: what an error that a worker's end explains quotes of its stderr, at most: lines, characters
LAST_LINES = 3
LAST_CHARS = 2000


def last_words(said: str, lines: int = LAST_LINES, limit: int = LAST_CHARS) -> str:
    """What ends ``said`` (the end of a process's stderr) that tells why it ended: its last lines
    that are not blank, back to its exception's line (a traceback's frames and source lines, which
    are indented, stay out; hints after the exception come in), at most ``lines`` of them and
    ``limit`` characters (an over-long text keeps its start and its end)."""
    kept: list[str] = []
    for line in reversed(said.splitlines()):
        line = line.rstrip()
        if not line:
            continue
        if line[0].isspace() or line.startswith("Traceback (most recent call last)"):
            break
        kept.append(line)
        if len(kept) >= lines:
            break
    text = "\n".join(reversed(kept))
    if len(text) > limit:
        text = text[:limit // 2] + " [...] " + text[-(limit // 2 - 7):]
    return text


class Worker:
    """One started worker: its process, its end of the pipe, and the scheduler's bookkeeping for it."""

    def __init__(self, host: str, options: dict[str, Any], process: RemoteProcess, conn: Connection) -> None:
        self.host = host
        self.options = options
        self.process = process
        self.conn = conn
        self.sock = socket.socket(fileno=os.dup(conn.fileno()))
        self.out = Outbox()
        #: the shared arguments this worker holds (key -> bytes), least recently used first
        self.blobs: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.blob_bytes = 0
        self.outstanding: collections.deque[int] = collections.deque()     # chunk ids in flight
        self.sent = 0
        self.pid: int = cast(int, process.pid)     # started: the remote pid is known
        self.agent_pid: int | None = None
        self.cpus: int | None = None
        self.hello = False
        self.init_error: str | None = None
        self.alive = True
        self.conn_open = True
        self.events = 0
        self.stopping = False
        self.aborted = False        # killed by Scheduler.kill_running(): no new chunks, replaced when it ends
        self.busy_since = 0.0
        #: "same", or "spawn" on a host with another Python: tasks are pickled for it (docs/python-versions.md)
        self.mode: str = getattr(process._popen, "mode", "same")

    def close(self) -> None:
        for c in (self.conn, self.sock):
            try:
                c.close()
            except OSError:
                pass

    def __repr__(self) -> str:
        return "<pool worker pid %s on %s>" % (self.pid, self.host)


class Outbox:
    """What the pool has yet to write to a worker, in order: messages copied together, and large
    buffers (the joblib backend's shared arguments) as views of the caller's data, not copies."""

    def __init__(self) -> None:
        self.parts: collections.deque[Union[bytearray, memoryview]] = collections.deque()

    def __iadd__(self, data: bytes) -> "Outbox":
        if self.parts and isinstance(self.parts[-1], bytearray):
            self.parts[-1] += data
        else:
            self.parts.append(bytearray(data))
        return self

    def add_view(self, view: memoryview) -> None:
        """Send the bytes of ``view`` (a 1-D view of bytes) without copying them."""
        if view.nbytes:
            self.parts.append(view)

    def __bool__(self) -> bool:
        return bool(self.parts)

    def clear(self) -> None:
        self.parts.clear()

    def send(self, sock: socket.socket) -> None:
        """One non-blocking send of the first part (raises what ``send`` raises)."""
        head = self.parts[0]
        with memoryview(head) as view:
            n = sock.send(view, socket.MSG_DONTWAIT)
            whole = n >= view.nbytes
        if whole:
            self.parts.popleft()
        elif isinstance(head, bytearray):
            del head[:n]
        else:
            self.parts[0] = head[n:]


class _Handover:
    """The workers the hosts' start threads have started so far, and the moment their caller gave
    up waiting (interrupted) and took them: a worker started after that is killed by its own start
    thread, so none is left running that nobody owns."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[Worker] = []
        self.taken = False

    def keep(self, started: list[Worker], w: Worker) -> bool:
        """Add ``w`` to its host's ``started``; False, and ``w`` killed, once the caller has given up."""
        with self.lock:
            if not self.taken:
                started.append(w)
                self.started.append(w)
                return True
        w.process.kill()
        w.process.join(TERMINATE_GRACE)
        w.close()
        return False

    def take_all(self) -> list[Worker]:
        with self.lock:
            self.taken = True
            return list(self.started)


def _every_host_said(errors: list[BaseException]) -> BaseException:
    """The first failed host's error (its type, for ``except``), its message followed by every
    other host's: a pool over many hosts with several broken says them all in one run, rather
    than one per run, each after the slowest host's connect timeout."""
    first, others = errors[0], errors[1:]
    if others and isinstance(first, RemoteProcessError) and all(isinstance(e, Exception) for e in others):
        first.args = ("%s\n(and %d other host%s failed to start: %s)"
                      % (first, len(others), "s" if len(others) > 1 else "", "; ".join(str(e) for e in others)),)
    return first


class Starter:
    """What every worker of one pool starts with: the initializer, its arguments, the task limit,
    and whether its tasks may start processes (an Executor's: ProcessPoolExecutor's workers are
    not daemonic; a Pool's are, as multiprocessing's)."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], maxtasks: int | None,
                 may_have_children: bool = False, threads: Optional[tuple[Any, ...]] = None) -> None:
        self.initializer = initializer
        self.initargs = initargs
        self.maxtasks = maxtasks
        self.may_have_children = may_have_children
        #: the joblib backend's limits of native thread pools, ``(explicit, {variable: value given
        #: here}, variable names)`` (``worker.limit_threads``), or None: the workers' own environment
        self.threads = threads
        #: host spec -> how many workers the pool gives it (None: its CPU count), for ``threads``
        self.per_host: dict[str, Optional[int]] = {}

    def spawn(self, host: str, options: dict[str, Any]) -> Worker:
        parent_end, child_end = Pipe()
        args: tuple[Any, ...] = (child_end, self.initializer, self.initargs, self.maxtasks, self.may_have_children)
        if self.threads is not None:
            args += ((self.per_host.get(host),) + self.threads,)
        p = RemoteProcess(host, target=worker.main, args=args, daemon=True, **options)
        p.name = p.name.replace("Process", "PoolWorker")     # (as multiprocessing names its workers)
        try:
            p.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        return Worker(host, options, p, parent_end)

    @staticmethod
    def hello(w: Worker) -> None:
        """Wait for a new worker's hello (after its initializer); raise if it ends instead."""
        _wait([w.conn, w.process.sentinel])
        try:
            msg = pickle.loads(w.conn.recv_bytes()) if w.conn.poll(0) else None
        except (EOFError, OSError):
            msg = None
        if msg is not None and msg[0] == "hello":
            w.hello = True
            w.pid, w.agent_pid, w.cpus = msg[1], msg[2], msg[3]
            return
        w.process.join(TERMINATE_GRACE)
        if msg is not None and msg[0] == "init-error":
            raise RemoteProcessError("%s: the pool initializer raised:\n%s" % (w.host, msg[1]), w.host)
        if w.process.exitcode == CONNECTION_LOST:
            raise ConnectionLostError("%s: lost while starting a pool worker: %s"
                                      % (w.host, w.process.connection_error), w.host)
        said = last_words(getattr(w.process._popen, "stderr_tail", ""))
        if said:    # (what it said is on stderr too, which pytest, cron or a logging setup may have taken)
            raise RemoteProcessError("%s: a pool worker ended (exitcode %s) before it was ready; its stderr ended "
                                     "with:\n%s" % (w.host, w.process.exitcode, said), w.host)
        raise RemoteProcessError("%s: a pool worker ended (exitcode %s) before it was ready; see its "
                                 "stderr above" % (w.host, w.process.exitcode), w.host)

    def _start_host(self, index: int, host: str, options: dict[str, Any], count: int | None, out: list,
                    handover: Optional[_Handover] = None) -> None:
        started: list[Worker] = []
        keep = (handover or _Handover()).keep
        try:
            first = self.spawn(host, options)
            if not keep(started, first):
                return
            self.hello(first)
            n = count or first.cpus or 1
            for _ in range(n - 1):
                if not keep(started, self.spawn(host, options)):
                    return
            for w in started[1:]:
                self.hello(w)
            out[index] = started
        except BaseException as exc:
            out[index] = (exc, started)

    def start_all(self, hosts: list[tuple[str, dict[str, Any], Optional[int]]], count: int | None,
                  workers: list[Worker]) -> None:
        """Start ``count`` workers per host (default: its CPU count) into ``workers``, in round-robin order.

        On an error, ``workers`` holds those started (for the caller to stop) and the first error is
        raised. Interrupted (Ctrl-C while a host is slow), ``workers`` holds every worker started so
        far, and a host's start still under way kills what it starts after that.
        """
        out: list = [None] * len(hosts)
        handover = _Handover()
        threads = [threading.Thread(target=self._start_host, args=(i, h, o, n or count, out, handover),
                                    name="remoteproc-pool-start %s" % h, daemon=True)
                   for i, (h, o, n) in enumerate(hosts)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            workers.extend(handover.take_all())
            raise
        errors = []
        per_host = []
        for item in out:
            if isinstance(item, tuple):
                errors.append(item[0])
                workers.extend(item[1])
            else:
                per_host.append(item)
        for row in itertools.zip_longest(*per_host):      # interleave the hosts: round-robin order
            workers.extend(w for w in row if w is not None)
        if errors:
            raise _every_host_said(errors)
