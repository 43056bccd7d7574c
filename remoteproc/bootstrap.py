"""Start the remote agent over an exec channel: the command, the shipped source, the hello.

The remote host needs nothing but a Python interpreter: the command is a one-line
stub that reads a zlib-compressed blob of exactly N bytes from stdin and executes
it; the blob holds the agent's modules and cloudpickle's, compiled here.  The blob
goes once the command says ``READY`` (the login shell's startup files have run by
then, so none of them can read it); the local side sends nothing more until the
agent's hello, so the stub can never read past its blob.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import random
import re
import shlex
import sys
import threading
import time
from typing import Any, Optional

from .agent import PROTOCOL_VERSION, frames
from .errors import BootstrapError, ConnectError
from .relay.channel import AgentChannel, AgentOpener, send_all, wait_readable

log = logging.getLogger("remoteproc.relay")


def _package_sources(package: str) -> dict[str, tuple[bool, str, str]]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BootstrapError("cannot find the %s package to ship to the remote host" % package)
    root = list(spec.submodule_search_locations)[0]
    out = {}
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            mod = package if name == "__init__.py" else package + "." + name[:-3]
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                out[mod] = (name == "__init__.py", f.read(), path)
    return out


AGENT_ENV = "REMOTEPROC_AGENT_ENV"
"""Environment variable of the local process: a JSON object of environment variables for
the remote agent's interpreter.  Unset in normal use.  When set, the shipped modules also
keep their local file names, for tools that follow the agent on this same machine:
``remoteproc.testing.coverage`` sets it so that the test suite measures its agents."""


def agent_env() -> dict[str, str]:
    """The environment that ``AGENT_ENV`` asks for on the agent's command line ({} in normal use)."""
    text = os.environ.get(AGENT_ENV)
    if not text:
        return {}
    import json

    try:
        env = json.loads(text)
    except ValueError:
        env = None
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise BootstrapError("%s must be a JSON object of strings, not %r; unset it" % (AGENT_ENV, text))
    return env


_blob_lock = threading.Lock()


def agent_blob(real_paths: bool = False) -> bytes:
    """The compressed blob the stub runs: ``marshal`` of (boot.py's code, shipped modules).

    The modules (the agent's and cloudpickle's) are compiled here, without docstrings,
    so that the remote interpreter only loads them: compiling them there took 25-35 ms
    of every cold start, for less to send (when measured: 64 KB instead of 37 KB of source; today
    about 175 KB instead of 100 KB).
    The stub has checked that the remote runs this major.minor, whose bytecode this is.
    Shipped modules are named ``<remoteproc>/...`` in remote tracebacks, or by their
    local paths with ``real_paths`` (see ``AGENT_ENV``).
    """
    with _blob_lock:        # (built once per process, and possibly from two threads at once)
        return _build_blob(real_paths)


@functools.cache
def _build_blob(real_paths: bool) -> bytes:
    import marshal
    import zlib

    here = os.path.dirname(os.path.abspath(__file__))
    sources: dict[str, tuple[bool, str, str]] = {"remoteproc": (True, "", "")}
    # (boot.py runs first, below; shipped as a module too for a child's spawn children: grandchild.py)
    sources.update(_package_sources("remoteproc.agent"))
    sources.update(_package_sources("cloudpickle"))
    modules = {}
    for mod, (is_pkg, text, path) in sources.items():
        if not real_paths or not path:
            path = "<remoteproc>/%s%s" % (mod.replace(".", "/"), "/__init__.py" if is_pkg else ".py")
        modules[mod] = (is_pkg, compile(text, path, "exec", dont_inherit=True, optimize=2), path)
    boot_path = os.path.join(here, "agent", "boot.py")
    with open(boot_path, encoding="utf-8") as f:
        boot = compile(f.read() + "\n_boot(m)\n", boot_path if real_paths else "<remoteproc>/boot.py", "exec",
                       dont_inherit=True)
    return zlib.compress(marshal.dumps((boot, modules)), 6)     # 9 costs 10 ms more for the same size


@functools.cache
def source_blob() -> bytes:
    """The blob for another Python (spawn mode): the same modules as *source*, which the
    remote compiles (``boot._ShippedImporter``), in a ``marshal`` format every Python 3 reads."""
    import marshal
    import zlib

    here = os.path.dirname(os.path.abspath(__file__))
    modules = {}
    for package in ("remoteproc.agent", "cloudpickle"):
        for mod, (is_pkg, text, _path) in _package_sources(package).items():
            path = "<remoteproc>/%s%s" % (mod.replace(".", "/"), "/__init__.py" if is_pkg else ".py")
            modules[mod] = (is_pkg, text, path)
    modules["remoteproc"] = (True, "", "<remoteproc>/remoteproc/__init__.py")
    with open(os.path.join(here, "agent", "boot.py"), encoding="utf-8") as f:
        boot = f.read() + "\n_boot(m)\n"
    data = zlib.compress(marshal.dumps((boot, modules), 4), 6)
    return b"%010d" % len(data) + data


def _prebuild(real_paths: bool) -> None:
    try:
        agent_blob(real_paths)
    except Exception:  # noqa: BLE001 - raised again, and reported, where the blob is used
        pass


#: exit status of the stub when the interpreter is not the local major.minor version
WRONG_VERSION = 86
#: exit status of the login shell when a ``setup=`` line failed
SETUP_FAILED = 85
#: what the stub prints on stdout when it needs the agent as source (another Python)
SOURCE_REQUEST = b"remoteproc:source\n"
#: what the stub prints on stdout (after flushing ``sys.stdout``) just before it reads its blob: what came
#: on stdout between READY and this was printed by the host's Python as it started (a sitecustomize.py,
#: usercustomize.py or .pth file, a python= wrapper), not by the agent, and is logged, not taken for frames
STUB_STARTED = b"remoteproc:stub\n"
#: what the command prints on stdout once the login shell has run its startup files and the setup=
#: lines: only then is the blob sent, so that no startup file can read it (what came before is theirs)
READY = b"remoteproc:ready\n"
#: sent at once, before READY: a startup file's ``read`` takes an empty line and goes on (the stub
#: drops what is left of them) instead of waiting for input that would come only after READY
PADDING = b"\n" * 16
#: what csh prints on stdout before each setup= line (it ends the shell at some errors, before any
#: status of ours): the last one names the line
SETUP_STARTED = "remoteproc: setup line"
#: environment variable holding the sh script while fish or csh run the setup= lines
SCRIPT_ENV = "REMOTEPROC_SCRIPT"
#: seconds: the least each step of the start-up waits (for READY, for the hello), whatever
#: connect_timeout says: a slow host's startup files, interpreter or disk
MIN_WAIT = 10.0
#: seconds more the wait for ``READY`` takes with ``transport="openssh"``: ssh's own
#: ConnectTimeout (the same number) started before that wait did, so past it the ssh that could
#: not connect (a host that drops every packet) gets this long to exit and say so, rather than
#: the wait blaming the host's startup files for a login that never happened
SSH_VERDICT = 2.0
NOISE_KEPT = 64 << 10   # what a startup file's flood on stdout or stderr leaves of itself, at most, before READY
_VERSION_LINE = re.compile(r"remoteproc: (.+?) is (?:(\w+) )?Python (\d+)\.(\d+)\.?(\S*) at (.*)")
_SETUP_LINE = re.compile(r"remoteproc: setup line (\d+) failed with status (\d+)")
#: what the shell, the dynamic loader or Python say when ``ulimit -u`` or ``ulimit -v`` stops them
_LIMIT_WORDS = re.compile(r"Cannot fork|fork: retry|Resource temporarily unavailable|failed to map segment|"
                          r"Cannot allocate memory|MemoryError|can't start new thread")
_PROBE_LINE = re.compile(r"remoteproc: no (\S+) found in: (.*)")
SPAWN_MINIMUM = (3, 8)


def implementation() -> str:
    """This interpreter's implementation name as the stub reports it: cpython, pypy, ..."""
    return sys.implementation.name


#: environment variable holding the stub, so that it can exec the next candidate with itself
STUB_ENV = "REMOTEPROC_STUB"


def stub_bound(connect_timeout: float) -> int:
    """Seconds the stub waits for the agent it reads: the local side's own waits for it (the blob's
    send and the hello, each ``connect_timeout`` but at least ``MIN_WAIT``) and some slack.  A
    connection that goes dark while the agent is on its way gives the stub no end of input (sshd
    notices nothing), and no agent yet keeps it alive (its keepalive starts once it runs): without
    a bound it stayed on the host for minutes after the link came back."""
    return int(2 * max(connect_timeout, MIN_WAIT) + SSH_VERDICT + 5)


def _stub(n: int, bound: int) -> str:
    """The Python one-liner every candidate interpreter runs: ``-c STUB MODE LABEL [LABEL PATH]...``.

    In syntax Python 2 runs too, so that an old interpreter reports itself.  If this is
    not our implementation and major.minor and (LABEL, PATH) candidates follow, it
    execs the first of them (with the rest), before reading anything.  Else MODE
    ``strict`` refuses (exit 86); ``any`` also runs another Python 3.8+, which reads
    and drops the compiled blob, asks for the agent as source and runs that.  Before it
    reads, it flushes what the host's startup code left in ``sys.stdout`` and says
    ``STUB_STARTED``: the local side passes over what came before that.  Reading the agent is
    bounded by ``bound`` seconds (SIGALRM ends it; cancelled as the agent starts).
    (No single quotes inside: it travels in two levels of shell quoting.)
    """
    ours = sys.version_info[:2]
    return ('import marshal,os,signal,sys,zlib;v=sys.version_info;i=getattr(sys,"implementation",None);'
            'i=i and i.name or "cpython";a=sys.argv[1:]+["",""];ok=(i,v[0],v[1])==("%s",%d,%d);'
            'ok or len(a)<6 or os.execv(a[3],[a[3],"-c",os.environ.get("%s",""),a[0],a[2]]+a[4:-2]);'
            'ok or (a[0]=="any" and v>=(3,8)) or (sys.stderr.write('
            '"remoteproc: %%s is %%s Python %%d.%%d.%%d at %%s\\n"%%(a[1],i,v[0],v[1],v[2],sys.executable)),'
            'sys.stderr.flush(),os._exit(%d));os.environ.pop("%s",0);'
            'exec("def r(n,s=0):\\n b=bytes()\\n while len(b)<n:\\n  b+=os.read(0,n-len(b)) or os._exit(9)\\n'
            '  if s:b=b.lstrip(bytes([10]))\\n return b");'
            'getattr(sys.stdout,"flush",int)();signal.alarm(%d);os.write(1,b"%s\\n");'
            'b=r(%d,1);ok or os.write(1,b"%s\\n");b=ok and b or r(int(r(10)));'
            'b,m=marshal.loads(zlib.decompress(b));signal.alarm(0);exec(b)'
            % (implementation(), ours[0], ours[1], STUB_ENV, WRONG_VERSION, STUB_ENV,
               bound, STUB_STARTED.decode().strip(), n, SOURCE_REQUEST.decode().strip()))


#: directories of the home that the default ~/.profile (Debian, Ubuntu) puts on PATH, for login shells
#: only: a python3 there (a user's own build, uv's ``python install``) is not on an ssh command's PATH
HOME_BINS = ".local/bin bin"
#: where to look for a Python of our major.minor, in order (docs/python-versions.md)
CONDA_ROOTS = ("~/miniconda3", "~/anaconda3", "~/miniforge3", "~/mambaforge", "/opt/conda")


def _names() -> list[tuple[str, str]]:
    """(executable name, implementation) of our major.minor; our implementation first."""
    ver = "%d.%d" % sys.version_info[:2]
    names = [("python" + ver, "cpython"), ("pypy" + ver, "pypy")]
    return names[::-1] if implementation() == "pypy" else names


def looked_in() -> str:
    """The places ``command`` searches, for messages."""
    ver = "%d.%d" % sys.version_info[:2]
    return ("python%s on the login PATH, /usr/bin, /usr/local/bin, ~/.local/bin, ~/bin, ~/.pyenv/versions/%s*, "
            "~/.local/share/uv/python/cpython-%s*, conda (%s: base and envs/*)"
            % (ver, ver, ver, ", ".join(CONDA_ROOTS)))


def _search() -> list[str]:
    """sh lines that collect the interpreters of our major.minor found in the usual places,
    in order, as "LABEL PATH" pairs of positional parameters (nothing is run here)."""
    ver = "%d.%d" % sys.version_info[:2]
    roots = " ".join(r.replace("~", "$HOME") for r in CONDA_ROOTS)
    lines = ["set --"]
    for exe, impl in _names():
        pyenv = ver if impl == "cpython" else "pypy" + ver
        lines += [
            # (pyenv's shims are on PATH for every installed version, and fail for the unselected ones)
            'p=$(command -v %s 2>/dev/null) && case "$p" in */shims/*) ;; /*) set -- "$@" PATH "$p";; esac' % exe,
            'for p in /usr/bin/%s /usr/local/bin/%s; do [ -x "$p" ] && set -- "$@" "${p%%/*}" "$p"; done'
            % (exe, exe),
            # (what the default ~/.profile puts on PATH, for login shells only: not for an ssh command)
            'for d in %s; do p=$HOME/$d/%s; [ -x "$p" ] && set -- "$@" "~/$d" "$p"; done' % (HOME_BINS, exe),
            'for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/%s*/bin/%s; do [ -x "$p" ] && set -- "$@" pyenv "$p"; '
            'done' % (pyenv, exe),
            'for p in "${XDG_DATA_HOME:-$HOME/.local/share}"/uv/python/%s-%s*/bin/%s; do [ -x "$p" ] && '
            'set -- "$@" uv "$p"; done' % (impl, ver, exe),
            'for b in %s; do for p in "$b"/bin/%s "$b"/envs/*/bin/%s; do [ -x "$p" ] && set -- "$@" conda "$p"; '
            'done; done' % (roots, exe, exe),
        ]
    return lines


def command(python=None, setup=None, connect_timeout: float = MIN_WAIT) -> str:
    """The exec command, which the account's login shell runs (``$SHELL -c``): the ``setup``
    lines in that shell, then an sh script that says ``READY`` on stdout, finds the
    interpreter and runs the stub with it.

    ``python`` None: ``python3`` if it is our implementation and major.minor, else the
    first of ours found in the usual places (``_search``: the script lists them, and
    ``python3``'s stub execs the first), else ``python3`` in spawn mode; every step is
    an ``exec``, so the agent is the session's own process.  A str (shell words:
    ``~/venv/bin/python3``, ``env X=1 python3``): that one, whatever its version.  A
    list: the first of them that is our version, else the first that runs (each try
    costs an interpreter start-up, and the script stays as the agent's parent).

    Every login shell parses the command (sh, bash, dash, zsh, ksh, fish, tcsh; ``_setup``
    says how the lines reach each).  With ``python`` None, a restricted shell (rbash,
    rksh), which refuses ``exec`` and ``/bin/sh``, runs ``python3 -c STUB`` instead, as
    ``ssh HOST python3 -c ...`` does there.
    """
    bound = stub_bound(connect_timeout)
    script = _script(python, bound)
    main = "exec /bin/sh -c %s" % shlex.quote(script)
    if python is None:      # (what a restricted shell reaches, once its exec was refused)
        main += "; echo %s; python3 -c %s any python3" % (READY.decode().strip(),
                                                        shlex.quote(_stub(_blob_size(), bound)))
    lines = _setup_lines(setup)
    return _setup(lines, script) + main if lines else main


def _blob_size() -> int:
    return len(agent_blob(bool(agent_env())))


def _script(python, bound: int) -> str:
    """The sh script: READY, then find the interpreter and exec it with the stub."""
    env = agent_env()
    script = ["echo %s" % READY.decode().strip(),
              "export %s=%s" % (STUB_ENV, shlex.quote(_stub(_blob_size(), bound))),
              # as CPython coerces the C locale (PEP 538), for every Python: a session with no
              # locale (paramiko sends none) leaves PyPy unable to name a non-ASCII path
              '[ -n "$LC_ALL$LC_CTYPE$LANG" ] || export LC_CTYPE=C.UTF-8']
    if env:
        script.append("export %s" % " ".join(shlex.quote("%s=%s" % item) for item in sorted(env.items())))
    stub = '-c "$%s"' % STUB_ENV
    if python is None:
        script += _search()
        script.append('command -v python3 >/dev/null 2>&1 && exec python3 %s any python3 "$@"' % stub)
        script.append('[ $# -ge 2 ] && { l=$1; p=$2; shift 2; exec "$p" %s any "$l" "$@"; }' % stub)
        script.append('for d in %s; do [ -x "$HOME/$d/python3" ] && exec "$HOME/$d/python3" %s any "~/$d/python3"; '
                      'done' % (HOME_BINS, stub))
        script.append('echo "remoteproc: no python3 found in: $PATH" >&2; exit 127')
    elif isinstance(python, str):
        script.append("exec %s %s any %s" % (python, stub, shlex.quote("python=" + python)))
    else:
        # t MODE WORDS: try one interpreter (strict: only if it is our version, and then it becomes
        # the agent); one the host lacks is passed over without the shell's "not found" (twice), as
        # is a pyenv shim of a version not selected there (it says "pyenv: ... command not found"
        # and more at each try: tried quietly first), and one older than 3.8 (o: the list ends
        # with its "too old" if none other runs)
        script.append('t() { m=$1; shift; p=$(command -v "$1" 2>/dev/null) || return 0; '
                      'case $p in */shims/*) "$@" -c "" >/dev/null 2>&1 || return 0;; esac; '
                      '"$@" %s $m "$L"; s=$?; '
                      'case $m$s in strict86|*126|*127) ;; any86) o=86;; *) exit $s;; esac; }' % stub)
        script.append("o=")
        for mode in ("strict", "any"):
            for word in python:
                script += ["L=%s" % shlex.quote("python=" + word), "t %s %s" % (mode, word)]
        script.append('[ -n "$o" ] && exit $o')
        script.append('echo "remoteproc: no python= candidate found in: $PATH" >&2; exit 127')
    return "; ".join(script)


#: bytes that may stand as themselves in ``_printf_word``: the same in a single-quoted word of every
#: login shell (fish: no backslash; csh: no ``!``, no newline), in sh's double quotes around a
#: backquoted command, and in printf's format (no ``%``)
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.:;=+-_/@#&|<>(){}[]*?~")


def _printf_word(text: str) -> str:
    """``text`` as a single-quoted printf format that prints it, in octal escapes but for ``_PLAIN``
    bytes: a word every login shell reads alike, whatever the text holds (quotes, ``!``, newlines)."""
    return "'%s'" % "".join(chr(b) if b in _PLAIN else "\\%03o" % b for b in text.encode("utf-8"))


#: what the re-run login shell (fish, csh) ends with: the sh script, handed over in the environment
_RUN_SCRIPT = "exec /bin/sh -c 's=$%s; unset %s; eval \"$s\"'" % ((SCRIPT_ENV,) * 2)


def _setup(lines: list[str], script: str) -> str:
    """The command's head that runs the ``setup=`` lines in the login shell, in its own syntax.

    Only sh-like shells take their lines in place (``{ LINE }``: a ``module`` or ``conda``
    function that a startup file defined is there).  Every login shell parses the whole
    command: fish reads all of it before running any, so each shell's part hides in a
    printf format (``_printf_word``).  fish and tcsh, which set ``$version`` (sh shells do
    not), take the first line: ``/bin/sh`` runs that shell again (``$SHELL -c``: the same
    startup files run) with the lines in its syntax, which ends with the sh script.
    A line's stdout goes to stderr (csh's cannot: it goes to stdout, before ``READY``).
    """
    sh = "".join("{ %s\n} >&2 || { s=$?; echo \"remoteproc: setup line %d failed with status $s\" >&2; exit %d; }\n"
                 % (line, i, SETUP_FAILED) for i, line in enumerate(lines, 1))
    fish = "".join("eval %s >&2; or begin; echo \"remoteproc: setup line %d failed with status $status\" >&2; "
                   "exit %d; end\n" % (_fish_quote(line), i, SETUP_FAILED) for i, line in enumerate(lines, 1))
    # (tcsh -c goes on after an exit, or an error, to the next line: an exec ends it)
    csh = "".join("echo \"%s %d\"\n%s\nset remoteproc_st=$status\nif ($remoteproc_st != 0) exec /bin/sh -c "
                  "'echo \"remoteproc: setup line %d failed with status $0\" >&2; exit %d' $remoteproc_st\n"
                  % (SETUP_STARTED, i, line, i, SETUP_FAILED) for i, line in enumerate(lines, 1))
    rerun = ('case ${SHELL##*/} in *csh) w=$(printf %s);; *fish*) w=$(printf %s);; *) w=$(printf %s);; esac; '
             'export %s="$1"; exec "$SHELL" -c "$w"'
             % (_printf_word(csh + _RUN_SCRIPT), _printf_word(fish + _RUN_SCRIPT), _printf_word(sh + _RUN_SCRIPT),
                SCRIPT_ENV))
    return ('test -n "$version" && exec /bin/sh -c %s remoteproc %s\neval "`printf %s`"\n'
            % (shlex.quote(rerun), shlex.quote(script), _printf_word(sh)))


def _fish_quote(text: str) -> str:
    """``text`` as one word in fish (single quotes: only ``\\`` and ``'`` are escaped there)."""
    return "'%s'" % text.replace("\\", "\\\\").replace("'", "\\'")


def _setup_lines(setup) -> list[str]:
    if setup is None:
        return []
    return [setup] if isinstance(setup, str) else [str(line) for line in setup]


def _old_python_error(display: str, found: list[re.Match]) -> BootstrapError:
    """The error for interpreters that are all too old: ``found``, their stub's ``_VERSION_LINE``s
    (a python= list names each of its candidates that ran)."""
    ours = "%d.%d" % sys.version_info[:2]
    label = found[0].group(1)
    if label.startswith("python="):     # the user's choice: nothing else was looked for
        where = ". Fix: pass python= with the path of a Python 3.8+ on the host (Python %s runs fastest)" % ours
    else:
        where = (", and no Python %s was found in the usual places (%s). Fix: install Python %s on the host, "
                 "or pass python= with the path of a Python 3.8+ there" % (ours, looked_in(), ours))
    said = ", ".join("%s is %s Python %s.%s%s (%s)" % (m.group(1), m.group(2) or "", m.group(3), m.group(4),
                                                        "." + m.group(5) if m.group(5) else "", m.group(6).strip())
                     for m in found)
    return BootstrapError(
        "%s: %s: too old to run remoteproc (another version runs in spawn mode, "
        "which needs Python %d.%d or later)%s." % (display, said, *SPAWN_MINIMUM, where), display)


def _too_old(said: str) -> list[re.Match]:
    """The stub's ``_VERSION_LINE``s in ``said`` of interpreters older than 3.8, one per label."""
    found: dict[str, re.Match] = {}
    for m in _VERSION_LINE.finditer(said):
        if (int(m.group(3)), int(m.group(4))) < SPAWN_MINIMUM:
            found.setdefault(m.group(1), m)
    return list(found.values())


def mode_of(hello: dict) -> str:
    """"same": the remote runs our implementation and major.minor (cloudpickle by value
    works); "spawn": another Python, which gets everything by reference (docs/python-versions.md)."""
    theirs = (hello.get("implementation", "cpython"), *tuple(hello.get("python", ()))[:2])
    return "same" if theirs == (implementation(), *sys.version_info[:2]) else "spawn"


#: how often a connection that the server closed before its banner is tried again, and the first pause
#: (doubled each time, +-50 %): sshd past its MaxStartups drops a share of new connections until
#: those ahead of them have logged in, which takes them a fraction of a second
TURNED_AWAY_RETRIES = 5
TURNED_AWAY_PAUSE = 0.25


def start_agent(opener: AgentOpener, target) -> tuple[AgentChannel, dict, bytes]:
    """Run the agent's command on ``target`` through ``opener``, and wait for its hello.

    Returns ``(channel, hello, extra)`` where ``extra`` is whatever arrived after
    the hello frame; ``hello["mode"]`` is ``mode_of(hello)``, ``hello["stderr"]`` what came on
    stderr up to then (not logged yet: the link does, and finds the agent's last words in it,
    when it went at once after its hello).  Raises BootstrapError
    with the remote's own words on failure; the channel is closed then (and with it
    the remote command).

    A connection the server turned away before its banner (``ConnectError.turned_away``: sshd
    past its MaxStartups, when many programs or many ``ssh -W`` jumps connect at once) is tried
    again after a growing, jittered pause, up to TURNED_AWAY_RETRIES times within
    ``connect_timeout``, as a user would retry by hand; the last error says how often.
    """
    started = time.monotonic()
    pause = TURNED_AWAY_PAUSE
    for attempt in range(1, TURNED_AWAY_RETRIES + 2):
        try:
            return _start_agent_once(opener, target)
        except ConnectError as exc:
            if not exc.turned_away:
                raise
            wait = pause * random.uniform(0.5, 1.5)
            spent = time.monotonic() - started
            if attempt > TURNED_AWAY_RETRIES or spent + wait > target.connect_timeout:
                raise ConnectError("%s Tried %d times in %.1fs." % (exc, attempt, spent), exc.host) from None
            # (INFO: a start that gets through on a later attempt works as the user asked; only
            # the last failure, which names MaxStartups, is theirs to act on)
            log.info("%s: the server closed the connection before its SSH banner (sshd's MaxStartups?); "
                     "trying again in %.2fs (attempt %d)", target.display, wait, attempt + 1)
            time.sleep(wait)
            pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _start_agent_once(opener: AgentOpener, target) -> tuple[AgentChannel, dict, bytes]:
    """One attempt of ``start_agent``."""
    display = target.display
    real_paths = bool(agent_env())
    # The blob (the first time, 10-20 ms of compiling) is built while the transport
    # connects and the server sets up the session, which takes it tens of milliseconds.
    builder = threading.Thread(target=_prebuild, args=(real_paths,), name="remoteproc-blob", daemon=True)
    builder.start()

    def agent_command() -> str:
        builder.join()
        return command(target.python, target.setup, target.connect_timeout)

    try:
        chan = opener.open(target, agent_command)
    finally:
        builder.join()
    try:
        # newlines at once, for a startup file's read; the blob once the shell says READY (or,
        # if the command ended already, its status and words)
        send_all(chan, PADDING, time.monotonic() + max(target.connect_timeout, MIN_WAIT))
        buf, err = _await_ready(chan, target)
        send_all(chan, agent_blob(real_paths), time.monotonic() + max(target.connect_timeout, MIN_WAIT))
        hello, extra = _read_hello(chan, target, buf, err)
        if hello.get("version") != PROTOCOL_VERSION:
            raise BootstrapError("%s: the remote agent speaks protocol %r, this side %d; this is a bug in "
                                 "remoteproc, please report it" % (display, hello.get("version"),
                                                                   PROTOCOL_VERSION), display)
        hello["mode"] = mode_of(hello)
    except BaseException:
        chan.close()
        raise
    return chan, hello, extra


def _await_ready(chan: AgentChannel, target) -> tuple[bytearray, bytearray]:
    """Read stdout until the command's ``READY``: returns (what came after it, stderr so far).

    What came before it was printed by a shell startup file or a ``setup=`` line (and csh's
    ``SETUP_STARTED`` lines): logged, not taken for the protocol.  Bounded as the hello is, by
    ``connect_timeout`` but at least 10 s (with ``transport="openssh"`` the connection is made in
    this time too; a slow startup file): without ``READY`` the shell has not reached our command."""
    wait = max(target.connect_timeout, MIN_WAIT)
    deadline = time.monotonic() + wait + (SSH_VERDICT if target.transport == "openssh" else 0.0)
    buf = bytearray()
    err = bytearray()
    # (ssh names its login when done, target.says_login: without it by the connect timeout, the wait is
    # the login's, which ssh's own ConnectTimeout (the TCP connection and the banner) does not bound)
    login_by = time.monotonic() + target.connect_timeout + SSH_VERDICT if target.says_login else None
    while True:
        at = buf.find(READY)
        if at >= 0:
            noise = _without_markers(bytes(buf[:at]))
            if noise.strip():
                log.warning("%s: the login shell printed %r before running remoteproc's command (a shell startup "
                            "file or a setup= line); ignored", target.display, noise[:500])
            return buf[at + len(READY):], err
        _take(chan, target, buf, err, time.monotonic() + max(target.connect_timeout, MIN_WAIT))
        if login_by is not None and time.monotonic() > login_by and not buf and not chan.logged_in:
            from .ssh import openssh

            raise openssh.login_stalled(target, target.connect_timeout)
        if time.monotonic() > deadline:
            if not chan.answers(target.answer_wait):
                # (not the host's startup files: the network went quiet under the connection)
                raise ConnectError(
                    "%s: the connection stopped answering while the agent's command started (no answer to a "
                    "keepalive within %gs): the network path to the host is down or stalled. Fix: check it, "
                    "and try again" % (target.display, target.answer_wait), target.display)
            said = (err + chan.recv_stderr()).decode("utf-8", "replace").strip()
            if target.transport == "openssh":
                from .ssh import openssh

                said = openssh.ssh_words(said).strip()      # (not its VERBOSE or debug lines of the config's)
            shown = _without_markers(bytes(buf)).decode("utf-8", "replace").strip()
            raise BootstrapError(
                "%s: the login shell of %s did not run remoteproc's command within %gs: a shell "
                "startup file there (~/.bashrc, ~/.zshenv, ~/.cshrc, ~/.config/fish/config.fish, ...)%s waits, "
                "most likely for input on stdin (read, cat, a program that reads its input), which ssh HOST CMD "
                "leaves open (ssh HOST true hangs the same way) (stderr: %s; stdout: %s). Fix: make that file "
                "skip it when the shell is not interactive ([ -t 0 ] || ..., or case $- in *i*) in sh), or "
                "give it no input (< /dev/null); a slow one: raise connect_timeout=."
                % (target.display, target.username, wait, " or a setup= line" if target.setup else "",
                   said[-500:] or "empty", shown[-500:] or "empty"),
                target.display)


def _take(chan: AgentChannel, target, buf: bytearray, err: bytearray, deadline: float,
          out: Optional[bytes] = None) -> None:
    """Add what the command has written by now (or within 50 ms) to ``buf`` and ``err``; its
    end raises ``_failed``'s error (waiting for its exit status until ``deadline``), with ``out``
    (else ``buf``) as what it printed."""
    err += chan.recv_stderr()
    del err[:-NOISE_KEPT]
    data = chan.recv(65536)
    if data is None:
        wait_readable(chan, 0.05)
        data = chan.recv(65536)
    if data == b"":
        # (``out`` is given once READY has come: our command ran, and so did the Python it started)
        _failed(chan, target, err, deadline, bytes(buf) if out is None else out, python_ran=out is not None)
    if data:
        buf += data
        if out is None and len(buf) > 2 * NOISE_KEPT and READY not in buf:
            del buf[:-NOISE_KEPT]       # (a startup file that floods stdout: its last words are kept)


def _without_markers(out: bytes) -> bytes:
    """``out`` without csh's ``SETUP_STARTED`` lines."""
    marker = SETUP_STARTED.encode()
    return b"".join(line for line in out.splitlines(True) if not line.startswith(marker))


def _read_hello(chan: AgentChannel, target, buf: bytearray, err: bytearray) -> tuple[dict, bytes]:
    wait = max(target.connect_timeout, MIN_WAIT)
    deadline = time.monotonic() + wait
    noise = b""     # what the host's Python printed as it started, before the stub said STUB_STARTED
    started = False
    while True:
        if not started:
            at = buf.find(STUB_STARTED)
            if at < 0:
                keep = len(STUB_STARTED) - 1        # (a partial STUB_STARTED stays in buf)
                if len(buf) > keep:
                    noise += bytes(buf[:len(buf) - keep])[:max(0, 2000 - len(noise))]
                    del buf[:len(buf) - keep]
            else:
                noise += bytes(buf[:at])[:max(0, 2000 - len(noise))]
                del buf[:at + len(STUB_STARTED)]
                started = True
                if noise.strip():
                    log.warning("%s: the host's Python printed %r on stdout as it started, before remoteproc's "
                                "agent (a sitecustomize.py, usercustomize.py or .pth file in its site-packages, "
                                "or the python= given); ignored. Fix: make it print on stderr, or nothing",
                                target.display, noise[:500])
        if started and buf[:len(SOURCE_REQUEST)] == SOURCE_REQUEST:
            del buf[:len(SOURCE_REQUEST)]
            # another Python: the agent as source
            send_all(chan, source_blob(), time.monotonic() + max(target.connect_timeout, MIN_WAIT))
            continue
        if started and len(buf) >= frames.HEADER_SIZE and not SOURCE_REQUEST.startswith(bytes(buf)):
            ftype, sid, length = frames.HEADER.unpack_from(buf)
            if ftype != frames.CONTROL or length > 1 << 20:
                raise BootstrapError(
                    "%s: the remote command printed %r instead of starting the agent; this is a bug in remoteproc "
                    "(or the python= given prints on stdout), please report it" % (target.display, bytes(buf[:200])),
                    target.display)
            if len(buf) >= frames.HEADER_SIZE + length:
                msg, _ = frames.parse_control(buf[frames.HEADER_SIZE:frames.HEADER_SIZE + length])
                if msg.get("op") != "hello":
                    raise BootstrapError("%s: unexpected first message %r" % (target.display, msg),
                                         target.display)
                # stderr so far (ssh's own words: a key recorded, or one it could not record; and the
                # agent's last words, if it went right after its hello): the link logs it and keeps them
                msg["stderr"] = _quiet(err + chan.recv_stderr(), target.display)
                return msg, bytes(buf[frames.HEADER_SIZE + length:])
        _take(chan, target, buf, err, deadline, noise + bytes(buf))
        if time.monotonic() > deadline:
            raise BootstrapError("%s: the agent did not answer within %gs (remote stderr: %s; stdout: %s). Check "
                                 "that python=%r starts a Python 3.8+ on the host, and that nothing there reads "
                                 "its stdin before it (a wrapper given as python=; a sitecustomize.py, "
                                 "usercustomize.py or .pth file of that Python)." % (
                                     target.display, wait, err.decode("utf-8", "replace").strip() or "empty",
                                     (noise + bytes(buf)).decode("utf-8", "replace").strip()[-500:] or "empty",
                                     target.python), target.display)


#: what a restricted shell says when it refuses our ``exec /bin/sh`` (and then runs ``python3`` itself)
_RESTRICTED_EXEC = re.compile(rb"^[^\n]*: exec: restricted\n?", re.M)


#: what the stub says of a python= candidate it passed over (another version, or one too old)
_PASSED_OVER = re.compile(rb"^remoteproc: python=[^\n]* is [^\n]*Python [^\n]* at [^\n]*\n?", re.M)


#: what ``ssh`` says when the server refused its session on a ControlMaster's connection (sshd's
#: MaxSessions): it then connects on its own (with ``ControlMaster auto``, saying that it does)
_MUX_REFUSED = re.compile(rb"^[^\n]*session request failed: Session open refused by peer\r?\n?"
                          rb"(ControlSocket [^\n]* already exists, disabling multiplexing\r?\n?)?", re.M)


#: what ``ssh`` says (with ``ControlMaster auto``, for the host or a jump host's ``ssh -W``) when
#: another ``ssh`` made the master's socket first, at the same moment (a Pool's hosts behind one
#: bastion): it goes on with a connection of its own, as it does past MaxSessions
_MUX_RACE = re.compile(rb"^ControlSocket [^\n]* already exists, disabling multiplexing\r?\n?", re.M)


def _quiet(err: bytes, display: str) -> bytes:
    """stderr before the hello, without what is expected there: a restricted shell refusing our exec,
    the candidates of a python= list that were passed over, ``ssh`` going on without the master
    connection that had no session left for it."""
    for expected in (_RESTRICTED_EXEC, _PASSED_OVER):
        for found in expected.finditer(err):
            log.debug("before the agent: %s", found.group(0).decode("utf-8", "replace").strip())
        err = expected.sub(b"", err)
    if _MUX_REFUSED.search(err):
        log.info("%s: the ControlMaster connection had no session left for this agent (sshd's MaxSessions, 10 by "
                 "default): ssh made a connection of its own", display)
        err = _MUX_REFUSED.sub(b"", err)
    if _MUX_RACE.search(err):
        log.info("%s: another ssh was making the ControlMaster connection at the same moment: ssh made a "
                 "connection of its own", display)
        err = _MUX_RACE.sub(b"", err)
    return err


#: what nologin(8) prints
NOLOGIN_WORDS = b"This account is currently not available"


def _no_login_shell(target, shell: str, said: str) -> BootstrapError:
    """BootstrapError for an account whose login shell cannot run our command."""
    return BootstrapError(
        "%s: the login shell of %s is %s (%s), which runs no command over SSH (ssh HOST CMD fails too). "
        "Fix: give the account a shell on the host (usermod -s /bin/bash %s), or use another account."
        % (target.display, target.username, shell, said or "no message", target.username), target.display)


def _failed(chan: AgentChannel, target, err: bytearray, deadline: float, out: bytes = b"",
            python_ran: bool = False) -> None:
    """The command ended before its hello: raise BootstrapError with its status and its words
    (``python_ran``: after READY, so the login shell ran our command and exec'd the Python)."""
    status = chan.exit_status()
    while status is None and time.monotonic() < deadline:
        time.sleep(0.01)
        status = chan.exit_status()
    transport_failure = chan.startup_error(status)
    if transport_failure is not None:
        raise transport_failure
    err += chan.recv_stderr()
    said = err.decode("utf-8", "replace").strip()
    display = target.display
    old = _too_old(said)
    if status == WRONG_VERSION and old:
        raise _old_python_error(display, old)
    shown = _without_markers(out).decode("utf-8", "replace").strip()
    m = _SETUP_LINE.search(said)
    if status == SETUP_FAILED and m:
        _setup_failed(target, said, m, shown)
    started = re.findall(r"^%s (\d+)$" % SETUP_STARTED, out.decode("utf-8", "replace"), re.M)
    if started and status:      # (a csh that ends itself at an error, before our status check)
        _setup_failed(target, said, None, shown, int(started[-1]), status)
    if NOLOGIN_WORDS.decode() in said + shown:
        raise _no_login_shell(target, "nologin", (said + " " + shown).strip())
    if status == 1 and not said and not shown and not python_ran:
        # (after READY the login shell ran our command: a python= that exits 1 without a word is no
        # matter of the shell's: _not_started names it)
        raise _no_login_shell(target, "/bin/false or a shell that exits at once (or a startup file of it "
                              "runs exit 1)", "exit status 1, no message")
    if ": restricted" in said:
        if target.python is None:
            why = "and has no python3 on its PATH, which it would run instead (as ssh HOST python3 does)"
            fix = "put python3 on the account's PATH (a link in its own bin directory), or"
        else:
            why = "which python= needs (without python=, python3 from its PATH runs instead)"
            fix = "leave python= unset (python3 must be on the account's PATH), or"
        raise BootstrapError(
            "%s: the login shell of %s is a restricted shell (rbash, rksh: %s), which refuses the exec and the "
            "/bin/sh our command needs, %s. Fix: %s give the account an unrestricted shell on the host "
            "(usermod -s /bin/bash %s)." % (display, target.username, said, why, fix, target.username), display)
    if target.setup and ("version: Undefined variable." in said or ("fish:" in said and "&&" in said)):
        shell = "a fish older than 3.0" if "fish:" in said else "a csh other than tcsh (no $version)"
        raise BootstrapError(
            "%s: the login shell of %s is %s, where remoteproc cannot run setup= lines (its words: %s). Fix: "
            "give the account a newer shell (fish 3, tcsh) or an sh-compatible one (usermod -s /bin/bash %s), "
            "or put the lines in an sh script on the host and pass python= with a wrapper that sources it and "
            "execs python3." % (display, target.username, shell, said[:500], target.username), display)
    if _LIMIT_WORDS.search(said):
        raise BootstrapError(
            "%s: the agent could not start: the account's limit on processes or memory is reached on the host "
            "(its words: %s). Fix: raise the limit where it is set (ulimit -u or ulimit -v in the account's shell "
            "startup files, /etc/security/limits.conf, a batch system's job limits), or end other processes of "
            "the account there." % (display, said[-500:]), display)
    if status == 0:
        raise _ended_at_once(target, shown, said, python_ran)
    raise _not_started(target, status, said)


def _not_started(target, status: Any, said: str) -> BootstrapError:
    """The error for a Python that did not start (126, 127: not found or not runnable; else its words)."""
    display = target.display
    ver = "%d.%d" % sys.version_info[:2]
    if status in (126, 127):
        if target.python is None:
            hint = ("the host has no python3 and no Python %s in the usual places (%s): install one there, "
                    "or pass python= with the full path of a Python 3.8+ on the host. A PATH or a virtualenv "
                    "activation in ~/.profile or ~/.bash_profile is not seen: those files run for login shells "
                    "only, not for an ssh command (in ~/.bashrc, put it before the line that returns when the "
                    "shell is not interactive)" % (ver, looked_in()))
        else:
            hint = ("the host has %s it can run: install Python %s there, or pass python= with the "
                    "full path of a Python 3.8+ on the host (for example python='/usr/bin/python3')"
                    % ("no %r" % target.python if isinstance(target.python, str)
                       else "none of %s" % ", ".join(map(repr, target.python)), ver))
    elif target.python is not None:
        hint = ("python= must run a Python 3.8+ with the arguments it is given (a wrapper script ends with "
                "exec python3 \"$@\"; a list's candidates are passed over only when not found, not runnable "
                "or of another version, so one that fails ends the search): pass python= with one that "
                "works on the host (Python %s is best)" % ver)
    else:
        hint = "pass python= with a working Python 3.8+ interpreter on the host (Python %s is best)" % ver
    if target.python is None:
        tried = "python3 (no python= given)"
    else:
        tried = "python=%r" % (target.python if isinstance(target.python, str) else list(target.python),)
    return BootstrapError("%s: could not start the agent with %s, exit status %s: %s. Fix: %s."
                          % (display, tried, status, said or "no message", hint), display)


def _ended_at_once(target, shown: str, said: str, python_ran: bool) -> BootstrapError:
    """The command ended with status 0 before the agent's hello: after READY, the Python (or a
    python= wrapper) ended by itself; before it, something else ran instead of our command."""
    display = target.display
    if python_ran:
        return BootstrapError(
            "%s: %s ended with status 0 before remoteproc's agent started (its output: %s; stderr: %s). Fix: "
            "python= must run a Python 3.8+ with the arguments it is given (a wrapper script ends with "
            "exec python3 \"$@\"), and nothing the host's Python runs as it starts (a sitecustomize.py, "
            "usercustomize.py or .pth file) may end it." % (
                display, "python=%r" % (target.python,) if target.python else "python3",
                shown[:500] or "none", said[:500] or "none"), display)
    return BootstrapError(
        "%s: the server ran something other than remoteproc's command, which ended with status 0 before "
        "the agent started (its output: %s; stderr: %s): a ForceCommand in sshd_config, a command= "
        "option of the key in authorized_keys, or a shell startup file that execs another shell or "
        "program. Fix: allow the account to run commands over SSH (ssh HOST python3 -V must work)."
        % (display, shown[:500] or "none", said[:500] or "none"), display)


def _setup_failed(target, said: str, m: Optional[re.Match], shown: str, i: int = 0, status: Any = None) -> None:
    """Raise the error for a failed ``setup=`` line: ``m`` matched its status line on stderr, or
    else it is line ``i`` after which the shell ended with ``status``."""
    lines = _setup_lines(target.setup)
    if m is not None:
        i, status, said = int(m.group(1)), m.group(2), said[:m.start()]
    line = lines[i - 1] if 0 < i <= len(lines) else "?"
    output = "\n".join(part for part in (shown, said.strip()) if part)     # (csh's stdout comes first)
    raise BootstrapError("%s: setup line %d %r failed with exit status %s; its output: %s. Fix the line "
                         "(it runs in the login shell before the interpreter), or drop it from setup=."
                         % (target.display, i, line, status, output[-2000:] or "(none)"), target.display)
