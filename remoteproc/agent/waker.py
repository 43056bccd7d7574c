"""A self-pipe: lets another thread (or a signal) wake an event loop blocked in select.

Every event loop of remoteproc has one: the relay's links, the agent's supervisor,
the Pool's scheduler and the queue broker.  ``wake()`` is cheap and never blocks; a
full pipe means a wake-up is already pending.
"""

import os
import threading


class Waker:
    """``wake()`` from any thread makes ``fileno()`` readable until ``clear()``."""

    def __init__(self):
        # type: () -> None
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        # wake() never writes to a closed (maybe reused) fd.  Reentrant: a garbage collector's
        # callback (a finalizer) may wake the loop from a thread that is inside wake() already.
        self._lock = threading.RLock()

    def fileno(self):
        # type: () -> int
        """The read end, for a selector: readable while a wake-up is pending."""
        return self._r

    @property
    def write_fd(self):
        # type: () -> int
        """The write end, for ``signal.set_wakeup_fd``."""
        return self._w

    def fds(self):
        # type: () -> list[int]
        """Both ends, while open (a forked child closes them)."""
        return [fd for fd in (self._r, self._w) if fd >= 0]

    def wake(self):
        # type: () -> None
        with self._lock:
            if self._w < 0:
                return
            try:
                os.write(self._w, b"\0")
            except OSError:
                pass        # full: a wake-up is already pending

    def clear(self):
        # type: () -> None
        """Take every pending wake-up (when ``fileno()`` selected readable)."""
        try:
            while os.read(self._r, 4096):
                pass
        except OSError:     # (BlockingIOError: nothing more; anything else: closed meanwhile)
            pass

    def close(self):
        # type: () -> None
        with self._lock:
            self._close_fds()

    def abandon(self):
        # type: () -> None
        """``close()`` in a forked child: without the lock, which a thread of the parent
        may have held at the fork."""
        self._lock = threading.RLock()
        self._close_fds()

    def _close_fds(self):
        # type: () -> None
        for fd in (self._r, self._w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._r = self._w = -1
