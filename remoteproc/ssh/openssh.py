"""The user's own ``ssh`` as a transport: its command line, its view of a host, its failures.

With ``transport="openssh"`` nothing of ``~/.ssh/config`` is evaluated here: ``ssh``
reads it itself, with every keyword, ``known_hosts`` with ``@cert-authority`` lines,
certificates, GSSAPI, FIDO keys and an existing ``ControlMaster``.  This module only

- turns our keyword options into ``ssh`` arguments (``ssh_args``);
- asks ``ssh -G`` what it will do for a host (``resolve``), so that processes going to
  the same place share one ``ssh`` process, and errors name the host as ``ssh`` sees it;
- reads ``ssh``'s words when it fails before the agent says hello (``failure``), and
  turns them into our typed errors with the way out;
- when a jump host is in play, writes our options into a config file of ours that
  includes the user's (``jump_config``): ``ssh`` hands ``-F`` (and nothing else of its
  command line) on to the ``ssh -W`` it runs for each jump host, and our options (keys,
  known_hosts, host key policy, timeout, BatchMode) hold for jump hosts too, as they do
  with paramiko.

Standard library only; the relay process runs it (``relay/openssh_channel.py``).
"""

from __future__ import annotations

import atexit
import errno
import functools
import hashlib
import math
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from typing import Any, Optional, Sequence

from ..errors import (
    TURNED_AWAY,
    TURNED_AWAY_FIX,
    AuthenticationError,
    ConfigError,
    ConnectError,
    HostKeyError,
    RemoteProcessError,
    jump_open_failed,
    proxy_command_ended,
)
from . import probe
from .config import did_you_mean
from .spec import DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, parse_spec
from .target import (
    LOOP_FIX,
    MAX_JUMPS,
    Target,
    account_home,
    config_read,
    home_elsewhere,
    own_key_fix,
    python_option,
    setup_option,
    timeout_said,
    typo_hint,
)
from .tokens import expand, host_tokens

#: what ``ssh`` always gets: no terminal, no forwarding that would listen anywhere, no local commands
FIXED_ARGS = ("-T", "-x", "-o", "ClearAllForwardings=yes", "-o", "PermitLocalCommand=no")
#: our options that a password prompt on ``ssh``'s side replaces
NO_SECRETS = ("password", "passphrase")
G_TIMEOUT = 30.0
#: the configuration ssh reads when it is given no -F (user's first, then the system's)
DEFAULT_CONFIGS = ("~/.ssh/config", "/etc/ssh/ssh_config")
#: the first OpenSSH whose ``StrictHostKeyChecking`` takes ``accept-new`` (2017); an older one (7.4 on
#: RHEL and CentOS 7) refuses the word, and with it every connection that carried it
ACCEPT_NEW_SINCE = (7, 6)


def ssh_binary(host: str) -> str:
    """The ``ssh`` program (``$REMOTEPROC_SSH`` or the first ``ssh`` on PATH) to reach ``host``.

    ``$REMOTEPROC_SSH`` is checked here, before anything runs it: a wrong one is a
    ``ConnectError`` that names it and the way out, not an OSError from deep inside."""
    given = os.environ.get("REMOTEPROC_SSH")
    if given:
        found = shutil.which(given)     # (a path: that file, if executable; a bare name: looked up on PATH)
        if not found:
            raise cannot_run(host, given, _why_not(given))
        return found
    found = shutil.which("ssh")
    if not found:
        raise ConnectError("%s: transport='openssh' needs the ssh program, and none is on PATH. Fix: install "
                           "OpenSSH's client (e.g. apt-get install openssh-client), set REMOTEPROC_SSH to its "
                           "path, or use transport='paramiko'." % host, host)
    return found


def _why_not(program: str) -> str:
    """Why ``shutil.which`` did not take ``program``, in the words of an OSError."""
    if os.sep not in program:
        return "no such program on PATH"
    if not os.path.exists(program):
        return os.strerror(errno.ENOENT)
    if os.path.isdir(program):
        return os.strerror(errno.EISDIR)
    return os.strerror(errno.EACCES) + " (not executable)"


def cannot_run(host: str, program: str, why: Any) -> ConnectError:
    """The error for an ssh program that cannot be run (``why``: an OSError or its words)."""
    if isinstance(why, OSError):
        why = why.strerror or str(why)
    on_path = shutil.which("ssh")
    given = os.environ.get("REMOTEPROC_SSH")
    if given:
        origin = "$REMOTEPROC_SSH" if given == program else "$REMOTEPROC_SSH=%s" % given
        fix = "set REMOTEPROC_SSH to an ssh program%s" % (
            " (or unset it to use %s from PATH)" % on_path if on_path and on_path != program else "")
    else:
        origin = "from PATH"
        fix = "install OpenSSH's client, or set REMOTEPROC_SSH to an ssh program"
    return ConnectError("%s: transport='openssh' cannot run the ssh program %s (%s): %s. Fix: %s, or use "
                        "transport='paramiko'." % (host, program, origin, why, fix), host)


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.path.expanduser(os.fspath(value))]
    return [os.path.expanduser(os.fspath(v)) for v in value]


def _quote_list(paths: list[str]) -> str:
    return " ".join('"%s"' % p if " " in p else p for p in paths)


def option_args(spec: str, options: dict[str, Any]) -> list[str]:
    """``ssh`` arguments for the keyword options (the destination and command not included).

    What the caller gives wins over ``~/.ssh/config``, as ``ssh``'s own command line does.
    """
    for name in NO_SECRETS:
        if options.get(name) is not None:
            raise ConfigError("%s: %s= cannot be handed to ssh with transport='openssh'. Fix: use a key or the "
                              "ssh agent, or allow_prompt=True to let ssh ask on your terminal."
                              % (spec, name), spec)
    args = list(FIXED_ARGS)
    if not options.get("allow_prompt"):
        args += ["-o", "BatchMode=yes"]
    return args + _login_args(spec, options) + _route_args(options)


def _check_paths(spec: str, options: dict[str, Any]) -> None:
    """File names that become ssh_config text (``-o``, the jump hosts' config file) must stay one
    value there: a newline or a double quote would end it and start a line of the caller's making."""
    for name in ("key_filename", "known_hosts", "ssh_config"):
        value = options.get(name)
        if isinstance(value, bool):
            continue
        for path in _list(value):
            if '"' in path or any(not c.isprintable() for c in path):
                raise ConfigError("%s: %s=%r holds a double quote or a control character (a newline), which "
                                  "ssh's configuration cannot hold in a file name. Fix: rename the file, or "
                                  "pass transport='paramiko'" % (spec, name, path), spec)


def _login_args(spec: str, options: dict[str, Any]) -> list[str]:
    """Who logs in where, with which config, keys and known hosts."""
    _check_paths(spec, options)
    user, _, port = parse_spec(spec)
    user = options.get("username") or user
    port = options.get("port") or port
    args = []
    if user:
        args += ["-l", user]
    if port:
        args += ["-p", str(port)]
    config = options.get("ssh_config")
    if config is False:
        args += ["-F", "/dev/null"]
    elif isinstance(config, (str, os.PathLike)):
        args += ["-F", os.path.expanduser(os.fspath(config))]
    for key in _list(options.get("key_filename")):
        args += ["-i", key]
    known = _list(options.get("known_hosts"))
    if known:
        args += ["-o", "UserKnownHostsFile=" + _quote_list(known)]
    policy = options.get("host_key_policy")
    if policy is not None:
        if policy != "reject":
            _refuse_accept_new(spec)
        args += ["-o", "StrictHostKeyChecking=" + ("yes" if policy == "reject" else "accept-new")]
    return args


def old_ssh(spec: str) -> Optional[str]:
    """The version of the ``ssh`` that reaches ``spec`` (``OpenSSH_7.4p1``) when it predates
    ``accept-new`` (``ACCEPT_NEW_SINCE``), else None: a newer one, or a program whose ``ssh -V``
    names no OpenSSH version (taken for a newer one, and its own words tell if it is not)."""
    try:
        program = ssh_binary(spec)
    except RemoteProcessError:
        return None     # (said where the program runs)
    return _old_version(program)


@functools.cache
def _old_version(program: str) -> Optional[str]:
    try:
        out = subprocess.run([program, "-V"], stdin=subprocess.DEVNULL, capture_output=True, timeout=G_TIMEOUT,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"OpenSSH_(\d+)\.(\d+)\S*?(?=[\s,]|$)", (out.stderr + out.stdout).decode("ascii", "replace"))
    if found is None or (int(found.group(1)), int(found.group(2))) >= ACCEPT_NEW_SINCE:
        return None
    return found.group(0)


def _refuse_accept_new(spec: str) -> None:
    """host_key_policy='accept-new' with an ssh that has no such policy: say so before ssh refuses
    the option with words that blame the user's configuration."""
    version = old_ssh(spec)
    if version is not None:
        raise ConfigError("%s (transport='openssh'): host_key_policy='accept-new' needs ssh's StrictHostKeyChecking "
                          "accept-new, which this ssh (%s) does not have (OpenSSH %d.%d and later do). Fix: record "
                          "the host's key once with `ssh %s` (check the fingerprint, answer yes) and connect "
                          "without host_key_policy, or use transport='paramiko', which records it"
                          % ((spec, version) + ACCEPT_NEW_SINCE + (spec,)), spec)


def _lax_word(spec: str) -> str:
    """What a config's ``StrictHostKeyChecking no`` becomes (``_strict_args``): ``accept-new``, or, for
    an ssh without it, ``yes``: a host whose key is not recorded is refused (with the way out, see
    ``failure``), never one whose key changed accepted."""
    return "yes" if old_ssh(spec) else "accept-new"


def _route_args(options: dict[str, Any]) -> list[str]:
    """How the connection is made and kept: timeouts, jumps, agent and keys offered, keepalives."""
    args = []
    if options.get("connect_timeout") is not None:
        args += ["-o", "ConnectTimeout=%d" % max(1, math.ceil(options["connect_timeout"]))]
    if options.get("proxy_jump") is not None:
        args += ["-J", options["proxy_jump"]]
    elif options.get("proxy_command") is not None:
        args += ["-o", "ProxyCommand=" + options["proxy_command"]]
    if options.get("allow_agent") is False:
        args += ["-o", "IdentityAgent=none"]
    if options.get("look_for_keys") is False:
        # (no default key files, as with paramiko: an IdentityFile stops ssh adding ~/.ssh/id_*, and
        # "none" names no file; the config's IdentityFile lines and the agent's keys stay)
        args += ["-o", "IdentityFile=none"]
    if options.get("keepalive_interval") is not None:
        args += ["-o", "ServerAliveInterval=%d" % max(1, math.ceil(options["keepalive_interval"]))]
    if options.get("keepalive_count") is not None:
        args += ["-o", "ServerAliveCountMax=%d" % ssh_alive_count(options["keepalive_count"])]
    return args


def ssh_alive_count(count: int) -> int:
    """``ServerAliveCountMax`` for ``ssh`` under a keepalive count of ``count``: wider than the relay's
    bound, so that the relay decides (ssh's check is a backstop).  ssh counts only answers to its
    own keepalive requests, which queue behind a big message going out over a slow link, while the
    relay hears the agent's ``alive`` frames on the way back: with ssh's count as tight as the
    relay's, a slow upload under a short keepalive was taken for a lost link now and then."""
    return 2 * count + 2


def ssh_config_view(spec: str, args: list[str]) -> dict[str, list[str]]:
    """What ``ssh -G`` says it will do for ``spec``: keyword (lower case) -> values."""
    _, host, _ = parse_spec(spec)
    program = ssh_binary(spec)
    # (asked without our BatchMode: Debian's ssh makes ServerAliveInterval 300 its default in batch mode,
    # and -G then shows 300 where the config says nothing: our keepalive bound became 20 minutes, where
    # the documented default is 15 s * 4; the command line still runs ssh with BatchMode=yes)
    args = ["BatchMode=no" if a == "BatchMode=yes" else a for a in args]
    try:
        out = subprocess.run([program, "-G", *args, "--", host], stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=G_TIMEOUT, check=False)
    except OSError as exc:      # (gone since, or not a program: ENOEXEC)
        raise cannot_run(spec, program, exc) from None
    except subprocess.TimeoutExpired:
        wrapper = " or the ssh program %s" % program if os.environ.get("REMOTEPROC_SSH") else ""
        raise ConfigError("%s: 'ssh -G' did not answer within %gs: a Match exec line in %s%s waits. Fix: make "
                          "that command end quickly (`%s -G %s` shows the same wait)"
                          % (spec, G_TIMEOUT, " or ".join(_users_configs(args)), wrapper,
                             program, " ".join(map(shlex.quote, _users_args(args) + [host]))), spec) from None
    if out.returncode != 0:
        said = out.stderr.decode("utf-8", "replace").strip()
        if out.returncode != 255:
            # ssh refuses a configuration with 255; anything else is a program that did not run ssh: a
            # wrapper script whose ssh is gone (127: "not found"), or not ssh at all
            raise cannot_run(spec, program, "it exited with status %d (%s)" % (out.returncode, said.rstrip(".")
                                                                                 or "no message"))
        unsafe = re.search(r"Bad owner or permissions on (\S+)", said)
        # (with the ssh_config= file: ssh -G without it reads another configuration)
        given = _users_args(args)
        fix = ("make it yours and not writable by others: chmod go-w %s (ssh refuses a configuration file that "
               "another user could write)" % unsafe.group(1) if unsafe else
               LOOP_FIX + " (`ssh -G %s` shows the same)" % " ".join(map(shlex.quote, given + [host]))
               if "jumphost loop" in said else
               "correct what it names (`ssh -G %s` shows the same)" % " ".join(map(shlex.quote, given + [host])))
        raise ConfigError("%s: ssh refuses this host or its configuration: %s. Fix: %s"
                          % (spec, said.rstrip(".") or "no message", fix), spec)
    view: dict[str, list[str]] = {}
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        view.setdefault(key.lower(), []).append(value)
    return view


def _users_configs(args: list[str]) -> list[str]:
    """The configuration files that ``args`` make ssh read, as the user named them: a config file of
    ours (jump hosts, ``jump_config``) stands for those it includes."""
    given = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-F"]
    if not given:
        return list(DEFAULT_CONFIGS)
    return [c for path in given for c in _included.get(path, [path])] or ["none"]


def _users_args(args: list[str]) -> list[str]:
    """``-F FILE`` of ``args`` for a command the user can run: the file the user named, not one of ours
    (removed with this program); none where ssh reads its default files anyway."""
    configs = _users_configs(args)
    if len(configs) != 1 or configs[0] in DEFAULT_CONFIGS:
        return []
    return ["-F", configs[0]]


def _seconds(view: dict[str, list[str]], key: str, default: float) -> float:
    value = (view.get(key) or ["none"])[0]
    return float(value) if value.isdigit() and int(value) > 0 else default


def _known_files(ours: Any, shown: Optional[list[str]]) -> list[str]:
    """known_hosts files: the caller's option, else what ``ssh -G`` shows (a list it prints unquoted,
    split at blanks)."""
    if ours is not None:
        return _list(ours)
    return [os.path.expanduser(f) for f in (shown or [""])[0].split()]


def resolve(spec: str, options: dict[str, Any]) -> Target:
    """A ``Target`` for ``spec`` as ``ssh`` will reach it; ``target.ssh_args`` runs it."""
    args = option_args(spec, options)
    if options.get("host_key_policy") == "accept-new":
        _make_known_hosts_dir(spec, _list(options.get("known_hosts")))
    view = ssh_config_view(spec, args)
    _, host, _ = parse_spec(spec)
    jump = (view.get("proxyjump") or [""])[0]
    command = (view.get("proxycommand") or [""])[0]
    defaults: list[str] = []
    if options.get("connect_timeout") is None and _seconds(view, "connecttimeout", 0) == 0:
        # neither we nor the config bound it: ssh would wait for the kernel (minutes); paramiko's default
        options = dict(options, connect_timeout=DEFAULT_CONNECT_TIMEOUT)
        defaults.append("ConnectTimeout %d" % DEFAULT_CONNECT_TIMEOUT)
    target = Target(
        spec=spec,
        hostname=(view.get("hostname") or [host])[0],
        port=int((view.get("port") or ["22"])[0]),
        username=(view.get("user") or [""])[0],
        connect_timeout=_seconds(view, "connecttimeout", options.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT),
        proxy_jump=[_hop_text(j) for j in jump.split(",") if j and jump.lower() != "none"],
        proxy_command=command if command and command.lower() != "none" else None,
        idle_timeout=options.get("idle_timeout") or DEFAULT_IDLE_TIMEOUT,
        python=python_option(options.get("python")), setup=setup_option(options.get("setup")),
        options=dict(options),
        original_host=host,
        # (with host_key_policy given, -G shows ours, not the config's)
        strict_config=options.get("host_key_policy") is None and view.get("stricthostkeychecking") == ["true"],
        # the files ssh reads host keys from, for our hints (a key in a file beside them, ``_stray``)
        known_hosts=_known_files(options.get("known_hosts"), view.get("userknownhostsfile")),
        global_known_hosts=_known_files(None, view.get("globalknownhostsfile")),
        host_key_alias=(view.get("hostkeyalias") or [""])[0] or None,
        control_path=next((p for p in view.get("controlpath") or () if p.lower() != "none"), None),
    )
    args += _session_args(view) + _master_args(view) + _log_args(view)
    # (the target's alone: on the command line, which ssh does not pass on to a jump host's ssh -W)
    lax_word = _lax_word(spec) if view.get("stricthostkeychecking") == ["false"] else "accept-new"
    strict = _strict_args(view, lax_word) if options.get("host_key_policy") is None else []
    # the relay's keepalive (and the agent's, see agent/supervisor.py) as ssh's: the options, else
    # the config's ServerAliveInterval / ServerAliveCountMax, as the paramiko transport reads them
    if options.get("keepalive_interval") is not None:
        target.keepalive_interval = options["keepalive_interval"]
    elif _seconds(view, "serveraliveinterval", 0):
        target.keepalive_interval = _seconds(view, "serveraliveinterval", 0)
    if options.get("keepalive_count") is not None:
        target.keepalive_count = options["keepalive_count"]
    elif _seconds(view, "serveralivecountmax", 0):
        target.keepalive_count = int(_seconds(view, "serveralivecountmax", 0))
    if target.proxy_jump:
        # (our defaults come after the user's config there: a jump host keeps its own ConnectTimeout)
        jumped = _with_jump_config(args, defaults)
        _check_jump_chain(spec, jumped, target.proxy_jump)
        views = _hop_views(jumped, target.proxy_jump)
        master = "ControlMaster=no" not in args and any(_master_args(view) for view in views.values())
        quiet = [hop for hop, view in views.items() if _log_args(view)]
        lax = ([hop for hop, view in views.items() if _strict_args(view)]
               if options.get("host_key_policy") is None else [])
        if master or quiet or lax:
            jumped = _with_jump_config(args + (["-o", "ControlMaster=no"] if master else []), defaults, quiet, lax,
                                       _lax_word(spec) if lax else "accept-new")
        args = jumped
    else:
        args += [a for line in defaults for a in ("-o", line.replace(" ", "=", 1))]
    args += strict
    level = (view.get("loglevel") or ["INFO"])[0].upper()
    if target.control_path is None and (level in ("INFO", "VERBOSE") or level.startswith("DEBUG")):
        target.says_login = "config"
        if level == "INFO":     # (what ssh says more at VERBOSE is dropped: drop_verbose)
            target.says_login = "ours"
            args += ["-o", "LogLevel=VERBOSE"]
    # (ssh's own keepalive from the same settings, as a backstop behind the relay's: ssh_alive_count;
    # the options', if given, are in args already, and ssh takes an option's first value)
    if options.get("keepalive_interval") is None:
        args += ["-o", "ServerAliveInterval=%d" % max(1, math.ceil(target.keepalive_interval))]
    if options.get("keepalive_count") is None:
        args += ["-o", "ServerAliveCountMax=%d" % ssh_alive_count(target.keepalive_count)]
    target.transport = "openssh"
    target.ssh_args = tuple(args) + ("--", host)
    return target


#: session settings of an alias made for a terminal or a tunnel (``ssh -G`` name, the value that suits
#: us): ssh runs our command, with its standard input and output, in the foreground
_SESSION = (("remotecommand", "none"), ("sessiontype", "default"), ("stdinnull", "no"),
            ("forkafterauthentication", "no"))


def _session_args(view: dict[str, list[str]]) -> list[str]:
    """``-o`` arguments that set back what the config sets for the host's sessions: a ``RemoteCommand``
    (ssh refuses it with a command of ours), ``SessionType none``, ``StdinNull`` or
    ``ForkAfterAuthentication`` (the agent would get no input).  Only keywords that ``ssh -G``
    shows, so only those this ssh knows."""
    args = []
    for keyword, value in _SESSION:
        given = (view.get(keyword) or [value])[0]
        if given.lower() != value:
            args += ["-o", "%s=%s" % (keyword, value)]
    return args


def _log_args(view: dict[str, list[str]]) -> list[str]:
    """``-o LogLevel=ERROR`` where the config says ``LogLevel QUIET`` for the host: a quiet ssh fails
    without a word (a refused login, a changed host key), and its failure could only be "ssh failed".
    ERROR still keeps what QUIET is mostly written for quiet (``Warning: Permanently added``, banners)."""
    quiet = (view.get("loglevel") or [""])[0].upper() in ("QUIET", "SILENT")   # (ssh -G says SILENT)
    return ["-o", "LogLevel=ERROR"] if quiet else []


def _strict_args(view: dict[str, list[str]], word: str = "accept-new") -> list[str]:
    """``-o StrictHostKeyChecking=accept-new`` where the config says ``StrictHostKeyChecking no`` for
    the host (and no ``host_key_policy`` was given): with ``no``, ssh connects to a host whose key
    CHANGED (it only turns password logins off), and our agent would run the user's code there and
    send its pickles back; as the paramiko transport reads ``no``, a new key is recorded and a
    changed one refused."""
    return ["-o", "StrictHostKeyChecking=" + word] if view.get("stricthostkeychecking") == ["false"] else []


def _master_args(view: dict[str, list[str]]) -> list[str]:
    """``-o ControlMaster=no`` where the config would make our ``ssh`` the master of a connection that
    ends with it (``ControlMaster`` on, ``ControlPersist no``): the ``ssh`` of another connection of
    ours (another ``setup=``), or one the user types, would ride it, and closing ours (idle, or the
    program's end) would cut theirs.  ``ssh`` still uses a master that is already open, and with
    ``ControlPersist`` the master is a process of its own, which outlives the ``ssh`` that started it."""
    master = (view.get("controlmaster") or ["false"])[0].lower()
    path = (view.get("controlpath") or ["none"])[0]
    persist = (view.get("controlpersist") or ["no"])[0].lower()
    if master in ("false", "no") or path.lower() == "none" or persist not in ("no", "0"):
        return []
    return ["-o", "ControlMaster=no"]


def _hop_text(hop: str) -> str:
    """A jump host as the user writes it: ``ssh -G`` brackets every host given with a port
    (``root@[10.0.0.1]:2222``); only an IPv6 address needs that, and paramiko's messages have none."""
    return _BRACKETED.sub(r"\1", hop)


_BRACKETED = re.compile(r"\[([^\]:]+)\]")


def _hop_views(args: list[str], hops: list[str]) -> dict[str, dict[str, list[str]]]:
    """What ``ssh -G`` says of each jump host (its name -> its view) under ``args``' ``-F``, which is all
    that its ``ssh -W`` gets: whether it would become the master of its connection (``_master_args``:
    that ``ssh`` ends with our connection, and the jump of another one of ours would ride it), or be
    quiet (``_log_args``: a jump host refusing our login said nothing, and the failure read as the
    target's sshd turning us away, tried again for seconds, with MaxStartups as the fix)."""
    config = args[args.index("-F") + 1]
    views = {}
    for hop in hops:
        try:
            user, host, port = parse_spec(hop)
            views[host] = ssh_config_view(hop, ["-F", config] + (["-l", user] if user else []) +
                                          (["-p", str(port)] if port else []))
        except RemoteProcessError:
            continue        # (ssh itself will say what is wrong with it)
    return views


def _check_jump_chain(spec: str, args: list[str], hops: list[str]) -> None:
    """Refuse a ProxyJump chain that comes back to a host on it, before any ``ssh`` runs.

    ``ssh -J a,b`` reaches ``b`` through ``a`` with ``-J`` on the command line (``b``'s own ProxyJump
    no longer counts), but ``a`` through the ProxyJump of ``a``'s own configuration, and so on: ssh
    follows that chain with no loop check, one ``ssh`` process per step, until the machine runs out of
    processes. Only the first hop's chain can loop; each step is an ``ssh -G``, once per connection."""
    config = args[args.index("-F") + 1]
    user, host, port = parse_spec(spec)
    seen = [(user, host, port)]
    hop = hops[0]
    for _ in range(MAX_JUMPS):
        user, host, port = parse_spec(hop)
        if (user, host, port) in seen:
            raise ConfigError("%s: ProxyJump loops: %s -> %s (ssh would start ssh processes without end), in %s. "
                              "Fix: %s" % (spec, " -> ".join(h for _, h, _ in seen), host,
                                           " or ".join(_users_configs(args)), LOOP_FIX), spec)
        seen.append((user, host, port))
        try:
            view = ssh_config_view(hop, ["-F", config] + (["-l", user] if user else []) +
                                   (["-p", str(port)] if port else []))
        except ConfigError as exc:      # (named as the target's: ssh's own loop check, "jumphost loop via")
            said = str(exc)
            raise ConfigError("%s: at the jump host (%s)%s" % (spec, hop, said[len(hop):] if said.startswith(hop)
                                                              else ": " + said), spec) from None
        jump = (view.get("proxyjump") or ["none"])[0]
        if jump.lower() == "none" or not jump:
            return
        hop = jump.split(",")[0]
    raise ConfigError("%s: ProxyJump goes through more than %d hosts (%s ...); is there a loop in %s? Fix: %s"
                      % (spec, MAX_JUMPS, " -> ".join(h for _, h, _ in seen), " or ".join(_users_configs(args)),
                         LOOP_FIX), spec)


def _make_known_hosts_dir(spec: str, known: list[str]) -> None:
    """ssh records a new key in the first known_hosts file but does not create its directory (it
    says so on stderr and goes on: the key would never be pinned); the paramiko transport does."""
    directory = os.path.dirname(known[0]) if known else ""
    if directory and not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError("%s: cannot create %s for the known_hosts file %s (%s). Fix: pass a "
                              "known_hosts= path in a directory you can write." % (spec, directory, known[0],
                                                                                   exc.strerror or exc), spec) from None


def user_command(target: Target, host: Optional[str] = None, jumps: Optional[list[str]] = None) -> str:
    """The ``ssh`` command line a user runs to do by hand what we asked of ssh for ``target`` (or
    for ``host`` through ``jumps``): the same config, keys and known_hosts, with its prompts.

    Either transport's ``target`` (its ``options`` are the caller's): ssh records a host key it
    is told to trust in the first ``UserKnownHostsFile``, the file both transports read first."""
    options = target.options
    user, name, port = parse_spec(target.spec)
    args = ["ssh"]
    config = options.get("ssh_config")
    if config is False or (isinstance(config, str) and config.lower() == "none"):
        args += ["-F", "none"]
    elif isinstance(config, (str, os.PathLike)):
        args += ["-F", os.path.expanduser(os.fspath(config))]     # (a quoted ~ is not expanded by the shell)
    if target.transport == "paramiko":
        args += _paramiko_home_args(target)
    for key in _list(options.get("key_filename")):
        args += ["-i", key]
    if options.get("allow_agent") is False:
        args += ["-o", "IdentityAgent=none"]
    if options.get("look_for_keys") is False:
        args += ["-o", "IdentityFile=none"]
    known = _list(options.get("known_hosts"))
    if known:
        args += ["-o", "UserKnownHostsFile=" + _quote_list(known)]
    if target.strict_config:    # (else ssh would refuse a new key without asking)
        args += ["-o", "StrictHostKeyChecking=ask"]
    if host is not None:        # (a jump spec: ssh takes [host]:port after -J only)
        user, name, port = parse_spec(host)
        args += (["-J", ",".join(jumps)] if jumps else []) + (["-p", str(port)] if port else [])
        return " ".join(shlex.quote(a) for a in args + ["%s@%s" % (user, name) if user else name])
    if options.get("proxy_jump") is not None:
        args += ["-J", options["proxy_jump"]]
    elif options.get("proxy_command") is not None:
        args += ["-o", "ProxyCommand=" + options["proxy_command"]]
    port = options.get("port") or port
    if port:
        args += ["-p", str(port)]
    user = options.get("username") or user
    return " ".join(shlex.quote(a) for a in args + ["%s@%s" % (user, name) if user else name])


def _paramiko_home_args(target: Target) -> list[str]:
    """``ssh`` arguments that make it read the files the paramiko transport read when ``$HOME`` is not
    the account's home: paramiko read ``$HOME/.ssh/config`` and expanded ``~`` to ``$HOME``, ssh reads
    the account's: a suggested ``ssh node7`` could not resolve an alias of ``$HOME``'s config, and
    would record a host key where the next start never looks."""
    home = home_elsewhere()
    if home is None:
        return []
    args = []
    if target.options.get("ssh_config") in (None, True):
        account = account_home() or ""
        if os.path.isfile(os.path.join(home, ".ssh", "config")):
            args += ["-F", os.path.join(home, ".ssh", "config")]
        elif os.path.isfile(os.path.join(account, ".ssh", "config")):
            # (paramiko read no user config, only the system's; ssh would read the account's)
            args += ["-F", DEFAULT_CONFIGS[1] if os.path.isfile(DEFAULT_CONFIGS[1]) else "none"]
    if target.options.get("known_hosts") is None and target.known_hosts:
        args += ["-o", "UserKnownHostsFile=" + _quote_list(target.known_hosts)]
    return args


# -- jump hosts ----------------------------------------------------------------------------------

#: the options of ours that jump hosts inherit (as with paramiko), as ssh_config keywords
_INHERITED = {"-i": "IdentityFile", "UserKnownHostsFile": "UserKnownHostsFile",
              "StrictHostKeyChecking": "StrictHostKeyChecking", "ConnectTimeout": "ConnectTimeout",
              "IdentityAgent": "IdentityAgent", "IdentityFile": "IdentityFile", "BatchMode": "BatchMode",
              "ControlMaster": "ControlMaster"}


def jump_config(args: list[str], defaults: Sequence[str] = (), quiet: Sequence[str] = (),
                lax: Sequence[str] = (), lax_word: str = "accept-new") -> tuple[str, list[str], list[str]]:
    """For ``option_args``' ``args``: the text of a config file that sets our inherited options for
    every host (jump hosts too) and then includes the user's configuration, the arguments that
    remain on the command line (``-F`` and the inherited ones moved into the file), and the user's
    configuration files it includes.

    Settings before any ``Host`` line hold for every host, and the first value ssh obtains wins: the
    file ranks our options above the user's configuration, as the command line did.  ``defaults``
    (config lines) come after it, under ``Host *``: they hold where the user's configuration is silent.
    ``quiet``: jump hosts that get ``LogLevel ERROR`` for the ``LogLevel QUIET`` of their configuration;
    ``lax``: those that get ``StrictHostKeyChecking accept-new`` (``lax_word``) for its ``no`` (``_strict_args``).
    """
    lines = ["# written by remoteproc: our options for the target and its jump hosts, then yours"]
    rest: list[str] = []
    configs: list[str] = list(DEFAULT_CONFIGS)
    i = 0
    while i < len(args):
        flag = args[i]
        value = args[i + 1] if flag in ("-i", "-o", "-F", "-l", "-p", "-J") else None
        name, _, setting = (value or "").partition("=")
        if flag == "-F":
            configs = [] if value in ("none", "/dev/null") else [os.path.abspath(value or "")]
        elif flag == "-i":
            lines.append('IdentityFile "%s"' % value)
        elif flag == "-o" and name in _INHERITED:
            lines.append("%s %s" % (_INHERITED[name], setting))
        else:
            rest += [flag] if value is None else [flag, value]
        i += 1 if value is None else 2
    if quiet:       # (jump hosts whose config says LogLevel QUIET: see _log_args; then back to every host)
        lines += ["Host %s" % " ".join(quiet), "LogLevel ERROR", "Host *"]
    if lax:         # (jump hosts whose config says StrictHostKeyChecking no: see _strict_args)
        lines += ["Host %s" % " ".join(lax), "StrictHostKeyChecking " + lax_word, "Host *"]
    configs = [_account_path(c) for c in configs]
    lines += ['Include "%s"' % c for c in configs]
    if defaults:
        lines += ["Host *", *defaults]
    return "\n".join(lines) + "\n", rest, configs


def _account_path(path: str) -> str:
    """``path`` with ``~`` as ssh reads ``~/.ssh/config`` when given no ``-F``: the home directory of the
    account (password database), not ``$HOME`` (Python's ``~``, and also what ``~`` in an ``Include``
    means to ssh), which sudo without -H and some containers set elsewhere: the jump hosts' config
    file then included another ``~/.ssh/config`` than the one the target was resolved with."""
    if path.startswith("~/"):
        import pwd

        try:
            return os.path.join(pwd.getpwuid(os.getuid()).pw_dir, path[2:])
        except KeyError:
            pass
    return os.path.expanduser(path)


_configs_lock = threading.Lock()
_configs_dir: Optional[str] = None
#: a config file of ours -> the user's files it includes (what an error names instead of ours)
_included: dict[str, list[str]] = {}
CONFIGS_PREFIX = "remoteproc-ssh-"      # then pid and pid namespace: a killed relay's files are found by them


def _with_jump_config(args: list[str], defaults: Sequence[str], quiet: Sequence[str] = (),
                      lax: Sequence[str] = (), lax_word: str = "accept-new") -> list[str]:
    """``args`` with our inherited options in a config file of this process (see ``jump_config``)."""
    global _configs_dir
    text, rest, configs = jump_config(args, defaults, quiet, lax, lax_word)
    with _configs_lock:
        if _configs_dir is None:
            _sweep_stale_configs(tempfile.gettempdir())
            _configs_dir = tempfile.mkdtemp(prefix="%s%d-%s-" % (CONFIGS_PREFIX, os.getpid(), _pid_namespace()))
            atexit.register(remove_configs)
        path = os.path.join(_configs_dir, hashlib.sha256(text.encode()).hexdigest()[:16] + ".conf")
        if not os.path.exists(path):
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
        _included[path] = configs
    return rest + ["-F", path]


def _pid_namespace() -> str:
    """The inode of this process's pid namespace ("" where /proc does not say): a pid means
    something only within its namespace, and containers may share /tmp with their host."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _sweep_stale_configs(tmp: str) -> None:
    """Remove the config directories of our relays that were killed: SIGKILL runs no atexit.

    Only directories of this user, named after a process of our pid namespace that no
    longer exists."""
    ns = _pid_namespace()
    try:
        names = os.listdir(tmp) if ns else []
    except OSError:
        return
    for name in names:
        if not name.startswith(CONFIGS_PREFIX):
            continue
        pid, _, rest = name[len(CONFIGS_PREFIX):].partition("-")
        if not pid.isdigit() or rest.partition("-")[0] != ns or int(pid) == os.getpid():
            continue
        path = os.path.join(tmp, name)
        try:
            st = os.lstat(path)
            if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass        # (alive under another user, or gone meanwhile)


def remove_configs() -> None:
    """Remove the config files of this process (when its ssh processes are gone)."""
    global _configs_dir
    with _configs_lock:
        if _configs_dir is not None:
            shutil.rmtree(_configs_dir, ignore_errors=True)
            _configs_dir = None
            _included.clear()


# -- ssh's failures ----------------------------------------------------------------------------

#: a changed host key: ssh's words
_CHANGED = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed", re.I)
_PATTERNS: list[tuple[re.Pattern, type, str]] = [
    (_CHANGED, HostKeyError,
     "the host's key has CHANGED since it was recorded in known_hosts: this may be an attack. Fix: if the "
     "change is expected, remove the old key (ssh-keygen -R, with the name ssh printed below), then connect "
     "once with `{ssh}`"),
    (re.compile(r"host key .*revoked|REVOKED HOST KEY", re.I), HostKeyError,
     "the host's key is marked @revoked in known_hosts. Fix: ask the host's administrator"),
    (re.compile(r"Host key verification failed|No .*host key is known for", re.I), HostKeyError,
     "ssh does not know the host's key. Fix: connect once with `{ssh}` and check the fingerprint, or pass "
     "host_key_policy='accept-new' to record it on first use{stray}"),
    (re.compile(r"Too many authentication failures", re.I), AuthenticationError,
     "the server hung up after too many keys were offered (every ssh-agent key counts against its "
     "MaxAuthTries). Fix: set IdentitiesOnly yes with the right IdentityFile for this host in your ssh "
     "config, or pass key_filename= with allow_agent=False; then check that `{ssh}` logs in"),
    (re.compile(r"Permission denied|no mutual signature", re.I),
     AuthenticationError,
     "the server refused every way ssh tried to log in. Fix: check that `{ssh}` logs in without a prompt "
     "(BatchMode) with this user and key (a key with a passphrase: load it into ssh-agent with ssh-add), or "
     "pass allow_prompt=True for a login that asks"),
    (re.compile(r"Could not resolve hostname|Name or service not known|nodename nor servname", re.I),
     ConnectError, "the host name does not resolve. Fix: check the name{typo}{config}"),
    (re.compile(r"Connection refused", re.I), ConnectError,
     "nothing listens on that port. Fix: check the port and that sshd runs there"),
    (re.compile(r"timed out|Connection timeout", re.I), ConnectError,
     "the connection timed out. Fix: check that the host is up and reachable, or raise connect_timeout="),
    (re.compile(r"No route to host|Network is unreachable", re.I), ConnectError,
     "the host is unreachable. Fix: check the network path (VPN, ProxyJump)"),
]
#: an unknown host key with an ssh that cannot record one on first use (``ACCEPT_NEW_SINCE``)
_UNKNOWN_TO_OLD_SSH = ("ssh does not know the host's key, and this ssh ({version}) cannot record it on first use "
                       "(StrictHostKeyChecking accept-new came with OpenSSH {since}; a config's "
                       "StrictHostKeyChecking no is taken as yes, never as accepting a changed key). Fix: connect "
                       "once with `{ssh}`, check the fingerprint and answer yes, or use transport='paramiko', which "
                       "records it{stray}")
#: a login refused with allow_prompt=True where ssh had no terminal to ask on: it asks nothing, says nothing
#: of it, and the usual advice (pass allow_prompt=True) was given to a program that had
_NO_TERMINAL = ("the server refused every way ssh tried to log in, and ssh could not ask for a passphrase or "
                "password: allow_prompt=True, but this program has no terminal (started by cron, a service, setsid, "
                "or as a daemon). Fix: load the key into ssh-agent (ssh-add) and give the program its SSH_AUTH_SOCK, "
                "or use a key without a passphrase; then check that `{ssh}` logs in with BatchMode=yes")


def _has_terminal() -> bool:
    """Whether this process has a controlling terminal, on which ``ssh`` would ask (``/dev/tty``)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


#: where ssh found the old key of a changed one, and the command it gives to remove it
_OFFENDING = re.compile(r"Offending (?:\S+ )?key (?:for IP )?in (\S+):(\d+)")
_REMOVE_WITH = re.compile(r"remove with:\s*(ssh-keygen -f .* -R .*?)\s*$", re.M)
#: how the lines start that ssh writes only from ``LogLevel VERBOSE`` on (``DEBUG1``..``DEBUG3`` in the
#: config, ``-v`` in an ssh wrapper): its debug lines, the channel list of one of them, its statistics
CHATTER = re.compile(r"debug[1-3]: |  #\d+ |Authenticated to \S+ \(|Transferred: sent |Bytes per second: |"
                     r"OpenSSH_[0-9][^ ]*,? |\S+ line \d+: Unsupported option ")
#: ``Authenticated to HOST ([ADDRESS]:PORT) using "publickey".`` (``(via proxy)`` through a ProxyJump or
#: ProxyCommand; without ``using ...`` before OpenSSH 7.8)
_AUTHENTICATED = re.compile(r"^Authenticated to (\S+) \((?:\[[^\]]*\]:(\d+)|(via proxy))\)", re.M)
#: those lines and the frame of ssh's warnings (``@@@@``): never the failure itself
_NOISE = re.compile(r"^(?:(?:%s).*|@+\s*|@ .*@\s*)$\n?" % CHATTER.pattern, re.M)
#: what ssh says of a key file it ignores (``UNPROTECTED PRIVATE KEY FILE!``), and of a refused login
_UNPROTECTED = re.compile(r"Permissions 0?[0-7]+ for '([^']+)' are too open")
_DENIED = re.compile(r"Permission denied", re.I)
#: what ssh says of a key file it cannot read (another owner, mode 0000): it goes on without it
_UNREADABLE = re.compile(r'Load key "([^"]+)": Permission denied')
#: ... and of the login the server refused (not the key file)
_LOGIN_DENIED = re.compile(r"Permission denied \(")
#: what ssh says when the ``ssh -W`` it ran for a jump host ended before the target's banner
_JUMP_ENDED = re.compile(r"kex_exchange_identification|Connection closed by UNKNOWN port 65535", re.I)
#: what ssh says of a server whose first words are not an SSH identification (binary: TLS, ...)
_GARBLED = re.compile(r"banner line contains invalid characters|banner exchange: .*invalid format")
#: what ssh says when a server closed the connection before its banner (sshd past MaxStartups) ...
_TURNED_AWAY = re.compile(r"(kex|ssh)_exchange_identification: (read: )?Connection (closed by remote host|reset "
                          r"by peer)", re.I)
#: ssh's own lines when the stream ended before a banner (what else it printed came from its ProxyCommand)
_ENDED_BEFORE_BANNER = re.compile(r"^\s*((kex|ssh)_exchange_identification: .*|Connection (closed|reset) by .*)$",
                                  re.I | re.M)
#: ... and what it says first when the jump host's ``ssh -W`` could not reach the next hop (not that)
_FORWARD_FAILED = re.compile(r"open failed|forwarding failed", re.I)
#: what ssh says when no banner came through its ProxyCommand (the jump hosts' ``ssh -W``) in time
_PROXY_SILENT = re.compile(r"Connection to UNKNOWN port 65535 timed out", re.I)
#: the jump host's sshd's answer when it did not open the way on (``channel 0: open failed: REASON``)
_OPEN_FAILED = re.compile(r"open failed: (.*?)\s*$", re.I | re.M)


def _stray(target: Target) -> str:
    """``; note: a key for this host is in FILE ...`` (``hostkeys.stray_hint``), or ""."""
    from .hostkeys import stray_hint

    clause = stray_hint(target)
    return "; note: " + clause if clause else ""


def route(target: Target) -> list[str]:
    """Every jump host on the way to ``target``, first first: a jump host's own ProxyJump
    (``ProxyJump j2`` where j2's config says ``ProxyJump j1``) comes before it, as ssh goes."""
    if target.jump is None or not target.proxy_jump:
        return list(target.proxy_jump)
    return route(target.jump) + [target.proxy_jump[-1]]


#: the tokens ssh expands in a ProxyCommand (``expand_proxy_command`` in its sshconnect.c)
_PROXY_TOKENS = "%hknpr"


def proxy_command_run(target: Target) -> str:
    """The target's ProxyCommand as ssh ran it, the command a user can paste into a shell: ``ssh -G``
    shows it as written, and ssh expands its ``%h`` (host), ``%p`` (port), ``%r`` (remote user),
    ``%n`` (the name as given), ``%k`` (host key alias) and ``%%`` only when it runs it, from the
    values ``ssh -G`` reported (``target``'s); as written if it has a token ssh does not know there."""
    command = target.proxy_command or ""
    given = target.original_host or target.hostname
    tokens = host_tokens(given, target.hostname, target.port, target.username, target.host_key_alias, None)
    try:
        return expand(command, {k: v for k, v in tokens.items() if k in _PROXY_TOKENS}, "ProxyCommand")
    except ConfigError:
        return command


#: the name ssh could not resolve (``ssh: Could not resolve hostname NAME: ...``)
_UNRESOLVED = re.compile(r"Could not resolve hostname (\S+?):? ", re.I)


def _typo(target: Target, said: str, at_jump: bool) -> str:
    """`` (did you mean 'bast'?)`` for a name that did not resolve and is a typo of an alias of the
    config (``typo_hint``): the target's, or at a jump host the hop's (``ProxyJump bastoin`` where
    ``bast`` is an alias), the hop ssh names, when its name went to the resolver unchanged."""
    if not at_jump:
        return typo_hint(target)
    named = _UNRESOLVED.search(said)
    hops = route(target)
    for hop in hops:
        try:
            host = parse_spec(hop)[1]
        except RemoteProcessError:
            continue
        # (ssh names the host it could not resolve; a HostName of the hop's makes it another name, no typo)
        if (named.group(1).lower() == host.lower()) if named is not None else len(hops) == 1:
            return did_you_mean(host, target.options.get("ssh_config"))
    return ""


def _on_the_way(target: Target, said: str, head: Optional[str], words: str) -> Optional[ConnectError]:
    """A failure of what carries the connection (the jump hosts, whose part of ``said`` is ``head``
    when the jump's ``ssh -W`` ended first; the ProxyCommand), or None."""
    if target.proxy_jump and _PROXY_SILENT.search(said):
        # ssh's own timeout ran out waiting for a banner through the jump hosts' ``ssh -W``: their
        # connect timeout is no shorter, so ssh's comes first and names no host ("UNKNOWN port
        # 65535" is the ``ssh -W``); it read as the target's fault, while most often the jump host
        # is the one that does not answer
        hops = route(target)
        ssh = "`, then `".join(user_command(target, hop, hops[:i]) for i, hop in enumerate(hops))
        return ConnectError(
            "%s (transport='openssh'): no SSH banner came through the jump host (%s) within the connect timeout: "
            "the jump host does not answer, or the host behind it does not. Fix: check that `%s` logs in "
            "(ssh -v shows where it stops), then the host, or raise connect_timeout=: %s"
            % (target.display, ",".join(hops), ssh, words), target.display)
    opened = _OPEN_FAILED.search(head) if head is not None else None
    if opened is not None:
        # a jump host could not reach the next hop: its words, not ssh's ("Connection refused"
        # would read as the jump host's own port)
        hops = route(target)
        to = "%s:%d" % (target.hostname, target.port)
        jump, to = (hops[0], to) if len(hops) == 1 else (",".join(hops), "the next hop on the way to " + to)
        return ConnectError("%s (transport='openssh'): %s: %s" % (
            target.display, jump_open_failed("(%s)" % jump if len(hops) == 1 else "(one of %s)" % jump, to,
                                      opened.group(1).rstrip(".")), words), target.display)
    if target.proxy_command and _TURNED_AWAY.search(said) and _ENDED_BEFORE_BANNER.sub("", said).strip():
        # the ProxyCommand ended, saying why ("Connection refused" there is its own connection's, perhaps
        # to a jump host of its own, not the target's port); not a server turning us away
        ended = proxy_command_ended(proxy_command_run(target), target.hostname, target.port)
        return ConnectError("%s (transport='openssh'): %s: %s" % (target.display, ended, words), target.display)
    return None


def failure(target: Target, status: Optional[int], said: str) -> Optional[RemoteProcessError]:
    """The typed error for ``ssh``'s exit before the agent's hello, or None when it was not ssh's
    own failure (status 255 is ssh's; other statuses are the remote command's).

    Through jump hosts, a failure that ends with the jump's ``ssh -W`` gone before the target
    said a word happened at a jump host: the message says so and its fix names the jump."""
    if status != 255:
        return None
    display = target.display
    said = ssh_words(said)
    words = " ".join(line.strip() for line in said.splitlines() if line.strip()) or _said_nothing()
    ended = _JUMP_ENDED.search(said)
    at_jump = bool(target.proxy_jump) and ended is not None
    head = said[:ended.start()] if at_jump and ended is not None else said
    # (what the jump's ``ssh -W`` said is the reason; ssh's own lines after it, ``kex_exchange_identification:
    # Connection closed by remote host``, ``Connection closed by UNKNOWN port 65535``, only say that it ended)
    full = words
    if at_jump and head.strip():
        words = " ".join(line.strip() for line in head.splitlines() if line.strip())
    if at_jump:
        hops = route(target)
        ssh = "`, then `".join(user_command(target, hop, hops[:i]) for i, hop in enumerate(hops))
        where = "at the jump host (%s): " % ",".join(hops)
    else:
        ssh, where = user_command(target), ""
    hint = _home_hint(target.options)
    words, full = words + hint, full + hint
    config = config_read(target.options)
    config = "" if config is None else ", or its HostName in %s" % config
    on_the_way = _on_the_way(target, said, head if at_jump else None, words)
    if on_the_way is not None:
        return on_the_way
    unprotected = _UNPROTECTED.findall(head)
    if unprotected and _DENIED.search(head):
        keys = list(dict.fromkeys(unprotected))
        return AuthenticationError(
            "%s (transport='openssh'): %sssh ignored the private key %s: others can read it (ssh uses no key file "
            "whose permissions are too open). Fix: chmod 600 %s: %s"
            % (display, where, ", ".join(keys), " ".join(shlex.quote(k) for k in keys), words), display)
    unreadable = _UNREADABLE.findall(head)
    if unreadable and _LOGIN_DENIED.search(head):
        keys = list(dict.fromkeys(unreadable))
        return AuthenticationError(
            "%s (transport='openssh'): %sssh could not read the private key %s (permission denied), and no other "
            "way to log in worked. Fix: make it yours, readable by you only: %s: %s"
            % (display, where, ", ".join(keys), "; ".join(own_key_fix(k) for k in keys), words), display)
    changed = _changed_key(head)
    if changed is not None:
        return HostKeyError("%s (transport='openssh'): %s%s, then connect once with `%s` and check the new key's "
                            "fingerprint: %s" % (display, where, changed, ssh, words), display)
    for pattern, kind, advice in _PATTERNS:
        if pattern.search(head):
            if kind is AuthenticationError and target.options.get("allow_prompt") and not _has_terminal():
                advice = _NO_TERMINAL
            if "{stray}" in advice and old_ssh(target.spec):
                advice = _UNKNOWN_TO_OLD_SSH.format(version=old_ssh(target.spec), since="%d.%d" % ACCEPT_NEW_SINCE,
                                                    ssh="{ssh}", stray="{stray}")
            fix = advice.format(ssh=ssh, config=config, typo=_typo(target, head, at_jump) if "{typo}" in advice else "",
                                stray=_stray(target) if "{stray}" in advice and not at_jump else "")
            return kind("%s (transport='openssh'): %s%s: %s" % (display, where, fix, words), display)
    turned = _TURNED_AWAY.findall(said)
    if turned and not _FORWARD_FAILED.search(said):
        # through a jump, a drop by the jump host's sshd shows twice (its ``ssh -W``'s words, then
        # ssh's own); one by the target's, once: that is not the jump host's doing
        if at_jump and len(turned) < 2:
            ssh, where = user_command(target), ""
        verbose = "ssh -v" + ssh.split("`")[0][len("ssh"):]
        error = ConnectError("%s (transport='openssh'): %sthe server closed the connection before its SSH banner: "
                             "%s: %s. %s; `%s` shows more." % (display, where, TURNED_AWAY, full.rstrip("."),
                                                              TURNED_AWAY_FIX, verbose), display)
        error.turned_away = True
        return error
    if _GARBLED.search(said) and not target.proxy_jump and not target.proxy_command:
        return probe.not_ssh_error(target, "ssh read %s" % words.rstrip("."))
    return ConnectError("%s (transport='openssh'): %sssh failed: %s. Fix: run `%s` to see why" %
                        (display, where, full.rstrip("."), "ssh -v" + ssh.split("`")[0][len("ssh"):]), display)


#: what ssh says at LogLevel VERBOSE and not at INFO: its login, its byte counts at the end, and the
#: keywords of a config that this ssh was built without
_VERBOSE_LINE = re.compile(rb"^(?:Authenticated to \S+ \(|Transferred: sent |Bytes per second: |\S+ line \d+: "
                           rb"Unsupported option ).*\n?", re.M)


def drop_verbose(said: bytes) -> bytes:
    """``said`` without the lines that ssh says only because we raised its LogLevel to VERBOSE."""
    return _VERBOSE_LINE.sub(b"", said) if b" " in said else said


def logged_in(target: Target, said: str) -> bool:
    """``ssh`` said it logged in to ``target`` (``says_login``), not a jump host's ``ssh -W``: through a
    ProxyJump or ProxyCommand the target's line says ``(via proxy)`` (a jump host's names its address,
    often on the same port 22, or, behind a jump host of its own, its own name)."""
    proxied_target = bool(target.proxy_jump or target.proxy_command)
    for host, port, proxied in _AUTHENTICATED.findall(said):
        if proxied_target:
            if proxied and host.lower() == target.hostname.lower():
                return True
        elif port and int(port) == target.port:
            return True
    return False


def login_stalled(target: Target, waited: float) -> ConnectError:
    """The error of an ``ssh`` that got no further than the key exchange or the login in ``waited`` s."""
    return ConnectError(
        "%s: the SSH login did not finish within %gs%s: ssh got no answer to its key exchange or its login "
        "(sshd there waits on something, as an account lookup: LDAP, SSSD, an AuthorizedKeysCommand; or the "
        "network drops the larger packets, an MTU problem). Fix: `%s -v true` shows where it stops; a slow "
        "server: raise connect_timeout=." % (target.display, waited, timeout_said(target), user_command(target)),
        target.display)


def ssh_words(said: str) -> str:
    """What ssh said on stderr without its debug lines (``LogLevel DEBUG3`` in the config: thousands of
    them, see ``CHATTER``) and the ``@@@`` frame of its warnings: the words an error carries."""
    return _NOISE.sub("", said)


def _said_nothing() -> str:
    """The words of an ssh that failed without a word: ``LogLevel QUIET`` (which we raise to ERROR for
    our own ``ssh``, see ``resolve``) or ``-q`` in an ssh wrapper that we cannot overrule."""
    program = os.environ.get("REMOTEPROC_SSH") or shutil.which("ssh") or "ssh"
    return ("ssh said nothing (is it told to be quiet? -q or LogLevel QUIET in the ssh program %s or in the "
            "ssh configuration)" % program)


def _changed_key(said: str) -> Optional[str]:
    """For a changed host key: what happened and the fix, with the known_hosts file and line of the old
    key and the ``ssh-keygen -R`` command that removes it, as ssh names them (None if it did not)."""
    if not _CHANGED.search(said):
        return None
    where = _OFFENDING.search(said)
    remove = _REMOVE_WITH.search(said)
    if where is None or remove is None:
        return None
    return ("the host's key has CHANGED since it was recorded in %s:%s: this may be an attack. Fix: if the change "
            "is expected (the host was reinstalled), remove the old key with `%s`" % (
                where.group(1), where.group(2), remove.group(1)))


#: the key files ssh tries when none is named (ssh_config(5), IdentityFile)
DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa")


def _home_hint(options: dict[str, Any]) -> str:
    """What ssh did with the user's config that the failure may come from: it goes on without a
    ~/.ssh/config it cannot read, silently; and it finds ~/.ssh in the account's home directory,
    never in $HOME (Python's ``~``, and the paramiko transport's): where the two differ and $HOME
    has an ssh config, say so."""
    import pwd

    home = os.environ.get("HOME")
    try:
        account = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return ""
    if options.get("ssh_config") is None:
        theirs = os.path.join(account, ".ssh", "config")
        if os.path.exists(theirs) and not os.access(theirs, os.R_OK):
            # (ssh goes on without a ~/.ssh/config it cannot open, and says nothing)
            return " (note: ssh could not read %s and went on without it: make it readable by you, ls -l shows its " \
                   "owner and mode)" % theirs
    if options.get("ssh_config") is not None or not home or os.path.realpath(home) == os.path.realpath(account):
        return ""
    mine = os.path.join(home, ".ssh", "config")
    if not os.path.exists(mine):
        return ""
    dot = os.path.dirname(mine)
    extra = []
    known = os.path.join(dot, "known_hosts")
    if os.path.exists(known) and options.get("known_hosts") is None:
        extra.append("known_hosts=%r" % known)
    keys = [os.path.join(dot, name) for name in DEFAULT_KEYS if os.path.exists(os.path.join(dot, name))]
    if keys and options.get("key_filename") is None:
        extra.append("key_filename=%r" % (keys[0] if len(keys) == 1 else keys))
    # (ssh expands ~ in that config to the account's home too: the files of $HOME/.ssh go by name)
    return (" (note: ssh reads %s/.ssh, not $HOME=%s: the paramiko transport, which follows $HOME, uses "
            "the files there (transport='paramiko'); for ssh, pass %s)"
            % (account, home, ", ".join(["ssh_config=%r" % mine] + extra)))
