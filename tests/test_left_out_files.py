"""A file that the user's package reads beside itself and that was not sent to the host (a hidden
file, a link, data outside the package, a file beside a module sent from memory): the
FileNotFoundError that escapes the remote target is followed by a line naming the host, that the
file was left out of what was sent, and the fix (found by an audit: a bare FileNotFoundError
named a path in the host's package cache, nothing more)."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import uuid

import pytest

from remoteproc import RemoteProcess

pytestmark = pytest.mark.timeout(120)

READERS = """
    import os

    HERE = os.path.dirname(os.path.abspath(__file__))

    def read(rel):
        with open(os.path.join(HERE, rel)) as f:
            return f.read()
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Two fresh packages (unique names: agents cache modules) in a directory the plain user
    cannot read: one with a data file (it goes through the package cache), one pure (from memory)."""
    tag = uuid.uuid4().hex[:8]
    data, pure = "rpdata_" + tag, "rppure_" + tag
    (tmp_path / data).mkdir()
    (tmp_path / data / "__init__.py").write_text(textwrap.dedent(READERS))
    (tmp_path / data / "settings.json").write_text('{"a": 1}\n')
    (tmp_path / data / ".env").write_text("SECRET=1\n")
    (tmp_path / "real_linked.txt").write_text("linked\n")
    os.symlink("../real_linked.txt", str(tmp_path / data / "linked.txt"))
    (tmp_path / "shared_data").mkdir()
    (tmp_path / "shared_data" / "table.csv").write_text("a,b\n")
    (tmp_path / pure).mkdir()
    (tmp_path / pure / "__init__.py").write_text(textwrap.dedent(READERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield importlib.import_module(data), importlib.import_module(pure)
    for name in (data, pure):
        sys.modules.pop(name, None)


def _fails(host, options, target, rel, capfd):
    p = RemoteProcess(host, target=target, args=(rel,), **options)
    p.start()
    p.join(60)
    err = capfd.readouterr().err
    assert p.exitcode == 1, err
    assert "FileNotFoundError" in err or "PermissionError" in err, err
    assert "run_and_explain" not in err, err        # (the traceback is a local child's: no frame of ours)
    return err


def test_a_file_left_out_of_the_package_cache_is_named_with_the_host_and_a_fix(plain_user_host, plain_user_options,
                                                                              project, capfd):
    data, _pure = project
    assert data.read("settings.json") and data.read(".env") and data.read("linked.txt")     # (here they are)
    for rel, shown in ((".env", "/.env'"), ("linked.txt", "/linked.txt'"),
                       (os.path.join("..", "shared_data", "table.csv"), "shared_data/table.csv'")):
        err = _fails(plain_user_host, plain_user_options, data.read, rel, capfd)
        line = next((ln for ln in err.splitlines() if ln.startswith("remoteproc: ") and "not among the files" in ln),
                    None)
        assert line is not None, err
        assert "127.0.0.1" in line and "package cache" in line and shown in line and "Fix: " in line, line
        assert "symbolic links" in line and "outside the package" in line, line


def test_a_file_beside_a_package_sent_from_memory_is_named_with_the_host_and_a_fix(plain_user_host,
                                                                                   plain_user_options, project,
                                                                                   capfd):
    _data, pure = project
    err = _fails(plain_user_host, plain_user_options, pure.read, os.path.join("..", "shared_data", "table.csv"), capfd)
    line = next((ln for ln in err.splitlines() if ln.startswith("remoteproc: ") and "path of your machine" in ln), None)
    assert line is not None, err
    assert "127.0.0.1" in line and pure.__name__ in line and "Fix: " in line, line


def test_a_file_missing_for_other_reasons_gets_no_such_line(plain_user_host, plain_user_options, capfd):
    err = _fails(plain_user_host, plain_user_options, open, "/nonexistent/rp-%s" % uuid.uuid4().hex, capfd)
    assert "not among the files" not in err and "path of your machine" not in err, err
