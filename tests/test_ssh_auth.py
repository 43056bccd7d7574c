"""Logging in over the paramiko transport, end to end against real OpenSSH sshds.

Each test that needs a server of its own starts one (``own_sshd``): sshd on 127.0.0.1 and a
free port, configured in the test's temp dir with the lines the test prepends (sshd takes
the first value of a keyword).  The behaviours covered:

* key files paramiko cannot use: a DSA key (plain, or encrypted and opened with its
  passphrase), a public key passed as the private one; the error names the file and why;
* a server that takes only passwords (no keys), or keys and then a password
  (``AuthenticationMethods publickey,password``): a wrong password is reported as refused;
* partial authentication (``AuthenticationMethods publickey,publickey``): two keys log in,
  one key is reported as "accepted, more needed";
* a server that closes the connection after too many keys (``MaxAuthTries``): the error
  says so and names the way out (IdentitiesOnly);
* an ssh-agent socket that is dead, or an agent that hangs up at once: the key files
  are used; an agent key that needs confirmation (``ssh-add -c``) and cannot get it;
* servers that OpenSSH cannot imitate (an in-process paramiko server): one that lets the
  user in with "none", one that hangs up at the start of the login, and one that stops
  taking keys in the middle of it (the password is tried next).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import paramiko
import pytest
from own_sshd import USER, own_sshd

from remoteproc import ssh
from remoteproc.errors import AuthenticationError
from remoteproc.ssh.connect import connect
from remoteproc.ssh.hostkeys import fingerprint
from remoteproc.testing.net import HOST
from remoteproc.testing.openssh import OpenSSHServer

pytestmark = pytest.mark.timeout(60)



# -- helpers ---------------------------------------------------------------------------

def options(server: OpenSSHServer, **extra) -> dict:
    """Options that reach ``server`` with nothing of this machine's own ssh setup."""
    return dict(dict(port=server.port, known_hosts=server.known_hosts,    # type: ignore[attr-defined]
                     ssh_config=False, allow_agent=False, look_for_keys=False), **extra)


def target(server: OpenSSHServer, **extra) -> ssh.Target:
    return ssh.resolve("%s@%s" % (USER, HOST), options(server, **extra))


def login_error(server: OpenSSHServer, **extra) -> str:
    """The message of the AuthenticationError connecting with these options raises."""
    t = target(server, **extra)
    with pytest.raises(AuthenticationError) as info:
        connect(t).close()
    assert info.value.host == t.display
    text = str(info.value)
    assert text.startswith(t.display + ": authentication failed"), text
    return text


def logs_in(t: ssh.Target) -> None:
    conn = connect(t)
    try:
        assert conn.active and conn.transport.is_authenticated()
    finally:
        conn.close()


def keygen(path, kind: str = "ed25519", passphrase: str = "") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "test", "-f", str(path)],
                   check=True, timeout=30, capture_output=True)
    return str(path)


def authorize(server: OpenSSHServer, key: str) -> None:
    with open(os.path.join(server.workdir, "authorized_keys", USER), "a") as f:
        f.write(open(key + ".pub").read())


def accepted_keys(server: OpenSSHServer, how: str = "Accepted") -> list[str]:
    """The fingerprints of the keys sshd logged in with (``how``: "Partial" for a first of two), in order."""
    with open(server.log_file, errors="replace") as f:
        return re.findall(r"%s publickey for .*? (SHA256:\S+)" % how, f.read())


def key_fingerprint(path: str) -> str:
    return fingerprint(paramiko.PKey.from_path(path))


@contextlib.contextmanager
def ssh_agent(tmp_path) -> Iterator[str]:
    """A private ssh-agent (no askpass: it cannot get a confirmation); yields its socket."""
    sock = str(tmp_path / "agent.sock")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.path.exists(sock), "ssh-agent did not create its socket"
        yield sock
    finally:
        proc.kill()
        proc.wait(10)


def ssh_add(sock: str, *args: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSH_AUTH_SOCK": sock}
    subprocess.run(["ssh-add", *args], env=env, check=True, timeout=30, capture_output=True,
                   stdin=subprocess.DEVNULL)


# -- key files paramiko cannot use ---------------------------------------------------------

@pytest.mark.filterwarnings("ignore:SSH DSA keys are deprecated")
def test_a_dsa_key_is_left_out_with_the_reason_and_the_next_key_logs_in(tmp_path):
    dsa = keygen(tmp_path / "id_dsa", "dsa")
    locked = keygen(tmp_path / "id_dsa_locked", "dsa", "sesame")
    with own_sshd(str(tmp_path / "sshd")) as server:
        text = login_error(server, key_filename=[dsa])
        assert "tried: %s (unusable: paramiko cannot use this kind of key" % dsa in text
        # encrypted: the passphrase opens it, and only then paramiko finds it cannot use it
        text = login_error(server, key_filename=[locked], passphrase="sesame")
        assert "tried: %s (unusable: paramiko cannot use this kind of key" % locked in text
        # a key it can use after them still logs in
        logs_in(target(server, key_filename=[dsa, server.client_key]))
        assert accepted_keys(server) == [key_fingerprint(server.client_key)]


def test_a_usable_copy_of_a_key_whose_first_file_is_unusable_logs_in(tmp_path):
    """Found by an ssh-setups audit: ssh tries the second file of the same key (an encrypted
    id_ed25519 and a plain copy for automation; a copy open to others) when the first cannot be
    used; paramiko's key list dropped it as a key offered already, though it never was."""
    import shutil

    with own_sshd(str(tmp_path / "sshd")) as server:
        encrypted = str(tmp_path / "id_encrypted")
        shutil.copy(server.client_key, encrypted)
        subprocess.run(["ssh-keygen", "-q", "-p", "-N", "sesame", "-f", encrypted], check=True, timeout=30,
                       capture_output=True)
        open_copy = str(tmp_path / "id_open")
        shutil.copy(server.client_key, open_copy)
        os.chmod(open_copy, 0o644)
        for first in (encrypted, open_copy):
            logs_in(target(server, key_filename=[first, server.client_key], allow_agent=False))
        assert accepted_keys(server) == [key_fingerprint(server.client_key)] * 2


def test_a_public_key_given_as_the_key_file_is_unusable_not_a_crash(tmp_path):
    with own_sshd(str(tmp_path / "sshd")) as server:
        public = server.client_key + ".pub"
        text = login_error(server, key_filename=public)
        assert "tried: %s (unusable: " % public in text
        assert "authorized_keys" in text and "key_filename=" in text


def test_an_unreadable_key_file_is_named_with_the_reason(tmp_path):
    broken = tmp_path / "id_broken"
    broken.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64 at all\n")
    with own_sshd(str(tmp_path / "sshd")) as server:
        text = login_error(server, key_filename=str(broken))
        assert "tried: %s (unusable: " % broken in text


# -- what the server allows ------------------------------------------------------------------

def test_a_password_only_server_reports_the_refused_password(tmp_path):
    with own_sshd(str(tmp_path / "sshd"), "PubkeyAuthentication no", "PasswordAuthentication yes") as server:
        text = login_error(server, key_filename=server.client_key, password="not-the-password")
        assert "the server accepts password; tried: password (refused)." in text


def test_a_keyboard_interactive_server_gets_the_password(tmp_path):
    """paramiko answers keyboard-interactive prompts with the password, as ssh would ask for it."""
    with own_sshd(str(tmp_path / "sshd"), "PubkeyAuthentication no", "PasswordAuthentication no",
                  "KbdInteractiveAuthentication yes") as server:
        text = login_error(server, password="not-the-password")
        assert "the server accepts keyboard-interactive; tried: password (refused)." in text


@pytest.mark.parametrize("lines", [("PubkeyAuthentication no", "PasswordAuthentication yes"),
                                   ("AuthenticationMethods publickey,password", "PasswordAuthentication yes")],
                         ids=["password-only", "publickey-then-password"])
def test_a_server_that_wants_a_password_says_to_pass_one(tmp_path, lines):
    """The fix follows what the server takes: password= (not authorized_keys) when it wants only a
    password now, and no claim that no key file was found when one was given."""
    with own_sshd(str(tmp_path / "sshd"), *lines) as server:
        text = login_error(server, key_filename=server.client_key)
    assert "no key file found" not in text, text
    assert "Fix: pass password=" in text and "authorized_keys" not in text, text
    assert "no key: the server takes none" in text or "(accepted, more needed: password)" in text, text


def test_publickey_then_password_reports_the_accepted_key_and_the_refused_password(tmp_path):
    with own_sshd(str(tmp_path / "sshd"), "AuthenticationMethods publickey,password",
                  "PasswordAuthentication yes") as server:
        text = login_error(server, key_filename=server.client_key, password="not-the-password")
        assert ("the server accepts password; tried: %s (accepted, more needed: password); password (refused)."
                % server.client_key) in text


def test_two_keys_log_in_where_the_server_wants_two(tmp_path):
    """sshd ``AuthenticationMethods publickey,publickey``: partial success, then the second key."""
    second = keygen(tmp_path / "second_key")
    with own_sshd(str(tmp_path / "sshd"), "AuthenticationMethods publickey,publickey") as server:
        authorize(server, second)
        text = login_error(server, key_filename=server.client_key)
        assert "the server accepts publickey; tried: %s (accepted, more needed: publickey)." % server.client_key \
            in text
        logs_in(target(server, key_filename=[server.client_key, second]))
        assert accepted_keys(server, "Partial")[-1] == key_fingerprint(server.client_key)
        assert accepted_keys(server) == [key_fingerprint(second)]


def test_too_many_keys_the_server_hangs_up_and_the_error_says_what_to_do(tmp_path):
    wrong = [keygen(tmp_path / ("wrong%d" % i)) for i in range(3)]
    with own_sshd(str(tmp_path / "sshd"), "MaxAuthTries 2") as server:
        text = login_error(server, key_filename=wrong + [server.client_key])
    # the third key and the right one are never offered: the server is gone
    assert "tried: %s (refused); %s (refused)." % (wrong[0], wrong[1]) in text
    assert wrong[2] not in text and server.client_key not in text
    assert "The server closed the connection (too many keys offered? set IdentitiesOnly yes" in text


# -- ssh-agent -------------------------------------------------------------------------------

def test_a_dead_or_missing_agent_is_skipped_and_the_key_file_logs_in(tmp_path, monkeypatch):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))       # a socket file nobody listens on (agent died)
    stale.close()
    with own_sshd(str(tmp_path / "sshd")) as server:
        for path in (str(tmp_path / "stale.sock"), str(tmp_path / "no-such.sock")):
            monkeypatch.setenv("SSH_AUTH_SOCK", path)
            logs_in(target(server, key_filename=server.client_key, allow_agent=True))
        monkeypatch.delenv("SSH_AUTH_SOCK")        # no agent at all
        logs_in(target(server, key_filename=server.client_key, allow_agent=True))
        assert accepted_keys(server) == [key_fingerprint(server.client_key)] * 3


def test_an_agent_that_hangs_up_at_once_is_skipped(tmp_path, monkeypatch):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "agent.sock"))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def refuse() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.close()
    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
        with own_sshd(str(tmp_path / "sshd")) as server:
            started = time.monotonic()
            logs_in(target(server, key_filename=server.client_key, allow_agent=True, connect_timeout=5))
            assert time.monotonic() - started < 5
            assert accepted_keys(server) == [key_fingerprint(server.client_key)]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_an_agent_key_that_needs_a_confirmation_it_cannot_get_is_reported(tmp_path, monkeypatch):
    """``ssh-add -c`` with no askpass: the agent refuses to sign; the error names that key and says so."""
    with own_sshd(str(tmp_path / "sshd")) as server, ssh_agent(tmp_path) as sock:
        ssh_add(sock, "-c", server.client_key)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        text = login_error(server, key_filename=server.client_key, allow_agent=True)
        assert "tried: %s (from ssh-agent) (ssh-agent declined to sign: key cannot be used for signing)" % (
            server.client_key) in text
        assert accepted_keys(server) == []


def test_a_declined_agent_key_does_not_stop_the_login_with_the_identity_file(tmp_path):
    other = keygen(tmp_path / "agent_only_key")
    with own_sshd(str(tmp_path / "sshd")) as server, ssh_agent(tmp_path) as sock:
        ssh_add(sock, "-c", other)
        config = tmp_path / "ssh_config"
        config.write_text("Host box\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n"
                          "  IdentityAgent %s\n  UserKnownHostsFile %s\n"
                          % (HOST, server.port, USER, server.client_key, sock, server.known_hosts))
        t = ssh.resolve("box", {"ssh_config": str(config), "allow_agent": True})
        try:
            connect(t).close()
        except AuthenticationError as exc:
            assert "The server closed the connection" not in str(exc)
            raise
        assert accepted_keys(server) == [key_fingerprint(server.client_key)]


# -- servers OpenSSH cannot imitate (an in-process paramiko server) ---------------------------

class _Interface(paramiko.ServerInterface):
    def __init__(self, mode: str, seen: list[str], transport: paramiko.Transport) -> None:
        self.mode = mode
        self.seen = seen
        self.transport = transport

    def get_allowed_auths(self, username: str) -> str:
        if self.mode == "keys-then-password" and "publickey" in self.seen:
            return "password"
        return "publickey,password"

    def check_auth_none(self, username: str) -> int:
        self.seen.append("none")
        if self.mode == "hang-up":
            self.transport.sock.shutdown(socket.SHUT_RDWR)
            return paramiko.AUTH_FAILED
        return paramiko.AUTH_SUCCESSFUL if self.mode == "open" else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.seen.append("publickey")
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        self.seen.append("password")
        return paramiko.AUTH_SUCCESSFUL if password == "right" else paramiko.AUTH_FAILED


@contextlib.contextmanager
def paramiko_server(tmp_path, mode: str) -> Iterator[tuple[dict, list[str]]]:
    """One connection's worth of a paramiko SSH server; yields (options, the methods it saw)."""
    host_key = paramiko.Ed25519Key.from_path(keygen(tmp_path / "host_key"))
    known = tmp_path / "known_hosts_paramiko"
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    known.write_text("[%s]:%d %s %s\n" % (HOST, port, host_key.get_name(), host_key.get_base64()))
    seen: list[str] = []
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        t = paramiko.Transport(sock)
        transports.append(t)
        t.add_server_key(host_key)
        t.start_server(server=_Interface(mode, seen, t))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield dict(port=port, known_hosts=str(known), ssh_config=False, allow_agent=False,
                   look_for_keys=False, connect_timeout=5), seen
    finally:
        listener.close()
        thread.join(15)
        for t in transports:
            t.close()


def test_a_server_that_needs_no_login_is_entered_without_offering_keys(tmp_path):
    with paramiko_server(tmp_path, "open") as (opts, seen):
        key = keygen(tmp_path / "key")
        logs_in(ssh.resolve("%s@%s" % (USER, HOST), dict(opts, key_filename=key)))
    assert seen == ["none"]


def test_a_server_that_hangs_up_at_the_login_is_an_authentication_error_naming_the_host(tmp_path):
    with paramiko_server(tmp_path, "hang-up") as (opts, seen):
        t = ssh.resolve("%s@%s" % (USER, HOST), dict(opts, key_filename=keygen(tmp_path / "key")))
        with pytest.raises(AuthenticationError) as info:
            connect(t).close()
    assert str(info.value).startswith(t.display + ": authentication failed: ")
    assert info.value.host == t.display
    assert seen == ["none"]


def test_a_server_that_stops_taking_keys_gets_the_password_next(tmp_path):
    with paramiko_server(tmp_path, "keys-then-password") as (opts, seen):
        keys = [keygen(tmp_path / "key1"), keygen(tmp_path / "key2")]
        logs_in(ssh.resolve("%s@%s" % (USER, HOST), dict(opts, key_filename=keys, password="right")))
    # the second key is not offered once the server said it takes only a password
    assert seen == ["none", "publickey", "password"]



# -- user certificates -------------------------------------------------------------------------
# (an sshd that trusts a user CA; known_hosts holds its plain host key, as own_sshd writes it)

def user_ca(tmp_path) -> str:
    return keygen(tmp_path / "user_ca")


def certify(ca: str, key: str, principal: str = USER) -> str:
    """Sign ``key``'s public half with ``ca`` for ``principal``: ``key-cert.pub``, as ssh-keygen -s writes it."""
    subprocess.run(["ssh-keygen", "-q", "-s", ca, "-I", "remoteproc-test", "-n", principal, key + ".pub"],
                   check=True, timeout=30, capture_output=True)
    return key + "-cert.pub"


def accepted_certificates(server: OpenSSHServer) -> int:
    with open(server.log_file, errors="replace") as f:
        return f.read().count("Accepted certificate ID")


def config_file(tmp_path, server: OpenSSHServer, *lines: str) -> str:
    path = tmp_path / "ssh_config"
    path.write_text("Host box\n  HostName %s\n  Port %d\n  User %s\n  UserKnownHostsFile %s\n%s"
                    % (HOST, server.port, USER, server.known_hosts, "".join("  %s\n" % ln for ln in lines)))
    return str(path)


def test_a_certificate_file_elsewhere_than_its_key_logs_in(tmp_path):
    """``CertificateFile`` names a certificate that is not ``KEY-cert.pub``: offered with its key."""
    ca, key = user_ca(tmp_path), keygen(tmp_path / "id_user")
    cert = str(tmp_path / "issued.pub")
    os.rename(certify(ca, key), cert)
    with own_sshd(str(tmp_path / "sshd"), "TrustedUserCAKeys %s.pub" % ca) as server:
        t = ssh.resolve("box", {"ssh_config": config_file(tmp_path, server, "IdentityFile %s" % key,
                                                          "CertificateFile %s" % cert), "allow_agent": False})
        logs_in(t)
        assert accepted_certificates(server) == 1


def test_a_certificate_whose_key_is_in_the_agent_logs_in(tmp_path):
    """The key only in ssh-agent (no key file at hand), its certificate in a file: the agent signs."""
    ca, key = user_ca(tmp_path), keygen(tmp_path / "id_user")
    cert = str(tmp_path / "issued.pub")
    os.rename(certify(ca, key), cert)
    with own_sshd(str(tmp_path / "sshd"), "TrustedUserCAKeys %s.pub" % ca) as server, ssh_agent(tmp_path) as sock:
        ssh_add(sock, key)
        os.unlink(key)
        logs_in(ssh.resolve("box", {"ssh_config": config_file(tmp_path, server, "IdentityAgent %s" % sock,
                                                              "CertificateFile %s" % cert)}))
        assert accepted_certificates(server) == 1


def test_identities_only_offers_the_agents_certificate_of_an_identity_file(tmp_path):
    """ssh-add adds KEY and KEY-cert.pub; ``IdentitiesOnly`` with ``IdentityFile KEY`` offers both."""
    ca, key = user_ca(tmp_path), keygen(tmp_path / "id_user")
    certify(ca, key)
    with own_sshd(str(tmp_path / "sshd"), "TrustedUserCAKeys %s.pub" % ca) as server, ssh_agent(tmp_path) as sock:
        ssh_add(sock, key)
        logs_in(ssh.resolve("box", {"ssh_config": config_file(
            tmp_path, server, "IdentityAgent %s" % sock, "IdentityFile %s" % key, "IdentitiesOnly yes")}))
        assert accepted_certificates(server) == 1


def test_a_key_is_offered_before_its_certificate(tmp_path):
    """As ssh: ``KEY``, then ``KEY-cert.pub``.  A server that takes the key (authorized_keys) lets
    the user in even where the certificate is not good for this account."""
    ca, key = user_ca(tmp_path), keygen(tmp_path / "id_user")
    certify(ca, key, principal="someone-else")
    with own_sshd(str(tmp_path / "sshd"), "TrustedUserCAKeys %s.pub" % ca) as server:
        authorize(server, key)
        logs_in(target(server, key_filename=key))
        assert accepted_keys(server) == [key_fingerprint(key)] and accepted_certificates(server) == 0


def test_a_certificate_that_cannot_be_offered_is_named(tmp_path):
    ca, key = user_ca(tmp_path), keygen(tmp_path / "id_user")
    cert = str(tmp_path / "issued.pub")
    os.rename(certify(ca, key), cert)
    os.unlink(key)
    host_cert = tmp_path / "host-cert.pub"
    subprocess.run(["ssh-keygen", "-q", "-s", ca, "-I", "h", "-h", "-n", HOST, keygen(tmp_path / "hk") + ".pub"],
                   check=True, timeout=30, capture_output=True)
    os.rename(str(tmp_path / "hk-cert.pub"), host_cert)
    with own_sshd(str(tmp_path / "sshd"), "TrustedUserCAKeys %s.pub" % ca) as server:
        t = ssh.resolve("box", {"ssh_config": config_file(tmp_path, server, "CertificateFile %s" % cert,
                                                          "CertificateFile %s" % host_cert, "IdentityFile none"),
                                "allow_agent": False})
        with pytest.raises(AuthenticationError) as info:
            connect(t).close()
    text = str(info.value)
    assert "CertificateFile %s (its private key is neither in ssh-agent nor an IdentityFile)" % cert in text, text
    assert "CertificateFile %s (a host certificate, not a user certificate)" % host_cert in text, text
