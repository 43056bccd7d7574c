"""Target resolution: a host spec plus keyword options plus ssh_config, made into one ``Target``.

``resolve`` applies what ``ssh`` would (the caller's values first, then the config,
then ssh's defaults) and resolves a ProxyJump chain into nested targets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError
from .config import Config, did_you_mean, load_config
from .spec import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE_COUNT,
    DEFAULT_KEEPALIVE_INTERVAL,
    JUMP_INHERITS,
    OPTIONS,
    option,
    parse_jumps,
    parse_spec,
)
from .tokens import expand, expand_path, host_tokens, local_user

MAX_JUMPS = 8
#: how a ProxyJump loop is mended: most come from a ``Host *`` block whose ProxyJump also holds for the
#: jump host itself
LOOP_FIX = ("give each jump host its own way: `ProxyJump none` in its own block, before a `Host *` block "
            "whose ProxyJump would hold for it too (ssh takes a keyword's first value)")
#: the key files ``ssh`` tries when no IdentityFile is given (OpenSSH 9.x order)
DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa")
SYSTEM_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")


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
    #: where ``connect_timeout`` came from when it is the ssh config's, as a message names it
    #: ("ConnectTimeout 5 for node3 in ~/.ssh/config"); "" for the option or the default
    timeout_origin: str = ""
    proxy_jump: list[str] = field(default_factory=list)
    proxy_command: str | None = None
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_count: int = DEFAULT_KEEPALIVE_COUNT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: None: find one (docs/python-versions.md); a str of shell words; a tuple tried in order
    python: str | tuple | None = OPTIONS["python"].default
    #: shell lines run in the login shell before the interpreter starts
    setup: tuple = ()
    allow_agent: bool = OPTIONS["allow_agent"].default
    look_for_keys: bool = OPTIONS["look_for_keys"].default
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the host as given (``%n``), before HostName
    original_host: str = ""
    #: the resolved last jump host (itself reached through its own ``jump``), if any
    jump: "Target | None" = None
    global_known_hosts: list[str] = field(default_factory=lambda: list(SYSTEM_KNOWN_HOSTS))
    host_key_alias: str | None = None
    hash_known_hosts: bool = False
    #: ``RevokedHostKeys``: a file of revoked public keys (or an OpenSSH KRL), checked as ssh does
    revoked_host_keys: str | None = None
    #: ``LogLevel QUIET``, ``FATAL`` or ``ERROR``: ssh then says nothing of a host key it recorded
    #: (its "Permanently added" is an INFO line): neither does accept-new here, but at INFO
    quiet: bool = False
    #: None: $SSH_AUTH_SOCK; "": no agent; else the agent socket's path
    identity_agent: str | None = None
    #: ``CertificateFile``s: user certificates offered with their keys (``auth.py``)
    certificate_files: list[str] = field(default_factory=list)
    #: ``ForwardAgent``: the host's processes may use an ssh-agent of ours (``auth.forward_agent``)
    forward_agent: bool = False
    #: the socket ``ForwardAgent PATH`` (or ``$VAR``) names; None: the agent we authenticate with
    forward_agent_path: str | None = None
    address_family: str = "any"
    #: the ``ControlPath`` of ``ssh`` (openssh transport): a master connection it may share, which a
    #: lost connection's message then names (the master's end is no fault of the host's)
    control_path: str | None = None
    #: ``ssh`` says "Authenticated to HOST" once its login is done (its LogLevel is VERBOSE or more;
    #: not through a ControlMaster, whose clients log nothing in): "ours" where we raised the config's
    #: INFO to VERBOSE (those lines are then ours to drop), "config" where the config asks for them,
    #: "" where ssh will not say.  A start that waits without those words is stuck in the login, not
    #: in the host's shell
    says_login: str = ""
    #: the key files passed as ``key_filename`` (the first of ``key_filenames``), offered first
    explicit_keys: list[str] = field(default_factory=list)
    #: "paramiko", or "openssh": then ``ssh_args`` (options, ``--``, host) run the user's ssh
    transport: str = "paramiko"
    ssh_args: tuple = ()
    #: (keyword, value) of the ssh config settings the paramiko transport cannot honour (see
    #: ``paramiko_cannot``), as the config gave them: no file is looked at until a login fails
    config_asks: tuple = ()
    #: the ssh config says ``StrictHostKeyChecking yes``: a bare ``ssh`` to the host never asks to
    #: trust a new key, so the command an error suggests needs ``-o StrictHostKeyChecking=ask``
    strict_config: bool = False

    @property
    def paramiko_cannot(self) -> tuple[str, ...]:
        """What this host's ssh config asks for that the paramiko transport cannot do, as short
        phrases ("GSSAPIAuthentication (Kerberos)"): a failed login names them and
        transport='openssh'.  It reads key files, so it is worked out only when asked."""
        return _paramiko_cannot(self.config_asks, self.key_filenames)

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
        alias = self.original_host
        if alias and alias.lower() not in (self.hostname, host):
            # an ssh_config alias ("node6"): the name the user wrote comes first, so that with many
            # hosts a message says which one without mapping addresses back to names
            text = "%s (%s)" % (alias, text)
        return text

    @property
    def conn_key(self) -> tuple[Any, ...]:
        """Targets with this key share one SSH connection.

        (user, host, port, route), and the settings that decide whom we trust and who
        we are: a process asking for other credentials or other known_hosts files never
        rides on a connection that was verified and authenticated with different ones.
        The passphrase counts as the password does (a wrong one must fail as it would
        alone, not ride on a connection that the right one opened), and like it is held
        as a hash, not as itself.
        """
        route = self.jump.conn_key if self.jump is not None else self.proxy_command
        trust = (tuple(self.key_filenames), self.identities_only, self.allow_agent, self.identity_agent,
                 _digest(self.password), _digest(self.passphrase),
                 tuple(self.known_hosts), tuple(self.global_known_hosts), self.host_key_alias, self.policy,
                 self.revoked_host_keys,
                 tuple(self.certificate_files), self.forward_agent, self.forward_agent_path)
        return (self.username, self.hostname, self.port, route, trust, self.transport, self.ssh_args)

    @property
    def key(self) -> tuple[Any, ...]:
        """Processes whose targets share this key share one remote agent (and its connection);
        the package cache's setting and the setup lines belong to the agent, so they are part of the key."""
        return self.conn_key + (self.python, self.setup, self.options.get("cache_size"))

    @property
    def answer_wait(self) -> float:
        """How long a connection gets to answer when asked whether it lives: a keepalive interval, 2-10 s."""
        return min(10.0, max(2.0, self.keepalive_interval))

    @property
    def host_key_name(self) -> str:
        """The name under which known_hosts holds this host's key."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else "[%s]:%d" % (self.hostname, self.port)


def _digest(secret: str | None) -> str | None:
    """A password or passphrase as ``Target.conn_key`` holds it: its SHA-256, or None."""
    return hashlib.sha256(secret.encode()).hexdigest() if secret is not None else None


def _yes(value: Any) -> bool:
    return str(value).lower() in ("yes", "true", "on", "1")


def _first(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key)
    if value is None:
        return default
    return value[0] if isinstance(value, list) else value


def _number(cfg: dict[str, Any], key: str, spec: str, kind: Callable[[str], Any] = float) -> Any:
    value = _first(cfg, key)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        pass
    if key == "port":
        try:
            return socket.getservbyname(value, "tcp")     # (ssh takes a service name: Port ssh)
        except OSError:
            pass
    raise ConfigError("%s: ssh_config: %s %r is not a number. Fix: correct it in the ssh config"
                      % (spec, key, value), spec)


_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)


def _seconds(cfg: dict[str, Any], key: str, spec: str) -> int | None:
    """A time value of the config as ssh reads one (``convtime``): ``30``, ``1m30s``, ``2h``, ``1w``;
    ``none`` (like ``0``) is no value.  Anything else is a ConfigError, as ssh refuses it too."""
    value = _first(cfg, key)
    if value is None or value == "none":
        return None
    total, pos = 0, 0
    while pos < len(value):
        m = _TIME.match(value, pos)
        if not m:
            break
        total += int(m.group(1)) * _TIME_UNITS[m.group(2).lower()]
        pos = m.end()
    if not value or pos < len(value) or total > 2 ** 31 - 1:
        raise ConfigError("%s: ssh_config: %s %r is not a time (seconds, or a time such as 90, 1m30s, 2h). Fix: "
                          "correct it in the ssh config" % (spec, key, value), spec)
    return total


def resolve(spec: str, options: dict[str, Any], config: Config | None = None, _depth: int = 0) -> Target:
    """Apply the keyword options and the ssh configuration to a host spec, as ``ssh`` does."""
    if _depth:
        return _resolve(spec, options, config, _depth)
    if config is None:
        config = load_config(options.get("ssh_config"))     # (an ssh_config= that is no file: the option's error)
    try:
        return _resolve(spec, options, config, _depth)
    except ConfigError as exc:
        if exc.host is not None:
            raise
        # (what the config files and tokens say knows no host: a line, a keyword, a value)
        said = str(exc).rstrip(".")
        fix = "" if "Fix:" in said else ". Fix: correct it where it is written (your ssh config, or the option)"
        raise ConfigError("%s: %s%s" % (spec, said, fix), spec) from None


def _resolve(spec: str, options: dict[str, Any], config: Config | None, _depth: int) -> Target:
    user, host, spec_port = parse_spec(spec)
    if config is None:
        config = load_config(options.get("ssh_config"))
    cfg = config.lookup(host, _preset(options, user, spec_port))

    # (HostName expanded, lowercased as ssh connects to it and known_hosts hold it, canonicalised)
    hostname = cfg["hostname"][0]
    port = _number(cfg, "port", spec, int) or 22
    if not 0 < port < 65536:
        raise ConfigError("%s: port %d is out of range 1-65535" % (spec, port), spec)
    username = _first(cfg, "user") or local_user()
    alias = _first(cfg, "hostkeyalias")
    if alias is not None:
        alias = alias.lower()       # (as ssh records and looks it up: a hashed entry holds the lowercased name)
    jump_text = cfg.get("proxyjump")
    tokens = host_tokens(host, hostname, port, username, alias, jump_text)

    keys, explicit = _identity_files(options, cfg, tokens)
    known, global_known = _known_hosts_files(options, cfg, tokens)
    jumps = parse_jumps(expand(jump_text, tokens, "ProxyJump") if isinstance(jump_text, str) else None)
    try:
        jump = _resolve_jump(spec, jumps, options, config, _depth) if jumps else None
    except _Loop as exc:
        if _depth:
            raise
        # (said once, at the top: as the target's, with the files that make the loop)
        raise ConfigError("%s: ProxyJump goes through more than %d hosts (%s); is there a loop in %s? Fix: %s"
                          % (spec, MAX_JUMPS, exc.chain, " or ".join(path for path, _ in config.files) or
                             "the ssh configuration", LOOP_FIX), spec) from None
    timeout, timeout_origin = _connect_timeout(options, cfg, spec, host)
    if jump is not None and timeout_origin:
        _cap_timeout(jump, timeout, timeout_origin)
    interval = (options.get("keepalive_interval") or _seconds(cfg, "serveraliveinterval", spec)
                or DEFAULT_KEEPALIVE_INTERVAL)
    count = options.get("keepalive_count") or _number(cfg, "serveralivecountmax", spec, int) or DEFAULT_KEEPALIVE_COUNT
    family = str(_first(cfg, "addressfamily", "any")).lower()
    asks = _config_asks(cfg)
    forward, forward_path = _forward_agent(cfg, tokens, spec)
    return Target(
        spec=spec, hostname=hostname, port=port, username=username, key_filenames=keys,
        identities_only=_yes(_first(cfg, "identitiesonly", "no")),
        password=options.get("password"), passphrase=options.get("passphrase"),
        known_hosts=known, policy=_host_key_policy(options, cfg), connect_timeout=timeout,
        timeout_origin=timeout_origin,
        proxy_jump=jumps, proxy_command=None if jumps else _proxy_command(cfg, tokens),
        keepalive_interval=float(interval), keepalive_count=max(1, int(count)),
        idle_timeout=float(option(options, "idle_timeout")),
        python=python_option(options.get("python")), setup=setup_option(options.get("setup")),
        allow_agent=option(options, "allow_agent"), look_for_keys=option(options, "look_for_keys"),
        options=options, original_host=host, jump=jump, global_known_hosts=global_known,
        host_key_alias=alias, hash_known_hosts=_yes(_first(cfg, "hashknownhosts", "no")),
        revoked_host_keys=_revoked_host_keys(cfg, tokens),
        quiet=str(_first(cfg, "loglevel", "INFO")).upper() in ("QUIET", "FATAL", "ERROR"),
        identity_agent=_identity_agent(cfg, tokens), address_family=family if family in ("inet", "inet6") else "any",
        certificate_files=[expand_path(c, tokens, "CertificateFile") for c in cfg.get("certificatefile", [])
                           if c.lower() != "none"],
        forward_agent=forward, forward_agent_path=forward_path,
        explicit_keys=explicit, config_asks=asks,
        strict_config=str(_first(cfg, "stricthostkeychecking", "ask")).lower() in ("yes", "true", "on"),
    )


def config_read(options: dict[str, Any]) -> str | None:
    """The ssh_config file a host's settings came from, as a message names it: the one given
    (``ssh_config=``, the CLI's ``-F``), else ``~/.ssh/config``; None when none is read."""
    given = options.get("ssh_config")
    if given is None or given is True:
        return "~/.ssh/config"
    if given is False or str(given).lower() == "none":
        return None
    return os.path.expanduser(os.fspath(given))


def home_hint(options: dict[str, Any]) -> str:
    """The paramiko transport finds ``~/.ssh`` in ``$HOME`` (Python's ``~``), ``ssh`` in the account's
    home directory whatever ``$HOME`` says.  A program started with ``$HOME`` elsewhere (a service's
    ``Environment=HOME=/var/lib/app``, cron's ``HOME=``, ``env HOME=/tmp``) found none of the account's
    config, keys and known_hosts, and its error said to check the name or the key, which ``ssh`` finds.
    Where ``$HOME/.ssh`` lacks a file of the account's ``~/.ssh`` that this start would have read: a
    clause naming both and the ways out; else ""."""
    import pwd
    import shlex

    if "HOME" not in os.environ:
        return ""       # (Python's ~ is then the account's home, as ssh's)
    home = os.environ["HOME"]
    expanded = os.path.expanduser("~")      # (an empty $HOME, systemd's Environment=HOME=, is "/")
    try:
        account = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return ""
    if os.path.realpath(expanded) == os.path.realpath(account):
        return ""
    theirs = os.path.join(account, ".ssh")
    mine = os.path.join(expanded, ".ssh")
    wanted: list[tuple[str, tuple[str, ...]]] = []     # (option, file names of ~/.ssh it stands for)
    if options.get("ssh_config") is None:
        wanted.append(("ssh_config", ("config",)))
    if options.get("known_hosts") is None:
        wanted.append(("known_hosts", ("known_hosts",)))
    if options.get("key_filename") is None and option(options, "look_for_keys"):
        wanted.append(("key_filename", DEFAULT_IDENTITIES))
    missing: list[tuple[str, str]] = []
    for name, files in wanted:
        for base in files:
            path = os.path.join(theirs, base)
            if os.path.isfile(path) and not os.path.exists(os.path.join(mine, base)):
                missing.append((name, path))
                break
    if not missing:
        return ""
    named = ", ".join("%s=%r" % kv for kv in missing)
    return (" (note: the paramiko transport reads ~/.ssh in $HOME=%s, which has no %s; the account's home %s has. "
            "Fix: start the program with HOME=%s, or pass transport='openssh' (ssh reads %s whatever $HOME says), "
            "or %s)" % (home or "'' (empty)", ", ".join(os.path.basename(p) for _, p in missing), account,
                        shlex.quote(account), theirs, named))


def account_home() -> str | None:
    """The account's home directory (password database): where ``ssh`` and ``ssh-keygen`` find ``~/.ssh``."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None


def home_elsewhere() -> str | None:
    """``$HOME`` as Python's ``~`` expands it (where the paramiko transport finds ``~/.ssh``) when that
    is not the account's home, where ``ssh`` finds it (sudo without -H, a service's ``Environment=HOME=``);
    else None: a command we suggest must then name the files we read."""
    if "HOME" not in os.environ:
        return None
    account = account_home()
    expanded = os.path.expanduser("~")
    if account is None or os.path.realpath(expanded) == os.path.realpath(account):
        return None
    return expanded


def own_key_fix(path: str) -> str:
    """The commands that make a private key file the user's and readable by them only."""
    import pwd
    import shlex

    quoted = shlex.quote(path)
    return "chown %s %s; chmod 600 %s" % (shlex.quote(pwd.getpwuid(os.geteuid()).pw_name), quoted, quoted)


def typo_hint(target: Target) -> str:
    """`` (did you mean 'lab'?)`` when the host as given went to the resolver unchanged (no alias of
    the config, no HostName) and the config has an alias like it: a typo of an alias; else ""."""
    given = target.original_host
    if not given or given.lower() != target.hostname.lower():
        return ""
    return did_you_mean(given, target.options.get("ssh_config"))


def _preset(options: dict[str, Any], user: str | None, port: int | None) -> dict[str, Any]:
    """What the caller gave counts as obtained first (ssh's command line): the config cannot override it."""
    preset: dict[str, Any] = {}
    if options.get("username") or user:
        preset["user"] = [options.get("username") or user]
    if options.get("port") or port:
        preset["port"] = [str(options.get("port") or port)]
    if options.get("proxy_jump") is not None:
        # as ssh -J: a jump host settles ProxyCommand too, "none" does not (a config's ProxyCommand then applies)
        preset["proxyjump"] = options["proxy_jump"]
        if options["proxy_jump"].strip().lower() != "none":
            preset["proxycommand"] = "none"
    elif options.get("proxy_command") is not None:
        preset["proxycommand"] = options["proxy_command"]
    return preset


def _given_files(value: Any) -> list[str]:
    """A path option (one path or a list of them) as a list of expanded paths."""
    paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    return [os.path.expanduser(os.fspath(p)) for p in paths]


def _identity_files(options: dict[str, Any], cfg: dict[str, Any],
                    tokens: dict[str, str]) -> tuple[list[str], list[str]]:
    """(every key file to try, the ones passed as ``key_filename``): given, then IdentityFile, else ssh's defaults."""
    explicit = _given_files(options["key_filename"]) if options.get("key_filename") is not None else []
    configured = cfg.get("identityfile", [])
    keys = explicit + [expand_path(k, tokens, "IdentityFile") for k in configured if k.lower() != "none"]
    if not keys and option(options, "look_for_keys") and "none" not in [k.lower() for k in configured]:
        keys = [os.path.expanduser("~/.ssh/" + name) for name in DEFAULT_IDENTITIES]
    return keys, explicit


def public_key(path: str) -> tuple[str, bytes] | None:
    """(key type, blob) of an identity file's public key: ``path.pub``, or ``path`` itself if it is
    one, or (as ssh reads it) the public half that an OpenSSH private key file holds in the clear,
    encrypted or not: an agent's key then matches an ``IdentityFile`` without a ``.pub`` beside it."""
    for candidate in (path + ".pub", path):
        try:
            with open(candidate, encoding="ascii", errors="replace") as f:
                text = f.read(16384)
            fields = text.split()
            if len(fields) >= 2 and fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
                return fields[0], base64.b64decode(fields[1], validate=True)
            if candidate == path:
                return _openssh_private_public(text)
        except (OSError, ValueError, binascii.Error):
            pass
    return None


_OPENSSH_BEGIN, _OPENSSH_END = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\0"


def _openssh_private_public(text: str) -> tuple[str, bytes] | None:
    """The first public key of an ``openssh-key-v1`` private key file: magic, cipher name, KDF name,
    KDF options, number of keys, then the public key blobs (all before the encrypted part)."""
    if _OPENSSH_BEGIN not in text or _OPENSSH_END not in text:
        return None
    data = base64.b64decode("".join(text.split(_OPENSSH_BEGIN, 1)[1].split(_OPENSSH_END, 1)[0].split()))
    if not data.startswith(_OPENSSH_MAGIC):
        return None
    pos = len(_OPENSSH_MAGIC)
    fields = []
    for length_only in (False, False, False, True, False):      # cipher, kdf, kdf options, count, key
        if pos + 4 > len(data):
            return None
        size = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
        if not length_only:
            if pos + size > len(data):
                return None
            fields.append(data[pos:pos + size])
            pos += size
    blob = fields[-1]
    size = int.from_bytes(blob[:4], "big")
    kind = blob[4:4 + size].decode("ascii", "replace")
    return (kind, blob) if 0 < size < len(blob) else None


def _config_asks(cfg: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The settings of ``cfg`` the paramiko transport cannot honour, with their values."""
    asks = []
    if _yes(_first(cfg, "gssapiauthentication", "no")):
        asks.append(("gssapiauthentication", "yes"))
    provider = _first(cfg, "pkcs11provider")
    if provider is not None and provider.lower() != "none":
        asks.append(("pkcs11provider", provider))
    sk_provider = _first(cfg, "securitykeyprovider")
    if sk_provider is not None and sk_provider.lower() != "internal":
        asks.append(("securitykeyprovider", sk_provider))
    return tuple(asks)


def _paramiko_cannot(asks: tuple, keys: list[str]) -> tuple[str, ...]:
    """Phrases for the error of a refused login, from ``_config_asks`` and the key files.

    A refused login then says which setting stands in the way and that ``transport='openssh'``
    (the user's own ssh) can do it, instead of a guess (issue #17).  Only files that exist are
    named: ssh itself skips the others.
    """
    found = []
    for keyword, value in asks:
        if keyword == "gssapiauthentication":
            found.append("GSSAPIAuthentication (Kerberos)")
        elif keyword == "pkcs11provider":
            found.append("PKCS11Provider %s (a PKCS#11 token)" % value)
        elif keyword == "securitykeyprovider":
            found.append("SecurityKeyProvider %s (FIDO security keys)" % value)
    for path in dict.fromkeys(keys):
        public = public_key(path) if os.path.isfile(path) else None
        if public is not None and public[0].startswith("sk-"):
            found.append("the FIDO security key %s (%s)" % (path, public[0]))
    return tuple(dict.fromkeys(found))


def _known_hosts_files(options: dict[str, Any], cfg: dict[str, Any],
                       tokens: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the user's known_hosts files, the global ones); the option replaces UserKnownHostsFile."""
    if options.get("known_hosts") is not None:
        known = _given_files(options["known_hosts"])
    else:
        known = [expand_path(k, tokens, "UserKnownHostsFile")
                 for k in cfg.get("userknownhostsfile", USER_KNOWN_HOSTS)]
    # (ssh takes GlobalKnownHostsFile as written: no ~, no tokens, no ${VAR})
    global_known = list(cfg.get("globalknownhostsfile", SYSTEM_KNOWN_HOSTS))
    return [k for k in known if k.lower() != "none"], [k for k in global_known if k.lower() != "none"]


def _revoked_host_keys(cfg: dict[str, Any], tokens: dict[str, str]) -> str | None:
    """RevokedHostKeys' file (``~``, tokens and variables expanded, as ssh does), or None."""
    value = _first(cfg, "revokedhostkeys")
    if not isinstance(value, str) or value.lower() == "none":
        return None
    return expand_path(value, tokens, "RevokedHostKeys")


def _host_key_policy(options: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The option, else StrictHostKeyChecking: "no" and "accept-new" record new keys, the rest refuse them."""
    policy = options.get("host_key_policy")
    if policy is not None:
        return policy
    strict = str(_first(cfg, "stricthostkeychecking", "ask")).lower()
    return "accept-new" if strict in ("accept-new", "no", "off", "false") else "reject"


def _identity_agent(cfg: dict[str, Any], tokens: dict[str, str]) -> str | None:
    """IdentityAgent: None for $SSH_AUTH_SOCK, "" for no agent, else the socket's path."""
    agent = _first(cfg, "identityagent")
    if agent is None or agent == "SSH_AUTH_SOCK":
        return None
    if agent.lower() == "none":
        return ""
    if agent.startswith("$") and not agent.startswith("${"):
        return os.environ.get(agent[1:], "")
    return expand_path(agent, tokens, "IdentityAgent")


def _forward_agent(cfg: dict[str, Any], tokens: dict[str, str], spec: str) -> tuple[bool, str | None]:
    """``ForwardAgent`` as ssh 9.2 reads it: (on, the socket to forward or None for the agent we
    authenticate with).  ``yes``/``no``, else a path (tokens, ``~``, ``${VAR}``) or ``$VAR``, whose
    variable being unset turns forwarding off, as in ssh."""
    value = _first(cfg, "forwardagent")
    if value is None or value.lower() in ("no", "false"):
        return False, None
    if value.lower() in ("yes", "true"):
        return True, None
    if value.startswith("$") and not value.startswith("${"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value[1:]):
            raise ConfigError("%s: ssh_config: ForwardAgent %r is not a valid environment variable name. Fix: "
                              "correct it in the ssh config" % (spec, value), spec)
        path = os.environ.get(value[1:])
        return (True, path) if path else (False, None)
    return True, expand_path(value, tokens, "ForwardAgent")


def _connect_timeout(options: dict[str, Any], cfg: dict[str, Any], spec: str, host: str) -> tuple[float, str]:
    """(the connect timeout, where it came from: ``Target.timeout_origin``): the option, the config, the default."""
    given = options.get("connect_timeout")
    if given:
        return float(given), ""     # (the caller's own: the fix's connect_timeout names it; hops inherit it)
    configured = _seconds(cfg, "connecttimeout", spec)
    if configured:
        return float(configured), "ConnectTimeout %d for %s in %s" % (
            configured, host, config_read(options) or "the ssh config")
    return DEFAULT_CONNECT_TIMEOUT, ""


def _cap_timeout(jump: Target, timeout: float, origin: str) -> None:
    """Bound every jump host on the way by the target's own connect timeout.

    ``ssh`` bounds the wait for the target's banner (through its jump hosts' ``ssh -W``) by the
    target's ConnectTimeout: a black-holed bastion without a ConnectTimeout of its own failed
    ``ssh node3`` after node3's 5 s, but stalled us for the default 30 s.  A hop's shorter own
    timeout stays."""
    hop: Target | None = jump
    while hop is not None:
        if hop.connect_timeout > timeout:
            hop.connect_timeout = timeout
            hop.timeout_origin = origin + ", which bounds its jump hosts too"
        hop = hop.jump


def timeout_said(target: Target) -> str:
    """`` (ConnectTimeout 5 for node3 in ~/.ssh/config)``: where the timeout a message names came
    from, so that its fix (raise connect_timeout, which beats the config) reads right; "" for the default."""
    return " (%s)" % target.timeout_origin if target.timeout_origin else ""


class _Loop(ConfigError):
    """A jump chain past MAX_JUMPS, raised where it is found and said by the target's ``resolve``."""

    def __init__(self, spec: str, chain: str) -> None:
        super().__init__("%s: ProxyJump goes through more than %d hosts; is there a loop in %s?"
                         % (spec, MAX_JUMPS, chain), spec)
        self.chain = chain


def _resolve_jump(spec: str, jumps: list[str], options: dict[str, Any], config: Config, depth: int) -> Target:
    """The last hop, reached through the hops before it (like ``ssh -J a,b`` runs ``ssh -J a -W host:port b``)."""
    if depth >= MAX_JUMPS:
        raise _Loop(spec, ", ".join(jumps))
    jump_options = {k: options[k] for k in JUMP_INHERITS if k in options}
    # b reached through a, a through its own config
    if len(jumps) > 1:      # already expanded: keep a literal % literal in the hop's own expansion
        jump_options["proxy_jump"] = ",".join(jumps[:-1]).replace("%", "%%")
    return resolve(jumps[-1], jump_options, config, depth + 1)


def _proxy_command(cfg: dict[str, Any], tokens: dict[str, str]) -> str | None:
    """ProxyCommand with its tokens expanded (None for none; used only without ProxyJump)."""
    command = cfg.get("proxycommand")
    if command is None or command.strip().lower() == "none":
        return None
    return expand(command, tokens, "ProxyCommand")


def python_option(value: Any) -> str | tuple | None:
    """``python=`` as a Target holds it: None (find one), shell words, or a tuple tried in order."""
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def setup_option(value: Any) -> tuple:
    """``setup=`` as a Target holds it: a tuple of shell lines."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)
