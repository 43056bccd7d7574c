"""What start-up skips, and that what it skips still works when asked for.

Cold-start savings (``docs/performance.md``) come from not doing work: the package
imports its parts on first use, the relay answers paramiko's version question without
importlib.metadata, and the agent arrives compiled.  These tests check that each
shortcut gives the same answers as the long way.
"""

from __future__ import annotations

import importlib.metadata
import json
import marshal
import os
import signal
import subprocess
import sys
import time
import types
import zlib

import pytest

import remoteproc
from remoteproc import bootstrap
from remoteproc.agent import frames
from remoteproc.relay import paramiko_shims


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON value, returned here.

    (Without coverage measurement: coverage itself imports multiprocessing and more.)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_remoteproc_loads_its_parts_on_first_use():
    loaded = _fresh(
        "import json, sys, remoteproc\n"
        "before = sorted(m for m in sys.modules if m.startswith('remoteproc.'))\n"
        "mp = 'multiprocessing' in sys.modules\n"
        "pool = remoteproc.Pool\n"
        "print(json.dumps({'before': before, 'pool': 'remoteproc.pool' in sys.modules,\n"
        "                  'mp': mp, 'name': pool.__module__}))")
    assert loaded["before"] == ["remoteproc.errors"]
    assert not loaded["mp"]
    assert loaded["pool"] and loaded["name"] == "remoteproc.pool"


def test_user_process_loads_only_the_spec_part_of_the_ssh_package():
    got = _fresh(
        "import json, sys\n"
        "from remoteproc import Executor, Pool, Queue, RemoteProcess\n"
        "print(json.dumps({'ssh': sorted(m for m in sys.modules if m.startswith('remoteproc.ssh')),\n"
        "                  'paramiko': 'paramiko' in sys.modules}))")
    assert got == {"ssh": ["remoteproc.ssh", "remoteproc.ssh.spec"], "paramiko": False}


def test_ssh_package_names_load_on_first_use():
    from remoteproc import ssh
    from remoteproc.ssh import connect, pool, target

    assert ssh.ConnectionPool is pool.ConnectionPool and ssh.resolve is target.resolve
    assert ssh.SSHConnection is connect.SSHConnection
    assert set(ssh.__all__) <= set(dir(ssh))
    for name in ssh.__all__:
        assert getattr(ssh, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Pool'"):
        ssh.Pool  # noqa: B018


def test_lazy_names_are_the_real_objects():
    import multiprocessing

    from remoteproc import process, queues, script

    assert remoteproc.RemoteProcess is process.RemoteProcess
    assert remoteproc.Queue is queues.Queue
    assert remoteproc.run is script.run
    assert remoteproc.Pipe == multiprocessing.Pipe
    assert set(remoteproc.__all__) <= set(dir(remoteproc))
    for name in remoteproc.__all__:
        assert getattr(remoteproc, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        remoteproc.Nope  # noqa: B018


def test_relay_imports_neither_multiprocessing_nor_importlib_metadata():
    got = _fresh(
        "import json, sys\n"
        "from remoteproc.relay import paramiko_shims, process\n"
        "paramiko_shims.preload()\n"
        "import paramiko\n"
        "print(json.dumps({'mp': 'multiprocessing' in sys.modules, 'md': 'importlib.metadata' in sys.modules,\n"
        "                  'version': paramiko.__version__, 'client': paramiko.Transport._CLIENT_ID}))")
    assert not got["mp"] and not got["md"]
    assert got["version"] == importlib.metadata.version("paramiko")
    assert got["client"] == "paramiko_" + got["version"]


def test_relay_waits_for_its_paramiko_import_before_it_exits():
    """A program that ends before its first connection stops the relay while its preload
    thread may still be inside cryptography's compiled code; a daemon thread there when the
    interpreter finalizes aborts the process (SIGABRT, "FATAL: exception not rethrown" on the
    user's stderr).  The relay's main returns only once the import is done."""
    code = ("import json, os, socket, threading, time\n"
            "from remoteproc.relay import paramiko_shims, process\n"
            "out = os.dup(1)     # (the relay points its own stdout at /dev/null once the user is gone)\n"
            "done = threading.Event()\n"
            "def slow_preload():\n"
            "    time.sleep(0.5)\n"
            "    done.set()\n"
            "paramiko_shims.preload = slow_preload\n"
            "mine, theirs = socket.socketpair()\n"
            "theirs.close()      # the user's process is gone at once\n"
            "process.main(mine.detach())\n"
            "os.write(out, json.dumps(done.is_set()).encode() + b'\\n')")
    assert _fresh(code) is True


@pytest.mark.parametrize("name", ["paramiko", "cryptography", "cloudpickle", "remoteproc"])
def test_dist_version_agrees_with_importlib_metadata(name):
    # remoteproc is installed editable here: no dist-info beside it, so this takes the long way
    assert paramiko_shims.dist_version(name) == importlib.metadata.version(name)


@pytest.mark.parametrize("layout", ["module", "package"])
def test_dist_version_of_a_module_or_package_beside_its_dist_info(tmp_path, monkeypatch, layout):
    name = "rp_solo_%s" % layout
    if layout == "module":
        (tmp_path / (name + ".py")).write_text("")
    else:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    info = tmp_path / (name + "-1.2.3.dist-info")
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 1.2.3\n" % name)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert paramiko_shims.dist_version(name) == "1.2.3" == importlib.metadata.version(name)


def test_dist_version_long_way_replaces_the_shim(monkeypatch):
    shim = types.ModuleType("importlib.metadata")
    shim.version = paramiko_shims.dist_version
    monkeypatch.setitem(sys.modules, "importlib.metadata", shim)
    monkeypatch.delattr(importlib, "metadata")
    assert paramiko_shims.dist_version("remoteproc") == remoteproc.__version__
    assert sys.modules["importlib.metadata"] is not shim


def test_agent_blob_is_compiled_code_without_docstrings():
    boot, modules = marshal.loads(zlib.decompress(bootstrap.agent_blob()))
    assert isinstance(boot, types.CodeType)
    assert {"remoteproc.agent.supervisor", "remoteproc.agent.mux", "cloudpickle"} <= set(modules)
    is_pkg, code, path = modules["remoteproc.agent.mux"]
    assert not is_pkg and isinstance(code, types.CodeType)
    assert path == "<remoteproc>/remoteproc/agent/mux.py" == code.co_filename
    namespace: dict = {"__name__": "shipped_frames"}
    exec(modules["remoteproc.agent.frames"][1], namespace)      # (frames imports only the stdlib)
    assert namespace["FrameReader"].__doc__ is None and namespace.get("__doc__") is None
    assert namespace["header"](namespace["DATA"], 7, 3) == frames.header(frames.DATA, 7, 3)
    # boot runs first (as ``boot``), and is a module too, for a remote child's spawn children
    booted: dict = {"__name__": "shipped_boot"}
    exec(modules["remoteproc.agent.boot"][1], booted)      # (calling _boot(m) would be a NameError)
    assert callable(booted["_boot"]) and isinstance(booted["_ShippedImporter"], type)


def test_stub_in_strict_mode_refuses_another_python_version_before_reading_the_blob():
    other = "%d,%d" % (sys.version_info[0], sys.version_info[1] + 1)
    stub = bootstrap._stub(10, 30).replace(",%d,%d)" % sys.version_info[:2], ",%s)" % other)
    proc = subprocess.run([sys.executable, "-c", stub, "strict", "python3"], input=b"x" * 10,
                          capture_output=True, timeout=30)
    assert proc.returncode == bootstrap.WRONG_VERSION
    assert b"python3 is cpython Python %d.%d" % sys.version_info[:2] in proc.stderr
    assert proc.stdout == b""


def test_the_stub_waits_for_the_agent_within_its_bound_and_the_agent_runs_on_past_it():
    """Found by an audit: a connection that went dark while the agent was on its way (sshd notices
    nothing, no keepalive runs before the agent does) left the stub reading stdin on the host for
    minutes, even after the link came back."""
    silent = subprocess.Popen([sys.executable, "-c", bootstrap._stub(10, 1), "any", "python3"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert silent.wait(20) == -signal.SIGALRM        # (its input open, and nothing on it)
        assert bootstrap.STUB_STARTED in silent.stdout.read()
    finally:
        if silent.poll() is None:
            silent.kill()
            silent.wait(10)
        for stream in (silent.stdin, silent.stdout, silent.stderr):
            stream.close()
    blob = bootstrap.agent_blob(bool(bootstrap.agent_env()))
    agent = subprocess.Popen([sys.executable, "-c", bootstrap._stub(len(blob), 1), "any", "python3"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, **bootstrap.agent_env()))
    try:
        agent.stdin.write(blob)
        agent.stdin.flush()
        time.sleep(2.5)
        assert agent.poll() is None, "the agent was ended by the stub's bound"
    finally:
        agent.stdin.close()         # (its channel's end: the agent exits)
        try:
            agent.wait(20)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
    assert agent.returncode == 0


def test_blob_failure_in_the_builder_thread_is_raised_where_the_blob_is_used(monkeypatch):
    from remoteproc.errors import BootstrapError

    def missing(package):
        raise BootstrapError("cannot find the %s package to ship" % package)

    bootstrap._build_blob.cache_clear()
    monkeypatch.setattr(bootstrap, "_package_sources", missing)
    try:
        bootstrap._prebuild(False)      # in start_agent's thread: nothing printed, nothing cached
        with pytest.raises(BootstrapError, match="cannot find the remoteproc.agent package"):
            bootstrap.agent_blob()
    finally:
        monkeypatch.undo()
        bootstrap._build_blob.cache_clear()
    assert marshal.loads(zlib.decompress(bootstrap.agent_blob()))[1]
