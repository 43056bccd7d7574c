"""Key and config files of the test servers: written with exact modes, read back as lines."""

from __future__ import annotations

import os
import shutil
from typing import Any

from .tools import find_tool, run_tool

KEY_COMMENT = "remoteproc-testing"


def quote(value: str) -> str:
    """Quote a config value if it contains whitespace."""
    return f'"{value}"' if any(c.isspace() for c in value) else value


def write_text(path: str, text: str, mode: int) -> None:
    """Write TEXT to PATH and set MODE regardless of the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, mode)


def public_line(pub_path: str) -> str:
    """'TYPE BASE64' from an OpenSSH .pub file (comment dropped)."""
    with open(pub_path, encoding="ascii") as fh:
        fields = fh.read().split()
    if len(fields) < 2:
        raise RuntimeError(f"unreadable public key file {pub_path}")
    return f"{fields[0]} {fields[1]}"


def write_private_key(key: Any, path: str) -> None:
    """Write a paramiko key pair as PATH (mode 0600) and PATH.pub."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        key.write_private_key(fh)
    os.chmod(path, 0o600)
    write_text(
        path + ".pub", f"{key.get_name()} {key.get_base64()} {KEY_COMMENT}\n", 0o644
    )


def generate_keypair(path: str) -> None:
    """ed25519 via ssh-keygen; RSA via paramiko if ssh-keygen is missing."""
    keygen = shutil.which("ssh-keygen") or find_tool("ssh-keygen")
    if keygen:
        run_tool(
            [
                keygen,
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                KEY_COMMENT,
                "-f",
                path,
            ]
        )
        return
    import paramiko

    key = paramiko.RSAKey.generate(2048)
    write_private_key(key, path)
