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

import contextlib
import shutil
import socket
import time
from collections.abc import Iterator

import pytest

from remoteproc import RemoteProcess, ssh
from remoteproc.errors import ConnectError
from remoteproc.testing.net import HOST, free_port

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port on 127.0.0.1 whose accept queue is full: a connection to it hangs (SYN dropped), as to a
    host whose link is down."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = []
    try:
        for _ in range(2):      # fill the queue; a connect that itself hangs shows it is full
            s = socket.socket()
            s.settimeout(0.5)
            held.append(s)
            try:
                s.connect((HOST, port))
            except OSError:
                break
        yield port
    finally:
        for s in held:
            s.close()
        listener.close()


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
    with black_hole() as hole:
        config = _node_config(tmp_path, sshd, hole)
        text, elapsed = start_error("node3", _jump_options(sshd, config), within=12)
    assert elapsed < 12, elapsed        # (ssh node3 fails after node3's 2 s too; it was 30 s)
    assert "at the jump host" in text and "bastion" in text, text
    assert "connection timed out after 2s" in text, text
    assert "ConnectTimeout 2 for node3 in %s" % config in text, text


def test_a_jump_hosts_own_shorter_connect_timeout_stays_and_the_option_beats_the_config(tmp_path, sshd):
    with black_hole() as hole:
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
