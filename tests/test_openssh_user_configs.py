"""``transport="openssh"`` under ssh configurations as users write them, from an account of its own.

The user's ``~/.ssh`` (an account of this module's, ``ACCOUNT``: ssh finds ``~/.ssh`` through the
password database) holds what people put there for their terminal: ``LogLevel DEBUG3`` while they
chase a problem, ``LogLevel QUIET`` to hush a lab, ``RequestTTY force``, ``RemoteCommand``, an
``EscapeChar``; and a host key that changed.  None of it may corrupt the binary channel, bury an
error under ssh's debug lines, or leave a failure without its cause.  The server is the suite's
loopback sshd (which logs in rpuser with ``sshd.client_key``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PLAIN_USER
from test_ssh_user_setups import User, client_account, loopback_line

pytestmark = pytest.mark.timeout(120)

ACCOUNT = "rpsshcfg"
"""The account whose ~/.ssh these tests write (created if missing and kept, like rpuser)."""

PROGRAM = textwrap.dedent("""\
    import json, os, sys, time
    from remoteproc import Pipe, RemoteProcess, RemoteProcessError

    def echo(conn):
        while True:
            data = conn.recv_bytes()
            conn.send_bytes(data)
            if not data:
                break
        conn.close()

    def lose_the_connection():
        # kill the sshd process of this session (the first sshd above us), then wait for the end;
        # first let start() return (a loss before the agent's "started" reached us is start()'s error)
        time.sleep(1)
        pid = os.getppid()
        for _ in range(20):
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%d/comm" % pid) as f:
                if f.read().strip() == "sshd":
                    os.kill(pid, 15)
                    break
            pid = int(fields[1])
        time.sleep(30)

    def main():
        host, size = sys.argv[1], int(sys.argv[2])
        try:
            if size < 0:
                p = RemoteProcess(host, target=lose_the_connection, transport="openssh")
                p.start()
                p.join(30)
                return {"exitcode": p.exitcode, "connection_error": str(p.connection_error)}
            parent, child = Pipe()
            p = RemoteProcess(host, target=echo, args=(child,), transport="openssh")
            p.start()
            child.close()
            # random bytes with ssh's escape sequence after every newline: a terminal or an escape
            # character on the channel would eat or act on them
            data = os.urandom(size).replace(b"\\n", b"\\n~.").replace(b"\\r", b"\\r~?")
            got = []
            for i in range(0, len(data), 1 << 20):
                parent.send_bytes(data[i:i + (1 << 20)])
                got.append(parent.recv_bytes())
            parent.send_bytes(b"")
            parent.recv_bytes()
            p.join(30)
            return {"identical": b"".join(got) == data, "exitcode": p.exitcode}
        except RemoteProcessError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}

    print("RESULT " + json.dumps(main()), flush=True)
    """)


@pytest.fixture(scope="module")
def account() -> Iterator[dict[str, Any]]:
    with client_account(ACCOUNT, PROGRAM) as found:
        yield found


@pytest.fixture
def user(account: dict[str, Any]) -> Iterator[User]:
    """ACCOUNT with an empty ~/.ssh, removed at the end."""
    u = User(account)
    u.reset()
    try:
        yield u
    finally:
        shutil.rmtree(u.dot, ignore_errors=True)


def run(user: User, host: str, size: int = 0, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """The program as the user: (its result, its stderr, where the library's log goes)."""
    done = user.run_as([user.client["python"], user.client["program"], host, str(size)], env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, "the program said nothing (status %s): %s" % (done.returncode, done.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):]), done.stderr


def other_key(user: User, name: str) -> str:
    """A fresh key pair in the user's ~/.ssh that the server does not accept: its private file."""
    path = os.path.join(user.dot, name)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True, timeout=30,
                   capture_output=True)
    for f in (path, path + ".pub"):
        os.chown(f, user.uid, user.gid)
    return path


def alias(sshd: Any, name: str, *lines: str) -> str:
    return "Host %s\n    HostName 127.0.0.1\n    Port %d\n    User %s\n%s" % (
        name, sshd.port, PLAIN_USER, "".join("    %s\n" % line for line in lines))


def test_a_changed_host_key_names_the_known_hosts_line_and_the_command_that_removes_it(user, sshd):
    """The host's key changed (hashed known_hosts, the old key on line 2): the error says CHANGED, names
    the host, the file and line of the old key and ssh's own ``ssh-keygen -f FILE -R NAME`` as the fix,
    without the ``@@@`` frame of ssh's warning."""
    user.copy(sshd.client_key, "id_ed25519")
    old = other_key(user, "old_host_key")
    with open(old + ".pub") as f:
        old_public = " ".join(f.read().split()[:2])
    name = loopback_line(sshd).split()[0]
    known = user.put("known_hosts", "other.example %s\n%s %s\n" % (old_public, name, old_public))
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", known], check=True, timeout=30, capture_output=True)
    user.put("config", alias(sshd, "lo"))
    got, _ = run(user, "lo")
    assert got.get("error") == "HostKeyError", got
    message = got["message"]
    assert message.startswith("lo (%s@127.0.0.1:%d) (transport='openssh'): the host's key has CHANGED since it "
                              "was recorded in %s:2" % (PLAIN_USER, sshd.port, known)), message
    assert 'remove the old key with `ssh-keygen -f "%s" -R "%s"`, then connect once with `ssh lo`' % (
        known, name) in message, message
    assert "@@@" not in message


def test_ssh_debug_output_and_terminal_settings_of_the_config_leave_the_channel_and_the_log_clean(user, sshd):
    """An alias with ``LogLevel DEBUG3``, ``RequestTTY force``, ``EscapeChar ~`` and a ``RemoteCommand``:
    10 MB of random bytes with ``~.`` after every newline go there and back identical, and ssh's
    hundreds of debug lines are logged at DEBUG, not as warnings on the program's stderr.  A refused
    login under ``LogLevel DEBUG3`` is an AuthenticationError in ssh's words, not in 9 kB of debug lines."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    wrong = other_key(user, "wrong_key")
    user.put("config", alias(sshd, "lo", "LogLevel DEBUG3", "RequestTTY force", "EscapeChar ~",
                             "RemoteCommand tmux new -A -s main") +
             alias(sshd, "bad", "LogLevel DEBUG3", "IdentityFile %s" % wrong, "IdentitiesOnly yes"))
    got, stderr = run(user, "lo", 10 << 20)
    assert got == {"identical": True, "exitcode": 0}, (got, stderr[-2000:])
    assert "debug1:" not in stderr and "Authenticated to" not in stderr, stderr[-2000:]
    got, _ = run(user, "bad")
    assert got.get("error") == "AuthenticationError", got
    assert "debug1:" not in got["message"] and len(got["message"]) < 1000, got["message"]
    assert got["message"].endswith("Permission denied (publickey)."), got["message"]
    # a connection lost later: its error gives ssh's last words, not its last debug line ("Exit status -1")
    got, stderr = run(user, "lo", -1)
    assert got.get("exitcode") == 255, (got, stderr[-2000:])
    assert "ssh lost the connection (Connection to 127.0.0.1 closed by remote host.; the host's sshd ended it" in \
        got["connection_error"], got


def test_a_quiet_config_still_says_why_a_login_failed(user, sshd):
    """``LogLevel QUIET`` for the host: ssh fails without a word, and the failure was "ssh failed: no
    message", a ConnectError; ssh now runs with ``LogLevel ERROR`` (still no ``Permanently added``),
    and a refused login is an AuthenticationError with ssh's words."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    wrong = other_key(user, "wrong_key")
    user.put("config", alias(sshd, "bad", "LogLevel QUIET", "IdentityFile %s" % wrong, "IdentitiesOnly yes") +
             alias(sshd, "new", "LogLevel QUIET", "StrictHostKeyChecking accept-new",
                   "UserKnownHostsFile ~/.ssh/known_hosts_new"))
    got, _ = run(user, "bad")
    assert got.get("error") == "AuthenticationError", got
    assert "Permission denied (publickey)" in got["message"]
    got, stderr = run(user, "new", 1000)
    assert got == {"identical": True, "exitcode": 0}, got
    assert "Permanently added" not in stderr, stderr


@pytest.fixture
def wrappers(scripts: Any) -> Any:
    """write(name, body) -> path of an executable ``sh`` script that every account can run."""
    def write(name: str, body: str) -> str:
        path = scripts(name, "#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
        return path
    return write


def test_ssh_wrapper_scripts(user, sshd, wrappers):
    """An ``ssh`` wrapper (``$REMOTEPROC_SSH``) that adds ``-v -t``: the channel stays binary and clean,
    its debug lines and version line are no warnings.  One whose ssh is gone (status 127) is a
    ConnectError naming the wrapper and $REMOTEPROC_SSH (it was a ConfigError saying that ssh refused
    the host's configuration, with ``ssh -G box`` as the fix, which works)."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", alias(sshd, "lo"))
    verbose = wrappers("verbose-ssh", 'exec ssh -v -t "$@"\n')
    got, stderr = run(user, "lo", 1 << 20, {"REMOTEPROC_SSH": verbose})
    assert got == {"identical": True, "exitcode": 0}, (got, stderr[-2000:])
    assert "debug1:" not in stderr and "OpenSSH_" not in stderr, stderr[-2000:]
    gone = wrappers("gone-ssh", 'exec /nonexistent/bin/ssh "$@"\n')
    got, _ = run(user, "lo", 0, {"REMOTEPROC_SSH": gone})
    assert got.get("error") == "ConnectError", got
    assert got["message"].startswith("lo: transport='openssh' cannot run the ssh program %s ($REMOTEPROC_SSH): it "
                                     "exited with status 127" % gone), got
    assert "Fix: set REMOTEPROC_SSH to an ssh program" in got["message"], got


def test_a_quiet_jump_host_that_refuses_the_login_is_named(user, sshd):
    """A jump host whose alias says ``LogLevel QUIET`` refuses our key: its ``ssh -W`` said nothing, and
    the failure read as the target's sshd closing before its banner (MaxStartups as the fix, tried again
    for 6 s).  The jump hosts' config file of ours gives it ``LogLevel ERROR``: an AuthenticationError at
    the jump host, at once."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    wrong = other_key(user, "wrong_key")
    user.put("config", alias(sshd, "hop", "LogLevel QUIET", "IdentityFile %s" % wrong, "IdentitiesOnly yes") +
             alias(sshd, "lo", "ProxyJump hop"))
    got, _ = run(user, "lo")
    assert got.get("error") == "AuthenticationError", got
    assert got["message"].startswith("lo (%s@127.0.0.1:%d via hop) (transport='openssh'): at the jump host (hop): "
                                     % (PLAIN_USER, sshd.port)), got
    assert "Permission denied (publickey)" in got["message"], got


def test_a_jump_host_from_the_accounts_config_when_home_is_elsewhere(user, sshd):
    """$HOME elsewhere than the account's home (sudo without -H, some containers), holding an ssh config
    of its own: ``ssh lo`` reads the account's ~/.ssh/config, and so must the config file of ours that
    carries our options to the jump host (it included $HOME's, whose ``Port 1`` then applied to the
    target: "Could not resolve hostname lo")."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", alias(sshd, "hop") + alias(sshd, "lo", "ProxyJump hop"))
    elsewhere = tempfile.mkdtemp(prefix="remoteproc-home-")
    try:
        os.mkdir(os.path.join(elsewhere, ".ssh"))
        with open(os.path.join(elsewhere, ".ssh", "config"), "w") as f:
            f.write("Host *\n    Port 1\n")
        subprocess.run(["chmod", "-R", "a+rX", elsewhere], check=True, timeout=30)
        assert user.run_as(["ssh", "-o", "BatchMode=yes", "lo", "true"], {"HOME": elsewhere}).returncode == 0
        got, stderr = run(user, "lo", 1000, {"HOME": elsewhere})
        assert got == {"identical": True, "exitcode": 0}, (got, stderr[-2000:])
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
