"""The user's side under every Python that pyproject.toml supports, not only the suite's.

``requires-python = ">=3.9"``: users run their programs under 3.9 ... 3.13, while the rest of the
suite runs remoteproc under one Python.  Here the oldest and the newest CPython 3.9+ of pyenv
(``~/.pyenv/versions`` or ``$PYENV_ROOT``) each get a virtualenv with paramiko and cloudpickle
(pip's cache reused) and this checkout on its ``sys.path`` (as ``pip install -e`` puts it there),
and run a user's program against the suite's sshd: Pipe, an exception, Queue, Event, Lock and
Value, Pool, Executor, a function and a class of ``__main__``, a local package forwarded; under
both transports, with the host's Python the same version (python= pyenv's interpreter of that
version) and another one (spawn mode: the oldest and newest run each other); and the command
line (``python -m remoteproc run`` and ``check``).  Nothing may be printed as a warning.

No pyenv versions: the tests fail, naming what to install, unless REMOTEPROC_TEST_LOCAL_PYTHONS=0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import local_python_targets
import pytest
import spawn_targets

import remoteproc
from remoteproc import Pipe, Queue, RemoteProcess, owned

PYENV = os.path.join(os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv"), "versions")
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(remoteproc.__file__)))
INSTALL_TIMEOUT = 150       # one virtualenv's pip install (from pip's cache: about 7 s)
PROGRAM_TIMEOUT = 120

pytestmark = pytest.mark.timeout(300)


def _pyenv_pythons() -> dict[tuple[int, int], str]:
    """(major, minor) -> pyenv's newest CPython X.Y.Z interpreter, for 3.9 and later."""
    found: dict[tuple[int, int], tuple[tuple[int, ...], str]] = {}
    try:
        names = os.listdir(PYENV)
    except OSError:
        names = []
    for name in names:
        m = re.fullmatch(r"3\.(\d+)\.(\d+)", name)
        exe = os.path.join(PYENV, name, "bin", "python3")
        if m is None or int(m.group(1)) < 9 or not os.access(exe, os.X_OK):
            continue
        key = (3, int(m.group(1)))
        version = (3, int(m.group(1)), int(m.group(2)))
        if key not in found or found[key][0] < version:
            found[key] = (version, exe)
    return {k: v[1] for k, v in found.items()}


def _required() -> tuple[str, str]:
    """(oldest, newest) interpreter: fails (or skips, with REMOTEPROC_TEST_LOCAL_PYTHONS=0) without two."""
    if os.environ.get("REMOTEPROC_TEST_LOCAL_PYTHONS") == "0":
        pytest.skip("REMOTEPROC_TEST_LOCAL_PYTHONS=0")
    pythons = _pyenv_pythons()
    if (3, 9) not in pythons or len(pythons) < 2:
        pytest.fail("the local-Python tests need pyenv's CPython 3.9 and a newer 3.x under %s (found: %s); "
                    "install them (pyenv install 3.9 3.13) or set REMOTEPROC_TEST_LOCAL_PYTHONS=0 to skip"
                    % (PYENV, ", ".join("%d.%d" % k for k in sorted(pythons)) or "none"), pytrace=False)
    return pythons[min(pythons)], pythons[max(pythons)]


def _bundled_pip(python: str) -> str:
    """The pip wheel of the interpreter's ensurepip: pip runs from it (a zip on sys.path), so the
    virtualenv needs no pip of its own (ensurepip would cost seconds per virtualenv)."""
    lib = subprocess.run([python, "-c", "import ensurepip, os; print(os.path.dirname(ensurepip.__file__))"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    bundled = os.path.join(lib, "_bundled")
    wheels = [n for n in os.listdir(bundled) if n.startswith("pip-") and n.endswith(".whl")]
    assert wheels, "no pip wheel in %s" % bundled
    return os.path.join(bundled, wheels[0], "pip")


def _make_venv(base: str, python: str) -> str:
    venv = os.path.join(base, "venv-" + os.path.basename(os.path.dirname(os.path.dirname(python))))
    subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True, timeout=60,
                   stdin=subprocess.DEVNULL)
    vpy = os.path.join(venv, "bin", "python")
    pip = subprocess.run(
        [vpy, _bundled_pip(python), "install", "-q", "--disable-pip-version-check", "--no-input",
         "paramiko>=3.4", "cloudpickle>=3.0"],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
    assert pip.returncode == 0, "pip install into %s failed:\n%s" % (venv, pip.stderr[-3000:])
    site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    # this checkout, as an editable install puts it (pip install -e would write into the checkout)
    with open(os.path.join(site, "remoteproc-checkout.pth"), "w") as f:
        f.write(CHECKOUT + "\n")
    return vpy


@pytest.fixture(scope="session")
def local_pythons(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """{"oldest"|"newest": (pyenv interpreter, its virtualenv's python)}, built in parallel."""
    oldest, newest = _required()
    base = str(tmp_path_factory.mktemp("local-pythons"))
    with ThreadPoolExecutor(2) as ex:
        venvs = list(ex.map(lambda py: _make_venv(base, py), (oldest, newest)))
    return {"oldest": (oldest, venvs[0]), "newest": (newest, venvs[1])}


PACKAGE = '''\
import importlib.machinery
import sys


def triple(x):
    return 3 * x


def nested_pool(conn, method):
    # a Pool of the host's own multiprocessing in the remote child (forkserver: 3.14's default)
    import multiprocessing
    try:
        with multiprocessing.get_context(method).Pool(1) as pool:
            conn.send(pool.apply_async(abs, (-7,)).get(20))
    except Exception as exc:
        conn.send(repr(exc))
    conn.close()


def where(conn):
    # (the host's own import system cannot find this package: it came from the user's sys.path)
    conn.send((__file__, importlib.machinery.PathFinder.find_spec(__name__) is None, list(sys.version_info[:2])))
    conn.close()
'''

PROGRAM = '''\
import json
import os
import pathlib
import sys

import lp_pkg
from remoteproc import Event, Executor, Lock, Pipe, Pool, Queue, RemoteProcess, Value


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def square(x):
    return x * x


def make_point(i):
    return Point(i, -i)


def echo(conn):
    pid = os.fork()     # (3.12+ would warn here of a thread that is not the user's)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    conn.send((conn.recv() * 2, list(sys.version_info[:2]), __name__))
    conn.close()


def boom():
    raise ValueError("boom in the child")


def paths(conn):
    # (3.13 pickles pathlib's classes as pathlib._local.*, which older Pythons lack)
    p = conn.recv()
    conn.send([type(p).__name__ + ":" + str(p), pathlib.PurePosixPath("/srv")])
    conn.close()


def big(conn):
    conn.send(len(conn.recv_bytes()))
    conn.close()


def producer(q, ev, lock, counter):
    assert ev.wait(30)
    for i in range(3):
        with lock:
            counter.value += 1
        q.put(i)
    q.put(Point(1, 2))


def one(spec, opts):
    r = {}
    a, b = Pipe()
    p = RemoteProcess(spec, target=echo, args=(b,), **opts)
    p.start()
    b.close()
    a.send(21)
    r["echo"] = a.recv()
    p.join(60)
    r["echo_exit"] = p.exitcode
    a, b = Pipe()
    p = RemoteProcess(spec, target=big, args=(b,), **opts)
    p.start()
    b.close()
    a.send_bytes(b"x" * (8 << 20))     # (more than paramiko's send window: the relay waits for it)
    r["big"] = a.recv()
    p.join(60)
    p = RemoteProcess(spec, target=boom, **opts)
    p.start()
    p.join(60)
    r["boom_exit"] = p.exitcode
    a, b = Pipe()
    p = RemoteProcess(spec, target=paths, args=(b,), **opts)
    p.start()
    b.close()
    a.send(pathlib.PurePosixPath("/etc/hosts"))
    sent, back = a.recv()
    r["paths"] = [sent, type(back).__name__, str(back)]
    p.join(60)
    q, ev, lock, counter = Queue(), Event(), Lock(), Value("i", 0)
    p = RemoteProcess(spec, target=producer, args=(q, ev, lock, counter), **opts)
    p.start()
    ev.set()
    got = [q.get(timeout=60) for _ in range(4)]
    p.join(60)
    r["queue"] = got[:3] + [type(got[3]) is Point and [got[3].x, got[3].y]]
    r["counter"], r["producer_exit"] = counter.value, p.exitcode
    a, b = Pipe()
    p = RemoteProcess(spec, target=lp_pkg.where, args=(b,), **opts)
    p.start()
    b.close()
    r["forwarded"] = a.recv()
    p.join(60)
    a, b = Pipe()
    p = RemoteProcess(spec, target=lp_pkg.nested_pool, args=(b, "spawn"), **opts)
    p.start()
    b.close()
    r["nested_spawn_pool"] = a.recv()
    p.join(60)
    with Pool([spec], 2, **opts) as pool:
        r["map"] = pool.map(square, range(5))
        r["apply_async"] = pool.apply_async(lp_pkg.triple, (14,)).get(60)
        r["class"] = [[type(pt).__name__, type(pt) is Point, pt.y] for pt in pool.map(make_point, range(2))]
    with Executor([spec], 2, **opts) as ex:
        r["submit"] = ex.submit(square, 9).result(60)
        r["exec_map"] = list(ex.map(lp_pkg.triple, [1, 2], timeout=60))
    return r


if __name__ == "__main__":
    spec, opts = os.environ["LP_SPEC"], json.loads(os.environ["LP_OPTS"])
    for hostpy in sys.argv[1:]:
        for transport in ("paramiko", "openssh"):
            r = one(spec, dict(opts, python=hostpy, transport=transport))
            print("RESULT " + json.dumps([hostpy, transport, r]), flush=True)
'''

SCRIPT = '''\
import os
import sys
from multiprocessing.connection import Connection

conn = Connection(int(os.environ["REMOTEPROC_FD"]))
conn.send({"argv": sys.argv[1:], "python": "%d.%d" % sys.version_info[:2]})
sys.stdout.write("script stdout line\\n")     # (one write: print() writes the newline apart when unbuffered,
sys.stdout.flush()                          # and the command line's own message line may then land between)
sys.exit(3)
'''


@pytest.fixture(scope="module")
def program_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("local-python-program")
    (d / "lp_pkg").mkdir()
    (d / "lp_pkg" / "__init__.py").write_text(PACKAGE)
    (d / "program.py").write_text(PROGRAM)
    (d / "lp_script.py").write_text(SCRIPT)
    os.chmod(str(d), 0o755)
    return str(d)


def _version_of(python: str) -> list[int]:
    m = re.search(r"/3\.(\d+)\.\d+/bin/", python)
    assert m is not None, python
    return [3, int(m.group(1))]


def _expected(local_py: str, hostpy: str, package_dir: str) -> dict:
    same = _version_of(hostpy) == _version_of(local_py)
    return {
        "echo": [42, _version_of(hostpy), "__main__" if same else "__mp_main__"],
        "echo_exit": 0,
        "big": 8 << 20,
        "boom_exit": 1,
        "paths": ["PurePosixPath:/etc/hosts", "PurePosixPath", "/srv"],
        "queue": [0, 1, 2, [1, 2]],
        "counter": 3,
        "producer_exit": 0,
        "forwarded": [os.path.join(package_dir, "lp_pkg", "__init__.py"), True, _version_of(hostpy)],
        "nested_spawn_pool": 7,
        "map": [0, 1, 4, 9, 16],
        "apply_async": 42,
        "class": [["Point", True, 0], ["Point", True, -1]],
        "submit": 81,
        "exec_map": [3, 6],
    }


def _cli(vpy: str, sshd, *args: str, hostpy: str, transport: str) -> subprocess.CompletedProcess:
    command, rest = args[0], args[1:]
    o = sshd.options()
    return subprocess.run(
        [vpy, "-W", "default", "-m", "remoteproc", command, "-p", str(o["port"]), "-i", o["key_filename"],
         "--known-hosts", o["known_hosts"], "--python", hostpy, "--transport", transport, *rest],
        capture_output=True, text=True, timeout=PROGRAM_TIMEOUT, stdin=subprocess.DEVNULL, cwd="/")


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_user_program_under_local_python(which, local_pythons, program_dir, sshd):
    local_py, vpy = local_pythons[which]
    other_py = local_pythons["newest" if which == "oldest" else "oldest"][0]
    spec = sshd.spec()
    env = dict(os.environ, LP_SPEC=spec, LP_OPTS=json.dumps(sshd.options()))
    for name in ("PYTHONPATH", "COVERAGE_PROCESS_START", "PYTHONWARNINGS"):
        env.pop(name, None)
    results: dict = {}

    def cli_commands():
        # the command line: run in one transport and mode, check in the other (swapped for the other Python)
        transports = ("paramiko", "openssh") if which == "oldest" else ("openssh", "paramiko")
        results["run"] = _cli(vpy, sshd, "run", "-n", spec, os.path.join(program_dir, "lp_script.py"), "a", "--b",
                              "1", hostpy=other_py, transport=transports[0])
        results["check"] = _cli(vpy, sshd, "check", spec, hostpy=local_py, transport=transports[1])

    cli = threading.Thread(target=cli_commands, daemon=True)
    cli.start()
    # -W default: a DeprecationWarning (or ResourceWarning) of remoteproc's would be printed
    proc = subprocess.run([vpy, "-W", "default", "program.py", local_py, other_py], cwd=program_dir, env=env,
                          capture_output=True, text=True, timeout=PROGRAM_TIMEOUT, stdin=subprocess.DEVNULL)
    cli.join(PROGRAM_TIMEOUT)
    assert not cli.is_alive(), "the command line did not finish"
    assert proc.returncode == 0, "the program failed:\n%s\n%s" % (proc.stdout, proc.stderr[-5000:])
    got = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert [g[:2] for g in got] == [[h, t] for h in (local_py, other_py) for t in ("paramiko", "openssh")]
    for hostpy, transport, result in got:
        assert result == _expected(local_py, hostpy, program_dir), (hostpy, transport)
    assert proc.stderr.count("ValueError: boom in the child") == 4, proc.stderr
    assert 'File "%s"' % os.path.join(program_dir, "program.py") in proc.stderr     # the user's file, in the traceback
    assert "Warning" not in proc.stderr, proc.stderr

    run, check = results["run"], results["check"]
    assert run.returncode == 3, (run.stdout, run.stderr)
    messages = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert messages == [{"argv": ["a", "--b", "1"], "python": "%d.%d" % tuple(_version_of(other_py))}], run.stdout
    assert "script stdout line" in run.stdout.splitlines()
    assert check.returncode == 0, (check.stdout, check.stderr)
    assert "mode:            same version" in check.stdout, check.stdout
    assert "OK: remoteproc works with %s" % spec in check.stdout
    for out in (run.stderr, check.stderr):
        assert "Warning" not in out, out


# -- found by running the above: a spawn-mode host's first start --------------------------------------

def test_first_start_on_a_spawn_mode_host_leaves_no_queue_end_open(sshd):
    """The first start on a host pickles for the same version; a host with another Python answers
    "mode spawn" and start() pickles again.  The Connections the first pickling made for a Queue
    (or Lock, Event ...) were kept open as long as the process object lived, and the owner's server
    thread with them (found under local Python 3.9 and 3.10 by test_queues.py's two-host test)."""
    pythons = _pyenv_pythons()
    ours = sys.version_info[:2]
    other = [exe for key, exe in sorted(pythons.items()) if key != ours]
    if not other:
        _required()
        pytest.fail("no pyenv CPython 3.9+ other than %d.%d under %s" % (ours + (PYENV,)), pytrace=False)
    # a python= spelling of its own: a connection whose mode this process has not learnt yet
    opts = dict(sshd.options(), python="env REMOTEPROC_TEST_RUN=%s %s" % (uuid.uuid4().hex, other[0]))
    q = Queue()
    p = RemoteProcess(sshd.spec(), target=spawn_targets.put_items, args=(q, [1, 2]), **opts)
    p.start()
    assert [q.get(timeout=30), q.get(timeout=30)] == [1, 2]
    p.join(30)
    assert p.exitcode == 0
    assert owned._get_broker().settle(p, 10), "the Queue ends pickled for the first try are still open"


# -- a remote child's own multiprocessing with spawn or forkserver (Python 3.14's default) --------------

@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_remote_child_runs_a_pool_of_its_own_with(method, sshd):
    """A remote child's local Pool under spawn or forkserver passes the Connections of its queues to
    its workers by pickling them: the child's refusal of Connections inside messages (they cannot
    cross hosts) refused those too."""
    a, b = Pipe()
    p = RemoteProcess(sshd.spec(), target=local_python_targets.nested_pool, args=(b, method), **sshd.options())
    p.start()
    b.close()
    assert a.poll(60), "no answer from the remote child"
    assert a.recv() == [1, 2]
    p.join(30)
    assert p.exitcode == 0


# -- fork() in a remote child on Python 3.12+: the watchdog thread is remoteproc's, not the user's -----

@pytest.mark.parametrize("with_a_thread", [False, True], ids=["alone", "with-a-thread-of-its-own"])
def test_fork_in_a_remote_child_warns_only_for_the_users_threads(with_a_thread, sshd):
    """CPython 3.12+ warns (DeprecationWarning) at fork() in a multi-threaded process; a remote child
    always has remoteproc's watchdog thread, so a target in ``__main__`` that forked printed that
    warning on the user's terminal where a local child prints nothing.  A thread of the user's
    still gets the warning."""
    pythons = _pyenv_pythons()
    newest = max(pythons) if pythons else None
    if newest is None or newest < (3, 12):
        _required()
        pytest.fail("this needs pyenv's CPython 3.12 or newer under %s" % PYENV, pytrace=False)
    a, b = Pipe()
    p = RemoteProcess(sshd.spec(), target=local_python_targets.fork_warnings, args=(b, with_a_thread),
                      python=pythons[newest], **sshd.options())
    p.start()
    b.close()
    assert a.poll(60), "no answer from the remote child"
    caught = a.recv()
    p.join(30)
    assert p.exitcode == 0
    if with_a_thread:
        assert len(caught) == 1 and "is multi-threaded, use of fork()" in caught[0], caught
    else:
        assert caught == []
