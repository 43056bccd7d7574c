"""A host shared with other, unprivileged accounts: what they can see and touch of a user's remoteproc.

The threat: another account on the remote host (or on this machine) that reads what is readable
by all, lists /tmp, makes files, directories and links of predictable names there first, runs
``ps`` and connects to any Unix socket it reaches.  What it must not achieve: have the user's
agent import its code, change a package cache entry the user will load, read the user's secrets,
or stop the user's programs from working.

The accounts ``rpsec1`` (the user: a read-only home, so its package cache falls back to the temp
directory) and ``rpsec2`` (the other account) are created once and kept, as the suite's other
accounts are.  They need root: skipped without it, failed in CI.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from conftest import _unavailable

import remoteproc
from remoteproc import Pipe, RemoteProcess
from remoteproc.agent import pkgcache
from remoteproc.relay import client
from remoteproc.testing import LoopbackSSHServer, ensure_local_user, find_sshd

pytestmark = pytest.mark.timeout(120)

USER, OTHER = "rpsec1", "rpsec2"


def _accounts() -> tuple[pwd.struct_passwd, pwd.struct_passwd]:
    if os.geteuid() != 0:
        _unavailable("accounts of their own need the tests to run as root")
    try:
        for name in (USER, OTHER):
            ensure_local_user(name)
    except RuntimeError as exc:
        _unavailable("cannot set up the accounts %s, %s: %s" % (USER, OTHER, exc))
    return pwd.getpwnam(USER), pwd.getpwnam(OTHER)


def _spares(uid: int) -> list[str]:
    """The user's cache directories in /tmp: the usual name and those of a random suffix."""
    name = "remoteproc-cache-%d" % uid
    return [os.path.join("/tmp", n) for n in os.listdir("/tmp") if n == name or n.startswith(name + "-")]


def _wipe(uid: int) -> None:
    """No cache directory of the user's in /tmp, and no connection that chose one before."""
    client.shutdown()
    for path in _spares(uid):
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_host() -> Iterator[tuple[LoopbackSSHServer, pwd.struct_passwd, pwd.struct_passwd]]:
    """An sshd that logs in USER, whose home is read-only (its package cache goes to /tmp)."""
    user, other = _accounts()
    if find_sshd() is None:
        _unavailable("no sshd binary (scripts/test.sh installs openssh-server)")
    shutil.rmtree(os.path.join(user.pw_dir, ".cache"), ignore_errors=True)
    os.chmod(user.pw_dir, 0o555)
    srv = LoopbackSSHServer(users=[USER])
    try:
        try:
            srv.start()
        except (RuntimeError, OSError) as exc:
            _unavailable("cannot start a loopback sshd: %s" % exc)
        yield srv, user, other
    finally:
        client.shutdown()
        srv.stop()
        os.chmod(user.pw_dir, 0o755)
        _wipe(user.pw_uid)


@pytest.fixture
def package(tmp_path) -> Iterator[tuple[str, str]]:
    """(name, entry hash) of a package of the user's with a data file: it travels through the host's
    package cache, into an entry named by that hash."""
    root = tmp_path / "code"
    name = "rpsec_pkg_" + os.urandom(4).hex()
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("WHO = 'the user'\n")
    (root / name / "data.bin").write_bytes(os.urandom(1000))
    digest = pkgcache.digest_of(str(root))
    sys.path.insert(0, str(root))
    try:
        yield name, digest
    finally:
        sys.path.remove(str(root))


def _import(conn, name):
    import importlib

    try:
        mod = importlib.import_module(name)
        conn.send(("ok", mod.WHO, mod.__file__))
    except Exception as exc:        # (sent back whole: the test shows it)
        conn.send(("error", repr(exc)))


def _import_there(srv: LoopbackSSHServer, name: str, transport: str) -> tuple:
    parent, child = Pipe()
    p = RemoteProcess(srv.spec(USER), target=_import, args=(child, name), transport=transport, **srv.options(USER))
    p.start()
    child.close()
    try:
        assert parent.poll(30), "no answer (exit code %s)" % p.exitcode
        return parent.recv()
    finally:
        p.join(20)


def _plant(where: str, digest: str, name: str, other: pwd.struct_passwd) -> str:
    """What the other account puts in a cache directory of its own: an entry under the hash the
    user's package will have, whose code says so and leaves a mark when it runs."""
    mark = os.path.join(where, "ran")
    pkg = os.path.join(where, digest, name)
    os.makedirs(pkg)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write("open(%r, 'w').close()\nWHO = 'the other account'\n" % mark)
    with open(os.path.join(pkg, "data.bin"), "wb") as f:
        f.write(b"x" * 1000)
    for dirpath, _dirnames, filenames in os.walk(where):
        for n in [dirpath] + [os.path.join(dirpath, x) for x in filenames]:
            os.chown(n, other.pw_uid, other.pw_gid)
            os.chmod(n, 0o777 if n != mark else 0o666)
    return mark


@pytest.mark.parametrize("how", ["directory", "link"])
@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_cache_directory_another_account_made_first_in_tmp_is_never_used(shared_host, package, how, transport):
    """The cache's fallback name in /tmp is predictable (``remoteproc-cache-UID``).  Another account
    that makes it first (open to all, with an entry of its own under the user's package's hash), or
    puts a link there, gets nothing: the user's packages go to a private directory of a random name,
    and work (before: every package that needs files failed to import, for as long as the other
    account kept its directory)."""
    srv, user, other = shared_host
    name, digest = package
    _wipe(user.pw_uid)
    spare = "/tmp/remoteproc-cache-%d" % user.pw_uid
    if how == "directory":
        os.mkdir(spare)
        theirs = spare
    else:
        theirs = os.path.join(other.pw_dir, "cache-for-%s" % USER)
        shutil.rmtree(theirs, ignore_errors=True)
        os.mkdir(theirs)
        os.symlink(theirs, spare)
        os.lchown(spare, other.pw_uid, other.pw_gid)
    mark = _plant(theirs, digest, name, other)
    try:
        for _ in range(2):      # (the second time: the same private directory, found again)
            got = _import_there(srv, name, transport)
            assert got[:2] == ("ok", "the user"), got
            assert not os.path.exists(mark), "the other account's code ran"
            where = os.path.dirname(os.path.dirname(os.path.dirname(got[2])))
            assert os.path.basename(os.path.dirname(os.path.dirname(got[2]))) == digest
            assert where.startswith(spare + "-"), where
            st = os.lstat(where)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == user.pw_uid and stat.S_IMODE(st.st_mode) == 0o700
        assert len(_spares(user.pw_uid)) == 2, _spares(user.pw_uid)
        assert sorted(os.listdir(theirs)) == [digest], "the other account's directory was changed"
    finally:
        shutil.rmtree(theirs, ignore_errors=True)
        _wipe(user.pw_uid)


def test_the_users_own_cache_in_tmp_is_used_and_private(shared_host, package):
    """Without another account in the way, the usual name is the user's: 0700 (nothing in it is
    reachable by others), and nothing in it writable by others either."""
    srv, user, _other = shared_host
    name, digest = package
    _wipe(user.pw_uid)
    try:
        got = _import_there(srv, name, "paramiko")
        spare = "/tmp/remoteproc-cache-%d" % user.pw_uid
        assert got[:2] == ("ok", "the user") and got[2].startswith("%s/%s/" % (spare, digest)), got
        for dirpath, _dirnames, filenames in os.walk(spare):
            for n in [dirpath] + [os.path.join(dirpath, x) for x in filenames]:
                st = os.lstat(n)
                private = stat.S_IMODE(st.st_mode) == 0o700 if n == spare else not st.st_mode & 0o022
                assert st.st_uid == user.pw_uid and private, (n, oct(st.st_mode))
    finally:
        _wipe(user.pw_uid)


# -- the cache's own checks (in this process: the agent's module, as any account) ----------------------

def _entry(root: str, files: dict[str, bytes]) -> str:
    """An entry of ``files`` in ``root``, as the agent leaves one; returns its hash."""
    work = os.path.join(root, "work")
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(work, rel)), exist_ok=True)
        with open(os.path.join(work, rel), "wb") as f:
            f.write(data)
    digest = pkgcache.digest_of(work)
    with open(os.path.join(work, pkgcache.MANIFEST), "w") as f:
        f.write("{}")
    os.rename(work, os.path.join(root, digest))
    return digest


FILES = {"pkg/__init__.py": b"X = 1\n", "pkg/data.bin": b"d" * 100}


def test_the_directories_made_for_the_cache_are_all_private(tmp_path):
    """``~/.cache`` made for the cache is 0700 too, whatever the umask (the XDG spec's mode): one that
    others could write would let them move the cache away and put theirs in its place (before:
    ``os.makedirs`` made it 0777 less the umask: open to all under umask 0)."""
    root = str(tmp_path / "home" / ".cache" / "remoteproc")
    old = os.umask(0)
    try:
        pkgcache.Store(root).begin("0" * 64, {"name": "x"})
    finally:
        os.umask(old)
    for path in (tmp_path / "home", tmp_path / "home" / ".cache", tmp_path / "home" / ".cache" / "remoteproc"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path


def test_a_cache_in_a_directory_others_can_change_is_refused(tmp_path):
    """A cache whose parent anyone can write (and is not sticky, as /tmp is) could be renamed away
    between the hash check and the import, and another put in its place: refused (before: used)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    root = str(shared / "remoteproc")
    os.mkdir(root, 0o700)
    digest = _entry(root, FILES)
    os.chmod(shared, 0o777)
    with pytest.raises(pkgcache.CacheError, match="another account can change"):
        pkgcache.Store(root).lookup(digest)
    os.chmod(shared, 0o777 | stat.S_ISVTX)      # (sticky: only the owner renames its own)
    assert pkgcache.Store(root).lookup(digest) == os.path.join(root, digest)
    os.chmod(shared, 0o755)
    assert pkgcache.Store(root).lookup(digest) == os.path.join(root, digest)


def test_an_entry_that_is_a_link_is_never_used(tmp_path):
    """An entry name that is a link to a directory with the right content is removed, not used:
    whoever owns that directory could change it after the check (before: followed and used)."""
    root = str(tmp_path / "remoteproc")
    os.mkdir(root, 0o700)
    elsewhere = str(tmp_path / "elsewhere")
    os.mkdir(elsewhere)
    digest = _entry(elsewhere, FILES)
    os.symlink(os.path.join(elsewhere, digest), os.path.join(root, digest))
    assert pkgcache.Store(root).lookup(digest) is None
    assert not os.path.lexists(os.path.join(root, digest))
    assert os.listdir(root) == []
    assert os.path.isdir(os.path.join(elsewhere, digest))     # (a link removed: what it led to stays)


def test_an_entry_whose_bytecode_directory_is_a_link_is_never_used(tmp_path):
    """Bytecode is not content (not hashed), but Python loads it, checking only its source's time and
    size: a ``__pycache__`` that is a link, or a ``.pyc`` of another account's, makes the entry
    refused as any other link would (before: not looked at)."""
    root = str(tmp_path / "remoteproc")
    os.mkdir(root, 0o700)
    digest = _entry(root, FILES)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(str(elsewhere), os.path.join(root, digest, "pkg", "__pycache__"))
    assert pkgcache.Store(root).lookup(digest) is None
    assert not os.path.exists(os.path.join(root, digest))
    digest = _entry(root, dict(FILES, **{"pkg/__pycache__/__init__.cpython-311.pyc": b"bytecode"}))
    assert pkgcache.Store(root).lookup(digest) == os.path.join(root, digest)     # (bytecode of ours: fine)


def test_an_entry_holding_another_accounts_file_is_never_used(shared_host, tmp_path):
    """A file of another account inside an entry (a cache that was once open to it) is refused and
    the entry fetched again: that account could still change the file (before: used)."""
    _srv, _user, other = shared_host
    root = str(tmp_path / "remoteproc")
    os.mkdir(root, 0o700)
    digest = _entry(root, FILES)
    os.chown(os.path.join(root, digest, "pkg", "data.bin"), other.pw_uid, other.pw_gid)
    assert pkgcache.Store(root).lookup(digest) is None
    assert not os.path.exists(os.path.join(root, digest))
    digest = _entry(root, FILES)
    os.chown(os.path.join(root, digest, "pkg"), other.pw_uid, other.pw_gid)
    assert pkgcache.Store(root).lookup(digest) is None
    pyc = "pkg/__pycache__/__init__.cpython-311.pyc"
    digest = _entry(root, dict(FILES, **{pyc: b"bytecode"}))
    os.chown(os.path.join(root, digest, pyc), other.pw_uid, other.pw_gid)
    assert pkgcache.Store(root).lookup(digest) is None


def _as(pw: pwd.struct_passwd, fn, *args) -> object:
    """``fn(*args)`` in a child process of this one that runs as account ``pw``."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:        # pragma: no cover (the child)
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os.write(w, pickle.dumps(fn(*args)))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def _list_and_clear(root: str) -> tuple:
    return [e["hash"] for e in pkgcache.entries(root)], pkgcache.clear(root)


def test_listing_and_clearing_never_touch_another_accounts_directory(shared_host):
    """``remoteproc cache [--clear] HOST`` where the cache's name is another account's directory
    (XDG_CACHE_HOME on a shared disk) lists nothing and removes nothing there (before: its
    entries were listed as the user's, and removed where the directory let us)."""
    _srv, user, other = shared_host
    base = tempfile.mkdtemp(prefix="rpsec-")     # (where both accounts reach: not under pytest's 0700 tmp)
    os.chmod(base, 0o755)
    try:
        _listing_and_clearing(base, user, other)
    finally:
        shutil.rmtree(base)


def _listing_and_clearing(base: str, user: pwd.struct_passwd, other: pwd.struct_passwd) -> None:
    root = os.path.join(base, "remoteproc")
    os.mkdir(root)
    digest = _entry(root, FILES)
    past = time.time() - 3600
    os.utime(os.path.join(root, digest, pkgcache.MANIFEST), (past, past))
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in [dirpath] + [os.path.join(dirpath, x) for x in filenames]:
            os.chown(n, other.pw_uid, other.pw_gid)
            os.chmod(n, 0o777)
    assert _as(user, _list_and_clear, root) == ([], (0, []))
    assert os.listdir(root) == [digest]
    assert _as(other, _list_and_clear, root) == ([digest], (1, []))      # (its owner's: listed, cleared)
    assert os.listdir(root) == []


def test_no_secret_on_any_command_line_while_a_process_runs(shared_host):
    """``ps`` shows every process's command line to every account: neither ``env=`` values nor the
    arguments of a process appear in any, here or on the host, while the remote process runs."""
    srv, _user, _other = shared_host
    secret = "rpsec-" + os.urandom(8).hex()
    parent, child = Pipe()
    p = RemoteProcess(srv.spec(USER), target=_echo_env, args=(child, secret), env={"RPSEC_TOKEN": secret},
                      **srv.options(USER))
    p.start()
    child.close()
    try:
        assert parent.poll(30) and parent.recv() == secret      # (the child has both: it runs now)
        seen = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        if secret.encode() in f.read():
                            seen.append(pid)
                except OSError:
                    pass
        assert not seen, "the secret is on the command line of %s" % seen
        parent.send("done")
    finally:
        p.join(20)
    assert p.exitcode == 0


def _echo_env(conn, arg):
    import os

    conn.send(os.environ["RPSEC_TOKEN"] if os.environ["RPSEC_TOKEN"] == arg else None)
    conn.recv()



# -- host keys: a config's StrictHostKeyChecking no ----------------------------------------------------

@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_strict_host_key_checking_no_still_refuses_a_changed_key(sshd, tmp_path, transport):
    """``StrictHostKeyChecking no`` in the user's config records new keys, as accept-new, and refuses a
    changed one, for the host and for a jump host, on both transports.  With ``no``, ``ssh`` itself goes
    on to a host whose key changed (it only turns password logins off): our agent then ran the user's
    code on whoever answered, and unpickled what it sent back (before: the openssh transport did)."""
    me = sshd.users[0]
    other = LoopbackSSHServer(users=[me]).start()      # (a man in the middle: another key, a pinned name)
    try:
        pinned = tmp_path / "pinned"
        pinned.write_text(open(sshd.known_hosts).read() +
                          open(sshd.known_hosts).read().replace("]:%d " % sshd.port, "]:%d " % other.port))
        config = tmp_path / "config"
        config.write_text("Host *\n    StrictHostKeyChecking no\n")
        base = dict(key_filename=[sshd.client_key, other.client_key], known_hosts=str(pinned),
                    ssh_config=str(config), transport=transport, connect_timeout=10)
        with pytest.raises(remoteproc.HostKeyError, match="CHANGED"):
            RemoteProcess(other.spec(), target=print, **base).start()
        with pytest.raises(remoteproc.HostKeyError, match="CHANGED"):
            RemoteProcess(sshd.spec(), target=print, proxy_jump=other.spec(), **base).start()
        fresh = tmp_path / "fresh"      # (a new key: recorded, as ssh's no and accept-new do)
        p = RemoteProcess(other.spec(), target=print, **dict(base, known_hosts=str(fresh)))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert [line.split()[0] for line in fresh.read_text().splitlines()] == ["[127.0.0.1]:%d" % other.port]
    finally:
        client.shutdown()
        other.stop()
