"""Ctrl-C and the ends of a user's program, where threads and processes race.

Each case runs a program of its own (a subprocess with its own relay, as a user's program
has), so that its signals, its exit and its relay are its own:

* a Ctrl-C that reaches the relay while its main thread is taking a start request (holding
  the lock of its links) is passed on, and the relay goes on serving starts: the SIGINT
  handler must take no lock the interrupted thread may hold (injected: the relay is made to
  stop for a while inside that lock, through a module the test puts on its path);
* a program that ends (normally, by an exception, ``os._exit``, SIGKILL, or a Ctrl-C during
  ``Pool.map``) leaves its stdout to nobody: ``python prog.py | cat`` ends, as the relay
  (which has the program's stdout and stderr to write its remote children's output) goes
  with the program;
* a start during the program's exit (a thread still starting pool workers after a Ctrl-C
  interrupted the Pool's start-up) starts no new relay, which nothing would stop;
* a program that dies while its relay still connects to a host: the relay lets go of the
  program's stdout and stderr at once, not after its bounded shutdown waits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from proctable import eventually, live_members, running

from remoteproc.testing import current_user

pytestmark = [pytest.mark.timeout(120), pytest.mark.loopback_only]     # reads this machine's /proc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 60.0         # bound of every wait for a program (they take a second or two)


def _env(sshd: Any, **extra: str) -> dict[str, str]:
    me = current_user()
    env = dict(os.environ, PYTHONPATH=ROOT, UP_HOST=json.dumps([sshd.spec(me), sshd.options(me)]), **extra)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def _write(path: Any, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def _kill_session(sid: int) -> None:
    for pid in live_members(sid=sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# -- a Ctrl-C while the relay's main thread takes a start ----------------------------------

RELAY_PATCH = """
    # Imported by the relay (the test's Popen shim puts it in front of its main): each new link
    # stops 3 s before its thread starts, inside Relay.submit, with the links' lock held.
    import os
    import time

    from remoteproc.relay import link

    _start = link.Link.start


    def start(self):
        open(os.environ["RP_MARK"], "w").close()
        time.sleep(3.0)
        _start(self)


    link.Link.start = start
"""

CTRL_C_IN_SUBMIT = """
    import json, os, signal, subprocess, sys, threading, time, types

    import remoteproc
    from remoteproc.relay import client

    def popen(args, **kwargs):      # the relay imports _relaypatch first
        args = list(args)
        args[-1] = args[-1].replace("from remoteproc.relay.process import main;",
                                    "import _relaypatch; from remoteproc.relay.process import main;")
        return subprocess.Popen(args, **kwargs)

    client.subprocess = types.SimpleNamespace(Popen=popen, DEVNULL=subprocess.DEVNULL,
                                              TimeoutExpired=subprocess.TimeoutExpired)

    spec, options = json.loads(os.environ["UP_HOST"])
    p = remoteproc.RemoteProcess(spec, target=os.getpid, **options)     # (starts the relay)
    relay = client.current().proc.pid
    ended = []
    t = threading.Thread(target=lambda: (p.start(), p.join(), ended.append(p.exitcode)), daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.environ["RP_MARK"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(relay, signal.SIGINT)               # the relay is inside submit(), its lock held
    t.join(20)
    print("first", ended, flush=True)
    q = remoteproc.RemoteProcess(spec, target=os.getpid, **options)
    done = []
    u = threading.Thread(target=lambda: (q.start(), q.join(), done.append(q.exitcode)), daemon=True)
    u.start()
    u.join(20)
    print("second", done, flush=True)
    print("relay", relay, flush=True)
    os._exit(0)
"""


def test_ctrl_c_while_the_relay_takes_a_start_does_not_deadlock_it(sshd: Any, tmp_path: Any) -> None:
    _write(tmp_path / "_relaypatch.py", RELAY_PATCH)
    prog = _write(tmp_path / "prog.py", CTRL_C_IN_SUBMIT)
    env = _env(sshd, RP_MARK=str(tmp_path / "mark"))
    proc = subprocess.Popen([sys.executable, prog], cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        # the program ends by itself within 40 s; what holds its stdout then is its relay
        _kill_session(proc.pid)
        out, err = proc.communicate(timeout=WAIT)
        pytest.fail("the program's stdout was still open %.0f s on (its relay, deadlocked?):\n%s\n%s"
                    % (WAIT, out, err))
    finally:
        _kill_session(proc.pid)
    assert os.path.exists(tmp_path / "mark"), err
    # with the handler taking the lock, the relay's main thread waited for itself: no start
    # was answered any more, the first one never returned, and the relay outlived the program
    # (still holding its stdout: a test's communicate() or ``| cat`` never saw the end)
    # (the first process itself may have got the Ctrl-C: it was starting when it was pressed)
    assert re.search(r"^first \[(0|-2)\]$", out, re.M), (out, err)
    assert re.search(r"^second \[0\]$", out, re.M), (out, err)


# -- the program's stdout after the program ---------------------------------------------------

PIPED = """
    import json, os, signal, sys, time

    import remoteproc

    spec, options = json.loads(os.environ["UP_HOST"])
    how = sys.argv[1]


    def sleeper():
        time.sleep(60)


    def slow(x):
        time.sleep(0.1)
        return x


    if __name__ == "__main__":
        if how == "pool-ctrl-c":
            with remoteproc.Pool([(spec, options)], processes_per_host=2) as pool:
                pool.map(slow, range(4))
                print("READY", flush=True)
                os.killpg(0, signal.SIGINT)          # Ctrl-C (this program has a session of its own)
                pool.map(slow, range(1000), chunksize=1)
        p = remoteproc.RemoteProcess(spec, target=sleeper, daemon=True, **options)
        p.start()
        print("READY", flush=True)
        if how == "normal":
            p.terminate()
            p.join()
            sys.exit(0)
        if how == "exception":
            raise RuntimeError("the program failed")
        if how == "_exit":
            os._exit(3)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["normal", "exception", "_exit", "sigkill", "pool-ctrl-c"])
def test_the_pipe_of_a_program_closes_when_it_ends(sshd: Any, tmp_path: Any, how: str) -> None:
    """``python prog.py | cat``: cat ends once the program has (the relay lets go of the pipe)."""
    prog = _write(tmp_path / "prog.py", PIPED)
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, prog, how], cwd=str(tmp_path), env=_env(sshd), stdin=subprocess.DEVNULL,
                            stdout=w, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(w)
    cat = subprocess.Popen(["cat"], stdin=r, stdout=subprocess.PIPE, text=True)
    os.close(r)
    try:
        proc.wait(WAIT)
        ended = time.monotonic()
        try:
            out, _ = cat.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            holders = live_members(sid=proc.pid)
            pytest.fail("cat still reads %.0f s after the program ended; its session: %s"
                        % (time.monotonic() - ended, holders))
        # and nothing of the program is left, by itself (its relay, first of all: it lets go of the
        # pipe at once, then ends its links, which may take it a moment more)
        assert eventually(lambda: not [pid for pid in live_members(sid=proc.pid) if running(pid)], 20), \
            live_members(sid=proc.pid)
    finally:
        _kill_session(proc.pid)
        if cat.poll() is None:
            cat.kill()
        cat.communicate()
    assert "READY" in out


# -- no relay after the program's exit has stopped it -----------------------------------------

LATE_START = """
    import json, os, sys
    from multiprocessing import util

    import remoteproc
    from remoteproc.relay import client

    spec, options = json.loads(os.environ["UP_HOST"])


    def late_start():
        # runs after the relay's own exit finalizer (priority -10), as a thread that still
        # starts pool workers (a Ctrl-C interrupted the Pool's start-up) does
        try:
            p = remoteproc.RemoteProcess(spec, target=os.getpid, **options)
            p.start()
            print("started", p.pid, flush=True)
        except Exception as exc:
            print("refused", type(exc).__name__, exc, flush=True)
        print("relay", "none" if client._relay is None else client._relay.proc.pid, flush=True)


    if __name__ == "__main__":
        p = remoteproc.RemoteProcess(spec, target=os.getpid, **options)
        p.start()
        p.join()
        print("exitcode", p.exitcode, flush=True)
        util.Finalize(None, late_start, exitpriority=-20)
"""


def test_no_relay_starts_once_the_program_exits(sshd: Any, tmp_path: Any) -> None:
    """A start during the interpreter's exit, after the relay was stopped, gets an error, not a
    new relay: nothing would stop that one, and it would hold the program's stdout after it."""
    prog = _write(tmp_path / "prog.py", LATE_START)
    proc = subprocess.Popen([sys.executable, prog], cwd=str(tmp_path), env=_env(sshd), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=WAIT)
    finally:
        _kill_session(proc.pid)
    assert "exitcode 0" in out, (out, err)
    said = r"^refused ConnectionLostError %s: the program is exiting" % re.escape(sshd.spec(current_user()))
    assert re.search(said, out, re.M), (out, err)
    assert "relay none" in out, (out, err)


# -- the relay lets go of the program's stdout once the program is gone --------------------------

SLOW_PYTHON = """#!/bin/sh
# the host's "python": waits for the test's go (a file), then is the real one
n=0
while [ ! -e "{go}" ] && [ $n -lt 900 ]; do sleep 0.1; n=$((n + 1)); done
exec "{python}" "$@"
"""

DIES_WHILE_CONNECTING = """
    import json, os, sys, threading, time

    import remoteproc
    from remoteproc.relay import client

    spec, options = json.loads(os.environ["UP_HOST"])
    options["python"] = os.environ["RP_PYTHON"]
    p = remoteproc.RemoteProcess(spec, target=os.getpid, **options)
    threading.Thread(target=p.start, daemon=True).start()
    time.sleep(1.0)             # the start is in the relay, its link waits for the agent's hello
    with open(os.environ["RP_RELAY"], "w") as f:
        f.write(str(client.current().proc.pid))
    print("dying", flush=True)
    os._exit(0)
"""


def test_a_relay_still_connecting_lets_go_of_the_programs_stdout(sshd: Any, tmp_path: Any) -> None:
    go = tmp_path / "go"
    slow = tmp_path / "slow-python"
    slow.write_text(SLOW_PYTHON.format(go=go, python=sys.executable))
    slow.chmod(0o755)
    prog = _write(tmp_path / "prog.py", DIES_WHILE_CONNECTING)
    env = _env(sshd, RP_PYTHON=str(slow), RP_RELAY=str(tmp_path / "relay"))
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, prog], cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
                            stdout=w, stderr=w, start_new_session=True)
    os.close(w)
    cat = subprocess.Popen(["cat"], stdin=r, stdout=subprocess.PIPE, text=True)
    os.close(r)
    try:
        proc.wait(WAIT)
        relay = int((tmp_path / "relay").read_text())
        out, _ = cat.communicate(timeout=WAIT)
        # The relay is still shutting down (its link waits, bounded, for a hello that the
        # host's "python" holds back until the go): the pipe ended before the relay did.
        relay_alive = running(relay)
    finally:
        go.write_text("")
        if cat.poll() is None:
            cat.kill()
        cat.communicate()
    assert "dying" in out
    assert relay_alive, "the pipe closed only when the relay exited: it held the program's stdout"
    deadline = time.monotonic() + WAIT
    while running(relay) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(relay), "the relay outlived its program by %.0f s" % WAIT
    _kill_session(proc.pid)


# -- a hangup the program handles ---------------------------------------------------------------

HANGUP = """
    import json, os, signal, sys

    import remoteproc

    spec, options = json.loads(os.environ["UP_HOST"])


    def echo(conn):
        conn.send(conn.recv() + " pong")


    if __name__ == "__main__":
        reloaded = []
        signal.signal(signal.SIGHUP, lambda *_: reloaded.append(1))     # (a daemon's reload)
        parent, child = remoteproc.Pipe()
        p = remoteproc.RemoteProcess(spec, target=echo, args=(child,), **options)
        p.start()
        child.close()
        print("ready", flush=True)
        sys.stdin.readline()
        print("reloaded" if reloaded else "no hangup", flush=True)
        parent.send("ping")
        print(parent.recv() if parent.poll(20) else "no answer", flush=True)
        p.join(20)
        print("exit", p.exitcode, flush=True)
"""


def test_a_hangup_the_program_handles_leaves_its_remote_processes_alone(sshd: Any, tmp_path: Any) -> None:
    """SIGHUP to the program's process group (a daemon told to reload, ``kill -HUP -PGID``, or its
    terminal closed under ``nohup``-like handling): the relay, in that group, died of it, and every
    remote process with it (``EOFError`` at the next ``recv``); it ignores SIGHUP now and ends when
    the program does, as after Ctrl-Z."""
    prog = _write(tmp_path / "prog.py", HANGUP)
    proc = subprocess.Popen([sys.executable, prog], cwd=str(tmp_path), env=_env(sshd), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        os.killpg(proc.pid, signal.SIGHUP)
        time.sleep(0.5)     # (what SIGHUP would do to the relay, done by now)
        out, err = proc.communicate("go\n", timeout=WAIT)
        assert proc.returncode == 0, err
        assert out.split("\n")[:3] == ["reloaded", "ping pong", "exit 0"], (out, err)
    finally:
        _kill_session(proc.pid)
