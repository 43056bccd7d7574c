"""remoteproc: run Python on other hosts over SSH, Pipe connections intact.

Commands: run (a script that lives on the host), check (can remoteproc work with
this host, and how fast), cache (the host's package cache), demo (a real round trip).  ``python -m remoteproc`` is the
same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import select
import shlex
import signal
import statistics
import sys
import threading
import time
from typing import Any, Iterator, Sequence

from . import stdio
from .errors import (
    AuthenticationError,
    BootstrapError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    HostKeyError,
    RemoteProcessError,
)

EXIT_FAILURE = 255
"""Exit status when remoteproc itself fails (no connection, ...), as ssh exits 255."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C, as a shell reports a command ended by SIGINT."""
TERMINATE_GRACE = 5.0
"""Seconds the remote script has to exit after terminate() before kill()."""
LINE_HOLD = 0.05
"""Seconds a partial line of the script's stdout waits for its end before it is written as is."""
LINE_MAX = 64 << 10
"""A partial line this long is written at once: the script writes data, not lines."""
CLOSE_DRAIN = 1.0
"""At most this many seconds of copying what the pipe holds once the script has ended."""

MAIN_EPILOG = """examples:
  remoteproc run alice@build01 ~/jobs/train.py --epochs 3
  remoteproc check alice@build01
  remoteproc cache alice@build01          # packages cached there; --clear removes those not in use
  remoteproc demo                         # through a private loopback SSH server
  python -m remoteproc check -p 2222 -i ~/.ssh/id_ed25519 alice@10.0.0.7

Run "remoteproc COMMAND --help" for a command's options.
"""

RUN_EPILOG = """The script runs on HOST as "python3 SCRIPT ARGS..." would (a relative SCRIPT starts
from the remote login directory, or --cwd); -m MODULE and -c CODE, after HOST, run as
"python3 -m MODULE ARGS..." and "python3 -c CODE ARGS..." would.  Its stdout and stderr appear here; every
message it sends on its Connection is printed on stdout, one a line, as JSON (repr()
for what JSON cannot show).  The exit status is the script's (128+N if signal N ended
it, 255 if remoteproc could not run it).  Ctrl-C terminates the remote script.  This
command's stdin is the script's, as with "ssh HOST python3 SCRIPT" (-n: /dev/null).

In the script, one line of standard library code gets the Connection:
  from multiprocessing.connection import Connection; import os
  conn = Connection(int(os.environ["REMOTEPROC_FD"]))

examples:
  remoteproc run alice@build01 ~/jobs/report.py 2024-05 --verbose
  remoteproc run --cwd /srv/app -e MODE=test build01 manage.py check
  remoteproc run build01 -m pip list --user
  remoteproc run build01 -c 'import sys; print(sys.version)'
  remoteproc run --ssh-config ./ssh_config lab-gpu train.py
"""

CHECK_EPILOG = """Connects, starts the remote agent, runs a probe, and reports the remote Python,
platform and round trip time.  When something fails it says what and how to fix it,
and exits with status 1.

examples:
  remoteproc check alice@build01
  remoteproc check -p 2222 -i ~/.ssh/lab_key --python python3.11 lab01
  remoteproc check --accept-new newhost      # trust (and remember) a new host key
"""

CACHE_EPILOG = """Compiled packages (numpy, ...) and packages with data files that a remote child
imports, and the host lacks, are cached on the host by content, in
$XDG_CACHE_HOME/remoteproc or ~/.cache/remoteproc (see docs/modules.md).

examples:
  remoteproc cache alice@build01            # what is cached there, least recently used first
  remoteproc cache --clear alice@build01    # remove the entries not in use
"""

DEMO_EPILOG = """examples:
  python -m remoteproc demo                 # through a private loopback SSH server
  python -m remoteproc demo alice@build01   # against a real host (uses ~/.ssh/config)
"""


# -- options shared by the commands ------------------------------------------------------

def _port(text: str) -> int:
    """-p's value: a TCP port, checked here so that the error names -p (not the HOST's form)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a port number" % text) from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("%d is not a port number (1-65535)" % port)
    return port


def _ssh_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("SSH options (default: what ~/.ssh/config says)")
    g.add_argument("-p", "--port", type=_port, help="SSH port")
    g.add_argument("-l", "--user", dest="username", metavar="USER", help="remote user name")
    g.add_argument("-i", "--identity", dest="key_filename", action="append", metavar="KEY",
                   help="private key file (repeatable)")
    g.add_argument("--known-hosts", action="append", metavar="FILE",
                   help="known_hosts file to check the host key against (repeatable)")
    g.add_argument("--accept-new", action="store_true",
                   help="trust an unknown host key and record it in the first known_hosts file "
                        "(a changed key is still refused)")
    g.add_argument("-F", "--ssh-config", metavar="FILE", help="ssh_config file instead of ~/.ssh/config")
    g.add_argument("-J", "--proxy-jump", metavar="[USER@]JUMP[:PORT][,...]",
                   help="reach HOST through these jump hosts, as ssh -J (none: not even the config's)")
    g.add_argument("--python", metavar="PYTHON",
                   help="remote Python interpreter (default: python3 if it is this Python's major.minor, else one "
                        "found in the usual places, else python3 in spawn mode; docs/python-versions.md)")
    g.add_argument("--connect-timeout", type=float, metavar="SECONDS", help="give up connecting after this")
    g.add_argument("--allow-prompt", action="store_true",
                   help="let ssh ask on this terminal (a password, a key's passphrase, a second factor); "
                        "with --transport openssh")
    g.add_argument("--transport", choices=("paramiko", "openssh"),
                   help="paramiko (default) or openssh: run your own ssh program, with everything of its "
                        "config (host certificates, GSSAPI, ControlMaster); $REMOTEPROC_TRANSPORT sets the default")
    return parent


def ssh_options(args: argparse.Namespace) -> dict[str, Any]:
    """RemoteProcess keyword options from the parsed SSH flags."""
    opts: dict[str, Any] = {}
    if args.port is not None:
        opts["port"] = args.port
    if args.username:
        opts["username"] = args.username
    if args.key_filename:
        opts["key_filename"] = [os.path.expanduser(k) for k in args.key_filename]
    if args.known_hosts:
        opts["known_hosts"] = [os.path.expanduser(k) for k in args.known_hosts]
    if args.accept_new:
        opts["host_key_policy"] = "accept-new"
    if args.ssh_config:
        opts["ssh_config"] = os.path.expanduser(args.ssh_config)
    if args.proxy_jump:
        opts["proxy_jump"] = args.proxy_jump
    if args.python:
        opts["python"] = args.python
    if args.connect_timeout is not None:
        opts["connect_timeout"] = args.connect_timeout
    if args.transport:
        opts["transport"] = args.transport
    if args.allow_prompt:
        opts["allow_prompt"] = True
    return opts


#: the SSH flags whose values only the command line gives (not the HOST), by their option's name
_FLAGS = {"connect_timeout": "--connect-timeout", "ssh_config": "-F/--ssh-config", "python": "--python",
          "key_filename": "-i/--identity", "known_hosts": "--known-hosts"}
_OPTION_FLAG = re.compile(r"^(?:option )?(%s)\b" % "|".join(_FLAGS))


#: the library's options as an error's message names them, and the command line's flag for each
#: (``python='X'``, ``python=%r`` of a value, an unquoted ``python=/x`` or ``connect_timeout=-1``
#: as the stub's label says it: its word up to a blank, less the punctuation that ends a sentence
#: or a bracket, or a bare ``python=``: a path is a value, never part of the flag's name); options
#: with no flag (password=, allow_agent=), a list, tuple or repr (``known_hosts=[]``,
#: ``ssh_config=PosixPath('/c')``) and None, True or False are left as they are
_IN_API_TERMS = re.compile(
    r"\b(host_key_policy|transport|key_filename|known_hosts|ssh_config|python|connect_timeout|proxy_jump)="
    r"(?:'([^'\[\]]*)'"
    r"|(?!(?:None|True|False)\b)([^\s'\"\[\](){}<>%]*?[^\s'\"\[\](){}<>%.,;:!?])(?=[.,;:!?)\]}]*(?:\s|\Z))"
    r"|(?=[.,;:!?)\]}]*(?:\s|\Z)))")
_BARE_FLAG = {"key_filename": "-i KEY", "known_hosts": "--known-hosts FILE", "ssh_config": "-F FILE",
              "python": "--python", "connect_timeout": "--connect-timeout", "proxy_jump": "-J",
              "transport": "--transport"}


def in_cli_terms(text: str) -> str:
    """An error's message with the library's options (``transport='openssh'``) said as the command
    line's flags (``--transport openssh``): what a user of the command can type."""
    def flag(m: re.Match[str]) -> str:
        name, quoted, word = m.groups()
        if quoted is None and word is None:
            return _BARE_FLAG[name]
        value = quoted if quoted is not None else word
        if name == "host_key_policy":
            return "--accept-new" if value == "accept-new" else m.group(0)
        short = {"key_filename": "-i", "ssh_config": "-F", "proxy_jump": "-J"}.get(name)
        # (an unquoted word is said as written: it holds no blank, and ~/x stays ~/x)
        return "%s %s" % (short or "--" + name.replace("_", "-"), shlex.quote(value) if word is None else value)
    return _IN_API_TERMS.sub(flag, text.replace("allow_prompt=True", "--allow-prompt"))


#: (words of a HostKeyError, cause, fix): the refusals that recording the key would not mend, first
_HOST_KEY_CASES = (
    ("CHANGED", "the host's key differs from the one recorded in known_hosts",
     "if the change is expected, remove the old key with ssh-keygen -R HOST, then run again"),
    ("revoked", "the host's key, or the authority that signed it, is revoked (@revoked in known_hosts, or "
     "RevokedHostKeys); such a key is always refused, and --accept-new does not change that",
     "ask the host's administrator for its current key"),
    ("(KRL)", "the ssh config names a key revocation list (RevokedHostKeys), which the paramiko transport "
     "cannot read", "run with --transport openssh (your own ssh reads it)"),
    ("against RevokedHostKeys", "the revoked keys file of the ssh config (RevokedHostKeys) cannot be read",
     "make the file readable, or remove RevokedHostKeys from the ssh config"),
    ("certificate authority", "the host is known only through a certificate authority (@cert-authority in "
     "known_hosts), and the paramiko transport cannot check host certificates",
     "run with --transport openssh (your own ssh checks the certificate), or add the host's own key to "
     "known_hosts"),
    ("no user known_hosts file", "the host's key is unknown and there is no known_hosts file to record it in",
     "name a file with UserKnownHostsFile in the ssh config (or --known-hosts FILE), then --accept-new"),
)


def _own_words(exc: BaseException) -> str:
    """The message without what the user named: the host it starts with, file names and the commands
    quoted in it (a known_hosts.before-revoked-cleanup beside the file is no revoked key)."""
    text = str(exc)
    host = getattr(exc, "host", None)
    if host and text.startswith(host):
        text = text[len(host):]
    return re.sub(r"`[^`]*`|\S*/\S*", " ", text)


def explain(exc: BaseException) -> tuple[str, str]:
    """(cause, fix) for an error, in the command line's terms."""
    if isinstance(exc, HostKeyError):
        text = _own_words(exc)
        for words, cause, fix in _HOST_KEY_CASES:
            if words in text:
                return cause, fix
        return ("the host's key is not in known_hosts, and unknown keys are refused",
                "check the fingerprint, then trust the key with the command above (it records the key in the "
                "known_hosts file remoteproc reads), or pass --accept-new to record it")
    if isinstance(exc, AuthenticationError):
        return ("the SSH server refused every key (and password) offered",
                "pass the right key with -i KEY, load it into ssh-agent, or add its public key to "
                "~/.ssh/authorized_keys on the host; check the user name (-l USER)")
    if isinstance(exc, ConnectError):
        return ("no SSH connection could be made",
                "check the host name, that sshd runs there, the port (-p PORT) and the network; "
                "--connect-timeout gives a slow host more time")
    if isinstance(exc, BootstrapError) and "cannot start the process in directory" in str(exc):
        return ("the directory to run in (--cwd) does not exist on the host, is not a directory, or "
                "cannot be entered",
                "give --cwd a directory that exists on the host (a relative one starts from the remote "
                "login directory; ~ is the remote home), or leave --cwd out")
    if isinstance(exc, BootstrapError):
        # (its causes are many: no Python 3.8+, a login shell that runs no command, a ForceCommand,
        # a startup file waiting for input ...; the message names the one and its fix)
        return ("the remote agent could not be started on the host",
                "as the message above says; --python PATH names the host's interpreter (any Python 3.8+)")
    if isinstance(exc, ConfigError) and str(exc).startswith("REMOTEPROC_TRANSPORT="):
        return ("the environment variable REMOTEPROC_TRANSPORT names no transport",
                "set it to paramiko or openssh, or unset it; --transport chooses for one command")
    if isinstance(exc, ConfigError) and "ssh refuses this host or its configuration" in str(exc):
        return ("ssh (--transport openssh) refuses the host or its ssh configuration (-F, ~/.ssh/config)",
                "as the message above says; the ssh -G command in it shows the same")
    if isinstance(exc, ConfigError):
        flag = _OPTION_FLAG.match(str(exc))
        if flag:        # (an option only a flag gives: its fix is that flag, not the host's form)
            return ("the value given to %s is not usable" % _FLAGS[flag.group(1)],
                    "give %s a value as the message above says, or leave it out" % _FLAGS[flag.group(1)])
        return ("the host or an option is not usable as given",
                "write the host as HOST, USER@HOST or USER@HOST:PORT, or fix the ssh_config entry")
    if isinstance(exc, ConnectionLostError) and "local relay process" in str(exc):
        return ("remoteproc's relay process on this machine ended",
                "see what it printed above; check that this Python starts with its environment (PYTHONHOME, "
                "PYTHONPATH) as it is")
    if isinstance(exc, ConnectionLostError):
        return ("the SSH connection went away", "check the network and the host, then run again")
    return ("remoteproc failed", "see the message above")


def _report_failure(command: str, exc: BaseException) -> None:
    cause, fix = explain(exc)
    print("remoteproc %s: %s" % (command, in_cli_terms(str(exc))), file=sys.stderr)
    print("  cause: %s" % cause, file=sys.stderr)
    print("  fix:   %s" % fix, file=sys.stderr)


def _exit_status(code: int | None) -> int:
    """A process exit code as a shell exit status."""
    if code is None:
        return EXIT_FAILURE
    if code < 0:
        return 128 - code
    return code & 0xFF


# -- run ----------------------------------------------------------------------------------

#: the causes already said of messages that could not be loaded here (each is said once)
_UNLOADABLE: set[str] = set()


def format_message(data: bytes) -> str:
    """One line for a message the script sent: JSON if it can be, else repr()."""
    try:
        obj = pickle.loads(data)
    except (AttributeError, ImportError) as exc:
        # An object of a class only the script has (its __main__, a module of the host): printed as its
        # pickle, which would pass for send_bytes() data unless the command says so
        cause = "%s: %s" % (type(exc).__name__, exc)
        if cause not in _UNLOADABLE:
            _UNLOADABLE.add(cause)
            print("remoteproc run: a message holds an object that cannot be loaded here (%s): printed as its "
                  "pickled bytes; send built-in types (str, numbers, lists, dicts, ...) to print them"
                  % cause, file=sys.stderr)
        return repr(data)
    except Exception:  # noqa: BLE001 - raw send_bytes() data
        return repr(data)
    try:
        # (NaN and the infinities are no JSON: json.dumps would write NaN, which JSON readers refuse)
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return repr(obj)


def run_command(args: argparse.Namespace) -> int:
    from .script import RemoteScript

    env = {}
    for item in args.env or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            print("remoteproc run: --env wants NAME=VALUE, not %r" % item, file=sys.stderr)
            return 2
        env[key] = value
    try:
        # (as ssh: this command's stdin is the script's, unless -n)
        stdin: Any = None if args.no_stdin or sys.stdin is None else getattr(sys.stdin, "buffer", sys.stdin)
        script = RemoteScript(args.host, args.script, args.args, cwd=args.cwd, env=env or None, stdin=stdin,
                              kind=getattr(args, "kind", "path"), **ssh_options(args))
    except (RemoteProcessError, TypeError) as exc:
        _report_failure("run", exc)
        return EXIT_FAILURE
    out = _Stdout()
    script._stdout_fd = out.write_fd     # type: ignore[attr-defined]  # (popen_ssh looks for it)
    try:
        script.start()
    except RemoteProcessError as exc:
        out.close()
        _report_failure("run", exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        out.close()
        print("remoteproc run: interrupted while starting", file=sys.stderr)
        return EXIT_INTERRUPTED
    out.started()
    try:
        _relay_messages(script, out)
        script.join()
    except KeyboardInterrupt:
        _stop(script)
        print("remoteproc run: interrupted; the remote script was terminated", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        out.close()
        if script.conn is not None:     # (start() set it)
            script.conn.close()
    if script.connection_error is not None:
        _report_failure("run", script.connection_error)
    return _exit_status(script.exitcode)


class _Stdout:
    """The script's stdout and its message lines on this process's stdout, each line whole.

    The script's output comes through a pipe that a thread here copies to fd 1.  A message
    line goes out between two of its lines, after the output already in the pipe: the order
    the relay got them in, as when the relay wrote to fd 1 itself.  Under -u or PYTHONUNBUFFERED
    the script's print() writes its text and its newline apart: a partial line waits for its
    end (up to LINE_HOLD), so that a message printed meanwhile goes before that line, not
    inside it.  Once stdout is gone (``run ... | head``), message lines are dropped, and the
    pipe closes at the script's next output: its writes then fail, as they would under ssh.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.lock = threading.Lock()
        self.tail = b""             # a partial line, held since self.since
        self.since = 0.0
        self.ended = False          # the pipe's end was read (or stdout broke): nothing more comes
        self.broken = False
        self.encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        self.thread = threading.Thread(target=self._copy, name="remoteproc-run-stdout", daemon=True)
        self.thread.start()

    def started(self) -> None:
        """The relay has its own copy of the pipe's write end: ours goes, so that its end shows."""
        os.close(self.write_fd)
        self.write_fd = -1

    def message(self, line: str) -> None:
        data = (line + "\n").encode(self.encoding, "backslashreplace")
        with self.lock:
            self._pull()
            self._write(data)

    def close(self) -> None:
        """Write what the pipe holds now, and a partial line; then stop.

        Everything the script wrote before it exited is in the pipe by then: the relay reports
        an exit only once the child's output is written.  A process the script left running
        may hold its stdout on (``Popen(["sleep", "60"])``): its later output is not waited
        for, as it was not when the relay wrote to fd 1 itself.
        """
        if self.write_fd >= 0:
            self.started()
        with self.lock:
            self._pull(time.monotonic() + CLOSE_DRAIN)
            self._write(self.tail)
            self.tail = b""
            self.ended = True
        self.thread.join(1.0)

    def _copy(self) -> None:
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        try:
            while True:
                # (woken now and then while idle, to see close())
                wait = 200 if not self.tail else max(0, int((self.since + LINE_HOLD - time.monotonic()) * 1000) + 1)
                poller.poll(wait)
                with self.lock:
                    self._pull()
                    if self.tail and time.monotonic() >= self.since + LINE_HOLD:
                        self._write(self.tail)
                        self.tail = b""
                    if self.ended or self.broken:
                        return
        finally:
            with self.lock:
                self.ended = True
                os.close(self.read_fd)

    def _pull(self, deadline: float | None = None) -> None:      # (self.lock held)
        """Write out the complete lines of what the pipe holds now; keep a partial one."""
        while not self.ended and (deadline is None or time.monotonic() < deadline):
            try:
                data = os.read(self.read_fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.ended = True
                return
            chunk = self.tail + data
            cut = len(chunk) if len(chunk) >= LINE_MAX else chunk.rfind(b"\n") + 1
            if cut or not self.tail:
                self.since = time.monotonic()    # (what stays held is a new partial line)
            self._write(chunk[:cut])
            self.tail = chunk[cut:]

    def _write(self, data: bytes) -> None:     # (self.lock held)
        view = memoryview(data)
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
            while view and not self.broken:
                view = view[os.write(1, view):]
        except (OSError, ValueError):
            self.broken = True      # (stdout closed: nothing more can be shown)


def _relay_messages(script, out: _Stdout) -> None:
    """Print each message of the script until it ends (and what it sent has been read)."""
    from multiprocessing.connection import wait

    conn = script.conn

    def read_one() -> bool:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return False
        out.message(format_message(data))
        return True

    while True:
        ready = wait([conn, script.sentinel])
        if conn in ready:
            if not read_one():
                return      # the script closed its end (or ended): join() waits for the rest
        elif script.sentinel in ready:
            # Ended: what it sent is in our socket already, or right behind the exit report.
            while conn.poll(1.0) and read_one():
                pass
            return


def _stop(script) -> None:
    """Ctrl-C: end the remote script (terminate, then kill), bounded."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)    # a second Ctrl-C must not cut this short
    try:
        if script.exitcode is None:
            script.terminate()
            script.join(TERMINATE_GRACE)
        if script.exitcode is None:
            script.kill()
            script.join(TERMINATE_GRACE)
    finally:
        signal.signal(signal.SIGINT, previous)


# -- check --------------------------------------------------------------------------------

def _found_text(found: str | None) -> str:
    if not found:
        return "?"
    if found.startswith("python="):
        return "as given (%s)" % found
    if found == "python3":
        return "python3 on the login PATH"
    return {"PATH": "on the login PATH", "pyenv": "under ~/.pyenv/versions", "uv": "among uv's managed Pythons",
            "conda": "in a conda installation"}.get(found, "in " + found)


def _mode_text(mode: str) -> str:
    if mode == "same":
        return "same version (Python %d.%d): everything works as with a local fork" % sys.version_info[:2]
    return ("spawn mode (another Python than this %d.%d): functions and classes go by reference, as with "
            "multiprocessing's spawn; lambdas, closures and interactive definitions are refused "
            "(docs/python-versions.md)" % sys.version_info[:2])


def check_command(args: argparse.Namespace, rounds: int = 20) -> int:
    from multiprocessing import Pipe

    from .agent.probe import probe
    from .process import RemoteProcess

    print("checking %s" % args.host, flush=True)
    parent = child = None
    p = None
    try:
        parent, child = Pipe()
        t0 = time.perf_counter()
        p = RemoteProcess(args.host, target=probe, args=(child,), **ssh_options(args))
        p.start()
        child.close()
        if not parent.poll(60):
            raise ConnectionLostError("%s: the probe did not answer within 60 s" % args.host, args.host)
        facts = parent.recv()
        t1 = time.perf_counter()
        print("  connect, agent start-up and first answer: %.0f ms" % ((t1 - t0) * 1e3))
        print("  remote python:   %s %s (%s)" % (facts["implementation"], facts["python"], facts["executable"]))
        print("  found:           %s" % _found_text(getattr(p._popen, "found", None)))
        print("  mode:            %s" % _mode_text(getattr(p._popen, "mode", "same")))
        print("  remote platform: %s" % facts["platform"])
        usable = facts.get("usable")
        print("  remote host:     %s, user %s, %s CPUs%s" % (
            facts["hostname"], facts["user"], facts["cpus"],
            ", %d usable by its processes (CPU affinity: a batch job's share, taskset, a cpuset; a Pool's workers "
            "per host)" % usable if usable and facts["cpus"] and usable < facts["cpus"] else ""))
        times = []
        payload = b"x" * 64
        for _ in range(rounds):
            t = time.perf_counter()
            parent.send_bytes(payload)
            if parent.recv_bytes() != payload:
                raise RemoteProcessError("%s: the probe echoed something else" % args.host, args.host)
            times.append(time.perf_counter() - t)
        print("  round trip:      %.2f ms median, %.2f ms min, %.2f ms max (%d messages of 64 bytes)"
              % (statistics.median(times) * 1e3, min(times) * 1e3, max(times) * 1e3, rounds))
        parent.close()
        parent = None
        p.join(30)
        if p.exitcode != 0:
            raise RemoteProcessError("%s: the probe exited with %s" % (args.host, p.exitcode), args.host)
    except (RemoteProcessError, EOFError, OSError) as caught:
        if isinstance(caught, BrokenPipeError) and _stdout_gone():
            raise       # (our own output's reader went away, not the host: main() ends quietly)
        error: BaseException = caught
        if p is not None and p.connection_error is not None:
            error = p.connection_error
        if not isinstance(error, RemoteProcessError):
            error = ConnectionLostError("%s: %s: %s" % (args.host, type(error).__name__, error), args.host)
        _report_failure("check", error)
        print("FAILED", flush=True)
        return 1
    finally:
        for conn in (parent, child):
            if conn is not None:
                conn.close()
        if p is not None and p.pid is not None and p.exitcode is None:
            p.kill()
            p.join(10)
    print("OK: remoteproc works with %s" % args.host, flush=True)
    return 0


# -- cache --------------------------------------------------------------------------------

def cache_command(args: argparse.Namespace) -> int:
    """List (or empty) the package cache on the host, through a remote child."""
    from multiprocessing import Pipe

    from .agent.pkgcache import report
    from .process import RemoteProcess

    parent, child = Pipe()
    p = None
    try:
        # (in the try: a HOST or option that cannot be used is reported as any other failure)
        p = RemoteProcess(args.host, target=report, args=(child, bool(args.clear)), **ssh_options(args))
        p.start()
        child.close()
        if not parent.poll(60):
            raise ConnectionLostError("%s: no answer from the host within 60 s" % args.host, args.host)
        facts = parent.recv()
        p.join(30)
    except (RemoteProcessError, EOFError, OSError) as exc:
        error = (p.connection_error if p is not None else None) or exc
        if not isinstance(error, RemoteProcessError):
            error = ConnectionLostError("%s: %s: %s" % (args.host, type(error).__name__, error), args.host)
        _report_failure("cache", error)
        return 1
    finally:
        parent.close()
        child.close()
    if facts["removed"] is not None:
        print("%s: removed %s from %s" % (args.host, _entries(facts["removed"]), facts["root"]))
        for e in facts.get("kept") or ():
            print("  kept %-12s  %-28s %s" % (e["hash"][:12], ("%s %s" % (e.get("name") or "", e.get("version") or ""))
                                              .strip() or "(download)", e.get("why") or ""))
    entries = sorted(facts["entries"], key=lambda e: e.get("used") or 0)
    total = sum(int(e.get("size") or 0) for e in entries)
    print("%s: %s, %.1f MB in %s" % (args.host, _entries(len(entries)), total / 1e6, facts["root"]))
    for e in entries:
        print("  %-12s  %-28s %9.1f MB %6s files  used %s" % (
            e["hash"][:12], ("%s %s" % (e.get("name") or "?", e.get("version") or "")).strip(),
            int(e.get("size") or 0) / 1e6, e.get("files", "?"),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.get("used") or 0))))
    return 0


def _entries(count: int) -> str:
    return "%d %s" % (count, "entry" if count == 1 else "entries")


# -- demo ---------------------------------------------------------------------------------

def demo(host: str | None, options: dict | None = None) -> int:
    """Run one real RemoteProcess round trip and say how long each step took."""
    from multiprocessing import Pipe

    from .agent.probe import demo_target
    from .process import RemoteProcess

    server = None
    t0 = time.perf_counter()
    if host is None:
        from .testing import LoopbackSSHServer

        server = LoopbackSSHServer().start()
        # (the private server's own options; of the caller's only the transport has a meaning here)
        host, options = server.spec(), dict(server.options(), **{k: v for k, v in (options or {}).items()
                                                                   if k == "transport"})
        print("started a private %s SSH server on %s:%d (%.0f ms)"
              % (server.kind, server.host, server.port, (time.perf_counter() - t0) * 1e3))
    try:
        parent, child = Pipe()
        t1 = time.perf_counter()
        p = RemoteProcess(host, target=demo_target, args=(child, 21), **(options or {}))
        p.start()
        child.close()
        t2 = time.perf_counter()
        from .ssh.spec import TRANSPORT_ENV

        transport = (options or {}).get("transport") or os.environ.get(TRANSPORT_ENV, "").strip() or "paramiko"
        print("started %r on %s: remote pid %s (%.0f ms: relay, SSH connection with %s, agent, fork)"
              % (p.name, host, p.pid, (t2 - t1) * 1e3, transport), flush=True)
        answer = parent.recv()
        t3 = time.perf_counter()
        print("parent.recv() -> %r (%.1f ms after start)" % (answer, (t3 - t2) * 1e3), flush=True)
        p.join(30)
        t4 = time.perf_counter()
        print("joined: exitcode %s (%.1f ms)" % (p.exitcode, (t4 - t3) * 1e3), flush=True)
        parent2, child2 = Pipe()
        p2 = RemoteProcess(host, target=demo_target, args=(child2, 50), **(options or {}))
        p2.start()
        child2.close()
        parent2.recv()
        p2.join(30)
        print("a second process on the same connection: start to answer and join in %.1f ms"
              % ((time.perf_counter() - t4) * 1e3))
        ok = answer == 42 and p.exitcode == 0 and p2.exitcode == 0
        print("round trip OK" if ok else "round trip FAILED", flush=True)
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()


# -- the parser -----------------------------------------------------------------------------

_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
"""A token argparse takes for a positional although it starts with "-" (as it does for ours)."""


def _option_arity(parser: argparse.ArgumentParser, token: str) -> bool | None:
    """How ``parser`` reads ``token``: None for a positional, else whether the next token is its value.

    argparse's own rules: an option by its name, NAME=VALUE, -XVALUE, an unambiguous
    abbreviation of a long name; "-" and negative numbers are positionals.  A token argparse
    would refuse (an unknown option) counts as an option without a value: parsing says so.
    """
    if not token.startswith("-") or token == "-":
        return None
    takes_value = {name: action.nargs != 0 for action in parser._actions for name in action.option_strings}
    if token in takes_value:
        return takes_value[token]
    name, equals, _value = token.partition("=")
    if equals and name in takes_value:
        return False
    if token.startswith("--"):
        matches = [option for option in takes_value if option.startswith(name)] if parser.allow_abbrev else []
    else:
        matches = [option for option in takes_value if option == token[:2]]      # -XVALUE
    if len(matches) == 1:
        return takes_value[matches[0]] and token.startswith("--") and not equals
    if _NEGATIVE_NUMBER.match(token) or " " in token:
        return None
    return False


def _scan(parser: argparse.ArgumentParser, tokens: Sequence[str]) -> Iterator[tuple[int, str, bool]]:
    """(index, token, whether a positional) of each token of ``tokens`` that is no option's value
    and no first ``--``, as argparse reads them with ``parser``."""
    options_ended = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        arity = None if options_ended else _option_arity(parser, token)
        if not options_ended and token == "--":
            options_ended = True
        else:
            yield i, token, arity is None
            if arity:
                i += 1      # the option's value
        i += 1


def _positional_index(parser: argparse.ArgumentParser, tokens: Sequence[str], nth: int) -> int | None:
    """The index in ``tokens`` of the positional number ``nth`` (from 0) of ``parser``, or None."""
    seen = 0
    for i, _token, positional in _scan(parser, tokens):
        if positional:
            if seen == nth:
                return i
            seen += 1
    return None


def _tail_start(parser: argparse.ArgumentParser, tokens: Sequence[str], count: int,
                enders: dict[str, str]) -> tuple[int, str | None] | None:
    """Where the tail of ``tokens`` starts, after ``count`` positionals of ``parser``, or after an
    option of ``enders`` (``-m MODULE``, ``-c CODE``) that follows the first ``count - 1`` of them,
    as python3's own -m and -c end its options; with that option's name (None: after positionals)."""
    seen = 0
    for i, token, positional in _scan(parser, tokens):
        if positional:
            seen += 1
            if seen == count:
                return i + 1, None
        elif seen == count - 1 and not token.startswith("--") and token[:2] in enders:
            if token in enders:
                return (i + 2, token) if i + 1 < len(tokens) else (i + 1, token)
            return i + 1, token[:2]      # -mMODULE
    return None


ENDERS_MISPLACED = "-m MODULE and -c CODE go after HOST, in place of SCRIPT (remoteproc run HOST -m MODULE ARGS...)"


class _Parser(argparse.ArgumentParser):
    """The command line's parser: a command's trailing arguments never go through argparse.

    ``tails`` maps a command to (its parser, the number of its positionals before the tail,
    the attribute for the tail): everything after the last of those positionals (``run``'s
    SCRIPT) is taken exactly as given, a first ``--`` and what looks like an option
    included, as ``python3 SCRIPT ARGS...`` takes them.  (``nargs=REMAINDER`` let SCRIPT
    swallow a ``--`` that follows it, and called the optional ARGS required.)  An option of
    the command's ``enders`` (``run``'s -m MODULE, -c CODE) may stand in for that last
    positional, as python3's -m and -c do: the tail then starts after its value, and the
    namespace's ``kind`` says which it was ("path" for the positional).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tails: dict[str, tuple[argparse.ArgumentParser, int, str, dict[str, str]]] = {}
        self.demo: argparse.ArgumentParser = self       # (demo's own, for its usage errors)
        self.commands: dict[str, argparse.ArgumentParser] = {}      # each command's parser, by its name

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        at = _positional_index(self, argv, 0)       # the command
        tail = None
        ender = None
        if at is not None and argv[at] in self.tails:
            command, count, dest, enders = self.tails[argv[at]]
            found = _tail_start(command, argv[at + 1:], count, enders)
            if found is None and any(a[:2] in enders for a in argv[at + 1:]):
                command.error(ENDERS_MISPLACED)     # (-m before HOST, and no SCRIPT: not "SCRIPT is required")
            if found is not None:
                end, ender = at + 1 + found[0], found[1]
                argv, tail = argv[:end], argv[end:]
                if ender is not None:
                    # -m MODULE / -c CODE stands where the last positional (SCRIPT) goes
                    if argv[-1] == ender:       # (-m at the very end: argparse says it wants a value)
                        pass
                    elif len(argv) >= 2 and argv[-2] == ender:
                        argv = argv[:-2] + ["--", argv[-1]]
                    else:                       # -mMODULE
                        argv = argv[:-1] + ["--", argv[-1][2:]]
        namespace, extras = super().parse_known_args(argv, namespace)
        if tail is not None:
            setattr(namespace, dest, tail)
            namespace.kind = enders[ender] if ender else "path"
        return namespace, extras

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        """As argparse's, but an unknown option given after the command is refused with that
        command's usage (``remoteproc run --bogus h0 x.py``), not the top level's, which says
        nothing of the command's options; one before the command is the top level's."""
        argv = list(sys.argv[1:] if args is None else args)
        namespace, extras = self.parse_known_args(argv, namespace)
        if extras:
            at = _positional_index(self, argv, 0)
            command = self.commands.get(argv[at]) if at is not None else None
            if command is None or any(token in extras for token in argv[:at]):
                command = self
            command.error("unrecognized arguments: %s" % " ".join(extras))
        return namespace


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="remoteproc", description=__doc__, epilog=MAIN_EPILOG, formatter_class=raw)
    parser.add_argument("--version", action="version", version="%(prog)s " + _version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=argparse.ArgumentParser)
    ssh = _ssh_parent()

    p_run = sub.add_parser("run", parents=[ssh], formatter_class=raw, epilog=RUN_EPILOG,
                           usage="%(prog)s [options] HOST (SCRIPT | -m MODULE | -c CODE) [ARGS ...]",
                           help="run a Python script that lives on HOST, with a Connection to it",
                           description="Run the Python script SCRIPT (or -m MODULE, -c CODE) on HOST with ARGS as its "
                                       "sys.argv[1:].")
    p_run.add_argument("--cwd", metavar="DIR", help="remote directory to run the script in")
    p_run.add_argument("-n", dest="no_stdin", action="store_true",
                       help="give the script /dev/null as stdin (as ssh -n), not this command's")
    p_run.add_argument("-e", "--env", action="append", metavar="NAME=VALUE",
                       help="set an environment variable for the script (repeatable)")
    p_run.add_argument("-m", dest="module", metavar="MODULE",
                       help="in place of SCRIPT: run the module MODULE as a script, as python3 -m MODULE")
    p_run.add_argument("-c", dest="code", metavar="CODE",
                       help="in place of SCRIPT: run the program CODE, as python3 -c CODE")
    p_run.add_argument("host", metavar="HOST", help="USER@HOST[:PORT] or an ssh_config alias")
    p_run.add_argument("script", metavar="SCRIPT", help="path of the script on HOST")
    p_run.add_argument("args", metavar="ARGS", nargs="*", default=[],
                       help="arguments for the script: everything after SCRIPT, exactly as given "
                            "(options and -- included)")
    parser.tails = {"run": (p_run, 2, "args", {"-m": "module", "-c": "code"})}   # HOST SCRIPT, then ARGS

    p_check = sub.add_parser("check", parents=[ssh], formatter_class=raw, epilog=CHECK_EPILOG,
                             help="check that remoteproc works with HOST; report its Python and round trip",
                             description="Check that remoteproc works with HOST.")
    p_check.add_argument("host", metavar="HOST", help="USER@HOST[:PORT] or an ssh_config alias")

    p_cache = sub.add_parser("cache", parents=[ssh], formatter_class=raw, epilog=CACHE_EPILOG,
                             help="list the packages cached on HOST (--clear removes those not in use)",
                             description="List the package cache on HOST.")
    p_cache.add_argument("--clear", action="store_true", help="remove the entries no running program uses")
    p_cache.add_argument("host", metavar="HOST", help="USER@HOST[:PORT] or an ssh_config alias")

    p_demo = sub.add_parser("demo", parents=[ssh], formatter_class=raw, epilog=DEMO_EPILOG,
                            help="run a real round trip (a private loopback SSH server if no HOST)",
                            description="Run a real RemoteProcess round trip and time each step.")
    p_demo.add_argument("host", nargs="?", metavar="HOST", help="USER@HOST[:PORT] or an ssh_config alias")
    parser.demo = p_demo
    parser.commands = {"run": p_run, "check": p_check, "cache": p_cache, "demo": p_demo}
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _interrupt_once(signum: int, frame: Any) -> None:
    """SIGINT: KeyboardInterrupt the first time; further Ctrl-C are ignored while the command
    winds down (its bounded clean-up, then the interpreter's exit), so that an impatient
    second Ctrl-C does not turn the one-line report into a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _install_interrupt_once() -> Any:
    """Put _interrupt_once in place of Python's default SIGINT handler; the handler it replaced
    (None: left as it was: ignored, as in a background job, or another's, or not the main thread)."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            return signal.signal(signal.SIGINT, _interrupt_once)
    except ValueError:      # (not the main thread)
        pass
    return None


def _log_to_stderr(command: str) -> logging.Handler:
    """The library's warnings as this command's own lines on stderr (Python's last-resort handler
    printed them bare), but for a lost connection's: the command reports that one itself, with
    its cause and fix, and it said the same twice."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("remoteproc %s: %%(message)s" % command))
    handler.addFilter(lambda record: ": connection lost: " not in record.getMessage())
    logging.getLogger("remoteproc").addHandler(handler)
    return handler


def _hear_the_relay_out() -> None:
    """Before the command's log handler goes: the warnings the relay sent until now, through it
    (one of a lost connection, which the command has reported already, had come after the
    report, printed bare by Python's last-resort handler)."""
    client = sys.modules.get("remoteproc.relay.client")
    relay = client.current() if client is not None else None
    if relay is not None:
        relay.sync(timeout=2.0)


def _stop_the_relay() -> None:
    """Stop the relay now, while a Ctrl-C is still the command's (see ``main``)."""
    client = sys.modules.get("remoteproc.relay.client")
    if client is not None:
        client.shutdown(exiting=True)


def main(argv: Sequence[str] | None = None) -> int:
    stdio.sanitise()        # (run ... >&-: the script's output goes nowhere, not into our pipe)
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = _install_interrupt_once()
    handler = _log_to_stderr(args.command)
    try:
        try:
            status = _main(parser, args)
        except BrokenPipeError:
            if not _stdout_gone():
                raise
            status = _output_gone()
        finally:
            _hear_the_relay_out()
            logging.getLogger("remoteproc").removeHandler(handler)
        _stop_the_relay()
    except KeyboardInterrupt:
        # (a Ctrl-C while the command wound down: its relay's stop, which the interpreter's exit
        # would do, where a Ctrl-C is "Exception ignored in atexit callback" and status 0)
        print("remoteproc %s: interrupted" % args.command, file=sys.stderr)
        status = EXIT_INTERRUPTED
    finally:
        # (after a Ctrl-C SIGINT stays ignored: the interpreter's exit comes next)
        if previous is not None and signal.getsignal(signal.SIGINT) is _interrupt_once:
            signal.signal(signal.SIGINT, previous)
    return status


def _stdout_gone() -> bool:
    """Whether our standard output is a pipe whose reader went away (``remoteproc check HOST | head``)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _output_gone() -> int:
    """The reader of our output went away: end quietly, as a tool killed by SIGPIPE does (the shell
    says 141), with no traceback now or at the interpreter's last flush."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "run":
        if args.module is not None or args.code is not None:     # (given before HOST: parsed as options)
            run_parser = parser.tails["run"][0] if isinstance(parser, _Parser) else parser
            run_parser.error(ENDERS_MISPLACED)
        return run_command(args)
    try:
        # Ctrl-C (while connecting to a slow host, say) ends the command with the shell's status
        # for it, not a traceback; what it started ends with the relay (an interrupted start is killed)
        if args.command == "check":
            return check_command(args)
        if args.command == "cache":
            return cache_command(args)
        if args.command == "demo":
            options = ssh_options(args)
            if args.host is None and set(options) - {"transport"}:
                demo_parser = parser.demo if isinstance(parser, _Parser) else parser
                demo_parser.error("SSH options need a HOST (only --transport goes with the private server)")
            try:
                return demo(args.host, options)
            except RemoteProcessError as exc:
                _report_failure("demo", exc)
                return 1
    except KeyboardInterrupt:
        print("remoteproc %s: interrupted" % args.command, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
