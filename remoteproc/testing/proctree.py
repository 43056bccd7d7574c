"""Ending the processes a test server started, and everything they started in turn.

A server's sessions outlive the server process unless someone ends them: these helpers
find a process's descendants in /proc (Linux), and stop processes by pid with SIGTERM,
a bounded wait, then SIGKILL.  A process is identified by (pid, start time), so a pid
reused meanwhile is never signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from typing import Any

log = logging.getLogger("remoteproc.testing")

STOP_TIMEOUT = 5.0
"""Seconds to wait for a process to exit after SIGTERM before SIGKILL."""


def proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, starttime) of PID from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[1]), fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def descendants(root: int) -> list[tuple[int, int]]:
    """All descendants of ROOT as (pid, starttime) pairs (Linux /proc only)."""
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = proc_stat(int(entry))
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry), stat[2]))
    found: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def alive(pid: int, starttime: int) -> bool:
    """True if PID still runs the same process (not exited, not a zombie)."""
    stat = proc_stat(pid)
    return stat is not None and stat[2] == starttime and stat[1] not in ("Z", "X")


def signal_all(procs: list[tuple[int, int]], sig: int) -> None:
    """Send SIG to each still-identical process in PROCS."""
    for pid, starttime in procs:
        if alive(pid, starttime):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def terminate_all(procs: list[tuple[int, int]], timeout: float) -> None:
    """SIGTERM PROCS, wait up to TIMEOUT, then SIGKILL whatever is left."""
    if not procs:
        return
    signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(pid, st) for pid, st in procs):
            return
        time.sleep(0.05)
    signal_all(procs, signal.SIGKILL)


def die_with_parent() -> None:
    """In the sshd child before exec: SIGTERM it when its creator dies (Linux), so that
    a killed demo or test run leaves no server behind. Best effort elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux, or no ctypes: stop() still cleans up
        pass


def stop_popen(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a child we started, wait up to TIMEOUT, then SIGKILL and reap."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        log.warning("pid %d ignored SIGTERM for %.1f s; killing it", proc.pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
