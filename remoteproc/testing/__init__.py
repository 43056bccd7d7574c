"""Throwaway SSH servers and accounts for the demo, the tests and the benchmarks.

The entry point: ``LoopbackSSHServer`` (a started server gives ``spec()`` and
``options()`` for ``RemoteProcess``)::

    with LoopbackSSHServer() as server:
        p = RemoteProcess(server.spec(), target=f, **server.options())

Modules: ``loopback`` (the server a caller starts), ``openssh`` (the sshd binary),
``paramiko_server`` (the in-process fallback), ``accounts`` (local users),
``proctree`` (ending what a server started), ``keys``, ``net``, ``tools``.
"""

from .accounts import current_user, ensure_local_user
from .loopback import LoopbackSSHServer
from .openssh import find_sshd

__all__ = [
    "LoopbackSSHServer",
    "current_user",
    "ensure_local_user",
    "find_sshd",
]
