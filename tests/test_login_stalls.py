"""A server that stalls in the login is a ConnectError that says so, on both transports.

Found by an audit (G1, G2): an sshd that waits on an account lookup (LDAP, SSSD: here an
``AuthorizedKeysCommand`` that sleeps) before it answers a key.

- paramiko took its ``auth_timeout`` for a refusal: "authentication failed ... (refused)", the fix
  to add the key to ``authorized_keys``, and the next key waited as long again;
- ``ssh``'s ``ConnectTimeout`` bounds the TCP connection and the banner, not the login: the start
  waited 12 s and blamed a shell startup file of the account (``BootstrapError``).

Against an OpenSSH sshd of the test's own; the key offered is not in its ``authorized_keys``, so
sshd asks the command, which answers after the test is over.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from own_sshd import USER, own_sshd

from remoteproc import RemoteProcess
from remoteproc.errors import ConnectError
from remoteproc.ssh import openssh
from remoteproc.ssh.target import Target
from remoteproc.testing.net import HOST

pytestmark = pytest.mark.timeout(90)

WAIT = 2


def noop():
    pass


@pytest.fixture
def stalling(tmp_path):
    """(sshd whose key lookup sleeps 8 s, options with an unknown key and a 2 s connect timeout)."""
    sleep = next((p for p in ("/usr/bin/sleep", "/bin/sleep") if os.path.exists(p)), None)
    if sleep is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs sleep and ssh-keygen")
    keys = []
    for name in ("first", "second"):
        keys.append(str(tmp_path / name))
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys[-1]], check=True, timeout=30,
                       capture_output=True)
    with own_sshd(str(tmp_path / "sshd"), "AuthorizedKeysCommand %s 8" % sleep,
                  "AuthorizedKeysCommandUser nobody") as server:
        yield server, dict(port=server.port, known_hosts=server.known_hosts, ssh_config=False,
                           allow_agent=False, look_for_keys=False, key_filename=keys, connect_timeout=WAIT)


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_login_that_gets_no_answer_is_a_connect_error_within_the_timeout(stalling, transport):
    server, options = stalling
    p = RemoteProcess("%s@%s" % (USER, HOST), target=noop, transport=transport, **options)
    with pytest.raises(ConnectError) as info:
        p.start()
    message = str(info.value)
    assert type(info.value) is ConnectError, message
    assert message.startswith("%s@%s:%d: " % (USER, HOST, server.port)), message
    assert "-p %d %s@%s -v true`" % (server.port, USER, HOST) in message, message   # (a command that runs)
    if transport == "paramiko":
        assert "did not answer a login request within %gs" % WAIT in message, message
    else:
        assert "the SSH login did not finish within %gs" % WAIT in message, message
    assert "Fix:" in message and "connect_timeout=" in message, message
    assert "refused" not in message and "startup file" not in message, message


def test_the_login_that_counts_is_the_target_s_not_a_jump_host_s():
    """ssh's words for its login, as OpenSSH has said them since 7.8 and before; a jump host's ``ssh -W``
    (at VERBOSE in the user's config) says its own first."""
    target = Target(spec="u@node1:2222", hostname="node1", port=2222, username="u")
    assert openssh.logged_in(target, 'Authenticated to node1 ([10.0.0.1]:2222) using "publickey".\n')
    assert openssh.logged_in(target, "Authenticated to node1 ([10.0.0.1]:2222).\n")
    assert not openssh.logged_in(target, 'Authenticated to bastion ([10.0.0.9]:22) using "publickey".\n')
    assert not openssh.logged_in(target, "Permission denied (publickey).\n")
    target.proxy_jump = ["bastion", "hop2"]
    assert not openssh.logged_in(target, 'Authenticated to hop2 (via proxy) using "publickey".\n')
    # (found by an audit: a bastion on the same port as the target, 22 for both, is no login to the target)
    assert not openssh.logged_in(target, 'Authenticated to bastion ([10.0.0.9]:2222) using "publickey".\n')
    assert openssh.logged_in(target, 'Authenticated to NODE1 (via proxy) using "publickey".\n')


def test_only_what_ssh_says_at_verbose_is_dropped():
    said = (b"Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of known hosts.\n"
            b'Authenticated to 127.0.0.1 ([127.0.0.1]:2222) using "publickey".\n'
            b'/home/u/.ssh/config line 3: Unsupported option "gssapiauthentication"\n'
            b"Transferred: sent 3524, received 3356 bytes, in 0.0 seconds\n"
            b"Bytes per second: sent 74283.8, received 70742.5\n"
            b"Connection to 127.0.0.1 closed by remote host.\n")
    assert openssh.drop_verbose(said) == (b"Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of "
                                          b"known hosts.\nConnection to 127.0.0.1 closed by remote host.\n")


@pytest.mark.parametrize("config, says, verbose", [
    ("", "ours", True),                                  # INFO, ssh's default: raised
    ("LogLevel VERBOSE\n", "config", False),
    ("LogLevel DEBUG2\n", "config", False),
    ("LogLevel ERROR\n", "", False),                     # it would not say: the old wait
    ("ControlPath /tmp/rp-no-master-%C\n", "", False),   # a master's client logs nothing in
])
def test_ssh_says_its_login_unless_the_config_keeps_it_quiet(tmp_path, config, says, verbose):
    path = tmp_path / "config"
    path.write_text("Host *\n" + config)
    target = openssh.resolve("u@node1", {"ssh_config": str(path)})
    assert target.says_login == says
    assert ("LogLevel=VERBOSE" in target.ssh_args) is verbose
