"""The event loops' selector: the part of ``selectors`` the relay and the agent use, on epoll.

A message's hop through the relay or the agent is one wait, one read and one write; the
``selectors`` module's ``select()`` adds a few microseconds of Python to each wait (timeout
rounding, a key lookup and a tuple per event), about a tenth of the hop.  ``Poller`` keeps
the same calls (``register``, ``modify``, ``unregister``, ``select``, ``fileno``, ``close``,
and keys with ``fd``, ``events`` and ``data``) and does only what they need.  Where there is no
epoll (macOS, the BSDs) ``make()`` returns ``selectors.DefaultSelector()``.
"""

import select
import selectors

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class Key:
    """What ``select()`` returns for a ready fd (the subset of ``selectors.SelectorKey`` we use)."""

    __slots__ = ("fileobj", "fd", "events", "data")

    def __init__(self, fileobj, fd, events, data):
        self.fileobj = fileobj
        self.fd = fd
        self.events = events
        self.data = data


def _mask(ev):
    """selectors' mask for an epoll answer (as selectors: an error or hang-up wakes readers and
    writers both)."""
    return (EVENT_READ if ev & ~select.EPOLLOUT else 0) | (EVENT_WRITE if ev & ~select.EPOLLIN else 0)


def _mask_table():
    """_mask() of every answer made of epoll's usual bits: looked up, not worked out per event."""
    if not hasattr(select, "epoll"):
        return {}
    bits = [select.EPOLLIN, select.EPOLLPRI, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP,
            getattr(select, "EPOLLRDHUP", 0)]
    answers = [0]
    for bit in bits:
        answers += [ev | bit for ev in answers]
    return {ev: _mask(ev) for ev in answers}


_MASKS = _mask_table()


def _fd(fileobj):
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


def _epoll_mask(events):
    return (select.EPOLLIN if events & EVENT_READ else 0) | (select.EPOLLOUT if events & EVENT_WRITE else 0)


class Poller:
    """selectors' interface on epoll, as far as the loops use it (same errors: KeyError for an fd
    registered twice or not at all, ValueError for no events; epoll's own for a regular file)."""

    def __init__(self):
        self._ep = select.epoll()
        self._keys = {}  # type: dict[int, Key]

    def fileno(self):
        return self._ep.fileno()

    def register(self, fileobj, events, data=None):
        fd = _fd(fileobj)
        if fd in self._keys:
            raise KeyError("%r (fd %d) is already registered" % (fileobj, fd))
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError("invalid events: %r" % (events,))
        self._ep.register(fd, _epoll_mask(events))
        key = self._keys[fd] = Key(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj):
        key = self._keys.pop(_fd(fileobj))
        try:
            self._ep.unregister(key.fd)
        except OSError:
            pass        # (closed already: the kernel dropped it)
        return key

    def modify(self, fileobj, events, data=None):
        fd = _fd(fileobj)
        key = self._keys.get(fd)
        if key is None:
            raise KeyError("%r (fd %d) is not registered" % (fileobj, fd))
        if events != key.events:
            self._ep.modify(fd, _epoll_mask(events))
            key.events = events
        key.data = data
        return key

    def select(self, timeout=None):
        """[(key, events)] of the fds ready within ``timeout`` seconds (None: wait for one)."""
        try:
            ready = self._ep.poll(-1 if timeout is None else (timeout if timeout > 0 else 0), len(self._keys) or 1)
        except InterruptedError:
            return []
        keys = self._keys
        out = []
        for fd, ev in ready:
            key = keys.get(fd)
            if key is not None:
                try:
                    mask = _MASKS[ev]
                except KeyError:
                    mask = _mask(ev)
                out.append((key, mask & key.events))
        return out

    def close(self):
        self._ep.close()
        self._keys.clear()


def make():
    """A Poller where the kernel has epoll, else the best selector ``selectors`` has."""
    return Poller() if hasattr(select, "epoll") else selectors.DefaultSelector()
