"""A remote child's own spawn and forkserver children (forkserver is Python 3.14's default).

A target that runs ``ProcessPoolExecutor()`` or ``Pool()`` on a 3.14 host gets forkserver
workers: new interpreters, which import what they run by reference. They must find the user's
script definitions and forwarded modules as the child does (remoteproc/agent/grandchild.py).
Each program runs as a user's script of its own against the loopback sshd's system-Python
account, in same-version mode and, with another CPython as the host's, in spawn mode.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys

import pytest
from test_host_pythons import host_pythons  # noqa: F401  (the fixture: copies of other CPythons)

from remoteproc import RemoteProcess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.timeout(300), pytest.mark.loopback_only]

USER_MODULE = '''
import os
import sys


def triple(x):
    return 3 * x


def main_name(_=None):
    return sys.modules["__main__"].__name__


def pid(_=None):
    return os.getpid()
'''

PROGRAM = '''
import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor

import gc_usermod
from remoteproc import Executor, Pipe, Pool, RemoteProcess


def double(x):
    return 2 * x


class Scaled:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x


def work(conn, method):
    ctx = mp.get_context(method)
    out = {}
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        out["main"] = list(ex.map(double, [1, -2]))
        out["module"] = list(ex.map(gc_usermod.triple, [1, -2]))
        out["class"] = list(ex.map(Scaled(5), [1, 2]))
        out["main_name"] = ex.submit(gc_usermod.main_name).result(60)
        out["other_pid"] = ex.submit(gc_usermod.pid).result(60) != gc_usermod.pid()
    with ctx.Pool(2) as pool:
        out["pool"] = pool.map(gc_usermod.triple, range(3))
        out["pool_main"] = pool.apply(double, (21,))
    conn.send(out)


def task(method):
    """An Executor's call that runs a pool of its own, as ProcessPoolExecutor's calls may."""
    with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
        return list(ex.map(double, [1, 2])) + list(ex.map(gc_usermod.triple, [1, 2]))


def pool_task(method):
    """A Pool's task may not: multiprocessing's Pool workers are daemonic."""
    try:
        p = mp.get_context(method).Process(target=abs, args=(1,))
        p.start()
        p.join()
        return "started"
    except AssertionError as exc:
        return str(exc)


if __name__ == "__main__":
    host, options, method = json.loads(sys.argv[1])
    a, b = Pipe()
    p = RemoteProcess(host, target=work, args=(b, method), **options)
    p.start()
    b.close()
    print(json.dumps(a.recv() if a.poll(150) else "no answer"))
    p.join(60)
    if method == "forkserver":
        with Executor([host], 1, **options) as ex:
            print(json.dumps(["executor", ex.submit(task, method).result(120)]))
        with Pool([host], 1, **options) as pool:
            print(json.dumps(["pool", pool.apply(pool_task, (method,))]))
    print(json.dumps(p.exitcode))
'''


def _run(scripts, host: str, options: dict, method: str) -> tuple[object, object]:
    scripts("gc_usermod.py", USER_MODULE)       # beside the script: the host has it nowhere
    program = scripts("gc_program.py", PROGRAM)
    proc = subprocess.run([sys.executable, program, json.dumps([host, options, method])],
                          capture_output=True, text=True, timeout=240, cwd=os.path.dirname(program),
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    if method == "forkserver":
        # an Executor's calls may start processes, which find the script's functions and forwarded
        # modules; a Pool's tasks may not, as locally
        assert lines[1:3] == [["executor", [2, 4, 3, 6]],
                              ["pool", "daemonic processes are not allowed to have children"]]
    return lines[0], lines[-1]


def _expected(method: str) -> dict:
    return {"main": [2, -4], "module": [3, -6], "class": [5, 10], "other_pid": True, "pool": [0, 3, 6],
            "pool_main": 42,
            # what multiprocessing's own children call the main module: spawn runs it as __mp_main__
            "main_name": "__main__" if method == "fork" else "__mp_main__"}


def _left_dirs(user: str) -> list[str]:
    import tempfile

    return glob.glob(os.path.join(tempfile.gettempdir(), "remoteproc-mp-%d-*" % pwd.getpwnam(user).pw_uid))


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_a_targets_own_process_pool_finds_the_scripts_functions_and_forwarded_modules(
        scripts, plain_user_host, plain_user_options, method):
    user = plain_user_host.split("@")[0]
    got, code = _run(scripts, plain_user_host, plain_user_options, method)
    assert got == _expected(method)
    assert code == 0
    assert _left_dirs(user) == []


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_in_spawn_mode_the_script_runs_as_mp_main_in_the_childs_children(scripts, plain_user_host,
                                                                         plain_user_options, host_pythons,  # noqa: F811
                                                                         version):
    options = dict(plain_user_options, python=host_pythons.get(version)[0])
    for method in ("forkserver", "spawn"):
        got, code = _run(scripts, plain_user_host, options, method)
        assert got == _expected(method), method
        assert code == 0


def _start_pool_and_wait(conn):
    import multiprocessing as mp
    import time

    pool = mp.get_context("forkserver").Pool(1)
    conn.send(pool.apply(os.getpid))
    time.sleep(120)


def test_a_killed_childs_directory_is_removed_by_the_agent(plain_user_host, plain_user_options):
    from remoteproc import Pipe

    user = plain_user_host.split("@")[0]
    a, b = Pipe()
    p = RemoteProcess(plain_user_host, target=_start_pool_and_wait, args=(b,), **plain_user_options)
    p.start()
    b.close()
    assert a.poll(60) and isinstance(a.recv(), int)
    assert len(_left_dirs(user)) == 1       # the running child's
    p.kill()
    p.join(30)
    assert p.exitcode == -9
    assert _left_dirs(user) == []


def test_a_killed_childs_directory_under_the_tmpdir_of_its_env_is_removed_too(plain_user_host, plain_user_options):
    """Found by a leak audit: with env={"TMPDIR": ...} the child's hand-off directory is made there,
    and the agent looked only in its own temp dirs: each killed child left 240 KB for good."""
    from remoteproc import Pipe

    user = plain_user_host.split("@")[0]
    import pathlib
    import tempfile

    scratch = pathlib.Path(tempfile.mkdtemp(prefix="scratch-", dir="/tmp"))    # (one the account can reach)
    try:
        shutil.chown(str(scratch), user)
        a, b = Pipe()
        p = RemoteProcess(plain_user_host, target=_start_pool_and_wait, args=(b,), env={"TMPDIR": str(scratch)},
                          **plain_user_options)
        p.start()
        b.close()
        assert a.poll(60) and isinstance(a.recv(), int)
        assert len(list(scratch.glob("remoteproc-mp-*"))) == 1       # the running child's
        p.kill()
        p.join(30)
        assert p.exitcode == -9
        assert list(scratch.glob("remoteproc-mp-*")) == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pool_in_read_only_tmp(conn):
    import multiprocessing as mp
    import tempfile

    tempfile.tempdir = "/proc"      # (a temp dir nobody can write)
    try:
        with mp.get_context("spawn").Pool(1) as pool:
            conn.send(("ran", pool.apply(abs, (-3,))))
    except Exception as exc:     # noqa: BLE001
        conn.send(("failed", repr(exc)))


def test_an_unwritable_temp_dir_leaves_spawn_children_as_multiprocessing_has_them(plain_user_host,
                                                                                    plain_user_options, capfd):
    """Functions the host has (``abs``) still run; only the hand-over is missing, with a warning."""
    from remoteproc import Pipe

    a, b = Pipe()
    p = RemoteProcess(plain_user_host, target=_pool_in_read_only_tmp, args=(b,), **plain_user_options)
    p.start()
    b.close()
    assert a.poll(90)
    assert a.recv() == ("ran", 3)
    p.join(30)
    assert p.exitcode == 0
    err = capfd.readouterr().err        # (the child's stderr comes out on this process's)
    assert "cannot write" in err and "for a spawn/forkserver child" in err, err


SCRIPT_ON_THE_HOST = '''
import multiprocessing as mp
import sys


def double(x):
    return 2 * x


if __name__ == "__main__":
    with mp.get_context(sys.argv[1]).Pool(2) as pool:
        print("script result", pool.map(double, [1, 2, 3]), flush=True)
'''


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_script_mode_spawn_children_run_the_hosts_script_as_locally(scripts, plain_user_host, plain_user_options,
                                                                    method, capfd):
    """A script that is a file of the host's (``remoteproc.run``): its children run it from its path."""
    import remoteproc

    path = scripts("gc_script.py", SCRIPT_ON_THE_HOST)
    job = remoteproc.run(plain_user_host, path, method, **plain_user_options)
    job.join(90)
    assert job.exitcode == 0
    assert "script result [2, 4, 6]" in capfd.readouterr().out


def _temp_dir_and_forkserver(conn):
    import multiprocessing as mp
    from multiprocessing import util

    made = util.get_temp_dir()
    with mp.get_context("forkserver").Pool(1) as pool:
        conn.send((made, os.stat(made).st_uid == os.getuid(), pool.apply(abs, (-2,))))


def test_the_childs_multiprocessing_temp_dir_is_its_own_not_the_parents(plain_user_host, plain_user_options):
    """The parent made its pymp-* dir (a Manager, a forkserver, a listener did): a path of this
    machine, which a forked child shares. A remote child makes its own on its host (the forkserver's
    socket goes there), as the parent's path is not there, or belongs to another account."""
    from multiprocessing import util

    from remoteproc import Pipe

    ours = util.get_temp_dir()
    a, b = Pipe()
    p = RemoteProcess(plain_user_host, target=_temp_dir_and_forkserver, args=(b,), **plain_user_options)
    p.start()
    b.close()
    assert a.poll(90)
    made, owned, value = a.recv()
    p.join(30)
    assert made != ours and owned and value == 2
    assert p.exitcode == 0


BY_VALUE_MODULE = '''
def work(x):
    return 10 * x


class Scaler:
    def __init__(self, k):
        self.k = k

    def scale(self, x):
        return self.k * x


class Point:
    def __init__(self, x):
        self.x = x


def make_point(x):
    return Point(x)


def make_closure(k):
    def inner(x):
        return k * x
    return inner


square = lambda x: x * x  # noqa: E731
'''

BY_VALUE_PROGRAM = '''
import json
import multiprocessing as mp
import re
import sys
from concurrent.futures import ProcessPoolExecutor

import cloudpickle

import bv_usermod
from remoteproc import Executor, Pipe, Queue, RemoteProcess

cloudpickle.register_pickle_by_value(bv_usermod)      # the user's code goes by value, not the host's


def double(x):
    return 2 * x


TABLE = list(range(100000))     # (lookup pickled is over reduction.MAIN_DEF_MAX: it is not among the definitions)


def lookup(i):
    return TABLE[i] + 1


class MainScaler:
    def __init__(self, k):
        self.k = k

    def scale(self, x):
        return self.k * x


def attempt(out, key, fn):
    try:
        out[key] = fn()
    except Exception as exc:     # (what fails locally must fail the same way)
        out[key] = "%s: %s" % (type(exc).__name__, re.sub(" at 0x[0-9a-f]+", "", str(exc)))


def work(conn, method, queue):
    ctx = mp.get_context(method)
    out = {}
    queued = queue.get(timeout=60)       # (a script's function, by value through a remoteproc Queue)
    with ctx.Pool(2) as pool:
        attempt(out, "module", lambda: pool.map(bv_usermod.work, [1, 2]))
        attempt(out, "method", lambda: pool.map(bv_usermod.Scaler(3).scale, [1, 2]))
        attempt(out, "class", lambda: [(type(p) is bv_usermod.Point, p.x)
                                       for p in pool.map(bv_usermod.make_point, [4])])
        attempt(out, "main", lambda: pool.map(double, [1, 2]))
        attempt(out, "main_method", lambda: pool.map(MainScaler(5).scale, [1, 2]))
        attempt(out, "main_big", lambda: pool.map(lookup, [1, 2]))
        attempt(out, "main_queued", lambda: pool.map(queued, [1, 2]))
        attempt(out, "lambda", lambda: pool.map(bv_usermod.square, [1, 2]))
        attempt(out, "closure", lambda: pool.map(bv_usermod.make_closure(2), [1, 2]))
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        attempt(out, "executor", lambda: list(ex.map(bv_usermod.work, [3]))
                + list(ex.map(bv_usermod.Scaler(2).scale, [3])))
    conn.send(out)
    conn.send(bv_usermod.Point(7))
    conn.send(bv_usermod.work)


def task(method):
    """An Executor's call that runs a pool of its own with the by-value module's function."""
    with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
        return list(ex.map(bv_usermod.work, [1, 2]))


def received(conn):
    out = conn.recv() if conn.poll(150) else "no answer"
    point = conn.recv() if conn.poll(30) else None
    func = conn.recv() if conn.poll(30) else None
    return [out, isinstance(point, bv_usermod.Point) and point.x, func is bv_usermod.work]


if __name__ == "__main__":
    host, options, method = json.loads(sys.argv[1])
    a, b = mp.Pipe()
    q = mp.Queue()
    q.put(double)
    work(b, method, q)                    # locally, as multiprocessing runs it
    print(json.dumps(received(a)))
    a, b = Pipe()
    q = Queue()
    p = RemoteProcess(host, target=work, args=(b, method, q), **options)
    p.start()
    q.put(double)
    b.close()
    print(json.dumps(received(a)))
    p.join(60)
    print(json.dumps(p.exitcode))
    if method == "forkserver":
        with Executor([host], 1, **options) as ex:
            print(json.dumps(ex.submit(task, method).result(120)))
'''


@pytest.mark.parametrize("method,transport", [("spawn", None), ("forkserver", None), ("fork", None),
                                              ("forkserver", "openssh")])
def test_a_by_value_modules_functions_run_in_the_targets_own_processes_as_locally(
        scripts, plain_user_host, plain_user_options, method, transport):
    """The user registered a module with ``cloudpickle.register_pickle_by_value``: the child has its
    functions and classes rebuilt by value, and the module imported there (forwarded) holds other
    objects. Its Pool, ProcessPoolExecutor and Pipe messages pass them on as the user's code does
    locally; a lambda or a closure fails as locally."""
    options = dict(plain_user_options, **({"transport": transport} if transport else {}))
    scripts("bv_usermod.py", BY_VALUE_MODULE)
    program = scripts("bv_program.py", BY_VALUE_PROGRAM)
    proc = subprocess.run([sys.executable, program, json.dumps([plain_user_host, options, method])],
                          capture_output=True, text=True, timeout=240, cwd=os.path.dirname(program),
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    local, remote = lines[0], lines[1]
    assert local[0]["module"] == [10, 20] and local[0]["class"] == [[True, 4]], local   # (the program is right)
    assert local[0]["main_big"] == [2, 3] and local[0]["main_queued"] == [2, 4], local
    assert isinstance(local[0]["lambda"], str) and isinstance(local[0]["closure"], str)    # (errors, locally)
    assert remote == local
    assert lines[2] == 0
    if method == "forkserver":
        assert lines[3] == [10, 20]


# -- the user's program itself a spawn or forkserver child -----------------------------------------------

LOCAL_CHILD_PROGRAM = '''
import json, sys
import multiprocessing as mp
from remoteproc import Pipe, Pool, Queue, RemoteProcess


class Item:
    def __init__(self, n):
        self.n = n


def square(x):
    return x * x


def hello(conn, item, q):
    msg = conn.recv()
    conn.send((item.n, type(msg).__name__, msg.n, Item(7)))
    q.put(Item(8))


def in_local_child(host, options, method, out):
    a, b = Pipe()
    q = Queue()
    q.put(Item(0))      # (a Queue item pickled before any process started)
    p = RemoteProcess(host, target=hello, args=(b, Item(5), q), **options)
    p.start()
    b.close()
    a.send(Item(6))
    got = a.recv() if a.poll(60) else None
    p.join(60)
    queued = [q.get(timeout=30).n for _ in range(2)]
    with Pool([host], processes_per_host=1, **options) as pool:
        squares = pool.map(square, range(4))
    out.put({"exitcode": p.exitcode, "got": got and list(got[:3]) + [got[3].n],
             "ours": got is not None and type(got[3]) is Item, "queued": queued, "squares": squares})


if __name__ == "__main__":
    host, options, method = json.loads(sys.argv[1])
    ctx = mp.get_context(method)
    out = ctx.Queue()
    c = ctx.Process(target=in_local_child, args=(host, options, method, out))
    c.start()
    print(json.dumps(out.get(timeout=120)))
    c.join(30)
'''


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_program_that_is_itself_a_spawn_child_ships_its_scripts_code(scripts, plain_user_host,
                                                                        plain_user_options, method):
    """Fixed: in a local spawn or forkserver child (a ProcessPoolExecutor's worker on macOS, or
    any on Python 3.14, whose default is forkserver), the script runs as ``__mp_main__``, and
    cloudpickle named its functions ``__mp_main__.hello``, which the remote child could not find:
    "AttributeError: Can't get attribute 'hello' on <module '__main__' (built-in)>".  A forked
    child worked.  Now the script's code goes by value as ``__main__``'s does, and a Pipe message
    naming ``__mp_main__.Item`` resolves on the remote side."""
    program = scripts("lc_program.py", LOCAL_CHILD_PROGRAM)
    proc = subprocess.run([sys.executable, program, json.dumps([plain_user_host, plain_user_options, method])],
                          capture_output=True, text=True, timeout=200, cwd=os.path.dirname(program),
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"exitcode": 0, "got": [5, "Item", 6, 7], "ours": True, "queued": [0, 8],
                   "squares": [0, 1, 4, 9]}, proc.stderr[-3000:]
