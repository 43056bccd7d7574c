"""transport="openssh": the user's own ssh carries the agent, with everything of ssh's honoured.

The shared suite runs every host-facing test under both transports (see conftest's
``LOOPBACK_TARGETS``); this file holds what is particular to the ``ssh`` program: host
and user certificates, an existing ControlMaster, ssh's failures as typed errors, a
killed ``ssh`` process, and how our options become ssh's.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import wait

import cloudpickle
import pytest
from proctable import children_of, gone

import remoteproc
from remoteproc import Pipe, RemoteProcess, ssh
from remoteproc.errors import AuthenticationError, ConfigError, ConnectError, HostKeyError
from remoteproc.relay import client as relay_client
from remoteproc.ssh import openssh
from remoteproc.testing import LoopbackSSHServer, current_user, find_sshd
from remoteproc.testing.net import free_port

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)


def whoami(conn):
    conn.send((os.getpid(), os.environ.get("SSH_CONNECTION", "")))
    conn.close()


def sleeper(conn):
    conn.send(os.getpid())
    time.sleep(120)


def _round_trip(host, **options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=whoami, args=(child,), **options)
    p.start()
    child.close()
    assert wait([parent], 60), "no message from the remote process"
    pid, ssh_connection = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    return pid, ssh_connection


# -- our options as ssh's -----------------------------------------------------------------------

def _value(args, flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_options_become_ssh_arguments():
    args = openssh.option_args("alice@node1:2200", {
        "key_filename": ["~/k1", "/k2"], "known_hosts": "/kh", "host_key_policy": "accept-new",
        "connect_timeout": 2.5, "proxy_jump": "jump1,jump2", "ssh_config": False, "allow_agent": False,
        "keepalive_interval": 5, "keepalive_count": 2})
    assert _value(args, "-l") == ["alice"] and _value(args, "-p") == ["2200"]
    assert _value(args, "-i") == [os.path.expanduser("~/k1"), "/k2"]
    assert _value(args, "-F") == ["/dev/null"] and _value(args, "-J") == ["jump1,jump2"]
    opts = _value(args, "-o")
    for wanted in ("BatchMode=yes", "UserKnownHostsFile=/kh", "StrictHostKeyChecking=accept-new",
                   "ConnectTimeout=3", "IdentityAgent=none", "ServerAliveInterval=5", "ServerAliveCountMax=6",
                   "ClearAllForwardings=yes"):
        assert wanted in opts
    assert "-T" in args and "-x" in args


def test_look_for_keys_false_drops_only_the_default_key_files():
    """As with paramiko (audit G3): not ``IdentitiesOnly``, which kept ~/.ssh/id_* and dropped the agent's keys."""
    opts = _value(openssh.option_args("node1", {"look_for_keys": False}), "-o")
    assert "IdentityFile=none" in opts and not any(o.startswith("IdentitiesOnly") for o in opts)


def test_a_key_only_in_the_agent_logs_in_without_the_default_key_files(sshd, tmp_path):
    """Found by an audit (G3): ``look_for_keys=False`` with the key in ssh-agent alone logged in through
    paramiko and was refused through ``ssh``."""
    sock = str(tmp_path / "agent.sock")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        options = sshd.options(current_user())
        subprocess.run(["ssh-add", options.pop("key_filename")], env=dict(env, SSH_AUTH_SOCK=sock), check=True,
                       timeout=30, capture_output=True, stdin=subprocess.DEVNULL)
        config = tmp_path / "config"
        config.write_text("Host *\n    IdentityAgent %s\n" % sock)      # (the relay's environment is its own)
        _round_trip(sshd.spec(current_user()), transport="openssh", look_for_keys=False, ssh_config=str(config),
                    **{k: v for k, v in options.items() if k != "username"})
    finally:
        agent.kill()
        agent.wait(10)


def test_options_override_the_spec_and_prompting_drops_batch_mode():
    args = openssh.option_args("alice@node1:2200", {"username": "bob", "port": 22, "allow_prompt": True,
                                                    "host_key_policy": "reject", "ssh_config": "/cfg"})
    assert _value(args, "-l") == ["bob"] and _value(args, "-p") == ["22"] and _value(args, "-F") == ["/cfg"]
    assert "BatchMode=yes" not in _value(args, "-o")
    assert "StrictHostKeyChecking=yes" in _value(args, "-o")


def test_a_domain_account_s_user_name_goes_to_ssh_whole():
    args = openssh.option_args("alice@corp.example@node1:2200", {})
    assert _value(args, "-l") == ["alice@corp.example"] and _value(args, "-p") == ["2200"]


@pytest.mark.parametrize("name", ["password", "passphrase"])
def test_secrets_cannot_go_to_ssh(name):
    with pytest.raises(ConfigError, match="allow_prompt=True"):
        openssh.option_args("node1", {name: "x"})


def test_transport_option_is_checked(monkeypatch):
    with pytest.raises(ConfigError, match="transport='telnet'"):
        RemoteProcess("node1", target=print, transport="telnet")
    with pytest.raises(ConfigError, match="needs transport='openssh'"):
        RemoteProcess("node1", target=print, allow_prompt=True)
    monkeypatch.setenv("REMOTEPROC_TRANSPORT", "carrier-pigeon")
    with pytest.raises(ConfigError, match="REMOTEPROC_TRANSPORT='carrier-pigeon'"):
        RemoteProcess("node1", target=print)


def test_missing_ssh_program_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("REMOTEPROC_SSH", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConnectError, match="needs the ssh program") as info:
        openssh.ssh_binary("alice@node1")
    assert str(info.value).startswith("alice@node1: ") and info.value.host == "alice@node1"


def _wrong_ssh_programs(tmp_path):
    """(REMOTEPROC_SSH value, the OS's words) for programs that cannot be run."""
    text = tmp_path / "ssh-not-executable"
    text.write_text("#!/bin/sh\n")
    garbage = tmp_path / "ssh-garbage"
    garbage.write_bytes(b"\x7fNOT-AN-ELF")
    garbage.chmod(0o755)
    return [(str(tmp_path / "nonexistent" / "ssh"), "No such file or directory"), (str(text), "Permission denied"),
            (str(tmp_path), "Is a directory"), (str(garbage), "Exec format error")]


def test_a_wrong_remoteproc_ssh_is_a_connect_error_with_the_fix(monkeypatch, tmp_path):
    """Where ssh is run for a host (ssh -G first, then the connection's own ssh), a
    $REMOTEPROC_SSH that cannot run names itself, the variable and the way out."""
    for program, words in _wrong_ssh_programs(tmp_path):
        monkeypatch.setenv("REMOTEPROC_SSH", program)
        with pytest.raises(ConnectError) as info:
            openssh.resolve("alice@node1", {"ssh_config": False})
        text = str(info.value)
        assert text.startswith("alice@node1: ") and info.value.host == "alice@node1", text
        assert program in text and "REMOTEPROC_SSH" in text and words in text, text
        assert "Fix: set REMOTEPROC_SSH to an ssh program" in text and "transport='paramiko'" in text, text


def test_a_wrong_remoteproc_ssh_from_a_remote_process(sshd, tmp_path):
    """The same error reaches the program from start(), through the relay (a fresh one: it
    inherits $REMOTEPROC_SSH when it starts)."""
    code = (
        "import sys\n"
        "from remoteproc import RemoteProcess\n"
        "from remoteproc.errors import ConnectError\n"
        "p = RemoteProcess(sys.argv[1], target=print, transport='openssh', known_hosts=sys.argv[2])\n"
        "try:\n"
        "    p.start()\n"
        "except ConnectError as exc:\n"
        "    print('ConnectError:', exc)\n"
        "except Exception as exc:\n"
        "    print('other:', type(exc).__name__, exc)\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for program, words in _wrong_ssh_programs(tmp_path)[:2]:
        env = dict(os.environ, REMOTEPROC_SSH=program, PYTHONPATH=repo)
        out = subprocess.run([sys.executable, "-c", code, sshd.spec(), sshd.known_hosts], capture_output=True,
                             text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
        said = out.stdout.strip()
        assert said.startswith("ConnectError: " + sshd.spec() + ": "), said + out.stderr
        assert program in said and words in said and "Fix: set REMOTEPROC_SSH" in said, said


def test_the_fix_of_a_wrong_remoteproc_ssh_works_in_the_same_program(sshd, monkeypatch):
    """Found by an audit (G8): a program (a notebook) that followed the fix, setting REMOTEPROC_SSH in
    os.environ, still failed: the relay kept the environment it was started with."""
    # (options of this test alone: a live connection of another test's is reused, with no ssh run)
    options = dict(sshd.options(current_user()), transport="openssh", connect_timeout=17)
    monkeypatch.setenv("REMOTEPROC_SSH", "/nonexistent/ssh")
    with pytest.raises(ConnectError, match="/nonexistent/ssh"):
        _round_trip(sshd.spec(current_user()), **options)
    monkeypatch.delenv("REMOTEPROC_SSH")
    _round_trip(sshd.spec(current_user()), **options)


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_an_ssh_auth_sock_set_in_the_program_is_the_next_connection_s(sshd, tmp_path, monkeypatch, transport):
    """docs/ssh.md: SSH_AUTH_SOCK is read from the program's os.environ at each start(), as
    REMOTEPROC_SSH is; a relay started before it was set has another environment."""
    _round_trip(sshd.spec(current_user()), **dict(sshd.options(current_user()), transport=transport))  # (a relay)
    sock = str(tmp_path / "agent.sock")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        options = sshd.options(current_user())
        subprocess.run(["ssh-add", options.pop("key_filename")], env=dict(env, SSH_AUTH_SOCK=sock), check=True,
                       timeout=30, capture_output=True, stdin=subprocess.DEVNULL)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        # (options of this test alone, a new connection: the key is only in the agent)
        _round_trip(sshd.spec(current_user()), transport=transport, look_for_keys=False, ssh_config=False,
                    connect_timeout=19, **{k: v for k, v in options.items() if k != "username"})
    finally:
        agent.kill()
        agent.wait(10)


SSH_WORDS = [
    ("Host key verification failed.", HostKeyError, "host_key_policy='accept-new'"),
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", HostKeyError, "ssh-keygen -R"),
    ("alice@node1: Permission denied (publickey).", AuthenticationError, "allow_prompt=True"),
    ("Received disconnect from 10.0.0.1 port 22:2: Too many authentication failures", AuthenticationError,
     "IdentitiesOnly yes"),
    ("ssh: Could not resolve hostname nodex: Name or service not known", ConnectError, "does not resolve"),
    ("ssh: connect to host node1 port 22: Connection refused", ConnectError, "nothing listens"),
    ("ssh: connect to host node1 port 22: Connection timed out", ConnectError, "connect_timeout"),
    ("kex_exchange_identification: read: Connection reset by peer", ConnectError, "raise MaxStartups"),
    ("kex_exchange_identification: read: Connection reset by peer", ConnectError, "ssh -v"),
]


def _target(spec="alice@node1", **options):
    """What resolve() gives, without asking ssh -G."""
    from remoteproc.ssh.spec import parse_spec
    from remoteproc.ssh.target import Target

    user, host, port = parse_spec(spec)
    jumps = options.get("proxy_jump")
    return Target(spec=spec, hostname=host, port=port or 22, username=user or "", original_host=host,
                  proxy_jump=jumps.split(",") if jumps else [], options=options, transport="openssh")


def test_what_ssh_says_when_turned_away_and_when_the_jump_cannot_forward():
    """openssh's words: a drop (directly, or the bastion's during ``ssh -W``) is retried; a jump host
    that refused to forward ends with the same ``kex_exchange_identification`` line, but is not."""
    jumped, direct = _target(proxy_jump="bob@bast", ssh_config=False), _target(ssh_config=False)
    dropped_at_bastion = ("kex_exchange_identification: read: Connection reset by peer\r\n"
                          "Connection reset by 10.0.0.1 port 22\r\n"
                          "kex_exchange_identification: Connection closed by remote host\r\n"
                          "Connection closed by UNKNOWN port 65535")
    refused_forward = ("channel 0: open failed: administratively prohibited: open failed\r\n"
                       "stdio forwarding failed\r\n"
                       "kex_exchange_identification: Connection closed by remote host\r\n"
                       "Connection closed by UNKNOWN port 65535")
    dropped_behind_bastion = "kex_exchange_identification: Connection closed by remote host\r\n" \
                             "Connection closed by UNKNOWN port 65535"
    error = openssh.failure(jumped, 255, dropped_at_bastion)
    assert "at the jump host (bob@bast): the server closed the connection before its SSH banner" in str(error)
    error = openssh.failure(jumped, 255, dropped_behind_bastion)
    assert "at the jump host" not in str(error) and "the server closed the connection before" in str(error), str(error)
    assert "`ssh -v -F none -J bob@bast alice@node1` shows more" in str(error), str(error)
    for target, said, turned_away in ((jumped, dropped_at_bastion, True), (jumped, refused_forward, False),
                                      (jumped, dropped_behind_bastion, True),
                                      (direct, "kex_exchange_identification: Connection closed by remote host", True),
                                      (direct, "ssh_exchange_identification: read: Connection reset by peer", True)):
        error = openssh.failure(target, 255, said)
        assert isinstance(error, ConnectError) and error.turned_away is turned_away, (said, str(error))
        assert ("MaxStartups" in str(error)) is turned_away, str(error)


def test_a_jump_host_that_cannot_reach_the_target_is_named_with_the_targets_address():
    """``channel 0: open failed: connect failed: Connection refused`` is the jump host's answer for
    the target's port: it once read ``at the jump host (bob@bast): nothing listens on that port``,
    which sends the user to check the jump host's own sshd."""
    said = ("channel 0: open failed: connect failed: Connection refused\r\n"
            "stdio forwarding failed\r\n"
            "kex_exchange_identification: Connection closed by remote host\r\n"
            "Connection closed by UNKNOWN port 65535")
    error = str(openssh.failure(_target(proxy_jump="bob@bast", ssh_config=False), 255, said))
    assert "the jump host (bob@bast) could not connect to node1:22: connect failed: Connection refused" in error, error
    assert "nothing listens" not in error
    error = str(openssh.failure(_target(proxy_jump="bob@bast,gw", ssh_config=False), 255, said))
    assert "(one of bob@bast,gw) could not connect to the next hop on the way to node1:22" in error, error


def test_a_jump_host_behind_its_own_jump_host_is_not_named_as_the_only_hop():
    """Found by an ssh-setups audit: ``ProxyJump j2`` where j2's own config says ``ProxyJump j1``,
    and j1 cannot reach j2: the error named j2 as the jump host that could not reach the target's
    address (j2 was never reached, and the target is up). The route is j1, then j2."""
    said = ("channel 0: open failed: connect failed: Connection refused\r\n"
            "stdio forwarding failed\r\n"
            "kex_exchange_identification: Connection closed by remote host\r\n"
            "Connection closed by UNKNOWN port 65535")
    target = _target(proxy_jump="j2", ssh_config=False)
    target.jump = _target("j2", proxy_jump="j1", ssh_config=False)
    target.jump.jump = _target("j1", ssh_config=False)
    assert openssh.route(target) == ["j1", "j2"]
    error = str(openssh.failure(target, 255, said))
    assert "(one of j1,j2) could not connect to the next hop on the way to node1:22" in error, error
    assert "the jump host (j2) could not connect" not in error


@pytest.mark.parametrize("its_words", ["/bin/bash: line 1: exec: no-such-nc: not found",
                                       "ssh: connect to host 127.0.0.1 port 1: Connection refused"])
def test_a_proxy_command_that_ended_saying_why_is_named_not_taken_for_a_busy_server(its_words):
    """Found by an audit: a ProxyCommand that could not run read as sshd's MaxStartups (tried again
    for 8 s), and one whose own ssh found its jump host's port closed as the target's port."""
    target = _target(ssh_config=False)
    target.proxy_command = "ssh -W %h:%p jdead"
    error = openssh.failure(target, 255, its_words + "\r\n" + JUMP_ENDED)
    assert type(error) is ConnectError and not error.turned_away, str(error)
    assert "the ProxyCommand ended before the server's SSH banner came through it. Fix: run it by hand " \
           "(ssh -W node1:22 jdead): it must connect to node1:22" in str(error)
    assert its_words in str(error) and "MaxStartups" not in str(error) and "nothing listens" not in str(error)
    error = openssh.failure(target, 255, JUMP_ENDED)       # (said nothing: a server that hung up, as ever)
    assert error.turned_away, str(error)


@pytest.mark.parametrize("said, kind, advice", SSH_WORDS)
def test_ssh_failures_become_typed_errors(said, kind, advice):
    exc = openssh.failure(_target(), 255, said)
    assert type(exc) is kind
    assert "alice@node1" in str(exc) and advice in str(exc) and said.strip("@ ") in str(exc)
    assert "ssh HOST" not in str(exc) and "ssh alice@node1" in str(exc) or kind is ConnectError


def test_a_name_that_does_not_resolve_sends_the_user_to_the_config_ssh_read(tmp_path):
    """-F/ssh_config= was the file ssh read, not ~/.ssh/config (the fix named the wrong file)."""
    said = "ssh: Could not resolve hostname nodex: Name or service not known"
    assert "its HostName in ~/.ssh/config:" in str(openssh.failure(_target(), 255, said))
    config = str(tmp_path / "lab_config")
    text = str(openssh.failure(_target(ssh_config=config), 255, said))
    assert "Fix: check the name, or its HostName in %s:" % config in text and "~/.ssh" not in text


def test_a_failure_s_fix_is_the_ssh_command_that_does_what_we_asked(tmp_path):
    config = tmp_path / "my config"
    target = _target("alice@node1:2222", ssh_config=str(config), key_filename="~/k", known_hosts="/kh")
    exc = openssh.failure(target, 255, "Host key verification failed.")
    expected = "ssh -F '%s' -i %s -o UserKnownHostsFile=/kh -p 2222 alice@node1" % (
        config, os.path.expanduser("~/k"))
    assert "connect once with `%s`" % expected in str(exc)
    exc = openssh.failure(_target(ssh_config=False), 255, "alice@node1: Permission denied (publickey).")
    assert "check that `ssh -F none alice@node1` logs in" in str(exc)
    exc = openssh.failure(_target(ssh_config="~/cfg"), 255, "Host key verification failed.")
    assert "`ssh -F %s alice@node1`" % os.path.expanduser("~/cfg") in str(exc)     # (~ in quotes stays ~)


JUMP_ENDED = "kex_exchange_identification: Connection closed by remote host\nConnection closed by UNKNOWN port 65535"


@pytest.mark.parametrize("said, kind", [
    ("Host key verification failed.", HostKeyError),
    ("bob@gw: Permission denied (publickey).", AuthenticationError),
    ("ssh: Could not resolve hostname gw: Name or service not known", ConnectError),
])
def test_a_failure_at_a_jump_host_says_so_and_names_it(said, kind):
    target = _target(proxy_jump="bob@gw,bob@[gw2]:2200")
    exc = openssh.failure(target, 255, said + "\n" + JUMP_ENDED)
    assert type(exc) is kind
    assert str(exc).startswith("alice@node1 via bob@gw,bob@[gw2]:2200 (transport='openssh'): "
                               "at the jump host (bob@gw,bob@[gw2]:2200)")
    if kind is not ConnectError:
        assert "`ssh bob@gw`, then `ssh -J bob@gw -p 2200 bob@gw2`" in str(exc)
    # the same words without the jump's end are the target's own
    exc = openssh.failure(target, 255, said)
    assert type(exc) is kind and "jump host" not in str(exc)


def test_a_key_beside_the_targets_known_hosts_is_no_fix_for_a_jump_host_s_unknown_key(tmp_path):
    """Found by an audit (G4): the jump host's key was unknown, and the note offered a key of the target's
    (from a file beside its known_hosts) to append to the target's file, which cannot mend the jump."""
    known, stray = tmp_path / "known_hosts", tmp_path / "old_keys"
    known.write_text("")
    stray.write_text("node1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    target = _target(proxy_jump="bob@gw", known_hosts=str(known))
    target.known_hosts = [str(known)]       # (what resolve() takes from ssh -G)
    jumped = openssh.failure(target, 255, "Host key verification failed.\n" + JUMP_ENDED)
    assert "at the jump host" in str(jumped) and "a key for this host" not in str(jumped), str(jumped)
    direct = openssh.failure(target, 255, "Host key verification failed.")
    assert "a key for this host is in %s (not compared with the key the host offers" % stray in str(direct), \
        str(direct)


def test_a_home_that_is_not_the_account_s_is_pointed_out(tmp_path, monkeypatch):
    """ssh ignores $HOME: an alias in $HOME/.ssh/config does not resolve, and the error says why."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host myalias\n  HostName 127.0.0.1\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    said = "ssh: Could not resolve hostname myalias: Name or service not known"
    exc = openssh.failure(_target("myalias"), 255, said)
    assert "not $HOME=%s: " % tmp_path in str(exc) and "pass ssh_config='%s/.ssh/config')" % tmp_path in str(exc)
    assert "$HOME" not in str(openssh.failure(_target("myalias", ssh_config=False), 255, said))
    monkeypatch.setenv("HOME", os.path.expanduser("~" + current_user()))
    assert "$HOME" not in str(openssh.failure(_target("myalias"), 255, said))


def test_a_remote_command_failure_is_not_ssh_s():
    assert openssh.failure(_target(), 127, "python3: not found") is None


def test_accept_new_makes_the_known_hosts_directory_ssh_would_not(tmp_path):
    """ssh only warns when it cannot write the file (and the key is then never pinned)."""
    known = tmp_path / "new" / "dir" / "known_hosts"
    openssh._make_known_hosts_dir("alice@node1", [str(known)])
    assert known.parent.is_dir() and (known.parent.stat().st_mode & 0o777) == 0o700
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create .* known_hosts="):
        openssh._make_known_hosts_dir("alice@node1", [str(tmp_path / "file" / "sub" / "known_hosts")])


# -- against real servers -----------------------------------------------------------------------

def _loopback_options(server):
    return {**server.options(current_user()), "transport": "openssh"}


def test_unknown_host_key_is_refused_then_accepted_new(sshd, tmp_path, caplog):
    """accept-new records the key, in a directory that does not exist yet too, and what ssh
    says about it reaches the program's log."""
    known = tmp_path / "not" / "yet" / "known_hosts"
    options = {**_loopback_options(sshd), "known_hosts": str(known)}
    with pytest.raises(HostKeyError, match="accept-new") as info:
        _round_trip(sshd.spec(), **options)
    assert sshd.spec().split("@")[1].split(":")[0] in str(info.value)
    with caplog.at_level(logging.WARNING, logger="remoteproc"):
        _round_trip(sshd.spec(), **options, host_key_policy="accept-new")
    assert "ssh-ed25519" in known.read_text()
    assert any("Permanently added" in r.getMessage() for r in caplog.records), caplog.text


def test_refused_login_is_an_authentication_error(sshd, tmp_path):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    options = {**_loopback_options(sshd), "key_filename": str(key), "allow_agent": False, "look_for_keys": False}
    with pytest.raises(AuthenticationError, match="Permission denied"):
        _round_trip(sshd.spec(), **options)


PROXY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proxy_command.py")   # (a ProxyCommand)


def test_the_proxy_command_option_reaches_the_host_through_the_command(sshd, tmp_path):
    """proxy_command= with transport='openssh' is ssh's ProxyCommand (%h and %p expanded)."""
    script, said = PROXY, tmp_path / "proxy-args"
    host, port = sshd.spec().split("@")[1].rsplit(":", 1)
    _pid, ssh_connection = _round_trip(sshd.spec(), **_loopback_options(sshd),
                                       proxy_command="%s %s %s %%h %%p" % (sys.executable, script, said))
    assert said.read_text() == "%s %s" % (host, port)
    assert ssh_connection.split()[2:] == ["127.0.0.1", port]


def test_a_config_ssh_refuses_is_a_config_error_naming_the_host_and_ssh_s_words(tmp_path):
    config = tmp_path / "config"
    config.write_text("Host *\n    NoSuchKeyword yes\n")
    p = RemoteProcess("alice@node1", target=print, transport="openssh", ssh_config=str(config))
    with pytest.raises(ConfigError) as info:
        p.start()
    said = str(info.value)
    assert said.startswith("alice@node1: ssh refuses this host or its configuration: ") and info.value.host == \
        "alice@node1"
    assert "bad configuration option: nosuchkeyword" in said.lower() and str(config) in said, said


def test_closed_port_is_a_connect_error(sshd):
    options = {**_loopback_options(sshd), "port": free_port()}
    with pytest.raises(ConnectError, match="nothing listens"):
        _round_trip(sshd.spec().rsplit(":", 1)[0], **options)


@pytest.fixture(scope="module")
def cert_server():
    """An sshd with a host certificate and user-certificate logins; known_hosts trusts the CA only."""
    if find_sshd() is None:
        pytest.fail("no sshd") if os.environ.get("CI") else pytest.skip("no sshd")
    server = LoopbackSSHServer(users=[current_user()], certificates=True)
    server.start()
    yield server
    server.stop()


def test_host_and_user_certificates_work_through_ssh(cert_server):
    with open(cert_server.known_hosts) as f:
        assert f.read().startswith("@cert-authority ")
    with open(os.path.join(cert_server.workdir, "authorized_keys", current_user())) as f:
        assert f.read().strip() == ""        # the login works by the user certificate alone
    pid, connection = _round_trip(cert_server.spec(), **_loopback_options(cert_server))
    assert pid > 0 and connection.split()[2] == "127.0.0.1"


def test_paramiko_names_the_openssh_transport_for_a_cert_authority_host(cert_server):
    with pytest.raises(HostKeyError, match="transport='openssh'") as info:
        _round_trip(cert_server.spec(), **cert_server.options(current_user()))
    assert "@cert-authority" in str(info.value)


def _accepted_logins(server):
    with open(server.log_file, encoding="utf-8", errors="replace") as f:
        return f.read().count("Accepted publickey")


def _control_master(sshd, sock: str) -> subprocess.Popen:
    """A master connection of the user's own, at ``sock``: the test ends it."""
    user, _rest = sshd.spec().split("@")
    master = subprocess.Popen(
        ["ssh", "-M", "-S", sock, "-N", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=" + sshd.known_hosts,
         "-i", sshd.client_key, "-p", str(sshd.port), "-l", user, "127.0.0.1"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock) and time.monotonic() < deadline and master.poll() is None:
        time.sleep(0.05)
    if not os.path.exists(sock):
        master.kill()
        master.wait(10)
        pytest.fail(master.stderr.read().decode() if master.returncode is not None else "no socket")
    return master


def test_an_existing_control_master_is_reused(sshd, tmp_path):
    sock = str(tmp_path / "cm.sock")
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n    ControlMaster auto\n    ControlPath %s\n" % sock)
    master = _control_master(sshd, sock)
    try:
        before = _accepted_logins(sshd)
        options = {**_loopback_options(sshd), "ssh_config": str(config), "idle_timeout": 1}
        _round_trip(sshd.spec(), **options)
        assert _accepted_logins(sshd) == before      # no new authentication: the master carried it
        assert master.poll() is None
    finally:
        master.terminate()
        master.wait(10)


@pytest.mark.loopback_only
def test_a_killed_control_master_is_named_not_blamed_on_the_host(sshd, tmp_path):
    """Found by an audit: the user's own master connection, killed while a process ran over it,
    was reported as the remote agent's channel closing (ssh, its client, exits 255 without a
    word): the message sent the user to the host.  It names the master now."""
    sock = str(tmp_path / "cm.sock")
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n    ControlMaster auto\n    ControlPath %s\n" % sock)
    master = _control_master(sshd, sock)
    parent, child = Pipe()
    p = RemoteProcess(sshd.spec(), target=sleeper, args=(child,),
                      **{**_loopback_options(sshd), "ssh_config": str(config), "keepalive_interval": 60})
    try:
        p.start()
        child.close()
        assert wait([parent], 60)
        remote_pid = parent.recv()
        master.kill()
        master.wait(10)
        p.join(30)
        assert p.exitcode == remoteproc.CONNECTION_LOST
        message = str(p.connection_error)
        assert "master connection" in message and sock in message, message
        assert gone(remote_pid, 30), "the remote child outlived its connection"
    finally:
        if p.is_alive():
            p.kill()
        if master.poll() is None:
            master.kill()
            master.wait(10)
        parent.close()


def _ssh_processes_of_relay():
    relay = relay_client.current()
    assert relay is not None
    return [pid for pid in children_of(relay.proc.pid)
            if os.path.basename(os.readlink("/proc/%d/exe" % pid)) == "ssh"]


@pytest.mark.loopback_only
def test_a_killed_ssh_is_a_lost_connection_with_nothing_left(sshd):
    options = {**_loopback_options(sshd), "keepalive_interval": 60}
    parent, child = Pipe()
    p = RemoteProcess(sshd.spec(), target=sleeper, args=(child,), **options)
    p.start()
    child.close()
    assert wait([parent], 60)
    remote_pid = parent.recv()
    ssh_pids = _ssh_processes_of_relay()
    assert ssh_pids, "the relay runs no ssh process"
    for pid in ssh_pids:
        os.kill(pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    assert isinstance(p.connection_error, remoteproc.ConnectionLostError)
    message = str(p.connection_error)
    assert "the ssh process" in message and "killed by signal 9" in message, message
    assert "the next start() runs a new ssh" in message, message     # (the fix, not only what happened)
    with pytest.raises(EOFError):
        parent.recv()
    assert gone(remote_pid, 30), "the remote child outlived its ssh connection"


# -- ssh -G: what ssh will do, read back ---------------------------------------------------------

def test_connect_timeout_from_option_config_or_default(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host slow\n    ConnectTimeout 7\n")
    by_config = openssh.resolve("slow", {"ssh_config": str(config), "transport": "openssh"})
    assert by_config.connect_timeout == 7 and not [a for a in by_config.ssh_args if "ConnectTimeout" in a]
    by_option = openssh.resolve("slow", {"ssh_config": str(config), "connect_timeout": 5, "transport": "openssh"})
    assert by_option.connect_timeout == 5 and "ConnectTimeout=5" in by_option.ssh_args
    # neither: paramiko's default bound, not the kernel's minutes
    unbounded = openssh.resolve("fast", {"ssh_config": str(config), "transport": "openssh"})
    assert unbounded.connect_timeout == 30 and "ConnectTimeout=30" in unbounded.ssh_args


def _first(args, keyword):
    """The value ssh takes for ``keyword``: the first ``-o KEYWORD=...`` on its command line."""
    return next((a.split("=", 1)[1] for a in args if a.startswith(keyword + "=")), None)


def test_ssh_s_own_keepalive_is_a_backstop_wider_than_the_relays(tmp_path):
    """The relay decides when a link is lost (it hears the agent's alive frames while a big message
    goes out); ssh's own check, whose requests queue behind that message, gets a wider count, from
    the options or the config alike (with the same count, a slow upload under a 1 s x 2 keepalive
    was taken for lost now and then: ssh's 'Timeout, server not responding')."""
    config = tmp_path / "ssh_config"
    config.write_text("Host alive\n    ServerAliveInterval 1\n    ServerAliveCountMax 2\n")
    by_config = openssh.resolve("alive", {"ssh_config": str(config), "transport": "openssh"})
    assert (by_config.keepalive_interval, by_config.keepalive_count) == (1, 2)
    assert _first(by_config.ssh_args, "ServerAliveInterval") == "1"
    assert _first(by_config.ssh_args, "ServerAliveCountMax") == "6"
    by_option = openssh.resolve("alive", {"ssh_config": str(config), "transport": "openssh",
                                          "keepalive_interval": 2, "keepalive_count": 3})
    assert (by_option.keepalive_interval, by_option.keepalive_count) == (2, 3)
    assert _first(by_option.ssh_args, "ServerAliveInterval") == "2"
    assert _first(by_option.ssh_args, "ServerAliveCountMax") == "8"
    default = openssh.resolve("other", {"ssh_config": str(config), "transport": "openssh"})
    assert _first(default.ssh_args, "ServerAliveInterval") == "%d" % default.keepalive_interval
    assert _first(default.ssh_args, "ServerAliveCountMax") == "%d" % (2 * default.keepalive_count + 2)


def test_ipv6_spec_and_no_config():
    target = openssh.resolve("alice@[::1]:2200", {"ssh_config": "none", "transport": "openssh"})
    assert (target.hostname, target.port, target.username) == ("::1", 2200, "alice")
    assert target.display == "alice@[::1]:2200"
    assert target.ssh_args[-2:] == ("--", "::1") and _value(list(target.ssh_args), "-F") == ["none"]


def test_jump_hosts_are_named_as_written_and_as_paramiko_names_them():
    """``ssh -G`` brackets every jump host given with a port; messages name it as the user wrote it
    (paramiko's way), keeping the brackets only where an IPv6 address needs them."""
    for jumps in ("bob@10.1.2.3:2200", "bob@10.1.2.3:2200,gw,[fe80::1]:2201", "[fe80::1]:2201"):
        options = {"ssh_config": "none", "transport": "openssh", "proxy_jump": jumps}
        target = openssh.resolve("alice@node1", options)     # (ssh -G brackets a single hop with a port)
        assert target.proxy_jump == jumps.split(",")
        assert target.display == "alice@node1 via " + jumps
        assert ssh.resolve("alice@node1", dict(options, transport="paramiko")).display == target.display


def test_jump_hosts_get_our_options_through_a_config_file_of_ours(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host target\n    ProxyJump jumphost\n")
    options = {"ssh_config": str(config), "key_filename": "/k1", "known_hosts": "/kh", "allow_agent": False,
               "host_key_policy": "accept-new", "transport": "openssh"}
    target = openssh.resolve("bob@target", options)
    assert target.proxy_jump == ["jumphost"]
    args = list(target.ssh_args)
    (path,) = _value(args, "-F")
    with open(path) as f:
        text = f.read().splitlines()
    assert sorted(text[1:-3]) == ["BatchMode yes", "IdentityAgent none",
                                  'IdentityFile "/k1"', "StrictHostKeyChecking accept-new",
                                  "UserKnownHostsFile /kh"]
    # our default timeout comes after the user's config: it holds only where that config is silent
    assert text[-3:] == ['Include "%s"' % config, "Host *", "ConnectTimeout 30"]
    assert "-i" not in args and _value(args, "-l") == ["bob"]
    assert openssh.resolve("bob@target", options).ssh_args == target.ssh_args, "equal options, one connection"
    plain = openssh.resolve("bob@other", options)
    assert _value(list(plain.ssh_args), "-F") == [str(config)], "no jump, no file of ours"


@pytest.mark.parametrize("text,chain", [
    ("Host target\n    ProxyJump a\nHost a\n    ProxyJump b\nHost b\n    ProxyJump a\n", "a -> b -> a"),
    ("Host target\n    ProxyJump a,c\nHost a\n    ProxyJump target\n", "target -> a -> target"),
    ("Host target\n    ProxyJump h1\n" + "".join("Host h%d\n    ProxyJump h%d\n" % (i, i + 1) for i in range(1, 12)),
     "more than 8 hosts"),
], ids=["hops-loop", "back-to-target", "too-long"])
def test_a_proxy_jump_loop_is_refused_before_any_ssh_runs(tmp_path, text, chain):
    """ssh follows a first hop's own ProxyJump without a loop check, one process per step, until the
    machine has no processes left. (Only resolution runs here: ``ssh -G``, which connects nowhere.)"""
    config = tmp_path / "ssh_config"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        openssh.resolve("target", {"ssh_config": str(config), "transport": "openssh"})
    assert chain in str(err.value) and str(err.value).startswith("target: ProxyJump")
    # (found by an audit, G6: the user's file and the way out, not a config file of ours, gone at exit)
    assert str(config) in str(err.value) and "`ProxyJump none` in its own block" in str(err.value)
    assert "remoteproc-ssh-" not in str(err.value)
    config.write_text("Host target\n    ProxyJump a,b\nHost a\n    ProxyJump c\nHost b\n    ProxyJump target\n")
    assert openssh.resolve("target", {"ssh_config": str(config), "transport": "openssh"}).proxy_jump == ["a", "b"], \
        "b's own ProxyJump does not count (-J on its command line)"


def test_a_host_star_proxy_jump_that_holds_for_the_jump_host_too_is_named_as_the_targets(tmp_path):
    """The commonest loop (audit G6): ``Host *`` / ``ProxyJump bastion`` also holds for bastion, which
    ssh itself refuses ("jumphost loop via"); the message named the jump host first, and a config file
    of ours to check it with."""
    config = tmp_path / "ssh_config"
    config.write_text("Host node1\n    HostName 127.0.0.1\nHost *\n    ProxyJump root@127.0.0.1:2201\n")
    with pytest.raises(ConfigError) as err:
        openssh.resolve("node1", {"ssh_config": str(config), "transport": "openssh"})
    said = str(err.value)
    assert said.startswith("node1: at the jump host (root@127.0.0.1:2201): ssh refuses"), said
    assert "`ProxyJump none` in its own block" in said and "-F %s" % config in said, said
    assert "remoteproc-ssh-" not in said, said


def test_a_match_exec_that_hangs_names_the_users_file(tmp_path, monkeypatch):
    """Found by an audit (G7): the message blamed ~/.ssh/config where ssh_config= named another file."""
    monkeypatch.setattr(openssh, "G_TIMEOUT", 0.5)
    config = tmp_path / "ssh_config"
    config.write_text('Match exec "sleep 2"\n    Port 2222\n')
    with pytest.raises(ConfigError) as err:
        openssh.resolve("node1", {"ssh_config": str(config), "transport": "openssh"})
    said = str(err.value)
    assert "did not answer within 0.5s: a Match exec line in %s waits. Fix:" % config in said, said
    assert "-G -F %s node1`" % config in said, said


def test_a_jump_host_keeps_its_own_connect_timeout_from_the_users_config(tmp_path):
    """Our 30 s default bounds the target and any hop the config leaves unbounded; a jump host's
    own ConnectTimeout stays its own (as ssh -G reads the file the jump's ssh gets)."""
    config = tmp_path / "ssh_config"
    config.write_text("Host target\n    ProxyJump jumphost,slowjump\nHost jumphost\n    ConnectTimeout 5\n")
    target = openssh.resolve("bob@target", {"ssh_config": str(config), "transport": "openssh"})
    assert target.connect_timeout == 30
    (path,) = _value(list(target.ssh_args), "-F")

    def timeout_of(host):
        view = openssh.ssh_config_view(host, ["-F", path])
        return view["connecttimeout"]

    assert (timeout_of("jumphost"), timeout_of("slowjump"), timeout_of("target")) == (["5"], ["30"], ["30"])
    given = openssh.resolve("bob@target", {"ssh_config": str(config), "transport": "openssh", "connect_timeout": 7})
    (path,) = _value(list(given.ssh_args), "-F")
    assert (timeout_of("jumphost"), timeout_of("target")) == (["7"], ["7"]), "an option beats every config"


def test_a_killed_relay_s_config_files_are_swept_by_the_next(tmp_path, monkeypatch):
    """SIGKILL runs no atexit: the next process that writes a jump config removes our directories
    whose process is gone, and leaves alone the live ones, those of another pid namespace (a
    container sharing /tmp) and anything not named after a pid."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(openssh, "_configs_dir", None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    ns = openssh._pid_namespace()
    assert ns, "/proc/self/ns/pid"
    stale = tmp_path / ("%s%d-%s-abc" % (openssh.CONFIGS_PREFIX, dead.pid, ns))
    stale.mkdir()
    (stale / "0123.conf").write_text("Host *\n")
    live = tmp_path / ("%s%d-%s-def" % (openssh.CONFIGS_PREFIX, os.getppid(), ns))
    live.mkdir()
    elsewhere = tmp_path / ("%s%d-1-ghi" % (openssh.CONFIGS_PREFIX, dead.pid))     # another pid namespace
    elsewhere.mkdir()
    other = tmp_path / (openssh.CONFIGS_PREFIX + "notapid")
    other.mkdir()
    config = tmp_path / "ssh_config"
    config.write_text("Host target\n    ProxyJump jumphost\n")
    try:
        target = openssh.resolve("bob@target", {"ssh_config": str(config), "transport": "openssh"})
        (path,) = _value(list(target.ssh_args), "-F")
        assert os.path.basename(os.path.dirname(path)).startswith("%s%d-%s-" % (openssh.CONFIGS_PREFIX,
                                                                                 os.getpid(), ns))
        assert not stale.exists() and live.exists() and other.exists() and elsewhere.exists()
    finally:
        openssh.remove_configs()
    assert not os.path.exists(path)


@pytest.mark.parametrize("transport", ["openssh", "paramiko"])
def test_a_live_connection_s_resolution_is_reused(sshd, tmp_path, transport):
    """The config is read once per connection: a second process with equal options on a live
    connection is a fork, not another 'ssh -G' (a process), nor another run of the config's
    ``Match exec`` commands, which count the config's passes here (with paramiko every start ran
    them: a Pool's starts waited for a slow one one after another)."""
    counter = tmp_path / "passes"
    config = tmp_path / "ssh_config"
    config.write_text('Match exec "echo pass >> %s"\n' % counter)
    options = {**_loopback_options(sshd), "ssh_config": str(config), "transport": transport}
    parent, child = Pipe()
    first = RemoteProcess(sshd.spec(), target=sleeper, args=(child,), **options)
    first.start()
    child.close()
    try:
        assert wait([parent], 60)
        passes = len(counter.read_text().splitlines())
        assert passes >= (2 if transport == "openssh" else 1), "ssh -G and ssh itself each read the config"
        _round_trip(sshd.spec(), **options)
        assert len(counter.read_text().splitlines()) == passes, "the second start ran ssh again"
        other = dict(options, keepalive_interval=9)        # other options: resolved anew
        _round_trip(sshd.spec(), **other)
        assert len(counter.read_text().splitlines()) > passes
    finally:
        first.terminate()
        first.join(30)


def test_a_control_master_made_by_another_ssh_at_the_same_moment_is_no_warning(caplog):
    """Seen with a Pool over 8 hosts behind a bastion with ``ControlMaster auto`` and
    ``ControlPersist`` in the user's config: hosts' ``ssh -W`` start at once, and those that find the
    master's socket being made say ``ControlSocket ... already exists, disabling multiplexing`` and
    go on with a connection of their own, which the user saw as a warning of the relay."""
    from remoteproc import bootstrap

    said = b"ControlSocket /home/u/.ssh/cm-03476e4b713e already exists, disabling multiplexing\r\nother words\n"
    with caplog.at_level(logging.INFO, logger="remoteproc"):
        left = bootstrap._quiet(said, "node5 (u@10.0.0.5 via bastion)")
    assert left == b"other words\n"
    assert any(r.levelno == logging.INFO and "ControlMaster" in r.getMessage() for r in caplog.records)


def test_a_closed_channel_s_stderr_reader_never_reads_a_file_that_took_its_number():
    """Found by an audit: close() closed ssh's stderr while its reader thread was between two reads;
    the relay's next pipe (another channel's, or a start's fds) took the number, and the old reader
    took that file's bytes."""
    from types import SimpleNamespace

    from remoteproc.relay import openssh_channel

    class HeldAfterItsFirstRead:        # the reader takes this lock after each read: hold it there once
        def __init__(self):
            self.lock, self.first = threading.Lock(), True

        def __enter__(self):
            if self.first and threading.current_thread().name == "remoteproc-ssh-stderr":
                self.first = False
                time.sleep(0.5)
            self.lock.acquire()

        def __exit__(self, *exc):
            self.lock.release()

    proc = subprocess.Popen(["sh", "-c", "cat >/dev/null; echo 'ssh: last words' >&2"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    chan = openssh_channel.OpenSSHChannel(proc, SimpleNamespace(display="h", says_login=""), 0.0)
    chan._err_lock = HeldAfterItsFirstRead()
    err_fd = proc.stderr.fileno()
    chan.close()
    fds = []
    try:
        for _ in range(20):             # the relay's next pipe, taking the number if it is free
            r, w = os.pipe()
            fds += [r, w]
            if r == err_fd:
                break
        os.write(fds[-1], b"another channel's bytes")
        chan._reader.join(10)
        assert not chan._reader.is_alive()
        os.set_blocking(fds[-2], False)
        assert os.read(fds[-2], 100) == b"another channel's bytes"
        assert chan.said().strip() == "ssh: last words"
    finally:
        for fd in fds:
            os.close(fd)


def test_the_keepalive_is_ours_unless_the_config_sets_server_alive(tmp_path):
    """Found by an audit: Debian's ssh makes ServerAliveInterval 300 its default in batch mode, and ssh -G,
    asked with our BatchMode=yes, showed 300 as if the config had said so: a stalled host went unnoticed
    for 20 minutes instead of 60 s."""
    from remoteproc.ssh.spec import DEFAULT_KEEPALIVE_INTERVAL

    silent = tmp_path / "silent"
    silent.write_text("Host node1\n    User alice\n")
    assert openssh.resolve("node1", {"ssh_config": str(silent)}).keepalive_interval == DEFAULT_KEEPALIVE_INTERVAL
    said = tmp_path / "said"
    said.write_text("Host node1\n    ServerAliveInterval 7\n    BatchMode yes\n")
    assert openssh.resolve("node1", {"ssh_config": str(said)}).keepalive_interval == 7
