"""One end of a frame channel: its stream engine, its frame parser and its output buffer.

The relay's link and the agent's supervisor are the two ends of the same channel,
and both hold one of these: frames go out through ``send`` (buffered, flushed as far
as the channel takes them without blocking), bytes that come in go to ``feed``.
"""

import selectors

from . import frames, mux


class FrameEndpoint:
    """Frames to and from one peer, driven by the owner's selector loop.

    ``write(view)`` puts a prefix of ``view`` on the channel without blocking and
    returns its length (0, or BlockingIOError: nothing fits now); any other OSError
    means the channel is lost: ``on_lost(exc)`` is called once, and later frames are
    dropped.  When ``write_fd`` is set the endpoint watches it while output waits;
    otherwise the owner calls ``flush()`` when the channel can take more.
    """

    def __init__(self, sel, write, on_frame, on_lost, write_fd=None, piece=None, on_stream_drained=None,
                 on_stream_closed=None):
        self.sel = sel
        self.write = write
        self.on_lost = on_lost
        self.write_fd = write_fd
        self.piece = piece          # at most this many bytes per write (None: all there is)
        self.out = bytearray()
        self.stopped = False
        self._watching = False
        self.mux = mux.Mux(sel, self.send)
        self.mux.on_drained = on_stream_drained     # callback(stream): its write queue is empty
        self.mux.on_closed = on_stream_closed       # callback(stream): it is finished and closed
        self.reader = frames.FrameReader(self.mux.on_data, on_frame)

    def send(self, *parts):
        """Queue bytes for the peer and write what the channel takes now."""
        if self.stopped:
            return      # the channel is gone: nothing reaches the peer any more
        for p in parts:
            self.out += p
        self.flush()

    def control(self, msg, blob=b""):
        self.send(frames.control(msg, blob))

    def feed(self, data):
        """Bytes from the peer: frames are parsed and dispatched as they complete."""
        self.reader.feed(data)

    def flush(self, mask=0):
        while self.out and not self.stopped:
            try:
                with memoryview(self.out) as view:
                    n = self.write(view if self.piece is None else view[:self.piece])
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self.stop()
                self.on_lost(exc)
                return
            if not n:
                break
            del self.out[:n]
        self._watch(bool(self.out) and not self.stopped)

    def stop(self):
        """Drop what waits and every later frame (the channel is gone)."""
        self.stopped = True
        self.out = bytearray()  # (not clear(): a view of the old one may outlive the write)
        self._watch(False)

    def _watch(self, want):
        if want == self._watching or self.write_fd is None:
            return
        if want:
            self.sel.register(self.write_fd, selectors.EVENT_WRITE, self.flush)
        else:
            self.sel.unregister(self.write_fd)
        self._watching = want
