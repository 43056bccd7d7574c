"""SSH as the user has it: host specs, ~/.ssh/config, keys, known_hosts, jump hosts.

``parse_spec`` and ``check_options`` are pure and run in the caller's process so
that bad input fails at once; everything that needs paramiko runs in the relay
process, which owns the SSH connections (see ``relay.py``).

The ssh_config evaluation follows OpenSSH's ``readconf.c`` rather than paramiko's
``SSHConfig``: options given by the caller (the spec's user and port, keyword
options) are set before the files are read, the first value obtained for each
keyword wins, ``Include`` is followed where it stands (inside a ``Host`` or
``Match`` block it is conditional), and ``%`` tokens are expanded once the
final user, host and port are known.  See ``docs/ssh.md`` for what is honoured.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import getpass
import glob
import hashlib
import hmac
import logging
import os
import re
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import AuthenticationError, ConfigError, ConnectError, HostKeyError, describe

log = logging.getLogger("remoteproc.ssh")

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_INTERVAL = 15.0
DEFAULT_KEEPALIVE_COUNT = 3
DEFAULT_IDLE_TIMEOUT = 60.0
WINDOW_SIZE = 8 << 20
MAX_PACKET = 128 << 10
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
POLICIES = ("reject", "accept-new")
MAX_JUMPS = 8
MAX_INCLUDE_DEPTH = 16
MATCH_EXEC_TIMEOUT = 30.0
#: the key files ``ssh`` tries when no IdentityFile is given (OpenSSH 9.x order)
DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa")
SYSTEM_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")

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


# -- ~/.ssh/config ------------------------------------------------------------------

#: keywords whose every occurrence adds a value (the others: the first value wins)
_MULTI = frozenset({"identityfile", "certificatefile", "localforward", "remoteforward", "dynamicforward",
                    "sendenv"})
#: keywords whose argument is the rest of the line, unsplit
_RAW = frozenset({"proxycommand", "localcommand", "remotecommand", "knownhostscommand"})
_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(.*?)\s*$")


@dataclass
class _Line:
    keyword: str
    args: list
    raw: str
    where: str


@dataclass
class _Include:
    patterns: list
    where: str


class Config:
    """ssh configuration files, read once, evaluated per host as OpenSSH does."""

    def __init__(self, files: list[tuple[str, str]]) -> None:
        self.files = files      # (path, "user" or "system"), in the order ssh reads them
        self._parsed: dict[str, list] = {}
        self._warned: set[str] = set()

    @classmethod
    def from_text(cls, text: str, name: str = "<text>") -> "Config":
        config = cls([(name, "user")])
        config._parsed[name] = _parse(text, name)
        return config

    def _entries(self, path: str) -> list:
        if path not in self._parsed:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                text = ""
            except OSError as exc:
                raise ConfigError("cannot read ssh config file %s: %s" % (path, exc.strerror or exc)) from None
            self._parsed[path] = _parse(text, path)
        return self._parsed[path]

    def lookup(self, host: str, preset: dict[str, Any] | None = None) -> dict[str, Any]:
        """The options for ``host`` (as given), with ``preset`` values obtained first.

        Returns lower-case keywords; multi-valued keywords map to lists, others to
        their first value (a list of words, or the raw text for commands).
        """
        state = _State(self, host, dict(preset or {}))
        for path, kind in self.files:
            state.read(path, kind, active=True, depth=0, never_match=False)
        if state.want_final:
            state.final = True
            for path, kind in self.files:
                state.read(path, kind, active=True, depth=0, never_match=False)
        return state.options

    def warn_once(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            log.warning("%s", text)


def _parse(text: str, name: str) -> list:
    entries: list = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = "%s line %d" % (name, number)
        m = _LINE.match(line)
        if not m:
            raise ConfigError("%s: cannot parse %r" % (where, stripped))
        keyword, rest = m.group(1).lower(), m.group(2)
        if keyword in _RAW:
            entries.append(_Line(keyword, [rest], rest, where))
            continue
        try:
            args = shlex.split(rest, comments=True)
        except ValueError as exc:
            raise ConfigError("%s: %s in %r" % (where, exc, stripped)) from None
        if not args:
            raise ConfigError("%s: %s needs a value" % (where, m.group(1)))
        if keyword == "include":
            entries.append(_Include(args, where))
        else:
            entries.append(_Line(keyword, args, rest, where))
    return entries


def _pattern_re(pattern: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                      re.DOTALL)


def match_pattern(text: str, pattern: str, fold: bool = False) -> bool:
    """OpenSSH's pattern match: ``*`` and ``?`` are the only wildcards."""
    if fold:
        text, pattern = text.lower(), pattern.lower()
    return _pattern_re(pattern).fullmatch(text) is not None


def match_pattern_list(text: str, patterns: list[str], fold: bool = False) -> bool:
    """True if a pattern matches and no negated (``!``) pattern does."""
    found = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if match_pattern(text, pattern[1:], fold):
                return False
        elif match_pattern(text, pattern, fold):
            found = True
    return found


class _State:
    """One evaluation of the configuration files for one host."""

    def __init__(self, config: Config, host: str, options: dict[str, Any]) -> None:
        self.config = config
        self.host = host
        self.options = options
        self.final = False
        self.want_final = False

    def read(self, path: str, kind: str, active: bool, depth: int, never_match: bool) -> None:
        for entry in self.config._entries(path):
            if isinstance(entry, _Include):
                self.include(entry, kind, active, depth)
            elif entry.keyword == "host":
                active = not never_match and match_pattern_list(self.host, entry.args)
            elif entry.keyword == "match":
                active = not never_match and self.match(entry)
            elif active:
                self.set(entry)

    def include(self, entry: _Include, kind: str, active: bool, depth: int) -> None:
        if depth + 1 > MAX_INCLUDE_DEPTH:
            raise ConfigError("%s: Include nested more than %d deep" % (entry.where, MAX_INCLUDE_DEPTH))
        base = os.path.expanduser("~/.ssh") if kind == "user" else "/etc/ssh"
        for pattern in entry.patterns:
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = os.path.join(base, pattern)
            for path in sorted(glob.glob(pattern)):
                if os.path.isfile(path):
                    # Host and Match lines inside the file change its own state only;
                    # inside an inactive block nothing in it ever matches.
                    self.read(path, kind, active, depth + 1, never_match=not active)

    def set(self, entry: _Line) -> None:
        key = entry.keyword
        if key in _MULTI:
            self.options.setdefault(key, []).extend([entry.args[0]] if key == "identityfile" else entry.args)
        elif key in ("proxyjump", "proxycommand"):
            # whichever of the two comes first is used
            if "proxyjump" not in self.options and "proxycommand" not in self.options:
                self.options[key] = entry.raw if key in _RAW else entry.args[0]
        elif key not in self.options:
            self.options[key] = entry.raw if key in _RAW else list(entry.args)

    def match(self, entry: _Line) -> bool:
        args = list(entry.args)
        result = True
        i = 0
        while i < len(args):
            word = args[i]
            negate = word.startswith("!")
            criterion = word[1:].lower() if negate else word.lower()
            i += 1
            if criterion == "all":
                this = True
            elif criterion in ("canonical", "final"):
                if criterion == "final" and not negate:
                    self.want_final = True
                this = self.final
            elif criterion in ("host", "originalhost", "user", "localuser", "exec", "localnetwork",
                               "tagged", "version", "sessiontype", "command"):
                if i >= len(args):
                    raise ConfigError("%s: Match %s needs an argument" % (entry.where, criterion))
                arg = args[i]
                i += 1
                if criterion == "exec" and not result:
                    continue        # OpenSSH runs no command once an earlier criterion failed
                this = self.criterion(criterion, arg, entry.where)
            else:
                raise ConfigError("%s: unsupported Match criterion %r" % (entry.where, word))
            if this == negate:
                result = False
        return result

    def criterion(self, criterion: str, arg: str, where: str) -> bool:
        patterns = arg.split(",")
        if criterion == "host":
            hostname = self.options.get("hostname")
            host = _expand(hostname[0], {"h": self.host}, "HostName") if hostname else self.host
            return match_pattern_list(host, patterns, fold=True)
        if criterion == "originalhost":
            return match_pattern_list(self.host, patterns, fold=True)
        if criterion == "user":
            user = self.options.get("user")
            return match_pattern_list(user[0] if user else _local_user(), patterns)
        if criterion == "localuser":
            return match_pattern_list(_local_user(), patterns)
        if criterion == "exec":
            return self.run_exec(arg, where)
        self.config.warn_once("%s: Match %s is not supported by remoteproc; the block is skipped"
                              % (where, criterion))
        return False

    def run_exec(self, command: str, where: str) -> bool:
        user = self.options.get("user")
        port = self.options.get("port")
        hostname = self.options.get("hostname")
        host = _expand(hostname[0], {"h": self.host}, "HostName") if hostname else self.host
        tokens = _tokens(self.host, host, int(port[0]) if port else 22,
                         user[0] if user else _local_user(), None, None)
        command = _expand(command, tokens, "Match exec")
        shell = os.environ.get("SHELL") or "/bin/sh"
        try:
            done = subprocess.run([shell, "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  timeout=MATCH_EXEC_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ConfigError("%s: Match exec %r did not finish within %gs" % (where, command, MATCH_EXEC_TIMEOUT))
        except OSError as exc:
            raise ConfigError("%s: Match exec %r: %s" % (where, command, exc)) from None
        return done.returncode == 0


def load_config(ssh_config: Any = None) -> Config:
    """The user's ssh configuration, or the given file (``ssh -F``), or none (``False``)."""
    if ssh_config is False:
        return Config([])
    if ssh_config not in (None, True):
        path = os.path.expanduser(os.fspath(ssh_config))
        if str(ssh_config).lower() == "none":
            return Config([])
        if not os.path.isfile(path):
            raise ConfigError("ssh_config file %s does not exist" % path)
        return Config([(path, "user")])
    return Config([(os.path.expanduser("~/.ssh/config"), "user"), ("/etc/ssh/ssh_config", "system")])


# -- tokens ------------------------------------------------------------------------

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


# -- the resolved target ------------------------------------------------------

@dataclass
class Target:
    """Everything needed to reach one host, after config and options are applied."""

    spec: str
    hostname: str
    port: int
    username: str
    key_filenames: list[str] = field(default_factory=list)
    identities_only: bool = False
    password: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    known_hosts: list[str] = field(default_factory=list)
    policy: str = "reject"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    proxy_jump: list[str] = field(default_factory=list)
    proxy_command: str | None = None
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_count: int = DEFAULT_KEEPALIVE_COUNT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    python: str = "python3"
    allow_agent: bool = True
    look_for_keys: bool = True
    options: dict = field(default_factory=dict, repr=False)
    #: the host as given (``%n``), before HostName
    original_host: str = ""
    #: the resolved last jump host (itself reached through its own ``jump``), if any
    jump: "Target | None" = None
    global_known_hosts: list[str] = field(default_factory=lambda: list(SYSTEM_KNOWN_HOSTS))
    host_key_alias: str | None = None
    hash_known_hosts: bool = False
    #: None: $SSH_AUTH_SOCK; "": no agent; else the agent socket's path
    identity_agent: str | None = None
    address_family: str = "any"
    #: the key files passed as ``key_filename`` (the first of ``key_filenames``), offered first
    explicit_keys: list[str] = field(default_factory=list)

    @property
    def display(self) -> str:
        host = "[%s]" % self.hostname if ":" in self.hostname else self.hostname
        text = "%s@%s" % (self.username, host)
        if self.port != 22:
            text += ":%d" % self.port
        if self.proxy_jump:
            text += " via " + ",".join(self.proxy_jump)
        elif self.proxy_command:
            text += " via ProxyCommand"
        return text

    @property
    def conn_key(self) -> tuple:
        """Targets with this key share one SSH connection.

        (user, host, port, route), and the settings that decide whom we trust and who
        we are: a process asking for other credentials or other known_hosts files never
        rides on a connection that was verified and authenticated with different ones.
        """
        route = self.jump.conn_key if self.jump is not None else self.proxy_command
        secret = hashlib.sha256(self.password.encode()).hexdigest() if self.password is not None else None
        trust = (tuple(self.key_filenames), self.identities_only, self.allow_agent, self.identity_agent, secret,
                 tuple(self.known_hosts), tuple(self.global_known_hosts), self.host_key_alias, self.policy)
        return (self.username, self.hostname, self.port, route, trust)

    @property
    def key(self) -> tuple:
        """Processes whose targets share this key share one remote agent (and its connection)."""
        return self.conn_key + (self.python,)

    @property
    def host_key_name(self) -> str:
        """The name under which known_hosts holds this host's key."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else "[%s]:%d" % (self.hostname, self.port)


def _yes(value: Any) -> bool:
    return str(value).lower() in ("yes", "true", "on", "1")


def _first(cfg: dict, key: str, default: Any = None) -> Any:
    value = cfg.get(key)
    if value is None:
        return default
    return value[0] if isinstance(value, list) else value


def _number(cfg: dict, key: str, kind=float) -> Any:
    value = _first(cfg, key)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ConfigError("ssh_config: %s %r is not a number" % (key, value)) from None


def parse_jumps(text: str | None) -> list[str]:
    """The hops of a ProxyJump value, nearest the caller first; [] for none."""
    if not text or text.strip().lower() == "none":
        return []
    hops = [j.strip() for j in text.split(",") if j.strip()]
    for hop in hops:
        parse_spec(hop)
    return hops


def resolve(spec: str, options: dict[str, Any], config: Config | None = None, _depth: int = 0) -> Target:
    """Apply the keyword options and the ssh configuration to a host spec, as ``ssh`` does."""
    user, host, port = parse_spec(spec)
    if config is None:
        config = load_config(options.get("ssh_config"))
    # What the caller gave counts as obtained first (ssh's command line): the config cannot override it.
    preset: dict[str, Any] = {}
    if options.get("username") or user:
        preset["user"] = [options.get("username") or user]
    if options.get("port") or port:
        preset["port"] = [str(options.get("port") or port)]
    if options.get("proxy_jump") is not None:
        preset["proxyjump"] = options["proxy_jump"]
    elif options.get("proxy_command") is not None:
        preset["proxycommand"] = options["proxy_command"]
    cfg = config.lookup(host, preset)

    hostname = _expand(_first(cfg, "hostname", "%h"), {"%": "%", "h": host}, "HostName")
    port = _number(cfg, "port", int) or 22
    if not 0 < port < 65536:
        raise ConfigError("%s: port %d is out of range 1-65535" % (spec, port), spec)
    username = _first(cfg, "user") or _local_user()
    alias = _first(cfg, "hostkeyalias")
    jump_text = cfg.get("proxyjump")
    tokens = _tokens(host, hostname, port, username, alias, jump_text)

    keys = options.get("key_filename")
    keys = [] if keys is None else [keys] if isinstance(keys, (str, os.PathLike)) else list(keys)
    keys = [os.path.expanduser(os.fspath(k)) for k in keys]
    explicit = list(keys)
    keys += [_path(k, tokens, "IdentityFile") for k in cfg.get("identityfile", []) if k.lower() != "none"]
    look_for_keys = options.get("look_for_keys", True)
    if not keys and look_for_keys and "none" not in [k.lower() for k in cfg.get("identityfile", [])]:
        keys = [os.path.expanduser("~/.ssh/" + name) for name in DEFAULT_IDENTITIES]

    known = options.get("known_hosts")
    if known is not None:
        known = [known] if isinstance(known, (str, os.PathLike)) else list(known)
        known = [os.path.expanduser(os.fspath(k)) for k in known]
    else:
        known = [_path(k, tokens, "UserKnownHostsFile") for k in cfg.get("userknownhostsfile", USER_KNOWN_HOSTS)]
    known = [k for k in known if k.lower() != "none"]
    global_known = [_path(k, tokens, "GlobalKnownHostsFile")
                    for k in cfg.get("globalknownhostsfile", SYSTEM_KNOWN_HOSTS)]
    global_known = [k for k in global_known if k.lower() != "none"]

    policy = options.get("host_key_policy")
    if policy is None:
        strict = str(_first(cfg, "stricthostkeychecking", "ask")).lower()
        policy = "accept-new" if strict in ("accept-new", "no", "off", "false") else "reject"

    agent = _first(cfg, "identityagent")
    if agent is not None:
        if agent.lower() == "none":
            agent = ""
        elif agent == "SSH_AUTH_SOCK":
            agent = None
        elif agent.startswith("$") and not agent.startswith("${"):
            agent = os.environ.get(agent[1:], "")
        else:
            agent = _path(agent, tokens, "IdentityAgent")

    jumps = parse_jumps(_expand(jump_text, tokens, "ProxyJump") if isinstance(jump_text, str) else None)
    jump = None
    if jumps:
        if _depth >= MAX_JUMPS:
            raise ConfigError("%s: ProxyJump goes through more than %d hosts; is there a loop in %s?"
                              % (spec, MAX_JUMPS, ", ".join(jumps)), spec)
        jump_options = {k: options[k] for k in JUMP_INHERITS if k in options}
        # like ``ssh -J a,b`` runs ``ssh -J a -W host:port b``: b reached through a, a through its own config
        if len(jumps) > 1:      # already expanded: keep a literal % literal in the hop's own expansion
            jump_options["proxy_jump"] = ",".join(jumps[:-1]).replace("%", "%%")
        jump = resolve(jumps[-1], jump_options, config, _depth + 1)
    proxy_command = cfg.get("proxycommand") if not jumps else None
    if proxy_command is not None:
        proxy_command = None if proxy_command.strip().lower() == "none" else _expand(
            proxy_command, tokens, "ProxyCommand")

    interval = options.get("keepalive_interval") or _number(cfg, "serveraliveinterval") or DEFAULT_KEEPALIVE_INTERVAL
    count = options.get("keepalive_count") or _number(cfg, "serveralivecountmax", int) or DEFAULT_KEEPALIVE_COUNT
    timeout = options.get("connect_timeout") or _number(cfg, "connecttimeout") or DEFAULT_CONNECT_TIMEOUT
    family = str(_first(cfg, "addressfamily", "any")).lower()
    return Target(
        spec=spec, hostname=hostname, port=port, username=username, key_filenames=keys,
        identities_only=_yes(_first(cfg, "identitiesonly", "no")),
        password=options.get("password"), passphrase=options.get("passphrase"),
        known_hosts=known, policy=policy, connect_timeout=float(timeout),
        proxy_jump=jumps, proxy_command=proxy_command,
        keepalive_interval=float(interval), keepalive_count=max(1, int(count)),
        idle_timeout=float(options.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)),
        python=options.get("python", "python3"),
        allow_agent=options.get("allow_agent", True), look_for_keys=look_for_keys,
        options=options, original_host=host, jump=jump, global_known_hosts=global_known,
        host_key_alias=alias, hash_known_hosts=_yes(_first(cfg, "hashknownhosts", "no")),
        identity_agent=agent, address_family=family if family in ("inet", "inet6") else "any",
        explicit_keys=explicit,
    )


# -- host keys --------------------------------------------------------------------

def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass
class KnownHost:
    """One line of a known_hosts file."""

    marker: str | None
    hosts: str
    keytype: str
    blob: bytes
    where: str

    def matches(self, name: str) -> bool:
        if self.hosts.startswith("|1|"):
            try:
                _, _, salt, digest = self.hosts.split("|", 3)
                salt, digest = base64.b64decode(salt), base64.b64decode(digest)
            except (ValueError, binascii.Error):
                return False
            return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
        return match_pattern_list(name, self.hosts.split(","), fold=True)


def read_known_hosts(paths: list[str]) -> list[KnownHost]:
    """Every usable line of the given known_hosts files (missing files are skipped)."""
    out = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except OSError as exc:
            log.warning("ignoring unreadable known_hosts file %s: %s", path, exc.strerror or exc)
            continue
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = fields.pop(0) if fields[0].startswith("@") else None
            if len(fields) < 3:
                continue
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except (ValueError, binascii.Error):
                continue
            out.append(KnownHost(marker, fields[0], fields[1], blob, "%s:%d" % (path, number)))
    return out


#: host key algorithms negotiated for each known_hosts key type
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def _prefer_known_types(transport, entries: list[KnownHost]) -> None:
    """As ssh does: offer the key types already known for this host first."""
    opts = transport.get_security_options()
    available = [k for k in opts.key_types if "-cert-" not in k]
    known: list[str] = []
    for e in entries:
        if e.marker is None:
            for alg in _ALGORITHMS.get(e.keytype, (e.keytype,)):
                if alg in available and alg not in known:
                    known.append(alg)
    if known:
        opts.key_types = tuple(known + [k for k in available if k not in known])


_record_lock = threading.Lock()


def record_host_key(path: str, name: str, key, hashed: bool) -> None:
    """Append ``name keytype base64`` to a known_hosts file, as ssh does for a new host."""
    if hashed:
        salt = os.urandom(20)
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        name = "|1|%s|%s" % (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    line = "%s %s %s\n" % (name, key.get_name(), key.get_base64())
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    with _record_lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            size = f.seek(0, os.SEEK_END)
            if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
                line = "\n" + line
            f.write(line.encode())


def check_host_key(target: Target, key) -> None:
    """Accept a known key; refuse a changed or revoked one; unknown: refuse or record (accept-new)."""
    name = target.host_key_name
    files = list(target.known_hosts) + list(target.global_known_hosts)
    entries = [e for e in read_known_hosts(files) if e.matches(name)]
    blob = key.asbytes()
    kind = key.get_name()
    for e in entries:
        if e.marker == "@revoked" and e.blob == blob:
            raise HostKeyError(
                "%s: the host key %s %s is marked @revoked in %s; it is always refused. Ask the host's "
                "administrator for its current key." % (target.display, kind, fingerprint(key), e.where),
                target.display)
    plain = [e for e in entries if e.marker is None]
    if any(e.blob == blob for e in plain):
        return
    same = [e for e in plain if e.keytype == kind]
    if same:
        raise HostKeyError(
            "%s: the host key has CHANGED: the host sent %s %s, but %s holds another %s key for %s. "
            "This may be an attack (or the host was reinstalled); it is always refused. If the change is "
            "expected, remove the old entry with `ssh-keygen -R '%s'%s` and connect again." % (
                target.display, kind, fingerprint(key), same[0].where, kind, name, name,
                "" if same[0].where.startswith(os.path.expanduser("~/.ssh/known_hosts:"))
                else " -f %s" % same[0].where.rsplit(":", 1)[0]),
            target.display)
    if target.policy == "accept-new":
        if not target.known_hosts:
            log.warning("%s: accepted the %s host key %s for this connection only: there is no user "
                        "known_hosts file to record it in", target.display, kind, fingerprint(key))
        else:
            path = target.known_hosts[0]
            try:
                record_host_key(path, name, key, target.hash_known_hosts)
            except OSError as exc:
                log.warning("%s: could not record the host key in %s: %s", target.display, path, exc)
            else:
                log.warning("%s: permanently added the %s host key %s for %s to %s (host_key_policy="
                            "'accept-new')", target.display, kind, fingerprint(key), name, path)
        return
    checked = ", ".join(f for f in files if os.path.exists(f)) or "no known_hosts file exists"
    login = "%s@%s" % (target.username, target.original_host)
    if target.jump is not None or target.proxy_command:
        how = "connect once with `ssh %s%s%s` and answer yes" % (
            "-J %s " % ",".join(target.proxy_jump) if target.proxy_jump else "",
            "-p %d " % target.port if target.port != 22 else "", login)
    else:
        how = "connect once with `ssh %s%s` and answer yes, or run `ssh-keyscan %s-t %s %s >> %s`" % (
            "-p %d " % target.port if target.port != 22 else "", login,
            "-p %d " % target.port if target.port != 22 else "", kind.replace("ssh-", "").split("-")[0],
            target.hostname, target.known_hosts[0] if target.known_hosts else "~/.ssh/known_hosts")
    raise HostKeyError(
        "%s: the host key is unknown (%s %s; checked %s). Check that fingerprint with the host's "
        "administrator, then trust it: %s; or pass host_key_policy='accept-new' to record it on first "
        "use." % (target.display, kind, fingerprint(key), checked, how), target.display)


# -- authentication -----------------------------------------------------------------

def _agent(target: Target):
    """The ssh-agent to use (a paramiko AgentSSH), or None."""
    import paramiko
    from paramiko.agent import AgentSSH

    if not target.allow_agent or target.identity_agent == "":
        return None
    path = target.identity_agent or os.environ.get("SSH_AUTH_SOCK")
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(target.connect_timeout)
        sock.connect(path)
        agent = AgentSSH()
        agent._connect(sock)
    except (OSError, paramiko.SSHException) as exc:
        sock.close()
        log.debug("%s: no usable ssh-agent at %s: %s", target.display, path, exc)
        return None
    return agent


def _public_blob(path: str) -> bytes | None:
    """The public key of an identity file: ``path.pub``, or ``path`` itself if it is a public key."""
    for candidate in (path + ".pub", path):
        try:
            with open(candidate, encoding="ascii", errors="replace") as f:
                fields = f.read(16384).split()
            if len(fields) >= 2 and fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
                return base64.b64decode(fields[1], validate=True)
        except (OSError, ValueError, binascii.Error):
            pass
    return None


def _identities(target: Target, agent) -> list[tuple[str, Any]]:
    """(label, key or path) in the order they are offered.

    First the files passed as ``key_filename`` (through the agent if it holds them):
    an explicit key is meant to be used, and trying the agent's keys before it could
    exhaust the server's MaxAuthTries.  Then ssh's own order: agent keys that an
    IdentityFile names (in the agent's order), the other agent keys (unless
    IdentitiesOnly), and the remaining IdentityFiles (or default key files).
    """
    agent_keys = list(agent.get_keys()) if agent is not None else []
    by_blob = {key.asbytes(): key for key in agent_keys}
    used: set[bytes] = set()
    first: list[tuple[str, Any]] = []
    explicit = [p for p in dict.fromkeys(target.explicit_keys) if os.path.isfile(p)]
    for path in explicit:
        blob = _public_blob(path)
        if blob is not None and blob in by_blob:
            used.add(blob)
            first.append(("%s (from ssh-agent)" % path, by_blob[blob]))
        else:
            first.append((path, path))
    files = [(path, _public_blob(path)) for path in dict.fromkeys(target.key_filenames)
             if path not in explicit and os.path.isfile(path)]
    preferred: list[tuple[str, Any]] = []
    others: list[tuple[str, Any]] = []
    for key in agent_keys:
        blob = key.asbytes()
        if blob in used:
            continue
        match = next((f for f in files if f[1] == blob), None)
        if match is not None:
            files.remove(match)
            preferred.append(("%s (from ssh-agent)" % match[0], key))
        elif not target.identities_only:
            comment = key.comment if isinstance(getattr(key, "comment", None), str) else ""
            others.append(("ssh-agent key %s %s" % (fingerprint(key), comment), key))
    return first + preferred + others + [(path, path) for path, _blob in files]


def authenticate(transport, target: Target) -> None:
    """Authenticate as ``ssh`` would: keys (agent and files, in its order), then the password."""
    import paramiko

    user = target.username
    tried: list[str] = []
    try:
        allowed = transport.auth_none(user)
    except paramiko.BadAuthenticationType as exc:
        allowed = list(exc.allowed_types)
    except paramiko.SSHException as exc:
        raise _auth_failed(target, transport, tried, None, exc) from None
    if transport.is_authenticated():
        return
    defaults = {os.path.expanduser("~/.ssh/" + name) for name in DEFAULT_IDENTITIES}
    tried += ["%s (no such file)" % p for p in target.key_filenames if p not in defaults and not os.path.isfile(p)]
    agent = _agent(target)
    try:
        if "publickey" in allowed:
            for label, key in _identities(target, agent):
                if isinstance(key, str):
                    try:
                        key = paramiko.PKey.from_path(key, target.passphrase)
                    except paramiko.PasswordRequiredException:
                        tried.append("%s (encrypted: pass passphrase= or add it to ssh-agent)" % label)
                        continue
                    except (paramiko.SSHException, OSError, ValueError) as exc:
                        tried.append("%s (unusable: %s)" % (label, exc))
                        continue
                try:
                    remaining = transport.auth_publickey(user, key)
                except paramiko.BadAuthenticationType as exc:
                    allowed = list(exc.allowed_types)
                    break
                except paramiko.AuthenticationException:
                    tried.append("%s (refused)" % label)
                    if not transport.is_active():
                        break
                    continue
                except paramiko.SSHException as exc:
                    tried.append("%s (%s)" % (label, exc))
                    break
                if transport.is_authenticated():
                    return
                allowed = list(remaining)      # partial success: the server wants more
                tried.append("%s (accepted, more needed: %s)" % (label, ",".join(allowed)))
                if "publickey" not in allowed:
                    break
        if target.password is not None and transport.is_active() and (
                "password" in allowed or "keyboard-interactive" in allowed):
            try:
                transport.auth_password(user, target.password)
            except paramiko.AuthenticationException:
                tried.append("password (refused)")
            except paramiko.SSHException as exc:
                tried.append("password (%s)" % exc)
            if transport.is_authenticated():
                return
    finally:
        if agent is not None:
            agent._close()
    raise _auth_failed(target, transport, tried, allowed, None)


def _auth_failed(target: Target, transport, tried: list[str], allowed, exc) -> AuthenticationError:
    if exc is not None:
        return AuthenticationError("%s: authentication failed: %s" % (target.display, exc), target.display)
    closed = "" if transport.is_active() else (
        " The server closed the connection (too many keys offered? set IdentitiesOnly yes for this host, "
        "or pass key_filename= with allow_agent=False).")
    return AuthenticationError(
        "%s: authentication failed; the server accepts %s; tried: %s.%s Fix: add your public key to "
        "~%s/.ssh/authorized_keys on the host, load the right key into ssh-agent, or pass key_filename=."
        % (target.display, ", ".join(allowed or ()) or "nothing we offered",
           "; ".join(tried) or "no key (no agent, no key file found)", closed, target.username),
        target.display)


# -- connecting --------------------------------------------------------------------

def _transport_factory(sock, **kwargs):
    import paramiko

    t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                           default_max_packet_size=MAX_PACKET, **kwargs)
    opts = t.get_security_options()
    ciphers = list(opts.ciphers)
    first = [c for c in PREFERRED_CIPHERS if c in ciphers]
    opts.ciphers = tuple(first + [c for c in ciphers if c not in first])
    return t


def _tcp(target: Target) -> socket.socket:
    family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}.get(target.address_family, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(target.hostname, target.port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectError("%s: cannot resolve host name %r (%s). Check the name or your ~/.ssh/config."
                           % (target.display, target.hostname, exc.strerror), target.display) from None
    deadline = time.monotonic() + target.connect_timeout
    error: OSError | None = None
    for af, kind, proto, _name, address in infos:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(af, kind, proto)
        sock.settimeout(remaining)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if error is None or isinstance(error, socket.timeout):
        raise ConnectError("%s: connection timed out after %gs. Check that the host is up and the "
                           "port is right, or raise connect_timeout." % (target.display, target.connect_timeout),
                           target.display)
    raise ConnectError("%s: cannot connect to port %d: %s. Check that sshd runs there and listens on that "
                       "port, and that the host is reachable." % (target.display, target.port,
                                                                  error.strerror or error), target.display)


def _proxy_command(target: Target) -> tuple[socket.socket, subprocess.Popen]:
    """Run ProxyCommand with the user's shell, as ssh does; talk SSH over its stdin/stdout."""
    ours, theirs = socket.socketpair()
    shell = os.environ.get("SHELL") or "/bin/sh"
    try:
        proc = subprocess.Popen([shell, "-c", "exec " + target.proxy_command], stdin=theirs, stdout=theirs,
                                close_fds=True, start_new_session=True)
    except OSError as exc:
        ours.close()
        raise ConnectError("%s: cannot run ProxyCommand %r: %s" % (target.display, target.proxy_command, exc),
                           target.display) from None
    finally:
        theirs.close()
    return ours, proc


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except OSError:
        pass


class Connection:
    """One authenticated SSH connection (a paramiko Transport) and what it depends on."""

    def __init__(self, target: Target, transport, jump: "Connection | None" = None,
                 proc: subprocess.Popen | None = None, owns_jump: bool = False) -> None:
        self.target = target
        self.transport = transport
        self.jump = jump
        self.proc = proc
        self.owns_jump = owns_jump
        self.closed = False

    @property
    def active(self) -> bool:
        return not self.closed and self.transport.is_active()

    def close(self) -> None:
        """Close the transport (and its thread), the ProxyCommand, and a jump this connection owns."""
        if self.closed:
            return
        self.closed = True
        _close_transport(self.transport)
        _stop(self.proc)
        if self.owns_jump and self.jump is not None:
            self.jump.close()


def _close_transport(transport) -> None:
    try:
        transport.close()
        if transport.is_alive():
            transport.join(5)
    except Exception:   # pragma: no cover - closing never matters more than the error
        pass


def connect(target: Target, jump: Connection | None = None) -> Connection:
    """Open, verify and authenticate a connection to ``target``.

    ``jump`` is the open connection to ``target.jump``; when it is None and the
    target needs one, the jump chain is opened here and closed with the result.
    """
    import paramiko

    owns_jump = False
    if target.jump is not None and jump is None:
        jump = connect(target.jump)
        owns_jump = True
    proc = None
    transport = None
    try:
        if target.jump is not None:
            try:
                sock = jump.transport.open_channel("direct-tcpip", (target.hostname, target.port),
                                                   ("127.0.0.1", 0), timeout=target.connect_timeout)
            except paramiko.ChannelException as exc:
                raise ConnectError("%s: the jump host %s could not connect to %s:%d: %s. Check the address "
                                   "and that sshd runs there." % (target.display, jump.target.display,
                                                                  target.hostname, target.port, exc.text),
                                   target.display) from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ConnectError("%s: the jump host %s could not connect to %s:%d within %gs: %s" % (
                    target.display, jump.target.display, target.hostname, target.port, target.connect_timeout,
                    describe(exc)), target.display) from None
        elif target.proxy_command:
            sock, proc = _proxy_command(target)
        else:
            sock = _tcp(target)
        try:
            transport = _transport_factory(sock)
        except BaseException:
            sock.close()
            raise
        transport.banner_timeout = transport.handshake_timeout = target.connect_timeout
        transport.auth_timeout = target.connect_timeout
        files = list(target.known_hosts) + list(target.global_known_hosts)
        _prefer_known_types(transport, [e for e in read_known_hosts(files) if e.matches(target.host_key_name)])
        done = threading.Event()
        transport.start_client(event=done)
        done.wait(target.connect_timeout + 1)
        if not transport.is_active() or not done.is_set() or not transport.initial_kex_done:
            exc = transport.get_exception()
            if exc is None and not done.is_set():
                reason = "no answer within %gs" % target.connect_timeout
            else:
                reason = str(exc or "the server closed the connection") or type(exc).__name__
            raise ConnectError("%s: SSH handshake failed: %s. Check that an SSH server answers on port %d%s."
                               % (target.display, reason, target.port,
                                  " and that ProxyCommand works" if proc is not None else ""), target.display)
        check_host_key(target, transport.get_remote_server_key())
        authenticate(transport, target)
    except BaseException:
        if transport is not None:
            _close_transport(transport)
        _stop(proc)
        if owns_jump:
            jump.close()
        raise
    return Connection(target, transport, jump, proc, owns_jump)


class _Entry:
    __slots__ = ("lock", "conn", "refs")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Connection | None = None
        self.refs = 0


class Pool:
    """Shared, reference-counted connections, one per ``Target.conn_key`` (thread-safe).

    ``acquire`` and ``release`` pair up; a connection closes when its last user
    releases it, and a jump host's connection when the last connection through it
    closes.  A connection found dead is replaced for the next user.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple, _Entry] = {}

    def acquire(self, target: Target) -> Connection:
        key = target.conn_key
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.refs += 1
        try:
            with entry.lock:
                conn = entry.conn
                if conn is None or not conn.active:
                    entry.conn = None
                    if conn is not None:
                        self._close(conn)
                    conn = entry.conn = self._open(target)
                return conn
        except BaseException:
            self._unref(key, entry)
            raise

    def _open(self, target: Target) -> Connection:
        jump = self.acquire(target.jump) if target.jump is not None else None
        try:
            return connect(target, jump)
        except BaseException:
            if jump is not None:
                self.release(jump)
            raise

    def release(self, conn: Connection) -> None:
        key = conn.target.conn_key
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:       # pragma: no cover - released twice, or after close_all
            conn.close()
            return
        self._unref(key, entry)

    def _unref(self, key: tuple, entry: _Entry) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.refs > 0 or self._entries.get(key) is not entry:
                return
            del self._entries[key]
            conn, entry.conn = entry.conn, None
        if conn is not None:
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        conn.close()
        if conn.jump is not None and not conn.owns_jump:
            self.release(conn.jump)

    def count(self) -> int:
        """How many connections are open (for tests and diagnostics)."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.conn is not None and e.conn.active)

    def close_all(self) -> None:
        with self._lock:
            conns = [e.conn for e in self._entries.values() if e.conn is not None]
            self._entries.clear()
        for conn in conns:
            conn.close()
