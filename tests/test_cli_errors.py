"""The command line when something goes wrong, as a user meets it: a changed host key, a host
spec or option that cannot be used, a connection that dies under a running script, a script
that leaves a process behind, ignores SIGTERM or raises KeyboardInterrupt.  Each failure exits
with the documented status and says the cause and the fix, never with a traceback of ours; no
remote process outlives the command.

(The successful paths and the common failures are in test_cli.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from proctable import gone, running
from test_cli import ENV, cli_run, remoteproc_cmd

from remoteproc import cli
from remoteproc.errors import (
    BootstrapError,
    ConfigError,
    ConnectionLostError,
    HostKeyError,
    RemoteProcessError,
)
from remoteproc.testing import current_user

pytestmark = pytest.mark.timeout(90)



def _says_cause_and_fix(out, *words):
    text = out.stdout + out.stderr
    assert "cause:" in out.stderr and "fix:" in out.stderr, text
    assert "Traceback" not in out.stderr, text
    for word in words:
        assert word in out.stderr, (word, text)


# -- a changed host key ----------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_check_a_host_whose_key_changed_says_so_and_how_to_forget_the_old_key(sshd, tmp_path, transport):
    """known_hosts holds another key of the same type for the host (a reinstalled host, or an
    attack): check refuses, and the fix is ssh-keygen -R, not --accept-new (which would not help)."""
    with open(sshd.known_hosts) as f:
        recorded = f.read().split()
    keytype = next(word for word in recorded if word.startswith(("ssh-", "ecdsa-")))
    other = tmp_path / "other"
    algorithm = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(keytype, "ecdsa")
    subprocess.run(["ssh-keygen", "-q", "-t", algorithm, "-N", "", "-f", str(other)], check=True, timeout=30)
    other_type, other_key = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:%d %s %s\n" % (sshd.port, other_type, other_key))
    out = remoteproc_cmd("check", "--transport", transport, "-p", str(sshd.port), "-i", sshd.client_key,
                         "-l", current_user(), "--known-hosts", str(known), "-F", "none", "127.0.0.1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED" in out.stdout
    _says_cause_and_fix(out, "CHANGED", "differs from the one recorded", "ssh-keygen -R")
    assert "--accept-new" not in out.stderr.split("fix:", 1)[1]


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_an_unknown_host_key_is_refused_with_the_fix_in_flags_not_in_api_terms(sshd, tmp_path, transport):
    """The library's message names host_key_policy='accept-new'; the command's says --accept-new."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    out = remoteproc_cmd("check", "--transport", transport, "-p", str(sshd.port), "-i", sshd.client_key,
                         "-l", current_user(), "--known-hosts", str(known), "-F", "none", "127.0.0.1")
    assert out.returncode == 1, out.stdout + out.stderr
    message = out.stderr.split("cause:", 1)[0]
    assert "--accept-new" in message and "host_key_policy" not in message, out.stderr
    _says_cause_and_fix(out, "not in known_hosts")


@pytest.mark.parametrize("said,typed", [
    ("Fix: pass transport='openssh' (your own ssh has them)", "Fix: pass --transport openssh (your own ssh has them)"),
    ("or pass host_key_policy='accept-new' to record it", "or pass --accept-new to record it"),
    ("pass key_filename= with allow_agent=False", "pass -i KEY with allow_agent=False"),
    ("the agent with python='/opt/my py/bin/python3' (exit", "the agent with --python '/opt/my py/bin/python3' (exit"),
    ("pass python= with the path", "pass --python with the path"),
    ("known_hosts='/k' and ssh_config='/c'", "--known-hosts /k and -F /c"),
    ("or known_hosts=[])", "or known_hosts=[])"),                   # (no flag gives an empty list)
    ("host_key_policy='reject'", "host_key_policy='reject'"),       # (no flag for it)
    ("key_filename=['/a', '/b']", "key_filename=['/a', '/b']"),
])
def test_messages_name_the_flags_the_command_line_has(said, typed):
    assert cli.in_cli_terms(said) == typed


# -- host specs and options that cannot be used -------------------------------------------------

@pytest.mark.parametrize("command", ["run", "check", "cache"])
@pytest.mark.parametrize("given,said", [
    (["user@host:99999"], "out of range"),
    (["--connect-timeout", "-1", "h"], "connect_timeout"),
    (["-F", "/nonexistent/ssh_config", "h"], "/nonexistent/ssh_config"),
])
def test_a_host_spec_or_option_that_cannot_be_used_says_cause_and_fix(command, given, said):
    """Every command refuses a bad HOST or option up front, in its own words (no traceback)."""
    argv = [command, *given[:-1], "-F", "none", given[-1]] if "-F" not in given else [command, *given]
    if command == "run":
        argv.append("script.py")
    out = remoteproc_cmd(*argv)
    assert out.returncode == (cli.EXIT_FAILURE if command == "run" else 1), out.stdout + out.stderr
    _says_cause_and_fix(out, said, "remoteproc %s:" % command)


def test_run_env_without_an_equals_sign_is_a_usage_error():
    out = remoteproc_cmd("run", "-e", "JUSTANAME", "-F", "none", "h", "script.py")
    assert out.returncode == 2
    assert "--env wants NAME=VALUE, not 'JUSTANAME'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_wrong_transport_in_the_environment_names_the_variable_not_the_hosts_form(command):
    """Found by a new user's audit: the fix said to write the host as USER@HOST."""
    argv = [command, "-F", "none", "nobody@127.0.0.1"] + (["script.py"] if command == "run" else [])
    out = remoteproc_cmd(*argv, env={**ENV, "REMOTEPROC_TRANSPORT": "bogus"})
    assert out.returncode == (cli.EXIT_FAILURE if command == "run" else 1), out.stdout + out.stderr
    _says_cause_and_fix(out, "REMOTEPROC_TRANSPORT='bogus' for host 'nobody@127.0.0.1'", "remoteproc %s:" % command)
    assert "cause: the environment variable REMOTEPROC_TRANSPORT names no transport" in out.stderr
    assert "fix:   set it to paramiko or openssh" in out.stderr and "USER@HOST" not in out.stderr


def test_demo_with_ssh_options_but_no_host_is_a_usage_error():
    out = remoteproc_cmd("demo", "-p", "2222")
    assert out.returncode == 2 and "SSH options need a HOST" in out.stderr


def test_demo_against_a_host_that_refuses_says_cause_and_fix(sshd):
    from remoteproc.testing.net import free_port

    out = remoteproc_cmd("demo", "-F", "none", "--connect-timeout", "10", "nobody@127.0.0.1:%d" % free_port())
    assert out.returncode == 1, out.stdout + out.stderr
    _says_cause_and_fix(out, "remoteproc demo:", "-p PORT")


# -- a running script and its host ----------------------------------------------------------

def test_run_a_script_whose_connection_dies_exits_255_and_says_the_connection_was_lost(alias, scripts, tmp_path):
    """The agent on the host dies under a running script (killed, OOM, a reboot): the command
    exits 255, as ssh does, with the lost connection in its words, and the script is not left
    running on the host."""
    config, host = alias
    pidfile = tmp_path / "pid"
    path = scripts("killagent.py", """
        import os, signal, time
        with open(os.environ["PIDFILE"], "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGKILL)      # the agent that forked this script
        time.sleep(60)
    """)
    out = remoteproc_cmd("run", "-F", config, "-e", "PIDFILE=%s" % pidfile, host, path)
    assert out.returncode == cli.EXIT_FAILURE, out.stdout + out.stderr
    assert "connection lost" in out.stderr and host in out.stderr, out.stderr
    # once, as the command's report: the relay's warning of it was printed bare before that
    assert out.stderr.count("connection lost") == 1, out.stderr
    _says_cause_and_fix(out, "remoteproc run:", "check the network and the host")     # as every failure
    assert "Traceback" not in out.stderr
    assert gone(int(pidfile.read_text())), "the script outlived its agent"


_SLOW_WARNING = """
import logging, sys, time
emit = logging.Logger.log
def late(self, level, msg, *args, **kwargs):     # (the relay's warning of the loss: heard 0.5 s late)
    if args and "connection lost" in str(args[0]):
        time.sleep(0.5)
    return emit(self, level, msg, *args, **kwargs)
logging.Logger.log = late
from remoteproc import cli
code = cli.main(sys.argv[1:])
print("-- main returned", file=sys.stderr, flush=True)
time.sleep(1.5)
sys.exit(code)
"""


def test_run_a_lost_connection_is_said_once_however_late_the_relays_warning_comes(alias, scripts, tmp_path):
    """The relay's warning of a lost connection and the script's end come on different sockets:
    when the warning came second, it was printed bare after the command's own report (seen in
    CI).  The command waits for what the relay said before it lets go of its log handler."""
    config, host = alias
    path = scripts("killagent.py", """
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)      # the agent that forked this script
    """)
    out = subprocess.run([sys.executable, "-c", _SLOW_WARNING, "run", "-F", config, host, path],
                         capture_output=True, text=True, timeout=60, env=ENV, stdin=subprocess.DEVNULL)
    assert out.returncode == cli.EXIT_FAILURE, out.stdout + out.stderr
    report, _, after = out.stderr.partition("-- main returned")
    assert report.count("connection lost") == 1 and "remoteproc run:" in report, out.stderr
    assert after.strip() == "", out.stderr


def test_run_a_script_that_leaves_a_process_holding_its_connection(alias, scripts):
    """The script ends, but a process it started in the background still holds its Connection:
    the command prints every message the script sent, and exits with the script's status when
    the script ends, not when the background process lets go."""
    config, host = alias
    path = scripts("background.py", """
        import os, sys, time
        from multiprocessing.connection import Connection
        conn = Connection(int(os.environ["REMOTEPROC_FD"]))
        conn.send("before")
        if os.fork() == 0:                  # holds the Connection's fd for a while
            os.setsid()
            conn.send(os.getpid())
            time.sleep(20)
            os._exit(0)
        for i in range(3):
            conn.send(i)
        sys.exit(5)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "remoteproc", "run", "-F", config, host, path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=ENV)
    try:
        stdout, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate(timeout=10)
        raise AssertionError("the command waited for the script's background process: %r %r" % (stdout, stderr))
    lines = stdout.splitlines()
    background = [int(line) for line in lines if line.isdigit() and int(line) > 2]
    try:
        assert proc.returncode == 5, stdout + stderr
        assert [line for line in lines if not (line.isdigit() and int(line) > 2)] == ['"before"', "0", "1", "2"]
    finally:
        for pid in background:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_run_ctrl_c_kills_a_script_that_ignores_sigterm(alias, scripts):
    """Ctrl-C terminates the script; one that ignores SIGTERM is killed after the grace
    period: the command still ends with 130 and nothing is left on the host."""
    config, host = alias
    path = scripts("stubborn.py", """
        import os, signal, time
        from multiprocessing.connection import Connection
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        conn = Connection(int(os.environ["REMOTEPROC_FD"]))
        conn.send(os.getpid())
        time.sleep(120)
    """)
    with cli_run(config, host, path) as proc:
        pid = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(cli.TERMINATE_GRACE + 30) == cli.EXIT_INTERRUPTED
        assert "the remote script was terminated" in proc.stderr.read()
        assert gone(pid), "a script that ignores SIGTERM outlived Ctrl-C"


def test_run_a_script_that_raises_keyboardinterrupt_exits_as_python3_does(alias, scripts):
    """An uncaught KeyboardInterrupt in the script: its traceback, and the status a shell shows
    for python3 killed by SIGINT (130)."""
    config, host = alias
    path = scripts("interrupted.py", "def main():\n    raise KeyboardInterrupt\n\nmain()\n")
    local = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=30)
    out = remoteproc_cmd("run", "-F", config, host, path)
    assert local.returncode == -signal.SIGINT
    assert out.returncode == 128 + signal.SIGINT, out.stdout + out.stderr
    assert "KeyboardInterrupt" in out.stderr and 'interrupted.py", line 2, in main' in out.stderr
    assert "remoteproc/agent" not in out.stderr


# -- what the messages say -------------------------------------------------------------------

@pytest.mark.parametrize("error,cause", [
    (HostKeyError("h: the host key has CHANGED", "h"), "differs"),
    (HostKeyError("h: the host key is unknown", "h"), "not in known_hosts"),
    # found by an audit: these said "not in known_hosts ... or pass --accept-new", which cannot help
    (HostKeyError("h: the host key ssh-ed25519 SHA256:x is marked @revoked in /k; it is always refused", "h"),
     "revoked"),
    (HostKeyError("h (transport='openssh'): the host's key is marked @revoked in known_hosts. Fix: ask", "h"),
     "revoked"),
    (HostKeyError("h: the certificate authority that vouches for this host (@cert-authority in /k) is marked "
                  "@revoked in /k", "h"), "revoked"),
    (HostKeyError("h: the host key is unknown: this host is known only through a certificate authority "
                  "(@cert-authority in /k), and the paramiko transport cannot check host certificates", "h"),
     "certificate authority"),
    (HostKeyError("h: RevokedHostKeys /r is a key revocation list (KRL), which the paramiko transport", "h"),
     "key revocation list"),
    (HostKeyError("h: cannot check the host key x against RevokedHostKeys /r: denied", "h"), "cannot be read"),
    (HostKeyError("h: the host key is unknown (x), and there is no user known_hosts file to record it in", "h"),
     "no known_hosts file"),
    # (found by an audit, G5: the words of a file's name or of a host's were taken for the message's)
    (HostKeyError("h: the host key is unknown (x). Note: a key for this host is in /kh/known_hosts.before-revoked-"
                  "cleanup; if you trust it: `cat /kh/known_hosts.before-revoked-cleanup >> /kh/known_hosts`", "h"),
     "not in known_hosts"),
    (HostKeyError("revoked.example: the host key is unknown", "revoked.example"), "not in known_hosts"),
    (ConfigError("h: bad", "h"), "not usable as given"),
    # (found by an audit: a missing -F file under --transport openssh got "write the host as HOST ...")
    (ConfigError("h: ssh refuses this host or its configuration: Can't open user config file /c. Fix: ...", "h"),
     "refuses the host or its ssh configuration"),
    (ConnectionLostError("h: connection lost", "h"), "went away"),
    (BootstrapError("h: cannot start the process in directory '/x'", "h"), "--cwd"),
    (BootstrapError("h: no python", "h"), "could not be started on the host"),
    (ConnectionLostError("h: the local relay process ended unexpectedly", "h"), "relay process on this machine"),
    (RemoteProcessError("h: odd", "h"), "remoteproc failed"),
])
def test_each_error_has_its_own_cause(error, cause):
    said, fix = cli.explain(error)
    assert cause in said and fix
    if cause in ("revoked", "certificate authority"):      # (recording the key mends neither)
        assert "above" not in fix and "--accept-new" not in fix, fix


def test_the_connect_timeout_fix_is_said_as_the_flag():
    """Found by an audit: the openssh transport's timeout said "raise connect_timeout" in a
    command line report, where the flag is --connect-timeout."""
    from remoteproc.ssh import openssh
    from remoteproc.ssh.target import Target

    error = openssh.failure(Target(spec="h", hostname="h", port=22, username="u"), 255,
                            "ssh: connect to host h port 22: Connection timed out")
    assert "raise connect_timeout=" in str(error), error
    assert "raise --connect-timeout" in cli.in_cli_terms(str(error)), cli.in_cli_terms(str(error))


def test_exit_status_as_a_shell_shows_it():
    assert [cli._exit_status(c) for c in (None, 0, 3, -9, 256 + 7)] == [255, 0, 3, 137, 7]


@pytest.mark.parametrize("found,said", [
    (None, "?"), ("python=python3.11", "as given (python=python3.11)"), ("python3", "python3 on the login PATH"),
    ("pyenv", "under ~/.pyenv/versions"), ("/opt/py/bin/python3", "in /opt/py/bin/python3"),
])
def test_check_says_where_the_remote_python_was_found(found, said):
    assert cli._found_text(found) == said


# -- Ctrl-C while connecting --------------------------------------------------------------------

@contextlib.contextmanager
def _connecting_to_a_silent_host(command: str, transport: str) -> Iterator[subprocess.Popen]:
    """``remoteproc COMMAND`` (in a session of its own) connecting to a host that accepts the TCP
    connection and never answers; ended by its group (SIGKILL) if the test leaves it running."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(60)
    port = listener.getsockname()[1]
    argv = [sys.executable, "-m", "remoteproc", command, "-F", "none", "--connect-timeout", "600", "-p", str(port),
            "--transport", transport, "nobody@127.0.0.1"] + (["script.py"] if command == "run" else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=ENV, start_new_session=True)
    conn = None
    try:
        conn, _ = listener.accept()         # it is connecting now
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
        if conn is not None:
            conn.close()
        listener.close()


@pytest.mark.parametrize("command,transport", [("run", "paramiko"), ("run", "openssh"), ("check", "paramiko"),
                                               ("cache", "paramiko"), ("demo", "paramiko")])
def test_ctrl_c_while_connecting_to_a_silent_host_exits_130_at_once_without_a_traceback(command, transport):
    """The host accepts the TCP connection but never answers (a hung sshd, a firewall that
    swallows the banner): Ctrl-C ends every command with 130 and one line, at once (not after
    the relay's 10 s bound for flushing output: a connection still being made has none), and
    nothing it started (its relay, its ssh) is left behind."""
    import time

    from proctable import eventually

    with _connecting_to_a_silent_host(command, transport) as proc:
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - interrupted
        assert proc.returncode == cli.EXIT_INTERRUPTED, stderr
        # (the one bound here: the relay waited 10 s for a link still connecting before it let go;
        # an interrupted command ends in well under a second, 8 s leaves room for a busy machine)
        assert took < 8, "Ctrl-C took %.1f s to end the command" % took
        assert "remoteproc %s: interrupted" % command in stderr and "Traceback" not in stderr, stderr

        def group_gone():
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        assert eventually(group_gone, 15), "a process of the command outlived it"


@pytest.mark.parametrize("command,transport", [("run", "paramiko"), ("run", "openssh"), ("check", "paramiko")])
def test_ctrl_c_pressed_again_while_the_command_winds_down_adds_no_traceback(command, transport):
    """An impatient user presses Ctrl-C three times while the command connects to a silent
    host: the first interrupts it, the others land in its clean-up (joining its output thread,
    multiprocessing's atexit): still 130 and one line, no traceback, no "Exception ignored"."""
    import time

    with _connecting_to_a_silent_host(command, transport) as proc:
        for _ in range(3):
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                break
            time.sleep(0.04)
        _stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == cli.EXIT_INTERRUPTED, stderr
        assert "remoteproc %s: interrupted" % command in stderr, stderr
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


_SLOW_STOP = """
import sys, time
from remoteproc.relay import client
real = client.shutdown
def slow(*args, **kwargs):      # (the relay's stop, made long enough to be interrupted)
    print("-- stopping", file=sys.stderr, flush=True)
    time.sleep(3)
    return real(*args, **kwargs)
client.shutdown = slow
from remoteproc import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_ctrl_c_while_the_command_winds_down_is_its_one_line_and_130(alias):
    """Found by an audit (H6): a Ctrl-C after `check` said OK, while the interpreter's exit stopped
    the relay, printed "Exception ignored in atexit callback" and a traceback, and the status was 0."""
    config, host = alias
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STOP, "check", "-F", config, host], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    seen = ""
    while "-- stopping" not in seen:
        line = proc.stderr.readline()
        assert line, "the command ended before it stopped its relay: " + seen
        seen += line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    err = seen + err
    assert "OK" in out, out + err
    assert proc.returncode == 128 + signal.SIGINT, out + err
    assert "remoteproc check: interrupted" in err and "Traceback" not in err and "Exception ignored" not in err, err
