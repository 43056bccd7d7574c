"""``ForwardAgent`` and user certificates through the relay, against real loopback sshds.

* ``ForwardAgent yes`` (and a socket path): the remote children find ``$SSH_AUTH_SOCK``, list
  the local agent's keys with ``ssh-add -l``, and log in elsewhere with them; every process on
  the connection shares it.  Off by default.  With no agent answering, the processes run
  without one (as ``ssh``); a named socket that does not exist is warned about.
* A user certificate (``CertificateFile``) where the server trusts a user CA and
  ``known_hosts`` holds the host's own key: the paramiko transport logs in, as ``ssh`` does.

Each module starts its own ``ssh-agent`` (by pid, with a throwaway key) and kills it at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from multiprocessing.connection import wait

import pytest

from remoteproc import Pipe, RemoteProcess
from remoteproc.ssh import resolve
from remoteproc.ssh.config import Config
from remoteproc.testing import LoopbackSSHServer, current_user, find_sshd

pytestmark = pytest.mark.timeout(120)

TRANSPORTS = ["paramiko", "openssh"]


def probe(conn, command):
    """In the remote child: what it sees of the agent, and what ``command`` says."""
    done = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    conn.send((os.environ.get("SSH_AUTH_SOCK"), done.returncode, done.stdout + done.stderr))


def run_probe(host: str, command: str = "ssh-add -l", **options) -> tuple:
    parent, child = Pipe()
    p = RemoteProcess(host, target=probe, args=(child, command), **options)
    p.start()
    child.close()
    assert wait([parent], 90), "no message from the remote process"
    got = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    return got


def _unavailable(reason: str) -> None:
    pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackSSHServer]:
    if find_sshd() is None:
        _unavailable("no sshd")
    srv = LoopbackSSHServer(users=[current_user()]).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def agent(server, tmp_path_factory) -> Iterator[dict]:
    """A private ssh-agent holding a throwaway key that ``server`` also authorizes."""
    if shutil.which("ssh-agent") is None:
        _unavailable("no ssh-agent")
    d = tmp_path_factory.mktemp("agent")
    sock, key = str(d / "agent.sock"), str(d / "throwaway")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "throwaway-key", "-f", key],
                   check=True, timeout=30, capture_output=True)
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.path.exists(sock), "ssh-agent did not create its socket"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSH_AUTH_SOCK": sock}
        subprocess.run(["ssh-add", key], env=env, check=True, timeout=30, capture_output=True,
                       stdin=subprocess.DEVNULL)
        with open(os.path.join(server.workdir, "authorized_keys", current_user()), "a") as f:
            f.write(open(key + ".pub").read())
        yield {"sock": sock, "key": key, "dir": str(d)}
    finally:
        proc.kill()
        proc.wait(10)


def config(server, agent, name: str, *lines: str) -> str:
    """An ssh_config file whose host ``name`` reaches ``server`` with its key file (not the agent's key)."""
    path = os.path.join(agent["dir"], name + ".config")
    with open(path, "w") as f:
        f.write("Host %s\n    HostName %s\n    Port %d\n    User %s\n    IdentityFile %s\n    IdentitiesOnly yes\n"
                "    UserKnownHostsFile %s\n%s" % (name, server.host, server.port, current_user(), server.client_key,
                                                  server.known_hosts, "".join("    %s\n" % ln for ln in lines)))
    return path


def login_back(server) -> str:
    """A command for the remote child: ssh to ``server`` with nothing but the agent's keys."""
    return ("ssh -F /dev/null -o BatchMode=yes -o IdentityFile=/nonexistent -o UserKnownHostsFile=%s -p %d %s@%s "
            "echo logged-in-with-the-agent" % (server.known_hosts, server.port, current_user(), server.host))


# -- ForwardAgent -----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forward_agent_yes_lets_the_remote_children_use_the_local_agent(server, agent, transport):
    path = config(server, agent, "fwd-" + transport, "IdentityAgent %s" % agent["sock"], "ForwardAgent yes")
    alias = "fwd-" + transport
    sock, status, said = run_probe(alias, ssh_config=path, transport=transport)
    assert sock and status == 0 and "throwaway-key" in said, (sock, status, said)
    # another process on the same connection (the same remote agent) shares it, and a login from
    # the host to another (here the same sshd again) authenticates with the local agent's key
    sock, status, said = run_probe(alias, login_back(server), ssh_config=path, transport=transport)
    assert sock and status == 0 and "logged-in-with-the-agent" in said, (sock, status, said)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_agent_is_not_forwarded_by_default(server, agent, transport):
    path = config(server, agent, "nofwd-" + transport, "IdentityAgent %s" % agent["sock"])
    sock, status, said = run_probe("nofwd-" + transport, ssh_config=path, transport=transport)
    assert sock is None and status != 0, (sock, status, said)
    path = config(server, agent, "fwdno-" + transport, "IdentityAgent %s" % agent["sock"], "ForwardAgent no")
    assert run_probe("fwdno-" + transport, ssh_config=path, transport=transport)[0] is None


def test_forward_agent_names_the_socket_to_forward(server, agent):
    """``ForwardAgent PATH``: that agent, whatever the one we authenticate with (here none)."""
    path = config(server, agent, "fwdpath", "IdentityAgent none", "ForwardAgent %s" % agent["sock"])
    sock, status, said = run_probe("fwdpath", ssh_config=path)
    assert sock and status == 0 and "throwaway-key" in said, (sock, status, said)


def test_forward_agent_yes_without_an_agent_runs_without_one(server, agent):
    """As ssh: no agent answering, nothing is forwarded, and the process runs."""
    dead = os.path.join(agent["dir"], "no-agent-here.sock")
    path = config(server, agent, "fwdnone", "IdentityAgent %s" % dead, "ForwardAgent yes")
    sock, status, said = run_probe("fwdnone", ssh_config=path)
    assert sock is None and status != 0, (sock, status, said)
    # allow_agent=False: no ssh-agent at all (the openssh transport passes IdentityAgent=none for it)
    path = config(server, agent, "fwdoff", "IdentityAgent %s" % agent["sock"], "ForwardAgent yes")
    assert run_probe("fwdoff", ssh_config=path, allow_agent=False)[0] is None


def test_a_forwarded_socket_that_does_not_exist_is_warned_about(server, agent, caplog):
    """As ssh ("Cannot forward agent socket path"): a warning, the process runs, its agent requests fail."""
    missing = os.path.join(agent["dir"], "missing.sock")
    path = config(server, agent, "fwdmissing", "ForwardAgent %s" % missing)
    with caplog.at_level(logging.WARNING, logger="remoteproc"):
        sock, status, said = run_probe("fwdmissing", ssh_config=path)
    assert sock and status != 0 and "throwaway-key" not in said, (sock, status, said)
    assert any("ForwardAgent: cannot forward the agent socket %s" % missing in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_forward_agent_values_as_ssh_reads_them(tmp_path, monkeypatch):
    from remoteproc.ssh.auth import agent_to_forward

    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/agent.sock")
    monkeypatch.setenv("WORK_AGENT", "/run/work.sock")
    monkeypatch.delenv("NO_SUCH_AGENT", raising=False)

    def target(lines: str, **options):
        return resolve("h", dict(options), Config.from_text("Host h\n" + lines))

    def forwarded(lines: str, **options):
        t = target(lines, **options)
        return t.forward_agent, agent_to_forward(t)

    assert forwarded("") == (False, None)
    assert forwarded("ForwardAgent yes\n") == (True, "/run/agent.sock")
    assert forwarded("ForwardAgent no\nForwardAgent yes\n") == (False, None)      # the first value wins
    assert forwarded("ForwardAgent yes\nIdentityAgent /run/id.sock\n") == (True, "/run/id.sock")
    assert forwarded("ForwardAgent yes\nIdentityAgent none\n") == (True, None)
    assert forwarded("ForwardAgent yes\n", allow_agent=False) == (True, None)
    assert forwarded("ForwardAgent $WORK_AGENT\n") == (True, "/run/work.sock")
    assert forwarded("ForwardAgent ${WORK_AGENT}\n") == (True, "/run/work.sock")
    assert forwarded("ForwardAgent $NO_SUCH_AGENT\n") == (False, None)          # as ssh: unset, off
    assert forwarded("ForwardAgent ~/agents/%h.sock\n") == (True, os.path.expanduser("~/agents/h.sock"))
    # processes that forward and processes that do not never share a connection (nor a remote agent)
    assert target("ForwardAgent yes\n").conn_key != target("").conn_key


# -- user certificates ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert_server(tmp_path_factory) -> Iterator[LoopbackSSHServer]:
    """An sshd that logs users in by their certificate only (TrustedUserCAKeys, no authorized key),
    with a known_hosts that holds its plain host key (not the @cert-authority line)."""
    if find_sshd() is None:
        _unavailable("no sshd")
    srv = LoopbackSSHServer(users=[current_user()], certificates=True).start()
    try:
        srv.known_hosts = str(tmp_path_factory.mktemp("plain") / "known_hosts")
        with open(srv.known_hosts, "w") as f:
            f.write("[%s]:%d %s\n" % (srv.host, srv.port, srv._server.host_public))      # type: ignore[union-attr]
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_certificate_file_logs_in(cert_server, tmp_path, transport):
    """The key in one place, its certificate in another (``CertificateFile``), as ssh takes them."""
    key, cert = str(tmp_path / "id_work"), str(tmp_path / "certs" / "work-cert.pub")
    shutil.copy(cert_server.client_key, key)
    os.chmod(key, 0o600)
    os.makedirs(os.path.dirname(cert))
    shutil.copy(cert_server.client_key + "-cert.pub", cert)
    path = tmp_path / "config"
    path.write_text("Host certified\n    HostName %s\n    Port %d\n    User %s\n    IdentityFile %s\n"
                    "    CertificateFile %s/certs/%%r-missing-cert.pub\n    CertificateFile %s\n"
                    "    IdentitiesOnly yes\n    UserKnownHostsFile %s\n"
                    % (cert_server.host, cert_server.port, current_user(), key, tmp_path, cert,
                       cert_server.known_hosts))
    sock, status, said = run_probe("certified", "echo in", ssh_config=str(path), transport=transport,
                                   allow_agent=False)
    assert status == 0 and said.strip() == "in"
