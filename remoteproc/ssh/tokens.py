"""``%`` tokens and ``${VAR}`` in ssh_config values, expanded as ``ssh`` does once user, host and port are known."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import socket

from ..errors import ConfigError


def local_user() -> str:
    """The local user name (``%u``, ``Match localuser``, and the default remote user): as ssh has
    it, the account of this process's uid, whatever ``$USER`` or ``$LOGNAME`` say (``su`` to
    root keeps them)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # pragma: no cover - no passwd entry (a container's bare uid)
        return os.environ.get("USER") or str(os.getuid())


def host_tokens(original: str, hostname: str, port: int, user: str, alias: str | None,
                jump: str | None) -> dict[str, str]:
    """The value of every ``%`` token ssh knows once user, host and port are final."""
    local = socket.gethostname()
    jump = jump or ""
    return {
        "%": "%", "h": hostname, "p": str(port), "r": user, "n": original, "u": local_user(),
        "l": local, "L": local.split(".")[0], "d": os.path.expanduser("~"), "i": str(os.getuid()),
        "k": alias or original, "j": jump,
        "C": hashlib.sha1(("%s%s%d%s%s" % (local, hostname, port, user, jump)).encode()).hexdigest(),
    }


def expand(text: str, tokens: dict[str, str], what: str) -> str:
    """``text`` with its ``%`` tokens replaced; ``what`` (the keyword) names it in errors."""

    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in tokens:
            raise ConfigError("%s %r: unknown token %%%s" % (what, text, key))
        return tokens[key]
    if text.endswith("%") and not text.endswith("%%"):
        raise ConfigError("%s %r: a lone %% at the end" % (what, text))
    return re.sub(r"%(.)", one, text)


def expand_env(text: str, what: str) -> str:
    """``text`` with its ``${VAR}`` replaced from the environment (an unset one is an error)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError("%s %r: environment variable %s is not set" % (what, text, name))
        return os.environ[name]
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", one, text)


def expand_path(text: str, tokens: dict[str, str], what: str) -> str:
    """A file name from the config: ``${VAR}``, then ``%`` tokens, then ``~``."""
    return os.path.expanduser(expand(expand_env(text, what), tokens, what))
