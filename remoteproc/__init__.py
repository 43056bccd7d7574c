"""remoteproc: multiprocessing, done remotely, IPC channel intact.

``RemoteProcess("user@host", target=f, args=(conn,))`` runs ``f`` on another host
over SSH; the ``Connection`` ends it was given keep working across hosts.
"""

from multiprocessing import Pipe

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
from .executor import Executor
from .pool import Pool
from .process import RemoteProcess
from .queues import Event, JoinableQueue, Queue, SimpleQueue
from .script import RemoteScript, run

__version__ = "0.1.0"

__all__ = [
    "CONNECTION_LOST",
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
