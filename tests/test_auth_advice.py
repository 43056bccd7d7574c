"""What a refused login advises, and which credentials a shared connection stands for (paramiko
transport), end to end against the suite's loopback sshd.

* an ``IdentityFile`` of the ssh config that does not exist is named as such, with the config
  file it came from, not as a ``key_filename`` the user never passed (a missing one is still
  skipped, as ssh skips it, and the next key logs in);
* a ``passphrase=`` is part of the connection's identity, as ``password=`` is: a wrong one is
  refused while a process started with the right one runs on its open connection.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

import remoteproc
from remoteproc import RemoteProcess, ssh
from remoteproc.ssh.connect import connect

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path, sshd, alias: str, *identity_files: str) -> str:
    """An ssh_config where ALIAS is the loopback sshd's account, with these IdentityFiles only."""
    lines = ["Host %s" % alias, "    HostName %s" % sshd.host, "    Port %d" % sshd.port,
             "    User %s" % sshd.users[0], "    UserKnownHostsFile %s" % sshd.known_hosts,
             "    IdentitiesOnly yes"]
    lines += ["    IdentityFile %s" % path for path in identity_files]
    path = tmp_path / "ssh_config"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _no_own_setup(**extra) -> dict:
    """Options with nothing of this machine's ssh setup (no agent, no default keys), paramiko."""
    return dict(dict(transport="paramiko", allow_agent=False, look_for_keys=False), **extra)


# -- D3: a missing IdentityFile is named as one ----------------------------------------------

def test_a_missing_identity_file_is_named_with_its_config_not_as_key_filename(sshd, tmp_path):
    missing = str(tmp_path / "nonexistent" / "deploy_key")
    config = _config(tmp_path, sshd, "rp-nokey", missing)
    p = RemoteProcess("rp-nokey", target=os.getpid, **_no_own_setup(ssh_config=config))
    with pytest.raises(remoteproc.AuthenticationError) as info:
        p.start()
    text = str(info.value)
    assert text.startswith("rp-nokey (") and "authentication failed" in text, text
    assert "tried: %s (no such file)" % missing in text, text
    assert "Fix: check IdentityFile for rp-nokey in %s: %s does not exist" % (config, missing) in text, text
    assert "check key_filename" not in text, text      # (no key_filename= was passed)


def test_a_missing_key_filename_and_identity_file_are_each_named_where_given(sshd, tmp_path):
    given = str(tmp_path / "given_key")
    configured = str(tmp_path / "configured_key")
    config = _config(tmp_path, sshd, "rp-both", configured)
    target = ssh.resolve("rp-both", _no_own_setup(ssh_config=config, key_filename=given))
    with pytest.raises(remoteproc.AuthenticationError) as info:
        connect(target).close()
    text = str(info.value)
    assert "tried: %s (no such file); %s (no such file)." % (given, configured) in text, text
    assert ("Fix: check key_filename: %s does not exist (give the path of your private key); or check "
            "IdentityFile for rp-both in %s: %s does not exist" % (given, config, configured)) in text, text


def test_a_missing_identity_file_is_skipped_and_the_next_one_logs_in(sshd, tmp_path):
    # (as ssh skips it: only the advice of a failed login names it)
    config = _config(tmp_path, sshd, "rp-next", str(tmp_path / "nonexistent_key"), sshd.client_key)
    conn = connect(ssh.resolve("rp-next", _no_own_setup(ssh_config=config)))
    try:
        assert conn.active and conn.transport.is_authenticated()
    finally:
        conn.close()


# -- D6: the passphrase is part of the connection's identity -----------------------------------

def _encrypted_copy(sshd, tmp_path, passphrase: str) -> str:
    """The loopback account's client key (so: authorised), encrypted with PASSPHRASE."""
    locked = str(tmp_path / "enc_key")
    shutil.copyfile(sshd.client_key, locked)
    os.chmod(locked, 0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", passphrase, "-f", locked], check=True, timeout=30,
                   capture_output=True)
    return locked


def test_the_passphrase_is_part_of_the_connection_key_as_a_hash(sshd, tmp_path):
    options = dict(sshd.options(), ssh_config=False)
    right = ssh.resolve(sshd.spec(), dict(options, passphrase="sekret"))
    assert right.conn_key == ssh.resolve(sshd.spec(), dict(options, passphrase="sekret")).conn_key
    for other in ("wrong", None):
        assert ssh.resolve(sshd.spec(), dict(options, passphrase=other)).conn_key != right.conn_key
    assert "sekret" not in repr(right.conn_key) and "sekret" not in repr(right.key)


def test_a_wrong_passphrase_is_refused_while_the_right_ones_connection_is_open(sshd, tmp_path):
    locked = _encrypted_copy(sshd, tmp_path, "sekret")
    options = _no_own_setup(port=sshd.port, username=sshd.users[0], known_hosts=sshd.known_hosts,
                            ssh_config=False, key_filename=locked)
    right = RemoteProcess(sshd.spec(), target=time.sleep, args=(45,), **dict(options, passphrase="sekret"))
    right.start()
    try:
        assert right.is_alive()
        wrong = RemoteProcess(sshd.spec(), target=os.getpid, **dict(options, passphrase="wrong"))
        with pytest.raises(remoteproc.AuthenticationError) as info:
            wrong.start()
        text = str(info.value)
        assert "tried: %s (encrypted, and the passphrase given is not its passphrase" % locked in text, text
        assert right.is_alive(), "the right passphrase's process runs on"
    finally:
        right.terminate()
        right.join(10)
