"""A process's ``cwd=`` and ``env=`` (and script mode's path and arguments) as users get them
wrong: each mistake is refused by the constructor or by ``start()`` with a typed error that
names the host, the value and the fix, never a traceback of the remote agent; nothing is left
running, and the connection serves the next process.
"""

from __future__ import annotations

import os
import pathlib

import pytest

import remoteproc
from remoteproc import ConfigError, RemoteProcess
from remoteproc.script import RemoteScript, encode_args

pytestmark = pytest.mark.timeout(60)


def report(conn):
    import os

    conn.send((os.getcwd(), os.environ.get("RP_A")))
    conn.close()


def _run(host, options, **kwargs):
    parent, child = remoteproc.Pipe()
    p = RemoteProcess(host, target=report, args=(child,), **kwargs, **options)
    p.start()
    child.close()
    try:
        assert parent.poll(30)
        return parent.recv()
    finally:
        parent.close()
        p.join(30)
        assert p.exitcode == 0


@pytest.mark.parametrize("env", [{"RP_A": "one\0two"}, {"RP_A\0": "x"}], ids=["in a value", "in a name"])
def test_an_environment_variable_with_a_null_byte_is_refused_before_anything_starts(env):
    """The remote child could never set it (os.environ refuses it, after the fork): refused here,
    naming the host and the variable, before any connection is made."""
    with pytest.raises(ConfigError, match="embedded null byte") as caught:
        RemoteProcess("alice@build01", target=report, env=env)
    assert caught.value.host == "alice@build01" and "alice@build01" in str(caught.value)
    assert isinstance(caught.value, ValueError)     # (as os.environ says it)


def test_a_cwd_that_is_not_a_path_names_cwd():
    for bad in (123, b"/tmp", ""):
        with pytest.raises(TypeError, match="cwd must be a str path"):
            RemoteProcess("h", target=report, cwd=bad)
    with pytest.raises(ConfigError, match="null byte"):
        RemoteProcess("h", target=report, cwd="/tmp\0x")


@pytest.mark.parametrize("where", ["the directory", "a directory above it"])
def test_a_cwd_the_account_cannot_enter_is_a_bootstrap_error_naming_it(plain_user_host, plain_user_options,
                                                                     tmp_path, where):
    """A directory of another account, closed to this one (itself, or one above it): start() says
    permission denied (not "it does not exist": it does) and where; the same connection then
    starts a process in a directory it can enter."""
    import tempfile

    base = tempfile.mkdtemp(prefix="rp-cwd-")      # (tmp_path's parents are closed to rpuser already)
    try:
        os.chmod(base, 0o755 if where == "the directory" else 0o700)
        private = os.path.join(base, "private")
        os.mkdir(private, 0o700 if where == "the directory" else 0o755)
        p = RemoteProcess(plain_user_host, target=report, args=(None,), cwd=private, **plain_user_options)
        with pytest.raises(remoteproc.BootstrapError) as caught:
            p.start()
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    said = str(caught.value)
    assert "permission denied" in said and private in said and plain_user_host in said, said
    assert "does not exist" not in said
    assert _run(plain_user_host, plain_user_options, cwd=pathlib.Path("/tmp"), env={"RP_A": "a b"}) == ("/tmp", "a b")


def test_script_mode_takes_path_like_paths_and_arguments(sshd, scripts):
    """pathlib paths for the script and among its arguments arrive as strings, as python3 takes them."""
    path = pathlib.Path(scripts("argv.py", """
        import json, os, sys
        from multiprocessing.connection import Connection
        Connection(int(os.environ["REMOTEPROC_FD"])).send(sys.argv)
    """))
    assert encode_args([pathlib.Path("/a/b"), "c", 3]) == (["/a/b", "c", "3"], [3])
    job = remoteproc.run(sshd.spec(), path, pathlib.Path("/data/in.csv"), {"k": 1}, **sshd.options())
    try:
        assert job.conn.poll(30)
        assert job.conn.recv() == [str(path), "/data/in.csv", '{"k": 1}']
        job.join(30)
        assert job.exitcode == 0 and job.path == str(path)
    finally:
        job.conn.close()
    with pytest.raises(TypeError, match="path must be"):
        RemoteScript(sshd.spec(), b"/bytes/path.py")
    with pytest.raises(TypeError, match="args must be a sequence"):
        RemoteScript(sshd.spec(), "x.py", "one string")
    with pytest.raises(TypeError, match="stdin must be"):
        RemoteScript(sshd.spec(), "x.py", stdin="not a file")
    assert os.path.exists(path)
