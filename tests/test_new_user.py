"""What a new user meets first: the package as pip installs it, and the first mistakes.

Each mistake must end as local ``multiprocessing`` ends it (the same exception, or a documented
subclass of it and of ``RemoteProcessError``), naming the host and the fix, on every host alike.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

pytestmark = pytest.mark.timeout(180)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the package as pip builds it -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An sdist of the checkout (its tracked files, as a fresh clone has them), and a wheel built from
    that sdist, as pip builds one from PyPI's."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("needs a git checkout")
    work = tmp_path_factory.mktemp("build")
    tree = work / "tree"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(os.path.dirname(tree / name), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), tree / name)
    build = ("import sys; from setuptools import build_meta as b; "
             "print(getattr(b, sys.argv[1])(sys.argv[2]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = work / "dist"
    done = subprocess.run([sys.executable, "-c", build, "build_sdist", str(out)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    sdist = out / done.stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked")
    top = next((work / "unpacked").iterdir())
    # (pip's own isolated build, as ``pip install remoteproc`` makes it: it fetches setuptools)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(top)],
                          env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "No matching distribution" in done.stderr:
        pytest.skip("pip cannot fetch setuptools for an isolated build: %s" % done.stderr[-500:])
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next(out.glob("remoteproc-*.whl"))
    return {"sdist": str(sdist), "wheel": str(wheel), "files": "\0".join(files)}


def test_the_sdist_holds_the_docs_the_readme_links_and_the_tests(built):
    """The sdist had only the package, README.md and the build files: every docs/ link of the README
    (PyPI's page of it included) led nowhere, and a packager could not run the tests."""
    with tarfile.open(built["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    with open(os.path.join(REPO, "README.md")) as f:
        linked = {m.split("#")[0] for m in re.findall(r"\]\(([^)#:]+(?:#[^)]*)?)\)", f.read())}
    assert linked and "docs/api.md" in linked
    assert sorted(linked - names) == []
    tracked = set(filter(None, built["files"].split("\0")))
    for part in ("docs/", "tests/", "scripts/"):
        wanted = {n for n in tracked if n.startswith(part)}
        assert wanted and sorted(wanted - names) == [], part
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_wheel_built_from_the_sdist_holds_every_file_of_the_package(built):
    """Everything the library reads from its own directory at run time (the agent's sources, shipped
    to hosts; py.typed) and the entry points of the console script and the pytest plugin."""
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = whl.read(info).decode()
    package = {n for n in built["files"].split("\0") if n.startswith("remoteproc/")}
    assert "remoteproc/agent/boot.py" in package and "remoteproc/py.typed" in package
    assert sorted(package - names) == []
    assert "remoteproc = remoteproc.cli:main" in entry_points
    assert re.search(r"\[pytest11\]\s*\nremoteproc.pytest_plugin = remoteproc.pytest_plugin", entry_points)
