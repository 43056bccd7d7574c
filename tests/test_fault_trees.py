"""When something dies, a remote child's own process tree goes too, as a user meets it.

A remote child often has children of its own: ``multiprocessing`` children (fork and spawn),
a ``subprocess.Popen``, some of which ignore SIGTERM or handle it.  Each test breaks one thing
(the user's Ctrl-C, the user's program killed, the remote agent killed) and checks on the host
(here: this machine, the loopback sshd) that the child's whole process group is gone and that no
temp dir of ours is left, on both transports.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing.connection import wait

import cloudpickle
import pytest

from remoteproc import Pipe, RemoteProcess
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

def _start(host, options, target, *args):
    parent, child = Pipe()
    p = RemoteProcess(host, target=target, args=(child, *args), **options)
    p.start()
    child.close()
    assert wait([parent], 60), "no first message from the remote process"
    return p, parent, parent.recv()


# -- Ctrl-C ----------------------------------------------------------------------------------------------------

def test_ctrl_c_reaches_the_remote_childs_own_children(host, ssh_options):
    """Fixed: the relay passed a Ctrl-C on to the remote child alone, so its multiprocessing children
    never saw it and the child, joining them as it exits, hung, and the user's program with it (its
    exit joins the child). Locally the terminal's SIGINT reaches the whole foreground group: the
    grandchild ends at once. Now the agent sends it to the child's process group."""
    p, conn, _pid = _start(host, ssh_options, tree_waits_for_ctrl_c)
    t0 = time.monotonic()
    os.kill(relay_client.get().proc.pid, signal.SIGINT)       # (what the terminal does to the relay)
    assert wait([conn], 30), "the remote child never answered the Ctrl-C"
    assert conn.recv() == ("KeyboardInterrupt", 5), "its own child never saw the Ctrl-C"
    assert time.monotonic() - t0 < 8
    p.join(30)
    assert p.exitcode == 0
