"""One call of a function in a remote child, for tests: ``call(host, options, target, *args)``."""

from __future__ import annotations

from multiprocessing.connection import wait
from typing import Any, Callable

from remoteproc import Pipe, RemoteProcess


def call(host: str, options: dict[str, Any], target: Callable[..., Any], *args: Any, timeout: float = 90) -> Any:
    """Run ``target(conn, *args)`` in a RemoteProcess; return the one message it sends on ``conn``.
    The child must answer within ``timeout`` seconds and exit with 0."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=target, args=(child, *args), **options)
    p.start()
    child.close()
    try:
        assert parent.poll(timeout), "no answer from the remote child (exit code %s)" % p.exitcode
        return parent.recv()
    finally:
        parent.close()
        p.join(30)
        assert p.exitcode == 0, "the remote child's exit code: %s" % p.exitcode


def start(host: str, options: dict[str, Any], target: Callable[..., Any], *args: Any) -> tuple[Any, Any, Any]:
    """Start ``target(conn, *args)`` in a RemoteProcess: (process, our end of conn, its first message)."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=target, args=(child, *args), **options)
    p.start()
    child.close()
    assert wait([parent], 60), "no first message from the remote process"
    return p, parent, parent.recv()
