"""An OpenSSH sshd of a test's own: 127.0.0.1, a free port, the test's temp dir, and the
``sshd_config`` lines the test puts first (sshd takes a keyword's first value)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from conftest import _unavailable

from remoteproc.testing.accounts import current_user
from remoteproc.testing.net import HOST
from remoteproc.testing.openssh import OpenSSHServer, find_sshd

USER = current_user()


@contextlib.contextmanager
def own_sshd(workdir: str, *lines: str) -> Iterator[OpenSSHServer]:
    """An sshd for the current user whose config starts with ``lines``; ``known_hosts`` (a file
    in ``workdir``) holds its key."""
    sshd_path = find_sshd()
    if sshd_path is None:
        _unavailable("no sshd binary (scripts/test.sh installs openssh-server)")
    os.makedirs(workdir, exist_ok=True)
    server = OpenSSHServer(sshd_path, workdir, [USER], os.path.join(workdir, "client_key"), config_first=lines)
    server.start()
    try:
        server.known_hosts = os.path.join(workdir, "known_hosts")    # type: ignore[attr-defined]
        with open(server.known_hosts, "w") as f:     # type: ignore[attr-defined]
            f.write("[%s]:%d %s\n" % (HOST, server.port, server.host_public))
        yield server
    finally:
        server.stop()
