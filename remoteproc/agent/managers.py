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

import itertools
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
            self.conn.send_bytes(data)

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
        self._chan, self._inbox = link.open()
        self._closed = False

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
        return connection.Client(address, family, authkey)
    c = VirtualConnection(link)
    if authkey is not None:
        if not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")
        connection.answer_challenge(c, authkey)  # type: ignore[arg-type]
        connection.deliver_challenge(c, authkey)  # type: ignore[arg-type]
    return c


def install(conn, address):
    """Use ``conn`` for every connection to ``address`` from now on, in this process."""
    from multiprocessing import managers

    address = _canonical(address)
    with _links_lock:
        link = _links.get(address)
        if link is None:
            link = _links[address] = Link(conn, address)
            link.send(0, ATTACHED, None)        # the parent may close its copy of our end
        listener_client = vars(managers)["listener_client"]     # serializer -> (Listener, Client)
        listener_client["pickle"] = (listener_client["pickle"][0], Client)
    return link


def rebuild_link(conn, address):
    """Unpickling hook: the link for ``address`` (once per process, however many proxies use it)."""
    return install(conn, address)


def rebuild_proxy(link, func, token, serializer, kwds):
    """Unpickling hook for a manager proxy: its connections go through ``link``."""
    from multiprocessing import managers

    return vars(managers)["RebuildProxy"](func, token, serializer, kwds)
