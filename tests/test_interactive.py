"""Interactive use: a notebook (nbclient + ipykernel) redefines, re-runs and interrupts cells.

What a data scientist does between cells: redefine a function or a helper it calls, change a
global, import a module of the notebook's directory, interrupt a cell that waits for a remote
child. Each cell prints ``ok <name>`` lines that the test looks for.
"""

from __future__ import annotations

import os

import nbformat  # the test extra installs nbclient, nbformat and ipykernel
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cells(host: str, options: dict) -> list[str]:
    return [
        # 0: set-up
        "import os, sys, time, threading, signal\n"
        "from remoteproc import Pipe, Pool, RemoteProcess\n"
        "HOST, OPTIONS = %r, %r\n"
        "def run(target, *args):\n"
        "    parent, child = Pipe()\n"
        "    p = RemoteProcess(HOST, target=target, args=(child,) + args, **OPTIONS)\n"
        "    p.start(); value = parent.recv(); p.join(30)\n"
        "    return value\n" % (host, options),
        # 1: a function, then the same name redefined: the new one runs
        "def f(conn):\n    conn.send('v1')\n"
        "print('ok first', run(f))\n",
        "def f(conn):\n    conn.send('v2')\n"
        "print('ok redefined', run(f))\n",
        # 3: a class of the notebook, instances both ways through a Pipe; a closure; a global changed
        "class Point:\n"
        "    def __init__(self, x): self.x = x\n"
        "def double(conn, _):\n"
        "    got = conn.recv(); conn.send(Point(got.x * 2))\n"
        "def run2(target):\n"
        "    parent, child = Pipe()\n"
        "    p = RemoteProcess(HOST, target=target, args=(child, 0), **OPTIONS); p.start()\n"
        "    parent.send(Point(21)); value = parent.recv(); p.join(30); return value\n"
        "back = run2(double)\n"
        "print('ok class', type(back).__name__, back.x, isinstance(back, Point))\n"
        "K = 1\n"
        "def closure(a):\n    return lambda conn: conn.send(a + K)\n"
        "print('ok closure', run(closure(10)))\n"
        "K = 2\n"
        "print('ok closure', run(closure(10)))\n",
        # 4: a module of the notebook's directory
        "import nbhelper\n"
        "def use(conn):\n    conn.send(nbhelper.triple(5))\n"
        "print('ok module', run(use))\n",
        # 5: a Pool that lives across cells; the helper its function calls is redefined between maps
        "pool = Pool([HOST], processes_per_host=1, **OPTIONS)\n"
        "def helper():\n    return 'helper v1'\n"
        "def task(x):\n    return helper()\n"
        "print('ok pool', pool.map(task, [0]))\n",
        "def helper():\n    return 'helper v2'\n"
        "print('ok pool', pool.map(task, [0]))\n"
        "pool.terminate(); pool.join()\n",
        # 7: a KeyboardInterrupt (what a kernel interrupt raises) while join() waits
        "def sleeper():\n    time.sleep(600)\n"
        "p = RemoteProcess(HOST, target=sleeper, **OPTIONS); p.start()\n"
        "threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "p.join(60)\n",
        "p.terminate(); p.join(10)\n"     # SIGINT to the kernel alone: the child lives on, as a forked one does
        "print('ok interrupted', p.is_alive(), p.exitcode is not None)\n"
        "print('ok after', run(f))\n",
    ]


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.one_transport
@pytest.mark.timeout(120)
def test_a_notebook_redefines_and_interrupts(host, ssh_options, tmp_path, monkeypatch):
    (tmp_path / "nbhelper.py").write_text("def triple(x):\n    return 3 * x\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in _cells(host, ssh_options)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env_path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", ROOT + (os.pathsep + env_path if env_path else ""))
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}},
                   extra_arguments=["--HistoryManager.enabled=False"]).execute()
    out = [_stdout(c) for c in nb.cells]
    errors = [[o.ename for o in c.outputs if o.output_type == "error"] for c in nb.cells]
    assert errors[:7] == [[]] * 7 and errors[8] == [], errors
    assert "ok first v1" in out[1] and "ok redefined v2" in out[2], out
    assert "ok class Point 42 True" in out[3], out[3]
    assert "ok closure 11" in out[3] and "ok closure 12" in out[3], out[3]
    assert "ok module 15" in out[4], out[4]
    assert "ok pool ['helper v1']" in out[5], out[5]
    assert "ok pool ['helper v2']" in out[6], out[6]     # was 'helper v1': the worker kept the old helper
    assert errors[7] == ["KeyboardInterrupt"], errors[7]
    assert "ok interrupted False True" in out[8] and "ok after v2" in out[8], out[8]
