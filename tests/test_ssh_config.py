"""ssh_config, known_hosts, key order, the connection pool and the bootstrap checks, without a network.

The expectations are OpenSSH's (ssh_config(5), readconf.c, hostfile.c, sshconnect2.c);
the end-to-end versions against real sshds are in test_ssh_hosts.py.
"""

from __future__ import annotations

import base64
import functools
import getpass
import hashlib
import hmac
import logging
import os
import struct
import subprocess
import sys
import textwrap
import threading

import paramiko
import pytest

from remoteproc import bootstrap, ssh
from remoteproc.errors import BootstrapError, ConfigError, ConnectError, HostKeyError
from remoteproc.relay.channel import AgentChannel, AgentOpener, ChannelLost
from remoteproc.ssh import auth, hostkeys
from remoteproc.ssh import pool as ssh_pool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME of our own: ~/.ssh is tmp_path/home/.ssh (the real one is never read)."""
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return path


def config(text: str) -> ssh.Config:
    return ssh.Config.from_text(textwrap.dedent(text))


def resolve(spec, text="", **options):
    return ssh.resolve(spec, options, config(text))


# -- host specs -------------------------------------------------------------------------

@pytest.mark.parametrize("spec,parts", [
    ("host", (None, "host", None)),
    ("alice@host", ("alice", "host", None)),
    ("alice@host:2222", ("alice", "host", 2222)),
    ("[::1]:2222", (None, "::1", 2222)),
    ("bob@[fe80::1]", ("bob", "fe80::1", None)),
    ("ssh://carol@example.org:2200", ("carol", "example.org", 2200)),
    ("ssh://example.org/", (None, "example.org", None)),
    # a domain account: ssh takes the user up to the last @
    ("alice@corp.example@host:2222", ("alice@corp.example", "host", 2222)),
    ("ssh://alice@corp.example@host", ("alice@corp.example", "host", None)),
])
def test_parse_spec(spec, parts):
    assert ssh.parse_spec(spec) == parts


@pytest.mark.parametrize("spec", ["", "a@", "host:0", "host:70000", "a b", "host/", "[::1"])
def test_bad_specs_are_config_errors(spec):
    with pytest.raises(ConfigError):
        ssh.parse_spec(spec)


def test_options_are_checked_in_the_callers_process():
    with pytest.raises(ConfigError, match="unknown option 'usernme'"):
        ssh.check_options("h", {"usernme": "x"})
    with pytest.raises(ConfigError, match="host_key_policy"):
        ssh.check_options("h", {"host_key_policy": "yes-please"})
    with pytest.raises(ConfigError, match="keepalive_count"):
        ssh.check_options("h", {"keepalive_count": 0})
    assert ssh.check_options("h", {"port": 22, "password": None}) == {"port": 22}



def test_every_option_is_declared_in_spec_and_documented():
    from remoteproc.ssh.spec import OPTIONS

    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "ssh.md"), encoding="utf-8").read()
    section = docs.split("## Options and precedence", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            documented.update(name.strip("` ") for name in row.split("|")[1].split(","))
    assert documented == set(OPTIONS)
    assert ssh.OPTION_TYPES == {name: o.types for name, o in OPTIONS.items()}
    for name, declared in OPTIONS.items():
        if declared.default is not None:     # a declared default passes its own type and check
            assert ssh.check_options("h", {name: declared.default}) == {name: declared.default}


def test_declared_defaults_reach_the_target(home):
    from remoteproc.ssh.spec import OPTIONS

    t = resolve("plain")
    for name in ("connect_timeout", "python", "allow_agent", "look_for_keys", "keepalive_interval",
                 "keepalive_count", "idle_timeout"):
        assert getattr(t, name) == OPTIONS[name].default, name

# -- precedence -------------------------------------------------------------------------

WEB = """\
    Host web
        HostName 192.0.2.5
        User alice
        Port 2200
        ConnectTimeout 7
        ServerAliveInterval 5
        ServerAliveCountMax 4
    Host *
        User bob
        Port 2201
        ConnectTimeout 9
    """


def test_first_value_wins(home):
    t = resolve("web", WEB)
    assert (t.hostname, t.username, t.port) == ("192.0.2.5", "alice", 2200)
    assert (t.connect_timeout, t.keepalive_interval, t.keepalive_count) == (7, 5, 4)
    other = resolve("db", WEB)
    assert (other.hostname, other.username, other.port, other.connect_timeout) == ("db", "bob", 2201, 9)


def test_the_callers_values_beat_the_config(home):
    t = resolve("carol@web:2300", WEB)
    assert (t.username, t.port) == ("carol", 2300)
    t = resolve("carol@web:2300", WEB, username="dave", port=2400, connect_timeout=3, keepalive_interval=1,
                keepalive_count=2)
    assert (t.username, t.port, t.connect_timeout, t.keepalive_interval, t.keepalive_count) == (
        "dave", 2400, 3, 1, 2)


def test_defaults_without_config(home):
    t = resolve("plain")
    assert (t.hostname, t.port, t.username) == ("plain", 22, getpass.getuser())
    assert t.known_hosts == [str(home / ".ssh/known_hosts"), str(home / ".ssh/known_hosts2")]
    assert t.global_known_hosts == list(ssh.SYSTEM_KNOWN_HOSTS)
    assert t.key_filenames == [str(home / ".ssh" / name) for name in ssh.DEFAULT_IDENTITIES]
    assert t.policy == "reject" and t.connect_timeout == ssh.DEFAULT_CONNECT_TIMEOUT
    assert t.display == "%s@plain" % getpass.getuser()


def test_keywords_are_case_insensitive_and_take_equals_and_quotes(home):
    t = resolve("x", 'HOST x\n  hostname=192.0.2.9\n  IdentityFile "/keys/with space"\n  USER = zed # note\n')
    assert (t.hostname, t.username) == ("192.0.2.9", "zed")
    assert t.key_filenames == ["/keys/with space"]


def test_host_patterns_and_negation(home):
    text = """\
        Host *.example.org !secret.example.org
            User pattern
        Host db?
            Port 2222
        """
    assert resolve("www.example.org", text).username == "pattern"
    assert resolve("secret.example.org", text).username != "pattern"
    assert resolve("db1", text).port == 2222 and resolve("db12", text).port == 22


# -- tokens -----------------------------------------------------------------------------

def test_tokens_use_the_final_user_host_and_port(home):
    text = """\
        Host alias
            HostName real.%h.internal
            IdentityFile /keys/%r@%h:%p-%n-%%
            ProxyCommand nc %h %p
        """
    t = resolve("eve@alias:2222", text)
    assert t.hostname == "real.alias.internal"
    assert t.key_filenames == ["/keys/eve@real.alias.internal:2222-alias-%"]
    assert t.proxy_command == "nc real.alias.internal 2222"


def test_the_host_name_is_lowercased_as_ssh_does(home):
    """ssh connects to, looks up in known_hosts (hashed entries too) and expands %h as the lowercased
    name; %n and %k keep the name as given (and Host patterns match it as given, case and all)."""
    t = resolve("BUILD01", "Host BUILD01\n  IdentityFile /keys/%h-%n-%k\n")
    assert t.hostname == "build01" and t.key_filenames == ["/keys/build01-BUILD01-BUILD01"]
    assert t.host_key_name == "build01" and t.display == "%s@build01" % t.username
    t = resolve("box", "Host box\n  HostName BuildServer.Example\n  Port 2222\n")
    assert t.hostname == "buildserver.example" and t.host_key_name == "[buildserver.example]:2222"


def test_tilde_env_and_unknown_tokens(home, monkeypatch):
    monkeypatch.setenv("RP_KEYS", "/keys")
    t = resolve("h", "Host h\n  IdentityFile ${RP_KEYS}/id\n  UserKnownHostsFile ~/kh %d/kh2\n")
    assert t.key_filenames == ["/keys/id"]
    assert t.known_hosts == [str(home / "kh"), str(home / "kh2")]
    with pytest.raises(ConfigError, match="unknown token"):
        resolve("h", "Host h\n  IdentityFile /keys/%Q\n")
    with pytest.raises(ConfigError, match="RP_NOT_SET"):
        resolve("h", "Host h\n  IdentityFile ${RP_NOT_SET}/id\n")


# -- Include ------------------------------------------------------------------------------

def test_include_relative_to_dot_ssh_with_globs_in_order(home):
    dot = home / ".ssh"
    (dot / "conf.d").mkdir()
    (dot / "conf.d" / "20-b.conf").write_text("Host *\n  User second\n  Port 2002\n")
    (dot / "conf.d" / "10-a.conf").write_text("Host *\n  User first\n")
    (dot / "config").write_text("Include conf.d/*.conf missing.conf\n")
    t = ssh.resolve("h", {}, ssh.Config([(str(dot / "config"), "user")]))
    assert (t.username, t.port) == ("first", 2002)


def test_ssh_config_option_is_like_dash_F(home, tmp_path):
    """``ssh -F file``: only that file; relative Includes still resolve under ~/.ssh."""
    (home / ".ssh" / "inc.conf").write_text("User from-dot-ssh\n")
    path = tmp_path / "cfg"
    path.write_text("Include inc.conf\n")
    t = ssh.resolve("h", {"ssh_config": str(path)})
    assert t.username == "from-dot-ssh"
    with pytest.raises(ConfigError, match="does not exist"):
        ssh.resolve("h", {"ssh_config": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="is a directory"):
        ssh.resolve("h", {"ssh_config": str(tmp_path)})
    assert ssh.load_config(False).files == []
    # ssh -F /dev/null: an empty config, as ssh reads it (not "does not exist")
    t = ssh.resolve("carol@h", {"ssh_config": os.devnull})
    assert (t.username, t.hostname, t.port) == ("carol", "h", 22)


def test_include_inside_a_host_block_is_conditional(home):
    (home / ".ssh" / "inc.conf").write_text("User from-inc\nHost b\n  Port 2202\n")
    text = """\
        Host a
            Include inc.conf
            Port 2201
        """
    a = resolve("a", text)
    # the line after the Include still belongs to "Host a" (textual inlining would give it to "Host b")
    assert (a.username, a.port) == ("from-inc", 2201)
    b = resolve("b", text)
    # an Include in a block that does not apply is read with nothing in it matching
    assert (b.username, b.port) == (getpass.getuser(), 22)


def test_include_loop_is_an_error(home):
    (home / ".ssh" / "self.conf").write_text("Include self.conf\n")
    with pytest.raises(ConfigError, match="nested more than"):
        resolve("h", "Include self.conf\n")


# -- Match --------------------------------------------------------------------------------

def test_match_host_uses_hostname_and_originalhost_the_alias(home):
    text = """\
        Host alias
            HostName 10.1.2.3
        Match host 10.1.*
            User by-hostname
        Match originalhost alias
            Port 2223
        Match !host 10.*
            Port 2224
        """
    t = resolve("alias", text)
    assert (t.username, t.port) == ("by-hostname", 2223)
    assert resolve("other", text).port == 2224


def test_match_user_sees_the_specs_user(home):
    text = "Match user deploy\n  Port 2022\nMatch localuser %s\n  ConnectTimeout 4\n" % getpass.getuser()
    assert resolve("deploy@h", text).port == 2022
    assert resolve("other@h", text).port == 22
    assert resolve("h", text).connect_timeout == 4


def test_match_criteria_may_be_written_with_an_equals_sign_as_ssh_takes_them(home):
    text = 'Match host=web,db !user=bob\n  Port 2022\nMatch exec="test %h = db"\n  ConnectTimeout 4\n'
    assert resolve("alice@web", text).port == 2022
    assert resolve("bob@web", text).port == 22 and resolve("alice@other", text).port == 22
    assert resolve("db", text).connect_timeout == 4 and resolve("web", text).connect_timeout == 30


def test_match_exec_with_tokens_and_all_and_final(home):
    text = """\
        Match exec "test %h = h1 && test %p = 2200"
            User exec-matched
        Match final
            IdentityFile /keys/final
        Match canonical all
            ConnectTimeout 5
        Match all
            HostKeyAlias alias-%h
        """
    t = resolve("h1:2200", text)
    assert t.username == "exec-matched"
    assert t.key_filenames == ["/keys/final"]
    assert t.connect_timeout == 5, "'Match final' asks for the final pass, where 'canonical' matches too"
    assert resolve("h2:2200", text).username != "exec-matched"


def test_unsupported_match_criteria_skip_the_block(home, caplog):
    t = resolve("h", "Match localnetwork 10.0.0.0/8\n  User never\n")
    assert t.username != "never"
    for negated in ("Match !localnetwork 10.0.0.0/8", "Match host h !tagged x", "Match !version 9.*"):
        assert resolve("h", negated + "\n  User never\n").username != "never", negated   # (skipped as well)
    assert "not supported" in caplog.text
    with pytest.raises(ConfigError, match="unsupported Match"):
        resolve("h", "Match sometimes\n  User never\n")


# -- CanonicalizeHostname ------------------------------------------------------------------

@pytest.fixture
def dns(monkeypatch):
    """A resolver of our own: name (as ssh asks for it, with the trailing dot) -> canonical name.
    Addresses are still parsed by the real one; other names do not resolve."""
    import socket

    table: dict[str, str] = {}
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if flags & socket.AI_NUMERICHOST:
            return real(host, port, family, type, proto, flags)
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, table[host], ("192.0.2.80", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    table.update({"web.example.com.": "web.example.com", "db.corp.test.": "db.corp.test",
                  "web2.example.com.": "real.example.com", "a.b.example.com.": "a.b.example.com",
                  "bare": "bare.cname.test"})
    return asked


def canon(extra: str = "", mode: str = "yes") -> str:
    """A config that canonicalises into two domains, ``extra`` among its global settings."""
    return ("CanonicalizeHostname %s\nCanonicalDomains example.com corp.test\n%sHost *.example.com\n  User alice\n"
            "  Port 2200\nMatch canonical host db.corp.test\n  User dbadmin\n" % (mode, extra))


CANON = canon()


def test_hostnames_are_canonicalised_and_the_config_read_again_as_ssh_does(home, dns):
    """As ssh 9.2 does with CanonicalizeHostname yes (checked with ssh -G against names in /etc/hosts):
    each CanonicalDomains suffix is tried, the name found is the host name, and the second pass
    matches Host lines and Match canonical against it."""
    t = resolve("web", CANON)
    assert (t.hostname, t.username, t.port, t.original_host) == ("web.example.com", "alice", 2200, "web")
    assert dns == ["web.example.com."]
    assert (resolve("db", CANON).hostname, resolve("db", CANON).username) == ("db.corp.test", "dbadmin")
    assert resolve("WEB", CANON).hostname == "web.example.com", "lowercased first"
    assert resolve("a.b", CANON).hostname == "a.b.example.com", "one dot is CanonicalizeMaxDots' default"
    assert resolve("a.b", canon("CanonicalizeMaxDots 0\n")).hostname == "a.b"
    t = resolve("web.example.com.", CANON)
    assert (t.hostname, t.username) == ("web.example.com", "alice"), "a trailing dot: that name, without the dot"
    # an alias's HostName is what is canonicalised
    assert resolve("w", "Host w\n  HostName Web\n" + CANON).hostname == "web.example.com"
    # not found: the name as it is, unless CanonicalizeFallbackLocal no
    assert resolve("nothere", CANON).hostname == "nothere"
    with pytest.raises(ConnectError, match="CanonicalizeFallbackLocal"):
        resolve("nothere", canon("CanonicalizeFallbackLocal no\n"))
    # addresses are not looked up, but written in their numeric form
    del dns[:]
    assert resolve("127.1", CANON).hostname == "127.0.0.1" and dns == []


def test_canonicalisation_follows_permitted_cnames_only(home, dns):
    assert resolve("web2", CANON).hostname == "web2.example.com"
    rule = "CanonicalizePermittedCNAMEs *.example.com:real.example.com,*.other\n"
    assert resolve("web2", canon(rule)).hostname == "real.example.com"
    assert resolve("web2", canon("CanonicalizePermittedCNAMEs *.example.com:*.other\n")).hostname == \
        "web2.example.com"
    # not found in any domain: the bare name, resolved as it is, may still follow a permitted CNAME
    assert resolve("bare", canon("CanonicalizePermittedCNAMEs bare:*.cname.test\n")).hostname == "bare.cname.test"


def test_proxied_hosts_are_canonicalised_only_with_always(home, dns):
    """As ssh: not through a ProxyJump or ProxyCommand (ProxyJump none counts as one, ProxyCommand none
    does not) unless CanonicalizeHostname always; the second pass happens all the same."""
    for proxy in ("ProxyJump j1", "ProxyCommand nc %h %p", "ProxyJump none"):
        t = resolve("web", canon("Host web\n  %s\nHost *\n" % proxy))
        assert t.hostname == "web", proxy
    assert resolve("web", canon("Host web\n  ProxyCommand none\nHost *\n")).hostname == "web.example.com"
    assert resolve("web", CANON, proxy_jump="j1").hostname == "web"
    t = resolve("web", canon("Host web\n  ProxyJump j1\nHost *\n", "always"))
    assert (t.hostname, t.username, t.proxy_jump) == ("web.example.com", "alice", ["j1"])
    assert resolve("web", canon(mode="no")).hostname == "web"
    t = resolve("alias", "CanonicalizeHostname yes\nHost alias\n  HostName Real\nHost real\n  User second-pass\n")
    assert (t.hostname, t.username) == ("real", "second-pass"), "CanonicalizeHostname alone asks for the second pass"


# -- jumps and proxies --------------------------------------------------------------------

JUMPS = """\
    Host j1
        HostName 192.0.2.1
        User jumper
    Host j2
        HostName 192.0.2.2
        Port 2222
        ProxyJump j1
    Host behind
        HostName 10.9.9.9
        ProxyJump j2
        ProxyCommand nc never %h %p
    Host loop-a
        ProxyJump loop-b
    Host loop-b
        ProxyJump loop-a
    """


def test_proxy_jump_chain_is_resolved_with_each_hops_config(home):
    t = resolve("behind", JUMPS)
    assert t.proxy_command is None, "ProxyJump came first, so ProxyCommand is ignored"
    assert t.proxy_jump == ["j2"]
    assert (t.jump.hostname, t.jump.port) == ("192.0.2.2", 2222)
    assert (t.jump.jump.hostname, t.jump.jump.username) == ("192.0.2.1", "jumper")
    assert t.jump.jump.jump is None
    assert t.display == "behind (root@10.9.9.9 via j2)", "the alias first, then what it resolves to"


def test_proxy_jump_list_and_options(home):
    t = resolve("behind", JUMPS, proxy_jump="admin@j1:2022,j2", key_filename="/keys/k")
    assert t.proxy_jump == ["admin@j1:2022", "j2"]
    # like ssh -J a,b: b is reached through a (the list wins over b's own ProxyJump)
    assert t.jump.hostname == "192.0.2.2" and t.jump.key_filenames[0] == "/keys/k"
    assert (t.jump.jump.username, t.jump.jump.port) == ("admin", 2022)
    assert resolve("behind", JUMPS, proxy_jump="none").jump is None


def test_proxy_jump_takes_tokens(home):
    t = resolve("db", "Host db\n  ProxyJump gw-%h,%r@last:2%p\n", username="zoe")
    assert t.proxy_jump == ["gw-db", "zoe@last:222"]
    assert (t.jump.username, t.jump.port) == ("zoe", 222)
    assert t.jump.jump.hostname == "gw-db"


def test_proxy_command_first_wins_over_proxy_jump(home):
    t = resolve("x", "Host x\n  ProxyCommand ssh -W %h:%p gw\n  ProxyJump j1\n")
    assert t.jump is None and t.proxy_command == "ssh -W x:22 gw"
    assert resolve("x", "Host x\n  ProxyCommand none\n").proxy_command is None


def test_proxy_jump_loop_is_an_error(home):
    with pytest.raises(ConfigError, match="loop") as info:
        resolve("loop-a", JUMPS)
    # (found by an audit, G6: the message began with the last hop's name, and said no file and no fix)
    said = str(info.value)
    assert said.startswith("loop-a: ProxyJump goes through more than 8 hosts") and "<text>" in said, said
    assert "`ProxyJump none` in its own block" in said, said


def test_connection_keys(home):
    a = resolve("behind", JUMPS)
    b = resolve("behind", JUMPS, python="python3.11")
    assert a.conn_key == b.conn_key and a.key != b.key, "one connection, one agent per interpreter"
    assert resolve("behind", JUMPS, known_hosts="/other").conn_key != a.conn_key
    assert resolve("j1", JUMPS).conn_key == a.jump.jump.conn_key


# -- keys and host-key settings ---------------------------------------------------------

def test_identity_files_kwarg_first_then_config_and_defaults_only_without(home):
    text = "Host h\n  IdentityFile ~/.ssh/a\n  IdentityFile ~/.ssh/b\n  IdentitiesOnly yes\n"
    t = resolve("h", text, key_filename="/k/first")
    assert t.key_filenames == ["/k/first", str(home / ".ssh/a"), str(home / ".ssh/b")]
    assert t.identities_only
    assert resolve("other", text, look_for_keys=False).key_filenames == []


def test_host_key_settings(home):
    text = """\
        Host strict
            StrictHostKeyChecking yes
        Host new
            StrictHostKeyChecking accept-new
            HashKnownHosts yes
        Host off
            StrictHostKeyChecking no
        Host *
            UserKnownHostsFile /kh/one /kh/two
            GlobalKnownHostsFile none
            HostKeyAlias the-alias
        """
    assert resolve("strict", text).policy == "reject"
    new = resolve("new", text)
    assert new.policy == "accept-new" and new.hash_known_hosts
    assert resolve("off", text).policy == "accept-new", "'no' still refuses changed keys"
    assert resolve("new", text, host_key_policy="reject").policy == "reject"
    t = resolve("strict", text)
    assert t.known_hosts == ["/kh/one", "/kh/two"] and t.global_known_hosts == []
    assert t.host_key_name == "the-alias", "HostKeyAlias takes no tokens"
    assert resolve("x:2222").host_key_name == "[x]:2222"


def test_identity_agent_setting(home, tmp_path):
    assert resolve("h", "IdentityAgent none\n").identity_agent == ""
    assert resolve("h", "IdentityAgent SSH_AUTH_SOCK\n").identity_agent is None
    assert resolve("h", "IdentityAgent ~/agent.sock\n").identity_agent == str(home / "agent.sock")


# -- known_hosts ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two ed25519 host keys and an ECDSA one, made by ssh-keygen."""
    out = {}
    for name, kind in (("a", "ed25519"), ("b", "ed25519"), ("c", "ecdsa")):
        path = str(tmp_path_factory.mktemp("keys") / name)
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", path], check=True, timeout=30)
        out[name] = paramiko.PKey.from_path(path)
    return out


def line(key, names="host.example"):
    return "%s %s %s\n" % (names, key.get_name(), key.get_base64())


def target_with(tmp_path, text, spec="host.example", **options):
    kh = tmp_path / "known_hosts"
    kh.write_text(text)
    options.setdefault("known_hosts", str(kh))
    t = ssh.resolve(spec, options, ssh.Config([]))
    t.global_known_hosts = []
    return t, kh


def test_known_key_is_accepted(tmp_path, keys):
    t, _ = target_with(tmp_path, "# comment\n\n" + line(keys["b"], "other") + line(keys["a"], "x,host.example"))
    ssh.check_host_key(t, keys["a"])


def test_system_known_hosts_are_consulted(tmp_path, keys):
    system = tmp_path / "ssh_known_hosts"
    system.write_text(line(keys["a"]))
    t, kh = target_with(tmp_path, "")
    t.global_known_hosts = [str(system)]
    ssh.check_host_key(t, keys["a"])
    assert kh.read_text() == ""
    with pytest.raises(HostKeyError, match="CHANGED"):
        ssh.check_host_key(t, keys["b"])


def test_hashed_wildcard_and_port_entries(tmp_path, keys):
    salt = os.urandom(20)
    digest = hmac.new(salt, b"[host.example]:2222", hashlib.sha1).digest()
    hashed = "|1|%s|%s" % (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    t, _ = target_with(tmp_path, line(keys["a"], hashed), spec="host.example:2222")
    ssh.check_host_key(t, keys["a"])
    t, _ = target_with(tmp_path, line(keys["a"], "*.example,!bad.example"))
    ssh.check_host_key(t, keys["a"])
    t, _ = target_with(tmp_path, line(keys["a"], "*.example,!bad.example"), spec="bad.example")
    with pytest.raises(HostKeyError, match="unknown"):
        ssh.check_host_key(t, keys["a"])


def test_a_host_on_another_port_is_also_known_by_its_bare_name_as_ssh_has_it(tmp_path, keys):
    """ssh looks a host on port 2222 up as [host]:2222 and then, if that does not know the key,
    by its bare name, where only the same key counts; a HostKeyAlias turns that off."""
    t, kh = target_with(tmp_path, line(keys["a"], "host.example"), spec="host.example:2222")
    ssh.check_host_key(t, keys["a"])
    with pytest.raises(HostKeyError, match="unknown"):     # another key under the bare name: new, not changed
        ssh.check_host_key(t, keys["b"])
    t, _ = target_with(tmp_path, line(keys["b"], "[host.example]:2222") + line(keys["a"], "host.example"),
                       spec="host.example:2222")
    with pytest.raises(HostKeyError, match="CHANGED"):     # [host]:port decides first
        ssh.check_host_key(t, keys["a"])
    t, _ = target_with(tmp_path, "@revoked host.example %s %s\n" % (keys["a"].get_name(), keys["a"].get_base64())
                       + line(keys["a"], "host.example"), spec="host.example:2222")
    with pytest.raises(HostKeyError, match="revoked"):
        ssh.check_host_key(t, keys["a"])
    t, _ = target_with(tmp_path, line(keys["a"], "host.example"), spec="host.example:2222")
    t.host_key_alias = "other-name"
    with pytest.raises(HostKeyError, match="unknown"):
        ssh.check_host_key(t, keys["a"])
    t, kh = target_with(tmp_path, line(keys["b"], "host.example"), spec="host.example:2222",
                        host_key_policy="accept-new")
    ssh.check_host_key(t, keys["a"])
    assert kh.read_text().splitlines()[-1] == line(keys["a"], "[host.example]:2222").strip()


def test_unknown_key_under_a_host_key_alias_suggests_what_records_it_there(tmp_path, keys):
    """ssh-keyscan would write the host's name, which a HostKeyAlias never looks up: the fix
    is a first ssh login, with the config file the program uses."""
    config = tmp_path / "config"
    config.write_text("Host aliased\n  HostName host.example\n  Port 2222\n  HostKeyAlias pinned\n")
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    t = ssh.resolve("rp@aliased", {"known_hosts": str(kh), "ssh_config": str(config)})
    t.global_known_hosts = []
    with pytest.raises(HostKeyError) as info:
        ssh.check_host_key(t, keys["a"])
    text = str(info.value)
    assert "`ssh -F %s -o UserKnownHostsFile=%s rp@aliased`" % (config, kh) in text and "ssh-keyscan" not in text


def test_unknown_key_message_names_host_type_fingerprint_and_fix(tmp_path, keys):
    t, kh = target_with(tmp_path, "", spec="rp@host.example:2222")
    with pytest.raises(HostKeyError) as info:
        ssh.check_host_key(t, keys["a"])
    text = str(info.value)
    assert "rp@host.example:2222" in text and "ssh-ed25519" in text and ssh.fingerprint(keys["a"]) in text
    assert "ssh-keyscan -p 2222 -t ed25519 host.example >> %s" % kh in text
    assert "host_key_policy='accept-new'" in text
    assert info.value.host == "rp@host.example:2222"


def test_unknown_key_fix_records_it_where_we_look(tmp_path, keys):
    """With known_hosts= of the caller's, ssh must be told of that file (quoted for the shell),
    else it records the key in ~/.ssh/known_hosts, which this program then does not read."""
    kh = tmp_path / "my hosts" / "known_hosts"
    kh.parent.mkdir()
    kh.write_text("")
    for no_config in (False, "none", "NONE"):
        t = ssh.resolve("rp@host.example:2222", {"known_hosts": str(kh), "ssh_config": no_config})
        t.global_known_hosts = []
        with pytest.raises(HostKeyError) as info:
            ssh.check_host_key(t, keys["a"])
        text = str(info.value)
        assert ("connect once with `ssh -F none -o 'UserKnownHostsFile=\"%s\"' -p 2222 rp@host.example` and "
                "answer yes, or run `ssh-keyscan -p 2222 -t ed25519 host.example >> '%s'`" % (kh, kh)) in text
    # several files: ssh records in the first, the one ours reads first (and accept-new writes)
    other = tmp_path / "other"
    t = ssh.resolve("rp@host.example", {"known_hosts": [str(tmp_path / "first"), str(other)], "ssh_config": False})
    t.global_known_hosts = []
    with pytest.raises(HostKeyError) as info:
        ssh.check_host_key(t, keys["a"])
    assert ("`ssh -F none -o 'UserKnownHostsFile=%s %s' rp@host.example` and answer yes (ssh records it in the "
            "first of those files, %s)" % (tmp_path / "first", other, tmp_path / "first")) in str(info.value)


def test_fingerprint_is_openssh_s(tmp_path, keys):
    pub = tmp_path / "k.pub"
    pub.write_text(line(keys["c"], "x").split(" ", 1)[1])
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == ssh.fingerprint(keys["c"])


@pytest.mark.parametrize("policy", ["reject", "accept-new"])
def test_changed_key_is_refused_under_every_policy(tmp_path, keys, policy):
    t, kh = target_with(tmp_path, line(keys["b"]), host_key_policy=policy)
    with pytest.raises(HostKeyError) as info:
        ssh.check_host_key(t, keys["a"])
    assert "CHANGED" in str(info.value) and "%s:1" % kh in str(info.value)
    assert "ssh-keygen -R 'host.example' -f %s" % kh in str(info.value)
    assert kh.read_text() == line(keys["b"])


def test_revoked_key_is_refused(tmp_path, keys):
    t, _ = target_with(tmp_path, "@revoked * %s %s\n" % (keys["a"].get_name(), keys["a"].get_base64())
                       + line(keys["a"]), host_key_policy="accept-new")
    with pytest.raises(HostKeyError, match="revoked"):
        ssh.check_host_key(t, keys["a"])


def test_a_line_whose_key_is_not_of_the_type_it_names_is_skipped_as_ssh_does(tmp_path, keys):
    t, _ = target_with(tmp_path, "host.example ecdsa-sha2-nistp256 %s\n" % keys["a"].get_base64())
    with pytest.raises(HostKeyError, match="unknown"):
        ssh.check_host_key(t, keys["a"])


def test_a_key_of_another_type_is_changed_not_new(tmp_path, keys):
    """As ssh decides (tests/test_host_key_decisions.py runs it through ssh too): any other key
    known for the host is a change, whatever its type; accept-new records nothing."""
    t, kh = target_with(tmp_path, line(keys["c"]) + "@cert-authority *.example %s %s\n"
                        % (keys["b"].get_name(), keys["b"].get_base64()))
    before = kh.read_text()
    with pytest.raises(HostKeyError, match="CHANGED"):
        ssh.check_host_key(t, keys["a"])
    t.policy = "accept-new"
    with pytest.raises(HostKeyError, match="CHANGED"):
        ssh.check_host_key(t, keys["a"])
    assert kh.read_text() == before


def test_accept_new_records_hashed_and_mends_a_missing_newline(tmp_path, keys):
    t, kh = target_with(tmp_path, line(keys["c"], "other").rstrip("\n"), spec="h.example:2200",
                        host_key_policy="accept-new")
    t.hash_known_hosts = True
    ssh.check_host_key(t, keys["a"])
    lines = kh.read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("|1|") and lines[1].endswith(keys["a"].get_base64())
    found = subprocess.run(["ssh-keygen", "-F", "[h.example]:2200", "-f", str(kh)], capture_output=True,
                           text=True, timeout=30)
    assert found.returncode == 0 and keys["a"].get_base64() in found.stdout
    ssh.check_host_key(t, keys["a"])       # and now it is known
    assert len(kh.read_text().splitlines()) == 2


def test_accept_new_creates_the_directory(tmp_path, keys):
    path = tmp_path / "new" / "dir" / "known_hosts"
    t = ssh.resolve("h", {"known_hosts": str(path), "host_key_policy": "accept-new"}, ssh.Config([]))
    t.global_known_hosts = []
    ssh.check_host_key(t, keys["a"])
    assert path.read_text() == line(keys["a"], "h")


def test_known_key_types_are_offered_first(tmp_path, keys):
    t = paramiko.Transport(socket_pair()[0])
    try:
        rsa = base64.b64encode(struct.pack(">I", 7) + b"ssh-rsa" + struct.pack(">I", 1) + b"\x03").decode()
        entries = ssh.read_known_hosts([str(target_with(tmp_path, line(keys["c"]) + "h ssh-rsa %s\n" % rsa)[1])])
        hostkeys.prefer_known_types(t, entries)
        types = t.get_security_options().key_types
        assert types[0] == "ecdsa-sha2-nistp256" and types[1:3] == ("rsa-sha2-512", "rsa-sha2-256")
    finally:
        t.close()


def socket_pair():
    import socket

    return socket.socketpair()


# -- the order in which keys are offered ------------------------------------------------------

class FakeAgentKey:
    def __init__(self, blob, comment=""):
        self.blob = blob
        self.comment = comment

    def asbytes(self):
        return self.blob


class FakeAgent:
    def __init__(self, keys):
        self.keys = keys

    def get_keys(self):
        return self.keys


def make_identities(tmp_path, names):
    files = {}
    for name in names:
        path = tmp_path / name
        path.write_text("private")
        blob = ("blob-" + name).encode()
        (tmp_path / (name + ".pub")).write_text("ssh-ed25519 %s c\n" % base64.b64encode(blob).decode())
        files[name] = (str(path), blob)
    return files


def test_keys_are_offered_in_ssh_s_order(tmp_path, home):
    files = make_identities(tmp_path, ("one", "two", "three"))
    text = "".join("IdentityFile %s\n" % files[n][0] for n in ("one", "two", "three"))
    t = resolve("h", text)
    agent = FakeAgent([FakeAgentKey(b"other-agent-key"), FakeAgentKey(files["three"][1]),
                       FakeAgentKey(files["one"][1])])
    labels = [label for label, _key in auth._identities(t, agent)]
    # agent keys named by IdentityFile (in the agent's order), other agent keys, then the remaining files
    assert labels[0] == files["three"][0] + " (from ssh-agent)"
    assert labels[1] == files["one"][0] + " (from ssh-agent)"
    assert labels[2].startswith("ssh-agent key ")
    assert labels[3:] == [files["two"][0]]
    t.identities_only = True
    assert len(auth._identities(t, agent)) == 3
    assert len(auth._identities(t, None)) == 3


def test_key_filename_is_offered_first(tmp_path, home):
    files = make_identities(tmp_path, ("explicit", "inagent", "config"))
    t = resolve("h", "IdentityFile %s\n" % files["config"][0],
                key_filename=[files["explicit"][0], files["inagent"][0]])
    agent = FakeAgent([FakeAgentKey(b"other-agent-key"), FakeAgentKey(files["inagent"][1])])
    labels = [label for label, _key in auth._identities(t, agent)]
    assert labels == [files["explicit"][0], files["inagent"][0] + " (from ssh-agent)",
                      labels[2], files["config"][0]]
    assert labels[2].startswith("ssh-agent key ")


def test_certificates_are_offered_in_ssh_s_order(tmp_path, home):
    """A key file's KEY-cert.pub right after the key; CertificateFiles after the key_filename files and
    before the agent's keys (ssh's order), each once; a host certificate is named, not offered."""
    def keygen(name, *sign):
        path = str(tmp_path / name)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path], check=True,
                       capture_output=True, timeout=30)
        if sign:
            subprocess.run(["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", name, *sign, path + ".pub"],
                           check=True, capture_output=True, timeout=30)
        return path
    keygen("ca")
    explicit, configured, host = keygen("k1", "-n", "me"), keygen("k2", "-n", "me"), keygen("hk", "-h")
    elsewhere = str(tmp_path / "k2-issued.pub")
    os.rename(configured + "-cert.pub", elsewhere)
    text = "IdentityFile %s\nCertificateFile %s\nCertificateFile %s-cert.pub\nCertificateFile %s\n" % (
        configured, elsewhere, host, elsewhere)
    t = resolve("h", text, key_filename=explicit)
    labels = [label for label, _key in auth._identities(t, FakeAgent([FakeAgentKey(b"other-agent-key")]))]
    assert labels[:4] == [explicit, explicit + "-cert.pub", elsewhere,
                          "CertificateFile %s-cert.pub (a host certificate, not a user certificate)" % host]
    assert labels[4].startswith("ssh-agent key ") and labels[5:] == [configured]
    offer = dict(auth._identities(t, None))[elsewhere]
    assert offer.signer == configured and offer.cert.public == auth._public_blob(configured)


# -- what the paramiko transport cannot do ------------------------------------------------------

def ssh_string(data):
    data = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(data)) + data


def write_sk_key(path, kind="sk-ssh-ed25519@openssh.com", public=True):
    """A FIDO key file as ssh-keygen -t ed25519-sk writes it (openssh-key-v1, unencrypted), and its .pub."""
    blob = ssh_string(kind) + ssh_string(os.urandom(32)) + ssh_string("ssh:")
    private = (struct.pack(">II", 7, 7) + blob + b"\x01" + ssh_string(os.urandom(64)) + ssh_string(b"")
               + ssh_string("me@laptop"))
    private += bytes(range(1, 1 + (-len(private)) % 8))
    body = (b"openssh-key-v1\0" + ssh_string("none") + ssh_string("none") + ssh_string(b"")
            + struct.pack(">I", 1) + ssh_string(blob) + ssh_string(private))
    text = base64.b64encode(body).decode()
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n%s\n-----END OPENSSH PRIVATE KEY-----\n"
                    % "\n".join(text[i:i + 70] for i in range(0, len(text), 70)))
    path.chmod(0o600)
    if public:
        (path.parent / (path.name + ".pub")).write_text("%s %s me@laptop\n" % (kind, base64.b64encode(blob).decode()))
    return str(path)


class StandInTransport:
    """What _auth_failed asks of a paramiko Transport."""

    def __init__(self, active=True):
        self.active = active

    def is_active(self):
        return self.active


GENERIC = "If `ssh` itself logs you in (Kerberos/GSSAPI, a FIDO or PKCS#11 key, 2FA), pass " \
          "transport='openssh' to use it."


def test_gssapi_and_pkcs11_are_named(home):
    text = "Host krb\n  GSSAPIAuthentication yes\nHost token\n  PKCS11Provider /usr/lib/opensc-pkcs11.so\n"
    assert resolve("krb", text).paramiko_cannot == ("GSSAPIAuthentication (Kerberos)",)
    assert resolve("token", text).paramiko_cannot == ("PKCS11Provider /usr/lib/opensc-pkcs11.so (a PKCS#11 token)",)


def test_settings_that_turn_them_off_name_nothing(home):
    text = "GSSAPIAuthentication no\nPKCS11Provider none\nSecurityKeyProvider internal\nIdentityFile none\n"
    assert resolve("h", text).paramiko_cannot == ()
    assert resolve("h").paramiko_cannot == (), "no config at all"
    # the first value wins, as for every keyword: a later 'yes' does not count
    assert resolve("h", "Host h\n  GSSAPIAuthentication no\nHost *\n  GSSAPIAuthentication yes\n").paramiko_cannot == ()


def test_fido_keys_and_their_provider_are_named(home, tmp_path):
    sk = write_sk_key(tmp_path / "id_ed25519_sk")
    ecdsa_sk = write_sk_key(tmp_path / "id_ecdsa_sk", "sk-ecdsa-sha2-nistp256@openssh.com")
    plain = make_identities(tmp_path, ("plain",))["plain"][0]
    text = "".join("IdentityFile %s\n" % p for p in (plain, sk, tmp_path / "missing_sk", ecdsa_sk + ".pub"))
    assert resolve("h", text).paramiko_cannot == (
        "the FIDO security key %s (sk-ssh-ed25519@openssh.com)" % sk,
        "the FIDO security key %s.pub (sk-ecdsa-sha2-nistp256@openssh.com)" % ecdsa_sk)
    assert resolve("h", "SecurityKeyProvider /usr/lib/libsk-libfido2.so\n").paramiko_cannot == (
        "SecurityKeyProvider /usr/lib/libsk-libfido2.so (FIDO security keys)",)


def test_a_default_fido_key_file_is_named(home):
    sk = write_sk_key(home / ".ssh" / "id_ed25519_sk")
    assert resolve("h").paramiko_cannot == ("the FIDO security key %s (sk-ssh-ed25519@openssh.com)" % sk,)
    assert resolve("h", look_for_keys=False).paramiko_cannot == ()


def test_certificate_files_are_used_not_named_as_what_paramiko_cannot_do(home, tmp_path):
    """CertificateFile is honoured (auth.py offers each with its key): a refused login no longer
    sends the user to transport='openssh' for it; its tokens expand as IdentityFile's do."""
    key = make_identities(tmp_path, ("id",))["id"][0]
    text = "IdentityFile %s\nCertificateFile %s/certs/%%n-cert.pub\nCertificateFile /no/such\n" % (key, tmp_path)
    t = resolve("h", text)
    assert t.paramiko_cannot == ()
    assert t.certificate_files == ["%s/certs/h-cert.pub" % tmp_path, "/no/such"]
    with pytest.raises(ConfigError, match="%Z"):         # (as ssh: an unknown token is an error)
        resolve("h", "CertificateFile ~/%Z\n")


def test_each_hop_has_its_own(home):
    text = "Host bastion\n  GSSAPIAuthentication yes\n"
    t = resolve("build01", text, proxy_jump="bastion")
    assert t.paramiko_cannot == () and t.jump.paramiko_cannot == ("GSSAPIAuthentication (Kerberos)",)


def test_the_authentication_error_names_the_settings_and_the_openssh_transport_first(home):
    text = "GSSAPIAuthentication yes\nPKCS11Provider /usr/lib/opensc-pkcs11.so\n"
    t = resolve("alice@h", text, look_for_keys=False)
    message = str(auth._auth_failed(t, StandInTransport(), ["/k/id (refused)"], ["publickey", "gssapi-with-mic"],
                                    None))
    assert message.startswith("alice@h: authentication failed; the server accepts publickey, gssapi-with-mic; "
                              "tried: /k/id (refused). ")
    assert ("This host's ssh config asks for GSSAPIAuthentication (Kerberos) and PKCS11Provider "
            "/usr/lib/opensc-pkcs11.so (a PKCS#11 token), which the paramiko transport cannot use. "
            "Fix: pass transport='openssh' (your own ssh logs in with them), or add your public key to "
            "~alice/.ssh/authorized_keys") in message
    assert GENERIC not in message


def test_the_authentication_error_keeps_the_generic_way_out_when_nothing_specific(home):
    t = resolve("alice@h", look_for_keys=False)
    message = str(auth._auth_failed(t, StandInTransport(active=False), [], ["publickey"], None))
    assert "tried: no key (no agent, no key file found). The server closed the connection" in message
    assert message.endswith("Fix: add your public key to ~alice/.ssh/authorized_keys on the host, load the right "
                            "key into ssh-agent, or pass key_filename=. " + GENERIC)


def test_a_fido_key_file_is_left_out_with_the_reason_not_a_crash(home, tmp_path):
    sk = write_sk_key(tmp_path / "id_ed25519_sk")
    bare = write_sk_key(tmp_path / "bare_sk", public=False)    # no .pub: read from the key file, as ssh does
    t = resolve("alice@h", "IdentityFile %s\nIdentityFile %s\n" % (sk, bare), look_for_keys=False,
                allow_agent=False)
    attempt = auth._Attempt(StandInTransport(), t)
    attempt.allowed = ["publickey"]
    assert attempt.keys(None) is False
    for path, tried in zip((sk, bare), attempt.tried):
        assert tried == "%s (a FIDO security key (sk-ssh-ed25519@openssh.com), which the paramiko " \
                        "transport cannot use)" % path
    message = str(auth._auth_failed(t, StandInTransport(), attempt.tried, attempt.allowed, None))
    assert "asks for the FIDO security key %s (sk-ssh-ed25519@openssh.com) and the FIDO security key %s " \
           "(sk-ssh-ed25519@openssh.com), which the paramiko transport cannot use. Fix: pass transport='openssh'" \
           % (sk, bare) in message


# -- the pool ---------------------------------------------------------------------------------------

class FakeTransport:
    def __init__(self):
        self.alive = True

    def is_active(self):
        return self.alive

    def close(self):
        self.alive = False

    def is_alive(self):
        return False


@pytest.fixture
def fake_connect(monkeypatch):
    made = []
    failing = set()

    def connect(target, jump=None):
        if target.hostname in failing:
            raise ConnectError("%s: refused" % target.display, target.display)
        conn = ssh.SSHConnection(target, FakeTransport(), jump)
        made.append(conn)
        return conn

    monkeypatch.setattr(ssh_pool, "connect", connect)
    return made, failing


def test_pool_failure_after_the_jump_releases_the_jump(home, fake_connect):
    made, failing = fake_connect
    failing.add("10.9.9.9")
    pool = ssh.ConnectionPool()
    with pytest.raises(ConnectError):
        pool.acquire(resolve("behind", JUMPS))
    assert len(made) == 2 and not any(c.active for c in made), "both jump connections must be closed"
    assert pool._entries == {}


def test_pool_replaces_a_dead_connection_and_counts_right(home, fake_connect):
    made, _ = fake_connect
    pool = ssh.ConnectionPool()
    target = resolve("behind", JUMPS)
    first = pool.acquire(target)
    first.transport.alive = False          # the host went away
    second = pool.acquire(target)
    assert second is not first and len(made) == 6, "a new connection (and a new chain) replaces it"
    assert not any(c.active for c in made[:3]), "the dead connection's jumps were released and closed"
    pool.release(first)                    # the old user lets go of the dead connection
    assert second.active
    pool.release(second)
    assert not any(c.active for c in made) and pool._entries == {}


def test_pool_is_thread_safe(home, fake_connect):
    made, _ = fake_connect
    pool = ssh.ConnectionPool()
    target = resolve("behind", JUMPS)
    got = []
    barrier = threading.Barrier(8)

    def user():
        barrier.wait(5)
        for _ in range(50):
            conn = pool.acquire(target)
            got.append(conn)
            pool.release(conn)
    threads = [threading.Thread(target=user) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert len(got) == 400 and pool._entries == {} and not any(c.active for c in made)


# -- bootstrap: interpreter checks --------------------------------------------------------------

class StubChannel(AgentChannel):
    """An AgentChannel with canned output, for bootstrap.start_agent."""

    def __init__(self, stdout=b"", stderr=b"", status=None):
        self.stdout = bytearray(stdout)
        self.stderr = bytearray(stderr)
        self.status = status
        self.closed = False
        self.command = None

    def fileno(self):
        return _always_readable()

    def on_writable(self, callback):
        pass

    def send(self, data):
        if self.status is not None:
            raise ChannelLost("the channel closed")
        return len(data)

    def recv(self, limit):
        data, self.stdout[:] = bytes(self.stdout[:limit]), self.stdout[limit:]
        return data

    def recv_stderr(self):
        data, self.stderr[:] = bytes(self.stderr), b""
        return data

    def exit_status(self):
        return self.status

    def describe_loss(self):
        return "the stub ended"

    def close(self):
        self.closed = True


@functools.cache
def _always_readable():
    """The read end of a pipe with a byte in it: the stubs' output is all there at once."""
    r, w = os.pipe()
    os.write(w, b"x")
    os.close(w)
    return r


class StubOpener(AgentOpener):
    def __init__(self, chan):
        self.chan = chan

    def open(self, target, command):
        self.chan.command = command()
        return self.chan

    def close(self):
        pass


def start_with(chan, python="python3", **options):
    from remoteproc.agent import frames

    target = ssh.resolve("rp@h", dict({"python": python, "connect_timeout": 2}, **options), ssh.Config([]))
    return bootstrap.start_agent(StubOpener(chan), target), frames


def hello_frame(version):
    from remoteproc.agent import PROTOCOL_VERSION, frames

    # (the stub says STUB_STARTED before it reads its blob, and so before the agent's hello)
    return bootstrap.STUB_STARTED + frames.control({"op": "hello", "version": PROTOCOL_VERSION, "python": list(version),
                                                    "executable": "/opt/py/bin/python3", "pid": 1})


def test_same_minor_version_is_accepted():
    chan = StubChannel(stdout=bootstrap.READY + hello_frame(sys.version_info[:2] + (99,)) + b"extra")
    (got, hello, extra), _ = start_with(chan)
    assert got is chan and extra == b"extra" and not chan.closed


def test_hello_of_another_minor_version_means_spawn_mode():
    chan = StubChannel(stdout=bootstrap.READY + hello_frame(sys.version_info[:2] + (99,)))
    (_got, hello, _extra), _ = start_with(chan)
    assert hello["mode"] == "same"
    chan = StubChannel(stdout=bootstrap.READY + hello_frame((3, sys.version_info[1] + 1, 0)))
    (_got, hello, _extra), _ = start_with(chan)
    assert hello["mode"] == "spawn" and not chan.closed


def test_stub_refusal_of_an_old_python_carries_its_words():
    said = b"remoteproc: python3 is cpython Python 2.7.18 at /usr/bin/python2.7\n"
    chan = StubChannel(stderr=said, status=bootstrap.WRONG_VERSION)
    with pytest.raises(BootstrapError) as info:
        start_with(chan)
    text = str(info.value)
    assert "python3 is cpython Python 2.7.18 (/usr/bin/python2.7)" in text and "needs Python 3.8" in text
    assert "no Python %d.%d was found in the usual places (python%d.%d on the login PATH" % (
        sys.version_info[:2] * 2) in text
    assert chan.closed
    said = b"remoteproc: python=python is cpython Python 2.7.18 at /usr/bin/python2.7\n"
    with pytest.raises(BootstrapError) as info:      # python= chose it: nothing else was looked for
        start_with(StubChannel(stderr=said, status=bootstrap.WRONG_VERSION), python="python")
    assert "was found" not in str(info.value) and "Fix: pass python= with the path of a Python 3.8+" in str(
        info.value)


def test_a_chatty_shell_startup_file_is_logged_and_passed_over(caplog):
    """What a startup file prints comes before the command's READY: it is not the protocol."""
    chan = StubChannel(stdout=b"Welcome to build01! Have a nice day.\n" + bootstrap.READY
                       + hello_frame(sys.version_info[:2] + (99,)))
    with caplog.at_level(logging.WARNING, logger="remoteproc"):
        (got, hello, _extra), _ = start_with(chan)
    assert got is chan and hello["op"] == "hello" and not chan.closed
    assert "printed b'Welcome to build01! Have a nice day.\\n' before running remoteproc's command" in caplog.text


def test_output_after_ready_that_is_no_frame_is_named():
    chan = StubChannel(stdout=bootstrap.READY + bootstrap.STUB_STARTED + b"Welcome to build01! Have a nice day.\n")
    with pytest.raises(BootstrapError) as info:
        start_with(chan)
    assert "printed b'Welcome to build01" in str(info.value) and "instead of starting the agent" in str(info.value)
    assert chan.closed


def test_a_csh_that_ends_itself_at_a_setup_line_is_named():
    """csh prints a line on stdout before each setup= line: if the shell ends at an error of its own
    (before our status check), the last one names the line."""
    out = b"remoteproc: setup line 1\nremoteproc: setup line 2\nsome output\n"
    chan = StubChannel(stdout=out, stderr=b"nosuch: Undefined variable.\n", status=1)
    with pytest.raises(BootstrapError) as info:
        start_with(chan, setup=["true", "echo $nosuch"])
    assert "setup line 2 'echo $nosuch' failed with exit status 1; its output: some output\nnosuch: Undefined " \
           "variable." in str(info.value)


class WaitingChannel(StubChannel):
    """A command that is still running: its output so far, then nothing (not EOF)."""

    def __init__(self, stdout):
        super().__init__(stdout=stdout)
        self.idle, self.keep = os.pipe()       # (never readable: waits are waits)

    def fileno(self):
        return self.idle if not self.stdout else _always_readable()

    def recv(self, limit):
        return super().recv(limit) or None

    def close(self):
        super().close()
        os.close(self.idle)
        os.close(self.keep)


def test_a_timeout_before_ready_names_the_startup_files(monkeypatch):
    monkeypatch.setattr(bootstrap, "MIN_WAIT", 0.3)
    chan = WaitingChannel(stdout=b"Welcome\n")
    with pytest.raises(BootstrapError) as info:
        start_with(chan, connect_timeout=0.2)
    text = str(info.value)
    assert "did not run remoteproc's command within 0.3s" in text and "~/.bashrc" in text and "stdout: Welcome" in text
    assert chan.closed


def test_a_restricted_shell_with_python_given_says_what_to_do():
    said = b"rbash: line 1: exec: restricted\n"
    with pytest.raises(BootstrapError) as info:
        start_with(StubChannel(stderr=said, status=1), python="/opt/py/bin/python3")
    assert "restricted shell" in str(info.value) and "leave python= unset" in str(info.value)


def test_interpreter_not_found_carries_the_shells_words():
    chan = StubChannel(stderr=b"sh: 1: exec: /nonexistent/python3: not found\n", status=127)
    with pytest.raises(BootstrapError) as info:
        start_with(chan, python="/nonexistent/python3")
    text = str(info.value)
    assert "exec: /nonexistent/python3: not found" in text and "exit status 127" in text
    assert "install Python %d.%d" % sys.version_info[:2] in text


def test_no_python3_without_python_given_says_python3_not_python_none():
    """Found by an audit: the account had no python3 and no python= was passed; the error said
    "with python=None", an option the user never wrote (and the CLI said it too)."""
    chan = StubChannel(stderr=b"sh: 1: exec: python3: not found\n", status=127)
    with pytest.raises(BootstrapError) as info:
        start_with(chan, python=None)
    text = str(info.value)
    assert "could not start the agent with python3 (no python= given), exit status 127" in text, text
    assert "None" not in text and "the host has no python3" in text


def test_the_stub_checks_the_version_before_reading_anything(tmp_path):
    wrapper = tmp_path / "python3.4"
    wrapper.write_text("#!%s\nimport sys\nsys.version_info = (3, 4, 1, 'final', 0)\nstub = sys.argv[2]\n"
                       "sys.argv = ['-c'] + sys.argv[3:]\nexec(stub)\n" % sys.executable)
    wrapper.chmod(0o755)
    old = subprocess.run(["sh", "-c", bootstrap.command(str(wrapper))], input=b"", capture_output=True, timeout=30)
    assert old.returncode == bootstrap.WRONG_VERSION
    with pytest.raises(BootstrapError) as info:      # what the local side makes of the stub's words
        start_with(StubChannel(stderr=old.stderr, status=old.returncode), python=str(wrapper))
    assert "is cpython Python 3.4.1 (" in str(info.value) and "too old" in str(info.value)
    same = subprocess.run(["sh", "-c", bootstrap.command(sys.executable)], input=b"", capture_output=True,
                          timeout=30)
    assert same.returncode == 9, "the right version waits for its blob (and exits 9 at EOF)"
