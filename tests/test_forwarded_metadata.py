"""importlib.metadata in a remote child, for distributions installed on the user's machine but
not on the host (an account with only the system python3): ``version()``, ``files()`` and
``distributions()`` answer as they do locally, before and after the import, whether the
distribution's modules travel from memory (pure Python) or through the host's package cache
(with data files); one the host's Python cannot run is not there, as its import says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from editable import install_editable
from remote_call import call as _call

pytestmark = pytest.mark.timeout(120)


def _distribution(site, name: str, version: str, files: dict[str, str], requires_python: str | None = None) -> str:
    """Install a distribution ``name`` (its package and dist-info) into the directory ``site``;
    returns the directory."""
    os.makedirs(site, exist_ok=True)
    info = os.path.join(site, "%s-%s.dist-info" % (name, version))
    os.makedirs(info)
    written = []
    for rel, text in files.items():
        path = os.path.join(site, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        written.append(rel)
    meta = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name.replace("_", "-"), version)
    if requires_python:
        meta += "Requires-Python: %s\n" % requires_python
    for rel, text in {"METADATA": meta, "top_level.txt": name + "\n"}.items():
        with open(os.path.join(info, rel), "w") as f:
            f.write(text)
        written.append(os.path.basename(info) + "/" + rel)
    with open(os.path.join(info, "RECORD"), "w") as f:
        f.write("".join("%s,,\n" % rel for rel in written + [os.path.basename(info) + "/RECORD"]))
    for root, dirs, names in os.walk(site):
        for n in dirs + names:
            os.chmod(os.path.join(root, n), 0o755 if n in dirs else 0o644)
    os.chmod(site, 0o755)
    return site


# -- targets (run remotely) ---------------------------------------------------------------------

def metadata_of(conn, dist, module):
    import importlib
    import importlib.metadata as md

    out = {"before": md.version(dist)}
    mod = importlib.import_module(module)
    out["value"] = getattr(mod, "VALUE", None)
    out["file"] = mod.__file__
    out["after"] = md.version(dist)
    out["files"] = sorted(str(f) for f in md.files(dist) or ())
    out["listed"] = sorted(d.version for d in md.distributions() if (d.metadata["Name"] or "") == dist)
    try:
        md.version(dist + "-not-installed-anywhere")
    except md.PackageNotFoundError:
        out["missing"] = "PackageNotFoundError"
    for odd in ("../etc", "x" * 300):
        try:
            md.version(odd)
            out[odd[:6]] = "found"
        except md.PackageNotFoundError:
            out[odd[:6]] = "PackageNotFoundError"
    conn.send(out)


def metadata_and_import_of(conn, dist, module):
    import importlib
    import importlib.metadata as md

    out = {}
    try:
        out["version"] = md.version(dist)
    except md.PackageNotFoundError:
        out["version"] = "PackageNotFoundError"
    try:
        importlib.import_module(module)
        out["import"] = "imported"
    except ImportError as exc:
        out["import"] = str(exc)
    conn.send(out)


# -- the tests ----------------------------------------------------------------------------------

def test_a_pure_distribution_forwarded_from_memory_has_its_metadata(plain_user_host, plain_user_options,
                                                                     tmp_path, monkeypatch):
    name = "mdpure_" + uuid.uuid4().hex[:8]
    site = _distribution(str(tmp_path / "site"), name, "1.2.3", {name + "/__init__.py": "VALUE = 7\n"})
    monkeypatch.syspath_prepend(site)
    dist = name.replace("_", "-")
    got = _call(plain_user_host, plain_user_options, metadata_of, dist, name)
    assert got["before"] == got["after"] == "1.2.3"
    assert got["value"] == 7
    assert got["listed"] == ["1.2.3"]       # distributions() lists it, once
    assert name + "/__init__.py" in got["files"]
    assert got["missing"] == got["../etc"] == got["xxxxxx"] == "PackageNotFoundError"


def test_a_distribution_with_data_files_has_its_metadata_before_its_import(plain_user_host, own_cache,
                                                                          tmp_path, monkeypatch):
    """It goes through the host's package cache: version() before any import fetches it there,
    and the import then finds its files beside it."""
    options, cache_root = own_cache
    name = "mddata_" + uuid.uuid4().hex[:8]
    site = _distribution(str(tmp_path / "site"), name, "2.0", {
        name + "/__init__.py": "import os\nVALUE = open(os.path.join(os.path.dirname(__file__), 'v.txt')).read()\n",
        name + "/v.txt": "from a data file"})
    monkeypatch.syspath_prepend(site)
    dist = name.replace("_", "-")
    got = _call(plain_user_host, options, metadata_of, dist, name)
    assert got["before"] == got["after"] == "2.0"
    assert got["value"] == "from a data file"
    assert got["file"].startswith(cache_root + "/"), got["file"]
    assert name + "/v.txt" in got["files"]
    assert got["listed"] == ["2.0"]


def test_a_project_installed_in_editable_mode_has_its_metadata(plain_user_host, plain_user_options, tmp_path,
                                                                monkeypatch):
    """``pip install -e``: the dist-info is in site-packages, the package in the project's own
    directory, found through setuptools' finder.  version() answers there as here (a package that
    sets ``__version__`` from its metadata at import time needs it)."""
    name = "mdedit_" + uuid.uuid4().hex[:8]
    site = _distribution(str(tmp_path / "site"), name, "0.4.dev0", {})
    root = tmp_path / "proj" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("import importlib.metadata\nVALUE = importlib.metadata.version(%r)\n"
                                      % name.replace("_", "-"))
    monkeypatch.syspath_prepend(site)
    install_editable(monkeypatch, name, root)
    got = _call(plain_user_host, plain_user_options, metadata_of, name.replace("_", "-"), name)
    assert got["before"] == got["after"] == got["value"] == "0.4.dev0"
    assert got["listed"] == ["0.4.dev0"]


@pytest.mark.parametrize("data", [False, True])
def test_a_project_installed_in_editable_mode_through_a_pth_file_has_its_metadata(
        plain_user_host, plain_user_options, tmp_path, monkeypatch, data):
    """``pip install -e`` of a ``src/`` layout (setuptools), or of any hatchling, flit or pdm project:
    the installer puts the project's directory on sys.path with a ``.pth`` file, and the dist-info in
    site-packages says so in its ``direct_url.json`` (PEP 610).  The relay took the package, which no
    dist-info beside it owns, for another distribution's: ``version()`` there raised
    PackageNotFoundError, so a package that sets ``__version__`` from its metadata failed to import.
    Fixed in distributions.installed_editable."""
    name = "mdsrc_" + uuid.uuid4().hex[:8]
    site = _distribution(str(tmp_path / "site"), name, "1.5", {})
    info = os.path.join(site, "%s-1.5.dist-info" % name)
    project = tmp_path / "proj"
    with open(os.path.join(info, "direct_url.json"), "w") as f:
        f.write('{"dir_info": {"editable": true}, "url": "%s"}' % project.as_uri())
    root = project / "src" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("import importlib.metadata\nVALUE = importlib.metadata.version(%r)\n"
                                      % name.replace("_", "-"))
    if data:        # (through the host's package cache)
        (root / "table.csv").write_text("a,b\n")
    monkeypatch.syspath_prepend(site)
    monkeypatch.syspath_prepend(str(project / "src"))
    got = _call(plain_user_host, plain_user_options, metadata_of, name.replace("_", "-"), name)
    assert got["before"] == got["after"] == got["value"] == "1.5"
    assert got["listed"] == ["1.5"]
    assert ("/.cache/remoteproc/" in got["file"]) == data, got["file"]


def test_a_distribution_the_hosts_python_cannot_run_is_not_there_and_its_import_says_why(
        plain_user_host, plain_user_options, tmp_path, monkeypatch):
    """Its Requires-Python excludes the host's Python (but not ours): no metadata, and the
    import's error names the distribution, its Requires-Python and the host's Python."""
    host_version = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                  capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert host_version != "%d.%d.%d" % sys.version_info[:3], "this test needs the host's Python to differ from ours"
    name = "mdother_" + uuid.uuid4().hex[:8]
    site = _distribution(str(tmp_path / "site"), name, "1.0", {name + "/__init__.py": "VALUE = 1\n"},
                         requires_python="!=" + host_version)
    monkeypatch.syspath_prepend(site)
    got = _call(plain_user_host, plain_user_options, metadata_and_import_of, name.replace("_", "-"), name)
    assert got["version"] == "PackageNotFoundError"
    assert "!=" + host_version in got["import"] and host_version in got["import"] and "Fix:" in got["import"]
    assert plain_user_host in got["import"]
