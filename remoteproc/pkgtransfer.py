"""Sending packages to a host's package cache (runs in the relay, one per connection).

The agent asks for a top-level module it lacks (``import``); when our copy needs
real files there (``distributions.find``), the answer names the distribution by its
content hash instead of carrying source.  The agent looks in its cache; only on a
miss does it ask for the files (``fetch``), which then stream as control frames of
about 1 MiB (``pkg``, then ``pkg-end``), produced only as fast as the channel takes
them, so other streams keep flowing.  A piece is compressed (zlib level 1) only when
the link is slower than compressing it saves; on a fast link it is stored.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections import deque
from typing import Callable, Iterator

from . import distributions, modules
from .agent import frames

log = logging.getLogger("remoteproc.packages")

PIECE = 1 << 20             # raw bytes per pkg frame
PROGRESS_MIN = 4 << 20      # transfers above this size are logged, with progress
PROGRESS_EVERY = 1.0        # seconds between progress lines
PROBE_EVERY = 16            # while storing, compress every 16th piece to keep the estimates fresh


class Squeeze:
    """Decides, piece by piece, whether compressing pays: it does when the link moves raw
    bytes slower than compression removes them (link rate < zlib rate x space saved)."""

    def __init__(self, accepted: Callable[[], int]) -> None:
        self.accepted = accepted        # bytes the channel has taken so far (the link's progress)
        self.samples: deque = deque()   # (time, accepted) over the last second or so
        self.zlib_rate = 0.0            # raw bytes per second zlib level 1 compresses
        self.ratio = 1.0                # compressed / raw, last measured
        self.count = 0

    def _link_rate(self, now: float) -> float | None:
        taken = self.accepted()
        self.samples.append((now, taken))
        while len(self.samples) > 2 and now - self.samples[1][0] >= 0.5:
            self.samples.popleft()
        t0, a0 = self.samples[0]
        if now - t0 < 0.5:
            return None                 # too early to tell (the SSH window hides the link at first)
        return (taken - a0) / (now - t0)

    def encode(self, raw: bytes | bytearray) -> tuple[bytes | bytearray, bool]:
        now = time.monotonic()
        link = self._link_rate(now)
        self.count += 1
        want = link is not None and self.zlib_rate > 0 and link < self.zlib_rate * (1 - self.ratio)
        if not want and self.count % PROBE_EVERY != 1:
            return raw, False
        t = time.perf_counter()
        packed = zlib.compress(raw, 1)
        spent = max(time.perf_counter() - t, 1e-6)
        self.zlib_rate = len(raw) / spent
        self.ratio = len(packed) / max(len(raw), 1)
        if want and self.ratio < 0.9:
            return packed, True
        return raw, False


class Sending:
    """One distribution on its way: an iterator of frames, with progress in the log."""

    def __init__(self, dist: distributions.Distribution, digest: str, display: str, squeeze: Squeeze) -> None:
        self.dist = dist
        self.digest = digest
        self.display = display
        self.squeeze = squeeze
        self.raw = 0
        self.wire = 0
        self.started = time.monotonic()
        self.last_note = self.started
        self.loud = dist.size > PROGRESS_MIN

    def frames(self) -> Iterator[bytes]:
        if self.loud:
            log.info("%s: sending %s (%.1f MB, %d files) to the host's package cache",
                     self.display, self.dist.label, self.dist.size / 1e6, len(self.dist.files))
        parts: list = []
        buf = bytearray()
        for rel, mode, size, mtime in self.dist.files:
            with open(os.path.join(self.dist.site, rel), "rb") as f:
                offset = 0
                while True:
                    take = min(PIECE - len(buf), size - offset)
                    chunk = f.read(take)
                    if len(chunk) != take:
                        raise OSError("%s changed while it was sent" % os.path.join(self.dist.site, rel))
                    part = [rel, mode, size, offset, take]
                    if offset == 0:
                        part.append(mtime / 1e9)    # kept there: the bytecode sent along checks it
                    parts.append(part)
                    buf += chunk
                    offset += take
                    if len(buf) >= PIECE:
                        yield self._frame(parts, buf)
                        parts, buf = [], bytearray()
                    if offset >= size:
                        break
        if parts:
            yield self._frame(parts, buf)
        if self.loud:
            took = time.monotonic() - self.started
            log.info("%s: sent %s in %.2f s (%.1f MB, %.1f MB on the wire, %.0f MB/s)", self.display,
                     self.dist.label, took, self.raw / 1e6, self.wire / 1e6, self.raw / 1e6 / max(took, 1e-6))
        yield frames.control({"op": "pkg-end", "hash": self.digest})

    def _frame(self, parts: list, buf: bytearray) -> bytes:
        blob, packed = self.squeeze.encode(buf)
        self.raw += len(buf)
        self.wire += len(blob)
        now = time.monotonic()
        if self.loud and now - self.last_note >= PROGRESS_EVERY:
            self.last_note = now
            log.info("%s: sending %s: %.1f of %.1f MB (%d%%)", self.display, self.dist.label, self.raw / 1e6,
                     self.dist.size / 1e6, 100 * self.raw // max(self.dist.size, 1))
        return frames.control({"op": "pkg", "hash": self.digest, "parts": parts, "z": packed}, blob)


class PackageServer:
    """The relay's side of the package cache for one connection."""

    def __init__(self, display: str, abi: dict | None, cap: int, python: str,
                 accepted: Callable[[], int]) -> None:
        self.display = display
        self.abi = abi                  # the host's, from its hello (None: an agent without a cache)
        self.cap = cap                  # the host cache's size cap in bytes; 0: the cache is off
        self.python = python
        self.offered: dict[str, distributions.Distribution] = {}
        self.queue: deque = deque()     # frame iterators of transfers under way
        self.accepted = accepted

    def answer(self, name: str, path: list, editable: dict | None = None,
               sent: set[str] | frozenset[str] = frozenset()) -> dict | None:
        """The ``modules`` entries for ``name`` when it goes through the cache or is refused
        here; None when it is sent from memory (``modules.find``).  Asked for every module a
        child's host lacks, before ``modules.find``: so a distribution whose Requires-Python
        excludes the host's Python is refused whether it is pure or not, and a package that
        needs files is refused, with what to install, where the cache cannot take it.
        ``editable``: the user's projects installed in editable mode (``modules.editable_roots``),
        whose packages are sent as their directory.  ``sent``: modules this connection was sent
        from memory before (``modules.find``)."""
        if self.abi is None:
            return None
        try:
            unit = distributions.locate(name, path, editable)
            if unit is None or unit.name != name:
                return None     # not ours, a namespace package itself, or inside a unit asked for before
            distributions.check_python(unit, self.abi, self.display, self.python)
            dist = distributions.gather(unit)
            if dist is None:
                return None     # plain Python: from memory
            try:
                if not self.cap:
                    raise distributions.refuse_cache_off(dist, self.display, self.python, self.abi)
                distributions.check(dist, self.abi, self.display, self.python)
            except distributions.Unsendable as exc:
                if not distributions.pure_but_compiled(dist, unit):
                    raise
                return self._without_compiled(name, path, editable, sent, str(exc))
            distributions.add_bytecode(dist, self.abi)
            digest = distributions.digest(dist)
        except distributions.Unsendable as exc:
            return {name: {"error": str(exc)}}
        for rel in dist.refused:
            log.debug("%s: %s: not serving %r (outside %s)", self.display, dist.label, rel, dist.site)
        self.offered[digest] = dist
        return {name: {"dist": {"hash": digest, "name": dist.name, "version": dist.version, "top": name,
                                "size": dist.size, "files": len(dist.files), "cap": self.cap}}}

    def _without_compiled(self, name: str, path: list, editable: dict | None, sent: set[str] | frozenset[str],
                          refusal: str) -> dict:
        """Package ``name`` from memory, its compiled modules refused (``pure_but_compiled``): an
        import of one raises ImportError with ``refusal`` (what the host cannot load, and the
        fix), which a package that falls back to its Python code catches."""
        mods = modules.find(name, path, self.display, editable, sent)
        log.info("%s: sending %s from memory without its compiled modules (the host cannot load them: they are "
                 "refused at their import, and %s runs there only if it does without them)", self.display, name, name)
        note = (" (%s's Python modules were sent: a package that does without this compiled module when its "
                "import fails runs there)" % name)
        for mod, entry in mods.items():
            if isinstance(entry, dict) and "error" in entry:
                entry["error"] = refusal.replace("cannot send package %r" % name, "cannot send %r" % mod, 1) + note
        return mods

    def fetch(self, digest: object) -> bytes | None:
        """The agent misses an entry we offered: queue its files (or say why not at once)."""
        key = str(digest)
        dist = self.offered.get(key)
        if dist is None:
            return frames.control({"op": "pkg-fail", "hash": key,
                                   "message": "%s: asked for a package that was not offered" % self.display})
        # (a Squeeze of its own: the link's rate is measured afresh for every transfer)
        self.queue.append((key, Sending(dist, key, self.display, Squeeze(self.accepted)).frames()))
        return None

    def pending(self) -> bool:
        return bool(self.queue)

    def next_frame(self) -> bytes | None:
        """The next frame of the oldest transfer (None when there is none)."""
        while self.queue:
            digest, it = self.queue[0]
            try:
                return next(it)
            except StopIteration:
                self.queue.popleft()
            except OSError as exc:
                self.queue.popleft()
                dist = self.offered.get(digest)
                log.warning("%s: could not send %s: %s", self.display, dist.label if dist else digest, exc)
                return frames.control({"op": "pkg-fail", "hash": digest, "message": "%s: could not send %s: %s"
                                       % (self.display, dist.label if dist else digest, exc)})
        return None

