"""Jupyter: a notebook executed by nbclient with ipykernel sees its remote children's output in its cells.

ipykernel captures the process's fds 1 and 2 into the running cell (that is how a local child's
prints get there); remote output must be written to those fds, not to ``sys.stdout.fileno()``,
which ipykernel answers with its copy of the terminal the kernel was started from.

ipykernel copies what reaches those fds into the cell in a thread of its own, which neither the
end of a cell nor the cell's next print waits for: output that was in fd 1 when ``join()``
returned may still be copied after the cell's next print, or after the cell ended (into the next
cell, or, after the last one, past nbclient's end), for a local child as for a remote one. The
notebook's ``settle()`` waits for that copy where the test checks where the output landed.
"""

from __future__ import annotations

import os
import re

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
        "HOST, OPTIONS = %r, %r\n" % (ROOT, host, options) + SETTLE,
        # 1: a function defined in a cell prints remotely, between two local prints
        "def hello(n):\n"
        "    print('hello from the remote child', n, flush=True)\n"
        "    print('remote stderr line', file=sys.stderr, flush=True)\n"
        "print('before')\n"
        "p = RemoteProcess(HOST, target=hello, args=(7,), **OPTIONS)\n"
        "p.start(); p.join(60)\n"
        "settle()\n"
        "print('exitcode', p.exitcode)\n",
        # 2: an exception in the remote child: its traceback in the cell
        "def boom():\n"
        "    raise ValueError('raised on the remote host')\n"
        "p = RemoteProcess(HOST, target=boom, **OPTIONS)\n"
        "p.start(); p.join(60)\n"
        "settle()\n"
        "print('exitcode', p.exitcode)\n",
        # 3: a Pool with a function and a lambda of the notebook
        "def square(x):\n"
        "    return x * x\n"
        "def say(text):\n"
        "    print(text, flush=True)\n"
        "with Pool([HOST], processes_per_host=2, **OPTIONS) as pool:\n"
        "    print('squares', pool.map(square, range(6)))\n"
        "    print('lambda', pool.map(lambda x: x + 100, range(3)))\n"
        "    pool.apply(say, ('printed by a pool worker',))\n"
        "settle()\n",
        # 4: ipykernel's copy lags (a busy machine; here made slow on purpose): what the child wrote is
        # in the cell before the cell's next print all the same, once settle() has waited for it
        "import threading, time\n"
        "_write = sys.stdout.write\n"
        "def slow(text):\n"
        "    if threading.current_thread() is not threading.main_thread():    # (ipykernel's copying thread)\n"
        "        time.sleep(0.5)\n"
        "    return _write(text)\n"
        "sys.stdout.write = slow\n"
        "p = RemoteProcess(HOST, target=hello, args=(8,), **OPTIONS)\n"
        "p.start(); p.join(60)\n"
        "settle()\n"
        "del sys.stdout.write\n"
        "print('joined')\n",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


#: the notebook's settle(): returns once ipykernel's copying threads have put into the cell all that
#: was in fds 1 and 2 when it was called. A marker written to each fd comes after all of that in its
#: pipe, and the thread copies in order: once the marker went through sys.stdout.write (the thread
#: writes what it reads there), so had everything before it. (The markers show in the cell: _streams
#: takes them out.)
SETTLE = """
import threading, uuid
def settle(timeout=60):
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        marker = 'settled-' + uuid.uuid4().hex
        seen = threading.Event()
        mine = vars(stream).get('write')
        write = stream.write
        tail = ['']
        def spy(text, write=write, marker=marker, seen=seen, tail=tail):
            n = write(text)
            both = tail[0] + text
            tail[0] = both[-len(marker):]
            if marker in both:
                seen.set()
            return n
        stream.write = spy
        try:
            os.write(fd, (marker + '\\n').encode())
            if not seen.wait(timeout):
                raise RuntimeError('ipykernel did not copy fd %d into the cell within %ss' % (fd, timeout))
        finally:
            if mine is None:
                del stream.write
            else:
                stream.write = mine
"""

_MARKER = re.compile(r"settled-[0-9a-f]{32}\n")


def _streams(cell) -> dict[str, str]:
    out: dict[str, str] = {"stdout": "", "stderr": ""}
    for o in cell.outputs:
        if o.output_type == "stream":
            out[o.name] += o.text
    return {name: _MARKER.sub("", text) for name, text in out.items()}


@pytest.mark.timeout(240)
def test_remote_output_and_tracebacks_land_in_the_cells(host, ssh_options, tmp_path, monkeypatch):
    nb = _notebook(host, ssh_options)
    env_path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", ROOT + (os.pathsep + env_path if env_path else ""))
    # ipykernel does not capture fds 1 and 2 when it sees itself under pytest: the kernel must not
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   extra_arguments=["--HistoryManager.enabled=False"]).execute()
    one, two, three, four = (_streams(nb.cells[i]) for i in (1, 2, 3, 4))
    assert "hello from the remote child 7" in one["stdout"], one
    assert "remote stderr line" in one["stderr"], one
    assert one["stdout"].index("before") < one["stdout"].index("hello from the remote child")
    assert "exitcode 0" in one["stdout"]
    assert "ValueError: raised on the remote host" in two["stderr"], two
    assert "Traceback" in two["stderr"] and "exitcode 1" in two["stdout"], two
    assert "squares [0, 1, 4, 9, 16, 25]" in three["stdout"], three
    assert "lambda [100, 101, 102]" in three["stdout"], three
    assert "printed by a pool worker" in three["stdout"], three
    assert four["stdout"].index("hello from the remote child 8") < four["stdout"].index("joined"), four
    cells = {1: one, 2: two, 3: three, 4: four}
    for text, homes in (("remote child 7", [1]), ("remote stderr line", [1, 4]), ("ValueError", [2]),
                        ("by a pool worker", [3]), ("remote child 8", [4])):     # and in no other cell
        assert [i for i, c in cells.items() if text in c["stdout"] + c["stderr"]] == homes, (text, cells)
