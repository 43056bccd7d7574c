"""Script mode: remoteproc.run(host, path, *args) runs a script that lives on the host.

The scripts are files on the loopback host (this machine), so these tests use the
loopback sshd directly; the comparisons run the same script with the local python3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from proctable import gone

import remoteproc
from remoteproc import RemoteProcess
from remoteproc.script import ONE_LINER, RemoteScript, encode_args, run

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loopback(sshd):
    return sshd.spec(), sshd.options()


REPORT = ONE_LINER + """
import sys
conn.send({"argv": sys.argv, "name": __name__, "file": __file__, "path0": sys.path[0],
           "cwd": os.getcwd(), "fd": os.environ["REMOTEPROC_FD"], "pid": os.getpid(),
           "x": os.environ.get("X")})
"""


def test_run_returns_a_started_handle(loopback, scripts):
    host, options = loopback
    path = scripts("report.py", REPORT)
    p = run(host, path, "one", "two", **options)
    assert isinstance(p, RemoteScript) and isinstance(p, RemoteProcess)
    assert p.is_alive() or p.exitcode is not None
    assert isinstance(p.pid, int)
    got = p.conn.recv()
    p.join(30)
    assert p.exitcode == 0
    assert got["argv"] == [path, "one", "two"]
    assert got["name"] == "__main__" and got["file"] == path
    assert got["path0"] == os.path.dirname(path)          # as "python3 path": the script's directory
    assert got["pid"] == p.pid and got["fd"].isdigit()
    assert got["cwd"] == os.path.expanduser("~")          # the login directory, as ssh host python3 ...
    assert p.path == path and p.argv == ["one", "two"]
    assert "path=%r" % path in repr(p) and "host=%r" % host in repr(p)
    with pytest.raises(EOFError):
        p.conn.recv()
    p.conn.close()
    p.close()


def test_arguments_strings_as_given_others_as_json(loopback, scripts):
    host, options = loopback
    path = scripts("args.py", ONE_LINER + """
import sys
from remoteproc.agent.script import args
conn.send((sys.argv[1:], args()))
""")
    values = ["plain", "42", 42, {"a": [1, 2]}, None, True, 1.5, ["x", {"y": None}], "", "-dash"]
    p = run(host, path, *values, **options)
    argv, decoded = p.conn.recv()
    p.join(30)
    assert p.exitcode == 0
    assert argv == ["plain", "42", "42", '{"a": [1, 2]}', "null", "true", "1.5", '["x", {"y": null}]', "", "-dash"]
    assert decoded == values            # "42" stays a string, 42 comes back a number


def test_unsendable_arguments_fail_before_any_connection():
    with pytest.raises(TypeError, match="argument 2"):
        run("nobody@host.invalid", "x.py", "ok", b"bytes are not JSON")
    with pytest.raises(TypeError, match="JSON"):
        RemoteScript("nobody@host.invalid", "x.py", [{1, 2}])
    with pytest.raises(TypeError):
        RemoteScript("nobody@host.invalid", "x.py", "a string is not a sequence of arguments")
    with pytest.raises(TypeError):
        RemoteScript("nobody@host.invalid", None)
    with pytest.raises(remoteproc.ConfigError):
        RemoteScript("nobody@host.invalid", "x.py", no_such_option=1)
    assert encode_args([os.path.join("a", "b"), 1]) == (["a/b", "1"], [2])


def test_messages_both_ways(loopback, scripts):
    host, options = loopback
    path = scripts("upper.py", """
        from multiprocessing.connection import Connection; import os
        conn = Connection(int(os.environ["REMOTEPROC_FD"]))
        for s in iter(conn.recv, None):
            conn.send(s.upper())
        conn.send_bytes(b"raw " * 3, 4)
    """)
    p = run(host, path, **options)
    for word in ("hello", "world", ""):
        p.conn.send(word)
        assert p.conn.recv() == word.upper()
    p.conn.send(None)
    assert p.conn.recv_bytes() == b"raw raw "
    p.join(30)
    assert p.exitcode == 0


def _compare_with_local_python(host, options, path, args, capfd):
    local = subprocess.run([sys.executable, path, *args], capture_output=True, text=True, timeout=30,
                           cwd=os.path.dirname(path))
    capfd.readouterr()
    p = run(host, path, *args, **options)
    p.join(30)
    out, err = capfd.readouterr()
    return local, p, out, err


@pytest.mark.parametrize("case,code", [("exit3", 3), ("exit_str", 1), ("exit_none", 0), ("raise", 1),
                                       ("syntax", 1)])
def test_exit_codes_and_tracebacks_as_python3_path(loopback, scripts, capfd, case, code):
    host, options = loopback
    sources = {
        "exit3": "import sys\nprint('out')\nsys.exit(3)\n",
        "exit_str": "import sys\nsys.exit('a reason on stderr')\n",
        "exit_none": "import sys\nsys.exit(None)\n",
        "raise": "def inner():\n    raise ValueError('script boom')\n\ninner()\n",
        "syntax": "x = (\n",
    }
    path = scripts(case + ".py", sources[case])
    local, p, out, err = _compare_with_local_python(host, options, path, [], capfd)
    assert p.exitcode == local.returncode == code
    assert out == local.stdout
    assert err == local.stderr             # the same text: no "Process ..." header, no runpy frames


def test_a_directory_or_zip_file_runs_its_main_module_as_python3_path(loopback, tmp_path, capfd):
    """python3 DIR (and python3 APP.zip) runs DIR/__main__.py with DIR first on sys.path; run() said
    "[Errno 21] Is a directory" (exit 2) for a directory."""
    import zipfile

    host, options = loopback
    app = tmp_path / "app"
    app.mkdir()
    (app / "__main__.py").write_text("import sys\nprint(__name__, sys.argv[1:], sys.path[0] == sys.argv[0])\n"
                                     "import helper\nhelper.fail()\n")
    (app / "helper.py").write_text("def fail():\n    raise ValueError('from the app')\n")
    archive = str(tmp_path / "app.zip")
    with zipfile.ZipFile(archive, "w") as z:
        z.write(app / "__main__.py", "__main__.py")
        z.write(app / "helper.py", "helper.py")
    for path in (str(app), archive):
        local, p, out, err = _compare_with_local_python(host, options, path, ["a", "1"], capfd)
        assert p.exitcode == local.returncode == 1, (path, err)
        assert out == local.stdout == "__main__ ['a', '1'] True\n"
        assert err.splitlines()[-1] == local.stderr.splitlines()[-1] == "ValueError: from the app"
        assert "helper.py" in err and "runpy" not in err
    (tmp_path / "empty").mkdir()
    no_main = str(tmp_path / "lib.zip")     # (a zip file without one said runpy's chained ImportError,
    with zipfile.ZipFile(no_main, "w") as z:    # with the agent's frames)
        z.write(app / "helper.py", "helper.py")
    for path in (str(tmp_path / "empty"), no_main):
        local, p, out, err = _compare_with_local_python(host, options, path, [], capfd)
        assert p.exitcode == local.returncode == 1, err     # as python3 exits for one without __main__
        assert err == "remoteproc: can't find '__main__' module in %r on host %s\n" % (path, socket.gethostname())
        assert local.stderr == "%s: can't find '__main__' module in %r\n" % (sys.executable, path)


def test_a_module_or_code_runs_as_python3_dash_m_or_dash_c(loopback, scripts, capfd):
    host, options = loopback
    directory = os.path.dirname(scripts("mymain.py", REPORT))
    p = run(host, "mymain", "one", 2, cwd=directory, kind="module", **options)
    got = p.conn.recv()
    p.join(30)
    assert p.exitcode == 0 and p.kind == "module" and "module='mymain'" in repr(p)
    path = os.path.join(directory, "mymain.py")
    assert got["argv"] == [path, "one", "2"] and got["name"] == "__main__" and got["file"] == path
    assert got["path0"] == os.path.realpath(directory)       # as python3 -m: the working directory
    p = run(host, REPORT.replace('"file": __file__, ', ""), "x", kind="code", **options)   # (-c: no __file__)
    got = p.conn.recv()
    p.join(30)
    assert p.exitcode == 0 and got["argv"] == ["-c", "x"] and got["name"] == "__main__" and got["path0"] == ""
    for kind, source, said in [("module", "no_such_module_at_all", "No module named no_such_module_at_all"),
                               ("module", "email", "'email' is a package and cannot be directly executed"),
                               ("code", "1/0", "ZeroDivisionError")]:
        p = run(host, source, kind=kind, **options)
        p.join(30)
        assert p.exitcode == 1 and said in capfd.readouterr().err, (kind, source)
    with pytest.raises(ValueError, match="kind must be one of"):
        RemoteScript(host, "x", kind="modul", **options)


def test_missing_script(loopback, capfd):
    host, options = loopback
    p = run(host, "/nonexistent/script.py", **options)
    p.join(30)
    assert p.exitcode == 2                  # as python3 exits for a file it cannot open
    err = capfd.readouterr().err
    assert "can't open file '/nonexistent/script.py'" in err and "No such file or directory" in err
    assert "relative paths" not in err          # (an absolute path starts nowhere)
    p = run(host, "no/such/script.py", cwd="/tmp", **options)
    p.join(30)
    assert p.exitcode == 2
    err = capfd.readouterr().err
    assert "can't open file 'no/such/script.py'" in err
    assert "(relative paths start from %s)" % os.path.realpath("/tmp") in err


def test_a_script_the_account_may_not_read_is_named_so(plain_user_host, plain_user_options, tmp_path, capfd):
    """Not "No such file": the file is there, in a directory the account cannot enter (as python3 says)."""
    path = tmp_path / "private" / "script.py"
    path.parent.mkdir(mode=0o700)
    path.write_text("print('never')\n")
    p = run(plain_user_host, str(path), **plain_user_options)
    p.join(30)
    assert p.exitcode == 2
    err = capfd.readouterr().err
    assert "can't open file %r on host %s: [Errno 13] Permission denied" % (str(path), socket.gethostname()) in err, err


def test_terminate_and_kill(loopback, scripts):
    host, options = loopback
    path = scripts("sleeper.py", ONE_LINER + "\nimport time\nconn.send(os.getpid())\ntime.sleep(300)\n")
    for method, code in (("terminate", -signal.SIGTERM), ("kill", -signal.SIGKILL)):
        p = run(host, path, **options)
        pid = p.conn.recv()
        getattr(p, method)()
        p.join(30)
        assert p.exitcode == code
        assert gone(pid)


def test_cwd_env_and_relative_paths(loopback, scripts):
    host, options = loopback
    path = scripts("report.py", REPORT)
    directory, name = os.path.split(path)
    p = run(host, name, cwd=directory, env={"X": "from env"}, **options)
    got = p.conn.recv()
    p.join(30)
    assert p.exitcode == 0
    assert got["cwd"] == directory and got["x"] == "from env" and got["argv"] == [name]


def test_a_missing_cwd_is_a_bootstrap_error_from_start(loopback, scripts, capfd):
    host, options = loopback
    path = scripts("never.py", "open('ran', 'w').close()\n")
    with pytest.raises(remoteproc.BootstrapError) as info:
        run(host, path, cwd="/no/such/dir", **options)        # as RemoteProcess(..., cwd=...) does
    assert "/no/such/dir" in str(info.value) and "127.0.0.1" in str(info.value)
    p = RemoteScript(host, path, cwd=path, **options)             # not a directory
    with pytest.raises(remoteproc.BootstrapError, match="not a directory"):
        p.start()
    assert p.conn is None and "cannot change to directory" not in capfd.readouterr().err
    assert not os.path.exists(os.path.join(os.path.dirname(path), "ran"))


def test_cwd_and_a_relative_script_path_as_python3_in_that_directory(loopback, scripts, capfd):
    host, options = loopback
    path = scripts("where.py", """
        import json, os, sys
        print(json.dumps({"argv": sys.argv, "file": __file__, "path0": sys.path[0], "cwd": os.getcwd()}))
    """)
    directory, name = os.path.split(path)
    for given in (name, os.path.join(".", name)):
        local = subprocess.run([sys.executable, given], capture_output=True, text=True, timeout=30,
                               cwd=directory)
        capfd.readouterr()
        p = run(host, given, cwd=directory, **options)
        p.join(30)
        assert p.exitcode == local.returncode == 0
        got, expected = json.loads(capfd.readouterr().out), json.loads(local.stdout)
        assert got["cwd"] == expected["cwd"] == directory
        assert got["argv"] == expected["argv"] == [given]
        assert got["path0"] == expected["path0"] == directory        # the script's directory first
        assert os.path.join(got["cwd"], got["file"]) in (path, os.path.join(directory, given))

def test_threads_and_atexit_run_before_the_script_ends(loopback, scripts):
    host, options = loopback
    path = scripts("threads.py", ONE_LINER + """
import atexit, threading, time
atexit.register(lambda: conn.send("atexit"))
def late():
    time.sleep(0.3)
    conn.send("thread")
threading.Thread(target=late).start()
conn.send("main done")
""")
    p = run(host, path, **options)
    got = [p.conn.recv() for _ in range(3)]
    p.join(30)
    assert got == ["main done", "thread", "atexit"]
    assert p.exitcode == 0


def test_output_is_forwarded(loopback, scripts, capfd):
    host, options = loopback
    path = scripts("speak.py", "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n")
    p = run(host, path, **options)
    p.join(30)
    out, err = capfd.readouterr()
    assert p.exitcode == 0 and "to stdout" in out and "to stderr" in err


def test_works_for_an_account_with_only_the_system_python(plain_user_host, plain_user_options, scripts):
    path = scripts("plain.py", ONE_LINER + """
import sys
from remoteproc.agent.script import args, connection
conn.send((sys.executable, os.getuid(), args()))
""")
    p = run(plain_user_host, path, "s", {"k": 1}, **plain_user_options)
    executable, uid, got = p.conn.recv()
    p.join(30)
    assert p.exitcode == 0
    assert executable == "/usr/bin/python3" and uid != 0
    assert got == ["s", {"k": 1}]


def test_helpers_outside_script_mode():
    from remoteproc.agent import script as helper

    saved = {k: os.environ.pop(k, None) for k in (helper.ENV_FD, helper.ENV_JSON)}
    try:
        assert helper.args(["prog", "1", "{}"]) == ["1", "{}"]     # nothing decoded outside script mode
        with pytest.raises(RuntimeError, match="REMOTEPROC_FD"):
            helper.connection()
        os.environ[helper.ENV_JSON] = "2"
        assert helper.args(["prog", "1", "{}"]) == ["1", {}]
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def test_one_liner_is_documented():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "api.md")) as f:
        assert 'conn = Connection(int(os.environ["REMOTEPROC_FD"]))' in f.read()


def test_a_module_the_host_lacks_runs_with_dash_m_forwarded(loopback, tmp_path, monkeypatch, capfd):
    """Found by an audit: ``-m`` of a module (or a package with ``__main__``) of the user's that
    the host does not have crashed in runpy (``'ParentImporter' object has no attribute
    'get_code'``): forwarded modules had no code for runpy to run."""
    host, options = loopback
    lib = tmp_path / "lib"
    (lib / "fwdtoolpkg").mkdir(parents=True)
    (lib / "fwdtool.py").write_text("import sys\nprint('tool', __name__, sys.argv[1:])\n")
    (lib / "fwdtoolpkg" / "__init__.py").write_text("")
    (lib / "fwdtoolpkg" / "__main__.py").write_text("import sys\nprint('pkg', __name__, sys.argv[1:])\n"
                                                   "sys.exit(3)\n")
    monkeypatch.syspath_prepend(str(lib))       # (here only: the host's children do not look there)
    capfd.readouterr()
    p = run(host, "fwdtool", "one", kind="module", **options)
    p.join(30)
    assert p.exitcode == 0, capfd.readouterr().err
    assert "tool __main__ ['one']" in capfd.readouterr().out
    p = run(host, "fwdtoolpkg", "two", kind="module", **options)
    p.join(30)
    out, err = capfd.readouterr()
    assert p.exitcode == 3 and "pkg __main__ ['two']" in out, err
