"""The command line, run as a user runs it: ``python -m remoteproc ...`` against the loopback sshd.

Host options come from the ssh_config file the loopback server writes (``-F FILE`` and
its ``remoteproc-USER`` aliases) or from flags (``-p``, ``-l``, ``-i``, ``--known-hosts``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from proctable import gone

from remoteproc import cli
from remoteproc.testing import current_user
from remoteproc.testing.net import free_port

pytestmark = pytest.mark.timeout(90)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def remoteproc_cmd(*args, timeout=60, env=ENV, **kwargs):
    return subprocess.run([sys.executable, "-m", "remoteproc", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, **kwargs)


@contextlib.contextmanager
def cli_run(config: str, host: str, path: str) -> Iterator[subprocess.Popen]:
    """``remoteproc run -F CONFIG HOST PATH`` in a session of its own, its output ours to read;
    killed (its whole group) if it still runs at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "remoteproc", "run", "-F", config, host, path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=ENV, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture
def flags(sshd):
    """Flags that reach the loopback sshd without any ssh_config."""
    return ["-p", str(sshd.port), "-l", current_user(), "-i", sshd.client_key,
            "--known-hosts", sshd.known_hosts, "-F", "none"]


# -- help and parsing ---------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["cache"], ["demo"]])
def test_help_has_examples(command):
    out = remoteproc_cmd(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "examples:" in out.stdout
    if command == ["run"]:
        assert 'Connection(int(os.environ["REMOTEPROC_FD"]))' in out.stdout
    if command in (["run"], ["check"]):
        for flag in ("--port", "--identity", "--python", "--known-hosts", "--accept-new", "--ssh-config",
                     "--proxy-jump"):
            assert flag in out.stdout


def test_no_command_is_a_usage_error():
    out = remoteproc_cmd()
    assert out.returncode == 2 and "usage:" in out.stderr


def test_everything_after_the_script_goes_to_the_script():
    args = cli.build_parser().parse_args(["run", "-p", "2222", "h", "s.py", "--port", "5", "-i", "x", "--", "y"])
    assert (args.port, args.host, args.script) == (2222, "h", "s.py")
    assert args.args == ["--port", "5", "-i", "x", "--", "y"]
    assert cli.ssh_options(args) == {"port": 2222}
    args = cli.build_parser().parse_args(["check", "-J", "a@j1,j2:2200", "h"])
    assert cli.ssh_options(args) == {"proxy_jump": "a@j1,j2:2200"}



@pytest.mark.parametrize("argv,options,script,rest", [
    (["h", "s.py", "--", "-x", "--", "y"], {}, "s.py", ["--", "-x", "--", "y"]),   # a first "--" too
    (["h", "s.py", "--"], {}, "s.py", ["--"]),
    (["h", "s.py", "-h", "--version", "--cwd", "d"], {}, "s.py", ["-h", "--version", "--cwd", "d"]),
    (["--cwd", "/srv", "-e", "A=1", "--env=B=2", "--transport", "openssh", "-p2222", "h", "s.py", "--", "x"],
     {"cwd": "/srv", "env": ["A=1", "B=2"], "transport": "openssh", "port": 2222}, "s.py", ["--", "x"]),
    (["h", "--cw", "/srv", "-F", "cfg", "s.py", "-F", "x"], {"cwd": "/srv", "ssh_config": "cfg"}, "s.py",
     ["-F", "x"]),
    (["-i", "k1", "--identity=k2", "--accept-new", "h", "s.py", "a b", "", "-"],
     {"key_filename": ["k1", "k2"], "accept_new": True}, "s.py", ["a b", "", "-"]),
    (["-J", "me@jump:2222,jump2", "h", "s.py", "-J", "x"], {"proxy_jump": "me@jump:2222,jump2"}, "s.py",
     ["-J", "x"]),
    (["h", "--", "-odd.py", "--", "-x"], {}, "-odd.py", ["--", "-x"]),      # "--" before SCRIPT ends options
    (["--", "h", "s.py", "-5"], {}, "s.py", ["-5"]),
])
def test_run_gives_the_script_every_argument_after_it_as_given(argv, options, script, rest):
    args = cli.build_parser().parse_args(["run", *argv])
    assert (args.host, args.script, args.args) == ("h", script, rest)
    for name, value in options.items():
        assert getattr(args, name) == value


@pytest.mark.parametrize("argv,required", [(["run", "h"], "SCRIPT"), (["run", "-p", "22", "h"], "SCRIPT"),
                                           (["run"], "HOST, SCRIPT"), (["run", "--cwd", "d"], "HOST, SCRIPT")])
def test_run_without_a_script_is_a_usage_error_naming_it(argv, required):
    out = remoteproc_cmd(*argv)
    assert out.returncode == 2 and "usage: remoteproc run" in out.stderr
    assert out.stderr.rstrip().endswith("the following arguments are required: " + required), out.stderr

def test_console_script_is_declared():
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["remoteproc"] == "remoteproc.cli:main"
    assert callable(cli.main)
    exe = shutil.which("remoteproc")
    if exe is not None:       # installed (pip install -e .): the console script itself
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30, env=ENV)
        assert out.returncode == 0 and "examples:" in out.stdout


# -- run ------------------------------------------------------------------------------------

CHATTY = """
    import os, sys
    from multiprocessing.connection import Connection
    conn = Connection(int(os.environ["REMOTEPROC_FD"]))
    print("stdout of the script")
    print("stderr of the script", file=sys.stderr, flush=True)
    conn.send("text")
    conn.send(42)
    conn.send({"argv": sys.argv[1:]})
    conn.send({1, 2})
    conn.send_bytes(b"raw bytes")
    sys.exit(int(os.environ.get("CODE", "3")))
"""


def test_run_forwards_output_prints_messages_and_exits_with_the_scripts_code(alias, scripts):
    config, host = alias
    path = scripts("chatty.py", CHATTY)
    out = remoteproc_cmd("run", "-F", config, host, path, "--flag", '{"a": 1}', "two words")
    assert out.returncode == 3, out.stderr
    lines = out.stdout.splitlines()
    assert "stdout of the script" in lines
    messages = [line for line in lines if line != "stdout of the script"]
    assert messages == ['"text"', "42", '{"argv": ["--flag", "{\\"a\\": 1}", "two words"]}', "{1, 2}",
                        "b'raw bytes'"]
    assert "stderr of the script" in out.stderr


OWN_CLASS = """
    import os
    from multiprocessing.connection import Connection
    class Point:
        pass
    conn = Connection(int(os.environ["REMOTEPROC_FD"]))
    conn.send(Point())
    conn.send(Point())
    conn.send_bytes(b"raw bytes")
    conn.send("after")
"""


def test_run_says_once_that_a_message_of_the_scripts_own_class_is_printed_as_its_pickle(alias, scripts):
    """Found by a new user's audit: such a message was printed as bytes with nothing said, as if the
    script had sent them with send_bytes()."""
    config, host = alias
    out = remoteproc_cmd("run", "-F", config, host, scripts("own_class.py", OWN_CLASS))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[0] == lines[1] and lines[0].startswith("b'\\x80")
    assert lines[2:] == ["b'raw bytes'", '"after"']
    said = [line for line in out.stderr.splitlines() if "cannot be loaded here" in line]
    assert len(said) == 1, out.stderr
    assert said[0].startswith("remoteproc run: a message holds an object that cannot be loaded here "
                              "(AttributeError: ") and "'Point'" in said[0], said


UNBUFFERED = """
    import os, sys, time
    from multiprocessing.connection import Connection
    conn = Connection(int(os.environ["REMOTEPROC_FD"]))
    for i in range(int(sys.argv[1])):
        print("line", i, "of the script")     # (unbuffered: "line", " ", ..., "\\n" each a write)
        conn.send(i)
    sys.stdout.write("half a line, ")       # a message while a line is half written
    sys.stdout.flush()
    conn.send("in between")
    time.sleep(0.01)
    print("and its end")
    sys.stdout.write("a prompt: ")         # a line that stays partial is shown all the same
"""


def test_run_keeps_the_scripts_lines_whole_beside_its_messages_when_unbuffered(alias, scripts):
    """Under -u or PYTHONUNBUFFERED (CI's, many containers'), print() writes each of its parts
    apart, and the message lines are printed by another process than the script's output:
    each line still arrives whole."""
    config, host = alias
    path = scripts("unbuffered.py", UNBUFFERED)
    out = remoteproc_cmd("run", "-F", config, host, path, "50", env=dict(ENV, PYTHONUNBUFFERED="1"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    script_lines = [line for line in lines if not re.fullmatch(r'\d+|"in between"|', line)]
    assert script_lines == ["line %d of the script" % i for i in range(50)] + [
        "half a line, and its end", "a prompt: "], out.stdout
    assert [line for line in lines if re.fullmatch(r'\d+|"in between"', line)] == [
        str(i) for i in range(50)] + ['"in between"']


def _through(out: cli._Stdout, *steps) -> None:
    """Bytes written to the script's end of ``out``'s pipe, and message lines, in this order."""
    write_fd = os.dup(out.write_fd)     # (the relay's copy)
    out.started()
    try:
        for step in steps:
            if isinstance(step, bytes):
                os.write(write_fd, step)
            else:
                out.message(step)
    finally:
        os.close(write_fd)
    out.close()


def test_run_output_a_message_goes_before_a_partial_line_and_after_a_long_one(capfd):
    _through(cli._Stdout(), b"first line\nhalf ", "m1", b"of a line\n", b"x" * 70000, "m2", b"y\n")
    got = capfd.readouterr().out
    head = "first line\nm1\nhalf of a line\n"
    assert got.startswith(head), got[:100]
    rest = got[len(head):]
    at = rest.index("m2\n")        # a partial line this long is data: written, not held
    assert at >= cli.LINE_MAX and rest[:at] + rest[at + 3:] == "x" * 70000 + "y\n"


def test_run_output_a_partial_line_that_stays_partial_shows_while_the_script_runs(capfd):
    """A prompt (``input("name: ")``) waits for its end only LINE_HOLD, not until the script ends."""
    out = cli._Stdout()
    write_fd = os.dup(out.write_fd)
    out.started()
    try:
        os.write(write_fd, b"line\nname: ")
        seen = ""
        deadline = time.monotonic() + 10
        while "name: " not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
            seen += capfd.readouterr().out
        assert seen == "line\nname: "
    finally:
        os.close(write_fd)
        out.close()


def test_run_output_once_stdout_is_closed_messages_are_dropped_and_the_scripts_writes_fail():
    r, w = os.pipe()
    saved = os.dup(1)
    os.dup2(w, 1)
    os.close(w)
    os.close(r)         # (| head has ended)
    try:
        out = cli._Stdout()
        out.message("dropped")              # no error: nobody reads it
        write_fd = os.dup(out.write_fd)
        out.started()
        try:
            os.write(write_fd, b"the script's next line\n")    # (finds stdout gone)
            out.thread.join(10)
            assert not out.thread.is_alive()
            with pytest.raises(BrokenPipeError):
                os.write(write_fd, b"and the one after\n")
        finally:
            os.close(write_fd)
        out.close()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def test_run_with_its_stdout_closed_gives_the_scripts_output_to_no_one(alias, scripts):
    """``remoteproc run ... >&-``: the script writes as to /dev/null (a local child would get
    EBADF, ssh's remote command writes on), and its exit status is its own."""
    config, host = alias
    path = scripts("noisy.py", """
        import sys
        for i in range(5000):
            print("line %d of a script whose reader is gone" % i)
        sys.exit(7)
    """)
    command = " ".join(shlex.quote(word) for word in [sys.executable, "-m", "remoteproc", "run", "-F", config,
                                                        host, path])
    out = subprocess.run(["bash", "-c", command + " >&-"], capture_output=True, text=True, timeout=60, env=ENV,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 7, out.stderr


def test_run_ends_with_the_script_not_with_a_process_it_left_holding_stdout(alias, scripts):
    """A script that leaves a process running with its stdout: run prints what the script wrote
    and exits with its code when the script ends, as when the relay wrote to fd 1 itself (ssh
    would wait for the process; a local parent's reader would too)."""
    config, host = alias
    path = scripts("leaves_one.py", """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2); print('late'); time.sleep(60)"])
        print("the script's line")
        sys.exit(4)
    """)
    out = remoteproc_cmd("run", "-F", config, host, path, timeout=40)
    assert out.returncode == 4, out.stderr
    assert out.stdout == "the script's line\n"


def test_run_with_flags_env_and_cwd(flags, scripts):
    path = scripts("chatty.py", CHATTY)
    directory, name = os.path.split(path)
    out = remoteproc_cmd("run", *flags, "--cwd", directory, "-e", "CODE=0", "127.0.0.1", name)
    assert out.returncode == 0, out.stderr
    assert '"text"' in out.stdout


def test_run_exit_status_for_a_signal_and_a_missing_script(alias, scripts):
    config, host = alias
    path = scripts("suicide.py", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    out = remoteproc_cmd("run", "-F", config, host, path)
    assert out.returncode == 128 + signal.SIGTERM
    out = remoteproc_cmd("run", "-F", config, host, "/nonexistent/script.py")
    assert out.returncode == 2 and "can't open file" in out.stderr



def test_run_passes_dashes_and_options_to_the_script_as_python3_does(alias, scripts):
    config, host = alias
    path = scripts("argv.py", "import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    given = ["--", "-x", "--", "y", "--cwd", "/nowhere", "-h"]
    local = subprocess.run([sys.executable, path, *given], capture_output=True, text=True, timeout=30)
    out = remoteproc_cmd("run", "-F", config, host, path, *given)
    assert out.returncode == local.returncode == 0, out.stderr
    assert out.stdout == local.stdout == '["--", "-x", "--", "y", "--cwd", "/nowhere", "-h"]\n'


@pytest.mark.parametrize("argv,kind,script,rest", [
    (["h", "-m", "json.tool", "-c", "x", "--", "y"], "module", "json.tool", ["-c", "x", "--", "y"]),
    (["--cwd", "/srv", "h", "-mpkg.mod", "-m"], "module", "pkg.mod", ["-m"]),
    (["h", "-c", "-1", "a"], "code", "-1", ["a"]),
    (["-p", "22", "h", "--cwd", "d", "-c", "print(1)"], "code", "print(1)", []),
    (["h", "s.py", "-m", "x"], "path", "s.py", ["-m", "x"]),
])
def test_run_takes_dash_m_and_dash_c_in_place_of_the_script_as_python3_does(argv, kind, script, rest):
    args = cli.build_parser().parse_args(["run", *argv])
    assert (args.host, args.kind, args.script, args.args) == ("h", kind, script, rest)


@pytest.mark.parametrize("value,said", [("99999", "99999 is not a port number (1-65535)"),
                                        ("0", "0 is not a port number"), ("ssh", "'ssh' is not a port number")])
def test_a_port_flag_out_of_range_is_a_usage_error_naming_the_flag(value, said):
    out = remoteproc_cmd("check", "-p", value, "127.0.0.1")
    assert out.returncode == 2 and "argument -p/--port: " + said in out.stderr, out.stderr


@pytest.mark.parametrize("argv,said", [(["run", "h", "-m"], "argument -m: expected one argument"),
                                       (["run", "-m", "json.tool", "h", "s.py"], "go after HOST")])
def test_run_dash_m_misplaced_is_a_usage_error(argv, said):
    out = remoteproc_cmd(*argv)
    assert out.returncode == 2 and "usage: remoteproc run" in out.stderr and said in out.stderr, out.stderr


def test_run_dash_m_and_dash_c_run_on_the_host_as_python3_does(alias, scripts):
    config, host = alias
    directory = os.path.dirname(scripts("argmod.py", "import json, sys\nprint(json.dumps([__name__, sys.argv]))\n"))
    out = remoteproc_cmd("run", "-F", config, "--cwd", directory, host, "-m", "argmod", "-x", "--", "y")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["__main__", [os.path.join(directory, "argmod.py"), "-x", "--", "y"]]
    code = "import argmod, json, os, sys; from multiprocessing.connection import Connection as C\n" \
           "C(int(os.environ['REMOTEPROC_FD'])).send(sys.argv); sys.exit(sys.stdin.read().count('a'))"
    out = subprocess.run([sys.executable, "-m", "remoteproc", "run", "-F", config, "--cwd", directory, host,
                          "-c", code, "-m", "z"], input="aaa", capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 3, out.stderr
    # (the import's print is block-buffered, so after the message: compare as a set)
    assert sorted(out.stdout.splitlines()) == ['["-c", "-m", "z"]', '["argmod", ["-c", "-m", "z"]]']
    out = remoteproc_cmd("run", "-F", config, host, "-m", "no_such_module_here")
    assert out.returncode == 1 and "No module named no_such_module_here" in out.stderr, out.stderr
    out = remoteproc_cmd("run", "-F", config, host, "-c", "1/0")
    assert out.returncode == 1 and out.stderr.startswith("Traceback") and "ZeroDivisionError" in out.stderr


@pytest.mark.parametrize("library", [False, True], ids=["remoteproc run", "run(stdin=sys.stdin.buffer)"])
def test_run_whose_stdin_has_no_end_exits_with_the_script_s_code(alias, library):
    """Found by an audit: from a terminal (or a pipe still open), the thread copying stdin was blocked in
    ``sys.stdin.buffer.read1()`` at exit, holding its lock as the interpreter closed it: "Fatal Python
    error: _enter_buffered_busy" and SIGABRT (134) instead of the script's exit code.  It reads fd 0 now."""
    config, host = alias
    script = "import sys; print('ran'); sys.exit(3)"
    if library:
        argv = ["-c", "import sys, remoteproc\ns = remoteproc.run(%r, %r, stdin=sys.stdin.buffer, ssh_config=%r, "
                      "kind='code')\ns.join(60)\nsys.exit(s.exitcode)" % (host, script, config)]
    else:
        argv = ["-m", "remoteproc", "run", "-F", config, host, "-c", script]
    proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        code = proc.wait(60)            # (its stdin still open: no end)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    assert code == 3 and "Fatal Python error" not in err, (code, err)
    assert out.startswith("ran\n"), out


def test_run_a_missing_cwd_exits_255_saying_so(alias, scripts):
    config, host = alias
    path = scripts("chatty.py", CHATTY)
    out = remoteproc_cmd("run", "-F", config, "--cwd", "/no/such/dir", host, path)
    assert out.returncode == cli.EXIT_FAILURE, out.stdout + out.stderr
    assert "/no/such/dir" in out.stderr and "cause:" in out.stderr and "fix:" in out.stderr
    assert "--cwd" in out.stderr and "install Python" not in out.stderr
    assert "stdout of the script" not in out.stdout and "Traceback" not in out.stderr

@pytest.mark.parametrize("whole_group", [True, False], ids=["terminal-ctrl-c", "sigint-to-cli-only"])
def test_run_ctrl_c_terminates_the_remote_script(alias, scripts, whole_group):
    config, host = alias
    path = scripts("sleeper.py", """
        import os, time
        from multiprocessing.connection import Connection
        conn = Connection(int(os.environ["REMOTEPROC_FD"]))
        conn.send(os.getpid())
        time.sleep(300)
    """)
    with cli_run(config, host, path) as proc:
        line = proc.stdout.readline()       # the script's first message: its pid
        pid = int(line)
        assert not gone(pid, 0)
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)      # what a terminal's Ctrl-C does
        else:
            os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(30) == cli.EXIT_INTERRUPTED
        assert "interrupted" in proc.stderr.read()
        assert gone(pid), "the remote script outlived Ctrl-C"


def test_run_reports_a_connection_failure_with_cause_and_fix(sshd, scripts, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    out = remoteproc_cmd("run", "-p", str(sshd.port), "-i", sshd.client_key, "--known-hosts", str(empty),
                         "-F", "none", "127.0.0.1", "x.py")
    assert out.returncode == cli.EXIT_FAILURE
    assert "cause:" in out.stderr and "fix:" in out.stderr and "--accept-new" in out.stderr


# -- check -------------------------------------------------------------------------------

def test_check_reports_python_platform_and_round_trip(alias):
    config, host = alias
    out = remoteproc_cmd("check", "-F", config, host)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "remote python:   CPython %d.%d." % sys.version_info[:2] in out.stdout
    assert "remote platform: Linux" in out.stdout
    assert "round trip:" in out.stdout and "ms median" in out.stdout
    assert out.stdout.rstrip().endswith("OK: remoteproc works with %s" % host)


@pytest.mark.parametrize("command", ["check", "cache", "demo"])
def test_output_cut_short_by_a_pipe_ends_quietly(alias, command):
    """Found by an audit: ``remoteproc check HOST | head -1`` reported the SSH connection lost (our
    own output's reader had gone, not the host) with two tracebacks; ``cache`` and ``demo`` a bare
    BrokenPipeError traceback.  They end as a tool killed by SIGPIPE does now: no words, 141."""
    config, host = alias
    args = [] if command == "demo" else ["-F", config, host]
    read_end, write_end = os.pipe()
    os.close(read_end)                  # (the reader is gone before the first line)
    try:
        out = subprocess.run([sys.executable, "-m", "remoteproc", command, *args], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=60, env=ENV, stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    assert out.returncode == 128 + signal.SIGPIPE, out.stderr
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert "connection" not in out.stderr.lower(), out.stderr


def test_check_the_system_python_account(sshd, plain_user_host):
    out = remoteproc_cmd("check", "-F", sshd.ssh_config, "remoteproc-rpuser")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(/usr/bin/python3)" in out.stdout and "user rpuser" in out.stdout


def test_check_says_how_many_cpus_its_processes_may_use(alias):
    """A host's CPUs as a Pool counts them (its processes' affinity), where they are fewer than the machine's."""
    config, host = alias
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a host of 2 CPUs or more to narrow")
    out = remoteproc_cmd("check", "-F", config, "--python", "taskset -c 0 python3", host)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "%d CPUs, 1 usable by its processes" % os.cpu_count() in out.stdout, out.stdout
    out = remoteproc_cmd("check", "-F", config, host)
    assert "%d CPUs\n" % os.cpu_count() in out.stdout, out.stdout


def test_check_through_the_users_own_ssh_and_its_config_alias(sshd):
    out = remoteproc_cmd("check", "--transport", "openssh", "-F", sshd.ssh_config, "remoteproc-" + sshd.users[0])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "remote python:   CPython %d.%d." % sys.version_info[:2] in out.stdout
    assert "round trip:" in out.stdout


def test_check_unknown_host_key_then_accept_new(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    base = ["check", "-p", str(sshd.port), "-i", sshd.client_key, "--known-hosts", str(known), "-F", "none",
            "127.0.0.1"]
    out = remoteproc_cmd(*base)
    assert out.returncode == 1 and "FAILED" in out.stdout
    assert "host key is unknown" in out.stderr and "--accept-new" in out.stderr
    out = remoteproc_cmd(*base[:-1], "--accept-new", base[-1])
    assert out.returncode == 0, out.stderr
    assert "[127.0.0.1]:%d" % sshd.port in known.read_text()
    out = remoteproc_cmd(*base)                 # now known: no opt-in needed
    assert out.returncode == 0, out.stderr


def test_check_unknown_host_key_the_suggested_ssh_records_it_where_we_look(sshd, tmp_path):
    """The ssh line of the message, answered yes, records the key in the --known-hosts file
    (a path with a space: quoted for the shell), so that the next check passes."""
    known = tmp_path / "my hosts" / "known_hosts"
    known.parent.mkdir()
    known.write_text("")
    base = ["check", "-p", str(sshd.port), "-i", sshd.client_key, "--known-hosts", str(known), "-F", "none",
            "127.0.0.1"]
    out = remoteproc_cmd(*base)
    assert out.returncode == 1 and "host key is unknown" in out.stderr, out.stdout + out.stderr
    suggested = out.stderr.split("connect once with `", 1)[1].split("`", 1)[0]
    argv = shlex.split(suggested)
    assert argv[:3] == ["ssh", "-F", "none"], suggested
    # "answer yes", without a terminal; a decoy file (ssh takes the first value given) is where ssh
    # would record the key if the suggestion did not name ours (and ~/.ssh/known_hosts is never touched)
    decoy = tmp_path / "decoy_known_hosts"
    answered = argv[:-1] + ["-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes",
                            "-o", "UserKnownHostsFile=" + str(decoy), argv[-1], "true"]
    done = subprocess.run(answered, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "[127.0.0.1]:%d" % sshd.port in known.read_text() and not decoy.exists(), (suggested, done.stderr)
    assert done.returncode == 0, done.stderr
    out = remoteproc_cmd(*base)
    assert out.returncode == 0, out.stdout + out.stderr


def _failure(sshd, tmp_path, case):
    args = ["-p", str(sshd.port), "-i", sshd.client_key, "--known-hosts", sshd.known_hosts, "-F", "none",
            "--connect-timeout", "10"]
    host = "127.0.0.1"
    if case == "wrong key":
        key = str(tmp_path / "other_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True, timeout=30)
        args[3] = key
        args += ["-l", current_user()]
    elif case == "no such python":
        args += ["--python", "/nonexistent/python3"]
    elif case == "nothing listening":
        args[1] = str(free_port())
    elif case == "bad host spec":
        host = "user@host:99999"
    elif case == "negative timeout":
        args[-1] = "-1"
    elif case == "missing -F file":
        args[args.index("none")] = str(tmp_path / "no_such_config")
    return args, host


@pytest.mark.parametrize("case,error,fix", [
    ("wrong key", "authentication failed", "-i KEY"),
    ("no such python", "could not start the agent", "--python"),
    ("nothing listening", "cannot connect", "-p PORT"),
    ("bad host spec", "out of range", "USER@HOST:PORT"),
    ("negative timeout", "must be a positive number of seconds", "give --connect-timeout a value"),
    ("missing -F file", "does not exist", "give -F/--ssh-config a value"),
])
def test_check_failures_say_cause_and_fix(sshd, tmp_path, case, error, fix):
    args, host = _failure(sshd, tmp_path, case)
    out = remoteproc_cmd("check", *args, host)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED" in out.stdout
    assert error in out.stderr and "cause:" in out.stderr and "fix:" in out.stderr and fix in out.stderr
    assert "Traceback" not in out.stderr


# -- cache -------------------------------------------------------------------------------

@pytest.mark.parametrize("count,removed,said", [
    (1, 1, ["h: removed 1 entry from /c", "h: 1 entry, 0.0 MB in /c"]),
    (2, 0, ["h: removed 0 entries from /c", "h: 2 entries, 0.0 MB in /c"]),
    (0, None, ["h: 0 entries, 0.0 MB in /c"]),
])
def test_cache_counts_entries_in_english(monkeypatch, capsys, count, removed, said):
    """What the host's cache reported, as the command prints it (a stand-in for the remote child)."""
    _cache_says(monkeypatch, capsys, count, removed, said, [])


def test_cache_clear_says_what_stayed_and_why(monkeypatch, capsys):
    kept = [{"hash": "ab" * 32, "name": "numpy", "version": "2.4", "why": "in use by a running program"},
            {"hash": "cd" * 6, "name": None, "why": "a download under way"}]
    _cache_says(monkeypatch, capsys, 0, 3, [
        "h: removed 3 entries from /c",
        "  kept abababababab  numpy 2.4                    in use by a running program",
        "  kept cdcdcdcdcdcd  (download)                   a download under way",
        "h: 0 entries, 0.0 MB in /c"], kept)


def _cache_says(monkeypatch, capsys, count, removed, said, kept):
    from remoteproc import process

    facts = {"root": "/c", "removed": removed, "kept": kept,
             "entries": [{"hash": "%064d" % i, "name": "p%d" % i, "size": 1, "used": i} for i in range(count)]}

    class Reporter:
        def __init__(self, host, target, args, **options):
            self.conn, self.connection_error = args[0], None

        def start(self):
            self.conn.send(facts)

        def join(self, timeout=None):
            pass

    monkeypatch.setattr(process, "RemoteProcess", Reporter)
    argv = ["cache", "--clear", "h"] if removed is not None else ["cache", "h"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:len(said)] == said and len(lines) == len(said) + count


# -- demo --------------------------------------------------------------------------------

def test_demo_against_a_host(alias):
    config, host = alias
    out = remoteproc_cmd("demo", "-F", config, host)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "parent.recv() -> 42" in out.stdout and "round trip OK" in out.stdout
    assert "hello from pid" in out.stdout


def test_demo_with_its_own_loopback_server():
    out = remoteproc_cmd("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "started a private" in out.stdout and "round trip OK" in out.stdout
    assert "SSH connection with paramiko" in out.stdout


def test_demo_s_own_server_takes_the_transport_option_and_no_other():
    """Found by an audit: ``demo --transport openssh`` was refused ("SSH options need a HOST", with the
    top-level usage) while REMOTEPROC_TRANSPORT=openssh worked."""
    out = remoteproc_cmd("demo", "--transport", "openssh")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SSH connection with openssh" in out.stdout and "round trip OK" in out.stdout, out.stdout
    out = remoteproc_cmd("demo", "-p", "22")
    assert out.returncode == 2 and "usage: remoteproc demo" in out.stderr, out.stderr
    assert "SSH options need a HOST (only --transport goes with the private server)" in out.stderr


@pytest.mark.parametrize("argv", [["-m", "json.tool", "HOST"], ["-c", "1", "HOST"], ["-mjson.tool", "HOST"]])
def test_run_dash_m_before_host_without_script_is_the_same_usage_error(argv):
    """Found by an audit: with nothing after HOST, argparse said only that SCRIPT is required."""
    out = remoteproc_cmd("run", *argv)
    assert out.returncode == 2 and "-m MODULE and -c CODE go after HOST, in place of SCRIPT" in out.stderr, out.stderr
