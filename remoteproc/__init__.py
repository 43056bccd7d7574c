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
from .process import RemoteProcess
from .script import RemoteScript, run

__version__ = "0.1.0"

__all__ = [
    "CONNECTION_LOST",
    "AuthenticationError",
    "BootstrapError",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "HostKeyError",
    "Pipe",
    "PicklingError",
    "ProtocolError",
    "RemoteProcess",
    "RemoteProcessError",
    "RemoteScript",
    "run",
]
