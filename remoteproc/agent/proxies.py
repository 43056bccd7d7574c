"""The child's side of remoteproc's Queue, JoinableQueue, SimpleQueue and Event.

These objects live in the process that created them (the owner, see
``remoteproc/queues.py``).  Every process that is given one gets its own
Connection to the owner's server thread, and holds one of the proxies below,
which turn each method call into a request on that Connection.  The module is
shipped to remote hosts, so it uses the standard library only (cloudpickle, which
is shipped too, is used when present to pickle items).

The wire, one pickled tuple per message:
    request  ``(rid, op, *args)``   rid 0: no reply wanted
    reply    ``(rid, status, value)``
Items travel pickled (bytes) inside requests and replies: the owner stores them
as bytes and never has to unpickle an item that goes from one child to another.
"""

import io
import itertools
import os
import pickle
import queue as _queue
import socket
import sys
import threading

# requests
ATTACH = 1          # first message of every proxy: (token,); the owner may drop its copy of our end
PUT = 2             # (item, block, timeout)
GET = 3             # (block, timeout)
QSIZE = 4
EMPTY = 5
FULL = 6
TASK_DONE = 7
JOIN = 8
SET = 9
CLEAR = 10
IS_SET = 11
WAIT = 12           # (timeout,)
# 13-24: locks, conditions, barriers and shared values (agent/synchronize.py)
CANCEL = 25         # (rid,): the call rid was interrupted while it waited (Ctrl-C): withdraw it
PUT_BACK = 26       # (item,): the item an interrupted get() was handed after all: first in line again

# reply statuses
OK = 0
TIMEOUT = 1         # Empty for get, Full for put, False for Event.wait
ERROR = 2           # value: the exception to raise
RUN = 3             # Barrier.wait: the caller is the last party and runs the action
CANCELLED = 4       # the request was withdrawn (CANCEL) before it did anything

PROTOCOL = pickle.HIGHEST_PROTOCOL
OUT_OF_BAND = 64 * 1024     # bytes values this big travel as messages of their own (send_msg)


# -- one message: a pickled tuple, big items after it --------------------------------------

def send_msg(conn, msg):
    """Send one request or reply (a tuple).  A ``bytes`` value of ``OUT_OF_BAND`` bytes or
    more (a pickled item) is not copied into the tuple's pickle: it goes as pickle protocol
    5's out-of-band buffer, a message of its own right after the tuple's, so that a big item
    is held once, not twice, while it is sent.  The caller serializes the sends of one
    Connection, so the two messages are never separated."""
    if not any(type(v) is bytes and len(v) >= OUT_OF_BAND for v in msg):
        conn.send_bytes(pickle.dumps(msg, PROTOCOL))
        return
    msg = tuple(pickle.PickleBuffer(v) if type(v) is bytes and len(v) >= OUT_OF_BAND else v for v in msg)
    buffers = []  # type: list  # (in the pickle's order: exactly the buffers recv_msg will ask for)
    conn.send_bytes(pickle.dumps(msg, PROTOCOL, buffer_callback=buffers.append))
    for buf in buffers:
        conn.send_bytes(buf)


def _following(conn):
    while True:
        yield conn.recv_bytes()


def recv_msg(conn):
    """Receive what ``send_msg`` sent: the tuple, with its out-of-band values read from the
    messages after it (each one the very ``bytes`` object ``recv_bytes`` returned)."""
    return pickle.loads(conn.recv_bytes(), buffers=_following(conn))


# -- items --------------------------------------------------------------------------------

class Refused(Exception):
    """An object remoteproc will not put into a message on purpose (it cannot cross hosts)."""


class RefusedHandle(Refused, TypeError):
    """A Connection, socket or fd inside an item."""


class RefusedObject(Refused, RuntimeError):
    """A remoteproc Queue, Lock, ... inside an item (pass them as process arguments)."""


class RefusedProxy(Refused, TypeError):
    """A proxy received from the owner, passed on (only the owner can attach processes)."""


class RefusedLocal(Refused, TypeError):
    """A multiprocessing Queue, Lock, Value, ... inside an item: it rests on one host's shared memory."""


def local_only(obj):
    """For a multiprocessing object that rests on this host's shared memory or semaphores (and so
    cannot reach another process but by fork): what to use instead; "" for any other object."""
    mod = type(obj).__module__ or ""
    if not mod.startswith("multiprocessing."):
        return ""
    name = type(obj).__name__
    if mod in ("multiprocessing.queues", "multiprocessing.synchronize"):
        return "Use remoteproc.%s instead." % name
    if mod == "multiprocessing.sharedctypes" or name.startswith("Synchronized"):
        return "Use remoteproc.Value or remoteproc.Array instead."
    if mod == "multiprocessing.shared_memory":
        return "No memory is shared between hosts; use remoteproc.Array (one round trip per access) instead."
    if mod == "multiprocessing.managers":
        if not name.endswith("Manager"):
            return ""       # tokens, namespaces: plain data
        return "Pass the manager's proxies (manager.dict(), ...) instead: they are bridged."
    return ""


FILE_TYPES = (io.FileIO, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.BufferedRWPair,
              io.TextIOWrapper)
_STD_STREAMS = ("stdin", "stdout", "stderr")


def open_file(obj):
    """For a file object of this process's (``open()``'s, closed or not): its name; else None.

    cloudpickle sends a text file opened for reading as a ``StringIO`` of what is left in it, read
    whole here, and refuses one opened for writing or in binary mode; another Python (spawn mode)
    refuses them all.  Such a file is therefore refused in every case, as multiprocessing's spawn
    refuses it, so that a program does the same whatever the host's Python.  The interpreter's own
    streams (``sys.stdout``, ...) are not refused: they arrive as the receiver's own."""
    if not isinstance(obj, FILE_TYPES):
        return None
    import sys

    if any(obj is getattr(sys, name, None) for name in _STD_STREAMS):
        return None
    if not obj.closed:
        try:
            obj.fileno()
        except (OSError, ValueError):
            return None         # (over an in-memory buffer: no descriptor)
    name = getattr(obj, "name", None)
    return repr(name) if name is not None else type(obj).__name__


def refuse_open_file(obj):
    """RefusedHandle for an item that is an open file (``open_file``); nothing for another object."""
    name = open_file(obj)
    if name is not None:
        raise RefusedHandle(
            "cannot put an open file (%s) into a remoteproc queue or task: its file descriptor is of this "
            "process, maybe of another host. Send its path or its content instead." % name)


def _refuse(obj):
    raise RefusedHandle(
        "cannot put a %s into a remoteproc queue: it holds a file descriptor of one process. "
        "Pass Connections as process arguments instead." % type(obj).__name__)


_pickler_class = None


def registered_reduce(obj):
    """The reduction of ``obj`` by a reducer the program registered for its type with
    ``multiprocessing.reduction.ForkingPickler.register`` (as a local child's pickler uses it), or
    None. Those of multiprocessing and remoteproc themselves (fds, methods) are not for other hosts."""
    reduction = sys.modules.get("multiprocessing.reduction")
    if reduction is None:
        return None
    reducer = getattr(reduction.ForkingPickler, "_extra_reducers", {}).get(type(obj))
    module = getattr(reducer, "__module__", None) or ""
    if reducer is None or module.startswith(("multiprocessing", "remoteproc")):
        return None
    return reducer(obj)


def _item_pickler():
    """A pickler that ships by value what cloudpickle would, and refuses fds."""
    global _pickler_class
    if _pickler_class is None:
        from multiprocessing.connection import _ConnectionBase

        from . import byvalue, spawn
        try:
            import cloudpickle
            base = cloudpickle.Pickler
        except ImportError:         # pragma: no cover - cloudpickle is shipped and installed
            base = pickle.Pickler
        if spawn.ACTIVE:    # another Python than the user's: by reference only (docs/python-versions.md)
            base = pickle.Pickler

        class ItemPickler(base):  # type: ignore[misc,valid-type]  # (a base chosen at run time)
            def reducer_override(self, obj):
                if isinstance(obj, (_ConnectionBase, socket.socket)):
                    _refuse(obj)
                if isinstance(obj, FILE_TYPES):
                    refuse_open_file(obj)
                instead = local_only(obj)
                if instead:
                    raise RefusedLocal("a multiprocessing %s cannot be sent to another process, maybe on another "
                                       "host: it rests on shared memory or semaphores of one host. %s"
                                       % (type(obj).__name__, instead))
                reduced = registered_reduce(obj)
                if reduced is not None:
                    return reduced
                if base is not pickle.Pickler and byvalue.named_here(obj):
                    return NotImplemented   # (by reference: any process that gets the item resolves it)
                reduced = byvalue.ctypes_type_reduce(obj, base is not pickle.Pickler)
                if reduced is not None:
                    return reduced
                if base is pickle.Pickler:
                    return NotImplemented
                return byvalue.keep_slots(obj, super().reducer_override(obj))

        _pickler_class = ItemPickler
    return _pickler_class


def dumps_item(obj):
    """Pickle one item (or a task's arguments) for another process, maybe on another host."""
    buf = io.BytesIO()
    _item_pickler()(buf, protocol=PROTOCOL).dump(obj)
    return buf.getvalue()


def dumps_queued(queue, obj):
    """An item for ``queue.put``, or None: as multiprocessing's feeder thread does, an item that
    cannot be pickled is reported (``_on_queue_feeder_error``) and dropped; only what remoteproc
    refuses on purpose (fds, its own objects) raises in the caller."""
    try:
        return dumps_item(obj)
    except Refused:
        raise
    except Exception as exc:
        queue._on_queue_feeder_error(exc, obj)
        return None


def on_queue_feeder_error(e, obj):
    """multiprocessing.Queue's hook of that name: prints the traceback."""
    import traceback

    traceback.print_exc()


def loads_item(data):
    """Unpickle one item (or a task's arguments) that another process pickled."""
    from . import spawn

    if not spawn.ACTIVE:
        return pickle.loads(data)
    return _SpawnUnpickler(io.BytesIO(data)).load()


class _SpawnUnpickler(pickle.Unpickler):
    """A spawn-mode child's: refuses bytecode that a process of the user's Python put by value.

    A same-version child may put a lambda (or a function made at run time) into a Queue: it goes
    by value, as bytecode of its Python, which another version cannot run (3.8 fails to load it,
    3.13 dies of a segfault, 3.12 may run it wrongly). An exception naming the cause is better."""

    def find_class(self, module, name):
        found = super().find_class(module, name)
        if module.startswith("cloudpickle") and name == "_builtin_type":
            def builtin_type(type_name):
                if type_name == "CodeType":
                    from .grandchild import _host
                    from .spawn import USER_PYTHON, _this_python

                    raise pickle.UnpicklingError(
                        "%s: this item holds code pickled by value by a process of %s (a lambda, or a function "
                        "or class made at run time or not named by its module): this host runs %s, which cannot "
                        "run another version's bytecode. Fix: put functions and classes defined at the top level "
                        "of a module or of your script (they go by reference), or give every process that uses "
                        "the queue the same Python (docs/python-versions.md)"
                        % (_host(), USER_PYTHON or "another Python", _this_python()))
                return found(type_name)
            return builtin_type
        return found


# -- who is asking -------------------------------------------------------------------------

_token = None
_token_pid = None


def process_token():
    """This process's name for the owners it talks to: a lock is held by (token, thread id).

    Pids repeat across hosts and after fork, so the token adds the host name and random
    bytes; a forked child gets a token of its own."""
    global _token, _token_pid
    pid = os.getpid()
    if _token_pid != pid:
        _token = "%s:%d:%s" % (socket.gethostname(), pid, os.urandom(6).hex())
        _token_pid = pid
    return _token


# -- the connection to the owner ------------------------------------------------------------

class OwnerGone(EOFError):
    """The process that owns the queue or event went away (or closed it)."""


class _Client:
    """Request/reply over one Connection, usable from several threads at once.

    Whichever waiting thread gets there first reads replies for everyone (and
    hands each to its thread), so a thread blocked in ``get()`` never stops
    another thread of the same process from ``put()``-ting.
    """

    def __init__(self, conn, what):
        self.conn = conn
        self.what = what
        self.pid = os.getpid()
        self.send_lock = threading.Lock()
        self.cond = threading.Condition(threading.Lock())
        self.reader = None      # the thread that reads the next reply for every waiter, if any
        self.replies = {}
        self.rids = itertools.count(1)
        self.error = None

    def check(self):
        if self.conn is None:
            raise ValueError("%s is closed" % self.what)
        if os.getpid() != self.pid:
            raise RuntimeError(
                "this %s was handed to process %d; a process forked from it (%d) cannot use it. "
                "Pass the %s to that process as an argument from the process that created it."
                % (self.what, self.pid, os.getpid(), self.what))

    def send(self, msg):
        self.check()
        try:
            with self.send_lock:
                send_msg(self.conn, msg)
        except OSError as exc:
            raise self._gone(exc) from None

    def call(self, op, *args, undo=None):
        """One request and its reply.  Interrupted while it waits (KeyboardInterrupt, an exception
        a signal handler raised), the call has done nothing, as a local one: see ``_withdraw``."""
        rid = next(self.rids)
        self.send((rid, op) + args)
        try:
            status, value = self._wait(rid)
        except OwnerGone:
            raise
        except BaseException:
            self._withdraw(rid, undo)
            raise
        if status == ERROR:
            raise value
        return status, value

    def _withdraw(self, rid, undo):
        """The owner withdraws request ``rid`` and says so (CANCELLED) in its reply; a request it had
        answered already is undone here by ``undo(status, value)`` (a lock granted is released, an
        item handed over goes back first in line).  Otherwise it would still take effect for a
        thread that has gone on: a lock held for good, an item or a semaphore unit lost, a Barrier
        party that never comes, a Condition's lock not held again when its wait's ``with`` ends.
        (A Condition's wait answers once its lock is held again, as multiprocessing's re-acquires it.)"""
        try:
            self.send((0, CANCEL, rid))
            status, value = self._wait(rid)
            if status != CANCELLED and undo is not None:
                undo(status, value)
        except Exception:
            pass    # (the owner is gone, or the undo failed: the owner cleans up when this process ends)

    def _gone(self, exc=None):
        detail = (str(exc) or type(exc).__name__) if exc is not None else ""
        return OwnerGone("the process that owns this %s went away or closed it%s"
                         % (self.what, " (%s)" % detail if detail else ""))

    def _wait(self, rid):
        """Wait for the reply to ``rid``: one waiting thread reads for all, the others wait on
        ``cond``.  The reader is a thread, not a flag: an interruption that lands in the reader's
        ``finally`` (a second Ctrl-C) may leave it set, and the same thread's ``_withdraw`` must
        then read again rather than wait for a reader that is itself."""
        cond = self.cond
        me = threading.get_ident()
        with cond:
            while True:
                reply = self.replies.pop(rid, None)
                if reply is not None:
                    return reply
                if self.error is not None:
                    raise self._gone(self.error)
                if self.reader not in (None, me):
                    cond.wait()
                    continue
                self.reader = me
                cond.release()
                try:
                    try:
                        got = recv_msg(self.conn)
                    except (EOFError, OSError) as exc:
                        self.error = exc
                    else:
                        self.replies[got[0]] = got[1:]      # (at once: what an interruption may still lose)
                finally:
                    cond.acquire()
                    self.reader = None
                    cond.notify_all()

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


# -- the proxies --------------------------------------------------------------------------

class _Proxy:
    _what = "object"

    def __init__(self, conn, config):
        self._client = _Client(conn, self._what)
        self._config = config
        self._client.send((0, ATTACH, process_token()))

    def __reduce__(self):
        raise RefusedProxy(
            "a %s received from its owner cannot be passed on (its owner is process %s); pass the "
            "original object from the process that created it" % (self._what, self._config.get("owner")))


class _Queued(_Proxy):
    """What the queues share: an item an interrupted ``get()`` was handed goes back (``_Client._withdraw``)."""

    def _put_back(self, status, value):
        if status == OK:
            self._client.call(PUT_BACK, value)


class Queue(_Queued):
    """``multiprocessing.Queue`` API; the items live in the owner's process."""

    _what = "Queue"

    @property
    def _maxsize(self):
        return self._config["maxsize"]

    _on_queue_feeder_error = staticmethod(on_queue_feeder_error)
    _closed = False

    def _check_closed(self):
        if self._closed:
            raise ValueError("Queue %r is closed" % self)

    def put(self, obj, block=True, timeout=None):
        self._check_closed()
        item = dumps_queued(self, obj)
        if item is None:
            return
        if self._config["maxsize"] <= 0:
            # Unbounded: never Full, so nothing to wait for (as multiprocessing's feeder thread).
            self._client.send((0, PUT, item, False, None))
            return
        status, _ = self._client.call(PUT, item, block, timeout)
        if status == TIMEOUT:
            raise _queue.Full

    def put_nowait(self, obj):
        self.put(obj, False)

    def get(self, block=True, timeout=None):
        self._check_closed()
        status, value = self._client.call(GET, block, timeout, undo=self._put_back)
        if status == TIMEOUT:
            raise _queue.Empty
        return loads_item(value)

    def get_nowait(self):
        return self.get(False)

    def qsize(self):
        return self._client.call(QSIZE)[1]

    def empty(self):
        return self._client.call(EMPTY)[1]

    def full(self):
        return self._client.call(FULL)[1]

    def close(self):
        """No more put/get from this process; as multiprocessing's, qsize/empty/full still answer
        (the queue itself lives on, and this process's line to its owner until the process ends)."""
        self._closed = True

    def join_thread(self):
        """As multiprocessing's after ``close()``: every item this process put is in the queue when it
        returns (its feeder thread has flushed them). Here a put is on its way when it returns, so
        this waits for the owner's answer to one request sent after them (the owner takes a process's
        requests in order). As multiprocessing's, only a closed queue may be joined (raised, not
        asserted: the agent's code is compiled with optimize=2)."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")
        if self._client.conn is not None:
            try:
                self._client.call(QSIZE)
            except OwnerGone:
                pass    # (as a feeder thread whose reader is gone: nothing to wait for)

    def cancel_join_thread(self):
        """For API parity: there is no feeder thread to wait for."""


class JoinableQueue(Queue):
    """``task_done()`` for an item this process got is sent without waiting: unless another
    process marked that item done already, it cannot be one too many (and a later ``join()`` or
    other call of this process reaches the owner after it).  One this process has no item for
    waits for the owner's answer, which may be its ``ValueError`` (docs/queues-and-pool.md)."""

    _what = "JoinableQueue"
    _got = 0            # items this process got and has not yet called task_done() for

    def __init__(self, conn, config):
        super().__init__(conn, config)
        self._got_lock = threading.Lock()

    def get(self, block=True, timeout=None):
        item = super().get(block, timeout)
        with self._got_lock:
            self._got += 1
        return item

    def task_done(self):
        with self._got_lock:
            mine = self._got > 0
            if mine:
                self._got -= 1
        if mine:
            self._client.send((0, TASK_DONE))
        else:
            self._client.call(TASK_DONE)

    def join(self):
        self._client.call(JOIN)


class SimpleQueue(_Queued):
    _what = "SimpleQueue"

    @staticmethod
    def _on_queue_feeder_error(e, obj):
        raise e     # no feeder thread: an item that cannot be pickled raises in put(), as multiprocessing's

    def _check_closed(self):
        if self._client.conn is None:
            raise OSError("handle is closed")      # (multiprocessing's closed its pipe)

    def put(self, obj):
        self._check_closed()
        item = dumps_queued(self, obj)
        if item is not None:
            self._client.send((0, PUT, item, False, None))

    def get(self):
        self._check_closed()
        return loads_item(self._client.call(GET, True, None, undo=self._put_back)[1])

    def empty(self):
        self._check_closed()
        return self._client.call(EMPTY)[1]

    def close(self):
        self._client.close()


class Event(_Proxy):
    """``multiprocessing.Event`` API; the flag lives in the owner's process."""

    _what = "Event"

    def is_set(self):
        return self._client.call(IS_SET)[1]

    def set(self):
        self._client.call(SET)

    def clear(self):
        self._client.call(CLEAR)

    def wait(self, timeout=None):
        return self._client.call(WAIT, timeout)[0] == OK

    def __repr__(self):
        return "<Event at %#x %s>" % (id(self), "set" if self.is_set() else "unset")


KINDS = {"Queue": Queue, "JoinableQueue": JoinableQueue, "SimpleQueue": SimpleQueue, "Event": Event}


def rebuild(kind, conn, config):
    """Unpickling hook: the proxy for one object, on this process's own Connection."""
    return KINDS[kind](conn, config)
