"""remoteproc: multiprocessing, done remotely, IPC channel intact.

``RemoteProcess("user@host", target=f, args=(conn,))`` runs ``f`` on another host
over SSH; the ``Connection`` ends it was given keep working across hosts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CONNECTION_LOST,
    AuthenticationError,
    BootstrapError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    HostKeyError,
    PicklingError,
    ProtocolError,
    RemoteProcessError,
)

if TYPE_CHECKING:
    from multiprocessing import Pipe

    from .executor import Executor
    from .managers import Manager
    from .pool import Pool
    from .process import RemoteProcess
    from .queues import Event, JoinableQueue, Queue, SimpleQueue
    from .script import RemoteScript, run
    from .sharedctypes import Array, RawArray, RawValue, Value
    from .synchronize import Barrier, BoundedSemaphore, Condition, Lock, RLock, Semaphore

# Imported on first use (PEP 562): the relay process and remote children import this
# package too, and need none of these; ``import remoteproc`` stays cheap for everyone.
_LAZY = {
    "Pipe": "multiprocessing", "Executor": ".executor", "Pool": ".pool", "RemoteProcess": ".process",
    "Event": ".queues", "JoinableQueue": ".queues", "Queue": ".queues", "SimpleQueue": ".queues",
    "RemoteScript": ".script", "run": ".script",
    "Array": ".sharedctypes", "RawArray": ".sharedctypes", "RawValue": ".sharedctypes", "Value": ".sharedctypes",
    "Barrier": ".synchronize", "BoundedSemaphore": ".synchronize", "Condition": ".synchronize",
    "Manager": ".managers", "Lock": ".synchronize", "RLock": ".synchronize", "Semaphore": ".synchronize",
}

_SUBMODULES = ("hostlist",)     # ``remoteproc.hostlist.slurm()`` works after a plain ``import remoteproc``


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module("." + name, __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'remoteproc' has no attribute %r" % name)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__version__ = "0.1.0"

__all__ = [
    "CONNECTION_LOST",
    "Array",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Lock",
    "Manager",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "Value",
    "AuthenticationError",
    "BootstrapError",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "Event",
    "Executor",
    "HostKeyError",
    "JoinableQueue",
    "Pipe",
    "PicklingError",
    "Pool",
    "ProtocolError",
    "Queue",
    "RemoteProcess",
    "RemoteProcessError",
    "RemoteScript",
    "SimpleQueue",
    "run",
]
