"""One end of a frame channel: its stream engine, its frame parser and its output buffer.

The relay's link and the agent's supervisor are the two ends of the same channel,
and both hold one of these: frames go out through ``send`` (buffered, flushed as far
as the channel takes them without blocking), bytes that come in go to ``feed``.
"""

import errno
import os
import selectors
from collections import deque

from . import frames, mux, splice

PULL_CHUNK = 64 << 10       # a read of the channel while payloads may splice: leave them in the pipe
DIRECT = 64 << 10           # a part this big, with nothing queued, is written without a copy into out


class FrameEndpoint:
    """Frames to and from one peer, driven by the owner's selector loop.

    ``write(view)`` puts a prefix of ``view`` on the channel without blocking and
    returns its length (0, or BlockingIOError: nothing fits now); any other OSError
    means the channel is lost: ``on_lost(exc)`` is called once, and later frames are
    dropped.  When ``write_fd`` is set the endpoint watches it while output waits;
    otherwise the owner calls ``flush()`` when the channel can take more.

    ``enable_splice(read_fd, write_fd)`` says the channel is a pair of pipes: big DATA
    payloads then move between them and their streams in the kernel (``splice.py``).
    Frames keep their order: output is a queue (``_ahead``) of byte buffers and
    spooled payloads, then ``out``, which takes what is sent after them.
    """

    def __init__(self, sel, write, on_frame, on_lost, write_fd=None, piece=None, on_stream_drained=None,
                 on_stream_closed=None, max_control=frames.MAX_CONTROL):
        self.sel = sel
        self.write = write
        self.on_lost = on_lost
        self.write_fd = write_fd
        self.piece = piece          # at most this many bytes per write (None: all there is)
        self.out = bytearray()
        self.written = 0            # bytes the channel has taken, for pacing (a package transfer)
        self.stopped = False
        self._watching = False
        self.mux = mux.Mux(sel, self.send)
        self.mux.on_drained = on_stream_drained     # callback(stream): its write queue is empty
        self.mux.on_closed = on_stream_closed       # callback(stream): it is finished and closed
        self.reader = frames.FrameReader(self.mux.on_data, on_frame, max_control)
        self.mux.incoming = self.reader.data_left
        self._spool = None          # type: splice.Spool | None  # payloads on their way out
        # what goes out before ``out``: bytearrays, and [DATA header, count] of spooled payloads
        self._ahead = deque()  # type: deque
        self.pull_fd = None         # the channel's read pipe, when payloads splice in
        self._headers_first = False     # read the next frame's header alone (see pull)
        self.corked = False         # small frames wait in ``out`` until ``uncork`` (see cork)

    @property
    def pending(self):
        """True while frames wait for the channel to take them."""
        return bool(self.out or self._ahead)

    def enable_splice(self, read_fd, write_fd):
        """The channel reads from ``read_fd`` and writes to ``write_fd``: where either is a pipe
        and the kernel can splice, payloads move in the kernel from then on.  (Call it before
        any stream is added.)"""
        if not splice.AVAILABLE:
            return
        if read_fd is not None and splice.is_pipe(read_fd):
            self.pull_fd = read_fd
        if write_fd is not None and write_fd == self.write_fd and splice.is_pipe(write_fd):
            try:
                self._spool = splice.Spool()
            except OSError:
                return      # (out of fds: the plain path works too)
            self.mux.splice_out = self._splice_out

    def cork(self):
        """Hold small frames until ``uncork``, to write them together: the owner's loop corks while
        it handles several events of one pass.  Two messages of a child on two streams, written to
        ``ssh``'s pipe one by one, were two TCP segments from the host's sshd (which sets no
        TCP_NODELAY on a session without a terminal); through a jump host the second waited for
        the first's delayed ACK: 40 ms, one round trip in a hundred."""
        self.corked = True

    def uncork(self):
        self.corked = False
        if self.out or self._ahead:     # (a spooled payload waits in _ahead: its send() came while corked)
            self.flush()

    def send(self, *parts):
        """Queue bytes for the peer and write what the channel takes now."""
        if self.stopped:
            return      # the channel is gone: nothing reaches the peer any more
        if self.corked and all(len(p) < DIRECT for p in parts):
            for p in parts:
                self.out += p
            return
        if len(parts) == 2 and not self.out and not self._ahead and len(parts[1]) < DIRECT:
            # A header and a small payload with nothing waiting (a message's hop): one write of
            # their join, with no trip through ``out`` unless the channel takes only part of it.
            frame = b"".join(parts)
            n = self._write_now(frame)
            if n < len(frame) and not self.stopped:
                self.out += frame[n:]
                self._watch(True)
            return
        for p in parts:
            if len(p) >= DIRECT and not self._ahead:
                self.flush()            # (what came before goes first)
                if not self.out and not self.stopped:
                    p = p[self._write_now(p):]
                if self.stopped:
                    return
            self.out += p
        self.flush()

    def _write_now(self, view):
        """Write a prefix of ``view`` to the channel now; its length."""
        try:
            n = self.write(view if self.piece is None else view[:self.piece])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self.stop()
            self.on_lost(exc)
            return 0
        self.written += n
        return n

    def control(self, msg, blob=b""):
        self.send(frames.control(msg, blob))

    def fds(self):
        """The fds of the endpoint's own (its spool pipe): a forked child closes them."""
        return [self._spool.r, self._spool.w] if self._spool is not None else []

    def feed(self, data):
        """Bytes from the peer: frames are parsed and dispatched as they complete."""
        self.reader.feed(data)

    def pull(self, fd, scratch):
        """Take what the channel ``fd`` holds now; return the bytes taken, 0 at its end.

        Inside a big DATA payload, what its stream takes now moves there directly
        (``enable_splice``); other bytes are read into ``scratch`` and fed, a piece at a
        time so that the next payload stays in the pipe.  BlockingIOError: nothing there."""
        if fd != self.pull_fd:
            n = mux.readinto(fd, scratch)
            if n:
                self.reader.feed(scratch[:n])
            return n
        reader = self.reader
        if not self._headers_first:
            # (the common case, a message's hop: the last read left no big payload to splice)
            return self._read_some(fd, scratch)
        # After a big payload the next frame is likely one too: read its header alone, so
        # that its payload is still in the pipe to splice.
        n = 0
        missing = reader.header_missing()
        if missing:
            n = mux.readinto(fd, scratch[:missing])
            if not n:
                return 0
            reader.feed(scratch[:n])
        sid, left = reader.data_left()
        if left >= splice.MIN_MOVE:
            self._headers_first = True
            moved = self.mux.splice_in(sid, fd, left)
            if moved:
                reader.skip(moved)
                return n + moved
        elif n:
            self._headers_first = reader.header_missing() != 0
            if self._headers_first:
                return n        # (the pipe held part of a header: wait for the rest)
        try:
            return n + self._read_some(fd, scratch)
        except (BlockingIOError, InterruptedError):
            if n:
                return n
            raise

    def _read_some(self, fd, scratch):
        """One read of the channel, fed to the reader; the bytes read (0 at its end)."""
        reader = self.reader
        # (a CONTROL payload, a package's say, is read in pieces as big as the scratch)
        k = mux.readinto(fd, scratch if reader.in_control else scratch[:PULL_CHUNK])
        if k:
            reader.feed(scratch[:k])
            self._headers_first = reader.data_left()[1] >= splice.MIN_MOVE
        return k

    def _splice_out(self, s, limit):
        """Move up to ``limit`` bytes of stream ``s`` into the spool, to go out as one DATA frame
        after what waits now; the count (0: the stream ended), or None: read them the usual
        way (the spool is full: the channel is that far behind)."""
        spool = self._spool
        if spool is None or self.stopped:
            return None
        cap = min(limit, spool.size - spool.held)
        if cap < splice.MIN_MOVE:
            return None
        try:
            n = splice.move(s.fd, spool.w, cap)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in mux._GONE:
                return 0
            if exc.errno == errno.EINVAL:       # (this kind of fd cannot splice)
                return None
            raise
        while 0 < n < cap:      # what came in meanwhile goes in the same frame
            try:
                more = splice.move(s.fd, spool.w, cap - n)
            except OSError:
                break       # (EAGAIN, or an error the next read reports)
            if not more:
                break
            n += more
        if n:
            spool.held += n
            if self.out:
                self._ahead.append(self.out)
                self.out = bytearray()
            self._ahead.append([frames.header(frames.DATA, s.sid, n), n])
        return n

    def _write_spooled(self, item):
        """Write a spooled payload's header, then move the payload on; False while some waits."""
        spool = self._spool
        assert spool is not None
        try:
            if item[0]:
                # (9 bytes into a pipe: written whole or not at all)
                self.written += os.write(self.write_fd, item[0])
                item[0] = b""
            while item[1]:
                n = splice.move(spool.r, self.write_fd, item[1])
                if not n:
                    raise OSError(errno.EIO, "the spool pipe ran dry")
                item[1] -= n
                spool.held -= n
                self.written += n
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.stop()
            self.on_lost(exc)
            return False
        return True

    def flush(self, mask=0):
        ahead = self._ahead
        while not self.stopped:
            if ahead:
                buf = ahead[0]
                if type(buf) is list:
                    if not self._write_spooled(buf):
                        break
                    ahead.popleft()
                    continue
            elif self.out:
                buf = self.out
            else:
                break
            try:
                with memoryview(buf) as view:
                    n = self.write(view if self.piece is None else view[:self.piece])
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self.stop()
                self.on_lost(exc)
                return
            if not n:
                break
            self.written += n
            del buf[:n]
            if not buf and buf is not self.out:
                ahead.popleft()
        self._watch(self.pending and not self.stopped)

    def stop(self):
        """Drop what waits and every later frame (the channel is gone)."""
        self.stopped = True
        self.out = bytearray()  # (not clear(): a view of the old one may outlive the write)
        self._ahead = deque()
        if self._spool is not None:
            self._spool.close()
            self._spool = None
            self.mux.splice_out = None
        self._watch(False)

    def _watch(self, want):
        if want == self._watching or self.write_fd is None:
            return
        if want:
            self.sel.register(self.write_fd, selectors.EVENT_WRITE, self.flush)
        else:
            self.sel.unregister(self.write_fd)
        self._watching = want
