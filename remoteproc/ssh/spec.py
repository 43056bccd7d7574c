"""Host specs and keyword options: checked in the user's process, so bad input fails at once.

Standard library only (no paramiko): ``RemoteProcess`` imports this module and nothing
else of the ssh package; everything that connects runs in the relay process.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import ConfigError

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_INTERVAL = 15.0
DEFAULT_KEEPALIVE_COUNT = 3
DEFAULT_IDLE_TIMEOUT = 60.0
POLICIES = ("reject", "accept-new")

#: keyword options RemoteProcess accepts, and the types each takes
OPTION_TYPES: dict[str, tuple] = {
    "username": (str,),
    "port": (int,),
    "key_filename": (str, os.PathLike, list, tuple),
    "password": (str,),
    "passphrase": (str,),
    "ssh_config": (str, os.PathLike, bool),
    "known_hosts": (str, os.PathLike, list, tuple),
    "host_key_policy": (str,),
    "connect_timeout": (int, float),
    "python": (str,),
    "allow_agent": (bool,),
    "look_for_keys": (bool,),
    "proxy_jump": (str,),
    "proxy_command": (str,),
    "keepalive_interval": (int, float),
    "keepalive_count": (int,),
    "idle_timeout": (int, float),
}

#: options of a target that its jump hosts inherit (the rest comes from their own config)
JUMP_INHERITS = ("ssh_config", "known_hosts", "host_key_policy", "connect_timeout", "allow_agent",
                 "look_for_keys", "key_filename", "passphrase")

_SPEC = re.compile(r"^(?:ssh://)?(?:(?P<user>[^@/\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@/\s\[\]]+))"
                   r"(?::(?P<port>\d+))?/?$")


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """Split ``[user@]host[:port]`` (``[v6addr]`` in brackets, or an ``ssh://`` URI) into its parts."""
    if not isinstance(spec, str):
        raise ConfigError("host must be a string such as 'user@host' or 'host:2222', not %s"
                          % type(spec).__name__)
    text = spec.strip()
    m = _SPEC.match(text)
    if not m or (text.endswith("/") and not text.startswith("ssh://")):
        raise ConfigError("%r is not a host: write 'host', 'user@host' or 'user@host:port'"
                          % (spec,), spec)
    port = None
    if m.group("port"):
        port = int(m.group("port"))
        if not 0 < port < 65536:
            raise ConfigError("%r: port %d is out of range 1-65535" % (spec, port), spec)
    return m.group("user"), m.group("v6") or m.group("host"), port


def check_options(spec: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate keyword options in the caller's process: name, type and range."""
    for name, value in options.items():
        types = OPTION_TYPES.get(name)
        if types is None:
            raise ConfigError("unknown option %r for host %r; the options are: %s"
                              % (name, spec, ", ".join(sorted(OPTION_TYPES))), spec)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in types:
            types = ()
        if not isinstance(value, types):
            raise ConfigError("option %s=%r for host %r must be %s" % (
                name, value, spec, " or ".join(t.__name__ for t in types)), spec)
    if options.get("port") is not None and not 0 < options["port"] < 65536:
        raise ConfigError("port %r for host %r is out of range 1-65535" % (options["port"], spec), spec)
    for name in ("connect_timeout", "keepalive_interval", "idle_timeout"):
        if options.get(name) is not None and not options[name] > 0:
            raise ConfigError("%s for host %r must be a positive number of seconds" % (name, spec), spec)
    if options.get("keepalive_count") is not None and options["keepalive_count"] < 1:
        raise ConfigError("keepalive_count for host %r must be at least 1" % (spec,), spec)
    policy = options.get("host_key_policy")
    if policy is not None and policy not in POLICIES:
        raise ConfigError("host_key_policy=%r for host %r: use one of %s" % (policy, spec, POLICIES), spec)
    return {k: v for k, v in options.items() if v is not None}




def parse_jumps(text: str | None) -> list[str]:
    """The hops of a ProxyJump value, nearest the caller first; [] for none."""
    if not text or text.strip().lower() == "none":
        return []
    hops = [j.strip() for j in text.split(",") if j.strip()]
    for hop in hops:
        parse_spec(hop)
    return hops

