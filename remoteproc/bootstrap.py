"""Start the remote agent over an exec channel: the command, the shipped source, the hello.

The remote host needs nothing but a Python interpreter: the command is a one-line
stub that reads a zlib-compressed blob of exactly N bytes from stdin and executes
it; the blob holds the agent's modules and cloudpickle's, as source.  The local
side sends nothing more until the agent's hello, so the stub can never read past
its blob.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shlex
import sys
import time
from typing import Any

from .agent import PROTOCOL_VERSION, frames
from .errors import BootstrapError


def _package_sources(package: str) -> dict[str, tuple[bool, str]]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BootstrapError("cannot find the %s package to ship to the remote host" % package)
    root = list(spec.submodule_search_locations)[0]
    out = {}
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            mod = package if name == "__init__.py" else package + "." + name[:-3]
            with open(os.path.join(root, name), encoding="utf-8") as f:
                out[mod] = (name == "__init__.py", f.read())
    return out


@functools.cache
def agent_blob() -> bytes:
    """The compressed source the stub executes: boot.py, then ``_boot(sources)``."""
    import zlib

    here = os.path.dirname(os.path.abspath(__file__))
    sources: dict[str, tuple[bool, str]] = {"remoteproc": (True, "")}
    for mod, (is_pkg, text) in _package_sources("remoteproc.agent").items():
        if mod != "remoteproc.agent.boot":
            sources[mod] = (is_pkg, text)
    sources.update(_package_sources("cloudpickle"))
    with open(os.path.join(here, "agent", "boot.py"), encoding="utf-8") as f:
        boot = f.read()
    text = boot + "\n_boot(%r)\n" % (sources,)
    return zlib.compress(text.encode("utf-8"), 9)


def command(python: str) -> str:
    """The exec command: ``python -c <stub>``, readable by any POSIX shell or fish."""
    n = len(agent_blob())
    stub = ('import os,zlib;b=b"";exec("while len(b)<%d:b+=os.read(0,%d-len(b)) or os._exit(9)");'
            "exec(zlib.decompress(b))" % (n, n))
    return "exec %s -c %s" % (python, shlex.quote(stub))


def start_agent(transport, target) -> tuple[Any, dict, bytes]:
    """Open a session channel, start the agent, and wait for its hello.

    Returns ``(channel, hello, extra)`` where ``extra`` is whatever arrived after
    the hello frame.  Raises BootstrapError with the remote's own words on failure.
    """
    display = target.display
    try:
        chan = transport.open_session(timeout=target.connect_timeout)
    except Exception as exc:
        raise BootstrapError("%s: the server refused a session channel: %s. Check MaxSessions in "
                             "its sshd_config." % (display, exc), display) from None
    try:
        chan.exec_command(command(target.python))
        chan.sendall(agent_blob())
        hello, extra = _read_hello(chan, target)
    except BaseException:
        chan.close()
        raise
    ours = tuple(sys.version_info[:2])
    theirs = tuple(hello.get("python", ())[:2])
    if hello.get("version") != PROTOCOL_VERSION:
        chan.close()
        raise BootstrapError("%s: the agent speaks protocol %r, this side %d" % (
            display, hello.get("version"), PROTOCOL_VERSION), display)
    if theirs != ours:
        chan.close()
        raise BootstrapError(
            "%s: the remote %s is Python %s, this side is Python %d.%d; cloudpickle needs the same "
            "major.minor version on both sides. Pass python='python%d.%d' (or its full path) if the "
            "host has it, or run this program with Python %s." % (
                display, target.python, ".".join(map(str, hello.get("python", ()))), ours[0], ours[1],
                ours[0], ours[1], ".".join(map(str, theirs))), display)
    return chan, hello, extra


def _read_hello(chan, target) -> tuple[dict, bytes]:
    deadline = time.monotonic() + max(target.connect_timeout, 10.0)
    buf = bytearray()
    err = bytearray()
    chan.settimeout(0.05)
    while True:
        if len(buf) >= frames.HEADER_SIZE:
            ftype, sid, length = frames.HEADER.unpack_from(buf)
            if ftype != frames.CONTROL or length > 1 << 20:
                raise BootstrapError("%s: the remote %s printed %r instead of starting the agent"
                                     % (target.display, target.python, bytes(buf[:200])), target.display)
            if len(buf) >= frames.HEADER_SIZE + length:
                msg, _ = frames.parse_control(buf[frames.HEADER_SIZE:frames.HEADER_SIZE + length])
                if msg.get("op") != "hello":
                    raise BootstrapError("%s: unexpected first message %r" % (target.display, msg),
                                         target.display)
                return msg, bytes(buf[frames.HEADER_SIZE + length:])
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        try:
            data = chan.recv(65536)
        except TimeoutError:
            data = None
        if data == b"":
            while not chan.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            status = chan.exit_status if chan.exit_status_ready() else None
            said = err.decode("utf-8", "replace").strip()
            hint = ("the host has no %r on its PATH: install Python %d.%d there or pass python='/path/to/"
                    "python3'" % (target.python, *sys.version_info[:2])) if status == 127 else (
                    "pass python= with a working Python %d.%d interpreter" % sys.version_info[:2])
            raise BootstrapError("%s: could not start the agent with %r (exit status %s): %s. Fix: %s."
                                 % (target.display, target.python, status, said or "no message", hint),
                                 target.display)
        if data:
            buf += data
        if time.monotonic() > deadline:
            raise BootstrapError("%s: the agent did not answer within %gs (remote stderr: %s)"
                                 % (target.display, deadline - time.monotonic() + max(target.connect_timeout, 10.0),
                                    err.decode("utf-8", "replace").strip() or "empty"), target.display)
