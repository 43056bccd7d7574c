"""Module and package forwarding as a user meets it: findings of an audit, each pinned by a test.

The hosts are the suite's loopback sshd's ``rpuser`` account (nothing of the user's installed
there), over both transports.
"""

from __future__ import annotations

import importlib
import logging
import sys
import uuid

import pytest
from remote_call import call as _call

pytestmark = pytest.mark.timeout(180)

TRANSPORTS = ["paramiko", "openssh"]


def _forget(name: str) -> None:
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


@pytest.fixture
def many_modules(tmp_path, monkeypatch):
    """A package of 1000 small modules that its ``__init__`` imports, as a big pure package's
    (botocore's, sympy's) does: over modules.MAX_FILES, so it cannot go in one answer."""
    name = "rpmany_" + uuid.uuid4().hex[:8]
    root = tmp_path / name
    root.mkdir()
    count = 1000
    lines = ["from . import m%04d\n" % i for i in range(count)]
    lines.append("\n\ndef total(conn):\n    conn.send(sum(globals()['m%%04d' %% i].VALUE for i in range(%d)))\n"
                 % count)
    (root / "__init__.py").write_text("".join(lines))
    for i in range(count):
        (root / ("m%04d.py" % i)).write_text("'''module %d'''\n\nVALUE = %d\n\n\ndef f(x):\n    return x + VALUE\n"
                                             % (i, i))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name, importlib.import_module(name), count
    _forget(name)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_package_over_the_bundle_cap_arrives_in_a_few_answers(plain_user_host, plain_user_options, many_modules,
                                                                transport, caplog, fresh):
    """Each module past the first answer's cap used to cost a round trip of its own, and each such
    answer repeated the first 400 modules (read from disk again): 600 modules took 1.7-3.9 s to
    import on loopback instead of 0.07 s, 1000 modules over 600 answers."""
    name, pkg, count = many_modules
    caplog.set_level(logging.DEBUG, logger="remoteproc")
    got = _call(plain_user_host, dict(plain_user_options, transport=transport), pkg.total)
    assert got == count * (count - 1) // 2
    answers = [r.getMessage() for r in caplog.records
               if r.name == "remoteproc.relay" and ": forwarding %s" % name in r.getMessage()]
    # 1000 modules at 400 an answer: 3 answers (the cap counts files, so the package's own
    # __init__ makes it 1 + 400 + 400 + 199)
    assert 1 <= len(answers) <= 4, answers
