"""Jump hosts and the fixes our errors suggest, against real sshds and real sockets (audit).

* paramiko transport: the target's connect timeout (option or ssh config) bounds its jump hosts
  too, as ``ssh``'s ConnectTimeout bounds the banner wait through them: a black-holed bastion
  without a ConnectTimeout of its own failed after the target's 2 s, not the default 30 s, and
  the message names the value used and where it came from;
* paramiko transport with ``$HOME`` elsewhere than the account's home: the ``ssh ...`` command a
  HostKeyError suggests reads the config and known_hosts files paramiko read (``-F``, ``-o
  UserKnownHostsFile=``), for the target and for a jump host;
* openssh transport: a dead jump host's message leaves out ssh's proxy noise after its own reason.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import time

import pytest

from remoteproc import RemoteProcess, ssh
from remoteproc.errors import ConnectError, HostKeyError
from remoteproc.ssh.connect import connect
from remoteproc.testing.net import HOST, free_port, full_listener

pytestmark = pytest.mark.timeout(120)


def start_error(host: str, options: dict, kind: type = ConnectError, within: float = 60.0) -> tuple[str, float]:
    """(the message of the error starting a process on ``host`` raises, the seconds it took)."""
    started = time.monotonic()
    with pytest.raises(kind) as info:
        RemoteProcess(host, target=print, **options).start()
    elapsed = time.monotonic() - started
    assert elapsed < within, (elapsed, str(info.value))
    return str(info.value), elapsed


# -- 1. the target's connect timeout bounds its jump hosts -------------------------------------------

def _node_config(tmp_path, sshd, hole: int, bastion_timeout: str = "") -> str:
    path = tmp_path / "ssh_config"
    path.write_text(
        "Host node*\n    ConnectTimeout 2\n"
        "Host node3\n    HostName %s\n    Port %d\n    User %s\n    ProxyJump bastion\n"
        "Host bastion\n    HostName %s\n    Port %d\n%s"
        % (HOST, sshd.port, sshd.users[0], HOST, hole, bastion_timeout))
    return str(path)


def _jump_options(sshd, config: str) -> dict:
    return dict(ssh_config=config, key_filename=sshd.client_key, known_hosts=sshd.known_hosts,
                allow_agent=False, look_for_keys=False)


def test_a_black_holed_jump_host_fails_within_the_targets_config_connect_timeout(tmp_path, sshd):
    with full_listener() as hole:
        config = _node_config(tmp_path, sshd, hole)
        text, elapsed = start_error("node3", _jump_options(sshd, config), within=12)
    assert elapsed < 12, elapsed        # (ssh node3 fails after node3's 2 s too; it was 30 s)
    assert "at the jump host" in text and "bastion" in text, text
    assert "connection timed out after 2s" in text, text
    assert "ConnectTimeout 2 for node3 in %s" % config in text, text


def test_a_jump_hosts_own_shorter_connect_timeout_stays_and_the_option_beats_the_config(tmp_path, sshd):
    with full_listener() as hole:
        config = _node_config(tmp_path, sshd, hole, "    ConnectTimeout 1\n")
        target = ssh.resolve("node3", _jump_options(sshd, config))
        assert target.connect_timeout == 2 and target.jump is not None
        assert target.jump.connect_timeout == 1
        assert "for bastion" in target.jump.timeout_origin
        given = ssh.resolve("node3", dict(_jump_options(sshd, config), connect_timeout=4))
        assert given.connect_timeout == 4 and given.jump is not None and given.jump.connect_timeout == 4
        assert given.jump.timeout_origin == ""      # (the caller's own value: the fix names it)


# -- 3. openssh transport: a dead jump host's message without ssh's proxy noise ---------------------

def test_a_dead_jump_hosts_message_quotes_its_reason_without_sshs_proxy_noise(sshd):
    if shutil.which("ssh") is None:
        pytest.skip("no ssh program")
    options = dict(sshd.options())
    options.pop("password", None)
    dead = free_port()
    jump = "%s@%s:%d" % (sshd.users[0], HOST, dead)
    text, _ = start_error(sshd.spec(), dict(options, transport="openssh", proxy_jump=jump, connect_timeout=10))
    assert "at the jump host (%s): nothing listens on that port" % jump in text, text
    assert "port %d: Connection refused" % dead in text, text
    assert "kex_exchange_identification" not in text and "UNKNOWN port 65535" not in text, text


# -- 2. paramiko transport, $HOME elsewhere: the suggested ssh command reads paramiko's files -------

def _trust_command(text: str) -> list[str]:
    """The ``ssh ...`` a HostKeyError says to run, made to accept the key without a prompt."""
    found = re.search(r"connect once with `(ssh [^`]*)`", text)
    assert found is not None, text
    words = shlex.split(found.group(1))
    return [words[0], "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes"] + words[1:] + ["true"]


@pytest.mark.parametrize("alias", ["node7", "node8"])
def test_the_trust_command_reads_homes_config_and_known_hosts_when_home_is_not_the_accounts(
        tmp_path, sshd, monkeypatch, alias):
    """node7 directly, node8 through the jump host bastion (the same sshd under another alias,
    whose unknown key is the first refusal); both aliases are only in $HOME/.ssh/config."""
    if shutil.which("ssh") is None:
        pytest.skip("no ssh program")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    assert os.path.realpath(home) != os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
    entry = ("    HostName %s\n    Port %d\n    User %s\n    IdentityFile %s\n    IdentitiesOnly yes\n"
             % (HOST, sshd.port, sshd.users[0], sshd.client_key))
    (home / ".ssh" / "config").write_text("Host node7 bastion\n%sHost node8\n    ProxyJump bastion\n%s"
                                          % (entry, entry))
    monkeypatch.setenv("HOME", str(home))
    options = dict(allow_agent=False)
    target = ssh.resolve(alias, options)
    assert target.known_hosts[0] == str(home / ".ssh" / "known_hosts")
    with pytest.raises(HostKeyError) as info:
        connect(target).close()
    text = str(info.value)
    assert ("at the jump host" in text) == (alias == "node8"), text
    assert "-F %s" % (home / ".ssh" / "config") in text, text
    assert "UserKnownHostsFile=%s" % (home / ".ssh" / "known_hosts") in text, text
    done = subprocess.run(_trust_command(text), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, (text, done.stderr)
    assert (home / ".ssh" / "known_hosts").exists()
    connect(ssh.resolve(alias, options)).close()      # (the key is where the next start looks)


def test_the_trust_command_is_unchanged_when_home_is_the_accounts(tmp_path, sshd, monkeypatch):
    monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)
    target = ssh.resolve(sshd.spec(), dict(port=sshd.port, known_hosts=str(tmp_path / "kh"), ssh_config=False,
                                           key_filename=sshd.client_key, allow_agent=False, look_for_keys=False))
    with pytest.raises(HostKeyError) as info:
        connect(target).close()
    text = str(info.value)
    assert ("connect once with `ssh -F none -i %s -o IdentityAgent=none -o IdentityFile=none "
            "-o UserKnownHostsFile=%s -p %d %s`") % (
        sshd.client_key, tmp_path / "kh", sshd.port, sshd.spec().split(":")[0]) in text, text


def test_the_changed_key_fix_names_homes_known_hosts_for_ssh_keygen_when_home_is_not_the_accounts(
        tmp_path, sshd, monkeypatch):
    """ssh-keygen -R without -f edits the account's ~/.ssh/known_hosts, not $HOME's that paramiko read."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    known = home / ".ssh" / "known_hosts"
    name = "[%s]:%d" % (HOST, sshd.port)
    line = open(sshd.known_hosts).read().split("\n")[0].split()
    other = subprocess.run(["ssh-keygen", "-q", "-t", line[1].replace("ssh-", ""), "-N", "", "-f",
                            str(tmp_path / "other")], capture_output=True, timeout=30, check=True)
    assert other.returncode == 0
    known.write_text("%s %s\n" % (name, " ".join(open(str(tmp_path / "other.pub")).read().split()[:2])))
    monkeypatch.setenv("HOME", str(home))
    target = ssh.resolve(sshd.spec(), dict(port=sshd.port, ssh_config=False, key_filename=sshd.client_key,
                                           allow_agent=False, look_for_keys=False))
    with pytest.raises(HostKeyError) as info:
        connect(target).close()
    assert "`ssh-keygen -R '%s' -f %s`" % (name, known) in str(info.value), str(info.value)
