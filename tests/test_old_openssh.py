"""transport='openssh' with an ``ssh`` older than OpenSSH 7.6 (RHEL and CentOS 7 ship 7.4, still common
on clusters): it has no ``StrictHostKeyChecking accept-new`` and refuses the word, with every
connection that carried it ("command-line line 0: unsupported option").  Before, a config's
``StrictHostKeyChecking no`` (which we pass on as accept-new) made every connection fail that way, and
host_key_policy='accept-new' failed with a message that blamed the user's configuration.

The old ssh here is a wrapper ($REMOTEPROC_SSH) around this machine's: it says ``OpenSSH_7.4p1`` to
``-V`` and refuses ``accept-new`` as 7.4 does, and runs the real ssh otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from remoteproc.ssh import openssh

pytestmark = pytest.mark.timeout(120)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = r"""
import json, sys
from remoteproc import Pipe, RemoteProcess
from remoteproc.errors import RemoteProcessError
options = json.loads(sys.argv[2])

def answer(conn):
    conn.send(42)

a, b = Pipe()
p = RemoteProcess(sys.argv[1], target=answer, args=(b,), transport="openssh", connect_timeout=20, **options)
try:
    p.start()
    got = {"value": a.recv()}
    p.join(30)
    got["exitcode"] = p.exitcode
except RemoteProcessError as exc:
    got = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(got))
"""


@pytest.fixture
def old_ssh(tmp_path):
    real = shutil.which("ssh")
    assert real is not None
    wrapper = tmp_path / "ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        "for a in \"$@\"; do\n"
        "  case \"$a\" in\n"
        "    -V) echo 'OpenSSH_7.4p1, OpenSSL 1.0.2k-fips  26 Jan 2017' >&2; exit 0;;\n"
        "    *accept-new*) echo 'command-line line 0: unsupported option \"accept-new\".' >&2; exit 255;;\n"
        "  esac\n"
        "done\n"
        "exec %s \"$@\"\n" % real)
    wrapper.chmod(0o755)
    return str(wrapper)


def _run(spec: str, ssh: str, **options) -> dict:
    env = dict(os.environ, REMOTEPROC_SSH=ssh, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", PROGRAM, spec, json.dumps(options)], capture_output=True, text=True,
                         timeout=100, env=env, stdin=subprocess.DEVNULL)
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_version_is_read_once_from_ssh_minus_v(old_ssh, tmp_path, monkeypatch):
    monkeypatch.setenv("REMOTEPROC_SSH", old_ssh)
    assert openssh.old_ssh("node1") == "OpenSSH_7.4p1"
    monkeypatch.setenv("REMOTEPROC_SSH", shutil.which("ssh") or "ssh")
    assert openssh.old_ssh("node1") is None           # (this machine's: 9.x)
    newer = tmp_path / "newer"
    newer.write_text("#!/bin/sh\necho 'OpenSSH_7.6p1 Ubuntu-4, OpenSSL 1.0.2n  7 Dec 2017' >&2\n")
    newer.chmod(0o755)
    monkeypatch.setenv("REMOTEPROC_SSH", str(newer))
    assert openssh.old_ssh("node1") is None


def test_a_configs_strict_host_key_checking_no_connects_to_a_known_host(sshd, old_ssh, tmp_path):
    config = tmp_path / "config"
    config.write_text("Host *\n    StrictHostKeyChecking no\n")
    got = _run(sshd.spec(), old_ssh, known_hosts=sshd.known_hosts, key_filename=sshd.client_key,
               ssh_config=str(config))
    assert got == {"value": 42, "exitcode": 0}


def test_a_configs_strict_host_key_checking_no_refuses_an_unknown_host_with_the_way_out(sshd, old_ssh, tmp_path):
    config = tmp_path / "config"
    config.write_text("Host *\n    StrictHostKeyChecking no\n")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    got = _run(sshd.spec(), old_ssh, known_hosts=str(empty), key_filename=sshd.client_key, ssh_config=str(config))
    assert got["error"] == "HostKeyError", got
    message = got["message"]
    assert "OpenSSH_7.4p1" in message and "7.6" in message and "transport='paramiko'" in message, message
    assert "host_key_policy='accept-new'" not in message, message      # (the advice this ssh cannot take)
    assert empty.read_text() == ""      # nothing recorded: not taken as accept-new, nor as no


def test_host_key_policy_accept_new_names_the_ssh_version_and_the_way_out(sshd, old_ssh, tmp_path):
    got = _run(sshd.spec(), old_ssh, known_hosts=str(tmp_path / "known_hosts"), key_filename=sshd.client_key,
               host_key_policy="accept-new")
    assert got["error"] == "ConfigError", got
    message = got["message"]
    assert message.startswith(sshd.spec() + " (transport='openssh'): host_key_policy='accept-new'"), message
    assert "OpenSSH_7.4p1" in message and "7.6" in message and "transport='paramiko'" in message, message


def test_a_jump_host_whose_config_says_no_gets_yes_from_an_old_ssh(old_ssh, monkeypatch):
    """Jump hosts get our settings through a config file of ours (``jump_config``), where ssh reads the
    word as the command line's; with an old ssh, the word for their ``StrictHostKeyChecking no``."""
    monkeypatch.setenv("REMOTEPROC_SSH", old_ssh)
    assert openssh._lax_word("alice@node1") == "yes"
    text, _, _ = openssh.jump_config([], lax=["jump1"], lax_word=openssh._lax_word("alice@node1"))
    assert "Host jump1\nStrictHostKeyChecking yes\nHost *" in text, text
    assert "accept-new" not in text, text
    monkeypatch.setenv("REMOTEPROC_SSH", shutil.which("ssh") or "ssh")
    assert openssh._lax_word("alice@node1") == "accept-new"
