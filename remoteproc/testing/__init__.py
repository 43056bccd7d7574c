"""Throwaway SSH servers and accounts for the demo, the tests and the benchmarks.

The entry point: ``LoopbackSSHServer`` (a started server gives ``spec()`` and
``options()`` for ``RemoteProcess``)::

    with LoopbackSSHServer() as server:
        p = RemoteProcess(server.spec(), target=f, **server.options())

Modules: ``loopback`` (the server a caller starts), ``openssh`` (sshd as that server),
``paramiko_server`` (the in-process fallback where there is no sshd), ``accounts``
(local users sshd will log in), ``proctree`` (ending what a server started), ``keys``
(key and config files), ``net`` (the loopback address, a free port), ``tools`` (admin
tools), ``coverage`` (the suite's coverage measurement reaching the remote agents).
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
