"""The ssh_config evaluator: files read once, evaluated per host as OpenSSH's ``readconf.c`` does.

Options given by the caller (the spec's user and port, keyword options) are set before
the files are read, the first value obtained for each keyword wins, ``Include`` is
followed where it stands (inside a ``Host`` or ``Match`` block it is conditional).
See ``docs/ssh.md`` for what is honoured.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .tokens import expand, host_tokens, local_user

log = logging.getLogger("remoteproc.ssh")

MAX_INCLUDE_DEPTH = 16
MATCH_EXEC_TIMEOUT = 30.0

#: keywords whose every occurrence adds a value (the others: the first value wins)
_MULTI = frozenset({"identityfile", "certificatefile", "localforward", "remoteforward", "dynamicforward",
                    "sendenv"})
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

    def __init__(self, files: list[tuple[str, str]]) -> None:
        self.files = files      # (path, "user" or "system"), in the order ssh reads them
        self._parsed: dict[str, list[_Line | _Include]] = {}
        self._warned: set[str] = set()

    @classmethod
    def from_text(cls, text: str, name: str = "<text>") -> "Config":
        config = cls([(name, "user")])
        config._parsed[name] = _parse(text, name)
        return config

    def _entries(self, path: str) -> list[_Line | _Include]:
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
            i += 1
            if "=" in word:         # (ssh takes ``host=web`` for ``host web``)
                word, value = word.split("=", 1)
                args.insert(i, value)
            negate = word.startswith("!")
            criterion = word[1:].lower() if negate else word.lower()
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
            host = expand(hostname[0], {"h": self.host}, "HostName") if hostname else self.host
            return match_pattern_list(host, patterns, fold=True)
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
        return False

    def run_exec(self, command: str, where: str) -> bool:
        user = self.options.get("user")
        port = self.options.get("port")
        hostname = self.options.get("hostname")
        host = expand(hostname[0], {"h": self.host}, "HostName") if hostname else self.host
        tokens = host_tokens(self.host, host, int(port[0]) if port else 22,
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
    return Config([(os.path.expanduser("~/.ssh/config"), "user"), ("/etc/ssh/ssh_config", "system")])
