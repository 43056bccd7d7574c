"""Any Python on the host (issue 13): finding ours, spawn mode on another, env, cwd and setup.

The second interpreter is Debian's ``pypy3`` (Python 3.9), installed by scripts/test.sh.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
import spawn_targets
from conftest import _unavailable
from own_sshd import account_whose_python3_is, run_check

from remoteproc import Pipe, Pool, Queue, RemoteProcess, bootstrap
from remoteproc.agent import frames
from remoteproc.errors import BootstrapError, PicklingError

PYPY = shutil.which("pypy3")
OURS = "%d.%d" % sys.version_info[:2]


@pytest.fixture
def pypy():
    if PYPY is None:
        _unavailable("pypy3 (a second Python, 3.9) is not installed; scripts/test.sh installs it")
    return "pypy3"


# -- 1. finding a Python of ours: the exec script, run under real layouts ------------------------------

def _hello_of(command: str, home: str, path: str, timeout: float = 60) -> tuple[dict | None, bytes, int | None]:
    """Run the exec script as sshd would (``sh -c``), with HOME and PATH given and this machine's
    /usr/bin/pythonX.Y (and so /usr/bin/python3) hidden in a mount namespace of its own."""
    hide = "/usr/bin/python%s" % OURS
    inner = "mount --bind /dev/null %s && exec env -i HOME=%s PATH=%s /bin/sh -c %s" % (
        hide, home, path, _q(command))
    proc = subprocess.Popen(["unshare", "-m", "/bin/sh", "-c", inner], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(bootstrap.agent_blob(bool(bootstrap.agent_env())))
        proc.stdin.flush()
    except BrokenPipeError:
        pass            # the script ended before reading its blob
    buf = b""
    hello = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not ready:
            continue
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            break
        buf += data
        if buf.startswith(bootstrap.READY):
            buf = buf[len(bootstrap.READY):]
        if buf.startswith(bootstrap.STUB_STARTED):
            buf = buf[len(bootstrap.STUB_STARTED):]
        if buf.startswith(bootstrap.SOURCE_REQUEST):
            buf = buf[len(bootstrap.SOURCE_REQUEST):]
            proc.stdin.write(bootstrap.source_blob())
            proc.stdin.flush()
        if len(buf) >= frames.HEADER_SIZE:
            length = frames.HEADER.unpack_from(buf)[2]
            if len(buf) >= frames.HEADER_SIZE + length:
                hello = frames.parse_control(buf[frames.HEADER_SIZE:frames.HEADER_SIZE + length])[0]
                break
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    try:
        status = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = proc.wait(30)
    return hello, proc.stderr.read(), status


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _link(home, relative: str, target: str) -> None:
    path = os.path.join(home, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)


@pytest.fixture
def layout_home(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        _unavailable("hiding /usr/bin/python%s needs root and unshare" % OURS)
    if PYPY is None:
        _unavailable("pypy3 is not installed; scripts/test.sh installs it")
    home = str(tmp_path)
    # the account's PATH finds another version first as python3
    _link(home, "bin/python3", PYPY)
    return home


REAL = os.path.realpath(sys.executable)     # a real interpreter of our major.minor


@pytest.mark.parametrize("where,relative", [
    ("pyenv", ".pyenv/versions/%s.7/bin/python%s" % (OURS, OURS)),
    ("uv", ".local/share/uv/python/cpython-%s.7-linux-x86_64-gnu/bin/python%s" % (OURS, OURS)),
    ("conda", "miniforge3/bin/python%s" % OURS),
    ("conda", "miniconda3/envs/ml/bin/python%s" % OURS),
    ("PATH", "tools/python%s" % OURS),
])
def test_a_python_of_ours_is_found_in_the_usual_places(layout_home, where, relative):
    _link(layout_home, relative, REAL)
    path = "%s/bin:%s/tools:/usr/bin:/bin" % (layout_home, layout_home)
    hello, err, _status = _hello_of(bootstrap.command(), layout_home, path)
    assert hello is not None, err
    assert hello["found"] == where
    assert hello["executable"] == os.path.join(layout_home, relative)
    assert bootstrap.mode_of(hello) == "same" and hello["implementation"] == sys.implementation.name


def test_without_a_python_of_ours_the_path_python3_runs_in_spawn_mode(layout_home):
    hello, err, _status = _hello_of(bootstrap.command(), layout_home, "%s/bin:/usr/bin:/bin" % layout_home)
    assert hello is not None, err
    assert hello["found"] == "python3" and hello["implementation"] == "pypy"
    assert hello["python"][:2] == [3, 9] and bootstrap.mode_of(hello) == "spawn"


def test_a_list_of_pythons_prefers_ours_then_takes_the_first_that_runs(layout_home):
    _link(layout_home, "opt/py/bin/python3", REAL)
    path = "%s/bin:/usr/bin:/bin" % layout_home
    hello, err, _ = _hello_of(bootstrap.command(["nonexistent-python", "python3", "~/opt/py/bin/python3"]),
                              layout_home, path)
    assert hello is not None, err
    assert hello["found"] == "python=~/opt/py/bin/python3" and bootstrap.mode_of(hello) == "same"
    hello, err, _ = _hello_of(bootstrap.command(["nonexistent-python", "python3"]), layout_home, path)
    assert hello is not None, err
    assert hello["found"] == "python=python3" and bootstrap.mode_of(hello) == "spawn"
    assert b"not found" not in err, "a candidate the host lacks is passed over quietly"


SHIM = """#!/bin/sh
echo "pyenv: $(basename "$0"): command not found" >&2
echo "The \\`$(basename "$0")' command exists in these Python versions:" >&2
exit 127
"""


def test_a_list_passes_over_a_pyenv_shim_of_a_version_not_selected_quietly(layout_home):
    """Found by a new user's audit: python=["python3.9", ...] where python3.9 is a pyenv shim of a
    version not selected on the host printed pyenv's words at every connection (logged as a
    warning), though the list went on to one that runs; the docs say such candidates are passed
    over quietly."""
    shim = os.path.join(layout_home, ".pyenv/shims/python3.9")
    os.makedirs(os.path.dirname(shim))
    with open(shim, "w") as f:
        f.write(SHIM)
    os.chmod(shim, 0o755)
    _link(layout_home, "opt/py/bin/python3", REAL)
    path = "%s/.pyenv/shims:%s/bin:/usr/bin:/bin" % (layout_home, layout_home)
    hello, err, _ = _hello_of(bootstrap.command(["python3.9", "~/opt/py/bin/python3"]), layout_home, path)
    assert hello is not None, err
    assert hello["found"] == "python=~/opt/py/bin/python3" and bootstrap.mode_of(hello) == "same"
    assert b"pyenv" not in err, err
    # a shim that runs is taken as any interpreter is
    _link(layout_home, ".pyenv/shims/python3", REAL)
    hello, err, _ = _hello_of(bootstrap.command(["python3.9", "python3"]), layout_home, path)
    assert hello is not None, err
    assert hello["found"] == "python=python3" and bootstrap.mode_of(hello) == "same"


def test_no_python_at_all_says_where_we_looked(layout_home):
    os.unlink(os.path.join(layout_home, "bin/python3"))
    hello, err, status = _hello_of(bootstrap.command(), layout_home, "%s/bin:/bin" % layout_home)
    assert hello is None and status == 127 and b"no python3 found" in err


# -- 1. through sshd: an account whose PATH finds another version first -------------------------------

OTHER_USER = "rpother"


@pytest.fixture(scope="module")
def other_account():
    """An account whose login shell puts ~/bin (python3 -> pypy3) first on its PATH."""
    if PYPY is None:
        _unavailable("pypy3 is not installed; scripts/test.sh installs it")
    with account_whose_python3_is(OTHER_USER, PYPY) as server:
        yield server


def test_the_path_python3_of_another_version_is_passed_over_for_ours(other_account):
    parent, child = Pipe()
    p = RemoteProcess(other_account.spec(OTHER_USER), target=spawn_targets.where, args=(child,),
                      **other_account.options(OTHER_USER))
    p.start()
    child.close()
    got = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    assert got[3] == "/usr/bin/python%s" % OURS and got[4] == "CPython"
    assert p._popen.mode == "same" and p._popen.found in ("PATH", "/usr/bin")


def test_check_shows_the_interpreter_where_found_and_the_mode(other_account, capsys):
    out = run_check(other_account, OTHER_USER, "pypy3", capsys)
    assert "pypy3" in out and "spawn mode" in out and "python=pypy3" in out


# -- 3. env, cwd and setup -------------------------------------------------------------------------

def test_cwd_env_and_setup_reach_the_child(plain_user_host, plain_user_options, scripts):
    tmp_path = os.path.dirname(scripts("x.txt", ""))        # (a directory rpuser can enter)
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=spawn_targets.where, args=(child,), cwd=str(tmp_path),
                      env={"RP_TEST_VAR": "from env"},
                      setup=["export RP_FROM_SETUP=yes", "echo setup chatter"], **plain_user_options)
    p.start()
    child.close()
    got = parent.recv()
    p.join(30)
    assert got[:3] == (str(tmp_path), "from env", "yes") and p.exitcode == 0


def test_a_missing_cwd_is_an_error_from_start(plain_user_host, plain_user_options):
    p = RemoteProcess(plain_user_host, target=spawn_targets.square, args=(2,), cwd="/no/such/dir",
                      **plain_user_options)
    with pytest.raises(BootstrapError) as info:
        p.start()
    assert "/no/such/dir" in str(info.value) and "127.0.0.1" in str(info.value)


def test_a_failing_setup_line_is_a_bootstrap_error_quoting_its_output(plain_user_host, plain_user_options):
    p = RemoteProcess(plain_user_host, target=spawn_targets.square, args=(2,),
                      setup=["echo first line ran", "echo the module is missing >&2; false", "echo never"],
                      **plain_user_options)
    with pytest.raises(BootstrapError) as info:
        p.start()
    text = str(info.value)
    assert "setup line 2" in text and "the module is missing" in text and "exit status 1" in text
    assert "127.0.0.1" in text


def test_options_are_checked_in_the_caller(plain_user_host):
    with pytest.raises(TypeError):
        RemoteProcess(plain_user_host, target=print, env={"A": 1})
    from remoteproc.errors import ConfigError

    with pytest.raises(ConfigError):
        RemoteProcess(plain_user_host, target=print, setup=[])
    with pytest.raises(ConfigError):
        RemoteProcess(plain_user_host, target=print, python=["python3", 3])
    # (found by a new user's audit: a blank name went to the host, which said "exec: -c: not found")
    for blank in ("", "   ", ["python3", " "]):
        with pytest.raises(ConfigError, match="names no interpreter: give the host's one"):
            RemoteProcess(plain_user_host, target=print, python=blank)


# -- 2. spawn mode: PyPy 3.9 through the real sshd ------------------------------------------------------

def test_spawn_mode_runs_a_process_with_pipes(plain_user_host, plain_user_options, pypy):
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=spawn_targets.describe, args=(child, spawn_targets.Point(21)),
                      python=pypy, **plain_user_options)
    p.start()
    child.close()
    assert parent.recv() == ("PyPy", (3, 9), 21, "spawn_targets")
    back = parent.recv()
    assert isinstance(back, spawn_targets.Point) and back.x == 42
    p.join(30)
    assert p.exitcode == 0 and p._popen.mode == "spawn"


def test_spawn_mode_exit_codes_tracebacks_and_signals(plain_user_host, plain_user_options, pypy, capfd):
    p = RemoteProcess(plain_user_host, target=spawn_targets.exit_with, args=(3,), python=pypy,
                      **plain_user_options)
    p.start()
    p.join(30)
    assert p.exitcode == 3
    p = RemoteProcess(plain_user_host, target=spawn_targets.fail, args=("remote trouble",), python=pypy,
                      **plain_user_options)
    p.start()
    p.join(30)
    assert p.exitcode == 1
    err = capfd.readouterr().err
    assert "ValueError: remote trouble" in err and spawn_targets.__file__ in err
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=spawn_targets.sleep_then_say, args=(child,), python=pypy,
                      **plain_user_options)
    p.start()
    assert parent.recv() == "sleeping"
    p.terminate()
    p.join(30)
    assert p.exitcode == -signal.SIGTERM


def test_spawn_mode_queue_and_pool(plain_user_host, plain_user_options, pypy):
    q_in, q_out = Queue(), Queue()
    p = RemoteProcess(plain_user_host, target=spawn_targets.echo_from_queue, args=(q_in, q_out), python=pypy,
                      **plain_user_options)
    p.start()
    q_in.put(spawn_targets.Point(5))
    got = q_out.get(timeout=30)
    assert isinstance(got, spawn_targets.Point) and got.x == 5
    p.join(30)
    assert p.exitcode == 0
    with Pool([plain_user_host], processes_per_host=2, python=pypy, **plain_user_options) as pool:
        assert pool.map(spawn_targets.square, range(20)) == [x * x for x in range(20)]
        with pytest.raises(PicklingError) as info:
            pool.apply_async(lambda x: x, (1,))
        assert "lambda" in str(info.value) and "another version" in str(info.value)


def test_spawn_mode_forwards_a_private_package(plain_user_host, plain_user_options, pypy, tmp_path, monkeypatch):
    pkg = tmp_path / "rp_private_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .calc import triple\n")
    (pkg / "calc.py").write_text("def triple(conn, x):\n    import sys\n    conn.send((x * 3, sys.version_info[:2]))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import rp_private_pkg

    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=rp_private_pkg.triple, args=(child, 7), python=pypy,
                      **plain_user_options)
    p.start()
    child.close()
    assert parent.recv() == (21, (3, 9))
    p.join(30)
    assert p.exitcode == 0


def test_spawn_mode_refuses_what_cannot_cross_before_anything_starts(plain_user_host, plain_user_options, pypy):
    def closure(conn):
        conn.send(1)

    class Local:
        pass

    first = RemoteProcess(plain_user_host, target=spawn_targets.square, args=(1,), python=pypy,
                          **plain_user_options)
    first.start()           # (the host's mode is known from here on)
    first.join(30)
    # (a lambda at a module's top level is still a lambda, and a decorator's inner function is not
    # found by the name the module gives it: the message said "define it at the top level" of both,
    # where they were; now it says what to change: a def, functools.wraps)
    for target, args, what in [(lambda: 1, (), "<lambda>"), (closure, (None,), "closure"),
                               (spawn_targets.square, (Local(),), "Local"),
                               (spawn_targets.module_lambda, (1,), "write it as a def"),
                               (spawn_targets.decorated, (1,), "spawn_targets.decorated is "
                                "_plain_decorator.<locals>.inner): decorate that inner function with "
                                "functools.wraps(func)"),
                               (spawn_targets.add_two, (None, 1), "a closure that _make_adder made "
                                "(spawn_targets.add_two is _make_adder.<locals>.add): define it at the top level")]:
        p = RemoteProcess(plain_user_host, target=target, args=args, python=pypy, **plain_user_options)
        with pytest.raises(PicklingError) as info:
            p.start()
        text = str(info.value)
        assert what in text and "another version" in text and "Python %s" % OURS in text
        assert "top level of a module" in text
        assert p.pid is None
    q = Queue()
    p = RemoteProcess(plain_user_host, target=spawn_targets.put_items, args=(q, [1]), python=pypy,
                      **plain_user_options)
    p.start()
    assert q.get(timeout=30) == 1
    p.join(30)
    with pytest.raises(PicklingError):
        q.put(lambda: 1)
    a, b = Pipe()
    with pytest.raises(TypeError, match="cannot put a Connection into a remoteproc queue"):
        q.put({"conn": a})      # (as in same mode: pass Connections as process arguments)
    a.close()
    b.close()


def test_spawn_mode_names_why_a_module_level_function_cannot_go_by_reference(plain_user_host, plain_user_options,
                                                                             pypy, monkeypatch):
    """A function made by code generation (its module is not importable) and one whose module name now
    holds another object (monkeypatched, or redefined): the host could not find them by name."""
    generated: dict = {"__name__": "generated_at_run_time"}
    exec("def work(x):\n    return x\n", generated)
    square = spawn_targets.square
    monkeypatch.setattr(spawn_targets, "square", lambda x: x * x)
    first = RemoteProcess(plain_user_host, target=spawn_targets.exit_with, args=(0,), python=pypy,
                          **plain_user_options)
    first.start()           # (the host's mode is known from here on)
    first.join(30)
    for target, name, why in [(generated["work"], "generated_at_run_time.work", "its module 'generated_at_run_time' "
                                                                                "is not importable"),
                              (square, "spawn_targets.square", "spawn_targets.square is not this object")]:
        p = RemoteProcess(plain_user_host, target=target, args=(1,), python=pypy, **plain_user_options)
        with pytest.raises(PicklingError) as info:
            p.start()
        text = str(info.value)
        assert name in text and why in text and "another version" in text, text
        assert p.pid is None


MAIN_SCRIPT = '''
import json, sys
from remoteproc import RemoteProcess, Pipe, Queue, Pool

class Box:
    def __init__(self, v):
        self.v = v

def work(conn, box):
    import sys
    conn.send((__name__, box.v, sys.version_info[:2], sys.argv[2:]))
    conn.send(Box(box.v + 1))

def double(x):
    return 2 * x

if __name__ == "__main__":
    host, options = json.loads(sys.argv[1])
    a, b = Pipe()
    p = RemoteProcess(host, target=work, args=(b, Box(1)), python="pypy3", **options)
    p.start()
    name, v, ver, argv = a.recv()
    back = a.recv()
    p.join(30)
    with Pool([host], processes_per_host=1, python="pypy3", **options) as pool:
        doubled = pool.map(double, [1, 2, 3])
    print(json.dumps([name, v, list(ver), argv, type(back).__name__, back.v, p.exitcode, doubled]))
'''


def _runs_main_script_as_mp_main(path, host, options):
    """Run MAIN_SCRIPT (as written to ``path``) against a pypy3 host: its child saw itself as ``__mp_main__``."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(bootstrap.__file__))))
    out = subprocess.run([sys.executable, path, json.dumps([host, options]), "-v", "x"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["__mp_main__", 1, [3, 9], ["-v", "x"], "Box", 2, 0,
                                                               [2, 4, 6]]


@pytest.mark.parametrize("name", ["spawn_main.py", "spawn_m\u00e4in.py"])
def test_spawn_mode_imports_main_as_mp_main(plain_user_host, plain_user_options, pypy, scripts, name):
    """(A non-ASCII script name too: a session without a locale, as paramiko's, must not leave the
    host's PyPy unable to name it; CPython coerces the C locale, PyPy does not.)"""
    path = scripts(name, MAIN_SCRIPT)
    _runs_main_script_as_mp_main(path, plain_user_host, plain_user_options)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "latin-1"])
def test_spawn_mode_reads_a_main_script_as_python_does(plain_user_host, plain_user_options, pypy, scripts, encoding):
    """A script saved with a UTF-8 byte order mark (Windows editors), or in Latin-1 with its PEP 263
    coding line, runs as ``__mp_main__`` on the host: its text is decoded as Python decodes it
    (the mark was a SyntaxError there, the Latin-1 text was not sent at all)."""
    path = scripts("spawn_encoded.py", "")
    text = "# -*- coding: %s -*-\nACCENT = 'caf\u00e9'\n%s" % ("utf-8" if encoding == "utf-8-sig" else encoding,
                                                            MAIN_SCRIPT)
    with open(path, "wb") as f:
        f.write(text.encode(encoding))
    _runs_main_script_as_mp_main(path, plain_user_host, plain_user_options)


def test_the_agent_parses_on_python_3_8_syntax():
    """The agent and cloudpickle travel as source to other Pythons: no syntax newer than 3.8."""
    import ast

    import cloudpickle

    roots = [os.path.dirname(bootstrap.__file__) + "/agent", os.path.dirname(cloudpickle.__file__)]
    for root in roots:
        for name in os.listdir(root):
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    ast.parse(f.read(), name, feature_version=(3, 8))


def test_spawn_payload_is_plain_pickle_by_reference():
    import pickletools

    p = RemoteProcess("nowhere.invalid", target=spawn_targets.square, args=(3,))
    data, bridged = __import__("remoteproc.reduction", fromlist=["x"]).dumps_process(p, "h", "spawn", "x")
    ops = {op.name for op, _arg, _pos in pickletools.genops(data)}
    assert "spawn_targets" in data.decode("latin-1") and not bridged
    assert data[1] == 4      # (spawn's protocol: what older releases of a package read, numpy 1 of numpy 2)
    assert "STACK_GLOBAL" in ops


def test_the_openssh_transport_finds_runs_spawn_mode_and_setup(plain_user_host, plain_user_options, pypy):
    if shutil.which("ssh") is None:
        _unavailable("no ssh client for transport='openssh'")
    options = dict(plain_user_options, transport="openssh")
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=spawn_targets.where, args=(child,), setup="export RP_FROM_SETUP=ssh",
                      **options)
    p.start()
    child.close()
    got = parent.recv()
    p.join(30)
    assert got[2] == "ssh" and p._popen.mode == "same" and p._popen.found == "python3"
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=spawn_targets.describe, args=(child, spawn_targets.Point(2)),
                      python=pypy, **options)
    p.start()
    child.close()
    assert parent.recv()[:3] == ("PyPy", (3, 9), 2)
    p.join(30)
    assert p.exitcode == 0 and p._popen.mode == "spawn"


INTERACTIVE = '''
import json, sys
from remoteproc import RemoteProcess, PicklingError
def typed_at_the_prompt():
    pass
host, options = json.loads(sys.argv[1])
try:
    RemoteProcess(host, target=typed_at_the_prompt, python="pypy3", **options).start()
except PicklingError as exc:
    print(exc)
'''


@pytest.mark.parametrize("how", ["-c", "stdin", "zipapp"])
def test_a_function_defined_interactively_is_refused_in_spawn_mode(plain_user_host, plain_user_options, pypy, how,
                                                                   tmp_path):
    """``python -c`` and a script read from stdin (``python - < script.py``: its ``__file__`` is
    "<stdin>") leave nothing for the host to import: refused at start(), not remotely.  A zip
    application's ``__main__.py`` is refused too, saying so (found by an audit: it was said to be
    defined interactively, with the fix "define it at the top level of your script")."""
    import zipfile

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(bootstrap.__file__))))
    argv = {"-c": [sys.executable, "-c", INTERACTIVE], "stdin": [sys.executable, "-"],
            "zipapp": [sys.executable, str(tmp_path / "app.pyz")]}[how]
    with zipfile.ZipFile(tmp_path / "app.pyz", "w") as z:
        z.writestr("__main__.py", INTERACTIVE)
    out = subprocess.run(argv + [json.dumps([plain_user_host, plain_user_options])],
                         input=INTERACTIVE if how == "stdin" else None, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert "__main__.typed_at_the_prompt" in out.stdout and "another version" in out.stdout
    if how == "zipapp":
        assert "zip application %s" % (tmp_path / "app.pyz") in out.stdout, out.stdout
        assert "defined interactively" not in out.stdout, out.stdout
    else:
        assert "defined interactively" in out.stdout and ("python -c" in out.stdout or how != "-c")


def test_a_function_of_a_main_module_run_with_python_m_is_refused_in_spawn_mode(plain_user_host, plain_user_options,
                                                                             pypy, tmp_path):
    """``python -m pkg.mod``: only a script run by its path is shipped to a spawn-mode child, so the
    refusal says so, at start()."""
    (tmp_path / "as_module.py").write_text(INTERACTIVE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.path.dirname(os.path.dirname(os.path.abspath(bootstrap.__file__)))]))
    out = subprocess.run([sys.executable, "-m", "as_module", json.dumps([plain_user_host, plain_user_options])],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "__main__.typed_at_the_prompt" in out.stdout and "run with python -m" in out.stdout, out.stdout
    # (its fix was "define it at the top level of a module", where it already is)
    assert "Fix: run that module as a script, by its path (python3 %s)" % (tmp_path / "as_module.py") in out.stdout
    assert "define it at the top level" not in out.stdout
    assert "another version" in out.stdout


def test_spawn_mode_event(plain_user_host, plain_user_options, pypy):
    from remoteproc import Event

    ev = Event()
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=spawn_targets.set_event, args=(ev, child), python=pypy,
                      **plain_user_options)
    p.start()
    child.close()
    assert parent.recv() is True and ev.wait(30)
    p.join(30)
    assert p.exitcode == 0


def test_pool_and_executor_take_cwd_and_env(plain_user_host, plain_user_options, scripts):
    from remoteproc import Executor

    directory = os.path.dirname(scripts("y.txt", ""))
    with Pool([plain_user_host], processes_per_host=1, cwd=directory, env={"RP_TEST_VAR": "pool"},
              **plain_user_options) as pool:
        assert pool.map(spawn_targets.cwd_and_var, [0, 1]) == [(directory, "pool")] * 2
    with Executor([(plain_user_host, {"env": {"RP_TEST_VAR": "per host"}})], processes_per_host=1,
                  cwd=directory, **plain_user_options) as ex:
        assert ex.submit(spawn_targets.cwd_and_var, 0).result(60) == (directory, "per host")


def test_a_closure_whose_cell_is_still_empty_is_called_a_closure():
    """The decorator test reads what the closure holds: a cell not yet filled holds nothing."""
    from remoteproc import reduction

    def factory():
        def late():
            return later
        yield late
        later = 1           # (never reached: late's cell stays empty)
        yield later

    late = next(factory())
    globals()["late_alias"] = late
    try:
        why = reduction._not_importable(late)
    finally:
        del globals()["late_alias"]
    maker = "test_a_closure_whose_cell_is_still_empty_is_called_a_closure.<locals>.factory"
    assert why.startswith("a closure that %s made" % maker), why
    assert "%s.late_alias is" % __name__ in why, why
