"""One call of a function in a remote child, for tests: ``call(host, options, target, *args)``."""

from __future__ import annotations

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
