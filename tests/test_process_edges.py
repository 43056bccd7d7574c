"""What a user sees at the edges of a remote process, side by side with ``multiprocessing``'s fork.

A program ported from ``multiprocessing.Process`` to ``RemoteProcess`` should print, log, stop on
Ctrl-C and leave nothing behind as it did. Covered here:

* output: many children printing at once reach the parent's fd 1 whole, each child's lines in
  order, all of it before ``join()`` returns; ``print(end="")`` without a flush, raw bytes on
  ``sys.stdout.buffer`` (not UTF-8), ``warnings.warn`` and a ``faulthandler`` crash dump;
* a parent whose stdout is a pipe closed by its reader (``prog | head -1``): the child gets
  ``BrokenPipeError``, as a local child does;
* what the parent's interpreter was started with reaches the child as a forked (or spawned) one
  gets it: ``multiprocessing.log_to_stderr()``, ``python3 -u`` (output comes as it is printed,
  not at the child's end), ``-W error``, an ignored SIGINT (``nohup``, a background job of a
  script, the Pool recipe that ignores Ctrl-C in the workers);
* Ctrl-C to the whole process group while ``join()`` waits: the parent and the child both get
  ``KeyboardInterrupt``, as locally, and nothing is left running;
* a ``start()`` interrupted by Ctrl-C (SIGINT to the program alone, or to its whole group) while
  it connects: no remote process is left running behind the program's back, and no noise about
  a child that "could not start".

The subprocess scripts run with the loopback sshd of this machine, where the remote side's
files and processes can be checked.
"""

from __future__ import annotations

import ast
import logging
import multiprocessing
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from multiprocessing import util

import cloudpickle
import pytest
from proctable import gone

from remoteproc import Pipe, RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

LocalProcess = multiprocessing.get_context("fork").Process
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- targets ----------------------------------------------------------------------------------

def raw_bytes():
    sys.stdout.buffer.write(b"\xff\xfe not utf-8 \x80\n")
    sys.stdout.flush()


def warn_and_crash():
    import ctypes
    import faulthandler

    warnings.warn("careful out there", stacklevel=1)
    faulthandler.enable()
    ctypes.string_at(0)


def log_in_child():
    multiprocessing.get_logger().info("info from the child")


def sigint_disposition(conn):
    handler = signal.getsignal(signal.SIGINT)
    conn.send("ignored" if handler is signal.SIG_IGN else getattr(handler, "__name__", repr(handler)))


def run_script(tmp_path, source, *args, flags=(), **kwargs):
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("PYTHONUNBUFFERED", None)
    kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, *flags, str(path), *map(str, args)], env=env, text=True,
                            start_new_session=True, **kwargs)


def read_until(proc, text, timeout):
    """The lines of proc's stdout up to the first that contains ``text`` (None: not within ``timeout``)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    return None


# -- output -----------------------------------------------------------------------------------

TERMINAL_SCRIPT = """
    import ast, sys
    from remoteproc import RemoteProcess

    def talk(i):
        for n in range(2000):
            print("child%d line%05d %s" % (i, n, "x" * (n % 200)))
        print("tail of child%d without a newline;" % i, end="")

    if __name__ == "__main__":
        procs = [RemoteProcess(sys.argv[1], target=talk, args=(i,), **ast.literal_eval(sys.argv[2]))
                 for i in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        print()
        print("JOINED", *[p.exitcode for p in procs], flush=True)
"""


def test_children_printing_to_a_terminal_at_once_keep_their_lines_whole(sshd, tmp_path):
    """Six children print lines to the terminal at once (line-buffered there, as locally): each
    line is one write, which a terminal takes whole, so the lines of different children never
    mix, each child's come in order, and all of it before join() returns."""
    import pty

    main, sub = pty.openpty()
    try:
        proc = run_script(tmp_path, TERMINAL_SCRIPT, sshd.spec(), repr(sshd.options()), stdout=sub)
        os.close(sub)
        data = bytearray()
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline:
            if select.select([main], [], [], 1)[0]:
                try:
                    piece = os.read(main, 1 << 16)
                except OSError:     # (EIO: the terminal's last writer is gone)
                    break
                if not piece:
                    break
                data += piece
            elif proc.poll() is not None:
                break
        proc.wait(10)
    finally:
        os.close(main)
    text, tails = re.subn(r"tail of child\d without a newline;", "", data.decode().replace("\r\n", "\n"))
    lines = text.split("\n")
    assert lines[-2:] == ["JOINED 0 0 0 0 0 0", ""], (lines[-3:], proc.stderr.read())
    assert tails == 6
    for i in range(6):
        mine = [line for line in lines if line.startswith("child%d " % i)]
        assert mine == ["child%d line%05d %s" % (i, n, "x" * (n % 200)) for n in range(2000)]


def test_raw_bytes_warnings_and_a_crash_dump_as_locally(host, ssh_options, capfdbinary):
    outcomes = []
    for make in (LocalProcess, lambda **kw: RemoteProcess(host, **kw, **ssh_options)):
        p = make(target=raw_bytes)
        p.start()
        p.join(30)
        q = make(target=warn_and_crash)
        q.start()
        q.join(30)
        out, err = capfdbinary.readouterr()
        outcomes.append((p.exitcode, out, q.exitcode, b"Fatal Python error: Segmentation fault" in err,
                         b"in warn_and_crash" in err))
    assert outcomes[1] == outcomes[0] == (0, b"\xff\xfe not utf-8 \x80\n", -signal.SIGSEGV, True, True)
    # (pytest records the warnings of this process, and so of a forked child: only the remote one prints)
    assert b"UserWarning: careful out there" in err


BROKEN_PIPE_SCRIPT = """
    import ast, sys
    from remoteproc import Pipe, RemoteProcess

    def chatty(conn):
        try:
            for i in range(3000000):     # (40 MB: more than every buffer on the way holds, on a slow reader too)
                print("line", i)
            sys.stdout.flush()
            conn.send("printed everything")
        except BaseException as exc:
            conn.send(type(exc).__name__)

    if __name__ == "__main__":
        a, b = Pipe()
        p = RemoteProcess(sys.argv[1], target=chatty, args=(b,), **ast.literal_eval(sys.argv[2]))
        p.start()
        b.close()
        got = a.recv() if a.poll(20) else "nothing"
        p.join(20)
        print("child saw", got, "exit", p.exitcode, file=sys.stderr)
"""


def test_a_stdout_pipe_closed_by_its_reader_is_a_broken_pipe_in_the_child(sshd, tmp_path):
    """``prog.py | head -1``: the remote child's print() fails with BrokenPipeError, as a local one's."""
    proc = run_script(tmp_path, BROKEN_PIPE_SCRIPT, sshd.spec(), repr(sshd.options()))
    assert proc.stdout.readline() == "line 0\n"
    proc.stdout.close()
    _out, err = proc.communicate(timeout=40)
    assert "child saw BrokenPipeError exit 0" in err, err


CLOSED_STDOUT_SCRIPT = """
    import ast, os, sys, time
    from remoteproc import Pipe, RemoteProcess

    def chatty(conn, n):
        for i in range(n):
            print("line %d of a child whose parent has no stdout" % i)
        sys.stdout.flush()
        conn.send("printed")
        conn.send(conn.recv())

    def chatty_alone(n):
        for i in range(n):
            print("line %d of a child whose parent has no stdout" % i)
        sys.exit(3)

    if __name__ == "__main__":
        target, options = sys.argv[1], ast.literal_eval(sys.argv[2])
        if sys.argv[3] == "by-the-program":
            os.close(1)         # (then the relay's socket was the first fd made, and took its number)
            for n in (3000, 10):
                p = RemoteProcess(target, target=chatty_alone, args=(n,), **options)
                p.start()
                p.join(30)
                print(n, "exit", p.exitcode, file=sys.stderr)
            sys.exit()
        for n in (3000, 10):         # (a second start: the relay still works)
            a, b = Pipe()           # (fd 1: Python started without it)
            p = RemoteProcess(target, target=chatty, args=(b, n), **options)
            p.start()
            b.close()
            got = a.recv() if a.poll(30) else "nothing"
            time.sleep(1)       # (the output has arrived wherever it goes)
            a.send("ping")
            got += " " + (a.recv() if a.poll(30) else "nothing")
            p.join(30)
            print(n, "got", got, "exit", p.exitcode, file=sys.stderr)
"""


@pytest.mark.parametrize("closed", ["at-its-start", "by-the-program"])
def test_a_parent_without_stdout_gives_its_childs_output_to_no_one(sshd, tmp_path, closed):
    """``prog >&-`` (Python's sys.stdout is then None), or fd 1 closed before the first start: the
    child's output goes nowhere, as a local child's does.  It went to whatever took fd 1: the
    Pipe made next (the child read its own output as messages) or the relay's socket (read as
    its requests: the program hung)."""
    proc = run_script(tmp_path, CLOSED_STDOUT_SCRIPT, sshd.spec(), repr(sshd.options()), closed,
                      stdout=subprocess.DEVNULL, preexec_fn=(lambda: os.close(1)) if closed == "at-its-start" else None)
    try:
        _out, err = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate(timeout=15)
        pytest.fail("the program hung: %s" % err)
    if closed == "at-its-start":
        assert "3000 got printed ping exit 0" in err and "10 got printed ping exit 0" in err, err
    else:
        assert "3000 exit 3" in err and "10 exit 3" in err, err


RELAY_STDIO_SCRIPT = """
    import ast, os, sys
    from remoteproc import Pipe, RemoteProcess
    from remoteproc.relay import client

    def echo(conn):
        print("to a stdout nobody has")
        conn.send(conn.recv())

    if __name__ == "__main__":
        a, b = Pipe()
        p = RemoteProcess(sys.argv[1], target=echo, args=(b,), **ast.literal_eval(sys.argv[2]))
        p.start()
        b.close()
        a.send("ping")
        got = a.recv() if a.poll(30) else "nothing"
        relay = client.current().proc.pid
        links = [os.readlink("/proc/%d/fd/%d" % (relay, fd)) for fd in (0, 1, 2)]
        p.join(30)
        with open(sys.argv[3], "w") as f:
            f.write(repr((got, p.exitcode, links)))
"""


def test_the_relay_of_a_parent_without_stdio_keeps_its_connections_off_fds_0_to_2(sshd, tmp_path):
    """A program started with fds 0-2 closed passes them on to its relay.  Its connections took
    those numbers there, where a ProxyCommand's stderr is written and where the relay's exit
    points fds 1 and 2 at /dev/null (cutting a connection that still flushed output)."""
    report = tmp_path / "report"

    def close_stdio() -> None:
        for fd in (0, 1, 2):
            os.close(fd)

    proc = run_script(tmp_path, RELAY_STDIO_SCRIPT, sshd.spec(), repr(sshd.options()), report,
                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      preexec_fn=close_stdio)
    assert proc.wait(45) == 0
    got, code, links = ast.literal_eval(report.read_text())
    assert (got, code) == ("ping", 0)
    assert links == ["/dev/null"] * 3, links


# -- the parent's set-up, as a forked child inherits it ------------------------------------------

@pytest.mark.one_transport
def test_log_to_stderr_in_the_parent_logs_in_the_child(host, ssh_options, capfd):
    logger = multiprocessing.get_logger()
    saved = (list(logger.handlers), logger.level, util._log_to_stderr)
    multiprocessing.log_to_stderr(logging.INFO)
    try:
        errs = []
        for make in (LocalProcess, lambda **kw: RemoteProcess(host, **kw, **ssh_options)):
            p = make(target=log_in_child, name="logging-child")
            p.start()
            p.join(30)
            errs.append(capfd.readouterr()[1])
    finally:
        logger.handlers[:], logger.level, util._log_to_stderr = saved
    for err in errs:
        assert "[INFO/logging-child] child process calling self.run()" in err
        assert "[INFO/logging-child] info from the child" in err
        assert "[INFO/logging-child] process exiting with exitcode 0" in err


FLAGS_SCRIPT = """
    import ast, multiprocessing, sys, warnings
    from remoteproc import Pipe, RemoteProcess

    def live(conn):
        print("live output, no flush")
        conn.recv()
        warnings.warn("deprecated", DeprecationWarning)

    if __name__ == "__main__":
        for kind in ("local", "remote"):
            a, b = Pipe()
            if kind == "local":
                p = multiprocessing.get_context("fork").Process(target=live, args=(b,))
            else:
                p = RemoteProcess(sys.argv[1], target=live, args=(b,), **ast.literal_eval(sys.argv[2]))
            p.start()
            b.close()
            sys.stdin.readline()       # the test saw the child's line: let it go on
            a.send("go")
            p.join(20)
            print(kind, "exit", p.exitcode, flush=True)
"""


def test_python_u_and_w_error_reach_the_child(sshd, tmp_path):
    """``python3 -u -W error prog.py``: a forked (or spawned) child prints at once and turns
    warnings into errors; so does a remote one."""
    proc = run_script(tmp_path, FLAGS_SCRIPT, sshd.spec(), repr(sshd.options()),
                      flags=("-u", "-W", "error::DeprecationWarning"), stdin=subprocess.PIPE)
    try:
        seen, before = {}, []
        for kind in ("local", "remote"):
            lines = read_until(proc, "live output", 15)
            seen[kind] = lines is not None
            before += lines or []
            proc.stdin.write("\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
        out = "".join(before) + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert seen == {"local": True, "remote": True}, "the remote child's output waited for its end"
    assert "local exit 1" in out and "remote exit 1" in out, (out, err)
    assert err.count("DeprecationWarning: deprecated") == 2, err


@pytest.mark.one_transport
def test_sigint_ignored_by_the_parent_is_ignored_by_the_child(host, ssh_options):
    """A child forked while SIGINT is ignored ignores it too (``nohup``, ``prog &`` in a script, the
    recipe that ignores Ctrl-C around starting workers): a terminal's Ctrl-C leaves it alone."""
    got = []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for make in (LocalProcess, lambda **kw: RemoteProcess(host, **kw, **ssh_options)):
            a, b = Pipe()
            p = make(target=sigint_disposition, args=(b,))
            p.start()
            b.close()
            got.append(a.recv())
            p.join(30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert got == ["ignored", "ignored"]
    a, b = Pipe()
    p = RemoteProcess(host, target=sigint_disposition, args=(b,), **ssh_options)
    p.start()
    b.close()
    assert a.recv() == "default_int_handler"     # (and the next one, started with it restored, does not)
    p.join(30)


# -- Ctrl-C ----------------------------------------------------------------------------------

CTRL_C_SCRIPT = """
    import ast, os, sys, time
    from remoteproc import Pipe, RemoteProcess

    def work(conn):
        conn.send(os.getpid())
        try:
            time.sleep(30)
        finally:
            print("child finally", flush=True)

    if __name__ == "__main__":
        a, b = Pipe()
        p = RemoteProcess(sys.argv[1], target=work, args=(b,), **ast.literal_eval(sys.argv[2]))
        p.start()
        print("CHILD", a.recv(), flush=True)
        try:
            p.join()
        except KeyboardInterrupt:
            p.join(10)
            print("parent KeyboardInterrupt; child exit", p.exitcode, flush=True)
            raise
"""


def test_ctrl_c_during_join_interrupts_parent_and_child_as_locally(sshd, tmp_path):
    proc = run_script(tmp_path, CTRL_C_SCRIPT, sshd.spec(), repr(sshd.options()))
    first = read_until(proc, "CHILD", 20)
    assert first, proc.communicate(timeout=10)
    pid = int(first[-1].split()[1])
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT
    assert "child finally" in out and "parent KeyboardInterrupt; child exit 1" in out, (out, err)
    assert err.count("KeyboardInterrupt") == 2 and "Process RemoteProcess-1:" in err, err
    assert gone(pid, 10)


INTERRUPTED_START_SCRIPT = """
    import ast, os, sys, time
    from remoteproc import RemoteProcess

    def work(marker):
        time.sleep(0.1)
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        print("the remote child ran", flush=True)

    if __name__ == "__main__":
        options = ast.literal_eval(sys.argv[2])
        if sys.argv[5] == "relay-only":     # (the relay's own guard: the program sends no kill)
            from remoteproc import popen_ssh
            popen_ssh.Popen._send_signal = lambda self, sig: None
        setup = "touch %s; sleep 0.5" % sys.argv[4]    # (the start waits for it)
        p = RemoteProcess(sys.argv[1], target=work, args=(sys.argv[3],), setup=setup, **options)
        try:
            p.start()
            print("started", flush=True)
        except KeyboardInterrupt:
            print("start interrupted", flush=True)
        time.sleep(2)
        print("DONE", flush=True)
"""


@pytest.mark.parametrize("to", ["program", "group", "relay-only"])
def test_ctrl_c_during_start_leaves_no_remote_process(sshd, tmp_path, to):
    """Ctrl-C while ``start()`` waits for its connection (here held up by a ``setup`` line):
    ``start()`` raises KeyboardInterrupt, so the program has no handle to join or stop the
    process it was starting: that process must not run on behind its back, and (Ctrl-C to the
    whole group, which the relay passes on) must not print a traceback of remoteproc's own.
    ``relay-only``: the program's kill is left out; the relay, seeing the status socket of a
    process whose start never returned close, kills it by itself."""
    marker, connecting = tmp_path / "marker", tmp_path / "connecting"
    proc = run_script(tmp_path, INTERRUPTED_START_SCRIPT, sshd.spec(), repr(sshd.options()), marker, connecting,
                      to)
    deadline = time.monotonic() + 20
    while not connecting.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert connecting.exists(), proc.communicate(timeout=10)
    time.sleep(0.2)
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "start interrupted" in out and "DONE" in out, (out, err)
    assert "the remote child ran" not in out
    assert not marker.exists(), "the interrupted start's process ran on the host"
    assert "could not start" not in err and "Traceback" not in err, err


EARLY_CTRL_C_SCRIPT = """
    import ast, sys, time
    from remoteproc import RemoteProcess

    if __name__ == "__main__":
        p = RemoteProcess(sys.argv[1], target=print, **ast.literal_eval(sys.argv[2]))
        try:
            time.sleep(0.05)        # (the relay is busy importing what it needs)
            print("CONSTRUCTED", flush=True)
            time.sleep(10)
        except KeyboardInterrupt:
            pass
        p.start()
        p.join(20)
        print("exit", p.exitcode, flush=True)
"""


def test_ctrl_c_right_after_the_first_constructor_is_the_programs_alone(sshd, tmp_path):
    """The constructor starts the relay process in the background; a Ctrl-C that comes while it
    starts up must not kill it with a traceback of its own: the program handles the Ctrl-C and
    its next start() works."""
    proc = run_script(tmp_path, EARLY_CTRL_C_SCRIPT, sshd.spec(), repr(sshd.options()))
    assert read_until(proc, "CONSTRUCTED", 20), proc.communicate(timeout=10)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "exit 0" in out and "Traceback" not in err, (out, err)


# -- what escapes _bootstrap after the target ran (found by a stdio audit) ------------------------------

def stdout_to_a_full_device():
    sys.stdout = open("/dev/full", "w")     # (its flush at the end fails: ENOSPC)
    print("x")


def returns_leaving_a_thread(conn):
    import threading

    threading.Thread(target=time.sleep, args=(5,)).start()      # (not a daemon: the end joins it)
    conn.send("returning")


@pytest.mark.parametrize("case", ["flush fails", "ctrl-c while joining threads"])
def test_what_escapes_the_end_of_a_target_that_ran_exits_1_as_a_forked_child(host, ssh_options, capfd, case):
    """multiprocessing's _bootstrap lets an error of its own ending escape (its flush of stdout, a
    Ctrl-C while it joins the target's threads). A forked child exits 1 then, saying nothing; the
    remote child said "the remote child could not start", or died of the SIGINT (-2)."""
    fork = multiprocessing.get_context("fork").Process
    codes = []
    for where in ("fork", "remote"):
        def make(target, args=(), where=where):
            return fork(target=target, args=args) if where == "fork" else \
                RemoteProcess(host, target=target, args=args, **ssh_options)

        if case == "flush fails":
            p = make(stdout_to_a_full_device)
            p.start()
        else:
            a, b = Pipe()
            p = make(returns_leaving_a_thread, (b,))
            p.start()
            b.close()
            assert a.poll(30) and a.recv() == "returning"
            time.sleep(0.5)                   # (the target returned: _bootstrap joins the thread)
            os.kill(p.pid, signal.SIGINT)     # (the child we started, by its pid: loopback)
        p.join(30)
        codes.append(p.exitcode)
    assert codes == [1, 1], codes
    assert "could not start" not in capfd.readouterr().err
