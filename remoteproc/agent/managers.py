"""Manager proxies in a remote child: their connections to the manager ride our SSH connection.

A ``multiprocessing.managers.BaseProxy`` connects to its manager's address (a Unix
socket or a loopback port of the user's machine) whenever it calls a method.  For a
remote child, the parent bridges one Connection per manager address (a *link*, see
``remoteproc/managers.py``); here every ``Client(address)`` for that address becomes
a virtual connection multiplexed over the link, which the parent connects to the
manager.  The manager's authkey challenge travels end to end: the manager still checks
it, and no port is opened on either host.  Addresses that are not bridged (a manager
started with an address other hosts can reach) are connected to directly, as before.
Shipped to remote hosts: standard library only.
"""

import collections
import itertools
import os
import pickle
import queue
import threading

OPEN = 1            # (chan, OPEN, address)
DATA = 2            # (chan, DATA, bytes) either way
CLOSE = 3           # (chan, CLOSE, None) either way; from the parent: the manager closed it
FAILED = 4          # (chan, FAILED, message): the parent could not connect
ATTACHED = 5        # (0, ATTACHED, None): first message of a link

_links = {}         # type: dict  # address -> Link, in this process
_links_lock = threading.Lock()


class Link:
    """The bridged Connection to the parent for one manager address, shared by every proxy."""

    def __init__(self, conn, address):
        self.conn = conn
        self.address = address
        self.send_lock = threading.Lock()
        self.chans = {}
        self.ids = itertools.count(1)
        self.reader = None
        self.lock = threading.Lock()
        #: the process the link serves: a fork of it has the same fd but no reader thread, and the
        #: remote child's channel numbers (``Client`` refuses there, rather than wait forever)
        self.pid = os.getpid()
        #: channels whose connection was collected unclosed (a thread's, as it ended): their CLOSE
        #: goes out with the next frame, as a collection may come inside ``send`` itself
        self.dropped = collections.deque()  # type: collections.deque

    def open(self):
        chan = next(self.ids)
        inbox = queue.Queue()  # type: queue.Queue
        with self.lock:
            self.chans[chan] = inbox
            if self.reader is None:
                self.reader = threading.Thread(target=self._read, name="remoteproc-manager-link", daemon=True)
                self.reader.start()
        self.send(chan, OPEN, None)
        return chan, inbox

    def send(self, chan, op, payload):
        data = pickle.dumps((chan, op, payload), pickle.HIGHEST_PROTOCOL)
        with self.send_lock:
            self._send_dropped()
            self.conn.send_bytes(data)

    def _send_dropped(self):
        while self.dropped:
            chan = self.dropped.popleft()
            self.conn.send_bytes(pickle.dumps((chan, CLOSE, None), pickle.HIGHEST_PROTOCOL))

    def drop(self, chan):
        """A channel's connection was collected unclosed: the manager's thread for it ends too.
        Takes no lock but by trying: a collection may come while this thread holds one."""
        self.chans.pop(chan, None)      # (atomic: the reader thread may look it up meanwhile)
        self.dropped.append(chan)
        if self.send_lock.acquire(blocking=False):     # (not if this thread is inside send: later)
            try:
                self._send_dropped()
            except (OSError, ValueError):
                pass
            finally:
                self.send_lock.release()

    def forget(self, chan):
        with self.lock:
            self.chans.pop(chan, None)

    def _read(self):
        while True:
            try:
                chan, op, payload = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                break
            with self.lock:
                inbox = self.chans.get(chan)
            if inbox is not None:
                inbox.put((op, payload))
        with self.lock:
            chans, self.chans = list(self.chans.values()), {}
        for inbox in chans:
            inbox.put((CLOSE, None))


class VirtualConnection:
    """What ``multiprocessing.connection.Client`` returns, for one bridged manager connection."""

    def __init__(self, link):
        self._link = link
        self._closed = True         # (until it has a channel: nothing to close if open() fails)
        self._chan, self._inbox = link.open()
        self._closed = False

    def __del__(self):
        # A proxy keeps one connection per thread, and never closes it: the thread's end drops it,
        # as a local Connection's __del__ closes its socket and the manager's thread for it ends.
        try:
            if not self._closed and self._link.pid == os.getpid():
                self._closed = True
                self._link.drop(self._chan)
        except Exception:       # (the interpreter's exit: modules half gone, the link with them)
            pass

    def fileno(self):
        raise OSError("a manager connection bridged over SSH has no file descriptor")

    def send_bytes(self, buf, offset=0, size=None):
        if self._closed:
            raise OSError("handle is closed")
        data = bytes(memoryview(buf)[offset:None if size is None else offset + size])
        try:
            self._link.send(self._chan, DATA, data)
        except (OSError, ValueError) as exc:
            raise ConnectionResetError("the link to the manager at %r is lost: %s" % (self._link.address, exc))

    def recv_bytes(self, maxlength=None):
        if self._closed:
            raise OSError("handle is closed")
        op, payload = self._inbox.get()
        if op == FAILED:
            # the parent's own connect error, by its errno, as a local child would get it
            # (FileNotFoundError for a Unix socket that is gone, ConnectionRefusedError, ...)
            import re

            found = re.search(r"\[Errno (\d+)\]", payload)
            raise OSError(int(found.group(1)), payload) if found else ConnectionRefusedError(payload)
        if op != DATA:
            self._inbox.put((op, payload))      # stays closed for later calls
            raise EOFError
        if maxlength is not None and len(payload) > maxlength:
            raise OSError("bad message length")
        return payload

    def send(self, obj):
        from multiprocessing.reduction import ForkingPickler

        self.send_bytes(ForkingPickler.dumps(obj))

    def recv(self):
        from multiprocessing.reduction import ForkingPickler

        return ForkingPickler.loads(self.recv_bytes())

    def poll(self, timeout=0.0):
        return not self._inbox.empty()

    def close(self):
        if not self._closed:
            self._closed = True
            self._link.forget(self._chan)
            try:
                self._link.send(self._chan, CLOSE, None)
            except (OSError, ValueError):
                pass

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


def _canonical(address):
    return tuple(address) if isinstance(address, list) else address


def Client(address, family=None, authkey=None):
    """``multiprocessing.connection.Client``, through the link when ``address`` is bridged."""
    from multiprocessing import connection

    with _links_lock:
        link = _links.get(_canonical(address))
    if link is None:
        try:
            return connection.Client(address, family, authkey)
        except OSError as exc:
            raise _unreachable(exc, address) from None
    if link.pid != os.getpid():
        raise ConnectionRefusedError(
            "the manager at %r is reached through remoteproc's link of the remote child (pid %d), and this "
            "process (pid %d) is a fork of it, which cannot use that link. Fix: use the proxy in the remote "
            "child itself (threads can), or start the manager with an address both can reach"
            % (address, link.pid, os.getpid()))
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")
    c = VirtualConnection(link)
    try:
        if authkey is not None:
            connection.answer_challenge(c, authkey)  # type: ignore[arg-type]
            connection.deliver_challenge(c, authkey)  # type: ignore[arg-type]
    except BaseException:
        c.close()
        raise
    return c


def XmlClient(address, family=None, authkey=None):
    """``multiprocessing.connection.XmlClient`` (a manager's ``serializer="xmlrpclib"``), bridged."""
    from multiprocessing import connection

    if not hasattr(connection, "xmlrpclib"):        # (what its own XmlClient imports there)
        import xmlrpc.client

        connection.xmlrpclib = xmlrpc.client  # type: ignore[attr-defined]
    wrap = vars(connection)["ConnectionWrapper"]
    return wrap(Client(address, family, authkey), vars(connection)["_xml_dumps"], vars(connection)["_xml_loads"])


def _unreachable(exc, address):
    """A manager this remote child has no link to could not be reached: the same error, saying why
    (a proxy of the program's manager that came in a message, not as an argument)."""
    if not isinstance(exc, ConnectionResetError):
        exc = type(exc)(exc.errno, "%s; a manager of your program's side is reached from a remote child only "
                        "through the proxies it got as RemoteProcess arguments (one that came in a Queue item "
                        "or a message, or in a Pool's or an Executor's task, has no link). Fix: pass the proxy "
                        "as an argument of the process (of a Pool or an Executor: in initargs=, for its "
                        "initializer to keep)"
                        % (exc.strerror or exc), str(address)) if exc.errno else exc
    return exc


def install(conn, address):
    """Use ``conn`` for every connection to ``address`` from now on, in this process."""
    from multiprocessing import managers

    address = _canonical(address)
    with _links_lock:
        link = _links.get(address)
        if link is None:
            link = _links[address] = Link(conn, address)
            link.send(0, ATTACHED, None)        # the parent may close its copy of our end
        _use_our_clients(managers)
    return link


def _use_our_clients(managers):
    """Proxies of this process connect through ``Client`` (ours) from now on."""
    listener_client = vars(managers)["listener_client"]     # serializer -> (Listener, Client)
    listener_client["pickle"] = (listener_client["pickle"][0], Client)
    listener_client["xmlrpclib"] = (listener_client["xmlrpclib"][0], XmlClient)


def rebuild_task_proxy(func, args):
    """Unpickling hook for a manager proxy of the program's side that came in a Pool or Executor
    task: it has a link only if the worker's ``initargs`` brought one (of the same manager); else
    its first call fails as a local connect to an unreachable socket does, saying why and what to
    do (``_unreachable``), rather than with a bare PermissionError or FileNotFoundError."""
    from multiprocessing import managers

    with _links_lock:
        _use_our_clients(managers)
    return func(*args)


def rebuild_link(conn, address):
    """Unpickling hook: the link for ``address`` (once per process, however many proxies use it)."""
    return install(conn, address)


def rebuild_proxy(link, func, token, serializer, kwds):
    """Unpickling hook for a manager proxy: its connections go through ``link``."""
    from multiprocessing import managers

    return vars(managers)["RebuildProxy"](func, token, serializer, kwds)
