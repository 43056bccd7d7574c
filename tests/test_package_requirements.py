"""Requires-Python: a distribution goes to a host only if it supports the host's Python.

A pure package forwarded from memory and a package sent through the host's cache are
refused alike, with an ImportError that names the distribution, its Requires-Python, the
host's Python and the fix, instead of failing deep inside the package (``TypeError:
unsupported operand type(s) for |`` in urllib3 2 on Python 3.9).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import textwrap
import uuid

import pytest
from conftest import _unavailable

from remoteproc import Pipe, RemoteProcess, requires_python
from remoteproc.relay import client

pytestmark = pytest.mark.timeout(300)

HOST_PYTHON = "/usr/bin/python3"        # the plain account's python3 (3.11.2 here)


# -- the specifier parser, without a host --------------------------------------------------------

@pytest.mark.parametrize("spec, version, ok", [
    (">=3.10", (3, 9, 16), False),
    (">=3.10", (3, 10, 0), True),
    (">=3.8", (3, 9, 16), True),
    (">=3.11.5", (3, 11, 2), False),                       # micro versions count
    (">=3.11.5", (3, 11, 7), True),
    (">=2.7, !=3.0.*, !=3.1.*, !=3.2.*", (3, 9, 1), True),  # six
    ("!=3.9.*", (3, 9, 1), False),
    ("==3.*", (3, 9, 1), True),
    ("==3.9", (3, 9, 0), True),                             # 3.9 == 3.9.0
    ("==3.9", (3, 9, 1), False),
    ("~=3.8", (3, 9, 1), True),                             # >=3.8, ==3.*
    ("~=3.8.1", (3, 9, 1), False),                          # >=3.8.1, ==3.8.*
    ("~=3.8.1", (3, 8, 5), True),
    ("<3.9", (3, 9, 0), False),
    ("<=3.9", (3, 9, 1), False),
    (">3.9", (3, 9, 0), False),
    (">3.9", (3, 9, 1), True),
    (">=3.10.0rc1", (3, 9, 18), False),                     # pre-releases order before the release
    (">=3.10.0rc1", (3, 10, 0), True),
    ("<3.10.0a1", (3, 10, 0), False),
    (">=3.9.dev0", (3, 9, 0), True),
    ("<3.9.post1", (3, 9, 0), True),
    (" >= 3.8 , < 4 ", (3, 12, 1), True),
    ("", (3, 9, 0), True),
    (">=3.6.*", (3, 9, 0), None),                           # not PEP 440: cannot tell
    ("python>=3", (3, 9, 0), None),
    ("~=3", (3, 9, 0), None),
    ("===3.9.1", (3, 9, 1), True),                          # arbitrary equality: the string itself
    ("===3.9", (3, 9, 1), False),
    (">3.9-1", (3, 9, 0), False),                           # 3.9-1 is the post-release 3.9.post1
    ("<3.9-1", (3, 9, 0), True),
    ("==3.x.*", (3, 9, 0), None),
    (">=three", (3, 9, 0), None),
])
def test_requires_python_specifiers(spec, version, ok):
    assert requires_python.allows(spec, version) is ok


# -- a package with a Requires-Python, installed in a site directory of its own ------------------

def _site(tmp_path, name: str, requires: str | None, data: bool = False) -> str:
    """A distribution ``name`` 1.0 in tmp_path/site, pure (or with a data file), with that
    Requires-Python; returns the site directory."""
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("import os\nHERE = os.path.dirname(__file__)\nVALUE = 42\n")
    record = ["%s/__init__.py,," % name]
    if data:
        (site / name / "table.dat").write_text("data\n")
        record.append("%s/table.dat,," % name)
    info = site / ("%s-1.0.dist-info" % name)
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n%s\nhello\n" % (
        name, "Requires-Python: %s\n" % requires if requires is not None else ""))
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: py3-none-any\n")
    record += ["%s/METADATA,," % info.name, "%s/WHEEL,," % info.name, "%s/RECORD,," % info.name]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return str(site)


def import_job(conn, name):
    import importlib

    try:
        conn.send(("ok", importlib.import_module(name).VALUE))
    except ImportError as exc:
        conn.send(("ImportError", str(exc)))


def _import(host, options, name, target=import_job):
    parent, child = Pipe()
    p = RemoteProcess(host, target=target, args=(child, name), **options)
    p.start()
    child.close()
    try:
        assert parent.poll(180), "no answer from the remote child (exit code %s)" % p.exitcode
        return parent.recv()
    finally:
        parent.close()
        p.join(30)
        assert p.exitcode == 0


@pytest.fixture
def host_python():
    """The host's python3 version, which these tests put just out of a package's reach."""
    import subprocess

    if not os.path.exists(HOST_PYTHON):
        _unavailable("%s is not there" % HOST_PYTHON)
    out = subprocess.run([HOST_PYTHON, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    version = tuple(int(x) for x in out.split("."))
    if version >= sys.version_info[:3]:
        pytest.skip("the host's python3 %s is not older than ours: nothing to refuse" % out)
    return version


@pytest.mark.parametrize("data", [False, True], ids=["pure-from-memory", "data-through-the-cache"])
def test_a_package_whose_requires_python_excludes_the_host_is_refused(plain_user_host, plain_user_options,
                                                                      host_python, tmp_path, monkeypatch, data):
    name = "rpreq_" + uuid.uuid4().hex[:8]
    ours = "%d.%d.%d" % sys.version_info[:3]
    monkeypatch.syspath_prepend(_site(tmp_path, name, ">=%s" % ours, data=data))   # we qualify, the host not
    kind, message = _import(plain_user_host, plain_user_options, name)
    assert kind == "ImportError", message
    host = "%d.%d.%d" % host_python
    assert "%s 1.0" % name in message and "Requires-Python" in message and ">=%s" % ours in message
    assert "cpython %s" % host in message and plain_user_host in message
    assert "Fix:" in message and "pip install" in message and "python=" in message


def test_a_package_that_supports_the_host_or_an_unparseable_one_is_sent(plain_user_host, plain_user_options,
                                                                       tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="remoteproc")
    client.shutdown()       # (a new relay: it forwards the log records at the level set now)
    good, odd = "rpreq_" + uuid.uuid4().hex[:8], "rpreq_" + uuid.uuid4().hex[:8]
    monkeypatch.syspath_prepend(_site(tmp_path / "a", good, ">=3.8, <4"))
    monkeypatch.syspath_prepend(_site(tmp_path / "b", odd, ">=3.6.*"))
    assert _import(plain_user_host, plain_user_options, good) == ("ok", 42)
    assert _import(plain_user_host, plain_user_options, odd) == ("ok", 42)
    said = [r.getMessage() for r in caplog.records if r.name == "remoteproc.packages"]
    assert any("cannot parse Requires-Python '>=3.6.*'" in m for m in said), said


REQUESTS_JOB = textwrap.dedent("""
    def import_job(conn, name):
        import importlib
        try:
            importlib.import_module(name)
            conn.send(("ok", None))
        except ImportError as exc:
            conn.send(("ImportError", str(exc)))
        except Exception as exc:
            conn.send((type(exc).__name__, str(exc)))
""")


def test_requests_on_a_pypy_3_9_host_is_refused_by_name(plain_user_host, plain_user_options, tmp_path,
                                                         monkeypatch):
    """The audit's case: requests 2.34 (Requires-Python >=3.10) on PyPy 3.9 (spawn mode)."""
    import importlib.metadata

    if shutil.which("pypy3") is None:
        _unavailable("pypy3 (a second Python, 3.9) is not installed; scripts/test.sh installs it")
    spec = importlib.metadata.metadata("requests")["Requires-Python"] or ""
    if not re.fullmatch(r">=\s*3\.1\d(\.\d+)?", spec):
        pytest.skip("our requests (Requires-Python %r) supports Python 3.9" % spec)
    jobs = "rpreq_jobs_" + uuid.uuid4().hex[:8]
    (tmp_path / (jobs + ".py")).write_text(REQUESTS_JOB)       # (a target PyPy 3.9 can import)
    monkeypatch.syspath_prepend(str(tmp_path))
    target = __import__(jobs).import_job
    try:
        kind, message = _import(plain_user_host, dict(plain_user_options, python="pypy3"), "requests", target)
    finally:
        sys.modules.pop(jobs, None)
        client.shutdown()
    assert kind == "ImportError", (kind, message)
    assert "requests %s" % importlib.metadata.version("requests") in message and spec in message
    assert "pypy 3.9." in message and "Fix:" in message
    assert "pypy3 -m pip install --user requests" in message or "pypy3 -m venv ~/venv && ~/venv/bin/pip install " \
        "requests` there picks one" in message      # (Debian's pypy3 is externally managed)
