"""This machine's process table, for tests whose "remote" host is the loopback sshd."""

from __future__ import annotations

import os
import time


def state(pid: int) -> str | None:
    """The process state letter from /proc (None: no such process)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def gone(pid: int, timeout: float = 15.0) -> bool:
    """True once ``pid`` has no process, or only a zombie about to be reaped (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        if state(pid) in (None, "Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def ppid(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if ppid(int(name)) == pid:
                    out.append(int(name))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out
