"""The pytest plugin: a throwaway user project, run with plain pytest, gets a working remoteproc_host."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_TESTS = '''
import os
import sys
import remoteproc
from remoteproc import Pool, RemoteProcess


def test_a_remote_process(remoteproc_host):
    p = RemoteProcess(remoteproc_host, target=sys.exit, args=(7,))
    p.start()
    p.join(60)
    assert p.exitcode == 7


def test_a_pool_with_a_lambda(remoteproc_host):
    with Pool(remoteproc_host, processes_per_host=2) as pool:
        assert pool.map(lambda x: x * 3, range(4)) == [0, 3, 6, 9]
    with remoteproc.Executor([remoteproc_host], processes_per_host=1) as ex:
        assert ex.submit(pow, 2, 5).result(60) == 32


def test_the_host_is_the_expected_kind(remoteproc_host):
    assert isinstance(remoteproc_host, str) and remoteproc_host.spec == str(remoteproc_host)
    assert (remoteproc_host.server is None) == (os.environ.get("EXPECT_REAL_HOST") == "1")
'''

UNUSED = '''
import sys


def test_nothing_remote_was_loaded():
    assert "paramiko" not in sys.modules
    assert "remoteproc.testing" not in sys.modules
    assert "remoteproc.pytest_plugin" in sys.modules
'''


def _pytest(project, *args, home=None, env_extra=None):
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONPATH"] = ROOT
    # the plugin by module name, not by the installed entry point (whose metadata may be another tree's)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if home is not None:
        env["HOME"] = home
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "remoteproc.pytest_plugin", "-p", "no:cacheprovider",
                           "-q", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "test_mine.py").write_text(textwrap.dedent(USER_TESTS))
    (tmp_path / "test_unused.py").write_text(textwrap.dedent(UNUSED))
    return tmp_path


@pytest.mark.loopback_only
@pytest.mark.timeout(600)
def test_a_user_project_gets_a_private_loopback_host(project):
    run = _pytest(project, "test_mine.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


JOBLIB_TESTS = '''
import joblib
import remoteproc.joblib

remoteproc.joblib.register()


def test_joblib_on_the_host(remoteproc_host):
    with joblib.parallel_config(backend="remoteproc", hosts=[remoteproc_host]):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_last():
    assert False, "the last test's report"
'''


@pytest.mark.loopback_only
@pytest.mark.timeout(600)
def test_the_session_end_does_not_report_the_joblib_workers_lost(tmp_path):
    """The joblib backend keeps its workers between calls: the fixture stopped the server under
    them, and the last test's report (every test's, with -rA) said "connection lost ... the host's
    sshd ended it" and "pool workers lost": a network failure that never happened."""
    pytest.importorskip("joblib")
    (tmp_path / "test_jl.py").write_text(JOBLIB_TESTS)
    run = _pytest(tmp_path, "-rA", "-o", "log_cli=true", "-o", "log_cli_level=WARNING")
    assert "1 failed, 1 passed" in run.stdout, run.stdout + run.stderr
    assert "the last test's report" in run.stdout, run.stdout
    assert "connection lost" not in run.stdout + run.stderr and "workers lost" not in run.stdout, run.stdout


def test_a_session_that_does_not_use_the_fixture_loads_no_ssh(project):
    run = _pytest(project, "test_unused.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


@pytest.mark.timeout(600)
def test_remoteproc_host_option_uses_a_real_host_through_the_users_ssh_config(project, sshd, tmp_path_factory):
    """HOME holds an ~/.ssh/config whose alias reaches the suite's sshd: the option takes that alias."""
    from remoteproc.testing import current_user

    home = tmp_path_factory.mktemp("home")
    os.makedirs(home / ".ssh")
    with open(sshd.ssh_config) as f:
        (home / ".ssh" / "config").write_text(f.read())
    run = _pytest(project, "test_mine.py", "--remoteproc-host", "remoteproc-" + current_user(), home=str(home),
                  env_extra={"EXPECT_REAL_HOST": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


def test_pyproject_declares_the_entry_point():
    try:
        import tomllib
    except ImportError:             # Python < 3.11
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    assert meta["project"]["entry-points"]["pytest11"] == {"remoteproc.pytest_plugin": "remoteproc.pytest_plugin"}
    import remoteproc.pytest_plugin as plugin

    assert callable(plugin.pytest_addoption) and hasattr(plugin, "remoteproc_host")


def test_a_remote_host_spec_carries_its_options():
    from remoteproc import RemoteProcess
    from remoteproc.pytest_plugin import RemoteHost

    h = RemoteHost("alice@node1:2222", {"key_filename": "/k", "connect_timeout": 5})
    p = RemoteProcess(h, target=print, connect_timeout=9)
    assert type(p.host) is str and p.host == "alice@node1:2222"
    assert p._ssh_options["key_filename"] == "/k" and p._ssh_options["connect_timeout"] == 9
    import pickle

    assert type(pickle.loads(pickle.dumps(h))) is str


def test_dash_p_with_the_package_installed_is_not_a_second_registration(project):
    """The entry point is named as the module: ``-p remoteproc.pytest_plugin`` in a project's
    addopts (for a checkout on PYTHONPATH) keeps working once the package is installed. (It
    stopped pytest with "Plugin already registered under a different name" when the entry
    point was named ``remoteproc``.)"""
    from importlib import metadata

    names = [ep.name for ep in metadata.entry_points(group="pytest11") if ep.value == "remoteproc.pytest_plugin"]
    if names != ["remoteproc.pytest_plugin"]:
        pytest.fail("the installed remoteproc's metadata is not this tree's (pip install -e .): %s" % names)
    env = dict(os.environ, PYTHONPATH=ROOT)
    for name in ("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "remoteproc.pytest_plugin", "-p", "no:cacheprovider",
                          "-q", "test_unused.py"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
