"""Remote accounts set up as real hosts have them, beyond the login shell (tests/test_remote_accounts.py):
a home directory that is read-only or missing, no usable /dev/shm, /tmp read-only or noexec, a TMPDIR
that does not exist, low ``ulimit -u`` and ``ulimit -v``, a python3 only in ~/.local/bin or in a venv
that ~/.bashrc activates, and a home directory on a disk that fills up while a package is forwarded.

Each account runs what a user runs (a Pipe round trip, a Queue, ``Pool.map``, a forwarded module of
their own, a forwarded package that needs files: data go through the host's package cache) over both
transports; each either works or fails with a typed error naming the host, the cause and the fix, and
leaves no process of the account behind.  What needs a changed file system (/dev/shm, /tmp, a hidden
/usr/bin/python3, a small home) runs under an sshd in a mount namespace of the test's own
(``unshare --mount``): the machine's own mounts are never touched.  The accounts (``rphe*``) are
created once and kept, as rpuser is; their homes and startup files are set by the fixtures each run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from conftest import _unavailable
from proctable import cmdline, eventually, running

from remoteproc import BootstrapError, Event, Lock, Pipe, Pool, Queue, RemoteProcess, RemoteProcessError
from remoteproc.relay import client
from remoteproc.testing import LoopbackSSHServer, ensure_local_user, find_sshd
from remoteproc.testing.net import HOST
from remoteproc.testing.openssh import OpenSSHServer, _sshd_supports

pytestmark = pytest.mark.timeout(120)

TRANSPORTS = ["paramiko", "openssh"]
SYSTEM_PYTHON = os.path.realpath("/usr/bin/python3")


# -- accounts and servers -----------------------------------------------------------------------------

def _account(name: str, files: dict[str, str] | None = None, home_mode: int = 0o755) -> pwd.struct_passwd:
    """Account ``name`` (created if missing) with a home of its own holding exactly ``files`` as startup
    files (mode ``home_mode``)."""
    try:
        home = ensure_local_user(name)
    except RuntimeError as exc:
        _unavailable("cannot set up local user %r: %s" % (name, exc))
    pw = pwd.getpwnam(name)
    expected = "/home/" + name
    if home != expected:
        subprocess.run(["usermod", "-d", expected, name], check=True, capture_output=True, timeout=30)
        pw = pwd.getpwnam(name)
    os.makedirs(expected, exist_ok=True)
    os.chmod(expected, 0o755)
    os.chown(expected, pw.pw_uid, pw.pw_gid)
    for rel in (".bashrc", ".profile", ".bash_profile", ".cache"):
        target = os.path.join(expected, rel)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.unlink(target)
    for rel, text in (files or {}).items():
        target = os.path.join(expected, rel)
        with open(target, "w") as f:
            f.write(text)
        os.chown(target, pw.pw_uid, pw.pw_gid)
    os.chmod(expected, home_mode)
    return pw


def _left(uid: int, zombies: bool = False) -> list[str]:
    """The processes of ``uid`` still running on this machine (not zombies: those have exited; an
    sshd session's wait for its parent to reap it is no business of ours), as "pid: command line"."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat("/proc/" + entry).st_uid == uid and (zombies or running(int(entry))):
                    out.append("%s: %s" % (entry, cmdline(int(entry))))
            except OSError:
                pass
    return out


class Host:
    """One sshd, its accounts: spec and options per account."""

    def __init__(self, port: int, client_key: str, known_hosts: str) -> None:
        self.port, self.client_key, self.known_hosts = port, client_key, known_hosts

    def spec(self, user: str) -> str:
        return "%s@%s:%d" % (user, HOST, self.port)

    def options(self, user: str, transport: str, **kw: object) -> dict:
        return dict(port=self.port, username=user, key_filename=self.client_key, known_hosts=self.known_hosts,
                    transport=transport, connect_timeout=5, **kw)


@contextlib.contextmanager
def namespace_sshd(users: list[str], mounts: list[str]) -> Iterator[Host]:
    """An sshd for ``users`` in a mount namespace of its own, where the shell lines ``mounts`` ran first
    (as root): what its sessions see, and nothing else on this machine.  Its work directory is under
    /var/tmp, out of the way of a /tmp the lines replace."""
    sshd = find_sshd()
    if sshd is None:
        _unavailable("no sshd binary (scripts/test.sh installs openssh-server)")
    if shutil.which("unshare") is None:
        _unavailable("no unshare (util-linux)")
    workdir = tempfile.mkdtemp(prefix="remoteproc-nssshd-", dir="/var/tmp")
    os.chmod(workdir, 0o711)
    setup = os.path.join(workdir, "ns-setup.sh")
    with open(setup, "w") as f:
        f.write("set -e\n%s\nexec %s \"$@\"\n" % ("\n".join(mounts), sshd))
    wrapper = os.path.join(workdir, "sshd-in-namespace")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec unshare --mount --propagation private /bin/sh %s \"$@\"\n" % setup)
    os.chmod(wrapper, 0o755)
    first = ["PerSourcePenalties no"] if _sshd_supports(sshd, "PerSourcePenalties") else []
    server = OpenSSHServer(wrapper, workdir, users, os.path.join(workdir, "client_key"), config_first=first)
    try:
        try:
            server.start()
        except RuntimeError as exc:
            _unavailable("cannot start an sshd in a mount namespace: %s" % exc)
        known_hosts = os.path.join(workdir, "known_hosts")
        with open(known_hosts, "w") as f:
            f.write("[%s]:%d %s\n" % (HOST, server.port, server.host_public))
        yield Host(server.port, server.client_key, known_hosts)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def plain_sshd(users: list[str]) -> Iterator[Host]:
    if find_sshd() is None:
        _unavailable("no sshd binary (scripts/test.sh installs openssh-server)")
    srv = LoopbackSSHServer(users=users)
    try:
        srv.start()
    except (RuntimeError, OSError) as exc:
        _unavailable("cannot start a loopback sshd: %s" % exc)
    try:
        yield Host(srv.port, srv.client_key, srv.known_hosts)
    finally:
        srv.stop()


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        _unavailable("the rphe* accounts and mount namespaces need the tests to run as root")


# -- what a user runs ---------------------------------------------------------------------------------

def _work(conn, q, lock, ev, mod, pkg):
    """A Pipe round trip, a Queue, a Lock and an Event of the parent's, a forwarded module of the
    user's and a forwarded package with a data file (through the host's package cache)."""
    import importlib

    x = conn.recv()
    with lock:
        q.put(x * 2)
    ev.set()
    try:
        p = importlib.import_module(pkg)
        got = ("ok", p.size(), p.__file__)
    except ImportError as exc:
        got = ("ImportError", str(exc))
    conn.send((importlib.import_module(mod).triple(x), got))


def _square(x):
    return x * x


@pytest.fixture(scope="module")
def user_code(tmp_path_factory):
    """(module name, small package name, large package name): code of the user's own, on sys.path here.
    The packages carry a data file (incompressible: 1000 bytes, 3 MiB), so they travel through the
    host's package cache."""
    root = tmp_path_factory.mktemp("usercode")
    tag = os.urandom(4).hex()
    mod, small, large = "rphe_mod_" + tag, "rphe_small_" + tag, "rphe_large_" + tag
    (root / (mod + ".py")).write_text("def triple(x):\n    return 3 * x\n")
    for name, size in ((small, 1000), (large, 3 << 20)):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            "import os\n\ndef size():\n    return os.path.getsize(os.path.join(os.path.dirname(__file__), "
            "'blob.bin'))\n")
        (root / name / "blob.bin").write_bytes(os.urandom(size))
    sys.path.insert(0, str(root))
    try:
        yield mod, small, large
    finally:
        sys.path.remove(str(root))


def _call(spec: str, opts: dict, user_code, pkg: str | None = None) -> tuple:
    """``_work`` on the host: (what the module computed, what importing the package gave)."""
    mod, small, _large = user_code
    parent, child = Pipe()
    q, ev = Queue(), Event()
    p = RemoteProcess(spec, target=_work, args=(child, q, Lock(), ev, mod, pkg or small), **opts)
    p.start()
    child.close()
    parent.send(7)
    assert q.get(timeout=20) == 14
    assert ev.wait(20)
    assert parent.poll(20), "no answer over the Pipe (exit code %s)" % p.exitcode
    got = parent.recv()
    p.join(20)
    assert p.exitcode == 0
    assert got[0] == 21
    return got[1]


def _ask(spec: str, opts: dict, target, *args):
    """What ``target(conn, *args)`` sends back from the host."""
    parent, child = Pipe()
    p = RemoteProcess(spec, target=target, args=(child, *args), **opts)
    p.start()
    child.close()
    assert parent.poll(20), "no answer from %s (exit code %s)" % (target.__name__, p.exitcode)
    got = parent.recv()
    p.join(20)
    assert p.exitcode == 0
    return got


def _run(spec: str, opts: dict, user_code) -> str:
    """What a user does (raises what that raises); returns where the small package landed."""
    got = _call(spec, opts, user_code)
    assert got[:2] == ("ok", 1000), got
    with Pool(spec, 2, **opts) as pool:
        assert pool.map_async(_square, range(8)).get(timeout=30) == [x * x for x in range(8)]
    return got[2]


def _nothing_left(pw: pwd.struct_passwd, zombies: bool = False) -> None:
    """Once the connections close, no process of the account runs on the host (bounded wait); with
    ``zombies``, none is even left to reap (a process limit counts those too)."""
    client.shutdown()
    assert eventually(lambda: not _left(pw.pw_uid, zombies), 15), _left(pw.pw_uid, zombies)


# -- accounts of a plain sshd -------------------------------------------------------------------------------

PLAIN = {
    "rpheroh": ({}, 0o555),                                                      # a. a read-only home
    "rphenoh": ({}, 0o755),                                                      # a. no home (moved below)
    # c. TMPDIR missing, d. few processes and 400 MB of address space
    "rphelimits": ({".bashrc": "export TMPDIR=/nonexistent/tmp\nulimit -u 30\nulimit -v 400000\n"}, 0o755),
}
MISSING_HOME = "/nonexistent/rphenoh"


def _spare_cache(pw: pwd.struct_passwd) -> str:
    """Where the package cache goes for an account that cannot write its home (agent/pkgcache.py)."""
    return "/tmp/remoteproc-cache-%d" % pw.pw_uid


@pytest.fixture(scope="module")
def plain_host():
    accounts = {name: _account(name, files, mode) for name, (files, mode) in PLAIN.items()}
    subprocess.run(["usermod", "-d", MISSING_HOME, "rphenoh"], check=True, capture_output=True, timeout=30)
    accounts["rphenoh"] = pwd.getpwnam("rphenoh")
    for pw in accounts.values():
        shutil.rmtree(_spare_cache(pw), ignore_errors=True)
    try:
        with plain_sshd(list(accounts)) as host:
            yield host, accounts
    finally:
        subprocess.run(["usermod", "-d", "/home/rphenoh", "rphenoh"], check=True, capture_output=True, timeout=30)
        os.chmod("/home/rpheroh", 0o755)
        for pw in accounts.values():
            shutil.rmtree(_spare_cache(pw), ignore_errors=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["rpheroh", "rphenoh"])
def test_a_home_that_is_read_only_or_missing(plain_host, user_code, name, transport):
    """Everything works; packages that need files go to a cache of the account's in the temp dir."""
    host, accounts = plain_host
    try:
        where = _run(host.spec(name), host.options(name, transport), user_code)
        assert where.startswith(_spare_cache(accounts[name]) + "/"), where
        assert os.stat(_spare_cache(accounts[name])).st_mode & 0o777 == 0o700
    finally:
        _nothing_left(accounts[name])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_missing_tmpdir_and_limits_that_leave_room(plain_host, user_code, transport):
    host, accounts = plain_host
    try:
        where = _run(host.spec("rphelimits"), host.options("rphelimits", transport), user_code)
        assert where.startswith("/home/rphelimits/.cache/remoteproc/"), where
    finally:
        _nothing_left(accounts["rphelimits"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_limits_that_stop_a_start_are_named(plain_host, user_code, transport, capfd):
    """``ulimit -u`` or ``-v`` too low to start: a typed error, at once, naming the host, the limit and the
    fix (the limits are lowered by ``setup=`` lines, as a startup file of the account would)."""
    host, accounts = plain_host
    spec = host.spec("rphelimits")

    def fails(setup: str, **kw: object) -> str:
        p = RemoteProcess(spec, target=_square, args=(2,), **host.options("rphelimits", transport, setup=setup, **kw))
        with pytest.raises(RemoteProcessError) as info:
            p.start()
        said = str(info.value)
        assert spec in said and "Fix: raise" in said and "limits.conf" in said, said
        _nothing_left(accounts["rphelimits"], zombies=True)    # (a process limit counts them all)
        return said

    try:
        _nothing_left(accounts["rphelimits"], zombies=True)
        assert "Cannot fork" in fails("ulimit -u 2")                        # the shell cannot fork
        assert "(ulimit -u 2," in fails("ulimit -u 2", python="python3")    # the agent cannot fork the child
        assert "ulimit -v" in fails("ulimit -v 8000")                       # python3 cannot load (or sh fork)
        assert "ulimit -v" in fails("ulimit -v 20000")                      # the agent runs out of memory
        # the child forks, but cannot start its thread: it fails as a local child whose start fails
        capfd.readouterr()
        p = RemoteProcess(spec, target=_square, args=(2,), **host.options("rphelimits", transport,
                                                                          setup="ulimit -u 3"))
        p.start()
        p.join(20)
        assert p.exitcode == 1
        err: list[str] = []     # (what each read takes is gone from the next: keep it all)
        assert eventually(lambda: err.append(capfd.readouterr().err) or "limit on processes" in "".join(err), 10), err
    finally:
        _nothing_left(accounts["rphelimits"])


# -- in mount namespaces of the test's own -----------------------------------------------------------------

@pytest.fixture(scope="module")
def shm_host():
    """b. /dev/shm and c. /tmp read-only (no SemLock, no temp file there), and f. an account whose home is
    a 1 MiB disk."""
    accounts = {"rphenoshm": _account("rphenoshm"), "rphefull": _account("rphefull")}
    full = accounts["rphefull"]
    mounts = ["mount -t tmpfs -o ro,size=64k none /dev/shm", "mount -t tmpfs -o ro,size=64k none /tmp",
              "mount -t tmpfs -o size=1m,mode=0755,uid=%d,gid=%d none %s" % (full.pw_uid, full.pw_gid, full.pw_dir)]
    with namespace_sshd(list(accounts), mounts) as host:
        yield host, accounts


def _shm_and_tmp(conn):
    import multiprocessing
    import tempfile

    said = []
    try:
        multiprocessing.Lock()
    except OSError as exc:
        said.append("SemLock: %s" % exc)
    conn.send((said, tempfile.gettempdir()))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_dev_shm_and_a_read_only_tmp(shm_host, user_code, transport):
    host, accounts = shm_host
    opts = host.options("rphenoshm", transport)
    try:
        said, tmp = _ask(host.spec("rphenoshm"), opts, _shm_and_tmp)
        assert said and tmp != "/tmp", (said, tmp)  # (the host's own multiprocessing has no SemLock here)
        _run(host.spec("rphenoshm"), opts, user_code)
    finally:
        _nothing_left(accounts["rphenoshm"])


def _disk(conn):
    import os

    root = os.path.expanduser("~/.cache/remoteproc")
    st = os.statvfs(os.path.expanduser("~"))
    conn.send((st.f_bavail * st.f_frsize, sorted(os.listdir(root)) if os.path.isdir(root) else None))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_home_disk_that_fills_while_a_package_travels(shm_host, user_code, transport):
    host, accounts = shm_host
    spec, opts = host.spec("rphefull"), host.options("rphefull", transport)
    _mod, small, large = user_code
    try:
        free, _ = _ask(spec, opts, _disk)
        _run(spec, opts, user_code)
        got = _call(spec, opts, user_code, large)
        assert got[0] == "ImportError", got
        assert spec in got[1] and "No space left" in got[1] and "Fix: free space" in got[1], got
        assert "XDG_CACHE_HOME" in got[1], got

        after, names = _ask(spec, opts, _disk)
        assert not [n for n in names if not n.startswith(tuple("0123456789abcdef"))], names
        assert after > free - 200_000, (free, after)    # (what failed was removed: the small entry stays)
        assert _call(spec, opts, user_code)[:2] == ("ok", 1000)
    finally:
        _nothing_left(accounts["rphefull"])


@pytest.fixture(scope="module")
def hidden_python_host():
    """e. No python3 on the system (``/usr/bin/python3`` hidden in the namespace), and c. /tmp noexec: one
    account has its python3 in ~/.local/bin, put on PATH by ~/.profile only (which ``bash -c`` does not
    read), one only in a venv that ~/.bashrc activates, one only in that venv, activated by ~/.profile."""
    local = _account("rphelocal", {".profile": 'PATH="$HOME/.local/bin:$PATH"\n'})
    venv = _account("rphevenv", {".bashrc": ". ~/venv/bin/activate\n"})
    vprof = _account("rphevprof", {".profile": ". /home/rphevenv/venv/bin/activate\n"})
    os.makedirs(os.path.join(local.pw_dir, ".local", "bin"), exist_ok=True)
    shutil.copy2(SYSTEM_PYTHON, os.path.join(local.pw_dir, ".local", "bin", "python3"))
    for where in (".local", ".local/bin", ".local/bin/python3"):
        os.chown(os.path.join(local.pw_dir, where), local.pw_uid, local.pw_gid)
    if not os.path.exists(os.path.join(venv.pw_dir, "venv", "bin", "python3")):
        made = subprocess.run(["runuser", "-u", "rphevenv", "--", SYSTEM_PYTHON, "-m", "venv", "--copies",
                               "--without-pip", os.path.join(venv.pw_dir, "venv")], capture_output=True, timeout=60)
        if made.returncode:
            _unavailable("cannot make a venv with %s (python3-venv): %s" % (SYSTEM_PYTHON, made.stderr[-500:]))
    hidden = tempfile.mkdtemp(prefix="remoteproc-nopython-", dir="/var/tmp")
    empty = os.path.join(hidden, "python3")
    open(empty, "w").close()
    mounts = ["mount -t tmpfs -o noexec,nosuid,nodev,mode=1777 none /tmp",
              "mount --bind %s %s" % (empty, SYSTEM_PYTHON)]
    try:
        with namespace_sshd(["rphelocal", "rphevenv", "rphevprof"], mounts) as host:
            yield host, {"rphelocal": local, "rphevenv": venv, "rphevprof": vprof}
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_python_only_in_a_venv_that_bashrc_activates(hidden_python_host, user_code, transport):
    host, accounts = hidden_python_host
    try:
        _run(host.spec("rphevenv"), host.options("rphevenv", transport), user_code)
    finally:
        _nothing_left(accounts["rphevenv"])


def _where(conn):
    import sys

    conn.send(sys.executable)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_python_only_in_local_bin_that_profile_puts_on_path(hidden_python_host, user_code, transport):
    """~/.profile is not read for an ssh command: the python3 in ~/.local/bin is found all the same."""
    host, accounts = hidden_python_host
    spec, opts = host.spec("rphelocal"), host.options("rphelocal", transport)
    try:
        _run(spec, opts, user_code)
        parent, child = Pipe()
        p = RemoteProcess(spec, target=_where, args=(child,), **opts)
        p.start()
        assert parent.poll(20) and parent.recv() == "/home/rphelocal/.local/bin/python3"
        p.join(20)
        assert p._popen.found == "~/.local/bin/python3"     # type: ignore[attr-defined]
    finally:
        _nothing_left(accounts["rphelocal"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_python_only_in_a_venv_that_profile_activates(hidden_python_host, user_code, transport):
    """No python3 the command can find: the error names ~/.profile and python=, which fixes it."""
    host, accounts = hidden_python_host
    spec = host.spec("rphevprof")
    try:
        p = RemoteProcess(spec, target=_square, args=(2,), **host.options("rphevprof", transport))
        with pytest.raises(BootstrapError) as info:
            p.start()
        said = str(info.value)
        assert spec in said and "no python3" in said and "~/.profile" in said and "python=" in said, said
        _run(spec, host.options("rphevprof", transport, python="/home/rphevenv/venv/bin/python3"), user_code)
    finally:
        _nothing_left(accounts["rphevprof"])
