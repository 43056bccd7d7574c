"""The local side's environments, as users run their programs: a service's or cron's bare
environment, ``$HOME`` elsewhere, an interpreter run with ``-E``/``-I``, a deleted current
directory, a program that changes ``os.environ`` for other interpreters.

Each test runs a small program as a subprocess, against the suite's real loopback sshd, under both
transports where the transport matters.  The account tests run as an account of their own
(``ACCOUNT``, created once and kept, as ``tests/test_ssh_user_setups.py`` does for its client),
with its own ``~/.ssh`` and a venv made by ``python3 -m venv --system-site-packages``: ``ssh``
finds ``~/.ssh`` through the password database, so only a real account shows what each transport
reads when ``$HOME`` says otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PLAIN_USER
from test_ssh_user_setups import TRANSPORTS, User, client_account, loopback_line

import remoteproc

pytestmark = pytest.mark.timeout(120)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(remoteproc.__file__)))
RUN_TIMEOUT = 60.0
ACCOUNT = "rplocal"
"""The account whose ~/.ssh and venv the tests write (created if missing, left in place)."""

#: a user's program: RemoteProcess with a Pipe and a Queue, a Pool and an Executor; the result (or
#: the error's type and message) as one JSON line.  argv: host, options as JSON.
PROGRAM = textwrap.dedent("""\
    import json, os, sys

    def work(conn, q, x):
        conn.send(("hi", x))
        q.put(x * 2)

    def square(x):
        return x * x

    def main(host, options):
        import remoteproc
        from remoteproc import Executor, Pipe, Pool, Queue, RemoteProcess
        try:
            a, b = Pipe()
            q = Queue()
            p = RemoteProcess(host, target=work, args=(b, q, 21), **options)
            p.start()
            got = {"pipe": a.recv(), "queue": q.get(timeout=30)}
            p.join(30)
            got["exitcode"] = p.exitcode
            with Pool([host], processes_per_host=2, **options) as pool:
                got["pool"] = pool.map(square, range(4))
            with Executor([host], processes_per_host=1, **options) as ex:
                got["executor"] = list(ex.map(square, range(3)))
            return got
        except remoteproc.RemoteProcessError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:
            return {"untyped": type(exc).__name__, "message": repr(exc)}

    if __name__ == "__main__":
        out = main(sys.argv[1], json.loads(sys.argv[2]))
        with open(os.environ["RESULT"], "w") as f:
            json.dump(out, f)
    """)

WORKED = {"pipe": ["hi", 21], "queue": 42, "exitcode": 0, "pool": [0, 1, 4, 9], "executor": [0, 1, 4]}


def _run(argv: list[str], env: dict[str, str], result: str, **kwargs: Any) -> dict[str, Any]:
    """Run ARGV with exactly ENV (plus RESULT); the program's JSON result."""
    if os.path.exists(result):
        os.unlink(result)
    done = subprocess.run(argv, env={**env, "RESULT": result}, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, **kwargs)
    assert os.path.exists(result), "the program wrote no result (status %s): %s" % (done.returncode,
                                                                                    done.stderr[-3000:])
    with open(result) as f:
        return json.load(f)


@pytest.fixture
def program(tmp_path) -> str:
    path = tmp_path / "program.py"
    path.write_text(PROGRAM)
    return str(path)


def _bare_env(**more: str) -> dict[str, str]:
    """What cron or a systemd service gives a program: PATH, and little else."""
    return {"PATH": "/usr/bin:/bin", **more}


# -- the interpreter's own flags ----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("flag", ["-E", "-I"])
def test_a_program_run_with_E_or_I_keeps_its_relay_from_the_environment_too(sshd, program, tmp_path, flag,
                                                                           transport):
    """``python3 -E`` / ``-I`` (a service that isolates its interpreter) ignores ``PYTHONHOME`` and
    ``PYTHONPATH``, which in that environment belong to another Python.  The relay process was
    started without the flag, read them, and died at once ("Fatal Python error: ... No module named
    'encodings'"), so start() failed with "the local relay process ended unexpectedly", where
    multiprocessing's spawn children get the flags and run."""
    boot = tmp_path / "boot.py"     # (-E/-I ignore PYTHONPATH: the checkout goes on sys.path by hand)
    boot.write_text("import runpy, sys\nsys.path.insert(0, %r)\nsys.argv = sys.argv[1:]\n"
                    "runpy.run_path(sys.argv[0], run_name='__main__')\n" % REPO)
    options = dict(sshd.options(), transport=transport)
    env = _bare_env(HOME=os.environ.get("HOME", "/root"), PYTHONHOME="/nonexistent", PYTHONPATH="/nonexistent")
    got = _run([sys.executable, flag, str(boot), program, sshd.spec(), json.dumps(options)], env,
               str(tmp_path / "result.json"))
    assert got == WORKED, got


# -- the current directory ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_python_c_whose_current_directory_was_deleted(sshd, tmp_path, transport):
    """``python3 -c`` (and ``python3 -``) has ``''`` on ``sys.path``, the current directory; a
    program whose directory was removed under it (a cleaned-up build or temp dir) failed in start()
    with a bare ``FileNotFoundError`` from ``os.getcwd()``, where a local fork child runs."""
    gone = tempfile.mkdtemp(dir=str(tmp_path))
    code = PROGRAM.replace('if __name__ == "__main__":', "if True:").replace(
        "import json, os, sys\n", "import json, os, sys\nos.chdir(%r); os.rmdir(%r)\n" % (gone, gone), 1)
    options = dict(sshd.options(), transport=transport)
    env = _bare_env(HOME=os.environ.get("HOME", "/root"), PYTHONPATH=REPO)
    got = _run([sys.executable, "-c", code, sshd.spec(), json.dumps(options)], env, str(tmp_path / "result.json"))
    assert got == WORKED, got


# -- a relay that cannot start ------------------------------------------------------------------

RELAY_DIES = textwrap.dedent("""\
    import json, os, sys
    import remoteproc
    from remoteproc import RemoteProcess

    def f():
        pass

    # set for another Python that this program runs: the relay process inherits it, and cannot start
    os.environ["PYTHONHOME"] = "/nonexistent"
    seen = []
    for _ in range(8):
        try:
            RemoteProcess(sys.argv[1], target=f, **json.loads(sys.argv[2])).start()
            seen.append(["started", ""])
        except Exception as exc:
            seen.append([type(exc).__name__, str(exc)])
    with open(os.environ["RESULT"], "w") as f:
        json.dump(seen, f)
    """)


def test_a_relay_that_cannot_start_is_a_typed_error_with_its_exit_status(sshd, tmp_path):
    """A relay process that ends at once (here: the program set ``PYTHONHOME`` for another Python
    in ``os.environ``, which the relay inherits, as a spawn child would) made the RemoteProcess
    constructor raise a bare ``BrokenPipeError`` now and then, and start() say only that the relay
    "ended unexpectedly".  Now: always ``ConnectionLostError`` from start(), with the relay's exit
    status and where its own words went."""
    prog = tmp_path / "relay_dies.py"
    prog.write_text(RELAY_DIES)
    env = _bare_env(HOME=os.environ.get("HOME", "/root"), PYTHONPATH=REPO)
    seen = _run([sys.executable, str(prog), sshd.spec(), json.dumps(sshd.options())], env,
                str(tmp_path / "result.json"))
    assert {kind for kind, _ in seen} == {"ConnectionLostError"}, seen
    for _, message in seen:
        assert message.startswith(sshd.spec() + ": the local relay process ended unexpectedly"), message
        assert "exit status 1" in message and "standard error" in message, message


# -- atexit ----------------------------------------------------------------------------------------

AT_EXIT = textwrap.dedent("""\
    import atexit, json, os, sys

    def at_exit():
        import remoteproc
        from remoteproc import Pipe, RemoteProcess
        try:
            a, b = Pipe()
            p = RemoteProcess(sys.argv[1], target=os.getpid, **json.loads(sys.argv[2]))
            p.start()
            p.join(30)
            out = {"exitcode": p.exitcode}
        except remoteproc.RemoteProcessError as exc:
            out = {"error": type(exc).__name__, "message": str(exc)}
        with open(os.environ["RESULT"], "w") as f:
            json.dump(out, f)

    if sys.argv[3] == "before":
        atexit.register(at_exit)
    import remoteproc
    if sys.argv[3] == "after-import":       # (remoteproc's RemoteProcess registered multiprocessing's exit)
        atexit.register(at_exit)
        sys.exit(0)
    first = remoteproc.RemoteProcess(sys.argv[1], target=os.getpid, **json.loads(sys.argv[2]))
    first.start()       # (the program's own work: its relay runs)
    first.join(30)
    if sys.argv[3] == "after":
        atexit.register(at_exit)
    """)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_start_in_an_atexit_handler(sshd, tmp_path, transport):
    """A handler registered after the program's first RemoteProcess runs before multiprocessing's exit
    function (atexit runs the last registered first), and its start works.  One registered before
    (at the program's top) runs after the relay was stopped: its start is refused (no relay that
    nothing would stop), and the error said neither the host nor that the handler's place in
    atexit's order is the fix.  (A local ``Process`` started there runs, unjoined by
    multiprocessing.)"""
    prog = tmp_path / "at_exit.py"
    prog.write_text(AT_EXIT)
    options = dict(sshd.options(), transport=transport)
    env = _bare_env(HOME=os.environ.get("HOME", "/root"), PYTHONPATH=REPO)
    argv = [sys.executable, str(prog), sshd.spec(), json.dumps(options)]
    assert _run(argv + ["after"], env, str(tmp_path / "after.json")) == {"exitcode": 0}
    # (found by an audit, H2: the error and the docs said "after the program's first RemoteProcess is
    # made", where the import of RemoteProcess is what registers multiprocessing's exit function)
    assert _run(argv + ["after-import"], env, str(tmp_path / "after-import.json")) == {"exitcode": 0}
    got = _run(argv + ["before"], env, str(tmp_path / "before.json"))
    assert got.get("error") == "ConnectionLostError", got
    assert got["message"].startswith(sshd.spec() + ": the program is exiting"), got
    assert "registered after `from remoteproc import RemoteProcess`" in got["message"], got


# -- no terminal ---------------------------------------------------------------------------------


def test_allow_prompt_without_a_terminal_says_so_not_to_pass_allow_prompt(sshd, program, tmp_path):
    """``allow_prompt=True`` in a program that has no terminal (cron, a service, ``setsid``, a daemon)
    with a key that needs its passphrase: ``ssh`` cannot ask, says nothing of it, and the login is
    refused.  The error's fix was "pass allow_prompt=True", which the program had done; it now says
    that there is no terminal to ask on, and what works without one."""
    key = str(tmp_path / "locked_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", key], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    options = {"port": sshd.port, "username": sshd.users[0], "transport": "openssh", "allow_prompt": True,
               "key_filename": key, "allow_agent": False, "look_for_keys": False, "ssh_config": False,
               "known_hosts": sshd.known_hosts}
    env = _bare_env(HOME=os.environ.get("HOME", "/root"), PYTHONPATH=REPO)
    got = _run([sys.executable, program, sshd.host, json.dumps(options)], env, str(tmp_path / "result.json"),
               start_new_session=True)      # (no controlling terminal, as under cron or a service)
    assert got.get("error") == "AuthenticationError", got
    message = got["message"]
    assert message.startswith("%s@%s:%d" % (sshd.users[0], sshd.host, sshd.port)), message
    assert "this program has no terminal" in message and "ssh-add" in message, message
    assert "pass allow_prompt=True" not in message, message


# -- an account of its own: its ~/.ssh, a venv, a service's environment ---------------------------


@pytest.fixture(scope="module")
def account() -> Iterator[dict[str, Any]]:
    """ACCOUNT, a python it can run remoteproc with, and PROGRAM (tests/test_ssh_user_setups.py)."""
    with client_account(ACCOUNT, PROGRAM) as found:
        yield found


@pytest.fixture(scope="module")
def venv(account: dict[str, Any]) -> str:
    """``python3 -m venv --system-site-packages`` of the account's python, with remoteproc and its
    packages on its path as a ``.pth`` file (as an install puts them): its python needs no PYTHONPATH."""
    import pwd

    own = account["own"] = os.path.join(account["scratch"], "own")     # (the account's: venv, results)
    os.mkdir(own, 0o755)
    entry = pwd.getpwnam(account["account"])
    os.chown(own, entry.pw_uid, entry.pw_gid)
    path = os.path.join(own, "venv")
    env = {**account["env"]}
    made = subprocess.run(["runuser", "-u", account["account"], "--", "env", "-i",
                           *("%s=%s" % kv for kv in env.items()), account["python"], "-m", "venv",
                           "--without-pip", "--system-site-packages", path],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd="/")
    assert made.returncode == 0, made.stderr
    python = os.path.join(path, "bin", "python")
    site = subprocess.run(["runuser", "-u", account["account"], "--", python, "-I", "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd="/", check=True).stdout.strip()
    with open(os.path.join(site, "remoteproc-tests.pth"), "w") as f:
        f.write("\n".join(env["PYTHONPATH"].split(os.pathsep)) + "\n")
    os.chmod(os.path.join(site, "remoteproc-tests.pth"), 0o644)
    return python


@pytest.fixture
def user(account: dict[str, Any], sshd) -> Iterator[User]:
    """ACCOUNT with a ~/.ssh as a user has it: a key, known_hosts, and an alias ``lab`` for the
    loopback sshd (as rpuser); removed at the end."""
    u = User(account)
    u.reset()
    u.copy(sshd.client_key, "id_ed25519")
    u.put("known_hosts", loopback_line(sshd) + "\n")
    u.put("config", "Host lab\n    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (sshd.port, PLAIN_USER), 0o600)
    try:
        yield u
    finally:
        shutil.rmtree(u.dot, ignore_errors=True)


def _as_account(u: User, argv: list[str], env: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    result = os.path.join(u.client["own"], "result.json")
    if os.path.exists(result):
        os.unlink(result)
    full = ["runuser", "-u", u.account, "--", "env", "-i", *("%s=%s" % kv for kv in {**env, "RESULT": result}.items()),
            *argv]
    done = subprocess.run(full, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd="/", **kwargs)
    assert os.path.exists(result), "the program wrote no result (status %s): %s" % (done.returncode,
                                                                                    done.stderr[-3000:])
    with open(result) as f:
        return json.load(f)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_service_environment_in_a_venv_with_its_stdio_closed(user, venv, transport):
    """What cron or a systemd unit gives: PATH alone (no HOME, USER, LOGNAME, SSH_AUTH_SOCK, TERM or
    locale), umask 077, fds 0-2 closed; the program in a venv (``--system-site-packages``).  Both
    transports find the account's ~/.ssh (paramiko's ``~`` falls back to the password database)."""
    argv = ["sh", "-c", 'umask 077; exec "$@" <&- >&- 2>&-', "sh", venv, user.client["program"], "lab",
            json.dumps({"transport": transport})]
    assert _as_account(user, argv, {"PATH": "/usr/bin:/bin"}) == WORKED


def test_home_without_ssh_names_the_accounts_ssh_with_the_paramiko_transport(user, venv, tmp_path):
    """``$HOME`` set to a directory without ``.ssh`` (a service's ``Environment=HOME=/var/lib/app``,
    ``env HOME=/tmp``): ``ssh`` reads the account's ~/.ssh all the same, so the openssh transport
    works; the paramiko transport follows ``$HOME``, found neither the alias nor the key, and said only
    "cannot resolve host name 'lab' ... Check the name".  Its errors now name $HOME, the account's
    ~/.ssh and the ways out, and the options they give work."""
    home = tempfile.mkdtemp(prefix="home-", dir=user.client["scratch"])
    os.chmod(home, 0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": home}
    program = user.client["program"]
    assert _as_account(user, [venv, program, "lab", json.dumps({"transport": "openssh"})], env) == WORKED
    got = _as_account(user, [venv, program, "lab", "{}"], env)
    assert got.get("error") == "ConnectError", got
    message = got["message"]
    assert "$HOME=%s" % home in message and "the account's home %s" % user.home in message, message
    assert "transport='openssh'" in message and "HOME=%s" % user.home in message, message
    named = {"ssh_config": os.path.join(user.dot, "config"), "known_hosts": os.path.join(user.dot, "known_hosts"),
             "key_filename": os.path.join(user.dot, "id_ed25519")}
    for name, path in named.items():
        assert "%s=%r" % (name, path) in message, message
    # a spec that needs no alias: the unknown host key, then the refused login, say it too
    spec = "%s@127.0.0.1:%d" % (PLAIN_USER, _port(user))
    got = _as_account(user, [venv, program, spec, "{}"], env)
    assert got.get("error") == "HostKeyError" and "$HOME=%s" % home in got["message"], got
    got = _as_account(user, [venv, program, spec, json.dumps({"known_hosts": named["known_hosts"]})], env)
    assert got.get("error") == "AuthenticationError", got
    assert "key_filename=%r" % named["key_filename"] in got["message"], got
    # and the way out it names works
    assert _as_account(user, [venv, program, "lab", json.dumps(named)], env) == WORKED
    # an empty $HOME (systemd's Environment=HOME=) is Python's "/": said too
    got = _as_account(user, [venv, program, "lab", "{}"], dict(env, HOME=""))
    assert got.get("error") == "ConnectError" and "$HOME='' (empty)" in got["message"], got


def _port(u: User) -> int:
    with open(os.path.join(u.dot, "config")) as f:
        return int(f.read().split("Port ")[1].split()[0])
