"""The loopback address the test servers listen on, a free port, a port that never answers, and
the SSH banner check."""

from __future__ import annotations

import contextlib
import socket
from typing import Iterator

HOST = "127.0.0.1"


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ssh_banner(port: int, timeout: float) -> bytes:
    """Connect to PORT and return the server's identification line ("" on failure)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return b""


@contextlib.contextmanager
def full_listener() -> Iterator[int]:
    """A port on 127.0.0.1 whose accept queue is full: a new connection to it hangs (its SYN is
    dropped), as one to a host whose link is down does."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = []
    try:
        for _ in range(2):      # fill the queue; a connect that itself hangs shows it is full
            s = socket.socket()
            s.settimeout(0.5)
            held.append(s)
            try:
                s.connect((HOST, port))
            except OSError:
                break
        yield port
    finally:
        for s in held:
            s.close()
        listener.close()
