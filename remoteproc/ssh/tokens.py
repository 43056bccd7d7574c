"""``%`` tokens and ``${VAR}`` in ssh_config values, expanded as ``ssh`` does once user, host and port are known."""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket

from ..errors import ConfigError


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no passwd entry
        return str(os.getuid())


def _tokens(original: str, hostname: str, port: int, user: str, alias: str | None, jump: str | None) -> dict:
    local = socket.gethostname()
    jump = jump or ""
    return {
        "%": "%", "h": hostname, "p": str(port), "r": user, "n": original, "u": _local_user(),
        "l": local, "L": local.split(".")[0], "d": os.path.expanduser("~"), "i": str(os.getuid()),
        "k": alias or original, "j": jump,
        "C": hashlib.sha1(("%s%s%d%s%s" % (local, hostname, port, user, jump)).encode()).hexdigest(),
    }


def _expand(text: str, tokens: dict, what: str) -> str:
    def one(m: re.Match) -> str:
        key = m.group(1)
        if key not in tokens:
            raise ConfigError("%s %r: unknown token %%%s" % (what, text, key))
        return tokens[key]
    if text.endswith("%") and not text.endswith("%%"):
        raise ConfigError("%s %r: a lone %% at the end" % (what, text))
    return re.sub(r"%(.)", one, text)


def _expand_env(text: str, what: str) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError("%s %r: environment variable %s is not set" % (what, text, name))
        return os.environ[name]
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", one, text)


def _path(text: str, tokens: dict, what: str) -> str:
    return os.path.expanduser(_expand(_expand_env(text, what), tokens, what))
