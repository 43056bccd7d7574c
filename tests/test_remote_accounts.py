"""Remote accounts set up the way real users have them: login shells other than bash (fish,
tcsh, zsh, ksh, dash), restricted ones (rbash), accounts that cannot log in (nologin,
/bin/false), startup files that misbehave (read stdin, print), and sshd restrictions.  sshd
runs our command through the account's login shell (``$SHELL -c``); the promise is that only
``python3`` is needed on the host, and that ``setup=`` lines run in that shell, in its syntax.

The accounts (``rpa*``) are created once and kept, as rpuser is; their login shell and startup
files are set by the fixture each run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import _unavailable
from own_sshd import own_sshd
from proctable import cmdline, eventually, gone, ppid, running

from remoteproc import BootstrapError, Pipe, Queue, RemoteProcess
from remoteproc.testing import LoopbackSSHServer, ensure_local_user, find_sshd

pytestmark = pytest.mark.timeout(60)

#: account -> (login shell, {startup file: text})
ACCOUNTS = {
    "rpafish": ("fish", {}),
    "rpatcsh": ("tcsh", {}),
    "rpazsh": ("zsh", {}),
    "rpaksh": ("ksh", {}),
    "rpadash": ("dash", {}),
    "rpanologin": ("/usr/sbin/nologin", {}),
    "rpafalse": ("/bin/false", {}),
    "rparbash": ("rbash", {}),
    # as restricted accounts are usually set up: PATH is a directory of the few commands allowed
    "rparpath": ("rbash", {".bashrc": "PATH=$HOME/rbin\n"}),
    "rparnopy": ("rbash", {".bashrc": "PATH=/nonexistent\n"}),
    "rpbread": ("bash", {".bashrc": "read x\n"}),
    "rpbhead": ("bash", {".bashrc": "head -n 1 >/dev/null\n"}),      # reads a block, not a line
    "rpbchatty": ("bash", {".bashrc": "echo Welcome to build01\n"}),
    "rpbwait": ("bash", {".bashrc": "while read x; do :; done\n"}),   # reads until EOF, as cat does
    "rpbprofile": ("bash", {".bashrc": "umask 077\nulimit -n 64\nexport TMPDIR=/nonexistent/tmp\n"
                                       "export LANG=xx_YY.UTF-8 PATH=/nonexistent/bin\n"}),
}
#: account -> {path in its home: what the symbolic link there points to}
LINKS = {"rparpath": {"rbin/python3": "python3"}}
STARTUP_FILES = (".bashrc", ".profile", ".bash_profile", ".zshrc", ".zshenv", ".kshrc", ".cshrc", ".tcshrc",
                 ".config/fish/config.fish")
TRANSPORTS = ["paramiko", "openssh"]
#: login shell -> setup= lines in its syntax: a value with quotes, backslash, %, non-ASCII; a line
#: that prints on stdout; a function (alias) that a later line calls, as ``module load`` is one
SETUP_LINES = {
    "sh": ["export RPA_SETUP='it'\\''s 50% \"odd\" \\ !x \u00e9'", "echo on stdout",
           "f() { export RPA_SETUP2=two; }", "f"],
    "fish": ["set -x RPA_SETUP 'it\\'s 50% \"odd\" \\\\ !x \u00e9'", "echo on stdout",
             "function f; set -gx RPA_SETUP2 two; end", "f"],
    # (tcsh -c expands ! even in single quotes, as it does for ssh HOST 'CMD')
    "tcsh": ["setenv RPA_SETUP 'it'\\''s 50% \"odd\" \\ \\!x \u00e9'", "echo on stdout",
             "alias f setenv RPA_SETUP2 two", "f"],
}
SETUP_VALUE = "it's 50% \"odd\" \\ !x \u00e9"


def _shell_path(shell: str) -> str:
    path = shell if shell.startswith("/") else shutil.which(shell)
    if not path or not os.path.exists(path):
        _unavailable("no %s on this machine (scripts/test.sh installs fish, tcsh, zsh and ksh)" % shell)
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackSSHServer]:
    if os.geteuid() != 0:
        _unavailable("the rpa* accounts need the tests to run as root")
    if find_sshd() is None:
        _unavailable("no sshd binary (scripts/test.sh installs openssh-server)")
    for name, (shell, files) in ACCOUNTS.items():
        path = _shell_path(shell)
        try:
            home = ensure_local_user(name)
        except RuntimeError as exc:
            _unavailable("cannot set up local user %r: %s" % (name, exc))
        if pwd.getpwnam(name).pw_shell != path:
            subprocess.run(["usermod", "-s", path, name], check=True, capture_output=True, timeout=30)
        pw = pwd.getpwnam(name)
        for rel in STARTUP_FILES:
            target = os.path.join(home, rel)
            if rel in files:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "w") as f:
                    f.write(files[rel])
                os.chown(target, pw.pw_uid, pw.pw_gid)
            elif os.path.lexists(target):
                os.unlink(target)
        for rel, program in LINKS.get(name, {}).items():
            target = os.path.join(home, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                os.unlink(target)
            found = shutil.which(program, path="/usr/local/bin:/usr/bin:/bin")
            if found is None:
                _unavailable("no %s in /usr/local/bin:/usr/bin:/bin for %s" % (program, name))
            os.symlink(found, target)
    srv = LoopbackSSHServer(users=list(ACCOUNTS))
    try:
        srv.start()
    except (RuntimeError, OSError) as exc:
        _unavailable("cannot start a loopback sshd: %s" % exc)
    try:
        yield srv
    finally:
        srv.stop()


def _echo(conn, x):
    conn.send(("echo", x, os.environ.get("RPA_SETUP")))
    conn.close()


def _put(q, x):
    q.put(x * 2)


def _setup_env(conn):
    conn.send((os.environ.get("RPA_SETUP"), os.environ.get("RPA_SETUP2"), os.getpid()))
    conn.close()


def _round_trip(srv: LoopbackSSHServer, name: str, transport: str, **kw) -> None:
    opts = dict(srv.options(name), transport=transport, connect_timeout=5, **kw)
    parent, child = Pipe()
    p = RemoteProcess(srv.spec(name), target=_echo, args=(child, 21), **opts)
    p.start()
    child.close()
    assert parent.poll(15)
    assert parent.recv() == ("echo", 21, None)
    p.join(15)
    assert p.exitcode == 0
    q = Queue()
    p = RemoteProcess(srv.spec(name), target=_put, args=(q, 4), **opts)
    p.start()
    assert q.get(timeout=15) == 8
    p.join(15)
    assert p.exitcode == 0


def _first_message(srv: LoopbackSSHServer, name: str, transport: str, target, **kw):
    """A process running ``target(conn)`` on ``name``'s account, and the first thing it sent."""
    parent, child = Pipe()
    p = RemoteProcess(srv.spec(name), target=target, args=(child,),
                      **dict(srv.options(name), transport=transport, connect_timeout=5, **kw))
    p.start()
    child.close()
    assert parent.poll(15)
    return p, parent.recv()


def _one_message(srv: LoopbackSSHServer, name: str, transport: str, **kw):
    """What ``_setup_env`` says from a process on ``name``'s account."""
    p, got = _first_message(srv, name, transport, _setup_env, **kw)
    p.join(15)
    assert p.exitcode == 0
    return got


def _fails(srv: LoopbackSSHServer, name: str, transport: str, **kw) -> str:
    kw.setdefault("connect_timeout", 5)
    p = RemoteProcess(srv.spec(name), target=_put, args=(None, 1), **dict(srv.options(name), transport=transport,
                                                                          **kw))
    with pytest.raises(BootstrapError) as info:
        p.start()
    return str(info.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["rpafish", "rpatcsh", "rpazsh", "rpaksh", "rpadash", "rpbprofile"])
def test_pipe_and_queue_under_each_login_shell(server, name, transport):
    _round_trip(server, name, transport)


@pytest.mark.parametrize("name,transport", [("rpafish", "paramiko"), ("rpafish", "openssh"), ("rpatcsh", "paramiko"),
                                            ("rpatcsh", "openssh"), ("rpazsh", "paramiko"), ("rpaksh", "openssh"),
                                            ("rpbprofile", "paramiko")])
def test_setup_lines_in_the_login_shells_own_syntax(server, name, transport):
    """Each shell gets its own syntax, runs every line in one shell (a function defined by one line
    is there for the next), and what a line prints on stdout does not reach the protocol."""
    shell = ACCOUNTS[name][0]
    lines = SETUP_LINES[shell if shell in SETUP_LINES else "sh"]
    assert _one_message(server, name, transport, setup=lines)[:2] == (SETUP_VALUE, "two")


@pytest.mark.parametrize("name,line,transport", [("rpafish", "set -l x 1; echo said it; false", "paramiko"),
                                                 ("rpafish", "if", "openssh"),       # a syntax error
                                                 ("rpatcsh", "echo said it; false", "openssh"),
                                                 ("rpatcsh", "setenv A B C", "paramiko")])  # an error of tcsh's own
def test_a_failing_setup_line_is_a_clear_error_in_every_login_shell(server, name, line, transport):
    said = _fails(server, name, transport, setup=["true", line, "true"])
    assert "setup line 2 %r failed with exit status" % line in said, said
    if "said it" in line:
        assert "its output: said it" in said and "exit status 1" in said, said
    if line == "setenv A B C":
        assert "setenv: Too many arguments" in said, said


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name,words", [("rpanologin", "nologin"), ("rpafalse", "/bin/false"),
                                        ("rparnopy", "restricted shell")])
def test_an_account_that_cannot_run_our_command_is_a_clear_error(server, name, words, transport):
    said = _fails(server, name, transport)
    assert words in said and "usermod -s /bin/bash %s" % name in said, said
    assert "pass python=" not in said, said
    if name == "rparnopy":
        assert "no python3 on its PATH" in said, said


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("python", ["/bin/false", ["/bin/false", "python3"]], ids=["path", "list"])
def test_a_python_that_exits_1_without_a_word_is_named_not_the_login_shell(server, transport, python):
    """Found by an audit: python= naming a wrapper that exits 1 without a word (a site's module
    system missing) was blamed on the account's login shell, with ``usermod -s /bin/bash`` as the
    fix, though the shell had run our command.  The error names python= and its status now."""
    said = _fails(server, "rpadash", transport, python=python)
    assert "could not start the agent with python=%r, exit status 1" % (python,) in said, said
    assert "login shell" not in said and "usermod" not in said, said
    assert 'exec python3 "$@"' in said, said


@pytest.mark.loopback_only      # (reads this machine's /proc)
@pytest.mark.parametrize("name,transport", [("rparbash", "paramiko"), ("rparpath", "openssh")])
def test_restricted_bash_runs_a_process_and_leaves_nothing(server, name, transport):
    """rbash refuses exec and /bin/sh: it runs python3 from its PATH itself, as for ssh HOST python3 -c.
    (bash 5.1+ execs that last command; an older one stays as the agent's parent.)  When the sshd
    session dies, nothing of it outlives it."""
    p, pid = _first_message(server, name, transport, _sleeper)
    chain = [ppid(pid)]                 # the agent, then its parents up to sshd's process for the session
    while "sshd" not in cmdline(chain[-1]) and len(chain) < 5:
        chain.append(ppid(chain[-1]))
    assert "sshd" in cmdline(chain[-1]), [cmdline(x) for x in chain]
    os.kill(chain[-1], signal.SIGKILL)
    p.join(30)
    assert p.exitcode is not None
    assert gone(pid) and all(gone(x) for x in chain[:-1]), "remote processes outlived their sshd session"


def _sleeper(conn):
    conn.send(os.getpid())
    time.sleep(60)


@pytest.mark.parametrize("name,transport", [("rpbread", "paramiko"), ("rpbread", "openssh"), ("rpbhead", "paramiko"),
                                            ("rpbchatty", "openssh")])
def test_startup_files_that_read_stdin_or_print(server, name, transport):
    """The blob goes only once the command says it runs: a startup file that reads stdin gets
    empty lines, not the blob, and what one prints on stdout is not taken for the protocol."""
    assert _one_message(server, name, transport)[:2] == (None, None)


@pytest.mark.loopback_only      # (reads this machine's /proc)
def test_a_startup_file_that_waits_for_input_is_a_clear_error(server):
    """As ssh HOST true hangs there: a clear error after max(connect_timeout, 10 s), and nothing left
    behind.  (Both transports at once: the wait is 10 s.)"""
    said = {}

    def fails(transport):
        said[transport] = _fails(server, "rpbwait", transport, connect_timeout=2)

    threads = [threading.Thread(target=fails, args=(transport,)) for transport in TRANSPORTS]
    for th in threads:
        th.start()
    for th in threads:
        th.join(40)
    assert sorted(said) == sorted(TRANSPORTS), said
    for text in said.values():
        assert "did not run remoteproc's command within 10s" in text and "~/.bashrc" in text, text
        assert "stdin" in text and "[ -t 0 ]" in text and "raise connect_timeout" in text, text
    uid = pwd.getpwnam("rpbwait").pw_uid
    assert eventually(lambda: not _processes_of(uid)), [cmdline(x) for x in _processes_of(uid)]


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat("/proc/" + entry).st_uid == uid and running(int(entry)):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_a_force_command_is_a_clear_error(tmp_path):
    with own_sshd(str(tmp_path), "ForceCommand /bin/echo forced") as sshd:
        p = RemoteProcess("%s@127.0.0.1:%d" % (pwd.getpwuid(os.geteuid()).pw_name, sshd.port), target=_put,
                          args=(None, 1), key_filename=sshd.client_key,
                          known_hosts=sshd.known_hosts, connect_timeout=5)   # type: ignore[attr-defined]
        with pytest.raises(BootstrapError, match="ForceCommand"):
            p.start()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_restrictive_sshd_options_we_do_not_need(tmp_path, transport):
    lines = ("MaxSessions 1", "AllowTcpForwarding no", "PermitTunnel no", "X11Forwarding no", "AcceptEnv NONE",
             "PermitUserEnvironment no")
    with own_sshd(str(tmp_path), *lines) as sshd:
        opts = dict(key_filename=sshd.client_key, known_hosts=sshd.known_hosts,  # type: ignore[attr-defined]
                    connect_timeout=5, transport=transport)
        host = "%s@127.0.0.1:%d" % (pwd.getpwuid(os.geteuid()).pw_name, sshd.port)
        parent, child = Pipe()
        p = RemoteProcess(host, target=_echo, args=(child, 5), **opts)
        p.start()
        child.close()
        assert parent.poll(15) and parent.recv() == ("echo", 5, None)
        p.join(15)
        assert p.exitcode == 0
