"""When something dies, a remote child's own process tree goes too, as a user meets it.

A remote child often has children of its own: ``multiprocessing`` children (fork and spawn),
a ``subprocess.Popen``, some of which ignore SIGTERM or handle it.  Each test breaks one thing
(the user's Ctrl-C, the user's program killed, the remote agent killed) and checks on the host
(here: this machine, the loopback sshd) that the child's whole process group is gone and that no
temp dir of ours is left, on both transports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import wait

import cloudpickle
import pytest
from proctable import cmdline, eventually, live_members, ppid
from remote_call import start

from remoteproc.relay import client as relay_client

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.loopback_only]     # reads this machine's /proc


# -- targets (shipped by value) ------------------------------------------------------------------------

def _interrupted_grandchild(ready):
    try:
        ready.send(True)        # (from inside the try: the Ctrl-C may come as soon as the parent has it)
        time.sleep(60)
    except KeyboardInterrupt:
        sys.exit(5)


def tree_waits_for_ctrl_c(conn):
    """A multiprocessing child of its own; at Ctrl-C, joins it (as its exit would) and says how it ended."""
    import multiprocessing

    ready, w = multiprocessing.Pipe(duplex=False)
    p = multiprocessing.get_context("fork").Process(target=_interrupted_grandchild, args=(w,))
    p.start()
    ready.recv()
    try:
        conn.send(os.getpid())
        time.sleep(60)
    except KeyboardInterrupt:
        p.join(10)
        conn.send(("KeyboardInterrupt", p.exitcode))


# -- helpers -----------------------------------------------------------------------------------------------

# -- Ctrl-C ----------------------------------------------------------------------------------------------------

def test_ctrl_c_reaches_the_remote_childs_own_children(host, ssh_options):
    """Fixed: the relay passed a Ctrl-C on to the remote child alone, so its multiprocessing children
    never saw it and the child, joining them as it exits, hung, and the user's program with it (its
    exit joins the child). Locally the terminal's SIGINT reaches the whole foreground group: the
    grandchild ends at once. Now the agent sends it to the child's process group."""
    p, conn, _pid = start(host, ssh_options, tree_waits_for_ctrl_c)
    t0 = time.monotonic()
    os.kill(relay_client.get().proc.pid, signal.SIGINT)       # (what the terminal does to the relay)
    assert wait([conn], 30), "the remote child never answered the Ctrl-C"
    assert conn.recv() == ("KeyboardInterrupt", 5), "its own child never saw the Ctrl-C"
    assert time.monotonic() - t0 < 8
    p.join(30)
    assert p.exitcode == 0


def _hang():
    time.sleep(120)


def _hang_ignoring_sigterm():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(120)


def tree(conn):
    """A child with a tree as users' children have one: multiprocessing children (fork, one that
    ignores SIGTERM, spawn: its temp dir), subprocesses (one that ignores SIGTERM), a daemon thread.
    Sends its pid and its temp dir once all of them run."""
    import multiprocessing
    import subprocess
    import threading

    from remoteproc.agent import grandchild

    for target in (_hang, _hang_ignoring_sigterm):
        multiprocessing.get_context("fork").Process(target=target).start()
    # (a stdlib target: a spawn child imports it by reference, and this module travels by value)
    multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,)).start()
    subprocess.Popen(["sleep", "120"])
    ignores = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                                "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(120)"],
                               stdout=subprocess.PIPE)
    ignores.stdout.readline()           # (its SIGTERM is ignored from here on)
    threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
    conn.send((os.getpid(), grandchild._state["dir"]))
    time.sleep(120)


def _nothing_left(pid: int, where: str, bound: float) -> None:
    assert eventually(lambda: not live_members(pgid=pid), bound), \
        "left on the host: %s" % [(p, cmdline(p)[:60]) for p in live_members(pgid=pid)]
    assert eventually(lambda: not os.path.exists(where), 2), "the spawn children's temp dir was left: %s" % where


# -- the agent killed -------------------------------------------------------------------------------------------

def test_an_agent_killed_leaves_nothing_of_its_childs_tree(host, ssh_options):
    """Fixed: the child's watchdog sent SIGTERM to its group, which ended the child itself (the default
    action) before its SIGKILL 2 s later: the child's own children that ignore SIGTERM stayed for ever,
    and so did the temp dir of its spawn children (the agent, which removes it, was dead). A process of
    its own group now sends both, and removes the directory."""
    p, conn, (pid, where) = start(host, ssh_options, tree)
    assert len(live_members(pgid=pid)) >= 6 and os.path.isdir(where)
    os.kill(ppid(pid), signal.SIGKILL)
    p.join(30)
    _nothing_left(pid, where, 8)        # (SIGKILL 2 s after SIGTERM)


def subprocesses_then_recv(conn):
    """A child with subprocesses only (one ignores SIGTERM), then waiting in ``conn.recv()``."""
    import subprocess

    subprocess.Popen(["sleep", "120"])
    ignores = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                                "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(120)"],
                               stdout=subprocess.PIPE)
    ignores.stdout.readline()
    conn.send(os.getpid())
    conn.recv()             # (EOFError at once when the agent dies: the child ends then)


def test_an_agent_killed_while_its_child_waits_in_recv_leaves_nothing_of_the_childs_tree(host, ssh_options):
    """Found by a new user's audit: a child waiting in ``conn.recv()`` (the usual case) ended at the
    agent's death with EOFError before its watchdog thread had its turn, and its subprocesses stayed
    on the host for good (a multiprocessing child kept the child waiting in its exit, and so the
    test above saw nothing). Its exit now has the group ended when the agent is gone."""
    p, conn, pid = start(host, ssh_options, subprocesses_then_recv)
    assert len(live_members(pgid=pid)) >= 3
    os.kill(ppid(pid), signal.SIGKILL)
    p.join(30)
    assert eventually(lambda: not live_members(pgid=pid), 8), \
        "left on the host: %s" % [(q, cmdline(q)[:60]) for q in live_members(pgid=pid)]


# -- the user's program killed -------------------------------------------------------------------------------

#: a user's program: starts the target named by ``%(target)s`` on UP_HOST; what it does then follows
START = """
import json, os, signal, sys, time
sys.path.insert(0, %(tests)r)
import test_fault_trees
from remoteproc import Pipe, RemoteProcess

spec, options = json.loads(os.environ["UP_HOST"])
parent, child = Pipe()
p = RemoteProcess(spec, target=test_fault_trees.%(target)s, args=(child,), **options)
p.start()
"""

PROGRAM = START + """
print(json.dumps(parent.recv()), flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def program(text, target, host, ssh_options, tmp_path):
    """A user's program (``text``, from START, with ``target``) run as a process of its own, its
    stdin and stdout ours; killed at the end if it still runs."""
    script = tmp_path / "prog.py"
    script.write_text(text % {"tests": os.path.dirname(os.path.abspath(__file__)), "target": target})
    env = dict(os.environ, UP_HOST=json.dumps([host, ssh_options]),
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    prog = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        yield prog
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.wait(10)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_program_leaves_nothing_of_a_childs_tree(host, ssh_options, tmp_path, how):
    """Fixed: when its channel closed, the agent sent SIGKILL 2 s after SIGTERM only to the groups of
    children still running: a child that SIGTERM ended left its own children that ignore SIGTERM."""
    with program(PROGRAM, "tree", host, ssh_options, tmp_path) as prog:
        pid, where = json.loads(prog.stdout.readline())
        assert len(live_members(pgid=pid)) >= 6 and os.path.isdir(where)
        prog.send_signal(getattr(signal, how))
        prog.wait(30)
    _nothing_left(pid, where, 8)


# -- a child that died first -----------------------------------------------------------------------------------

KILLED_FIRST = START + """
pid = parent.recv()
os.kill(pid, signal.SIGKILL)
p.join(30)
print(json.dumps([pid, p.exitcode]), flush=True)
sys.stdin.readline()            # (the test looks at the host, then lets the program end)
"""


def test_a_killed_childs_own_children_end_with_the_program(host, ssh_options, tmp_path):
    """Found by a new user's audit: a remote child killed by a signal left its subprocesses on the
    host for good, even after the program ended and its connection closed (the agent ended only the
    groups of children still running). Local multiprocessing leaves them while the program runs,
    and so does remoteproc; when the channel closes they go, as reliability.md says."""
    with program(KILLED_FIRST, "subprocesses_then_recv", host, ssh_options, tmp_path) as prog:
        pid, exitcode = json.loads(prog.stdout.readline())
        assert exitcode == -signal.SIGKILL
        assert len(live_members(pgid=pid)) >= 2, "its subprocesses outlive it while the program runs"
        prog.stdin.write("\n")
        prog.stdin.flush()
        assert prog.wait(30) == 0
    assert eventually(lambda: not live_members(pgid=pid), 8), \
        "left on the host: %s" % [(q, cmdline(q)[:60]) for q in live_members(pgid=pid)]
