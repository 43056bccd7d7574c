"""The OpenSSH server binary: where it is, what it supports, how it says it is ready."""

from __future__ import annotations

import contextlib
import os
import shutil

READY_TIMEOUT = 10.0
"""Seconds to wait for a freshly started sshd to accept connections."""
BIND_ATTEMPTS = 5
"""How many ports to try when sshd fails to bind the one we picked."""
PRIVSEP_DIR = "/run/sshd"


class PortInUse(Exception):
    """sshd could not bind the port we chose (someone took it meanwhile)."""


def find_sshd() -> str | None:
    """Absolute path of the OpenSSH server binary, or None if there is none.

    sshd re-executes itself per connection and refuses to run unless started
    by an absolute path, so the result is always absolute.
    """
    candidates = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
    found = shutil.which("sshd")
    if found:
        candidates.append(os.path.abspath(found))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def sshd_supports(sshd: str, keyword: str) -> bool:
    """True if the sshd binary knows config KEYWORD (used for version-specific options)."""
    try:
        with open(sshd, "rb") as fh:
            return keyword.lower().encode() in fh.read().lower()
    except OSError:
        return False


def pidfile_is(path: str, pid: int) -> bool:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip() == str(pid)
    except (OSError, UnicodeDecodeError):
        return False


def truncate(path: str) -> None:
    with contextlib.suppress(OSError):
        open(path, "wb").close()
