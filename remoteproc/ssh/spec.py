"""Host specs and keyword options: declared and checked here, in the user's process, so bad input fails at once.

Standard library only (no paramiko): ``RemoteProcess`` imports this module and nothing
else of the ssh package; everything that connects runs in the relay process.

Every keyword option is one line of ``OPTIONS``: its name, the types it takes, its
default, a check of its value, and whether jump hosts inherit it.  A new option is
that line plus its use (``target.resolve`` turns options into a ``Target``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, NamedTuple, Optional

from ..errors import ConfigError

POLICIES = ("reject", "accept-new")
TRANSPORTS = ("paramiko", "openssh")
#: the environment variable that sets a program's default transport
TRANSPORT_ENV = "REMOTEPROC_TRANSPORT"

#: a check of an option's value: what is wrong with it (for the message), or None
Check = Callable[[str, Any, str], Optional[str]]


def _port(name: str, value: Any, spec: str) -> str | None:
    return None if 0 < value < 65536 else "port %r for host %r is out of range 1-65535" % (value, spec)


def _seconds(name: str, value: Any, spec: str) -> str | None:
    return None if value > 0 else "%s for host %r must be a positive number of seconds" % (name, spec)


def _at_least_one(name: str, value: Any, spec: str) -> str | None:
    return None if value >= 1 else "%s for host %r must be at least 1" % (name, spec)


def _bytes(name: str, value: Any, spec: str) -> str | None:
    return None if value >= 0 else "%s for host %r must be a number of bytes (0 turns the package cache off)" % (
        name, spec)


def _words(name: str, value: Any, spec: str) -> str | None:
    if isinstance(value, str) or (value and all(isinstance(v, str) and v for v in value)):
        return None
    return "option %s=%r for host %r must be a str or a non-empty list of non-empty str" % (name, value, spec)


def _interpreters(name: str, value: Any, spec: str) -> str | None:
    """``python=``: as ``_words``, and no blank name (it reached the host as ``exec -c``)."""
    problem = _words(name, value, spec)
    if problem is None and any(not v.strip() for v in ([value] if isinstance(value, str) else value)):
        problem = ("option %s=%r for host %r names no interpreter: give the host's one (python='python3.12', "
                   "a path, or a list of them), or leave it out to search the usual places" % (name, value, spec))
    return problem


def _policy(name: str, value: Any, spec: str) -> str | None:
    return None if value in POLICIES else "%s=%r for host %r: use one of %s" % (name, value, spec, POLICIES)


def _transport(name: str, value: Any, spec: str) -> str | None:
    return None if value in TRANSPORTS else "%s=%r for host %r: use one of %s" % (name, value, spec, TRANSPORTS)


class Option(NamedTuple):
    """One keyword option of ``RemoteProcess`` (and Pool, Executor, the CLI's flags)."""

    name: str
    #: the types a value may have (``None`` always means "not given")
    types: tuple[type, ...]
    #: the value when neither the caller nor the ssh configuration gives one
    default: Any = None
    #: a check of the value's range, after its type
    check: Check | None = None
    #: jump hosts inherit it from the target (the rest comes from their own config)
    inherit: bool = False


_PATHS = (str, os.PathLike, list, tuple)

#: every keyword option, in the order the docs list them
OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("username", (str,)),
    Option("port", (int,), check=_port),
    Option("key_filename", _PATHS, inherit=True),
    Option("password", (str,)),
    Option("passphrase", (str,), inherit=True),
    Option("ssh_config", (str, os.PathLike, bool), inherit=True),
    Option("known_hosts", _PATHS, inherit=True),
    Option("host_key_policy", (str,), check=_policy, inherit=True),
    Option("connect_timeout", (int, float), 30.0, _seconds, inherit=True),
    # None: find one (docs/python-versions.md); shell words; or a list of them, tried in order
    Option("python", (str, list, tuple), None, _interpreters),
    # shell lines run in the login shell before the interpreter starts
    Option("setup", (str, list, tuple), None, _words),
    Option("allow_agent", (bool,), True, inherit=True),
    Option("look_for_keys", (bool,), True, inherit=True),
    Option("proxy_jump", (str,)),
    Option("proxy_command", (str,)),
    Option("keepalive_interval", (int, float), 15.0, _seconds),
    Option("keepalive_count", (int,), 3, _at_least_one),
    Option("idle_timeout", (int, float), 60.0, _seconds),
    Option("cache_size", (int,), check=_bytes),     # the host's package cache (None: its default size)
    Option("transport", (str,), "paramiko", _transport),
    Option("allow_prompt", (bool,), False),
)}

#: keyword options RemoteProcess accepts, and the types each takes
OPTION_TYPES: dict[str, tuple[type, ...]] = {name: o.types for name, o in OPTIONS.items()}
#: options of a target that its jump hosts inherit (the rest comes from their own config)
JUMP_INHERITS = tuple(name for name, o in OPTIONS.items() if o.inherit)

DEFAULT_CONNECT_TIMEOUT: float = OPTIONS["connect_timeout"].default
DEFAULT_KEEPALIVE_INTERVAL: float = OPTIONS["keepalive_interval"].default
DEFAULT_KEEPALIVE_COUNT: int = OPTIONS["keepalive_count"].default
DEFAULT_IDLE_TIMEOUT: float = OPTIONS["idle_timeout"].default


def option(options: dict[str, Any], name: str) -> Any:
    """The caller's value of option ``name``, or its default."""
    value = options.get(name)
    return OPTIONS[name].default if value is None else value


#: the user is everything before the last ``@``, as ssh splits it (``alice@corp.example@build01``: a
#: domain account's name holds one)
_SPEC = re.compile(r"^(?:ssh://)?(?:(?P<user>[^/\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@/\s\[\]]+))"
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
    check_name(m.group("v6") or m.group("host"), "host name", spec)
    if m.group("user"):
        check_name(m.group("user"), "user name", spec)
    port = None
    if m.group("port"):
        port = int(m.group("port"))
        if not 0 < port < 65536:
            raise ConfigError("%r: port %d is out of range 1-65535" % (spec, port), spec)
    return m.group("user"), m.group("v6") or m.group("host"), port


#: characters a host or user name given by the caller may not hold: ssh_config puts names into
#: shell commands (``%h``, ``%r``, ``%n`` in ProxyCommand and ``Match exec``), so, as OpenSSH 9.6+
#: refuses them on its command line, they are refused here (for both transports)
_SHELL_CHARS = frozenset("'`\"$\\;&<>|(){}")


def check_name(name: str, what: str, spec: str) -> None:
    """Refuse a host or user name that a shell would not take literally, or that ``ssh`` would take for
    an option (a leading ``-``).  A ``$`` may end a user name (Windows machine accounts)."""
    body = name[:-1] if what == "user name" and name.endswith("$") else name
    # (a comma too in a host name: ssh refuses it, and it separates jump hosts)
    bad = sorted({c for c in body if c in _SHELL_CHARS or c.isspace() or not c.isprintable()
                  or (c == "," and what == "host name")})
    if name.startswith("-") or bad:
        raise ConfigError("%r: the %s %r %s: such a name would reach a shell (ProxyCommand, Match exec) "
                          "or ssh's options. Fix: use the real name (an alias of ~/.ssh/config may map to it)"
                          % (spec, what, name, "starts with '-'" if name.startswith("-")
                             else "holds %s" % " ".join(repr(c) for c in bad)), spec)


def check_options(spec: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate keyword options in the caller's process: name, type and range; drop the ``None`` ones."""
    for name, value in options.items():
        _check_type(spec, name, value)
    given = {k: v for k, v in options.items() if v is not None}
    if "username" in given:
        check_name(given["username"], "user name", spec)
    if isinstance(given.get("proxy_jump"), str) and given["proxy_jump"].strip().lower() != "none":
        for hop in given["proxy_jump"].split(","):       # (each hop as ssh -J takes it: [user@]host[:port])
            try:
                user, host, _ = parse_spec(hop)
                check_name(host, "host name", hop)
                if user:
                    check_name(user, "user name", hop)
            except ConfigError as exc:
                raise ConfigError("%s: proxy_jump=%r: %s" % (spec, given["proxy_jump"], exc), spec) from None
    if "transport" not in given and os.environ.get(TRANSPORT_ENV):
        given["transport"] = os.environ[TRANSPORT_ENV].strip()
        problem = _transport(TRANSPORT_ENV, given["transport"], spec)
        if problem is not None:
            raise ConfigError(problem, spec)
    for name, value in given.items():
        check = OPTIONS[name].check
        problem = check(name, value, spec) if check is not None else None
        if problem is not None:
            raise ConfigError(problem, spec)
    if given.get("allow_prompt") and given.get("transport") != "openssh":
        raise ConfigError("allow_prompt=True for host %r needs transport='openssh' (paramiko never prompts)"
                          % spec, spec)
    return given


#: keyword arguments of multiprocessing's Pool and Process and of ProcessPoolExecutor that are not
#: options here (they end up among the SSH options): what to write instead
_NO_START_METHOD = ("drop it: remote processes have no start method to choose (the host's agent forks them, "
                    "and runs them in spawn mode by itself on another Python version)")
_MULTIPROCESSING_NAMES = {
    "processes": "Pool(hosts, processes_per_host=N): workers are counted per host (multiprocessing's "
                 "processes= counts those of one machine)",
    "max_workers": "Executor(hosts, processes_per_host=N): workers are counted per host (ProcessPoolExecutor's "
                   "max_workers= counts those of one machine)",
    "mp_context": _NO_START_METHOD,
    "context": _NO_START_METHOD,
    "max_tasks_per_child": "Pool's is maxtasksperchild=, as multiprocessing's",
    "maxtasksperchild": "Executor's is max_tasks_per_child=, as ProcessPoolExecutor's",
}


def _check_type(spec: str, name: str, value: Any) -> None:
    declared = OPTIONS.get(name)
    if declared is None:
        instead = _MULTIPROCESSING_NAMES.get(name)
        raise ConfigError("unknown option %r for host %r; %sthe options are: %s"
                          % (name, spec, "Fix: %s; " % instead if instead else "", ", ".join(sorted(OPTIONS))), spec)
    types = declared.types
    if value is None:
        return
    if isinstance(value, bool) and bool not in types:
        types = ()
    if not isinstance(value, types):
        raise ConfigError("option %s=%r for host %r must be %s" % (
            name, value, spec, " or ".join(t.__name__ for t in declared.types)), spec)


def parse_jumps(text: str | None) -> list[str]:
    """The hops of a ProxyJump value, nearest the caller first; [] for none."""
    if not text or text.strip().lower() == "none":
        return []
    hops = [j.strip() for j in text.split(",") if j.strip()]
    for hop in hops:
        parse_spec(hop)
    return hops

