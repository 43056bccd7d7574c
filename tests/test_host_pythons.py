"""Hosts that are not twins of this machine: the account's only Python is another CPython.

The interpreters are pyenv's CPython 3.8 ... 3.13 (and 2.7, 3.6, 3.7, which must be refused),
copied by the ``host_pythons`` fixture to a directory every account can read (pyenv's own tree
under /root is not), each behind a small ``python3`` script that finds its shared libpython
there. The hosts are the suite's loopback sshd (``rpuser``), named with ``python=``, and
one account (``rphostpy``) whose login PATH puts such a ``python3`` first, as a user would
set it up. Spawn mode is what runs there (docs/python-versions.md); the user programs are
script files with ``if __name__ == "__main__":``, run as their own processes.
"""

from __future__ import annotations

import glob
import json
import multiprocessing.pool
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import pytest
from conftest import _unavailable
from host_python_targets import (
    data_of,
    fill_manager,
    local_error,
    local_lambda,
    local_row,
    path_from_queue,
    path_of,
    path_to_queue,
    paths_back,
    try_import,
)
from own_sshd import account_whose_python3_is, run_check
from remote_call import call as _call

from remoteproc import RemoteProcess, bootstrap
from remoteproc.errors import BootstrapError

PYENV = os.path.join(os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv"), "versions")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(bootstrap.__file__)))
OURS = "%d.%d" % sys.version_info[:2]
#: not copied: what no test here runs, to keep the copies small (about 60 MB a version)
_SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "lib2to3",
         "pydoc_data", "__phello__"}


class HostPythons:
    """Copies of pyenv's interpreters in one directory readable by every account, made on demand."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.made: dict[str, tuple[str, str]] = {}

    def source(self, ver: str) -> str | None:
        """pyenv's newest X.Y.* with its interpreter, or None."""
        found = [d for d in glob.glob(os.path.join(PYENV, ver + ".*"))
                 if re.fullmatch(re.escape(ver) + r"\.\d+", os.path.basename(d))
                 and os.path.isfile(os.path.join(d, "bin", "python" + ver))]
        found.sort(key=lambda d: int(os.path.basename(d).rsplit(".", 1)[1]))
        return found[-1] if found else None

    def get(self, ver: str) -> tuple[str, str]:
        """(path of a ``python3`` that runs CPython ``ver`` for any account, its full version)."""
        if ver == OURS:
            pytest.skip("CPython %s is this Python, not another version" % ver)
        if ver not in self.made:
            src = self.source(ver)
            if src is None:     # (a machine without pyenv's versions: test_python_versions.py has pypy3)
                pytest.skip("no CPython %s under %s (pyenv install %s)" % (ver, PYENV, ver))
            dst = os.path.join(self.root, ver)
            if os.path.isdir(dst):          # (a copy that failed half-way: again)
                shutil.rmtree(dst)
            os.makedirs(os.path.join(dst, "bin"))
            shutil.copy2(os.path.join(src, "bin", "python" + ver), os.path.join(dst, "bin"))
            shutil.copytree(os.path.join(src, "lib"), os.path.join(dst, "lib"), symlinks=True,
                            ignore=lambda _d, names: [n for n in names if n in _SKIP or n.startswith("config-")
                                                      or n.endswith(".a")])
            # pyenv links its interpreters to libpython by an absolute RUNPATH under /root: the copy
            # finds its own (a module system's LD_LIBRARY_PATH, as users have them)
            wrapper = os.path.join(dst, "python3")
            with open(wrapper, "w") as f:
                f.write('#!/bin/sh\nLD_LIBRARY_PATH=%s/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} '
                        'exec %s/bin/python%s "$@"\n' % (dst, dst, ver))
            os.chmod(wrapper, 0o755)
            self.made[ver] = (wrapper, os.path.basename(src))
        return self.made[ver]


@pytest.fixture(scope="module")
def host_pythons():
    if os.geteuid() != 0:
        _unavailable("the copied interpreters must be readable by other accounts: this needs root")
    root = tempfile.mkdtemp(prefix="remoteproc-pythons-")
    os.chmod(root, 0o755)
    try:
        yield HostPythons(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


ACCOUNT = "rphostpy"


@pytest.fixture(scope="module")
def account_313(host_pythons):
    """(server, user, version): an account whose login PATH finds CPython 3.13 first as ``python3``."""
    wrapper, full = host_pythons.get("3.13")
    with account_whose_python3_is(ACCOUNT, wrapper) as server:
        yield server, ACCOUNT, full


# -- a user's program, from a script file: everything a multiprocessing user does ------------------

USER_MODULE = '''
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


class MyError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
'''

USER_PACKAGE = '''
import sys
from hp_usermod import Point


def scale(conn, p, k):
    conn.send((Point(p.x * k, p.y * k), tuple(sys.version_info[:2])))
'''

USER_PROGRAM = r'''
import collections, decimal, fractions, json, os, signal, sys, time
import remoteproc
from remoteproc import Event, Executor, JoinableQueue, Lock, Pipe, Pool, Queue, RemoteProcess, Value
import hp_usermod
import hp_userpkg


class Box:
    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(other).__name__ == "Box" and other.v == self.v


def echo(conn):
    for obj in iter(conn.recv, "stop"):
        conn.send(obj)
    conn.send((Box(1), hp_usermod.Point(1, 2), hp_usermod.MyError(5, "remote"), tuple(sys.version_info[:2])))


def exit3():
    sys.exit(3)


def fail():
    raise hp_usermod.MyError(7, "boom")


def hard_exit():
    os._exit(7)


def exit_none():
    sys.exit()


def sleeper(conn):
    conn.send(os.getpid())
    time.sleep(60)


def relay(qin, qout, ev_in, ev_out, jq):
    for item in iter(qin.get, None):
        qout.put(item)
    if ev_in.wait(30):
        ev_out.set()
    jq.get()
    jq.task_done()


def count(lock, val, n):
    for _ in range(n):
        with lock:
            val.value += 1


def fill(d, l):
    d["v"] = tuple(sys.version_info[:2])
    l.append(Box(3))


def square(x):
    return x * x


def maybe_fail(x):
    if x == 3:
        raise hp_usermod.MyError(3, "three")
    return x


def toml_or_not(conn):
    try:
        import tomllib
        conn.send("tomllib")
    except ModuleNotFoundError:
        conn.send("fallback")


def use_idna(conn):
    import idna
    conn.send(idna.encode("bücher.example"))


if __name__ == "__main__":
    host, opts = json.loads(sys.argv[1])
    bad = {}

    def start(target, *args):
        p = RemoteProcess(host, target=target, args=args, **opts)
        p.start()
        return p

    a, b = Pipe()
    p = start(echo, b)
    b.close()
    values = [0, -1, 2 ** 100, 1.5, 3 + 4j, "h\u00e9llo \u2713", b"\x00\xff", bytearray(b"ab"), None, [1, [2]],
              (1, "a"), {"k": {"n": [1]}}, {1, 2}, frozenset({3}), hp_usermod.Point(3, 4), Box({"x": 1}),
              decimal.Decimal("2.5"), fractions.Fraction(2, 3), collections.OrderedDict(b=2), range(3),
              b"x" * 200000]
    for v in values:
        a.send(v)
        got = a.recv()
        if got != v or type(got).__name__ != type(v).__name__:
            bad.setdefault("roundtrip", []).append(repr(v)[:40])
    for e in (ValueError("x", 1), hp_usermod.MyError(1, "d")):
        a.send(e)
        got = a.recv()
        if type(got) is not type(e) or got.args != e.args:
            bad.setdefault("roundtrip", []).append(repr(e))
    a.send("stop")
    box, point, err, remote_version = a.recv()
    if not (isinstance(box, Box) and point == hp_usermod.Point(1, 2) and isinstance(err, hp_usermod.MyError)
            and err.code == 5):
        bad["from the child"] = repr((box, point, err))
    p.join(30)
    if p.exitcode != 0:
        bad["echo exit"] = p.exitcode

    codes = {}
    for f in (exit3, fail, hard_exit, exit_none):
        q = start(f)
        q.join(30)
        codes[f.__name__] = q.exitcode
    for how in ("terminate", "kill"):
        a, b = Pipe()
        q = start(sleeper, b)
        if a.recv() != q.pid:
            bad["pid"] = q.pid
        getattr(q, how)()
        q.join(30)
        codes[how] = q.exitcode
    if codes != {"exit3": 3, "fail": 1, "hard_exit": 7, "exit_none": 0, "terminate": -15, "kill": -9}:
        bad["exit codes"] = codes

    qin, qout, e1, e2, jq = Queue(), Queue(), Event(), Event(), JoinableQueue()
    q = start(relay, qin, qout, e1, e2, jq)
    items = [1, "s", hp_usermod.Point(1, 1), Box(2)]
    for item in items + [None]:
        qin.put(item)
    got = [qout.get(timeout=30) for _ in items]
    e1.set()
    jq.put("job")
    jq.join()
    if got != items or not e2.wait(30):
        bad["queue, event"] = repr(got)
    q.join(30)

    lock, val = Lock(), Value("i", 0)
    ps = [start(count, lock, val, 20) for _ in range(2)]
    for q in ps:
        q.join(60)
    if val.value != 40:
        bad["lock"] = val.value

    with remoteproc.Manager() as manager:
        d, lst = manager.dict(), manager.list()
        q = start(fill, d, lst)
        q.join(30)
        if q.exitcode != 0 or d.get("v") != remote_version or list(lst) != [Box(3)]:
            bad["manager"] = (q.exitcode, dict(d), list(lst))

    with Pool([host], processes_per_host=2, **opts) as pool:
        if pool.map(square, range(20)) != [x * x for x in range(20)]:
            bad["pool.map"] = True
        if sorted(pool.imap_unordered(square, range(8))) != [x * x for x in range(8)]:
            bad["imap_unordered"] = True
        oks, errs = [], []
        r = pool.apply_async(maybe_fail, (3,), callback=oks.append, error_callback=errs.append)
        try:
            r.get(30)
            bad["apply_async"] = "no error"
        except hp_usermod.MyError as exc:
            if exc.code != 3:
                bad["apply_async"] = repr(exc)
        pool.apply_async(maybe_fail, (2,), callback=oks.append, error_callback=errs.append).get(30)
        time.sleep(0.2)
        if oks != [2] or [type(e).__name__ for e in errs] != ["MyError"]:
            bad["callbacks"] = (oks, repr(errs))
    with Executor([host], processes_per_host=1, **opts) as ex:
        if list(ex.map(square, range(5))) != [0, 1, 4, 9, 16] or ex.submit(Box, 5).result(30) != Box(5):
            bad["executor"] = True
        try:
            ex.submit(maybe_fail, 3).result(30)
            bad["executor error"] = "none"
        except hp_usermod.MyError:
            pass

    a, b = Pipe()
    q = start(hp_userpkg.scale, b, hp_usermod.Point(1, 2), 3)
    if a.recv()[0] != hp_usermod.Point(3, 6):
        bad["module forwarding"] = True
    q.join(30)
    a, b = Pipe()
    q = start(toml_or_not, b)
    expected = "tomllib" if tuple(remote_version) >= (3, 11) else "fallback"
    if a.recv() != expected:
        bad["tomllib"] = expected
    q.join(30)
    try:
        import idna     # (a pure-Python PyPI package, installed here only)
    except ImportError:
        idna = None
    if idna is not None:
        a, b = Pipe()
        q = start(use_idna, b)
        if a.recv() != b"xn--bcher-kva.example":
            bad["idna"] = True
        q.join(30)
    print(json.dumps({"bad": bad, "version": list(remote_version)}))
'''


def _write_program(scripts) -> str:
    directory = os.path.dirname(scripts("hp_usermod.py", USER_MODULE))
    pkg = os.path.join(directory, "hp_userpkg")         # the user's own package, installed nowhere
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write(textwrap.dedent(USER_PACKAGE))
    return scripts("hp_program.py", USER_PROGRAM)


#: (version, transport): each version's program runs once, the transports shared among them
PROGRAMS = [("3.8", "paramiko"), ("3.12", "openssh"), ("3.13", "paramiko")]


def test_a_user_program_runs_on_other_cpythons_as_under_multiprocessing(host_pythons, plain_user_host,
                                                                         plain_user_options, scripts):
    """Pipe round trips (numbers, str, bytes, containers, the user's classes from their module and from
    the script, exceptions), exit codes, terminate/kill, Queue, JoinableQueue, Event, Lock + Value, a
    Manager's dict and list, Pool (map, imap_unordered, apply_async with error_callback), Executor, the
    user's own package and a PyPI package installed only here: all as a local run gives them. The
    programs run at once, each its own process (and relay), as three users would."""
    if shutil.which("ssh") is None:
        _unavailable("no ssh client for transport='openssh'")
    program = _write_program(scripts)
    env = dict(os.environ, PYTHONPATH=REPO)
    runs = {}
    for ver, transport in PROGRAMS:
        wrapper, full = host_pythons.get(ver)
        options = dict(plain_user_options, python=wrapper)
        if transport == "openssh":
            options["transport"] = "openssh"
        runs[ver] = (full, subprocess.Popen([sys.executable, program, json.dumps([plain_user_host, options])],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                            cwd=os.path.dirname(program)))
    got, want = {}, {}
    try:
        for ver, (full, proc) in runs.items():
            out, err = proc.communicate(timeout=150)
            assert proc.returncode == 0, "Python %s: %s" % (ver, err[-4000:])
            got[ver] = json.loads(out.strip().splitlines()[-1])
            want[ver] = {"bad": {}, "version": [int(x) for x in full.split(".")[:2]]}
    finally:
        for _full, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    assert got == want


# -- what was broken: each test names the fix ------------------------------------------------------------

@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_manager_proxies_work_in_spawn_mode(host_pythons, plain_user_host, plain_user_options):
    """The spawn pickler bridged Connections but not manager proxies: the child connected to the
    manager's Unix socket of *this* machine itself (PermissionError on loopback, FileNotFoundError
    on a real host). Fixed in reduction._SpawnPickler, as the same-version pickler does it.
    The first start on a host pickles for the same version, then again for spawn mode: the link of
    that first pickling is released by the finalizer while its thread sees EOF and released it too,
    both closing one fd (an "Exception in thread remoteproc-manager-link": EBADF). Fixed in
    managers._Link._release."""
    import remoteproc

    wrapper, _full = host_pythons.get("3.13")
    with remoteproc.Manager() as manager:
        d, items = manager.dict(), manager.list()
        p = RemoteProcess(plain_user_host, target=fill_manager, args=(d, items), python=wrapper, **plain_user_options)
        p.start()
        p.join(30)
        assert p.exitcode == 0 and p._popen.mode == "spawn"
        assert dict(d) == {"python": (3, 13)} and list(items) == ["from the child"]


def test_a_pool_result_plain_pickle_refuses_fails_its_task_as_with_spawn(host_pythons, plain_user_host,
                                                                        plain_user_options):
    """On another Python a result goes by reference only, as spawn's pool sends it: a class made by
    the task, a lambda, an exception class of the task's own fail the task (MaybeEncodingError, the
    error as text).  Before, the worker fell back to cloudpickle, whose bytecode of the host's
    Python this one ran: a segfault of the user's program on 3.12 and 3.13 hosts."""
    import remoteproc

    wrapper, _full = host_pythons.get("3.13")
    with remoteproc.Pool([plain_user_host], 1, python=wrapper, **plain_user_options) as pool:
        with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="Row"):
            pool.map(local_row, [1, 2])
        with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="lambda"):
            pool.apply(local_lambda, (3,))
        with pytest.raises(remoteproc.RemoteProcessError, match="job 7 failed") as info:
            pool.apply(local_error, (7,))
        assert plain_user_host in str(info.value) and "JobFailed" in str(info.value.__cause__)
        assert pool.map(abs, [-4]) == [4]      # (the worker goes on)
    with remoteproc.Executor([plain_user_host], 1, python=wrapper, **plain_user_options) as executor:
        with pytest.raises(Exception, match="lambda"):
            executor.submit(local_lambda, 2).result(60)


@pytest.mark.parametrize("ver,name", [("3.8", "zoneinfo"), ("3.10", "tomllib"), ("3.13", "imp")])
def test_this_pythons_stdlib_is_not_forwarded_to_another_version(host_pythons, plain_user_host, plain_user_options,
                                                                 ver, name):
    """A standard-library module this Python has and the host's Python has not (new in a later version,
    or removed) was forwarded from *this* version's stdlib: 3.11's ``zoneinfo`` then failed on 3.8 at
    its first use, ``imp`` ran 3.11's code on 3.13, and ``try: import tomllib / except
    ModuleNotFoundError`` never took its fallback. As spawn under that Python: ModuleNotFoundError."""
    wrapper, _full = host_pythons.get(ver)
    got = _call(plain_user_host, dict(plain_user_options, python=wrapper), try_import, name)
    assert got == ("ModuleNotFoundError", "No module named %r" % name)


@pytest.mark.parametrize("ver", [OURS, "3.9"])
def test_a_module_of_the_users_that_the_host_has_another_of_is_explained(host_pythons, plain_user_host,
                                                                        plain_user_options, scripts, tmp_path,
                                                                        monkeypatch, capfd, ver):
    """The user's target in ``test.py`` beside their script, on a host whose standard library has a
    ``test`` package: the host's module wins (forwarded ones come last), and the child said only
    ``AttributeError: Can't get attribute 'work' on <module 'test' from '/usr/lib/python3.11/test/...'>``.
    Now a line names the host, both modules and the fix (agent/child.py, ``_shadowed``)."""
    import uuid

    name = "rpshadow_" + uuid.uuid4().hex[:8]
    theirs = scripts(name + ".py", "SOMETHING_ELSE = 1\n")          # the host's own module of that name
    python = host_pythons.get(ver)[0] if ver != OURS else "python3"
    options = dict(plain_user_options, python="env PYTHONPATH=%s %s" % (os.path.dirname(theirs), python))
    (tmp_path / (name + ".py")).write_text("def work():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    user_module = __import__(name)
    try:
        p = RemoteProcess(plain_user_host, target=user_module.work, **options)
        p.start()
        p.join(60)
    finally:
        sys.modules.pop(name, None)
    err = capfd.readouterr().err
    assert p.exitcode == 1, err
    line = [x for x in err.splitlines() if "of its own" in x]
    assert line, err
    assert plain_user_host in line[0] and "module %r of its own (%s)" % (name, theirs) in line[0]
    assert "instead of yours (%s)" % (tmp_path / (name + ".py")) in line[0] and "Fix: rename your module" in line[0]


def test_the_same_version_still_gets_what_its_host_lacks(plain_user_host, plain_user_options):
    """(Forwarding of the user's own modules is untouched, and the stdlib rule is spawn mode's only.)"""
    got = _call(plain_user_host, plain_user_options, try_import, "json")
    assert got[0] == "imported"


ABI3_SOURCE = """
#define Py_LIMITED_API 0x03080000
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(38); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_stable", NULL, -1, methods};
PyMODINIT_FUNC PyInit__stable(void) { return PyModule_Create(&mod); }
"""


@pytest.fixture(scope="module")
def abi3_wheel_site():
    """A site directory holding ``hp_stable`` 1.0, installed from a ``cp38-abi3`` wheel (as bcrypt,
    pynacl, cryptography, ... are): a C extension for CPython 3.8 *and later*."""
    if shutil.which("gcc") is None or not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        _unavailable("gcc and Python.h are needed to build the test's C extension")
    import platform

    site = tempfile.mkdtemp(prefix="remoteproc-abi3-")
    os.chmod(site, 0o755)
    pkg = os.path.join(site, "hp_stable")
    info = os.path.join(site, "hp_stable-1.0.dist-info")
    os.makedirs(pkg)
    os.makedirs(info)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write("from ._stable import answer\n")
    src = os.path.join(site, "stable.c")
    with open(src, "w") as f:
        f.write(ABI3_SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-I", sysconfig.get_paths()["include"], src, "-o",
                    os.path.join(pkg, "_stable.abi3.so")], check=True, capture_output=True, timeout=120)
    os.unlink(src)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: hp_stable\nVersion: 1.0\nRequires-Python: >=3.8\n")
    with open(os.path.join(info, "WHEEL"), "w") as f:
        f.write("Wheel-Version: 1.0\nTag: cp38-abi3-linux_%s\n" % platform.machine())
    files = ["hp_stable/__init__.py", "hp_stable/_stable.abi3.so", "hp_stable-1.0.dist-info/METADATA",
             "hp_stable-1.0.dist-info/WHEEL", "hp_stable-1.0.dist-info/RECORD"]
    with open(os.path.join(info, "RECORD"), "w") as f:
        f.write("".join("%s,,\n" % name for name in files))
    try:
        yield site
    finally:
        shutil.rmtree(site, ignore_errors=True)


@pytest.mark.parametrize("ver", [OURS, "3.13"])
def test_an_abi3_wheel_for_an_older_cpython_goes_to_a_newer_one(host_pythons, abi3_wheel_site, plain_user_host,
                                                                plain_user_options, monkeypatch, ver):
    """``cp38-abi3`` means CPython 3.8 or later (PEP 384/425; pip installs it on 3.8 ... 3.13), but the tags
    check took ``cp38`` for exactly 3.8 and refused it with "which cannot load it" on every other
    host, the same version included. Fixed in distributions.tag_ok."""
    options = dict(plain_user_options)
    if ver != OURS:
        options["python"] = host_pythons.get(ver)[0]
    monkeypatch.syspath_prepend(abi3_wheel_site)
    got = _call(plain_user_host, options, try_import, "hp_stable")
    assert got[0] == "imported", got
    assert got[1].endswith("/hp_stable/__init__.py") and "/.cache/remoteproc/" in got[1]


def test_paths_from_a_3_13_child_load_here(host_pythons, plain_user_host, plain_user_options):
    """Python 3.13 moved pathlib's classes to ``pathlib._local``, and pickles name them there: a
    ``Path`` that a 3.13 child sent back (a Pipe, a Queue, a Pool's result) failed here with
    ``No module named 'pathlib._local'; 'pathlib' is not a package``. Fixed in agent/spawn.py
    (``accept_newer_pickles``: on both sides, the older Python takes that name for ``pathlib``)."""
    import pathlib

    from remoteproc import Pipe, Pool, Queue

    options = dict(plain_user_options, python=host_pythons.get("3.13")[0])
    a, b = Pipe()
    q = Queue()
    p = RemoteProcess(plain_user_host, target=paths_back, args=(b, q), **options)
    p.start()
    b.close()
    a.send(pathlib.PurePosixPath("/etc/hosts"))
    assert a.poll(60)
    assert a.recv() == (pathlib.PurePosixPath("/etc/hosts"), "pathlib._local", pathlib.PurePosixPath("/srv"))
    assert q.get(timeout=30) == pathlib.Path("/tmp")
    p.join(30)
    assert p.exitcode == 0
    with Pool([plain_user_host], processes_per_host=1, **options) as pool:
        assert pool.map(path_of, range(2)) == [pathlib.PurePosixPath("/srv/0"), pathlib.PurePosixPath("/srv/1")]
    # and a child of this Python that shares a Queue with one of 3.13 (found by an audit: only
    # spawn-mode children and this process took the name; the item was lost in a same-version child)
    q = Queue()
    a, b = Pipe()
    same = RemoteProcess(plain_user_host, target=path_from_queue, args=(q, b), **plain_user_options)
    newer = RemoteProcess(plain_user_host, target=path_to_queue, args=(q,), **options)
    same.start()
    b.close()
    newer.start()
    assert a.poll(60)
    assert a.recv() == pathlib.Path("/tmp")
    for p in (newer, same):
        p.join(30)
        assert p.exitcode == 0


NEWER_SCRIPT = '''
import json, sys
from remoteproc import RemoteProcess
%s

def work():
    pass


if __name__ == "__main__":
    host, opts = json.loads(sys.argv[1])
    p = RemoteProcess(host, target=work, **opts)
    p.start()
    p.join(60)
    print("exitcode", p.exitcode)
'''


def _run_script(path, host, host_options, python, *args):
    """Run the user's script ``path`` here, with the host (its options and ``python=``) as its first
    argument and ``args`` after it, as a user runs a program: its own process, from its directory."""
    options = dict(host_options, python=python)
    return subprocess.run([sys.executable, path, json.dumps([host, options]), *args], capture_output=True, text=True,
                          timeout=150, cwd=os.path.dirname(path), env=dict(os.environ, PYTHONPATH=REPO))


@pytest.mark.parametrize("newer,said", [
    ("def kind(x):\n    match x:\n        case 1:\n            return 1", "cannot compile it: its syntax is newer"),
    ("Maybe = int | None", "its top level failed here"),
    # (an import the host cannot satisfy: the line said "keep the script's top level to what 3.9 runs"
    # beside the ImportError's own fix; then "install it on the host", which no standard module can be)
    ("import tomllib", "its top level's import of 'tomllib' failed here: 'tomllib' is a module of the standard "
                       "library new in Python 3.11, and the host's has none (its backport on PyPI: tomli). "
                       "Fix: move that import under"),
    ("from enum import StrEnum", "its top level's import of 'enum' failed here: 'enum' is the host's standard "
                                 "library module, which lacks what is imported from it"),
    # (a file of the user's machine, read at the script's top: "keep the script's top level to what 3.9
    # runs" sent the user after versions; the top level runs on the host, and that is what to change)
    ("CONFIG = open('/nonexistent/hp_config.json').read() if __name__ == '__mp_main__' else ''",
     "where it runs as in every spawn child (FileNotFoundError: [Errno 2] No such file or directory: "
     "'/nonexistent/hp_config.json'). Fix: move what needs your machine"),
])
def test_a_script_newer_than_the_hosts_python_is_explained(host_pythons, plain_user_host, plain_user_options,
                                                          scripts, newer, said):
    """A spawn-mode child imports the user's script first: one with 3.10 syntax (``match``), or a top
    level that needs 3.10 (``int | None``), failed on a 3.9 host with the bare SyntaxError or TypeError
    among the agent's frames, nothing saying that the host runs another Python nor what to do. Now a
    line after the traceback names the host, both versions, the script and the fix (agent/spawn.py)."""
    wrapper, full = host_pythons.get("3.9")
    path = scripts("hp_newer.py", NEWER_SCRIPT % newer)
    proc = _run_script(path, plain_user_host, plain_user_options, wrapper)
    assert "exitcode 1" in proc.stdout, proc.stderr
    line = [x for x in proc.stderr.splitlines() if "this host runs" in x]
    assert line, proc.stderr
    assert plain_user_host in line[0] and "Python %s, not Python %s as you do" % (full, OURS) in line[0]
    assert path in line[0] and said in line[0] and "Fix:" in line[0] and "python=" in line[0]


APP_MAIN = """
import sys
import helper
print(__name__, sys.argv[1:], sys.path[0] == sys.argv[0], sys.version_info[:2])
helper.fail()
"""


@pytest.mark.parametrize("ver", ["3.9", "3.13"])
def test_script_mode_runs_a_directory_or_zip_file_on_another_python(host_pythons, plain_user_host,
                                                                    plain_user_options, scripts, capfd, ver):
    """remoteproc.run(HOST, DIR or APP.zip) on a host whose Python is another version runs its
    __main__.py as that python3 runs it; one without __main__ exits 1 with python3's one line. A zip
    file without one said runpy's chained ImportError among the agent's frames, and zipimport before
    3.10 has no find_spec (agent/script.py)."""
    import zipfile

    import remoteproc

    wrapper, _full = host_pythons.get(ver)
    options = dict(plain_user_options, python=wrapper)
    helper = "def fail():\n    raise ValueError('from the app')\n"
    top = os.path.dirname(scripts("hp_app_helper.py", helper))     # (a directory every account reads)
    app = os.path.join(top, "app")
    os.mkdir(app)
    for name, source in (("__main__.py", APP_MAIN), ("helper.py", helper)):
        with open(os.path.join(app, name), "w") as f:
            f.write(source)
    os.chmod(app, 0o755)
    archive, no_main = os.path.join(top, "app.zip"), os.path.join(top, "lib.zip")
    with zipfile.ZipFile(archive, "w") as z:
        z.write(os.path.join(app, "__main__.py"), "__main__.py")
        z.write(os.path.join(app, "helper.py"), "helper.py")
    with zipfile.ZipFile(no_main, "w") as z:
        z.write(os.path.join(app, "helper.py"), "helper.py")
    for path in (archive, no_main):
        os.chmod(path, 0o644)
    said = "__main__ ['a', '1'] True %r\n" % (tuple(int(x) for x in ver.split(".")),)
    for path, out in ((app, said), (archive, said), (no_main, "")):
        local = subprocess.run([wrapper, path, "a", "1"], capture_output=True, text=True, timeout=60)
        capfd.readouterr()
        job = remoteproc.run(plain_user_host, path, "a", 1, **options)
        job.join(60)
        got_out, got_err = capfd.readouterr()
        assert job.exitcode == local.returncode == 1, (path, got_err)
        assert got_out == local.stdout == out, path
        if path == no_main:
            said = "remoteproc: can't find '__main__' module in %r on host %s\n" % (path, socket.gethostname())
            assert got_err == said
            assert local.stderr.endswith(": can't find '__main__' module in %r\n" % path)
        else:
            assert got_err.splitlines()[-1] == local.stderr.splitlines()[-1] == "ValueError: from the app"
            assert "helper.py" in got_err and "runpy" not in got_err and "remoteproc/agent" not in got_err


UNGUARDED_DRIVER = """
import json, sys
import remoteproc
Maybe = int | None      # (3.10 at the top level, and no if __name__ == "__main__": the user's, run here)
host, options, path = json.loads(sys.argv[1])
job = remoteproc.run(host, path, "x", **options)
job.join(60)
print("exitcode", job.exitcode)
"""


def test_script_mode_does_not_import_the_callers_own_script_on_another_python(host_pythons, plain_user_host,
                                                                              plain_user_options, scripts):
    """remoteproc.run(HOST, path) from a program with no main guard, or whose top level needs a newer
    Python, runs the host's script on a 3.9 host as on a same-version one: the spawn-mode child ran the
    caller's script first (remoteproc.run there: 'cannot be used inside a remote process'; int | None:
    TypeError), so the host's script never ran. The child needs nothing of it (script mode)."""
    wrapper, _full = host_pythons.get("3.9")
    target = scripts("hp_host_side.py", "import sys\nprint('host script', sys.argv[1:], sys.version_info[:2])\n")
    driver = scripts("hp_unguarded_driver.py", UNGUARDED_DRIVER)
    arg = json.dumps([plain_user_host, dict(plain_user_options, python=wrapper), target])
    proc = subprocess.run([sys.executable, driver, arg], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(driver), env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.stdout == "host script ['x'] (3, 9)\nexitcode 0\n", proc.stderr


# -- refused, and said so ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ver", ["2.7", "3.6", "3.7"])
def test_a_python_older_than_3_8_is_a_bootstrap_error_naming_host_version_and_fix(host_pythons, plain_user_host,
                                                                                  plain_user_options, ver):
    wrapper, full = host_pythons.get(ver)
    p = RemoteProcess(plain_user_host, target=print, python=wrapper, **plain_user_options)
    with pytest.raises(BootstrapError) as info:
        p.start()
    text = str(info.value)
    assert info.value.host and info.value.host in text and "127.0.0.1" in text
    assert "Python %s" % full in text and "3.8 or later" in text
    assert "Fix: pass python= with the path of a Python 3.8+" in text
    assert p.pid is None and not p.is_alive()


def test_a_python_list_passes_over_the_old_and_the_other_ones_quietly(host_pythons, plain_user_host,
                                                                     plain_user_options, caplog):
    """``python=[...]``: "if none is ours, the first that runs, in spawn mode". A 2.7 or 3.7 before a
    3.9 in the list ended the search with "too old" (3.9 never tried), and every candidate passed over
    was logged as a warning at each new connection ("remoteproc: python=... is cpython Python 3.9.18
    at ..."). Fixed in bootstrap._script (the list goes on past one too old) and bootstrap._quiet."""
    old27, old37 = host_pythons.get("2.7")[0], host_pythons.get("3.7")[0]
    py39, py313 = host_pythons.get("3.9")[0], host_pythons.get("3.13")[0]
    caplog.set_level("WARNING", logger="remoteproc")
    p = RemoteProcess(plain_user_host, target=print, python=[old27, old37, py39, py313], **plain_user_options)
    p.start()
    p.join(30)
    assert p.exitcode == 0 and p._popen.mode == "spawn" and p._popen.found == "python=" + py39
    assert p._popen.executable.endswith("/python3.9")
    assert not [r for r in caplog.records if "Python" in r.getMessage()], caplog.text
    p = RemoteProcess(plain_user_host, target=print, python=[old37, "no-such-python", old27], **plain_user_options)
    with pytest.raises(BootstrapError) as info:
        p.start()
    text = str(info.value)
    assert "python=%s is cpython Python 3.7.16" % old37 in text and "python=%s is cpython Python 2.7.18" % old27 in text
    assert "too old" in text and "3.8 or later" in text and plain_user_host.split("@")[1] in text
    p = RemoteProcess(plain_user_host, target=print, python=["no-such-python", "nor-this"], **plain_user_options)
    with pytest.raises(BootstrapError) as info:     # (it said python=('no-such-python', 'nor-this'), a tuple)
        p.start()
    assert "python=['no-such-python', 'nor-this']" in str(info.value)
    assert "the host has none of 'no-such-python', 'nor-this' it can run" in str(info.value)


# -- an account whose login PATH finds another version first -----------------------------------------------------

def test_check_on_an_account_whose_python3_is_3_13(account_313, capsys):
    server, user, full = account_313
    out = run_check(server, user, "python3", capsys)
    assert "CPython %s" % full in out and "python=python3" in out and "spawn mode" in out and "OK" in out


SCRIPT = '''
import sys
from remoteproc.agent.script import args, connection

conn = connection()
conn.send((args(), tuple(sys.version_info[:2]), __name__))
sys.exit(3)
'''


def test_script_mode_on_an_account_whose_python3_is_3_13(account_313, scripts):
    import remoteproc

    server, user, _full = account_313
    path = scripts("hp_remote_script.py", SCRIPT)
    job = remoteproc.run(server.spec(user), path, 42, {"a": 1}, "x", python="python3", **server.options(user))
    try:
        assert job.conn.poll(60)
        assert job.conn.recv() == ([42, {"a": 1}, "x"], (3, 13), "__main__")
        job.join(30)
        assert job.exitcode == 3 and job._popen.mode == "spawn"
    finally:
        job.conn.close()


NEWER_MODULE_SCRIPT = '''
import json, sys
from remoteproc import Executor, Pool, RemoteProcess
if sys.argv[2] == "at the top":     # (the child gets this argv too: its import of the script imports it)
    import hp_newer_syntax


def work():
    pass


if __name__ == "__main__":
    host, opts = json.loads(sys.argv[1])
    import hp_newer_syntax, hp_newer_top
    p = RemoteProcess(host, target=hp_newer_syntax.work if sys.argv[2] == "in main" else work, **opts)
    p.start()
    p.join(60)
    print("exitcode", p.exitcode)
    if sys.argv[2] == "in main":
        with Pool([host], processes_per_host=1, **opts) as pool:
            try:
                pool.map(hp_newer_syntax.work, [1])
            except SyntaxError as exc:
                print("pool", exc)
        with Executor([host], processes_per_host=1, **opts) as ex:
            print("executor", repr(ex.submit(hp_newer_top.work).exception(60)))
'''


@pytest.mark.parametrize("where", ["in main", "at the top"])
def test_a_module_newer_than_the_hosts_python_is_explained(host_pythons, plain_user_host, plain_user_options,
                                                          scripts, where):
    """A module of the user's (not the script) with 3.10 syntax, or a top level that needs 3.10, sent
    to a 3.9 host: RemoteProcess printed only the bare SyntaxError, Pool raised ``invalid syntax
    (hp_newer_syntax.py, line 2)``, Executor ``BrokenProcessPool: ... TypeError: unsupported operand
    type(s) for |``, none saying that the host runs another Python nor what to do; imported at the
    script's top, the line blamed the script ("cannot compile it"), which compiles. Now each names
    the host, both versions, the module's path and the fix (agent/spawn.py, ``module_failed``)."""
    wrapper, full = host_pythons.get("3.9")
    syntax = scripts("hp_newer_syntax.py", "def work(x=0):\n    match x:\n        case 1:\n            return 1\n")
    top = scripts("hp_newer_top.py", "Maybe = int | None\n\n\ndef work():\n    pass\n")
    path = scripts("hp_newer_modules.py", NEWER_MODULE_SCRIPT)
    proc = _run_script(path, plain_user_host, plain_user_options, wrapper, where)
    said = "this host runs Python %s, not Python %s as you do (spawn mode): the child imports your module" % (full,
                                                                                                             OURS)
    assert "exitcode 1" in proc.stdout, proc.stderr
    line = [x for x in proc.stderr.splitlines() if said in x]
    assert line and plain_user_host in line[0] and syntax in line[0] and "syntax is newer" in line[0], proc.stderr
    assert "Fix:" in line[0] and "python=" in line[0] and "your script" not in proc.stderr
    if where == "in main":
        pool = [x for x in proc.stdout.splitlines() if x.startswith("pool ")]
        assert pool and said in pool[0] and syntax in pool[0] and plain_user_host in pool[0], proc.stdout
        executor = [x for x in proc.stdout.splitlines() if x.startswith("executor ")]
        assert executor and "BrokenProcessPool" in executor[0] and said in executor[0] and top in executor[0], \
            proc.stdout


def test_a_module_importing_a_standard_module_the_host_lacks_is_explained(host_pythons, plain_user_host,
                                                                         plain_user_options, tmp_path, monkeypatch):
    """A module of the user's whose top level imports ``tomllib`` (3.11's), in a Pool's task on a
    3.9 host: the bare ``No module named 'tomllib'`` came back; now the words say it is the standard
    library's, new in 3.11, name the module's file and the fix (agent/spawn.py, ``stdlib_gap``)."""
    import remoteproc

    wrapper, full = host_pythons.get("3.9")
    (tmp_path / "hp_uses_tomllib.py").write_text("import tomllib\n\n\ndef work(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import hp_uses_tomllib
    try:
        with remoteproc.Pool([plain_user_host], 1, python=wrapper, **plain_user_options) as pool:
            with pytest.raises(ModuleNotFoundError) as info:
                pool.map(hp_uses_tomllib.work, [1])
    finally:
        sys.modules.pop("hp_uses_tomllib", None)
    text = str(info.value)
    assert "No module named 'tomllib'" in text and plain_user_host in text and "Python %s" % full in text, text
    assert str(tmp_path / "hp_uses_tomllib.py") in text and "new in Python 3.11" in text and "tomli" in text, text
    assert "Fix: make that import conditional" in text, text


LAZY_IMPORT_SCRIPT = '''
import json, sys
from remoteproc import Executor, Pool, RemoteProcess


def lazy(x=0):
    import hp_lazy_newer       # (imported when the target runs, not when it is unpickled)
    return hp_lazy_newer.work(x)


if __name__ == "__main__":
    host, opts = json.loads(sys.argv[1])
    p = RemoteProcess(host, target=lazy, **opts)
    p.start()
    p.join(60)
    print("exitcode", p.exitcode)
    with Pool([host], processes_per_host=1, **opts) as pool:
        try:
            pool.map(lazy, [1])
        except SyntaxError as exc:
            print("pool", exc)
    with Executor([host], processes_per_host=1, **opts) as ex:
        print("executor", repr(ex.submit(lazy).exception(60)))
'''


def test_a_newer_module_the_target_imports_as_it_runs_is_explained(host_pythons, plain_user_host,
                                                                  plain_user_options, scripts):
    """Found by a new user's audit: a module imported inside the target's body (a lazy import), newer
    than the host's Python, failed with the bare SyntaxError in the RemoteProcess, the Pool and the
    Executor alike: the hint came only for modules imported while the target was unpickled."""
    wrapper, full = host_pythons.get("3.9")
    newer = scripts("hp_lazy_newer.py", "def work(x=0):\n    match x:\n        case 1:\n            return 1\n")
    path = scripts("hp_lazy_import.py", LAZY_IMPORT_SCRIPT)
    proc = _run_script(path, plain_user_host, plain_user_options, wrapper)
    said = "this host runs Python %s, not Python %s as you do (spawn mode): the child imports your module %s" % (
        full, OURS, newer)
    assert "exitcode 1" in proc.stdout, proc.stderr
    traceback_at = proc.stderr.find("SyntaxError")
    line = [x for x in proc.stderr.splitlines() if said in x]
    assert line and plain_user_host in line[0] and "syntax is newer" in line[0], proc.stderr
    assert 0 <= traceback_at < proc.stderr.find(said), "the hint comes after the traceback"
    pool = [x for x in proc.stdout.splitlines() if x.startswith("pool ")]
    assert pool and said in pool[0] and plain_user_host in pool[0], proc.stdout
    executor = [x for x in proc.stdout.splitlines() if x.startswith("executor ")]
    assert executor and "SyntaxError" in executor[0] and said in executor[0], proc.stdout


GUARDED_TARGET = '''
import json, sys
from remoteproc import Pool, RemoteProcess

if __name__ == "__main__":
    def work(x=0):             # (defined only when the script runs as the main program)
        return x

    host, opts = json.loads(sys.argv[1])
    p = RemoteProcess(host, target=work, **opts)
    p.start()
    p.join(60)
    print("exitcode", p.exitcode)
    with Pool([host], processes_per_host=1, **opts) as pool:
        try:
            pool.map(work, [1])
        except AttributeError as exc:
            print("pool", exc)
'''


def test_a_target_defined_in_the_main_block_is_explained_in_spawn_mode(host_pythons, plain_user_host,
                                                                       plain_user_options, scripts):
    """Found by a new user's audit: a target defined under ``if __name__ == "__main__":`` works on a
    host of the user's Python and failed on another with only ``Can't get attribute 'work' on
    <module '__main__'>`` (the child imports the script as __mp_main__, without that block)."""
    wrapper, full = host_pythons.get("3.9")
    path = scripts("hp_guarded_target.py", GUARDED_TARGET)
    proc = _run_script(path, plain_user_host, plain_user_options, wrapper)
    said = "the child imports your script as __mp_main__, as multiprocessing's spawn does"
    assert "exitcode 1" in proc.stdout, proc.stderr
    line = [x for x in proc.stderr.splitlines() if said in x]
    assert line and plain_user_host in line[0] and "Python %s, not Python %s" % (full, OURS) in line[0], proc.stderr
    assert "Fix: define work at the script's top level" in line[0]
    pool = [x for x in proc.stdout.splitlines() if x.startswith("pool ")]
    assert pool and said in pool[0] and "define work" in pool[0], proc.stdout
    assert pool[0].count(said) == 1, "the hint is said once: %s" % pool[0]


UNGUARDED_START = '''
import json, sys
from remoteproc import RemoteProcess


def work():
    pass


host, opts = json.loads(sys.argv[1])          # (no if __name__ == "__main__": the child runs this too)
p = RemoteProcess(host, target=work, **opts)
p.start()
p.join(60)
print("exitcode", p.exitcode)
'''


def test_a_script_that_starts_processes_without_a_main_guard_is_explained(host_pythons, plain_user_host,
                                                                         plain_user_options, scripts):
    """multiprocessing's spawn says "An attempt has been made to start a new process before ... use
    if __name__ == '__main__'" for a script that starts processes at its top level. Spawn mode said
    "its top level failed here. Fix: keep the script's top level to what Python 3.9.18 runs", which
    sends the user after a version problem there is not. Now the line names the missing guard."""
    wrapper, full = host_pythons.get("3.9")
    path = scripts("hp_unguarded_start.py", UNGUARDED_START)
    proc = _run_script(path, plain_user_host, plain_user_options, wrapper)
    assert "exitcode 1" in proc.stdout, proc.stderr
    line = [x for x in proc.stderr.splitlines() if "this host runs" in x]
    assert line and plain_user_host in line[0] and path in line[0], proc.stderr
    assert 'no `if __name__ == "__main__":`' in line[0] and "Fix: put the code that starts processes" in line[0]
    assert "what Python %s runs" % full not in line[0]


HOSTS_RELEASE = '''
class Thing:
    def __init__(self, data):
        self.data = data


def _reconstruct(data):
    return Thing(data)
'''

USERS_RELEASE = HOSTS_RELEASE + '''

def _frombuffer(data):          # (new in this release: the host's has only _reconstruct)
    return Thing(data)


def _reduce_ex(self, protocol):   # (as numpy 2 pickles an array: by _frombuffer under protocol 5)
    return (_frombuffer if protocol >= 5 else _reconstruct), (self.data,)


Thing.__reduce_ex__ = _reduce_ex
'''


def test_an_object_of_a_newer_release_reaches_a_host_of_the_older_one(host_pythons, plain_user_host,
                                                                       plain_user_options, scripts, tmp_path,
                                                                       monkeypatch):
    """Found by an audit: a numpy 2 array did not reach a 3.9 host with numpy 1.26 in spawn mode
    (``No module named 'numpy._core.numeric'``): the arguments went with pickle protocol 5, under
    which numpy 2 names a function that numpy 1 lacks; multiprocessing's spawn pickles with 4
    (3.8-3.13's default), under which both releases agree. Here a package of ours that does the same."""
    import uuid

    name = "rprelease_" + uuid.uuid4().hex[:8]
    theirs = scripts(name + ".py", HOSTS_RELEASE)                    # the host's older release
    options = dict(plain_user_options,
                   python="env PYTHONPATH=%s %s" % (os.path.dirname(theirs), host_pythons.get("3.9")[0]))
    (tmp_path / (name + ".py")).write_text(USERS_RELEASE)
    monkeypatch.syspath_prepend(str(tmp_path))
    ours = __import__(name)
    try:
        assert _call(plain_user_host, options, data_of, ours.Thing([1, 2, 3])) == [1, 2, 3]
    finally:
        sys.modules.pop(name, None)
