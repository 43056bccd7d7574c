"""Jupyter: a notebook executed by nbclient with ipykernel sees its remote children's output in its cells.

ipykernel captures the process's fds 1 and 2 into the running cell (that is how a local child's
prints get there); remote output must be written to those fds, not to ``sys.stdout.fileno()``,
which ipykernel answers with its copy of the terminal the kernel was started from.
"""

from __future__ import annotations

import os

import nbformat  # the test extra installs nbclient, nbformat and ipykernel
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _notebook(host: str, options: dict) -> nbformat.NotebookNode:
    cells = [
        # 0: set-up
        "import os, sys\n"
        "sys.path.insert(0, %r)\n"
        "from remoteproc import Pool, RemoteProcess\n"
        "HOST, OPTIONS = %r, %r\n" % (ROOT, host, options),
        # 1: a function defined in a cell prints remotely, between two local prints
        "def hello(n):\n"
        "    print('hello from the remote child', n, flush=True)\n"
        "    print('remote stderr line', file=sys.stderr, flush=True)\n"
        "print('before')\n"
        "p = RemoteProcess(HOST, target=hello, args=(7,), **OPTIONS)\n"
        "p.start(); p.join(60)\n"
        "print('exitcode', p.exitcode)\n",
        # 2: an exception in the remote child: its traceback in the cell
        "def boom():\n"
        "    raise ValueError('raised on the remote host')\n"
        "p = RemoteProcess(HOST, target=boom, **OPTIONS)\n"
        "p.start(); p.join(60)\n"
        "print('exitcode', p.exitcode)\n",
        # 3: a Pool with a function and a lambda of the notebook
        "def square(x):\n"
        "    return x * x\n"
        "def say(text):\n"
        "    print(text, flush=True)\n"
        "with Pool([HOST], processes_per_host=2, **OPTIONS) as pool:\n"
        "    print('squares', pool.map(square, range(6)))\n"
        "    print('lambda', pool.map(lambda x: x + 100, range(3)))\n"
        "    pool.apply(say, ('printed by a pool worker',))\n",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _streams(cell) -> dict[str, str]:
    out: dict[str, str] = {"stdout": "", "stderr": ""}
    for o in cell.outputs:
        if o.output_type == "stream":
            out[o.name] += o.text
    return out


@pytest.mark.timeout(240)
def test_remote_output_and_tracebacks_land_in_the_cells(host, ssh_options, tmp_path, monkeypatch):
    nb = _notebook(host, ssh_options)
    env_path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", ROOT + (os.pathsep + env_path if env_path else ""))
    # ipykernel does not capture fds 1 and 2 when it sees itself under pytest: the kernel must not
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   extra_arguments=["--HistoryManager.enabled=False"]).execute()
    one, two, three = (_streams(nb.cells[i]) for i in (1, 2, 3))
    assert "hello from the remote child 7" in one["stdout"], one
    assert "remote stderr line" in one["stderr"], one
    assert one["stdout"].index("before") < one["stdout"].index("hello from the remote child")
    assert "exitcode 0" in one["stdout"]
    assert "ValueError: raised on the remote host" in two["stderr"], two
    assert "Traceback" in two["stderr"] and "exitcode 1" in two["stdout"], two
    assert "squares [0, 1, 4, 9, 16, 25]" in three["stdout"], three
    assert "lambda [100, 101, 102]" in three["stdout"], three
    assert "printed by a pool worker" in three["stdout"], three
