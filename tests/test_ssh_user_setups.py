"""A new user's own SSH setup, and no connection option at all: ``RemoteProcess("alias", ...)``.

Everything lives in the user's ``~/.ssh`` (config aliases, keys, known_hosts, an agent), as
``ssh alias`` reads it, and the programs pass nothing but the host (and the transport).  They
run as a local account of their own (``CLIENT``, created once like rpuser and kept), whose
home directory holds the ``~/.ssh`` each test writes and removes: ``ssh`` finds ``~/.ssh``
through the password database, never through ``$HOME``, so only a real account shows what the
openssh transport reads.  The servers are the suite's real sshds: the loopback one (which logs
in rpuser with ``sshd.client_key``), the namespace hosts, and a few of the tests' own.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PLAIN_USER, _unavailable
from proctable import eventually

import remoteproc
from remoteproc.testing import LoopbackSSHServer, ensure_local_user, find_sshd
from remoteproc.testing.openssh import OpenSSHServer

pytestmark = pytest.mark.timeout(90)

CLIENT = "rpclient"
"""The account whose ~/.ssh the tests write (created if missing, left in place like rpuser)."""
REPO = os.path.dirname(os.path.dirname(os.path.abspath(remoteproc.__file__)))
#: what a client program needs besides remoteproc (top-level import names)
NEEDS = ("paramiko", "cloudpickle", "cryptography", "bcrypt", "nacl", "cffi", "_cffi_backend", "pycparser")
RUN_TIMEOUT = 60.0

PROGRAM = textwrap.dedent("""\
    import json, os, pwd, sys, time
    from remoteproc import Pipe, Pool, RemoteProcess, RemoteProcessError

    def who(conn):
        conn.send([pwd.getpwuid(os.getuid()).pw_name, os.environ.get("SSH_CONNECTION", "")])
        conn.close()

    def address(_item):
        time.sleep(0.2)
        return os.environ["SSH_CONNECTION"].split()[2]

    def main():
        mode, transport, hosts = sys.argv[1], sys.argv[2], sys.argv[3:]
        options = {} if transport == "-" else {"transport": transport}
        try:
            if mode == "pool":
                with Pool(hosts, **options) as pool:
                    return {"addresses": sorted(set(pool.map(address, range(4 * len(hosts)), chunksize=1)))}
            parent, child = Pipe()
            p = RemoteProcess(hosts[0], target=who, args=(child,), **options)
            p.start()
            child.close()
            got = parent.recv()
            p.join(30)
            return {"user": got[0], "connection": got[1].split(), "exitcode": p.exitcode}
        except RemoteProcessError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:
            return {"untyped": type(exc).__name__, "message": repr(exc)}

    print("RESULT " + json.dumps(main()), flush=True)
    """)


# -- the client account ----------------------------------------------------------------------


def as_account(account: str, argv: list[str], env: dict[str, str]) -> list[str]:
    """The command line that runs ARGV as ACCOUNT with exactly ENV (nothing of ours leaks in: no
    SSH_AUTH_SOCK, no HOME)."""
    return ["runuser", "-u", account, "--", "env", "-i", *("%s=%s" % kv for kv in env.items()), *argv]


def _as_client(argv: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT,
               account: str = CLIENT) -> subprocess.CompletedProcess:
    """Run ARGV as ACCOUNT (CLIENT) with exactly ENV."""
    return subprocess.run(as_account(account, argv, env), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def _copy_packages(into: str) -> None:
    """The modules a client program imports, and their metadata, copied where CLIENT can read them."""
    finder = getattr(importlib.metadata, "packages_distributions", None)     # (Python 3.10+)
    dists = finder() if finder is not None else {name: [name] for name in NEEDS}
    for name in NEEDS:
        spec = __import__(name)
        source = os.path.dirname(spec.__file__) if hasattr(spec, "__path__") else spec.__file__
        target = os.path.join(into, os.path.basename(source))
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
        for dist in dists.get(name, []):
            try:
                info = getattr(importlib.metadata.distribution(dist), "_path", None)
            except importlib.metadata.PackageNotFoundError:
                continue
            if info is not None and not os.path.exists(os.path.join(into, os.path.basename(str(info)))):
                shutil.copytree(str(info), os.path.join(into, os.path.basename(str(info))))


@pytest.fixture(scope="module")
def client() -> Iterator[dict[str, Any]]:
    """CLIENT's account, a python it can run remoteproc with, and the program above."""
    with client_account(CLIENT) as found:
        yield found


@contextlib.contextmanager
def client_account(account: str, program_text: str = PROGRAM) -> Iterator[dict[str, Any]]:
    """ACCOUNT (created if missing, kept), a python it can run remoteproc with, and a program;
    removed at the end (but the account).  This python is ours if ACCOUNT can run it, else the
    system's with copies of our packages (it must then be our major.minor, since compiled packages
    are copied).  Each test module uses an account of its own: modules run in parallel."""
    if os.geteuid() != 0:
        _unavailable("a client account of its own needs root")
    if find_sshd() is None or shutil.which("runuser") is None:
        _unavailable("needs sshd and runuser")
    try:
        home = ensure_local_user(account)
    except RuntimeError as exc:
        _unavailable("cannot set up local user %r: %s" % (account, exc))
    scratch = tempfile.mkdtemp(prefix="remoteproc-client-")
    os.chmod(scratch, 0o755)
    try:
        program = os.path.join(scratch, "program.py")
        with open(program, "w") as f:
            f.write(program_text)
        os.chmod(program, 0o644)
        # remoteproc itself, copied where CLIENT can read it: the checkout may sit under a directory
        # only root may enter (CI's, a mktemp -d)
        ours = os.path.join(scratch, "ours")
        shutil.copytree(os.path.join(REPO, "remoteproc"), os.path.join(ours, "remoteproc"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", ours], check=True, timeout=30)
        env = {"HOME": home, "USER": account, "LOGNAME": account, "SHELL": "/bin/sh", "LANG": "C.UTF-8",
               "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": ours, "PYTHONDONTWRITEBYTECODE": "1"}
        python = sys.executable
        probe = ["-c", "import paramiko, cloudpickle, remoteproc"]
        if _as_client([python, *probe], env, account=account).returncode != 0:
            python = "/usr/bin/python3"
            site = os.path.join(scratch, "site")
            _copy_packages(site)
            subprocess.run(["chmod", "-R", "a+rX", site], check=True, timeout=30)
            env["PYTHONPATH"] = ours + os.pathsep + site
            done = _as_client([python, "-c", "import sys; assert sys.version_info[:2] == %r; %s"
                               % (tuple(sys.version_info[:2]), probe[1])], env, account=account)
            if done.returncode != 0:
                _unavailable("no python that %s can run remoteproc with: %s" % (account, done.stderr[-500:]))
        yield {"home": home, "python": python, "program": program, "env": env, "scratch": scratch,
               "account": account}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class User:
    """CLIENT's ~/.ssh, written file by file, and its programs."""

    def __init__(self, client: dict[str, Any]) -> None:
        self.client = client
        self.home = client["home"]
        self.account = client.get("account", CLIENT)
        self.dot = os.path.join(self.home, ".ssh")
        entry = pwd.getpwnam(self.account)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def reset(self) -> None:
        shutil.rmtree(self.dot, ignore_errors=True)
        os.mkdir(self.dot, 0o700)
        os.chown(self.dot, self.uid, self.gid)

    def put(self, name: str, text: str, mode: int = 0o644) -> str:
        path = os.path.join(self.dot, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        os.chmod(path, mode)
        os.chown(path, self.uid, self.gid)
        return path

    def copy(self, source: str, name: str, mode: int = 0o600) -> str:
        with open(source) as f:
            return self.put(name, f.read(), mode)

    def run_as(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return _as_client(argv, {**self.client["env"], **(env or {})}, account=self.account)

    def program(self, mode: str, transport: str, hosts: list[str], env: dict[str, str] | None = None) -> dict:
        done = self.run_as([self.client["python"], self.client["program"], mode, transport, *hosts], env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, "the program said nothing (status %s): %s" % (done.returncode, done.stderr[-3000:])
        return json.loads(lines[-1][len("RESULT "):])

    def start(self, host: str, transport: str = "-", env: dict[str, str] | None = None) -> dict:
        """RemoteProcess(host, target=who, args=(child,)) as CLIENT: the remote user and SSH_CONNECTION,
        or the error's type and message."""
        return self.program("process", transport, [host], env)

    def works(self, host: str, transport: str = "-", env: dict[str, str] | None = None) -> dict:
        got = self.start(host, transport, env)
        assert "error" not in got and "untyped" not in got, got
        assert got["exitcode"] == 0
        return got

    def fails(self, host: str, transport: str, kind: str) -> str:
        got = self.start(host, transport)
        assert got.get("error") == kind, got
        return got["message"]


@pytest.fixture
def user(client: dict[str, Any]) -> Iterator[User]:
    """CLIENT with an empty ~/.ssh, removed at the end."""
    u = User(client)
    u.reset()
    try:
        yield u
    finally:
        shutil.rmtree(u.dot, ignore_errors=True)


@contextlib.contextmanager
def ssh_agent(u: User) -> Iterator[dict[str, str]]:
    """An ssh-agent of CLIENT's; yields the environment that names it."""
    directory = tempfile.mkdtemp(prefix="remoteproc-agent-")
    os.chown(directory, u.uid, u.gid)
    sock = os.path.join(directory, "agent.sock")
    agent = subprocess.Popen(["runuser", "-u", CLIENT, "--", "ssh-agent", "-D", "-a", sock],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        assert eventually(lambda: os.path.exists(sock), 10), "ssh-agent did not start"
        yield {"SSH_AUTH_SOCK": sock}
    finally:
        agent.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def encrypt(path: str, passphrase: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", passphrase, "-f", path], check=True, timeout=30,
                   capture_output=True)


def loopback_line(sshd: LoopbackSSHServer, name: str | None = None) -> str:
    """sshd's known_hosts line, under NAME if given."""
    with open(sshd.known_hosts) as f:
        line = f.read().strip()
    return line if name is None else "%s %s" % (name, line.split(None, 1)[1])


TRANSPORTS = ["paramiko", "openssh"]


# -- what works as `ssh alias` does -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_alias_from_includes_tokens_and_match_blocks_in_the_users_own_ssh_dir(user, sshd, transport):
    """HostName, Port and IdentityFile come from three places: an Include'd glob (relative to
    ~/.ssh), a ``Match host ... exec`` block (whose Port beats the later ``Host *`` one), and
    ``Host *``; the key file's name takes %d, %u, %h and %r; known_hosts is hashed; the host is
    given as ``user@alias``."""
    user.copy(sshd.client_key, "keys/%s-127.0.0.1-%s" % (CLIENT, PLAIN_USER))
    user.put("known_hosts", loopback_line(sshd) + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", os.path.join(user.dot, "known_hosts")], check=True,
                   timeout=30, capture_output=True)
    user.put("config", """\
        Include conf.d/*.conf
        Match host 127.0.0.1 exec "test %%n = box.lab"
            Port %d
        Host *
            Port 1
            IdentityFile %%d/.ssh/keys/%%u-%%h-%%r
            IdentitiesOnly yes
        """ % sshd.port)
    user.put("conf.d/10-lab.conf", "Host *.lab\n    HostName 127.0.0.1\n")
    got = user.works("%s@box.lab" % PLAIN_USER, transport)
    assert got["user"] == PLAIN_USER and got["connection"][2:] == ["127.0.0.1", str(sshd.port)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_config_file_others_can_write_is_refused_as_ssh_refuses_it(user, sshd, transport):
    """ssh stops at a ~/.ssh/config, or a file it Includes, that another user could write (whoever
    can write it can make it run any command: ProxyCommand, Match exec), and reads a group-writable
    one whose group has no other member (Debian's user private groups).  The paramiko transport
    read every such file and ran its commands; now both transports do as ``ssh -G`` does, and a
    refusal names the host, the file and the chmod that fixes it."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", "Include conf.d/*.conf\nHost box\n    HostName 127.0.0.1\n    Port %d\n    User %s\n"
             % (sshd.port, PLAIN_USER))
    user.put("conf.d/10-empty.conf", "# nothing here\n")
    refused = 0
    for name in ("config", "conf.d/10-empty.conf"):
        path = os.path.join(user.dot, name)
        for mode in (0o666, 0o664, 0o602, 0o644):
            os.chmod(path, mode)
            ssh_reads_it = user.run_as(["ssh", "-G", "box"]).returncode == 0
            got = user.start("box", transport)
            if ssh_reads_it:
                assert "error" not in got and got["exitcode"] == 0, (oct(mode), name, got)
            else:
                refused += 1
                assert got.get("error") == "ConfigError", (oct(mode), name, got)
                assert got["message"].startswith("box: ") and "chmod go-w %s" % path in got["message"], got
        os.chmod(path, 0o644)
    assert refused >= 4        # (0o666 and 0o602 of each file, whatever the account's groups)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_pool_over_four_aliases_one_of_them_two_jumps_away(user, netns, transport):
    """``Pool(["n1", "n2", "n3", "n4"])``: n3 is reached through n1 and n2 (ProxyJump), n4 through a
    ProxyCommand running ``ssh -W``; all of it from ~/.ssh alone."""
    hosts = netns.hosts
    user.copy(netns.client_key, "id_ed25519")
    user.put("known_hosts", "".join(h.known_hosts_line(p) for h in hosts.values() for p in (22, 2222)))
    user.put("config", """\
        Host n1
            HostName {h1}
        Host n2
            HostName {h2}
        Host n3
            HostName {h3}
            ProxyJump n1,n2
        Host n4
            HostName {h4}
            Port 2222
            ProxyCommand ssh -W %h:%p n2
        Host n*
            User {user}
        """.format(user=PLAIN_USER, **{n: h.address for n, h in hosts.items()}))
    got = user.program("pool", transport, ["n1", "n2", "n3", "n4"])
    assert got == {"addresses": sorted(h.address for h in hosts.values())}


def test_a_control_master_of_the_config_is_used_by_ssh_and_harmless_to_paramiko(user, sshd):
    """``ControlMaster auto`` with ``ControlPersist``: the openssh transport's ssh starts the master
    (and the program still ends at once), the next program rides it; paramiko ignores it."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", """\
        Host cm
            HostName 127.0.0.1
            Port %d
            User %s
            ControlMaster auto
            ControlPath ~/.ssh/cm-%%C
            ControlPersist 20
        """ % (sshd.port, PLAIN_USER))
    try:
        first = user.works("cm", "openssh")
        assert any(name.startswith("cm-") for name in os.listdir(user.dot)), "no control socket"
        second = user.works("cm", "openssh")
        assert second["connection"] == first["connection"], "the second program did not ride the master"
        assert user.works("cm", "paramiko")["connection"] != first["connection"]
    finally:
        user.run_as(["ssh", "-O", "exit", "cm"])


# -- what did not work before: each test is the behaviour of ssh (or the fix that works) ----------


def test_a_refused_login_names_kerberos_only_when_the_server_takes_it(user, sshd):
    """Debian's /etc/ssh/ssh_config has ``GSSAPIAuthentication yes`` for every host: a refused key must
    not send the user to transport='openssh' for Kerberos when the server takes no GSSAPI at all
    (ssh is refused just the same)."""
    subprocess.run(["runuser", "-u", CLIENT, "--", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    os.path.join(user.dot, "id_ed25519")], check=True, timeout=30, capture_output=True)
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", "Host lo\n    HostName 127.0.0.1\n    Port %d\n    User %s\nHost *\n"
                       "    GSSAPIAuthentication yes\n" % (sshd.port, PLAIN_USER))
    message = user.fails("lo", "paramiko", "AuthenticationError")
    assert "the server accepts publickey;" in message and "id_ed25519 (refused)" in message
    assert "GSSAPI" not in message.split("Fix:")[0]
    assert "asks for GSSAPIAuthentication" not in message
    assert "add your public key to ~%s/.ssh/authorized_keys" % PLAIN_USER in message


def test_an_encrypted_key_without_its_pub_file_is_found_in_the_agent(user, sshd):
    """``IdentitiesOnly yes`` with an encrypted key file that has no ``.pub`` beside it, the key loaded
    in ssh-agent: ssh reads the public half from the key file itself and offers the agent's key."""
    key = user.copy(sshd.client_key, "id_work")
    encrypt(key, "s3cret")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", "Host lo\n    HostName 127.0.0.1\n    Port %d\n    User %s\n    IdentityFile ~/.ssh/id_work\n"
                       "    IdentitiesOnly yes\n" % (sshd.port, PLAIN_USER))
    message = user.fails("lo", "paramiko", "AuthenticationError")
    assert "id_work (encrypted: pass passphrase= or add it to ssh-agent)" in message
    assert "load it into ssh-agent with ssh-add" in user.fails("lo", "openssh", "AuthenticationError")
    askpass = user.put("askpass", "#!/bin/sh\necho s3cret\n", 0o700)
    with ssh_agent(user) as env:
        added = user.run_as(["ssh-add", key], {**env, "SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force",
                                               "DISPLAY": ":0"})
        assert added.returncode == 0, added.stderr
        for transport in TRANSPORTS:
            assert user.works("lo", transport, env)["user"] == PLAIN_USER


def test_a_cert_authority_line_for_the_bare_name_is_recognised(user):
    """``@cert-authority 127.0.0.1 CA`` (no port) among plain lines: ssh trusts a certified host on any
    port of that name; paramiko cannot check certificates and must say so (transport='openssh'), not
    suggest answering a question ssh never asks."""
    server = LoopbackSSHServer(users=[PLAIN_USER], certificates=True).start()
    try:
        for suffix in ("", ".pub", "-cert.pub"):
            user.copy(server.client_key + suffix, "id_ed25519" + suffix, 0o600 if not suffix else 0o644)
        with open(server.known_hosts) as f:
            ca = f.read().split(None, 2)[2].strip()
        user.put("known_hosts", "other.example %s\n@cert-authority 127.0.0.1 %s\n" % (ca, ca))
        user.put("config", "Host ca\n    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (server.port, PLAIN_USER))
        assert user.works("ca", "openssh")["user"] == PLAIN_USER
        message = user.fails("ca", "paramiko", "HostKeyError")
        assert "@cert-authority" in message and "transport='openssh'" in message
        assert "answer yes" not in message
    finally:
        server.stop()


def test_a_server_whose_algorithms_paramiko_lacks_names_the_openssh_transport(user):
    """An sshd that offers only chacha20-poly1305: ssh logs in, paramiko has no such cipher; the error
    must say so and name transport='openssh', not ask whether an SSH server answers there."""
    workdir = tempfile.mkdtemp(prefix="remoteproc-sshd-")     # (sshd reads authorized_keys as rpuser)
    os.chmod(workdir, 0o711)
    server = OpenSSHServer(find_sshd(), workdir, [PLAIN_USER], os.path.join(workdir, "client_key"),
                           config_first=["Ciphers chacha20-poly1305@openssh.com"])
    try:
        server.start()
        user.copy(os.path.join(workdir, "client_key"), "id_ed25519")
        user.put("known_hosts", "[127.0.0.1]:%d %s\n" % (server.port, server.host_public))
        user.put("config", "Host chacha\n    HostName 127.0.0.1\n    Port %d\n    User %s\n"
                 % (server.port, PLAIN_USER))
        assert user.works("chacha", "openssh")["user"] == PLAIN_USER
        message = user.fails("chacha", "paramiko", "ConnectError")
        assert "no acceptable ciphers" in message and "transport='openssh'" in message
        assert "Check that an SSH server answers" not in message
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_session_settings_of_an_interactive_alias_do_not_break_the_openssh_transport(user, sshd):
    """An alias made for interactive use (``RemoteCommand tmux ...``, ``RequestTTY yes``) or for
    tunnels (``SessionType none``, ``StdinNull yes``, ``ForkAfterAuthentication yes``): ssh is handed
    a command and needs its standard input, so those are set back for remoteproc's ssh."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    common = "    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (sshd.port, PLAIN_USER)
    user.put("config", "Host dev\n%s    RemoteCommand tmux new -A -s main\n    RequestTTY yes\n"
                       "Host tunnel\n%s    SessionType none\n    StdinNull yes\n    ForkAfterAuthentication yes\n"
             % (common, common))
    for alias, transport in (("dev", "openssh"), ("tunnel", "openssh"), ("dev", "paramiko")):
        assert user.works(alias, transport)["user"] == PLAIN_USER, (alias, transport)


def test_the_default_user_is_the_accounts_not_logname(user, sshd):
    """ssh's local user (the default remote user, ``%u``, ``Match localuser``) is the account of the
    uid, whatever $USER and $LOGNAME say (``su`` to root keeps them)."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", "Host lo\n    HostName 127.0.0.1\n    Port %d\nMatch localuser %s\n    User %s\n"
             % (sshd.port, CLIENT, PLAIN_USER))
    env = {"USER": "root", "LOGNAME": "root"}
    for transport in TRANSPORTS:
        assert user.works("lo", transport, env)["user"] == PLAIN_USER, transport


def test_a_key_file_others_can_read_is_ignored_and_named_with_its_chmod(user, sshd):
    """ssh ignores a private key file whose permissions are too open (``UNPROTECTED PRIVATE KEY
    FILE!``); when the login then fails, the error names the key and ``chmod 600`` as the fix, not
    only the generic advice of a refused login. The paramiko transport ignores it too (it used it)."""
    key = user.copy(sshd.client_key, "id_ed25519", mode=0o644)
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", "Host lo\n    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (sshd.port, PLAIN_USER))
    said = user.fails("lo", "openssh", "AuthenticationError")
    assert said.startswith("lo (%s@127.0.0.1:%d) (transport='openssh'): ssh ignored the private key %s"
                           % (PLAIN_USER, sshd.port, key)) and "Fix: chmod 600 %s: " % key in said, said
    said = user.fails("lo", "paramiko", "AuthenticationError")
    assert "%s (ignored, as ssh ignores it: others may read it; fix: chmod 600 %s)" % (key, key) in said, said
    os.chmod(key, 0o600)
    for transport in TRANSPORTS:
        assert user.works("lo", transport)["user"] == PLAIN_USER, transport


def test_a_config_file_the_user_cannot_read_is_named_with_the_fix(user, sshd):
    """A ~/.ssh/config the account cannot read (left owned by root by ``sudo vim``): the paramiko
    transport's ConfigError names the host, the file and the fix; ssh goes on without the file,
    silently, and its failure (the alias does not resolve) now says why."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    config = user.put("config", "Host lo\n    HostName 127.0.0.1\n    Port %d\n    User %s\n"
                      % (sshd.port, PLAIN_USER), mode=0o600)
    os.chown(config, 0, 0)
    said = user.fails("lo", "paramiko", "ConfigError")
    assert said.startswith("lo: cannot read ssh config file %s: Permission denied. Fix: " % config), said
    said = user.fails("lo", "openssh", "ConnectError")
    assert "(note: ssh could not read %s and went on without it" % config in said, said
    os.chown(config, user.uid, user.gid)
    assert user.works("lo", "openssh")["user"] == PLAIN_USER


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_lab_alias_that_records_keys_nowhere_is_quiet_under_log_level_error(user, sshd, transport):
    """The lab idiom ``StrictHostKeyChecking no`` + ``UserKnownHostsFile /dev/null`` + ``LogLevel
    ERROR``: ssh says nothing of the key it "records"; the paramiko transport warned on every
    connection ("permanently added ... to /dev/null").  Without the LogLevel both say it."""
    user.copy(sshd.client_key, "id_ed25519")
    lab = "Host lab\n    HostName 127.0.0.1\n    Port %d\n    User %s\n    StrictHostKeyChecking no\n" \
          "    UserKnownHostsFile /dev/null\n" % (sshd.port, PLAIN_USER)
    for level, said in (("    LogLevel ERROR\n", False), ("", True)):
        user.put("config", lab + level)
        done = user.run_as([user.client["python"], user.client["program"], "process", transport, "lab"])
        assert '"exitcode": 0' in done.stdout, done.stdout + done.stderr[-2000:]
        assert ("ermanently added" in done.stderr) == said, (level, done.stderr[-2000:])


FOLLOW_THE_HINT = textwrap.dedent("""\
    import ast, json, os, re, sys
    from remoteproc import Pipe, RemoteProcess, RemoteProcessError

    def who(conn):
        conn.send(os.environ["SSH_CONNECTION"])

    def start(host, **options):
        parent, child = Pipe()
        p = RemoteProcess(host, target=who, args=(child,), transport="openssh", **options)
        p.start()
        got = parent.recv()
        p.join(30)
        return got

    try:
        start(sys.argv[1])
    except RemoteProcessError as exc:
        said = str(exc)
    named = re.findall(r"(ssh_config|known_hosts|key_filename)=('[^']*')", said)
    hint = dict((k, ast.literal_eval(v)) for k, v in named)
    print("RESULT " + json.dumps({"said": said, "hint": hint, "then": start(sys.argv[1], **hint).split()}), flush=True)
    """)


def test_a_home_that_is_not_the_accounts_names_every_file_ssh_needs(user, sshd, client):
    """$HOME elsewhere than the account's home directory (``sudo`` without ``-H``, some containers):
    ssh reads the account's ~/.ssh, the paramiko transport $HOME's.  The openssh transport's failure
    says so and names the config, known_hosts and key of $HOME/.ssh to pass (the config alone was
    not enough: ssh expands ``~`` in it to the account's home, where its key and known_hosts are
    not), and passing them works."""
    home = tempfile.mkdtemp(prefix="home-", dir=client["scratch"])
    dot = os.path.join(home, ".ssh")
    os.mkdir(dot, 0o700)
    shutil.copy(sshd.client_key, os.path.join(dot, "id_ed25519"))
    with open(os.path.join(dot, "known_hosts"), "w") as f:
        f.write(loopback_line(sshd) + "\n")
    with open(os.path.join(dot, "config"), "w") as f:
        f.write("Host elsewhere\n    HostName 127.0.0.1\n    Port %d\n    User %s\n    IdentityFile ~/.ssh/id_ed25519\n"
                % (sshd.port, PLAIN_USER))
    program = os.path.join(client["scratch"], "follow_the_hint.py")
    with open(program, "w") as f:
        f.write(FOLLOW_THE_HINT)
    subprocess.run(["chown", "-R", "%d:%d" % (user.uid, user.gid), home], check=True, timeout=30)
    os.chmod(program, 0o644)
    os.chmod(home, 0o755)
    env = {"HOME": home}
    assert user.works("elsewhere", "paramiko", env)["connection"][2:] == ["127.0.0.1", str(sshd.port)]
    done = user.run_as([client["python"], program, "elsewhere"], env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert "ssh reads %s/.ssh, not $HOME=%s" % (user.home, home) in got["said"], got["said"]
    assert got["hint"] == {"ssh_config": os.path.join(dot, "config"), "known_hosts": os.path.join(dot, "known_hosts"),
                           "key_filename": os.path.join(dot, "id_ed25519")}, got["said"]
    assert got["then"][2:] == ["127.0.0.1", str(sshd.port)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_fix_for_an_unknown_key_works_under_strict_host_key_checking_yes(user, sshd, transport):
    """With ``StrictHostKeyChecking yes`` in the config, plain ``ssh alias`` never asks: the command the
    error gives must ask (and, answered, record the key where the next start finds it)."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("config", "Host strict\n    HostName 127.0.0.1\n    Port %d\n    User %s\n"
                       "    StrictHostKeyChecking yes\n" % (sshd.port, PLAIN_USER))
    message = user.fails("strict", transport, "HostKeyError")
    command = message.split("`")[1]
    assert command.startswith("ssh ") and "StrictHostKeyChecking=ask" in command
    # what answering yes does: ssh records the key, and the next start connects
    words = [w.replace("StrictHostKeyChecking=ask", "StrictHostKeyChecking=accept-new") for w in shlex.split(command)]
    answered = user.run_as(words[:-1] + ["-o", "BatchMode=yes", words[-1], "true"])
    assert answered.returncode == 0, answered.stderr
    assert user.works("strict", transport)["user"] == PLAIN_USER


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_host_name_with_capitals_is_found_in_the_known_hosts_ssh_wrote(user, sshd, transport):
    """``HostName LocalHost`` (and a spec typed in capitals): ssh lowercases the name, so the hashed
    entry it recorded on first use is of ``[localhost]:PORT``; paramiko must look that up, not
    refuse the key as unknown and send the user to an ``ssh`` that no longer asks anything."""
    user.copy(sshd.client_key, "id_ed25519")
    user.put("config", "Host box\n    HostName LocalHost\n    Port %d\n    User %s\n    HashKnownHosts yes\n"
             % (sshd.port, PLAIN_USER))
    first = user.run_as(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "box", "true"])
    assert first.returncode == 0, first.stderr
    with open(os.path.join(user.dot, "known_hosts")) as f:
        assert f.read().startswith("|1|"), "ssh did not record a hashed entry"
    assert user.works("box", transport)["user"] == PLAIN_USER
    assert user.works("%s@LOCALHOST:%d" % (PLAIN_USER, sshd.port), transport)["user"] == PLAIN_USER


def test_many_agent_keys_that_exhaust_max_auth_tries_point_to_identities_only(user, sshd):
    """Seven other keys in ssh-agent are offered before the IdentityFile (ssh's order), and sshd hangs
    up after six: both transports must say IdentitiesOnly, which then logs in."""
    user.copy(sshd.client_key, "id_right")
    user.put("known_hosts", loopback_line(sshd) + "\n")
    common = "Host lo\n    HostName 127.0.0.1\n    Port %d\n    User %s\n    IdentityFile ~/.ssh/id_right\n" % (
        sshd.port, PLAIN_USER)
    user.put("config", common)
    with ssh_agent(user) as env:
        for i in range(7):
            other = os.path.join(user.dot, "other%d" % i)
            assert user.run_as(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other]).returncode == 0
            assert user.run_as(["ssh-add", "-q", other], env).returncode == 0
        for transport in TRANSPORTS:
            got = user.start("lo", transport, env)
            assert got.get("error") == "AuthenticationError" and "IdentitiesOnly yes" in got["message"], got
        user.put("config", common + "    IdentitiesOnly yes\n")
        for transport in TRANSPORTS:
            assert user.works("lo", transport, env)["user"] == PLAIN_USER


def test_a_refused_login_through_ssh_leaves_no_process_behind(user, sshd):
    """A failed start with transport='openssh' ends its ssh (no process of CLIENT's is left)."""
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", "Host lo\n    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (sshd.port, PLAIN_USER))
    user.fails("lo", "openssh", "AuthenticationError")
    assert eventually(lambda: not _client_processes(), 10), _client_processes()


def _client_processes() -> list[str]:
    uid = pwd.getpwnam(CLIENT).pw_uid
    found = []
    for pid in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if pid.isdigit() and os.stat("/proc/" + pid).st_uid == uid:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
    return found

