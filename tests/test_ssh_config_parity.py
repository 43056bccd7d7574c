"""The paramiko transport's reading of an ssh config, against what ``ssh`` itself does with it.

Each case is a config file, a host and our options, with what OpenSSH 9.2 (Debian 12's ssh)
settles for the host: the resolver must give that, and, where this machine's ``ssh`` is 9.2,
``ssh -G -F FILE`` is asked too, so the expectation is ssh's, not ours.  The cases are the
differences found by such a comparison (ProxyJump/ProxyCommand precedence, the second pass,
time values, quoting and comments, HostKeyAlias case, GlobalKnownHostsFile, addresses).
Those that show only on a connection run against an sshd of their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from own_sshd import USER, own_sshd

from remoteproc import ssh
from remoteproc.errors import ConfigError
from remoteproc.ssh import openssh
from remoteproc.ssh.connect import connect
from remoteproc.testing.net import HOST

pytestmark = pytest.mark.timeout(60)

SSH = shutil.which("ssh")


def _ssh_version() -> str:
    if SSH is None:
        return ""
    done = subprocess.run([SSH, "-V"], capture_output=True, timeout=30, check=False)
    return done.stderr.decode("utf-8", "replace").strip()


#: the expectations below are OpenSSH 9.2's; another ssh is not asked (it may differ in these corners)
ASK_SSH = _ssh_version().startswith("OpenSSH_9.2")


@pytest.fixture
def home(monkeypatch):
    """HOME as ssh has it (the password database's): ``~`` is the same for ssh and for us.
    Nothing is written there."""
    monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)
    return os.environ["HOME"]


def _ssh_settles(config: str, spec: str, options: dict) -> dict[str, str] | None:
    """``ssh -G`` for ``spec`` with ``config`` as ``-F`` and our options as the openssh transport
    passes them; None when ssh refuses the config."""
    assert SSH is not None
    args = openssh._login_args(spec, dict(options, ssh_config=config)) + openssh._route_args(options)
    _, host, _ = ssh.parse_spec(spec)
    done = subprocess.run([SSH, "-G", *args, "--", host], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=30, check=False)
    if done.returncode != 0:
        return None
    view: dict[str, str] = {}
    for line in done.stdout.decode().splitlines():
        key, _, value = line.partition(" ")
        view.setdefault(key, value)
    # what ssh -G leaves for later: tokens in ProxyCommand, ~ in IdentityFile
    tokens = {"%": "%", "h": view["hostname"], "p": view["port"], "r": view["user"], "n": host}
    for key in ("proxycommand", "identityfile"):
        if key in view:
            view[key] = os.path.expanduser(re.sub(r"%(.)", lambda m: tokens[m.group(1)], view[key]))
    return view


def _we_settle(config: str, spec: str, options: dict) -> dict[str, str]:
    """The same keys as ssh -G prints them, from our resolver."""
    t = ssh.resolve(spec, dict(options, ssh_config=config))
    return {
        "hostname": t.hostname, "user": t.username, "port": str(t.port),
        "proxyjump": ",".join(t.proxy_jump) or None, "proxycommand": t.proxy_command,
        "identityfile": t.key_filenames[0] if t.key_filenames else None,
        "identityfiles": " ".join(t.key_filenames),
        "connecttimeout": str(int(t.connect_timeout)), "serveraliveinterval": str(int(t.keepalive_interval)),
        "hostkeyalias": t.host_key_alias, "globalknownhostsfile": " ".join(t.global_known_hosts),
    }


PY = sys.executable

# (name, config, spec, options, {ssh -G key: what ssh 9.2 settles}); None: ssh prints no such line
CASES = [
    # ssh 9.2: "ProxyJump none" settles ProxyJump only; a ProxyCommand of a later block still applies
    ("proxyjump none, then a ProxyCommand", "Host x\n  ProxyJump none\nHost *\n  ProxyCommand nc %h %p\n",
     "x", {}, {"proxycommand": "nc x 22", "proxyjump": None}),
    ("proxyjump none, a later ProxyJump is ignored, a ProxyCommand is not",
     "Host x\n  ProxyJump none\nHost *\n  ProxyJump j2\n  ProxyCommand nc %h %p\n",
     "x", {}, {"proxycommand": "nc x 22", "proxyjump": None}),
    ("proxy_jump='none' (ssh -J none) leaves the config's ProxyCommand", "Host *\n  ProxyCommand nc %h\n",
     "x", {"proxy_jump": "none"}, {"proxycommand": "nc x", "proxyjump": None}),
    ("ProxyCommand none settles both", "Host x\n  ProxyCommand none\nHost *\n  ProxyJump j1\n",
     "x", {}, {"proxycommand": None, "proxyjump": None}),
    ("a jump host settles ProxyCommand", "Host x\n  ProxyJump j1\nHost *\n  ProxyCommand nc %h %p\n",
     "x", {}, {"proxycommand": None, "proxyjump": "j1"}),
    ("a ProxyCommand settles ProxyJump", "Host x\n  ProxyCommand nc %h %p\nHost *\n  ProxyJump j1\n",
     "x", {}, {"proxycommand": "nc x 22", "proxyjump": None}),
    # the second pass (Match final) matches Host lines against the HostName, not the alias
    ("the final pass matches Host against the HostName",
     "Host alias\n  HostName Real\nMatch final\nHost real\n  User fromreal\n  Port 2000\n",
     "alias", {}, {"hostname": "real", "user": "fromreal", "port": "2000"}),
    ("the final pass, HostName with %h", "Host alias\n  HostName real-%h\nMatch final\nHost real-alias\n  Port 2001\n",
     "alias", {}, {"hostname": "real-alias", "port": "2001"}),
    ("the first pass, Match host with %% in HostName", "Host a\n  HostName x%%y\nMatch host x%y\n  User pct\n",
     "a", {}, {"hostname": "x%y", "user": "pct"}),
    # time values as ssh reads them
    ("ConnectTimeout and ServerAliveInterval take units",
     "Host h\n  ConnectTimeout 1m30s\n  ServerAliveInterval 2m\n", "h", {},
     {"connecttimeout": "90", "serveraliveinterval": "120"}),
    ("ConnectTimeout none is no value", "Host h\n  ConnectTimeout none\n  ServerAliveInterval 1h\n", "h", {},
     {"serveraliveinterval": "3600"}),
    # words as ssh splits them
    ("# inside a word is no comment", "Host h\n  IdentityFile /keys/a#b # a comment\n", "h", {},
     {"identityfile": "/keys/a#b"}),
    ("a backslash escapes only quotes, backslashes and blanks",
     "Host h\n  IdentityFile /keys/a\\b\\ c\\\"d\n", "h", {}, {"identityfile": '/keys/a\\b c"d'}),
    ("quotes of both kinds", "Host h\n  IdentityFile \"/keys/a b\"'c d'e\n", "h", {},
     {"identityfile": "/keys/a bc de"}),
    # names as ssh keeps them
    ("HostKeyAlias is lowercased", "Host h\n  HostKeyAlias Build01.Example\n", "h", {},
     {"hostkeyalias": "build01.example"}),
    ("GlobalKnownHostsFile takes no tokens and no ~", "Host h\n  GlobalKnownHostsFile %d/g ~/g2\n", "h", {},
     {"globalknownhostsfile": "%d/g ~/g2"}),
    ("an address in its numeric form", "", "127.1", {}, {"hostname": "127.0.0.1"}),
]


@pytest.mark.parametrize("name,text,spec,options,settled", CASES, ids=[c[0] for c in CASES])
def test_the_config_is_read_as_ssh_reads_it(home, tmp_path, name, text, spec, options, settled):
    config = tmp_path / "config"
    config.write_text(text)
    ours = _we_settle(str(config), spec, options)
    assert {k: ours[k] for k in settled} == settled
    if ASK_SSH:
        theirs = _ssh_settles(str(config), spec, options)
        assert theirs is not None
        assert {k: theirs.get(k) for k in settled} == settled, "ssh -G says otherwise"


def test_an_identity_file_named_twice_is_tried_once(home, tmp_path):
    config = tmp_path / "config"
    config.write_text("Host *\n  IdentityFile /keys/a\nMatch final\n  IdentityFile /keys/a\n  IdentityFile /keys/b\n")
    assert ssh.resolve("h", {"ssh_config": str(config)}).key_filenames == ["/keys/a", "/keys/b"]


@pytest.mark.parametrize("text,spec,says", [
    ("Match all host x\n  User u\n", "x", "Match all cannot be combined"),
    ("Host h\n  ConnectTimeout 1.5\n", "h", "ConnectTimeout '1.5' is not a time"),
    ("Host h\n  ServerAliveInterval -1\n", "h", "ServerAliveInterval '-1' is not a time"),
    ("", "a,b", "holds ','"),
])
def test_what_ssh_refuses_is_a_config_error(home, tmp_path, text, spec, says):
    config = tmp_path / "config"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        ssh.resolve(spec, {"ssh_config": str(config)})
    assert says.lower() in str(info.value).lower()
    if ASK_SSH:
        done = subprocess.run([SSH, "-G", "-F", str(config), "--", spec], capture_output=True, timeout=30,
                              stdin=subprocess.DEVNULL, check=False)
        assert done.returncode != 0, "ssh takes it"


# -- on a connection ---------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path) -> Iterator:
    with own_sshd(str(tmp_path / "sshd")) as s:
        yield s


PROXY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proxy_command.py")   # (a ProxyCommand)


def test_proxy_jump_none_then_a_proxy_command_of_host_star_goes_through_the_command(server, tmp_path, monkeypatch):
    """The pattern "no jump host for these, a ProxyCommand for all the others" written in the other
    order: ssh 9.2 runs the ProxyCommand for the host (its ProxyJump none settles only ProxyJump);
    the paramiko transport connected directly."""
    monkeypatch.setenv("SHELL", "/bin/sh")
    script, said = PROXY, tmp_path / "proxy-args"
    config = tmp_path / "config"
    config.write_text(textwrap.dedent("""\
        Host target
            HostName %s
            Port %d
            ProxyJump none
        Host *
            ProxyCommand %s %s %s %%h %%p
        """ % (HOST, server.port, PY, script, said)))
    options = dict(ssh_config=str(config), key_filename=server.client_key, known_hosts=server.known_hosts,
                   allow_agent=False, look_for_keys=False, username=USER)
    t = ssh.resolve("target", options)
    assert t.proxy_command == "%s %s %s %s %d" % (PY, script, said, HOST, server.port)
    conn = connect(t)
    try:
        assert conn.transport.is_authenticated() and conn.proc is not None
    finally:
        conn.close()
    assert said.read_text() == "%s %d" % (HOST, server.port)
    if SSH is not None:     # ssh itself goes the same way
        said.unlink()
        done = subprocess.run([SSH, "-F", str(config), "-o", "BatchMode=yes", "-i", server.client_key,
                               "-o", "UserKnownHostsFile=" + server.known_hosts, "-l", USER, "target", "true"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        assert said.read_text() == "%s %d" % (HOST, server.port)


def _hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return "|1|%s|%s" % (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def test_a_host_key_alias_in_capitals_finds_the_hashed_entry_ssh_wrote(server, tmp_path):
    """ssh lowercases HostKeyAlias, and so records and looks up a hashed entry of the lowercased
    name; the paramiko transport hashed the alias as written and called ssh's entry unknown (and
    recorded one that ssh in turn never finds)."""
    known = tmp_path / "known_hosts"
    known.write_text("%s %s\n" % (_hashed("build01.example"), server.host_public))
    config = tmp_path / "config"
    config.write_text("Host target\n  HostName %s\n  Port %d\n  HostKeyAlias Build01.Example\n"
                      "  UserKnownHostsFile %s\n  GlobalKnownHostsFile none\n" % (HOST, server.port, known))
    options = dict(ssh_config=str(config), key_filename=server.client_key, allow_agent=False,
                   look_for_keys=False, username=USER)
    connect(ssh.resolve("target", options)).close()
    # accept-new records the lowercased alias, where ssh finds it
    known.write_text("")
    connect(ssh.resolve("target", dict(options, host_key_policy="accept-new"))).close()
    assert known.read_text().split()[0] == "build01.example"
    if SSH is not None:
        done = subprocess.run([SSH, "-F", str(config), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                               "-i", server.client_key, "-l", USER, "target", "true"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
