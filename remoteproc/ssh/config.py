"""The ssh_config evaluator: files read once, evaluated per host as OpenSSH's ``readconf.c`` does.

Options given by the caller (the spec's user and port, keyword options) are set before
the files are read, the first value obtained for each keyword wins, ``Include`` is
followed where it stands (inside a ``Host`` or ``Match`` block it is conditional).
Between the two passes ssh makes, the host name is settled (``HostName``, lowercasing,
``CanonicalizeHostname``), and the second pass matches ``Host`` lines against it.
See ``docs/ssh.md`` for what is honoured.
"""

from __future__ import annotations

import difflib
import glob
import grp
import logging
import os
import pwd
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ConnectError
from .tokens import expand, host_tokens, local_user

log = logging.getLogger("remoteproc.ssh")

MAX_INCLUDE_DEPTH = 16
MATCH_EXEC_TIMEOUT = 30.0

#: keywords whose every occurrence adds a value (the others: the first value wins)
_MULTI = frozenset({"identityfile", "certificatefile", "localforward", "remoteforward", "dynamicforward",
                    "sendenv"})
#: of those, the ones where ssh skips a value it has already (a second pass reads the same lines again)
_UNIQUE = frozenset({"identityfile", "certificatefile"})
#: keywords whose argument is the rest of the line, unsplit
_RAW = frozenset({"proxycommand", "localcommand", "remotecommand", "knownhostscommand"})
_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(.*?)\s*$")


@dataclass
class _Line:
    keyword: str
    args: list[str]
    raw: str
    where: str


@dataclass
class _Include:
    patterns: list[str]
    where: str


class Config:
    """ssh configuration files, read once, evaluated per host as OpenSSH does."""

    def __init__(self, files: list[tuple[str, str]], checked: tuple[str, ...] = ()) -> None:
        self.files = files      # (path, "user" or "system"), in the order ssh reads them
        #: files whose owner and mode are checked as ssh checks them (~/.ssh/config; Includes always)
        self.checked = set(checked)
        self._parsed: dict[str, list[_Line | _Include]] = {}
        self._secure: set[str] = set()
        self._warned: set[str] = set()

    @classmethod
    def from_text(cls, text: str, name: str = "<text>") -> "Config":
        config = cls([(name, "user")])
        config._parsed[name] = _parse(text, name)
        return config

    def _entries(self, path: str, host: str, check: bool = False) -> list[_Line | _Include]:
        if path not in self._parsed or (check and path not in self._secure):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    if check and not secure_permissions(os.fstat(f.fileno())):
                        # (ssh: "Bad owner or permissions on FILE", and it stops: whoever can write the
                        # file could make it run any command, through ProxyCommand or Match exec)
                        raise ConfigError(
                            "%s: bad owner or permissions on %s: ssh refuses a configuration file that another "
                            "user could write (and so does remoteproc). Fix: make it yours and not writable by "
                            "others: chmod go-w %s" % (host, path, path), host)
                    text = f.read()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                text = ""
            except OSError as exc:
                raise ConfigError("%s: cannot read ssh config file %s: %s. Fix: make it readable by you (its owner "
                                  "and mode: ls -l %s), or pass ssh_config= another file"
                                  % (host, path, exc.strerror or exc, path), host) from None
            if check:
                self._secure.add(path)
            self._parsed[path] = _parse(text, path)
        return self._parsed[path]

    def lookup(self, host: str, preset: dict[str, Any] | None = None) -> dict[str, Any]:
        """The options for ``host`` (as given), with ``preset`` values obtained first.

        Returns lower-case keywords; multi-valued keywords map to lists, others to
        their first value (a list of words, or the raw text for commands).
        ``hostname`` is the final name, as ssh settles it after its first pass: ``HostName``
        with ``%h`` expanded (else the host as given), lowercased, canonicalised when
        ``CanonicalizeHostname`` asks.  A second pass follows when a ``Match final`` asked for
        one or canonicalisation is enabled; its ``Host`` lines and ``Match host`` see that name.
        """
        state = _State(self, host, dict(preset or {}))
        state.read_all()
        options = state.options
        name = state.match_host().lower()
        mode = canonicalize_mode(options)
        numeric = numeric_address(name, options)
        if numeric is not None:
            name = numeric         # (an address in ssh's numeric form, canonicalisation or not: 127.1 is 127.0.0.1)
        elif mode != "no":
            name = canonicalize(name, options, mode, host)
        options["hostname"] = [name]
        if state.want_final or mode != "no":
            state.final = True
            state.read_all()
        return options

    def warn_once(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            log.warning("%s", text)


def secure_permissions(st: os.stat_result) -> bool:
    """Whether ssh reads a configuration file of this owner and mode (its ``secure_permissions``,
    as Debian and Ubuntu build it): owned by root or this user, not writable by others, and
    writable by its group only when that group's one member is this user (a user private group)."""
    uid = os.getuid()
    if st.st_uid not in (0, uid) or st.st_mode & 0o002:
        return False
    if not st.st_mode & 0o020:
        return True
    try:
        group = grp.getgrgid(st.st_gid)
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return False
    members = 0
    for entry in pwd.getpwall():
        if entry.pw_gid == group.gr_gid:
            members += 1
            if entry.pw_uid != uid:
                return False
    if group.gr_mem:
        members += 1
        if group.gr_mem != [owner]:
            return False
    return members > 0


def _parse(text: str, name: str) -> list[_Line | _Include]:
    entries: list[_Line | _Include] = []
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
            args = split_args(rest)
        except ValueError as exc:
            raise ConfigError("%s: %s in %r" % (where, exc, stripped)) from None
        if not args:
            raise ConfigError("%s: %s needs a value" % (where, m.group(1)))
        if keyword == "include":
            entries.append(_Include(args, where))
        else:
            entries.append(_Line(keyword, args, rest, where))
    return entries


def split_args(text: str) -> list[str]:
    """A config line's arguments as ssh splits them (``argv_split``): blanks separate words, single or
    double quotes group them, a backslash escapes only a quote, a backslash or (unquoted) a blank,
    and ``#`` starts a comment only where a word would start (``/keys/a#b`` is one word)."""
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "#":
            break
        word: list[str] = []
        quote = ""
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n and (text[i + 1] in "'\"\\" or (not quote and text[i + 1] == " ")):
                word.append(text[i + 1])
                i += 2
                continue
            if not quote and c in " \t":
                break
            if not quote and c in "'\"":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                word.append(c)
            i += 1
        if quote:
            raise ValueError("No closing quotation")
        args.append("".join(word))
    return args


def _pattern_re(pattern: str) -> re.Pattern[str]:
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

    def read_all(self) -> None:
        """One pass over the files."""
        for path, kind in self.config.files:
            self.read(path, kind, active=True, depth=0, never_match=False, check=path in self.config.checked)

    def match_host(self) -> str:
        """The name ``Match host`` (and ``%h`` in ``Match exec``) sees: in the second pass the final
        name; before, ``HostName`` so far with ``%h`` the host as given, else the host as given."""
        hostname = self.options.get("hostname")
        if self.final or not hostname:
            return hostname[0] if hostname else self.host
        return expand(hostname[0], {"%": "%", "h": self.host}, "HostName")

    def read(self, path: str, kind: str, active: bool, depth: int, never_match: bool, check: bool = False) -> None:
        # (ssh's second pass matches Host lines against the final host name, the first the host as given)
        name = self.options["hostname"][0] if self.final else self.host
        for entry in self.config._entries(path, self.host, check):
            if isinstance(entry, _Include):
                self.include(entry, kind, active, depth)
            elif entry.keyword == "host":
                active = not never_match and match_pattern_list(name, entry.args)
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
                    self.read(path, kind, active, depth + 1, never_match=not active, check=True)

    def set(self, entry: _Line) -> None:
        key = entry.keyword
        options = self.options
        if key in _MULTI:
            values = options.setdefault(key, [])
            for value in [entry.args[0]] if key in _UNIQUE else entry.args:
                if key not in _UNIQUE or value not in values:
                    values.append(value)
        elif key == "proxyjump":
            # ssh 9.2: a ProxyJump counts only while neither it nor ProxyCommand has a value; a
            # jump host also settles ProxyCommand (to none), "ProxyJump none" does not, so a
            # ProxyCommand of a later block still applies after it
            if "proxyjump" not in options and "proxycommand" not in options:
                options["proxyjump"] = entry.args[0]
                if entry.args[0].lower() != "none":
                    options["proxycommand"] = "none"
        elif key not in options:
            options[key] = entry.raw if key in _RAW else list(entry.args)

    def match(self, entry: _Line) -> bool:
        args = list(entry.args)
        result = True
        criteria = 0
        i = 0
        while i < len(args):
            word = args[i]
            i += 1
            if "=" in word:         # (ssh takes ``host=web`` for ``host web``)
                word, value = word.split("=", 1)
                args.insert(i, value)
            negate = word.startswith("!")
            criterion = word[1:].lower() if negate else word.lower()
            if criterion == "all":
                if criteria > 1 or i < len(args):
                    raise ConfigError("%s: Match all cannot be combined with other criteria (ssh refuses it too)"
                                      % entry.where)
                return result and not negate
            criteria += 1
            if criterion in ("canonical", "final"):
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
                held = self.criterion(criterion, arg, entry.where)
                if held is None:
                    result = False      # (unsupported: the block is skipped, negated or not)
                    continue
                this = held
            else:
                raise ConfigError("%s: unsupported Match criterion %r" % (entry.where, word))
            if this == negate:
                result = False
        return result

    def criterion(self, criterion: str, arg: str, where: str) -> bool | None:
        """Whether one criterion holds; None for one remoteproc does not evaluate."""
        patterns = arg.split(",")
        if criterion == "host":
            return match_pattern_list(self.match_host(), patterns, fold=True)
        if criterion == "originalhost":
            return match_pattern_list(self.host, patterns, fold=True)
        if criterion == "user":
            user = self.options.get("user")
            return match_pattern_list(user[0] if user else local_user(), patterns)
        if criterion == "localuser":
            return match_pattern_list(local_user(), patterns)
        if criterion == "exec":
            return self.run_exec(arg, where)
        self.config.warn_once("%s: Match %s is not supported by remoteproc; the block is skipped"
                              % (where, criterion))
        return None

    def run_exec(self, command: str, where: str) -> bool:
        user = self.options.get("user")
        port = self.options.get("port")
        tokens = host_tokens(self.host, self.match_host(), int(port[0]) if port and port[0].isdigit() else 22,
                             user[0] if user else local_user(), None, None)
        command = expand(command, tokens, "Match exec")
        shell = os.environ.get("SHELL") or "/bin/sh"
        try:
            done = subprocess.run([shell, "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  timeout=MATCH_EXEC_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ConfigError("%s: Match exec %r did not finish within %gs" % (where, command, MATCH_EXEC_TIMEOUT))
        except OSError as exc:
            raise ConfigError("%s: Match exec %r: %s" % (where, command, exc)) from None
        return done.returncode == 0


def canonicalize_mode(options: dict[str, Any]) -> str:
    """``CanonicalizeHostname``: "no", "yes" or "always"."""
    value = options.get("canonicalizehostname")
    word = value[0].lower() if value else "no"
    return {"yes": "yes", "true": "yes", "always": "always"}.get(word, "no")


def _looks_numeric(host: str) -> bool:
    """ssh's quick test for an address (one that did not parse as one is not canonicalised either)."""
    return "%" in host or ":" in host or all(c in "0123456789." for c in host)


def _resolve(name: str, family: int) -> str | None:
    """The canonical name the resolver gives for ``name`` ("" if none), or None when it does not resolve."""
    try:
        infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
    except (OSError, UnicodeError):
        return None
    return (infos[0][3] or "").lower() if infos else None


def _family(options: dict[str, Any]) -> int:
    return {"inet": socket.AF_INET, "inet6": socket.AF_INET6}.get(
        (options.get("addressfamily") or ["any"])[0].lower(), socket.AF_UNSPEC)


def numeric_address(host: str, options: dict[str, Any]) -> str | None:
    """``host`` in its numeric form if it is an IP address, else None."""
    try:
        infos = socket.getaddrinfo(host, None, _family(options), socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        return socket.getnameinfo(infos[0][4], socket.NI_NUMERICHOST)[0].lower() if infos else None
    except (OSError, UnicodeError):
        return None


def canonicalize(host: str, options: dict[str, Any], mode: str, original: str) -> str:
    """``CanonicalizeHostname`` as ssh does it: the host name (lowercased, after ``HostName``) with each of
    ``CanonicalDomains`` appended, the first that resolves (a name ending in a dot: that name), CNAMEs
    followed where ``CanonicalizePermittedCNAMEs`` allows.  Only without ProxyCommand or ProxyJump
    (``ProxyJump none`` included), unless ``always``; not for names with more dots than
    ``CanonicalizeMaxDots`` (1), nor addresses (``numeric_address`` has taken those already).
    Not found: the name as it is (``CanonicalizeFallbackLocal``), or, with
    ``CanonicalizeFallbackLocal no``, a ConnectError, as ssh fails then."""
    family = _family(options)
    if _looks_numeric(host):
        return host
    command = options.get("proxycommand")
    direct = (command is None or command.strip().lower() == "none") and "proxyjump" not in options
    if not direct and mode != "always":
        return host
    rules = _cname_rules(options)
    if host.endswith("."):
        candidates = [host]
    else:
        dots = (options.get("canonicalizemaxdots") or ["1"])[0]
        try:
            max_dots = int(dots)
        except ValueError:
            raise ConfigError("%s: CanonicalizeMaxDots %r is not a number. Fix: correct it in the ssh config"
                              % (original, dots), original) from None
        if host.count(".") > max_dots:
            return _bare_cname(host, rules, family, direct, original)
        candidates = []
        for domain in options.get("canonicaldomains") or []:
            if domain.lower() == "none":
                break
            candidates.append("%s.%s." % (host, domain.lower()))
    for name in candidates:
        cname = _resolve(name, family)
        if cname is not None:
            return _follow_cname(name[:-1], cname, rules)
    fallback = options.get("canonicalizefallbacklocal")
    if fallback and fallback[0].lower() in ("no", "false"):
        raise ConnectError("%s: cannot resolve host name %r in any of the CanonicalDomains (%s), and "
                           "CanonicalizeFallbackLocal is no. Check the name, or the CanonicalDomains of your ssh "
                           "config." % (original, host, " ".join(options.get("canonicaldomains") or []) or "none"),
                           original)
    return _bare_cname(host, rules, family, direct, original)


def _cname_rules(options: dict[str, Any]) -> list[tuple[list[str], list[str]]]:
    """``CanonicalizePermittedCNAMEs``: (source patterns, target patterns) of each rule."""
    rules = []
    for rule in options.get("canonicalizepermittedcnames") or []:
        if rule.lower() == "none":
            return []
        source, _, target = rule.lower().partition(":")
        rules.append((source.split(","), target.split(",")))
    return rules


def _bare_cname(host: str, rules: list[tuple[list[str], list[str]]], family: int, direct: bool,
                original: str) -> str:
    """Not canonicalised: with ``CanonicalizePermittedCNAMEs``, ssh still resolves the name as it is and
    follows a permitted CNAME (a direct connection to a name that does not resolve fails there)."""
    if not rules:
        return host
    cname = _resolve(host, family)
    if cname is None:
        if direct:
            raise ConnectError("%s: cannot resolve host name %r. Check the name or its HostName in your ssh "
                               "config." % (original, host), original)
        return host
    return _follow_cname(host, cname, rules)


def _follow_cname(name: str, cname: str, rules: list[tuple[list[str], list[str]]]) -> str:
    if not cname or cname == name:
        return name
    for source, target in rules:
        if match_pattern_list(name, source, fold=True) and match_pattern_list(cname, target, fold=True):
            return cname
    return name


def close_aliases(name: str, ssh_config: Any = None) -> list[str]:
    """The ``Host`` aliases of the ssh config (``ssh_config=`` as for ``load_config``; its top files,
    not their Includes) that look like ``name``: a name that does not resolve is most often a typo of
    one, which the error then names.  Never raises: it only adds to another error."""
    try:
        config = load_config(ssh_config)
        aliases: list[str] = []
        for path, _kind in config.files:
            for entry in config._entries(path, name):
                if isinstance(entry, _Line) and entry.keyword == "host":
                    aliases.extend(a for a in entry.args if not any(c in a for c in "*?!") and a != name)
    except (ConfigError, OSError, ValueError):
        return []
    return difflib.get_close_matches(name, list(dict.fromkeys(aliases)), n=3, cutoff=0.6)


def did_you_mean(name: str, ssh_config: Any = None) -> str:
    """`` (did you mean 'lab'?)`` for the close aliases of ``name``, or ""."""
    close = close_aliases(name, ssh_config)
    return " (did you mean %s?)" % " or ".join(repr(a) for a in close) if close else ""


def load_config(ssh_config: Any = None) -> Config:
    """The user's ssh configuration, or the given file (``ssh -F``), or none (``False``)."""
    if ssh_config is False:
        return Config([])
    if ssh_config not in (None, True):
        path = os.path.expanduser(os.fspath(ssh_config))
        if str(ssh_config).lower() == "none":
            return Config([])
        if not os.path.exists(path):
            raise ConfigError("ssh_config file %s does not exist" % path)
        if os.path.isdir(path):
            raise ConfigError("ssh_config %s is a directory, not a file" % path)
        # (another kind of file is read as ssh reads it: -F /dev/null is a common way to say "none")
        return Config([(path, "user")])
    user = os.path.expanduser("~/.ssh/config")
    return Config([(user, "user"), ("/etc/ssh/ssh_config", "system")], checked=(user,))
