"""Finding and running the system's admin tools (useradd, ssh-keygen, ...) for the test rig."""

from __future__ import annotations

import os
import shutil
import subprocess


def find_tool(name: str) -> str | None:
    """Find an admin tool even when /usr/sbin is not on PATH."""
    for directory in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def run_tool(argv: list[str], timeout: float = 60.0) -> None:
    """Run an external tool, raising RuntimeError with its output on failure."""
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{argv[0]} failed: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise RuntimeError(
            f"{' '.join(argv)} exited with status {result.returncode}: {output}"
        )
