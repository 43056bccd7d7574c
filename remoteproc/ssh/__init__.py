"""SSH as the user has it: host specs, ~/.ssh/config, keys, known_hosts, jump hosts.

One module per step of reaching a host, as paramiko splits it:

- ``spec``: host specs and keyword options, checked in the user's process (no paramiko);
- ``config``: the ssh_config evaluator (``Host``, ``Match``, ``Include``);
- ``tokens``: ``%`` tokens and ``${VAR}`` in config values;
- ``target``: ``resolve`` makes spec + options + config into a ``Target`` (jump chain included);
- ``hostkeys``: known_hosts read, checked and recorded; fingerprints;
- ``auth``: ssh-agent, identity files, password, in ``ssh``'s order;
- ``connect``: TCP, ProxyCommand, jump channels, the paramiko Transport, ``SSHConnection``;
- ``pool``: ``ConnectionPool``, shared reference-counted connections (the relay owns one).

The names below are imported on first use (PEP 562): the user's process needs only
``spec``, and importing this package does not load the rest.  ``connect`` is the
module; the function that opens a connection is ``remoteproc.ssh.connect.connect``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import authenticate
    from .config import Config, load_config, match_pattern, match_pattern_list
    from .connect import MAX_PACKET, PREFERRED_CIPHERS, WINDOW_SIZE, SSHConnection
    from .hostkeys import KnownHost, check_host_key, fingerprint, read_known_hosts, record_host_key
    from .pool import ConnectionPool
    from .spec import (
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_IDLE_TIMEOUT,
        DEFAULT_KEEPALIVE_COUNT,
        DEFAULT_KEEPALIVE_INTERVAL,
        JUMP_INHERITS,
        OPTION_TYPES,
        POLICIES,
        check_options,
        parse_jumps,
        parse_spec,
    )
    from .target import DEFAULT_IDENTITIES, MAX_JUMPS, SYSTEM_KNOWN_HOSTS, USER_KNOWN_HOSTS, Target, resolve

_LAZY = {
    "authenticate": ".auth",
    "Config": ".config", "load_config": ".config", "match_pattern": ".config", "match_pattern_list": ".config",
    "MAX_PACKET": ".connect", "PREFERRED_CIPHERS": ".connect", "WINDOW_SIZE": ".connect",
    "SSHConnection": ".connect",
    "KnownHost": ".hostkeys", "check_host_key": ".hostkeys", "fingerprint": ".hostkeys",
    "read_known_hosts": ".hostkeys", "record_host_key": ".hostkeys",
    "ConnectionPool": ".pool",
    "DEFAULT_CONNECT_TIMEOUT": ".spec", "DEFAULT_IDLE_TIMEOUT": ".spec", "DEFAULT_KEEPALIVE_COUNT": ".spec",
    "DEFAULT_KEEPALIVE_INTERVAL": ".spec", "JUMP_INHERITS": ".spec", "OPTION_TYPES": ".spec", "POLICIES": ".spec",
    "check_options": ".spec", "parse_jumps": ".spec", "parse_spec": ".spec",
    "DEFAULT_IDENTITIES": ".target", "MAX_JUMPS": ".target", "SYSTEM_KNOWN_HOSTS": ".target",
    "USER_KNOWN_HOSTS": ".target", "Target": ".target", "resolve": ".target",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'remoteproc.ssh' has no attribute %r" % name)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Config",
    "ConnectionPool",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDENTITIES",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_KEEPALIVE_COUNT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "JUMP_INHERITS",
    "KnownHost",
    "MAX_JUMPS",
    "MAX_PACKET",
    "OPTION_TYPES",
    "POLICIES",
    "PREFERRED_CIPHERS",
    "SSHConnection",
    "SYSTEM_KNOWN_HOSTS",
    "Target",
    "USER_KNOWN_HOSTS",
    "WINDOW_SIZE",
    "authenticate",
    "check_host_key",
    "check_options",
    "fingerprint",
    "load_config",
    "match_pattern",
    "match_pattern_list",
    "parse_jumps",
    "parse_spec",
    "read_known_hosts",
    "record_host_key",
    "resolve",
]
