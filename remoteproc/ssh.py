"""SSH as the user has it: host specs, ~/.ssh/config, keys, known_hosts, jump hosts.

``parse_spec`` and ``check_options`` are pure and run in the caller's process so
that bad input fails at once; everything that needs paramiko runs in the relay
process, which owns the SSH connections (see ``relay.py``).
"""

from __future__ import annotations

import base64
import getpass
import glob
import hashlib
import logging
import os
import re
import shlex
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from .errors import AuthenticationError, ConfigError, ConnectError, HostKeyError

log = logging.getLogger("remoteproc.ssh")

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_INTERVAL = 15.0
DEFAULT_KEEPALIVE_COUNT = 3
DEFAULT_IDLE_TIMEOUT = 60.0
WINDOW_SIZE = 8 << 20
MAX_PACKET = 128 << 10
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
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
    "keepalive_interval": (int, float),
    "keepalive_count": (int,),
    "idle_timeout": (int, float),
}

_SPEC = re.compile(r"^(?:(?P<user>[^@/\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@/\s\[\]]+))(?::(?P<port>\d+))?$")


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """Split ``[user@]host[:port]`` (``[v6addr]`` in brackets) into its parts."""
    if not isinstance(spec, str):
        raise ConfigError("host must be a string such as 'user@host' or 'host:2222', not %s"
                          % type(spec).__name__)
    m = _SPEC.match(spec.strip())
    if not m:
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
    policy = options.get("host_key_policy")
    if policy is not None and policy not in POLICIES:
        raise ConfigError("host_key_policy=%r for host %r: use one of %s" % (policy, spec, POLICIES), spec)
    return {k: v for k, v in options.items() if v is not None}


# -- ~/.ssh/config ------------------------------------------------------------

def _expand_includes(path: str, base: str, depth: int = 0) -> list[str]:
    """The lines of a config file with every ``Include`` replaced by its files' lines."""
    if depth > 16:
        raise ConfigError("%s: Include nested more than 16 deep" % path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out: list[str] = []
    for line in lines:
        m = re.match(r"^\s*include\s*(?:=\s*|\s)(.*)$", line, re.IGNORECASE)
        if not m:
            out.append(line)
            continue
        for pattern in shlex.split(m.group(1), comments=True):
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = os.path.join(base, pattern)
            for inc in sorted(glob.glob(pattern)):
                out.extend(_expand_includes(inc, base, depth + 1))
    return out


def load_config(ssh_config: Any = None):
    """The user's ssh configuration (or the given file), Include followed, as paramiko.SSHConfig."""
    import paramiko

    lines: list[str] = []
    if ssh_config is False:
        pass
    elif ssh_config not in (None, True):
        path = os.path.expanduser(os.fspath(ssh_config))
        if not os.path.exists(path):
            raise ConfigError("ssh_config file %s does not exist" % path)
        lines = _expand_includes(path, os.path.dirname(os.path.abspath(path)))
    else:
        user_dir = os.path.expanduser("~/.ssh")
        lines = _expand_includes(os.path.join(user_dir, "config"), user_dir)
        lines += _expand_includes("/etc/ssh/ssh_config", "/etc/ssh")
    try:
        return paramiko.SSHConfig.from_text("\n".join(lines))
    except Exception as exc:
        raise ConfigError("cannot read the ssh configuration: %s" % exc) from None


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

    @property
    def display(self) -> str:
        host = "[%s]" % self.hostname if ":" in self.hostname else self.hostname
        text = "%s@%s" % (self.username, host)
        if self.port != 22:
            text += ":%d" % self.port
        if self.proxy_jump:
            text += " via " + ",".join(self.proxy_jump)
        return text

    @property
    def key(self) -> tuple:
        """Processes whose targets share this key share one SSH connection and agent."""
        return (self.username, self.hostname, self.port, tuple(self.proxy_jump),
                self.proxy_command, self.python)


def _yes(value: Any) -> bool:
    return str(value).lower() in ("yes", "true", "on", "1")


def resolve(spec: str, options: dict[str, Any], config=None) -> Target:
    """Apply the ssh configuration and the keyword options to a host spec."""
    user, host, port = parse_spec(spec)
    if config is None:
        config = load_config(options.get("ssh_config"))
    cfg = config.lookup(host)
    hostname = cfg.get("hostname", host)
    port = options.get("port") or port or int(cfg.get("port", 22))
    username = options.get("username") or user or cfg.get("user") or getpass.getuser()

    keys = options.get("key_filename")
    if keys is not None:
        keys = [keys] if isinstance(keys, (str, os.PathLike)) else list(keys)
    else:
        keys = cfg.get("identityfile", [])
    keys = [os.path.expanduser(os.fspath(k)) for k in keys]

    known = options.get("known_hosts")
    if known is not None:
        known = [known] if isinstance(known, (str, os.PathLike)) else list(known)
    elif cfg.get("userknownhostsfile"):
        known = shlex.split(cfg["userknownhostsfile"])
    else:
        known = ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
    known = [os.path.expanduser(os.fspath(k)) for k in known if str(k).lower() != "none"]

    policy = options.get("host_key_policy")
    if policy is None:
        strict = str(cfg.get("stricthostkeychecking", "ask")).lower()
        policy = "accept-new" if strict in ("accept-new", "no", "off") else "reject"

    jump = options.get("proxy_jump", cfg.get("proxyjump"))
    jumps = [] if not jump or jump.lower() == "none" else [j.strip() for j in jump.split(",") if j.strip()]
    proxy_command = None if jumps else cfg.get("proxycommand")
    if proxy_command and proxy_command.lower() == "none":
        proxy_command = None

    interval = options.get("keepalive_interval")
    if interval is None:
        interval = float(cfg.get("serveraliveinterval", 0)) or DEFAULT_KEEPALIVE_INTERVAL
    count = options.get("keepalive_count") or int(cfg.get("serveralivecountmax", DEFAULT_KEEPALIVE_COUNT))
    timeout = options.get("connect_timeout") or float(cfg.get("connecttimeout", 0)) or DEFAULT_CONNECT_TIMEOUT
    return Target(
        spec=spec, hostname=hostname, port=int(port), username=username, key_filenames=keys,
        identities_only=_yes(cfg.get("identitiesonly", "no")),
        password=options.get("password"), passphrase=options.get("passphrase"),
        known_hosts=known, policy=policy, connect_timeout=float(timeout),
        proxy_jump=jumps, proxy_command=proxy_command,
        keepalive_interval=float(interval), keepalive_count=max(1, int(count)),
        idle_timeout=float(options.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)),
        python=options.get("python", "python3"),
        allow_agent=options.get("allow_agent", True), look_for_keys=options.get("look_for_keys", True),
        options=options,
    )


# -- host keys --------------------------------------------------------------------

def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _policy(target: Target):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Unknown keys: refuse, or with accept-new record them; never silently trust."""

        def missing_host_key(self, client, hostname, key):
            if target.policy == "accept-new" and target.known_hosts:
                path = target.known_hosts[0]
                os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
                with open(path, "a", encoding="utf-8") as f:
                    f.write("%s %s %s\n" % (hostname, key.get_name(), key.get_base64()))
                log.warning("%s: recorded the new %s host key %s in %s",
                            target.display, key.get_name(), fingerprint(key), path)
                return
            scan = "ssh-keyscan %s-t %s %s >> ~/.ssh/known_hosts" % (
                "-p %d " % target.port if target.port != 22 else "",
                key.get_name().replace("ssh-", ""), target.hostname)
            raise HostKeyError(
                "%s: the host key is unknown (%s %s). Check the fingerprint with the host's "
                "administrator, then trust it: connect once with ssh, or run `%s`, or pass "
                "host_key_policy='accept-new'." % (target.display, key.get_name(), fingerprint(key), scan),
                target.display)

    return Policy()


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
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=target.connect_timeout)
    except socket.timeout:
        raise ConnectError("%s: connection timed out after %gs. Check that the host is up and the "
                           "port is right, or raise connect_timeout." % (target.display, target.connect_timeout),
                           target.display) from None
    except socket.gaierror as exc:
        raise ConnectError("%s: cannot resolve host name %r (%s). Check the name or your ~/.ssh/config."
                           % (target.display, target.hostname, exc.strerror), target.display) from None
    except OSError as exc:
        raise ConnectError("%s: cannot connect: %s. Check that sshd runs there and listens on port %d."
                           % (target.display, exc.strerror or exc, target.port), target.display) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Connection:
    """One authenticated SSH connection (paramiko Transport) and what it depends on."""

    def __init__(self, target: Target, client, jump: "Connection | None") -> None:
        self.target = target
        self.client = client
        self.transport = client.get_transport()
        self.jump = jump

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:   # pragma: no cover - closing never matters more than the error
            pass


def connect(target: Target, open_jump) -> Connection:
    """Open and authenticate a connection; ``open_jump(spec, chain)`` gives a jump host's Connection."""
    import paramiko

    jump = None
    if target.proxy_jump:
        jump = open_jump(target.proxy_jump[-1], target.proxy_jump[:-1])
        try:
            sock = jump.transport.open_channel("direct-tcpip", (target.hostname, target.port),
                                               ("127.0.0.1", 0), timeout=target.connect_timeout)
        except Exception as exc:
            raise ConnectError("%s: the jump host %s could not open a connection to %s:%d: %s"
                               % (target.display, jump.target.display, target.hostname, target.port,
                                  exc), target.display) from None
    elif target.proxy_command:
        sock = paramiko.ProxyCommand(target.proxy_command)
    else:
        sock = _tcp(target)

    client = paramiko.SSHClient()
    for path in ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2") + tuple(target.known_hosts):
        if os.path.isfile(path):
            try:
                client.load_system_host_keys(path)
            except Exception as exc:
                log.warning("%s: ignoring unreadable known_hosts file %s: %s", target.display, path, exc)
    client.set_missing_host_key_policy(_policy(target))
    only_files = target.identities_only and bool(target.key_filenames)
    keys = [k for k in target.key_filenames if os.path.exists(k)]
    try:
        client.connect(
            target.hostname, port=target.port, username=target.username,
            password=target.password, passphrase=target.passphrase,
            key_filename=keys or None, timeout=target.connect_timeout,
            allow_agent=target.allow_agent and not only_files,
            look_for_keys=target.look_for_keys and not only_files,
            sock=sock, banner_timeout=target.connect_timeout, auth_timeout=target.connect_timeout,
            channel_timeout=target.connect_timeout, transport_factory=_transport_factory,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(
            "%s: the host key has CHANGED (%s %s, expected %s). This may be an attack or a "
            "reinstalled host; it is always refused. If the change is expected, remove the old "
            "entry with `ssh-keygen -R %s` and connect again." % (
                target.display, exc.key.get_name(), fingerprint(exc.key), fingerprint(exc.expected_key),
                target.hostname if target.port == 22 else "[%s]:%d" % (target.hostname, target.port)),
            target.display) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthenticationError(
            "%s: authentication failed (%s). Load your key into ssh-agent, pass key_filename=, "
            "or add your public key to ~%s/.ssh/authorized_keys on the host."
            % (target.display, exc, target.username), target.display) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        client.close()
        if isinstance(exc, socket.timeout):
            reason = "timed out after %gs" % target.connect_timeout
        else:
            reason = str(exc) or type(exc).__name__
        raise ConnectError("%s: SSH handshake failed: %s. Check that an SSH server answers on port %d."
                           % (target.display, reason, target.port), target.display) from None
    return Connection(target, client, jump)


class Pool:
    """Shared, reference-counted connections, one per target key (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple, list] = {}    # key -> [lock, Connection | None, refs]

    def acquire(self, target: Target) -> Connection:
        with self._lock:
            entry = self._entries.setdefault(target.key, [threading.Lock(), None, 0])
        with entry[0]:
            conn = entry[1]
            if conn is None or not conn.transport.is_active():
                if conn is not None:
                    self._drop(conn)
                entry[1] = conn = connect(target, self._open_jump(target))
            entry[2] += 1
            return conn

    def _open_jump(self, target: Target):
        def open_jump(spec: str, chain: list[str]) -> Connection:
            opts = {k: v for k, v in target.options.items()
                    if k in ("ssh_config", "known_hosts", "host_key_policy", "connect_timeout",
                             "allow_agent", "look_for_keys")}
            opts["proxy_jump"] = ",".join(chain) if chain else "none"
            return self.acquire(resolve(spec, opts))
        return open_jump

    def release(self, conn: Connection) -> None:
        with self._lock:
            entry = self._entries.get(conn.target.key)
            if entry is None or entry[1] is not conn:
                conn.close()
                return
            entry[2] -= 1
            if entry[2] > 0:
                return
            del self._entries[conn.target.key]
        self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        conn.close()
        if conn.jump is not None:
            self.release(conn.jump)

    def close_all(self) -> None:
        with self._lock:
            conns = [e[1] for e in self._entries.values() if e[1] is not None]
            self._entries.clear()
        for conn in conns:
            conn.close()
