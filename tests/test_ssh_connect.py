"""Reaching a host over the paramiko transport, up to the login, against real OpenSSH sshds.

Each test that needs a server of its own starts one (``own_sshd``, on 127.0.0.1 and a free
port, configured in the test's temp dir).  Other "servers" are sockets the test holds:
a port nobody listens on (refused), a listener whose accept queue is full (connecting
times out), one that never speaks, one that hangs up, one that is not SSH.  Covered:

* a name that does not resolve (``.invalid``), a refused port, a connect timeout (also
  for a host with several addresses: the timeout is for all of them), a banner timeout,
  a server that hangs up or is not an SSH server: a ConnectError naming host and fix;
* ProxyCommand: a shell that cannot run it, a command that is not an SSH server, one
  that ignores SIGTERM (killed when the connection closes);
* ProxyJump opened by ``connect()`` itself: closed with the connection, closed when the
  login to the target fails, and the jump host that cannot reach (refused, or not within
  the timeout) the target;
* known_hosts: broken lines and an unreadable file are skipped, @revoked keys refused,
  accept-new without a file to record in, or with one that cannot be written;
* a server that allows no session channel (``MaxSessions 0``): the relay's error;
* the ssh config as a connection reads it: unreadable and unparsable files, Match and
  Include corner cases, bad numbers, tokens, IdentityAgent ``$VAR``;
* the relay's import shim answers paramiko's version question as importlib.metadata does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
from own_sshd import USER, own_sshd
from proctable import eventually

import remoteproc
from remoteproc import ssh
from remoteproc.errors import AuthenticationError, BootstrapError, ConfigError, ConnectError, HostKeyError
from remoteproc.ssh import config as ssh_config_module
from remoteproc.ssh.connect import TCPSocket, connect
from remoteproc.testing.net import HOST, free_port, full_listener
from remoteproc.testing.openssh import OpenSSHServer
from remoteproc.testing.proctree import descendants

pytestmark = pytest.mark.timeout(60)



# -- helpers ---------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path) -> Iterator[OpenSSHServer]:
    with own_sshd(str(tmp_path / "sshd")) as s:
        yield s


def options(server: OpenSSHServer | None = None, **extra) -> dict:
    """Options with nothing of this machine's own ssh setup (and ``server``'s key and known_hosts)."""
    base: dict = dict(ssh_config=False, allow_agent=False, look_for_keys=False)
    if server is not None:
        base.update(port=server.port, key_filename=server.client_key,
                    known_hosts=server.known_hosts)    # type: ignore[attr-defined]
    return dict(base, **extra)


def spec(port: int | None = None) -> str:
    return "%s@%s" % (USER, HOST) + (":%d" % port if port else "")


def connect_error(spec_: str, opts: dict, kind: type = ConnectError) -> str:
    """The message of the error connecting raises; it is of ``kind`` and names the host."""
    t = ssh.resolve(spec_, opts)
    with pytest.raises(kind) as info:
        connect(t).close()
    assert info.value.host == t.display
    assert str(info.value).startswith(t.display + ": "), str(info.value)
    return str(info.value)


def sessions(server: OpenSSHServer) -> int:
    """How many processes sshd runs for connections (0: none open)."""
    assert server.pid is not None
    return len(descendants(server.pid))


TLS_ALERT = b"\x15\x03\x01\x00\x02\x02\x32"     # (a TLS server's answer to what is not TLS)


@contextlib.contextmanager
def fake_server(behaviour: str) -> Iterator[int]:
    """A listener on 127.0.0.1 that, for each connection: says nothing ("silent"), sends an SSH
    banner and then nothing ("banner-only"), or the banner and hangs up ("banner-then-close"),
    hangs up at once ("hang-up"), or answers as a web server ("http"), a mail server ("smtp") or
    a TLS server ("tls") does."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            if behaviour in ("silent", "banner-only"):
                if behaviour == "banner-only":
                    with contextlib.suppress(OSError):
                        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                held.append(conn)
                continue
            if behaviour == "banner-then-close":      # read the client's key exchange, then hang up
                conn.settimeout(0.3)
                with contextlib.suppress(OSError):
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                    while conn.recv(65536):
                        pass
            if behaviour == "http":
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            if behaviour in ("smtp", "tls"):    # (a mail server speaks first; TLS answers with an alert)
                with contextlib.suppress(OSError):
                    conn.sendall(b"220 mail.example ESMTP\r\n" if behaviour == "smtp" else TLS_ALERT)
                    conn.settimeout(0.3)
                    conn.recv(65536)
            conn.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


# -- TCP ----------------------------------------------------------------------------------

def test_a_name_that_does_not_resolve_says_so():
    text = connect_error("%s@no-such-host.invalid" % USER, options(connect_timeout=5))
    assert "cannot resolve host name 'no-such-host.invalid'" in text
    assert "Check the name." in text        # (ssh_config=False: no config file was read)


def test_a_name_that_does_not_resolve_names_the_ssh_config_read(tmp_path):
    """ssh_config= (the CLI's -F) was read, not ~/.ssh/config: the message sent the user to the wrong file."""
    from remoteproc.ssh.target import config_read

    config = tmp_path / "ssh_config"
    config.write_text("Host lab\n    HostName no-such-host.invalid\n")
    text = connect_error("%s@lab" % USER, options(connect_timeout=5, ssh_config=str(config)))
    assert "cannot resolve host name 'no-such-host.invalid'" in text
    assert "Check the name or its HostName in %s." % config in text and "~/.ssh/config" not in text
    assert config_read({}) == "~/.ssh/config" and config_read({"ssh_config": "none"}) is None


def test_a_port_nobody_listens_on_is_refused_at_once():
    port = free_port()
    started = time.monotonic()
    text = connect_error(spec(port), options(connect_timeout=10))
    assert time.monotonic() - started < 5
    assert "cannot connect to port %d: Connection refused" % port in text
    assert "Check that sshd runs there" in text


def test_a_host_that_does_not_answer_times_out_within_connect_timeout():
    with full_listener() as port:
        started = time.monotonic()
        text = connect_error(spec(port), options(connect_timeout=1))
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 5, elapsed
    assert "connection timed out after 1s" in text and "raise connect_timeout" in text


def test_the_connect_timeout_is_for_all_of_a_hosts_addresses(monkeypatch):
    """A name with several addresses that all hang: not one timeout per address."""
    real = socket.getaddrinfo

    def two_addresses(host, port, *args, **kwargs):
        infos = real(HOST, port, *args, **kwargs)
        return infos + infos if host == "twice.invalid" else real(host, port, *args, **kwargs)
    with full_listener() as port:
        monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
        started = time.monotonic()
        text = connect_error("%s@twice.invalid:%d" % (USER, port), options(connect_timeout=1))
        elapsed = time.monotonic() - started
    assert elapsed < 1.8, "took %.1fs: each address got its own timeout" % elapsed
    assert "connection timed out after 1s" in text


@pytest.mark.parametrize("behaviour,reason", [
    ("silent", "no SSH banner within 1s (Error reading SSH protocol banner"),
    ("hang-up", "the server closed the connection before its SSH banner (Error reading SSH protocol banner"),
])
def test_a_port_without_an_ssh_server_fails_the_handshake(behaviour, reason):
    with fake_server(behaviour) as port:
        started = time.monotonic()
        text = connect_error(spec(port), options(connect_timeout=1))
        assert time.monotonic() - started < 6
    assert "SSH handshake failed: " in text and reason in text, text
    assert "Check that an SSH server answers on port %d." % port in text


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
@pytest.mark.parametrize("behaviour,said", [
    ("http", "it said 'HTTP/1.1 400 Bad Request'"),
    ("smtp", "it said '220 mail.example ESMTP'"),
    ("tls", ""),     # (ssh's own words for it differ: "banner line contains invalid characters")
])
def test_a_port_whose_server_is_not_sshd_is_named_at_once(behaviour, said, transport):
    """A web, mail or TLS server on the port (a wrong port, by mistake) closed the connection
    before an SSH banner, and that read as sshd turning us away: ``MaxStartups`` as the fix, tried
    again for 3 to 10 s.  What the server says now names the mistake, at once and not retried."""
    from remoteproc import RemoteProcess

    with fake_server(behaviour) as port:
        started = time.monotonic()
        with pytest.raises(ConnectError) as info:
            RemoteProcess(spec(port), target=os.getpid, ssh_config=False, connect_timeout=3, transport=transport,
                          allow_agent=False, look_for_keys=False).start()
        elapsed = time.monotonic() - started
    text = str(info.value)
    assert "what answers on port %d is not an SSH server: %s" % (port, said) in text, text
    assert "Fix: give the port sshd listens on" in text and "MaxStartups" not in text, text
    assert text.startswith(spec(port)), text
    assert elapsed < 2.5, "%.1fs: the failure was retried as a turned-away connection" % elapsed


@pytest.mark.parametrize("behaviour,reason", [
    ("banner-only", "no answer within 1s"),
    ("banner-then-close", "the server closed the connection"),
])
def test_a_server_that_stops_after_its_banner_says_what_happened(behaviour, reason):
    with fake_server(behaviour) as port:
        text = connect_error(spec(port), options(connect_timeout=1))
    assert "SSH handshake failed: %s." % reason in text, text


# -- ProxyCommand -------------------------------------------------------------------------

def test_a_proxy_command_the_shell_cannot_run(monkeypatch):
    monkeypatch.setenv("SHELL", "/nonexistent/shell")
    text = connect_error(spec(), options(proxy_command="nc %h %p"))
    assert "cannot run ProxyCommand 'nc 127.0.0.1 22'" in text and "/nonexistent/shell" in text


def test_a_proxy_command_that_is_no_ssh_server(monkeypatch):
    monkeypatch.setenv("SHELL", "/bin/sh")
    text = connect_error(spec(), options(proxy_command="echo not ssh", connect_timeout=2))
    assert text.startswith("%s@%s via ProxyCommand: SSH handshake failed" % (USER, HOST))
    assert "and that ProxyCommand works." in text


def test_a_proxy_command_that_fails_by_itself_is_named_not_taken_for_a_busy_server(monkeypatch):
    """Found by an audit: a ProxyCommand that could not run (or whose own ssh could not reach its
    jump host) read as sshd's MaxStartups, and the start was tried again for 8 s; its exit status
    tells the two apart (``nc`` or ``ssh -W`` whose server hung up end with 0)."""
    monkeypatch.setenv("SHELL", "/bin/sh")
    t = ssh.resolve(spec(), options(proxy_command="no-such-proxy-command %h %p"))
    with pytest.raises(ConnectError) as info:
        connect(t).close()
    text = str(info.value)
    assert info.value.turned_away is False and "MaxStartups" not in text, text
    assert "the ProxyCommand ended before the server's SSH banner came through it" in text, text
    assert "(no-such-proxy-command 127.0.0.1 22): it must connect to 127.0.0.1:22" in text, text
    assert "exit status 127" in text, text
    t = ssh.resolve(spec(), options(proxy_command="true"))      # (ended well: whatever went wrong, not it)
    with pytest.raises(ConnectError) as info:
        connect(t).close()
    assert "ProxyCommand ended" not in str(info.value), str(info.value)


PROXY = """
import os, signal, socket, sys, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            return
        s.sendall(data)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    try:
        os.write(1, data)
    except OSError:     # (the connection closed its end first: it lingers all the same)
        break
time.sleep(60)
"""


def test_a_proxy_command_that_lingers_is_killed_when_the_connection_closes(server, tmp_path, monkeypatch):
    script = tmp_path / "proxy.py"
    script.write_text(PROXY)
    monkeypatch.setenv("SHELL", "/bin/sh")
    t = ssh.resolve(spec(server.port), options(server, proxy_command="%s %s %%p" % (sys.executable, script)))
    conn = connect(t)
    assert conn.active and conn.proc is not None and conn.proc.poll() is None
    started = time.monotonic()
    conn.close()
    assert conn.proc.returncode == -signal.SIGKILL      # it ignored SIGTERM
    assert time.monotonic() - started < 10
    conn.close()        # closing again does nothing
    assert not conn.active


# -- ProxyJump ------------------------------------------------------------------------------

def test_a_jump_opened_by_connect_closes_with_the_connection(server):
    t = ssh.resolve(spec(server.port), options(server, proxy_jump=spec(server.port)))
    conn = connect(t)
    try:
        assert conn.transport.is_authenticated() and conn.owns_jump
        assert conn.jump is not None and conn.jump.active
        assert eventually(lambda: sessions(server) >= 2, 10)
    finally:
        conn.close()
    assert not conn.jump.active
    assert eventually(lambda: sessions(server) == 0, 15), "the jump connection stayed open"


def _quick_ack_after_exchange(sock) -> int:
    """Whether ``sock`` (a connection's socket, or one end of a pair) acknowledges at once after reading an answer."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_a_socket_that_acks_quickly_stays_so_across_request_and_answer():
    """Linux leaves quick-ACK mode once a socket answers what it read (it then delays ACKs to ride on
    its answers); a ``quick_acks`` socket re-enters it at every read, so the peer's next packet,
    held by Nagle until our ACK, is not held 40 ms."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        with TCPSocket() as ours:
            ours.connect(listener.getsockname())
            theirs, _ = listener.accept()
            with theirs:
                def exchanges(quick: bool) -> list:
                    ours.quick_acks = quick
                    seen = []
                    for _ in range(3):
                        ours.sendall(b"?")
                        assert theirs.recv(1) == b"?"
                        theirs.sendall(b"!")
                        assert ours.recv(1) == b"!"
                        seen.append(_quick_ack_after_exchange(ours))
                    return seen
                assert exchanges(False)[-1] == 0, "Linux kept quick ACKs by itself: the test shows nothing"
                assert exchanges(True) == [1, 1, 1]


def test_a_jump_hosts_socket_acks_quickly_and_a_direct_one_does_not(server):
    """Through a jump host, the TCP socket to it acknowledges at once (the jump's sshd sends packets
    back to back without TCP_NODELAY); a direct connection keeps Linux's delayed ACKs."""
    direct = connect(ssh.resolve(spec(server.port), options(server)))
    try:
        assert isinstance(direct.transport.sock, TCPSocket) and not direct.transport.sock.quick_acks
    finally:
        direct.close()
    conn = connect(ssh.resolve(spec(server.port), options(server, proxy_jump=spec(server.port))))
    try:
        assert conn.jump is not None
        assert not isinstance(conn.transport.sock, TCPSocket)      # (a channel of the jump's connection)
        assert conn.jump.transport.sock.quick_acks == hasattr(socket, "TCP_QUICKACK")
    finally:
        conn.close()


def test_a_failed_login_behind_a_jump_closes_the_jump(server):
    """The jump logs in, the target refuses the user: AuthenticationError, and the jump it opened is closed."""
    target_spec = "nosuchuser@%s:%d" % (HOST, server.port)
    t = ssh.resolve(target_spec, options(server, proxy_jump=spec(server.port)))
    with pytest.raises(AuthenticationError) as info:
        connect(t)
    assert str(info.value).startswith("nosuchuser@%s:%d via %s: authentication failed"
                                      % (HOST, server.port, spec(server.port))), str(info.value)
    assert eventually(lambda: sessions(server) == 0, 15), "the jump connection stayed open"


def test_a_login_refused_at_the_jump_host_says_it_happened_there(server):
    t = ssh.resolve(spec(server.port), options(server, proxy_jump="nosuchuser@%s:%d" % (HOST, server.port)))
    with pytest.raises(AuthenticationError) as info:
        connect(t)
    assert str(info.value).startswith("%s: at the jump host: nosuchuser@" % t.display), str(info.value)
    assert info.value.host == t.display
    assert eventually(lambda: sessions(server) == 0, 15)


def test_the_pool_shares_a_connection_and_close_all_closes_it(server):
    pool = ssh.ConnectionPool()
    t = ssh.resolve(spec(server.port), options(server))
    first, second = pool.acquire(t), pool.acquire(t)
    assert first is second and pool.count() == 1
    pool.close_all()
    assert not first.active and pool.count() == 0
    assert eventually(lambda: sessions(server) == 0, 15)


def test_a_jump_host_that_cannot_reach_the_target_says_so(server):
    port = free_port()
    text = connect_error(spec(port), dict(options(server, proxy_jump=spec(server.port)), port=None))
    assert "the jump host %s could not connect to %s:%d: " % (spec(server.port), HOST, port) in text
    assert "Connect failed. Fix: check the address and port, and that sshd runs there and is reachable" in text
    assert eventually(lambda: sessions(server) == 0, 15)


def test_a_jump_host_whose_connection_hangs_gives_up_within_the_timeout(server):
    with full_listener() as port:
        started = time.monotonic()
        text = connect_error(spec(port), dict(options(server, proxy_jump=spec(server.port), connect_timeout=2),
                                              port=None))
        elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    assert "the jump host %s could not connect to %s:%d within 2s" % (spec(server.port), HOST, port) in text


# -- known_hosts -------------------------------------------------------------------------------

def test_an_unknown_host_whose_known_hosts_file_is_missing_names_that_file(server, tmp_path):
    missing = tmp_path / "not_there"
    text = connect_error(spec(server.port), options(server, known_hosts=str(missing)), HostKeyError)
    assert "; no known_hosts file: %s" % missing in text and " not exist)" in text    # (the global ones too)

def test_broken_known_hosts_lines_are_skipped(server, tmp_path):
    name = "[%s]:%d" % (HOST, server.port)
    key_type, blob = server.host_public.split()
    junk = ["%s %s" % (name, key_type),                        # too few fields
            "%s %s not*base64" % (name, key_type),             # a key that is no base64
            "|1|%%%%|*** %s %s" % (key_type, blob),             # a hashed name that is no base64
            "|1|onlysalt %s %s" % (key_type, blob),             # a hashed name without its hash
            "@revoked"]                                      # a marker and nothing else
    broken = tmp_path / "broken_known_hosts"
    broken.write_text("\n".join(junk) + "\n")
    text = connect_error(spec(server.port), options(server, known_hosts=str(broken)), HostKeyError)
    assert "the host key is unknown" in text and "; checked %s)" % broken in text
    broken.write_text("\n".join(junk + ["%s %s" % (name, server.host_public)]) + "\n")
    conn = connect(ssh.resolve(spec(server.port), options(server, known_hosts=str(broken))))
    conn.close()


def test_an_unreadable_known_hosts_file_is_skipped_with_a_warning(server, tmp_path, caplog):
    loop = tmp_path / "loop"
    os.symlink(str(loop), str(loop))        # reading it fails with ELOOP, not "no such file"
    with caplog.at_level(logging.WARNING, logger="remoteproc.ssh"):
        conn = connect(ssh.resolve(spec(server.port), options(server, known_hosts=[str(loop),
                                                                                  server.known_hosts])))
    conn.close()
    assert any("ignoring unreadable known_hosts file %s" % loop in r.getMessage() for r in caplog.records)


def test_a_revoked_host_key_is_refused_and_another_revoked_key_is_not_in_the_way(server, tmp_path):
    name = "[%s]:%d" % (HOST, server.port)
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
    other_public = " ".join(open(str(other) + ".pub").read().split()[:2])
    known = tmp_path / "known_hosts"
    known.write_text("@revoked %s %s\n%s %s\n" % (name, other_public, name, server.host_public))
    connect(ssh.resolve(spec(server.port), options(server, known_hosts=str(known)))).close()
    known.write_text("@revoked %s %s\n%s %s\n" % (name, server.host_public, name, server.host_public))
    text = connect_error(spec(server.port), options(server, known_hosts=str(known)), HostKeyError)
    assert "is marked @revoked in %s:1; it is always refused" % known in text


def test_accept_new_without_a_known_hosts_file_refuses_a_new_key_as_ssh_does(server, tmp_path):
    """UserKnownHostsFile none: ssh has nowhere to record a new key and refuses it, even under
    StrictHostKeyChecking accept-new or no; so does remoteproc (it once accepted it for the connection)."""
    config = tmp_path / "config"
    config.write_text("UserKnownHostsFile none\nGlobalKnownHostsFile none\nStrictHostKeyChecking no\n")
    for policy in ("accept-new", None):
        t = ssh.resolve(spec(server.port), dict(options(server), known_hosts=None, ssh_config=str(config),
                                                host_key_policy=policy))
        assert t.known_hosts == [] and t.policy == "accept-new"
        with pytest.raises(HostKeyError) as info:
            connect(t).close()
        assert "no user known_hosts file to record it in" in str(info.value)
        assert "known_hosts=" in str(info.value)
    global_file = tmp_path / "global_known_hosts"
    global_file.write_text("[%s]:%d %s\n" % (HOST, server.port, server.host_public))
    config.write_text("UserKnownHostsFile none\nGlobalKnownHostsFile %s\n" % global_file)
    connect(ssh.resolve(spec(server.port), dict(options(server), known_hosts=None, ssh_config=str(config)))).close()


def test_accept_new_that_cannot_record_the_key_still_connects_and_warns(server, tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = str(blocker / "known_hosts")
    t = ssh.resolve(spec(server.port), options(server, known_hosts=path, host_key_policy="accept-new"))
    with caplog.at_level(logging.WARNING, logger="remoteproc.ssh"):
        connect(t).close()
    assert any("could not record the host key in %s" % path in r.getMessage() for r in caplog.records)


# -- the session channel (the relay) ---------------------------------------------------------

def test_a_server_that_allows_no_session_says_to_check_max_sessions(tmp_path):
    with own_sshd(str(tmp_path / "sshd"), "MaxSessions 0") as server:
        p = remoteproc.RemoteProcess(spec(server.port), target=os.getpid, **options(server))
        with pytest.raises(BootstrapError) as info:
            p.start()
    text = str(info.value)
    assert text.startswith("%s: the server refused a session channel" % spec(server.port)), text
    assert "Check MaxSessions in its sshd_config" in text


def test_the_relays_import_shim_reports_paramikos_real_version():
    code = textwrap.dedent("""
        import sys
        from remoteproc.relay import paramiko_shims
        paramiko_shims.preload()
        import paramiko
        assert "importlib.metadata" not in sys.modules or sys.modules["importlib.metadata"].__name__ \\
            == "importlib.metadata" and hasattr(sys.modules["importlib.metadata"], "distributions")
        from importlib import metadata
        print(paramiko.__version__, metadata.version("paramiko"), paramiko_shims.dist_version("paramiko"))
        paramiko_shims.preload()     # again: paramiko is there already
        try:
            paramiko_shims.dist_version("no-such-distribution-remoteproc")
        except metadata.PackageNotFoundError:
            print("not found")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH")] if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    versions = first.split()
    assert len(set(versions)) == 1, versions
    assert second == "not found"


# -- the ssh config, as a connection reads it ----------------------------------------------------

def resolve_with(tmp_path, text: str, host: str = "box", **extra) -> ssh.Target:
    path = tmp_path / "ssh_config"
    path.write_text(textwrap.dedent(text))
    return ssh.resolve(host, dict(ssh_config=str(path), allow_agent=False, look_for_keys=False, **extra))


def test_a_user_ssh_config_that_cannot_be_read_is_an_error_not_ignored(tmp_path, monkeypatch):
    """A missing ~/.ssh/config is no config; one that exists but cannot be read (here a symlink
    loop) is an error: connecting without the user's settings would surprise."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    assert ssh.resolve("box", {"look_for_keys": False}).hostname == "box"
    loop = tmp_path / ".ssh" / "config"
    os.symlink(str(loop), str(loop))
    with pytest.raises(ConfigError, match="cannot read ssh config file %s: " % loop):
        ssh.resolve("box", {"look_for_keys": False})


@pytest.mark.parametrize("line,says", [
    ("=HostName x", "line 2: cannot parse '=HostName x'"),
    ("HostName 'unbalanced", "line 2: No closing quotation in \"HostName 'unbalanced\""),
    ("HostName # only a comment", "line 2: HostName needs a value"),
    ("Match host", "line 2: Match host needs an argument"),
])
def test_a_broken_ssh_config_line_is_named(tmp_path, line, says):
    """... with the host first and the fix last, as every error (``.host`` too)."""
    with pytest.raises(ConfigError) as info:
        resolve_with(tmp_path, "Host box\n%s\n" % line)
    assert says in str(info.value) and str(tmp_path / "ssh_config") in str(info.value)
    assert str(info.value).startswith("box: ") and "Fix: " in str(info.value) and info.value.host == "box"


def test_a_bad_token_in_the_config_or_a_jump_hosts_config_names_the_host(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_with(tmp_path, "Host box\n  IdentityFile ~/.ssh/%z\n")
    assert str(info.value).startswith("box: IdentityFile '~/.ssh/%z': unknown token %z. Fix: "), str(info.value)
    with pytest.raises(ConfigError) as info:
        resolve_with(tmp_path, "Host box\n  ProxyJump jump\nHost jump\n  IdentityFile %z\n")
    assert str(info.value).startswith("box: IdentityFile '%z': unknown token %z. Fix: "), str(info.value)


def test_match_exec_runs_only_when_the_criteria_before_it_hold(tmp_path):
    marker = tmp_path / "ran"
    t = resolve_with(tmp_path, """
        Match host other exec "touch %s"
          Port 2222
        Match originalhost box exec "true"
          User matched
        """ % marker)
    assert not marker.exists()
    assert (t.port, t.username) == (22, "matched")


def test_a_match_exec_that_hangs_or_cannot_run_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ssh_config_module, "MATCH_EXEC_TIMEOUT", 0.5)
    monkeypatch.setenv("SHELL", "/bin/sh")
    with pytest.raises(ConfigError, match=r"Match exec 'sleep 30' did not finish within 0.5s"):
        resolve_with(tmp_path, "Match exec 'sleep 30'\n  Port 2\n")
    monkeypatch.setenv("SHELL", "/nonexistent/shell")
    with pytest.raises(ConfigError, match=r"Match exec 'true': .*/nonexistent/shell"):
        resolve_with(tmp_path, "Match exec true\n  Port 2\n")


def test_an_unsupported_match_is_warned_about_once(tmp_path, caplog):
    path = tmp_path / "ssh_config"
    path.write_text("Match localnetwork 10.0.0.0/8\n  Port 2\n")
    config = ssh.load_config(str(path))
    with caplog.at_level(logging.WARNING, logger="remoteproc.ssh"):
        for _ in range(2):
            assert ssh.resolve("box", {"look_for_keys": False}, config).port == 22
    warnings = [r for r in caplog.records if "Match localnetwork is not supported" in r.getMessage()]
    assert len(warnings) == 1


def test_include_skips_directories_its_pattern_matches(tmp_path):
    (tmp_path / "conf.d" / "subdir").mkdir(parents=True)
    (tmp_path / "conf.d" / "user.conf").write_text("Host box\n  User included\n")
    t = resolve_with(tmp_path, "Include %s/conf.d/*\n" % tmp_path)
    assert t.username == "included"


@pytest.mark.parametrize("text,says", [
    ("Host box\n  ConnectTimeout soon\n", "ConnectTimeout 'soon' is not a time"),
    ("Host box\n  ServerAliveInterval 1.5\n", "ServerAliveInterval '1.5' is not a time"),
    ("Host box\n  Port 70000\n", "port 70000 is out of range 1-65535"),
    ("Host box\n  Port nosuchservice\n", "box: ssh_config: port 'nosuchservice' is not a number"),
    ("Host box\n  ProxyCommand nc %h %p 100%\n", "a lone % at the end"),
])
def test_bad_values_in_the_ssh_config_are_config_errors(tmp_path, text, says):
    with pytest.raises(ConfigError) as info:
        resolve_with(tmp_path, text)
    assert says.lower() in str(info.value).lower()


def test_a_port_may_be_a_service_name_as_ssh_takes_it(tmp_path):
    assert resolve_with(tmp_path, "Host box\n  Port ssh\n").port == 22


def test_proxy_command_option_beats_the_config_and_identity_agent_takes_a_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_AGENT_SOCK", "/run/agent.sock")
    t = resolve_with(tmp_path, """
        Host box
          ProxyCommand from-the-config %h
          IdentityAgent $MY_AGENT_SOCK
        """, proxy_command="from-the-caller %h")
    assert t.proxy_command == "from-the-caller box"
    assert t.identity_agent == "/run/agent.sock"


def test_a_boolean_is_no_port():
    with pytest.raises(ConfigError, match="option port=True for host 'h' must be int"):
        ssh.check_options("h", {"port": True})
