"""Bringing a pool's lost hosts back: one background thread per lost host, trying again with backoff.

A pool that retries (``retries`` > 0) hands each host whose connection was lost
to a ``Reconnector``.  Its thread waits 1 s, then tries to start the host's workers
again; each failure doubles the wait, up to a minute.  Once every worker is up
(hello received), they are delivered to the pool, which puts them in the lost
workers' places.  ``status()`` says which hosts are down, since when, and why.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from .workers import TERMINATE_GRACE, Starter, Worker

log = logging.getLogger("remoteproc.pool")

FIRST_DELAY = 1.0       # seconds before the first attempt...
MAX_DELAY = 60.0        # ...doubling up to this


class _Down:
    """A host that is down: since when, the last error, the next attempt."""

    __slots__ = ("since", "error", "attempts", "next_try")

    def __init__(self, error: str) -> None:
        self.since = time.time()
        self.error = error
        self.attempts = 0
        self.next_try: Optional[float] = None


class Reconnector:
    """Background attempts to start the workers of lost hosts again; ``deliver(host, workers)`` on success."""

    def __init__(self, starter: Starter, deliver: Callable[[str, list[Worker]], bool]) -> None:
        self.starter = starter
        self.deliver = deliver          # False: the pool no longer wants them (it is closing)
        self.down: dict[str, _Down] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def lost(self, host: str, options: dict[str, Any], count: int, reason: str) -> None:
        """``host`` lost its connection with ``count`` workers: start trying to bring them back."""
        with self.lock:
            if host in self.down or self.stopping.is_set():
                return
            self.down[host] = _Down(reason)
        threading.Thread(target=self._run, args=(host, options, count), daemon=True,
                         name="remoteproc-pool-reconnect %s" % host).start()

    def stop(self) -> None:
        """No more attempts (the pool is closing); threads in an attempt finish it and let go."""
        self.stopping.set()

    def active(self) -> bool:
        """Some host is down and being tried again."""
        return bool(self.down) and not self.stopping.is_set()

    def status(self, host: str) -> Optional[dict[str, Any]]:
        with self.lock:
            d = self.down.get(host)
            if d is None:
                return None
            return {"down_since": d.since, "error": d.error, "attempts": d.attempts, "next_try": d.next_try}

    def _run(self, host: str, options: dict[str, Any], count: int) -> None:
        delay = FIRST_DELAY
        with self.lock:
            self.down[host].next_try = time.time() + delay
        while True:
            if self.stopping.wait(delay):
                return
            with self.lock:
                self.down[host].next_try = None     # (an attempt is under way: it may take the connect timeout)
            workers = self._attempt(host, options, count, min(delay * 2, MAX_DELAY))
            if workers is not None:
                if self.deliver(host, workers):      # (still "down" until delivered: tasks keep waiting)
                    log.warning("%s: reconnected; its %d pool workers are back", host, len(workers))
                else:
                    _stop(workers)
                with self.lock:
                    del self.down[host]
                return
            delay = min(delay * 2, MAX_DELAY)

    def _attempt(self, host: str, options: dict[str, Any], count: int, then: float) -> Optional[list[Worker]]:
        """Start the host's workers again; None if that failed (the next attempt in ``then`` seconds)."""
        out: list[Any] = [None]
        self.starter._start_host(0, host, options, count, out)
        result = out[0]
        if isinstance(result, list):
            return result
        exc, started = result
        _stop(started)
        with self.lock:
            d = self.down[host]
            d.attempts += 1
            d.error = "%s: %s" % (type(exc).__name__, exc)
            d.next_try = time.time() + then     # (with the count, so a reader sees both or neither)
        log.info("%s: reconnect attempt failed: %s", host, exc)
        return None


def _stop(workers: list[Worker]) -> None:
    for w in workers:
        try:
            w.process.kill()
            w.process.join(TERMINATE_GRACE)
        except Exception:
            pass
        w.close()
