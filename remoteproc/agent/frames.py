"""The wire format between the local relay and the remote agent.

A frame is ``type (1 byte) | stream id (4 bytes) | length (4 bytes) | payload``.
DATA and CONTROL frames carry ``length`` bytes of payload; for CREDIT frames the
length field *is* the credit (no payload); EOF and STOP frames have none.
CONTROL frames travel on stream 0 and hold a JSON header plus an optional blob.
"""

import json
import struct

HEADER = struct.Struct(">BII")
HEADER_SIZE = HEADER.size

DATA = 1      # bytes of one stream
EOF = 2       # the sender will send no more on this stream
CREDIT = 3    # the receiver wrote `length` more bytes out: the sender may send them again
STOP = 4      # the receiver cannot take more bytes on this stream (its reader went away)
CONTROL = 5   # a JSON message (hello, start, started, exited, signal, error, ...)

MAX_DATA = 1 << 20          # one DATA frame carries at most 1 MiB
MAX_CONTROL = (1 << 32) - 1  # a start request carries the pickled target: allow it to be big
_NAMES = {DATA: "DATA", EOF: "EOF", CREDIT: "CREDIT", STOP: "STOP", CONTROL: "CONTROL"}


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame sequence."""


def header(ftype: int, sid: int, length: int) -> bytes:
    return HEADER.pack(ftype, sid, length)


def control(msg: dict, blob: bytes = b"") -> bytes:
    """Encode one CONTROL frame: 4-byte JSON length, JSON, then the blob."""
    head = json.dumps(msg, separators=(",", ":")).encode()
    body_len = 4 + len(head) + len(blob)
    if body_len > MAX_CONTROL:
        raise ValueError("control message of %d bytes is too large" % body_len)
    return b"".join((HEADER.pack(CONTROL, 0, body_len), struct.pack(">I", len(head)), head, blob))


def parse_control(payload) -> "tuple[dict, memoryview]":
    """Split a CONTROL payload into its JSON message and its blob."""
    view = memoryview(payload)
    if len(view) < 4:
        raise FrameError("control frame shorter than its 4-byte header")
    (n,) = struct.unpack_from(">I", view)
    if 4 + n > len(view):
        raise FrameError("control frame header says %d bytes, frame has %d" % (n, len(view) - 4))
    try:
        msg = json.loads(bytes(view[4:4 + n]))
    except ValueError as exc:
        raise FrameError("control frame is not JSON: %s" % exc) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise FrameError("control message without an 'op': %r" % (msg,))
    return msg, view[4 + n:]


class FrameReader:
    """Incremental frame parser.

    DATA payloads are handed on piece by piece as they arrive (``on_data(sid,
    memoryview)``), so a 1 MiB frame is never buffered whole; other frames are
    delivered complete through ``on_frame(type, sid, length, payload)``.
    """

    def __init__(self, on_data, on_frame, max_control: int = MAX_CONTROL) -> None:
        self._on_data = on_data
        self._on_frame = on_frame
        self._max_control = max_control
        self._head = bytearray()     # partial header
        self._type = 0
        self._sid = 0
        self._left = 0               # payload bytes still expected for the current frame
        self._body = None  # type: bytearray | None  # a CONTROL payload in progress

    @property
    def idle(self) -> bool:
        """True when no frame is partly read (a clean place for the stream to end)."""
        return not self._head and not self._left and self._body is None

    def data_left(self) -> "tuple[int, int]":
        """(stream, payload bytes still to come) inside a DATA frame, else (0, 0)."""
        if self._left and self._type == DATA:
            return self._sid, self._left
        return 0, 0

    @property
    def in_control(self) -> bool:
        """True inside a CONTROL frame's payload (which is parsed whole, never spliced)."""
        return self._body is not None

    def header_missing(self) -> int:
        """Bytes of the next frame's header still to come (0 inside a frame's payload)."""
        if self._left or self._body is not None:
            return 0
        return HEADER_SIZE - len(self._head)

    def skip(self, n: int) -> None:
        """``n`` bytes of the current DATA payload went to their stream another way (splice)."""
        assert self._type == DATA and 0 < n <= self._left
        self._left -= n

    def feed(self, chunk) -> None:
        view = memoryview(chunk)
        pos, end = 0, len(view)
        if end > HEADER_SIZE and not self._left and not self._head:
            # the common case first: the chunk is one whole DATA frame (a message's hop)
            ftype, sid, length = HEADER.unpack_from(view)
            if ftype == DATA and length == end - HEADER_SIZE and sid and length <= MAX_DATA:
                self._type, self._sid = DATA, sid
                self._on_data(sid, view[HEADER_SIZE:])
                return
        while pos < end:
            if self._left:
                n = min(self._left, end - pos)
                piece = view[pos:pos + n]
                pos += n
                self._left -= n
                if self._type == DATA:
                    self._on_data(self._sid, piece)
                else:
                    assert self._body is not None       # (a CONTROL frame's, from _start)
                    self._body += piece
                    if not self._left:
                        body, self._body = self._body, None
                        self._on_frame(self._type, self._sid, len(body), body)
                continue
            need = HEADER_SIZE - len(self._head)
            if need == HEADER_SIZE and end - pos >= HEADER_SIZE:
                ftype, sid, length = HEADER.unpack_from(view, pos)
                pos += HEADER_SIZE
            else:
                take = min(need, end - pos)
                self._head += view[pos:pos + take]
                pos += take
                if len(self._head) < HEADER_SIZE:
                    break
                ftype, sid, length = HEADER.unpack(self._head)
                self._head.clear()
            self._start(ftype, sid, length)

    def _start(self, ftype: int, sid: int, length: int) -> None:
        if ftype == DATA:
            if sid == 0 or length == 0 or length > MAX_DATA:
                raise FrameError("bad DATA frame (stream %d, %d bytes)" % (sid, length))
            self._type, self._sid, self._left = DATA, sid, length
        elif ftype == CONTROL:
            if sid != 0 or length > self._max_control:
                raise FrameError("bad CONTROL frame (stream %d, %d bytes)" % (sid, length))
            if length == 0:
                raise FrameError("empty CONTROL frame")
            self._type, self._sid, self._left, self._body = CONTROL, 0, length, bytearray()
        elif ftype in (EOF, STOP, CREDIT):
            if sid == 0:
                raise FrameError("%s frame on stream 0" % _NAMES[ftype])
            if ftype != CREDIT and length:
                raise FrameError("%s frame with a length of %d" % (_NAMES[ftype], length))
            self._on_frame(ftype, sid, length, None)
        else:
            raise FrameError("unknown frame type %d" % ftype)
