"""This machine's process table, for tests whose "remote" host is the loopback sshd or a
namespace host (both run here); and the bounded wait the tests poll it with."""

from __future__ import annotations

import os
import time
from typing import Callable

from remoteproc.testing import proctree


def state(pid: int) -> str | None:
    """The process state letter from /proc (None: no such process)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """True while ``pid`` is a process that has not exited (a zombie has)."""
    return state(pid) not in (None, "Z", "X")


def cmdline(pid: int) -> str:
    """The command line of ``pid``, words joined by spaces ("" if there is no such process)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def fd_table(pid: int | str = "self") -> dict[str, str]:
    """What each open fd of ``pid`` points to (``readlink`` of /proc/PID/fd/N); {} if it is gone."""
    out = {}
    try:
        fds = os.listdir("/proc/%s/fd" % pid)
    except OSError:
        return out
    for fd in fds:
        try:
            out[fd] = os.readlink("/proc/%s/fd/%s" % (pid, fd))
        except OSError:
            pass
    return out


def holds_connection_to(pid: int, port: int) -> bool:
    """True while ``pid`` or one of its descendants has a TCP socket open to ``port`` (in any
    state: one whose peer closed stays CLOSE_WAIT until its holder notices and closes it)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add("socket:[%s]" % fields[9])
    return any(target in inodes for holder in [pid, *descendants(pid)] for target in fd_table(holder).values())


def threads(pid: int) -> int:
    """How many threads ``pid`` runs."""
    return len(os.listdir("/proc/%d/task" % pid))


def eventually(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> bool:
    """True as soon as ``predicate()`` is true; False if it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def gone(pid: int, timeout: float = 15.0) -> bool:
    """True once ``pid`` has no process, or only a zombie about to be reaped (bounded wait)."""
    return eventually(lambda: not running(pid), timeout)


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


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid``."""
    return [child for child, _start in proctree.descendants(pid)]


def live_members(pgid: int | None = None, sid: int | None = None) -> list[int]:
    """The live (not zombie) processes of process group ``pgid`` or of session ``sid`` on this machine."""
    field, value = (2, pgid) if pgid is not None else (3, sid)
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[field] == str(value) and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out
