"""Local accounts for the test servers: who we are, and accounts sshd will log in."""

from __future__ import annotations

import logging
import os
import pwd
import re

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
    """
    check_user_name(name)
    if os.geteuid() != 0:
        raise RuntimeError(f"ensure_local_user({name!r}) needs root")
    try:
        pwd.getpwnam(name)
    except KeyError:
        useradd = find_tool("useradd")
        if useradd is None:
            raise RuntimeError("cannot create users: useradd not found") from None
        try:
            run_tool([useradd, "-m", "-s", "/bin/bash", name])
        except RuntimeError:
            if not _user_exists(name):  # else: lost a race with another creator
                raise
        else:
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
    return pwd.getpwnam(name).pw_dir


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
