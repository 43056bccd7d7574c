"""``remoteproc run`` prints each message as one line of JSON, or ``repr()`` where JSON cannot show
the value: a float NaN or infinity was written as ``NaN``/``Infinity``, which is not JSON (``jq`` and
other readers refuse the line).  A consumer of ``run``'s stdout reads every line as JSON or as a repr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(90)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))

SENDS = """
import os
from multiprocessing.connection import Connection
conn = Connection(int(os.environ["REMOTEPROC_FD"]))
for value in (float("nan"), [1.5, float("inf")], {"x": -float("inf")}, 2.5, "NaN"):
    conn.send(value)
"""


def test_run_prints_nan_and_infinities_as_repr_not_as_invalid_json(alias, scripts):
    config, host = alias
    path = scripts("sends_nan.py", SENDS)
    out = subprocess.run([sys.executable, "-m", "remoteproc", "run", "-F", config, host, path], capture_output=True,
                         text=True, timeout=60, env=ENV, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == ["nan", "[1.5, inf]", "{'x': -inf}", "2.5", '"NaN"']
    def no_constants(name):
        pytest.fail("%s is not JSON" % name)

    assert [json.loads(line, parse_constant=no_constants) for line in lines[3:]] == [2.5, "NaN"]
