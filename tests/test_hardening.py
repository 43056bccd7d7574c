"""Security and hardening: what a careful user's production machines rely on (docs/reliability.md, Security).

No listening socket of ours; names that never reach a shell; values that arrive literally; host keys
refused when they should be; no secret in logs, errors or command lines; a package cache that is the
account's own.  Real sshd throughout.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import stat
import subprocess
import sys

import cloudpickle
import pytest
from proctable import descendants, fd_table

import remoteproc
from remoteproc import Pipe, RemoteProcess
from remoteproc.agent import pkgcache
from remoteproc.relay import client as relay_client
from remoteproc.script import ONE_LINER, run
from remoteproc.testing import LoopbackSSHServer

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

#: file and directory names a shell would not take literally
WEIRD = "d i'r\"$(touch MARK_a)`touch MARK_b`;touch MARK_c"


def _markers(where: str) -> list[str]:
    return sorted(n for n in os.listdir(where) if n.startswith("MARK"))


# -- listening sockets ------------------------------------------------------------------------

def _hold(conn, q, lock, ev, shared):
    with lock:
        q.put(os.getpid())
    ev.set()
    shared["pid"] = os.getpid()
    conn.send(os.getpid())
    conn.recv()


def _pid(_):
    return os.getpid()


def _listening_inodes() -> set[int]:
    """Inodes of every listening socket of this network namespace: TCP in LISTEN, any UDP socket
    (UDP has no connection: a bound one receives from anyone), Unix with __SO_ACCEPTCON."""
    inodes = set()
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open("/proc/net/" + name) as f:
                rows = list(f)[1:]
        except FileNotFoundError:
            continue
        for line in rows:
            parts = line.split()
            if name.startswith("udp") or parts[3] == "0A":
                inodes.add(int(parts[9]))
    with open("/proc/net/unix") as f:
        for line in list(f)[1:]:
            parts = line.split()
            if int(parts[3], 16) & 0x10000:
                inodes.add(int(parts[6]))
    return inodes


def _sockets(pid: int) -> set[int]:
    return {int(target[8:-1]) for target in fd_table(pid).values() if target.startswith("socket:[")}


@pytest.mark.loopback_only
def test_no_listening_socket_of_ours_during_every_api(host, ssh_options, sshd, tmp_path):
    """RemoteProcess with a Queue, Lock, Event and a manager proxy, a Pool, an Executor and a script
    at once: the user's process, the relay (and its ssh), every agent and child listen on nothing.
    (The manager's own process listens, as multiprocessing's managers do: the user's choice.)"""
    manager = multiprocessing.Manager()
    shared = manager.dict()
    q, lock, ev = remoteproc.Queue(), remoteproc.Lock(), remoteproc.Event()
    parent, child = Pipe()
    p = RemoteProcess(host, target=_hold, args=(child, q, lock, ev, shared), **ssh_options)
    script = tmp_path / "wait.py"
    script.write_text(ONE_LINER + "\nconn.send(os.getpid()); conn.recv()\n")
    pool = remoteproc.Pool([host], 2, **ssh_options)
    executor = remoteproc.Executor([host], 2, **ssh_options)
    s = None
    try:
        p.start()
        child.close()
        parent.recv()
        assert ev.wait(30) and q.get(timeout=30)
        s = run(host, str(script), **ssh_options)
        s.conn.recv()
        assert len(pool.map(_pid, range(4))) == 4
        assert len(list(executor.map(_pid, range(4)))) == 4
        relay = relay_client.get().proc.pid
        ours = {os.getpid(), relay, *descendants(relay), *descendants(sshd.pid)} - {sshd.pid}
        listening = _listening_inodes()
        found = {pid: _sockets(pid) & listening for pid in ours}
        assert not {pid: i for pid, i in found.items() if i}, "listening sockets of ours: %r" % found
        assert _sockets(manager._process.pid) & listening     # (the check sees a real listener)
    finally:
        if s is not None:
            s.conn.send(0)
            s.join(30)
        parent.send(0)
        p.join(30)
        pool.terminate()
        executor.shutdown()
        manager.shutdown()


# -- names that reach a shell -----------------------------------------------------------------

@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_shell_characters_in_host_and_user_names_are_refused(sshd, tmp_path, monkeypatch, transport):
    """ssh_config puts %h, %r and %n into shell commands (Match exec, ProxyCommand): a caller's host or
    user name with shell syntax, or a leading '-' (an ssh option), is a ConfigError and runs nothing.
    (Before: with paramiko, Match exec ran `touch` from the host spec, as CVE-2023-51385 with ssh.)"""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config"
    config.write_text('Match exec "echo %h %r %n >/dev/null"\n  HostName 127.0.0.1\n')
    options = dict(sshd.options(), ssh_config=str(config), transport=transport, connect_timeout=5)
    options.pop("username")
    for spec, extra in [("a;touch${IFS}MARK1;", {}), ("x$(touch${IFS}MARK2)@h", {}), ("`touch${IFS}MARK3`", {}),
                        ("-oProxyCommand=touch${IFS}MARK4", {}), ("h", {"username": "u;touch${IFS}MARK5"}),
                        ("h", {"username": "-oProxyCommand=touch${IFS}MARK6"}), ("h", {"username": "a\nb"})]:
        with pytest.raises(remoteproc.ConfigError) as info:
            RemoteProcess(spec, target=print, **options, **extra).start()
        assert spec in str(info.value) and "Fix:" in str(info.value)
    assert _markers(str(tmp_path)) == []


@pytest.mark.parametrize("jump", ["a$b", "-oProxyCommand=touch${IFS}MARK", "a b", "ok@gw,x;y", "u;v@gw"])
def test_a_proxy_jump_with_shell_syntax_is_refused_by_the_constructor(jump):
    """As the docs say of a host or user name in the spec (found by an audit, H3: the constructor took
    these, and the start's error named no proxy_jump=)."""
    with pytest.raises(remoteproc.ConfigError) as info:
        RemoteProcess("node1", target=print, proxy_jump=jump)
    assert str(info.value).startswith("node1: proxy_jump=%r: " % jump), str(info.value)
    RemoteProcess("node1", target=print, proxy_jump="alice@bastion:2222,ssh://bob@gw")     # (fine ones stay fine)


def _report(conn):
    conn.send({"cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in ("RP_A", "RP_B", "RP_C")}})


@pytest.mark.one_transport
def test_cwd_env_and_script_arguments_arrive_literally(host, ssh_options, is_loopback, tmp_path):
    if not is_loopback:
        pytest.skip("the directory is made on this machine")
    where = tmp_path / WEIRD
    where.mkdir()
    env = {"RP_A": "$(touch MARK_env)", "RP_B": "`touch MARK_b`; touch MARK_c\nsecond line", "RP_C": "'\"\\ -x"}
    parent, child = Pipe()
    p = RemoteProcess(host, target=_report, args=(child,), cwd=str(where), env=env, **ssh_options)
    p.start()
    child.close()
    got = parent.recv()
    p.join(30)
    assert got == {"cwd": str(where), "env": env}
    script = where / ("s c'r$(x).py")
    script.write_text(ONE_LINER + "\nimport sys\nconn.send(sys.argv)\n")
    args = ["$(touch MARK_x)", "; touch MARK_y", "-c", "a\nb", "`touch MARK_z`"]
    s = run(host, str(script), *args, cwd=str(where), **ssh_options)
    assert s.conn.recv() == [str(script)] + args
    s.join(30)
    assert s.exitcode == 0
    assert _markers(str(where)) == [] and _markers(str(tmp_path)) == [] and _markers(os.path.expanduser("~")) == []


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_key_and_known_hosts_paths_are_taken_literally(sshd, tmp_path, monkeypatch, transport):
    """Paths with spaces, quotes and shell syntax work (also through a jump host, whose options the
    openssh transport writes into a config file); one with a newline or a double quote, which that
    file cannot hold, is refused there instead of becoming a config line (before: a ProxyCommand of
    the caller's making ran)."""
    monkeypatch.chdir(tmp_path)
    where = tmp_path / WEIRD.replace('"', "")
    where.mkdir()
    key, known = str(where / "key"), str(where / "known_hosts")
    shutil.copy(sshd.client_key, key)
    os.chmod(key, 0o600)
    lines = open(sshd.known_hosts).read()
    with open(known, "w") as f:
        f.write(lines + lines.replace("[127.0.0.1]", "[localhost]"))
    me = sshd.users[0]
    jump = "%s@localhost:%d" % (me, sshd.port)
    base = dict(sshd.options(), key_filename=key, known_hosts=known, ssh_config=False, transport=transport,
                connect_timeout=10)
    for extra in ({}, {"proxy_jump": jump}):
        parent, child = Pipe()
        p = RemoteProcess(sshd.spec(), target=_report, args=(child,), **base, **extra)
        p.start()
        child.close()
        assert parent.recv()["cwd"]
        p.join(30)
        assert p.exitcode == 0
    if transport == "openssh":
        bad = str(tmp_path / 'k"\nProxyCommand touch MARK_nl\n#')
        with pytest.raises(remoteproc.ConfigError, match="double quote or a control character"):
            RemoteProcess(sshd.spec(), target=print, **dict(base, key_filename=[bad, key], proxy_jump=jump)).start()
    assert _markers(str(tmp_path)) == [] and _markers(str(where)) == []


# -- host keys --------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_another_key_under_a_pinned_name_is_refused_and_accept_new_pins_exactly(sshd, tmp_path, transport):
    """A second sshd answering under a name whose key is pinned (a man in the middle) is refused with
    both policies, naming the host; accept-new records `[127.0.0.1]:port` in a 0700 directory, in a
    file nobody else can write."""
    me = sshd.users[0]
    other = LoopbackSSHServer(users=[me]).start()
    try:
        pinned = tmp_path / "pinned"
        pinned.write_text(open(sshd.known_hosts).read().replace("]:%d " % sshd.port, "]:%d " % other.port))
        for policy in ("reject", "accept-new"):
            options = dict(other.options(), known_hosts=str(pinned), host_key_policy=policy, transport=transport,
                           ssh_config=False)
            with pytest.raises(remoteproc.HostKeyError, match="CHANGED") as info:
                RemoteProcess(other.spec(), target=print, **options).start()
            assert "127.0.0.1:%d" % other.port in str(info.value) and info.value.host
        with pytest.raises(remoteproc.HostKeyError, match="unknown|does not know"):
            RemoteProcess(other.spec(), target=print, **dict(other.options(), known_hosts=str(tmp_path / "none"),
                                                               transport=transport, ssh_config=False)).start()
        assert not (tmp_path / "none").exists()
        fresh = tmp_path / "new" / "known_hosts"
        p = RemoteProcess(other.spec(), target=print, **dict(other.options(), known_hosts=str(fresh),
                                                             host_key_policy="accept-new", transport=transport,
                                                             ssh_config=False))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        names = [line.split()[0] for line in fresh.read_text().splitlines() if line.strip()]
        assert names == ["[127.0.0.1]:%d" % other.port]
        assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
        assert not fresh.stat().st_mode & 0o022
    finally:
        other.stop()


# -- secrets ----------------------------------------------------------------------------------

SECRET = "S3cr3t-Pw-4711"


@pytest.mark.one_transport
def test_password_and_passphrase_appear_in_no_log_error_or_command_line(sshd, caplog, tmp_path):
    caplog.set_level(logging.DEBUG, logger="remoteproc")
    options = dict(sshd.options(), password=SECRET, passphrase=SECRET)
    parent, child = Pipe()
    p = RemoteProcess(sshd.spec(), target=_report, args=(child,), env={"RP_A": SECRET}, **options)
    p.start()
    child.close()
    parent.recv()
    relay = relay_client.get().proc.pid
    cmdlines = [open("/proc/%d/cmdline" % pid, "rb").read() for pid in (relay, *descendants(sshd.pid))
                if os.path.exists("/proc/%d/cmdline" % pid)]
    p.join(30)
    assert not any(SECRET.encode() in c for c in cmdlines)
    encrypted = str(tmp_path / "enc_key")
    shutil.copy(sshd.client_key, encrypted)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "other", "-f", encrypted], check=True, timeout=30,
                   capture_output=True)
    errors = []
    for bad in ({"key_filename": "/nonexistent"}, {"key_filename": encrypted}):
        with pytest.raises(remoteproc.AuthenticationError) as info:
            RemoteProcess(sshd.spec(), target=print, **dict(options, look_for_keys=False, allow_agent=False,
                                                            **bad)).start()
        errors.append(info.value)
    with pytest.raises(remoteproc.ConfigError) as info:
        RemoteProcess(sshd.spec(), target=print, **dict(options, transport="openssh")).start()
    errors.append(info.value)
    for exc in errors:
        assert SECRET not in str(exc) and SECRET not in repr(exc.args)
    assert SECRET not in caplog.text


# -- the package cache is the account's own ---------------------------------------------------

def _entry(root: str) -> str:
    os.makedirs(root, mode=0o700)
    work = os.path.join(root, "work")
    os.mkdir(work)
    with open(os.path.join(work, "mod.py"), "w") as f:
        f.write("X = 1\n")
    digest = pkgcache.digest_of(work)
    os.rename(work, os.path.join(root, digest))
    return digest


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another account needs root")
def test_a_cache_of_another_account_or_a_link_is_never_used(tmp_path):
    """An entry is checked by hash, then imported: whoever owns the cache directory could swap its
    files in between, so a cache root owned by another account (XDG_CACHE_HOME on a shared
    directory), or a link, is refused, for reading as for writing (before: entries were read)."""
    theirs = str(tmp_path / "theirs" / "remoteproc")
    digest = _entry(theirs)
    os.chown(theirs, 65534, 65534)
    store = pkgcache.Store(theirs)
    with pytest.raises(pkgcache.CacheError, match="not a directory of this account"):
        store.lookup(digest)
    os.chown(theirs, os.getuid(), os.getgid())
    link = str(tmp_path / "link")
    os.symlink(theirs, link)
    with pytest.raises(pkgcache.CacheError, match="not a directory of this account"):
        pkgcache.Store(link).lookup(digest)
    assert pkgcache.Store(theirs).lookup(digest) == os.path.join(theirs, digest)     # (our own: used)
    assert pkgcache.Store(str(tmp_path / "missing")).lookup(digest) is None


def test_relay_never_unpickles_what_a_host_sends():
    """The relay reads the agent's control frames as JSON only, and errors come back as (class name,
    text) rebuilt from a fixed list: a host's words cannot name a class to build here."""
    from remoteproc.errors import from_wire
    err = from_wire("os.system", "x", "h")
    assert type(err) is remoteproc.RemoteProcessError
    base = os.path.dirname(remoteproc.__file__)
    for name in ("relay/link.py", "relay/channel.py", "relay/openssh_channel.py", "relay/paramiko_channel.py",
                 "agent/frames.py", "agent/mux.py", "pkgtransfer.py"):
        with open(os.path.join(base, name)) as f:
            assert re.search(r"pickle\.loads?\(|Unpickler|marshal\.loads|eval\(", f.read()) is None, name
