"""Local accounts for the test servers: who we are, and accounts sshd will log in."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import tempfile
from collections.abc import Iterator

from .tools import find_tool, run_tool

log = logging.getLogger("remoteproc.testing")

_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


def current_user() -> str:
    """Name of the account this process runs as (by uid, not by $USER)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def check_user_name(name: str) -> None:
    """Reject names that could break the generated config files."""
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise ValueError(f"invalid user name {name!r}")


def shadow_password(name: str) -> str | None:
    """The password field of NAME from /etc/shadow (root only), or None."""
    try:
        with open("/etc/shadow", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.rstrip("\n").split(":")
                if len(fields) > 1 and fields[0] == name:
                    return fields[1]
    except OSError:
        pass
    try:
        return pwd.getpwnam(name).pw_passwd
    except KeyError:
        return None


def is_locked(password_field: str | None) -> bool:
    """True if sshd (UsePAM no) would refuse the account as locked."""
    return bool(password_field) and password_field.startswith("!")  # type: ignore[union-attr]


def ensure_local_user(name: str) -> str:
    """Make sure local account NAME exists and is not locked; return its home.

    Why: sshd with ``UsePAM no`` refuses accounts whose password field starts
    with "!" (which is how ``useradd`` leaves new accounts). A missing account
    is created with ``useradd -m -s /bin/bash`` and given the password field
    "*" (no password login possible, but not "locked"). An existing account
    is left alone except that a "!" lock is removed. Root only.

    Creation is serialised across processes (the suite's workers set up their
    accounts at once): ``useradd`` does not lock /etc/passwd in every container,
    and two at once each wrote the file from their own reading of it, so that the
    last one won and the home it did not make stayed owned by a uid no account had.
    """
    check_user_name(name)
    if os.geteuid() != 0:
        raise RuntimeError(f"ensure_local_user({name!r}) needs root")
    with _accounts_lock():
        if not _user_exists(name):
            useradd = find_tool("useradd")
            if useradd is None:
                raise RuntimeError("cannot create users: useradd not found") from None
            run_tool([useradd, "-m", "-s", "/bin/bash", name])
            log.info("created local user %s", name)
        field = shadow_password(name)
        if is_locked(field):
            usermod = find_tool("usermod")
            if usermod is None:
                raise RuntimeError(f"cannot unlock user {name}: usermod not found")
            remainder = (field or "").lstrip("!")
            if remainder and remainder != "*":
                run_tool([usermod, "-U", name])  # restores the original hash
            else:
                run_tool([usermod, "-p", "*", name])
            log.info("unlocked local user %s for key-only ssh logins", name)
        _own_orphaned_home(pwd.getpwnam(name))
    return pwd.getpwnam(name).pw_dir


@contextlib.contextmanager
def _accounts_lock() -> Iterator[None]:
    """An exclusive lock, held across processes, on changing the system's accounts."""
    fd = os.open(os.path.join(tempfile.gettempdir(), "remoteproc-accounts.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _own_orphaned_home(entry: pwd.struct_passwd) -> None:
    """Give an account back a home that a lost ``useradd`` race left to a uid no account has
    (each of the racers made the home with its own uid): sshd refuses a key in a home that
    another uid owns, and nothing of the account's can be written there."""
    try:
        owner = os.stat(entry.pw_dir).st_uid
    except OSError:
        return
    if owner == entry.pw_uid:
        return
    try:
        pwd.getpwuid(owner)
        return                                  # (another account's: not ours to take)
    except KeyError:
        pass
    for root, dirs, files in os.walk(entry.pw_dir):
        for path in [root] + [os.path.join(root, n) for n in dirs + files]:
            if os.lstat(path).st_uid == owner:
                os.lchown(path, entry.pw_uid, entry.pw_gid)
    log.info("gave %s back its home %s (owned by uid %d, which no account has)", entry.pw_name, entry.pw_dir, owner)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def check_sshd_can_log_in(name: str) -> None:
    """RuntimeError, naming the fix, unless sshd (as root, UsePAM=no) can log in account NAME."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"no local user {name!r}; create it with ensure_local_user({name!r})"
        ) from None
    if is_locked(shadow_password(name)):
        raise RuntimeError(
            f"user {name!r} is locked (password field starts with '!') and "
            f"sshd with UsePAM=no refuses it; unlock it with "
            f"ensure_local_user({name!r})"
        )
