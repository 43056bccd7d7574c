"""An OpenSSH sshd of a test's own: 127.0.0.1, a free port, the test's temp dir, and the
``sshd_config`` lines the test puts first (sshd takes a keyword's first value); and an account
of a test's own whose login finds another Python first as ``python3``."""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator

import pytest
from conftest import _unavailable

from remoteproc.testing import LoopbackSSHServer
from remoteproc.testing.accounts import current_user, ensure_local_user
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


@contextlib.contextmanager
def account_whose_python3_is(name: str, interpreter: str) -> Iterator[LoopbackSSHServer]:
    """Account ``name`` (created if missing; kept, as rpuser is) whose login shell puts ``~/bin``,
    holding ``python3 -> interpreter``, first on its PATH, as users set it up; and a loopback sshd
    that logs it in.  The link goes at the end."""
    if os.geteuid() != 0:
        _unavailable("the %r account needs the tests to run as root" % name)
    try:
        home = ensure_local_user(name)
    except RuntimeError as exc:
        _unavailable("cannot set up local user %r: %s" % (name, exc))
    pw = pwd.getpwnam(name)
    bindir, rc = os.path.join(home, "bin"), os.path.join(home, ".bashrc")
    link = os.path.join(bindir, "python3")
    os.makedirs(bindir, exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(interpreter, link)
    line = 'export PATH="$HOME/bin:$PATH"\n'
    old = open(rc).read() if os.path.exists(rc) else ""
    if line not in old:
        with open(rc, "w") as f:
            f.write(line + old)         # first: Debian's ~/.bashrc returns early when not interactive
    for path in (bindir, link, rc):
        os.lchown(path, pw.pw_uid, pw.pw_gid)
    server = LoopbackSSHServer(users=[name])
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        _unavailable("cannot start a loopback sshd for %s: %s" % (name, exc))
    try:
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            os.unlink(link)


def run_check(server: LoopbackSSHServer, user: str, python: str, capsys: pytest.CaptureFixture) -> str:
    """``remoteproc check`` of ``user`` on ``server`` with ``--python``, as a user types it: its output
    (the command must succeed)."""
    from remoteproc import cli

    opts = server.options(user)
    args = ["check", "-p", str(opts["port"]), "-i", opts["key_filename"], "--known-hosts", opts["known_hosts"],
            "--python", python, "%s@%s" % (user, server.host)]
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0, out
    return out
