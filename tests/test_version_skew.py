"""Version skew between the user's machine and the host, as real hosts have it.

The host account ``rpskew1`` has packages of its own in its user site-packages (what
``pip install --user`` leaves there): another cloudpickle, an older remoteproc, another release of
a package the user has too, and startup code (``usercustomize.py``, a ``.pth`` file) that prints on
stdout.  Its Python is this machine's ``/usr/bin/python3`` (the same major.minor as the suite's, so
the same-version mode).  The account is created once and kept, as the suite's other accounts are;
its user site-packages is written by each test and removed after it.  Needs root: skipped without
it, failed in CI.
"""

from __future__ import annotations

import logging
import os
import pathlib
import pwd
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import types
from collections.abc import Iterator

import pytest
from conftest import _unavailable

import remoteproc
from remoteproc import Pipe, RemoteProcess
from remoteproc.relay import client
from remoteproc.testing import LoopbackSSHServer, ensure_local_user, find_sshd

pytestmark = pytest.mark.timeout(90)

USER = "rpskew1"
TRANSPORTS = ["paramiko", "openssh"]
VERSION = "%d.%d" % sys.version_info[:2]


class HostSite:
    """The account's user site-packages: files written as the account's own."""

    def __init__(self, pw: pwd.struct_passwd) -> None:
        self.pw = pw
        self.local = os.path.join(pw.pw_dir, ".local")
        self.path = os.path.join(self.local, "lib", "python" + VERSION, "site-packages")

    def write(self, rel: str, text: str) -> str:
        path = os.path.join(self.path, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        for root, dirs, files in os.walk(self.local):
            os.lchown(root, self.pw.pw_uid, self.pw.pw_gid)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), self.pw.pw_uid, self.pw.pw_gid)
        return path

    def clear(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)


@pytest.fixture(scope="module")
def skew_host() -> Iterator[tuple[LoopbackSSHServer, HostSite]]:
    if os.geteuid() != 0:
        _unavailable("an account of its own needs the tests to run as root")
    if not os.path.exists("/usr/bin/python" + VERSION):
        pytest.skip("the host account's Python is /usr/bin/python%s, which this machine lacks" % VERSION)
    try:
        ensure_local_user(USER)
    except RuntimeError as exc:
        _unavailable("cannot set up the account %s: %s" % (USER, exc))
    if find_sshd() is None:
        _unavailable("no sshd binary (scripts/test.sh installs openssh-server)")
    site = HostSite(pwd.getpwnam(USER))
    site.clear()
    srv = LoopbackSSHServer(users=[USER])
    try:
        try:
            srv.start()
        except (RuntimeError, OSError) as exc:
            _unavailable("cannot start a loopback sshd: %s" % exc)
        yield srv, site
    finally:
        client.shutdown()
        srv.stop()
        site.clear()


@pytest.fixture
def host(skew_host) -> Iterator[tuple[LoopbackSSHServer, HostSite]]:
    """The server and the account's site-packages, empty again after the test (and a new connection
    for the next test: the agent is started once per connection, with the site as it was then)."""
    srv, site = skew_host
    site.clear()
    client.shutdown()
    try:
        yield srv, site
    finally:
        client.shutdown()
        site.clear()


def _run(srv: LoopbackSSHServer, transport: str, target, *args) -> tuple[int | None, object]:
    parent, child = Pipe()
    p = RemoteProcess(srv.spec(USER), target=target, args=(child, *args), transport=transport, **srv.options(USER))
    p.start()
    child.close()
    try:
        got = parent.recv() if parent.poll(30) else None
    except EOFError:        # (the child ended without sending)
        got = None
    p.join(30)
    return p.exitcode, got


# -- the host's Python prints on stdout as it starts ------------------------------------------------

def _shipped_and_said(conn):
    import cloudpickle

    import remoteproc.queues

    print("the child's own line", flush=True)
    conn.send((cloudpickle.__file__, cloudpickle.__version__, remoteproc.queues.__file__,
               remoteproc.Queue.__module__))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_startup_code_of_the_hosts_python_that_prints_on_stdout(host, transport, caplog, capfd):
    """Fixed: a ``usercustomize.py`` (or ``sitecustomize.py``, or a ``.pth`` file's import line) that
    printed on stdout made every start fail with "the remote command printed b'...' instead of
    starting the agent; this is a bug in remoteproc", and what it printed without a flush was
    printed again by every remote child at its exit (the agent's ``sys.stdout`` buffer, forked).
    Now the stub flushes that buffer and says where its own output starts: what came before is
    logged as a warning naming the host, and the children's stdout is theirs alone.  Startup code
    that fails is Python's own warning on stderr, logged, and the agent starts."""
    import cloudpickle

    srv, site = host
    site.write("usercustomize.py", """\
        import sys
        print("flushed by usercustomize", flush=True)
        print("left in the buffer by usercustomize")
        raise RuntimeError("a broken usercustomize")
    """)
    site.write("zz_skew.pth", "import os; os.write(1, b'written by a pth file\\n')\n")
    # another cloudpickle and an older remoteproc of the host's: the child has the user's all the same
    for name in ("cloudpickle/__init__.py", "remoteproc/__init__.py", "remoteproc/queues.py"):
        site.write(name, "__version__ = '0.1'\nraise ImportError('the host copy')\n")
    with caplog.at_level(logging.WARNING, logger="remoteproc"):
        code, got = _run(srv, transport, _shipped_and_said)
    import remoteproc.queues

    # the shipped cloudpickle: named "<remoteproc>/...", or by this side's own path when the suite
    # measures coverage (the blob then keeps real file names); never the host's copy in its user site
    shipped = ("<remoteproc>/cloudpickle/__init__.py", cloudpickle.__file__)
    assert code == 0 and got is not None and got[0] in shipped and got[1:] == (
        cloudpickle.__version__, remoteproc.queues.__file__, "remoteproc.queues"), (code, got)
    out = capfd.readouterr().out
    assert "the child's own line" in out and "usercustomize" not in out and "pth" not in out, out
    said = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert srv.spec(USER).split("@")[0] in said and "printed" in said, said
    for words in ("flushed by usercustomize", "left in the buffer by usercustomize", "written by a pth file"):
        assert words in said, said
    assert "sitecustomize.py, usercustomize.py or .pth" in said, said
    assert "Error in usercustomize" in said and "a broken usercustomize" in said, said     # (its stderr)


# -- a package of the host's own, and the user's release of it --------------------------------------

def _import_submodule(conn, name):
    import importlib

    try:
        mod = importlib.import_module(name)
        conn.send(("imported", mod.__file__, getattr(sys.modules[name.split(".")[0]], "__version__", None)))
    except ImportError as exc:
        conn.send(("refused", type(exc).__name__, str(exc)))


@pytest.fixture
def users_release(tmp_path) -> Iterator[str]:
    """The user's ``skewpkg`` 2.0, which has a module ``skewpkg.newer`` that the host's 1.0 lacks, and
    an old-style namespace package ``skewns`` (``pkgutil.extend_path``) with a plugin module."""
    root = tmp_path / "code"
    (root / "skewpkg").mkdir(parents=True)
    (root / "skewpkg" / "__init__.py").write_text("__version__ = '2.0'\n")
    (root / "skewpkg" / "newer.py").write_text("from . import __version__ as BUILT_FOR\n")
    (root / "skewns").mkdir()
    (root / "skewns" / "__init__.py").write_text("__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n")
    (root / "skewns" / "plugin.py").write_text("WHO = 'the user'\n")
    (root / "test").mkdir()       # (a package of tests, named as the standard library's test package)
    (root / "test" / "__init__.py").write_text("")
    (root / "test" / "test_skewcase.py").write_text("WHO = 'the user'\n")
    sys.path.insert(0, str(root))
    try:
        yield str(root)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] in ("skewpkg", "skewns")]:
            del sys.modules[name]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_module_the_hosts_own_release_of_a_package_lacks(host, users_release, transport):
    """Fixed: the host's own package wins (docs/modules.md), but a submodule that its release lacks
    was forwarded from the user's release into it: two releases mixed in one package.  numpy 1.26
    on the host given a numpy 2 array (its pickle names ``numpy._core.numeric``) ran numpy 2's
    ``_core`` inside numpy 1 and failed deep inside it (``module 'numpy.core.multiarray' has no
    attribute 'generic'``).  Now such an import raises ``ModuleNotFoundError`` naming the host,
    the host's package and the fix; a namespace package's parts still come from the user, and so
    do the modules of a package named as one of the host's standard library (``test``)."""
    srv, site = host
    site.write("skewpkg/__init__.py", "__version__ = '1.0'\n")
    site.write("skewns/__init__.py", "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n")
    code, got = _run(srv, transport, _import_submodule, "skewpkg.newer")
    assert code == 0 and isinstance(got, tuple) and got[:2] == ("refused", "ModuleNotFoundError"), (code, got)
    text = got[2]
    assert "No module named 'skewpkg.newer'" in text and srv.spec(USER).split("@")[0] in text, text
    assert os.path.join(site.path, "skewpkg", "__init__.py") in text and "version 1.0" in text, text
    assert "Fix: install there the release of skewpkg you have here" in text, text
    assert "install here skewpkg==1.0 (or a release both Pythons take)" in text, text
    code, got = _run(srv, transport, _import_submodule, "skewns.plugin")
    assert code == 0 and got == ("imported", os.path.join(users_release, "skewns", "plugin.py"), None), got
    # a clash with the host's standard library (its test package) is no other release: as before
    code, got = _run(srv, transport, _import_submodule, "test.test_skewcase")
    assert code == 0 and got == ("imported", os.path.join(users_release, "test", "test_skewcase.py"), None), got


def _takes(conn, obj):
    conn.send(type(obj).__name__)


@pytest.fixture
def skewrel(host, tmp_path) -> Iterator[tuple[types.ModuleType, pathlib.Path]]:
    """The host's ``skewrel`` 1.0 in its user site, and the user's 2.0, which has a class ``Newer``,
    in a site-packages of this side: (the imported user's module, its site-packages directory)."""
    _srv, site = host
    site.write("skewrel/__init__.py", "__version__ = '1.0'\n")
    installed = tmp_path / "venv" / "lib" / ("python" + VERSION) / "site-packages"
    (installed / "skewrel").mkdir(parents=True)
    (installed / "skewrel" / "__init__.py").write_text("__version__ = '2.0'\n\nclass Newer:\n    pass\n")
    sys.path.insert(0, str(installed))
    try:
        import skewrel as module

        yield module, installed
    finally:
        sys.path.remove(str(installed))
        sys.modules.pop("skewrel", None)


def test_an_object_of_a_class_the_hosts_release_lacks(host, skewrel, capfd):
    """Fixed: an argument whose class the host's own release of an installed package lacks failed
    the start with pickle's ``Can't get attribute 'Newer' on <module 'skewrel' ...>`` and a line
    whose fix was "rename your module", which is no fix for a package installed with pip.  For a
    module of the user's site-packages the line names the host's version and says to install the
    user's release there (or to take the host's copy off its path)."""
    srv, _site = host
    module, installed = skewrel
    code, got = _run(srv, "paramiko", _takes, module.Newer())
    err = capfd.readouterr().err
    assert (code, got) == (1, None), (code, got, err)
    assert "Can't get attribute 'Newer' on <module 'skewrel'" in err, err
    line = next(x for x in err.splitlines() if "has a module 'skewrel' of its own" in x)
    assert "rpskew1@" in line and "version 1.0" in line and str(installed / "skewrel" / "__init__.py") in line, line
    assert "Fix: install there the release of skewrel you have here" in line and "rename" not in line, line
    assert "install here skewrel==1.0 (or a release both Pythons take)" in line, line


def test_a_pool_task_of_a_class_the_hosts_release_lacks(host, skewrel):
    """Fixed: the same in a Pool's task failed with pickle's words alone (the worker unpickles the
    task); now its error carries the line above too."""
    srv, _site = host
    module, _installed = skewrel
    with remoteproc.Pool([srv.spec(USER)], 1, **srv.options(USER)) as pool:
        with pytest.raises(AttributeError) as info:
            pool.apply(repr, (module.Newer(),))
    text = str(info.value)
    assert "Can't get attribute 'Newer' on <module 'skewrel'" in text and "rpskew1@" in text, text
    assert "version 1.0" in text and "Fix: install there the release of skewrel you have here" in text, text
    assert "if it does not support the host's Python, install here skewrel==1.0" in text, text


# -- the host's Python replaced while a program runs ------------------------------------------------

@pytest.fixture(scope="module")
def other_python() -> Iterator[tuple[str, str]]:
    """(path, version) of a CPython of another minor version that every account can run: a copy of
    pyenv's (as tests/test_host_pythons.py makes them)."""
    from test_host_pythons import HostPythons

    if os.geteuid() != 0:
        _unavailable("the copied interpreter must be readable by other accounts: this needs root")
    root = tempfile.mkdtemp(prefix="remoteproc-skew-python-")
    os.chmod(root, 0o755)
    try:
        pythons = HostPythons(root)
        for ver in ("3.12", "3.10", "3.13"):
            if ver != VERSION and pythons.source(ver) is not None:
                yield pythons.get(ver)
                break
        else:
            pytest.skip("no CPython of another minor version under pyenv")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _end_agents_of(uid: int) -> int:
    """SIGKILL the account's Python processes (the agent and its children, started by this module's
    sshd for the account): their connection is lost.  Returns how many."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat("/proc/" + pid).st_uid == uid and "python" in os.readlink("/proc/%s/exe" % pid):
                os.kill(int(pid), signal.SIGKILL)
                n += 1
        except OSError:
            continue
    return n


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_pool_whose_host_comes_back_with_another_python(host, other_python, tmp_path, transport):
    """Fixed: a Pool (``retries``) whose host's connection was lost and whose Python was replaced
    meanwhile (another minor version: an upgrade, a module switch) sent the chunk it ran again, and
    those made before, as they had been pickled for the old Python: cloudpickle's bytecode by value,
    which the new one cannot run (the worker died of SIGSEGV: ``WorkerDiedError ... exitcode -11``).
    Now a chunk is pickled again for a worker of a Python mode it has no message for (by reference,
    as for spawn mode), or fails with the ``PicklingError`` its submission would have raised."""
    import cloudpickle

    srv, site = host
    pw = site.pw
    link = os.path.join(pw.pw_dir, "skewpy")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink("/usr/bin/python" + VERSION, link)
    os.lchown(link, pw.pw_uid, pw.pw_gid)
    (tmp_path / "skewtasks.py").write_text(textwrap.dedent("""\
        import sys
        import time

        def where(seconds):
            time.sleep(seconds)
            return "%d.%d" % sys.version_info[:2]
    """))
    sys.path.insert(0, str(tmp_path))
    import skewtasks

    cloudpickle.register_pickle_by_value(skewtasks)     # (by value: bytecode, for a host of this Python)
    pool = remoteproc.Pool([srv.spec(USER)], 1, retries=2, python="~/skewpy", transport=transport,
                           **srv.options(USER))
    try:
        assert pool.apply(skewtasks.where, (0,)) == VERSION
        result = pool.map_async(skewtasks.where, [2, 0, 0], chunksize=1)
        time.sleep(0.7)
        os.unlink(link)
        os.symlink(other_python[0], link)
        os.lchown(link, pw.pw_uid, pw.pw_gid)
        assert _end_agents_of(pw.pw_uid) > 0
        other = ".".join(other_python[1].split(".")[:2])
        assert result.get(timeout=40) == [other] * 3
    finally:
        pool.terminate()
        cloudpickle.unregister_pickle_by_value(skewtasks)
        sys.path.remove(str(tmp_path))
        del sys.modules["skewtasks"]
        os.unlink(link)
