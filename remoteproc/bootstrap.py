"""Start the remote agent over an exec channel: the command, the shipped source, the hello.

The remote host needs nothing but a Python interpreter: the command is a one-line
stub that reads a zlib-compressed blob of exactly N bytes from stdin and executes
it; the blob holds the agent's modules and cloudpickle's, compiled here.  The local
side sends nothing more until the agent's hello, so the stub can never read past
its blob.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import sys
import threading
import time

from .agent import PROTOCOL_VERSION, frames
from .errors import BootstrapError
from .relay.channel import AgentChannel, AgentOpener, send_all, wait_readable


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
    of every cold start, for 27 KB less to send (64 KB instead of 37 KB of source).
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
    for mod, entry in _package_sources("remoteproc.agent").items():
        if mod != "remoteproc.agent.boot":
            sources[mod] = entry
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


def _prebuild(real_paths: bool) -> None:
    try:
        agent_blob(real_paths)
    except Exception:  # noqa: BLE001 - raised again, and reported, where the blob is used
        pass


#: exit status of the stub when the interpreter is not the local major.minor version
WRONG_VERSION = 86
_VERSION_LINE = re.compile(r"remoteproc: (.+?) is Python (\d+)\.(\d+)\.?(\S*) at (.*)")


def command(python: str) -> str:
    """The exec command: ``python -c <stub>``, readable by any POSIX shell or fish.

    The stub first checks the interpreter's major.minor version (in syntax that
    Python 2 runs too, so that an old interpreter reports itself instead of failing
    on the agent's source), then reads the agent's blob of exactly N bytes.
    ``python`` is a shell word list: ``~/venv/bin/python3`` and ``env X=1 python3`` work.
    """
    env = agent_env()
    n = len(agent_blob(bool(env)))
    if env:
        python = "env %s %s" % (" ".join(shlex.quote("%s=%s" % item) for item in sorted(env.items())), python)
    ours = sys.version_info[:2]
    stub = ('import marshal,os,sys,zlib;v=sys.version_info;v[:2]==(%d,%d) or (sys.stderr.write('
            '"remoteproc: %%s is Python %%d.%%d.%%d at %%s\\n"%%(%r,v[0],v[1],v[2],sys.executable)),'
            'sys.stderr.flush(),os._exit(%d));b=b"";'
            'exec("while len(b)<%d:b+=os.read(0,%d-len(b)) or os._exit(9)");'
            'b,m=marshal.loads(zlib.decompress(b));exec(b)'
            % (ours[0], ours[1], python, WRONG_VERSION, n, n))
    return "exec %s -c %s" % (python, shlex.quote(stub))


def _version_error(display: str, python: str, theirs: str, executable: str) -> BootstrapError:
    ours = "%d.%d" % sys.version_info[:2]
    their_minor = ".".join(theirs.split(".")[:2])
    other_way = (", or run this program with Python %s" % their_minor) if theirs.startswith("3.") else ""
    return BootstrapError(
        "%s: python=%r is Python %s (%s), but this program runs Python %s; cloudpickle needs the same "
        "major.minor version on both sides. Fix: pass python='python%s' (or the full path of a Python %s "
        "on the host)%s." % (display, python, theirs, executable, "%d.%d.%d" % sys.version_info[:3], ours, ours,
                             other_way),
        display)


def start_agent(opener: AgentOpener, target) -> tuple[AgentChannel, dict, bytes]:
    """Run the agent's command on ``target`` through ``opener``, and wait for its hello.

    Returns ``(channel, hello, extra)`` where ``extra`` is whatever arrived after
    the hello frame.  Raises BootstrapError with the remote's own words on failure;
    the channel is closed then (and with it the remote command).
    """
    display = target.display
    real_paths = bool(agent_env())
    # The blob (the first time, 10-20 ms of compiling) is built while the transport
    # connects and the server sets up the session, which takes it tens of milliseconds.
    builder = threading.Thread(target=_prebuild, args=(real_paths,), name="remoteproc-blob", daemon=True)
    builder.start()

    def agent_command() -> str:
        builder.join()
        return command(target.python)

    try:
        chan = opener.open(target, agent_command)
    finally:
        builder.join()
    try:
        # if the command ended already, _read_hello reports its status and words
        send_all(chan, agent_blob(real_paths), time.monotonic() + max(target.connect_timeout, 10.0))
        hello, extra = _read_hello(chan, target)
        ours = tuple(sys.version_info[:2])
        theirs = tuple(hello.get("python", ())[:2])
        if hello.get("version") != PROTOCOL_VERSION:
            raise BootstrapError("%s: the remote agent speaks protocol %r, this side %d; this is a bug in "
                                 "remoteproc, please report it" % (display, hello.get("version"),
                                                                   PROTOCOL_VERSION), display)
        if theirs != ours:
            raise _version_error(display, target.python, ".".join(map(str, hello.get("python", ()))),
                                 hello.get("executable", "?"))
    except BaseException:
        chan.close()
        raise
    return chan, hello, extra


def _read_hello(chan: AgentChannel, target) -> tuple[dict, bytes]:
    wait = max(target.connect_timeout, 10.0)
    deadline = time.monotonic() + wait
    buf = bytearray()
    err = bytearray()
    while True:
        if len(buf) >= frames.HEADER_SIZE:
            ftype, sid, length = frames.HEADER.unpack_from(buf)
            if ftype != frames.CONTROL or length > 1 << 20:
                raise BootstrapError(
                    "%s: the remote %s printed %r instead of starting the agent. Fix: make the shell "
                    "startup files of %s on the host (~/.bashrc, ...) print nothing when the session "
                    "is not interactive." % (target.display, target.python, bytes(buf[:200]),
                                             target.username), target.display)
            if len(buf) >= frames.HEADER_SIZE + length:
                msg, _ = frames.parse_control(buf[frames.HEADER_SIZE:frames.HEADER_SIZE + length])
                if msg.get("op") != "hello":
                    raise BootstrapError("%s: unexpected first message %r" % (target.display, msg),
                                         target.display)
                return msg, bytes(buf[frames.HEADER_SIZE + length:])
        err += chan.recv_stderr()
        data = chan.recv(65536)
        if data is None:
            wait_readable(chan, 0.05)
            data = chan.recv(65536)
        if data == b"":
            _failed(chan, target, err, deadline)
        if data:
            buf += data
        if time.monotonic() > deadline:
            raise BootstrapError("%s: the agent did not answer within %gs (remote stderr: %s). Check that "
                                 "python=%r starts a Python %d.%d on the host." % (
                                     target.display, wait, err.decode("utf-8", "replace").strip() or "empty",
                                     target.python, *sys.version_info[:2]), target.display)


def _failed(chan: AgentChannel, target, err: bytearray, deadline: float) -> None:
    """The command ended before its hello: raise BootstrapError with its status and its words."""
    status = chan.exit_status()
    while status is None and time.monotonic() < deadline:
        time.sleep(0.01)
        status = chan.exit_status()
    transport_failure = chan.startup_error(status)
    if transport_failure is not None:
        raise transport_failure
    err += chan.recv_stderr()
    said = err.decode("utf-8", "replace").strip()
    m = _VERSION_LINE.search(said)
    if status == WRONG_VERSION and m:
        raise _version_error(target.display, target.python, "%s.%s%s" % (
            m.group(2), m.group(3), "." + m.group(4) if m.group(4) else ""), m.group(5).strip())
    if status in (126, 127):
        hint = ("the host has no %r it can run: install Python %d.%d there, or pass python= with the "
                "full path of a Python %d.%d on the host (for example python='/usr/bin/python3')"
                % (target.python, *sys.version_info[:2], *sys.version_info[:2]))
    else:
        hint = "pass python= with a working Python %d.%d interpreter on the host" % sys.version_info[:2]
    raise BootstrapError("%s: could not start the agent with python=%r (exit status %s): %s. Fix: %s."
                         % (target.display, target.python, status, said or "no message", hint),
                         target.display)
