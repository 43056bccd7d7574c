"""A remote agent run locally over pipes (no SSH), for tests of the agent itself."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from remoteproc import bootstrap
from remoteproc.agent import frames


class LocalAgent:
    """Starts the agent exactly as over SSH (the exec stub and the shipped blob)."""

    def __init__(self, python: str = sys.executable) -> None:
        self.proc = subprocess.Popen(["/bin/sh", "-c", bootstrap.command(python)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.proc.stdin.write(bootstrap.agent_blob(bool(bootstrap.agent_env())))
        self.proc.stdin.flush()
        self.buf = bytearray()
        self._skip_ready(10)
        self.hello = self.read_control(10)

    def _skip_ready(self, timeout: float) -> None:
        """Read past the command's READY line and the stub's STUB_STARTED (no startup file runs here: the
        blob went at once)."""
        deadline = time.monotonic() + timeout
        while bootstrap.READY not in self.buf or bootstrap.STUB_STARTED not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            data = os.read(self.proc.stdout.fileno(), 1 << 20) if ready else b""
            if not data:
                raise AssertionError("no READY from the agent's command within %ss: %r" % (timeout, bytes(self.buf)))
            self.buf += data
        del self.buf[:self.buf.index(bootstrap.STUB_STARTED) + len(bootstrap.STUB_STARTED)]

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the agent serves its channel: it says hello before it preloads the modules every
        child needs, and a file of those imports may still be open then; its first pong comes after.
        (A baseline of the agent's fds taken right after the hello can hold such a file.)"""
        self.send(frames.control({"op": "ping", "t": "settle"}))
        reply = self.read_control(timeout)
        assert reply == {"op": "pong", "t": "settle"}, reply

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_frame(self, timeout: float):
        """The next frame as (type, sid, length, payload), or None on EOF/timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= frames.HEADER_SIZE:
                ftype, sid, length = frames.HEADER.unpack_from(self.buf)
                size = length if ftype in (frames.DATA, frames.CONTROL) else 0
                if len(self.buf) >= frames.HEADER_SIZE + size:
                    payload = bytes(self.buf[frames.HEADER_SIZE:frames.HEADER_SIZE + size])
                    del self.buf[:frames.HEADER_SIZE + size]
                    return ftype, sid, length, payload
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                return None
            data = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not data:
                return None
            self.buf += data

    def read_control(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.read_frame(deadline - time.monotonic())
            if frame is None:
                break
            if frame[0] == frames.CONTROL:
                return frames.parse_control(frame[3])[0]
        raise AssertionError("no control message from the agent within %ss" % timeout)

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        """Close stdin, wait for the exit (bounded): (exit status, stderr)."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("the agent did not exit within %ss" % timeout) from None
        err = self.proc.stderr.read().decode("utf-8", "replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, err
