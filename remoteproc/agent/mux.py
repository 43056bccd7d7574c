"""Streams between file descriptors and frames, with per-stream credit.

The same engine runs on both ends of the SSH channel: in the remote agent (streams
are the child's socketpairs and pipes) and in the local relay (streams are the
parent's Connection ends and its stdout/stderr).  Each stream moves bytes opaquely:
``multiprocessing.connection.Connection`` frames its own messages.

Flow control: a sender may have at most ``window`` bytes of a stream unacknowledged.
The receiver queues what it cannot write yet and returns credit only for bytes it
has written out, so a child that stops reading stalls its own stream and nothing else.
"""

import errno
import functools
import os
import selectors
import socket
import stat
from collections import deque
from itertools import islice
from typing import Callable, Optional

from . import frames, splice

try:
    from select import POLLOUT, poll
except ImportError:     # (no poll(): a shared pipe is written once the selector says so)
    poll = None  # type: ignore[assignment,misc]

WINDOW = 4 << 20           # bytes in flight per stream and direction
ACK_AT = 1 << 20           # return credit in pieces of at least this much
READ_CHUNK = frames.MAX_DATA
SMALL_WRITE = 4096         # per wake-up on an fd we may not make non-blocking
BULK = 32 << 10            # a read this big says more is coming: the stream's next reads splice
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN)
_header = frames.HEADER.pack    # (type, stream, length): frames.header() without its call
_DATA = frames.DATA
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
SEND_BUFFER = 4 << 20      # asked of a bridged socket's writer (Linux caps it at net.core.wmem_max)


def widen_send_buffer(fd):
    """Ask for a send buffer on the socket ``fd`` that holds a 1 MiB message whole.

    With the default (about 200 KiB on Linux) a 1 MiB send() sleeps in the kernel until
    the reader has taken most of it; the writer then finishes while the reader still
    works, and a Python reader with a busy thread gets the whole message in one read()
    (one wait for the GIL, not five).  Harmless where the kernel gives less."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except OSError:
        pass
    finally:
        sock.detach()


def _shutdown(fd: int, how: int) -> None:
    """shutdown() the socket behind fd: it reaches every copy of that socket."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(how)
    except OSError:
        pass
    finally:
        sock.close()


def _discard_unread(sock) -> None:
    """Read and drop what ``sock`` still holds: a Unix socket closed with unread bytes makes its
    peer's next send fail with ECONNRESET, where a local reader that went away gives the writer
    EPIPE (BrokenPipeError, which programs catch).  Its read side is shut down (STOP) or at its
    end, so nothing more comes in: what the writer's send buffer held (megabytes: ``SEND_BUFFER``)."""
    for _ in range(4096):
        try:
            if not sock.recv(1 << 16, _DONTWAIT):
                return      # (the common case, at once: the child closed its end, nothing unread)
        except OSError:
            return


def _consume(q, n: int) -> None:
    """Drop the first ``n`` bytes (just written) from the queue of buffers ``q``."""
    while n:
        head = q[0]
        if len(head) <= n:
            n -= len(head)
            q.popleft()
        else:
            # a view, not a copy of the rest (partial writes of 1 MiB pieces are common)
            q[0] = (head if type(head) is memoryview else memoryview(head))[n:]
            n = 0


def _next_lines(q) -> bytes:
    """The next write to a shared output fd (the user's stdout or stderr, which the outputs
    of all remote children share): at most SMALL_WRITE bytes, ending after the last newline
    in them if there is one.  A local child's line is one write, which a pipe or terminal
    takes whole; cut anywhere else, another child's output could land inside the line."""
    parts, size = [], 0
    for piece in q:
        parts.append(piece[:SMALL_WRITE - size])
        size += len(parts[-1])
        if size >= SMALL_WRITE:
            break
    chunk = b"".join(parts)
    cut = chunk.rfind(b"\n") + 1
    return chunk[:cut] if cut else chunk


def _read_copy(fd, view):
    data = os.read(fd, len(view))
    view[:len(data)] = data
    return len(data)


def _readv(fd, view):
    return os.readv(fd, [view])


#: read from fd into a writable view, without a copy where the platform has os.readv (PyPy has not)
readinto = _readv if hasattr(os, "readv") else _read_copy


def _write_first(fd, bufs):
    return os.write(fd, bufs[0])


#: write several buffers to fd in one call where the platform has os.writev (PyPy has not)
writev = os.writev if hasattr(os, "writev") else _write_first


class Stream:
    """One bridged file descriptor and its state in each direction."""

    __slots__ = (
        "sid", "fd", "sock", "owner", "reading", "writing", "shared", "pollable", "is_socket",
        "credit", "outq", "queued", "unacked", "peer_eof", "read_done", "write_done",
        "events", "handler", "bulk", "room", "held", "tail", "pipe_poll",
    )

    def __init__(self, sid, fd, reading, writing, owner, shared, credit):
        self.sid = sid
        self.fd = fd
        self.owner = owner
        self.reading = reading      # we read the fd and send DATA to the peer
        self.writing = writing      # we write the peer's DATA to the fd
        # shared: the fd's file description is also the user's (the relay holds dups of
        # the user's Connection ends and stdout): never change its flags (no O_NONBLOCK:
        # sockets get MSG_DONTWAIT per call) and never shut it down.
        self.shared = shared
        self.held = False           # a shared fd's partial line waits for the rest of its frame
        self.pollable = True
        mode = os.fstat(fd).st_mode
        self.is_socket = stat.S_ISSOCK(mode)
        self.sock = socket.socket(fileno=fd) if self.is_socket else None
        self.credit = credit
        self.outq = deque()  # type: deque[bytes | memoryview]
        self.queued = 0
        self.unacked = 0
        self.peer_eof = False
        self.read_done = not reading
        self.write_done = not writing
        self.events = 0
        self.handler = None
        self.bulk = False           # recent reads were big: move the next ones with splice
        self.room = 0               # what a splice may give the socket without blocking, at least
        self.tail = None            # a bytearray: the last TAIL bytes written to the fd are kept there
        #: a shared (blocking) pipe's poll(): asked whether it takes a piece now (``_pipe_takes``), so
        #: that it is written at once like a socket, not at the next wake-up (None: not such a pipe)
        self.pipe_poll = _pipe_poller(fd) if shared and writing and stat.S_ISFIFO(mode) else None


#: what a stream with a ``tail`` keeps of what passed: its last bytes (the relay keeps a child's
#: stderr's: what a child that failed said last goes with its exit report)
TAIL = 4096


def _pipe_poller(fd):
    if poll is None:
        return None
    p = poll()
    p.register(fd, POLLOUT)
    return p


def _pipe_takes(s) -> bool:
    """Whether the shared pipe of ``s`` takes a piece (at most SMALL_WRITE, a page) now without
    blocking: what the selector would say, asked at once.  (Not a count of free bytes: a Linux pipe
    holds pages, and small writes that do not fit the last one take a page each.)"""
    return s.pipe_poll is not None and bool(s.pipe_poll.poll(0))


def _keep(tail, piece) -> None:
    tail += piece
    if len(tail) > 2 * TAIL:
        del tail[:-TAIL]


class Mux:
    """All streams of one frame channel, driven by a selector.

    ``send(*parts)`` queues bytes for the peer; selector keys registered here have
    a callable ``data`` that takes the event mask (the loop's convention).
    """

    def __init__(self, selector, send, window: int = WINDOW, ack_at: int = ACK_AT) -> None:
        self.sel = selector
        self.send = send        # must copy what it is given before returning (it may be reused)
        # One read buffer for every stream: os.read(fd, 1 MiB) would allocate, shrink and free
        # 1 MiB per call (mmap, mremap, munmap): half the agent's syscalls per round trip.
        self._scratch = memoryview(bytearray(READ_CHUNK))
        self.window = window
        self.ack_at = min(ack_at, window)
        self.streams = {}  # type: dict[int, Stream]
        self.high_sid = 0
        self.on_closed = None     # callback(stream) once a stream is finished and closed
        #: (fd) -> True when no other process holds the shared socket ``fd``: what its reader never
        #: read is then dropped before our copy closes (``_last_copy_shut``); None: never
        self.last_copy = None  # type: Callable[[int], bool] | None
        #: () -> (stream, payload bytes still to come) of the DATA frame being read, else (0, 0):
        #: the endpoint's frame reader (a shared fd's line cut by a network read waits for the rest)
        self.incoming = None  # type: Callable[[], tuple[int, int]] | None
        self.on_drained = None    # callback(stream) when its write queue becomes empty
        # splice_out(stream, limit): the endpoint moves up to limit bytes of the stream into its
        # spool, to go out at the next send(), and returns how many (0: the stream ended; None:
        # read them here instead)
        self.splice_out: Optional[Callable[[Stream, int], Optional[int]]] = None

    # -- set-up -------------------------------------------------------------
    def add(self, sid: int, fd: int, *, reading: bool, writing: bool, owner=None,
            shared: bool = False) -> Stream:
        if sid in self.streams or sid <= 0:
            raise frames.FrameError("stream %d opened twice" % sid)
        s = Stream(sid, fd, reading, writing, owner, shared, self.window)
        if not shared and not s.is_socket:
            os.set_blocking(fd, False)
        s.handler = functools.partial(self._ready, s)     # (called with the event mask)
        self.streams[sid] = s
        self.high_sid = max(self.high_sid, sid)
        self._update(s)
        return s

    def _update(self, s: Stream) -> None:
        if s.fd < 0:
            return
        if not s.pollable:
            self._unpolled(s)
            return
        ev = 0
        if not s.read_done and s.credit > 0:
            ev |= selectors.EVENT_READ
        if s.outq and not s.held:
            ev |= selectors.EVENT_WRITE
        if ev == s.events:
            return
        try:
            if not s.events:
                self.sel.register(s.fd, ev, s.handler)
            elif not ev:
                self.sel.unregister(s.fd)
            else:
                self.sel.modify(s.fd, ev, s.handler)
        except PermissionError:
            # a regular file or /dev/null: epoll refuses it; it never blocks anyway
            s.pollable = False
            s.events = 0
            self._unpolled(s)
            return
        s.events = ev

    def _unpolled(self, s: Stream) -> None:
        """A regular file (a large start payload, see the relay's link) or /dev/null never
        blocks: write what waits, and read as far as the credit allows."""
        if s.outq:
            self._write(s)
        while not s.read_done and s.credit > 0 and s.fd >= 0:
            self._read(s)
        self._maybe_finish(s)

    # -- events from the selector ------------------------------------------
    def _ready(self, s: Stream, mask: int) -> None:
        if mask & _WRITE and s.outq:
            self._write(s)
        if mask & _READ and not s.read_done and s.fd >= 0:
            self._read(s)
            if s.events == _READ and s.credit > 0 and not s.read_done and not s.outq:
                return      # (a message's hop: still reading only, so _update would change nothing)
        self._update(s)
        self._maybe_finish(s)

    def _read(self, s: Stream) -> None:
        limit = s.credit if s.credit < READ_CHUNK else READ_CHUNK
        if limit <= 0:
            # A readiness event selected before the credit ran out (the agent's drain of a reaped
            # child spends it): a read of 0 bytes here would be taken for the end of the stream.
            return
        n = self.splice_out(s, limit) if s.bulk and self.splice_out is not None else None
        if n:
            s.credit -= n
            s.bulk = n >= BULK
            self.send()         # (the spooled payload and its header go out)
            return
        if n is None:
            view = self._scratch if limit == READ_CHUNK else self._scratch[:limit]
            try:
                if s.sock is not None:
                    n = s.sock.recv_into(view, limit, _DONTWAIT)
                else:
                    n = readinto(s.fd, view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                n = 0
        if n:
            s.credit -= n
            s.bulk = n >= BULK
            self.send(_header(_DATA, s.sid, n), view[:n])
        else:
            s.read_done = True
            self.send(_header(frames.EOF, s.sid, 0))

    def _write(self, s: Stream) -> None:
        q = s.outq
        while q:
            try:
                if s.sock is not None:
                    if len(q) == 1:
                        n = s.sock.send(q[0], _DONTWAIT)
                    else:
                        n = s.sock.sendmsg(list(islice(q, 0, 128)), (), _DONTWAIT)
                elif s.shared:
                    chunk = _next_lines(q)
                    if chunk[-1:] != b"\n" and self.incoming is not None and self.incoming()[0] == s.sid:
                        # the line goes on in the frame still arriving (a network read cut it):
                        # written whole with the rest, as a local child's line is one write
                        s.held = True
                        break
                    n = os.write(s.fd, chunk)
                elif len(q) == 1:
                    n = os.write(s.fd, q[0])
                else:
                    n = writev(s.fd, list(islice(q, 0, 128)))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                self._reader_gone(s)
                return
            s.queued -= n
            s.unacked += n
            s.room -= n
            _consume(q, n)
            if s.shared and s.pollable and s.sock is None and not _pipe_takes(s):
                break  # a small write when it cannot block the loop
        self._ack(s)
        if not q:
            if s.peer_eof:
                self._end_write(s)
            if self.on_drained is not None:
                self.on_drained(s)

    def _ack(self, s: Stream) -> None:
        if s.unacked >= self.ack_at:
            self.send(frames.header(frames.CREDIT, s.sid, s.unacked))
            s.unacked = 0

    def splice_in(self, sid: int, fd: int, count: int):
        """Move up to ``count`` bytes of a DATA payload from the channel pipe ``fd`` straight to
        stream ``sid``; how many moved, or None: read them the usual way (bytes already queued
        for the stream must go first, it takes nothing now, or it cannot be spliced)."""
        s = self.streams.get(sid)
        if s is None or s.outq or s.write_done or s.peer_eof or not s.writing or s.fd < 0 or s.tail is not None:
            return None
        if s.sock is not None:
            # (the room only grows as the reader takes bytes: ask the kernel again only when
            # what we know of is not enough)
            if s.room < count:
                s.room = splice.socket_room(s.sock)
            count = min(count, s.room)
        elif s.shared or not s.pollable:
            return None     # (a blocking pipe of the user's, or a file: read and write)
        if count < splice.MIN_MOVE:
            return None
        try:
            n = splice.move(fd, s.fd, count)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in _GONE:
                self._reader_gone(s)
            elif exc.errno != errno.EINVAL:     # (EINVAL: this kind of fd cannot splice)
                raise
            return None
        if s.sock is not None:
            s.room -= n
        s.unacked += n
        self._ack(s)
        return n or None

    def _reader_gone(self, s: Stream) -> None:
        """Our fd's reader went away: drop what is queued and tell the peer to stop."""
        s.queued = 0
        s.outq.clear()
        if not s.write_done:
            s.write_done = True
            self.send(frames.header(frames.STOP, s.sid, 0))
        if self.on_drained is not None:
            self.on_drained(s)

    def _end_write(self, s: Stream) -> None:
        if s.write_done:
            return
        s.write_done = True
        if s.shared:
            # The user holds this socket too: shutting it down would end it for them.
            # A Connection never half-closes, so the peer's EOF means its end is gone:
            # stop reading and close our copy, and the user sees EOF once every copy
            # is closed, as with a local child.  The peer hears that we stop reading too
            # (EOF), so that it lets go of its end (the agent, of a dead child's socket).
            if not s.read_done:
                s.read_done = True
                self.send(frames.header(frames.EOF, s.sid, 0))
        elif s.reading and not s.read_done and s.is_socket:
            _shutdown(s.fd, socket.SHUT_WR)

    def _maybe_finish(self, s: Stream) -> None:
        if s.fd >= 0 and s.read_done and s.write_done and not s.outq:
            self.close(s)

    def _last_copy_shut(self, s: Stream) -> bool:
        """Whether a shared socket whose reader went away is open at the writer's end and ours is
        its last copy; if so its read side is shut down first.  Closed with bytes unread, it would
        reset its peer: the user's next ``recv()`` would raise ConnectionResetError, where the
        promise is EOFError.  Drained first, a writer still sending (a send that blocks for room)
        would put more in between the drain and the close; shut down, its sends fail with EPIPE
        (BrokenPipeError, as to a local reader that went away) and the drain empties it for good.
        Another copy keeps the socket open, and its next reader may take what is there: it stays."""
        if self.last_copy is None or s.sock is None:
            return False
        try:
            if not s.sock.recv(1, socket.MSG_PEEK | _DONTWAIT):
                return False        # (at its end: the writer is gone, nothing unread)
        except BlockingIOError:
            pass                    # (nothing unread now; the writer may still send)
        except OSError:
            return False            # (the socket is gone)
        if not self.last_copy(s.fd):
            return False
        try:
            s.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        return True

    def close(self, s: Stream) -> None:
        """Close a stream now, dropping whatever it still had queued."""
        if s.fd < 0:
            return
        if s.events:
            self.sel.unregister(s.fd)
            s.events = 0
        if s.sock is not None:
            if s.reading and s.read_done and (not s.shared or self._last_copy_shut(s)):
                _discard_unread(s.sock)
            s.sock.close()
        else:
            os.close(s.fd)
        s.fd = -1
        s.outq.clear()
        s.queued = 0
        s.read_done = s.write_done = True
        self.streams.pop(s.sid, None)
        if self.on_closed is not None:
            self.on_closed(s)

    # -- frames from the peer ----------------------------------------------
    def _stream(self, sid: int):
        s = self.streams.get(sid)
        if s is None and sid > self.high_sid:
            raise frames.FrameError("frame for stream %d, which was never opened" % sid)
        return s  # None: a stream we already closed; late frames for it are dropped

    def on_data(self, sid: int, piece) -> None:
        s = self._stream(sid)
        if s is None or s.write_done:
            return
        s.held = False
        if not s.writing or s.peer_eof:
            raise frames.FrameError("DATA on stream %d, which takes none" % sid)
        if s.tail is not None:
            _keep(s.tail, piece)
        if not s.outq and s.sock is not None and s.fd >= 0:
            # the common case first: a socket with nothing queued takes the piece whole now
            try:
                n = s.sock.send(piece, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                self._reader_gone(s)
                self._update(s)
                self._maybe_finish(s)
                return
            if n:
                s.unacked += n
                s.room -= n         # (what a splice may still give it: see splice_in)
                if n == len(piece):
                    self._ack(s)
                    if self.on_drained is not None:
                        self.on_drained(s)
                    return
                piece = piece[n:]
        self._enqueue(s, piece)

    def _enqueue(self, s, piece) -> None:
        """What the fd did not take at once waits in the stream's queue (written now if it can)."""
        s.queued += len(piece)
        if s.queued > self.window:
            raise frames.FrameError("peer overran its credit on stream %d" % s.sid)
        q = s.outq
        q.append(piece)
        if len(q) == 1 and (not s.shared or s.sock is not None or not s.pollable or _pipe_takes(s)):
            # the common case: written at once, no extra wake-up (a shared socket is written
            # with MSG_DONTWAIT; a shared blocking pipe when it has the room, else once it is
            # writable). A message is then in the kernel before the next frame's, as a local
            # process's send is before its next one: on a one-way Pipe and then on a duplex one,
            # the first is readable when the second arrives
            self._write(s)
        # The piece may view a read buffer that its owner reuses: keep a copy of what waits.
        # (Earlier items were copied when they arrived, so only the ends can be such views.)
        for i in (0, -1):
            if q and type(q[i]) is memoryview and not q[i].readonly:
                q[i] = bytes(q[i])
        if s.fd >= 0:
            self._update(s)
        self._maybe_finish(s)

    def on_frame(self, ftype: int, sid: int, value: int) -> None:
        s = self._stream(sid)
        if s is None:
            return
        if ftype == frames.CREDIT:
            s.credit += value
            if s.credit > self.window:
                raise frames.FrameError("credit on stream %d beyond the window" % sid)
        elif ftype == frames.EOF:
            if not s.writing:
                raise frames.FrameError("EOF on stream %d, which takes no data" % sid)
            s.peer_eof = True
            if not s.outq:
                self._end_write(s)
        elif ftype == frames.STOP:
            self._stop_reading(s)
        self._update(s)
        self._maybe_finish(s)

    def _stop_reading(self, s: Stream) -> None:
        """The peer's reader is gone: make our writer see a broken pipe, as locally."""
        if s.read_done:
            return
        s.read_done = True
        if s.is_socket and not s.shared:
            _shutdown(s.fd, socket.SHUT_RD)

    def peer_lost(self) -> None:
        """The channel is gone: flush what we hold, then end every stream."""
        for s in list(self.streams.values()):
            s.read_done = True
            s.peer_eof = True
            if not s.outq:
                self._end_write(s)
            self._update(s)
            self._maybe_finish(s)

    def streams_fds(self):
        return [s.fd for s in self.streams.values() if s.fd >= 0]

    def drain(self, s: Stream) -> None:
        """Read all the fd holds right now, as far as credit allows (its writer exited)."""
        while not s.read_done and s.credit > 0 and s.fd >= 0:
            before = s.credit
            self._read(s)
            if s.credit == before:
                break
        self._update(s)
        self._maybe_finish(s)

    def owned_by(self, owner):
        return [s for s in self.streams.values() if s.owner is owner]

