"""Discovery on the host of what the user has installed: plugin registries (``entry_points(group=)``,
``distributions()`` with no name), legacy ``.egg-info`` metadata, and ``pkgutil.iter_modules`` of
the user's packages and of namespace packages the host has a part of.  Each user program runs
locally and in a remote child (a fresh connection where it matters); the host's answer must be
the local one, except where the host has something of its own, which wins, as for modules.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import uuid

import pytest
from metadata_targets import described, plugins, submodules
from remote_call import call as _call
from test_host_pythons import host_pythons  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(240)


def _write(root: str, files: dict[str, str]) -> str:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    for dirpath, _dirs, names in os.walk(root):       # (the host's own account reads a host-side tree)
        os.chmod(dirpath, 0o755)
        for n in names:
            os.chmod(os.path.join(dirpath, n), 0o644)
    return root


def dist_info(site: str, name: str, version: str, modules: dict[str, str], entry_points: str = "",
              summary: str = "") -> None:
    """A wheel-installed distribution: its modules and its ``*.dist-info`` in ``site``."""
    info = "%s-%s.dist-info" % (name, version)
    meta = "Metadata-Version: 2.1\nName: %s\nVersion: %s\nSummary: %s\nRequires-Dist: six\n\nLong text.\n" % (
        name.replace("_", "-"), version, summary or name)
    files = dict(modules)
    files[info + "/METADATA"] = meta
    files[info + "/top_level.txt"] = name + "\n"
    files[info + "/WHEEL"] = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if entry_points:
        files[info + "/entry_points.txt"] = entry_points
    files[info + "/RECORD"] = "".join("%s,,\n" % rel for rel in sorted(files) + [info + "/RECORD"])
    _write(site, files)


def local(target, *args):
    """What ``target`` finds locally, in a fresh process of this sys.path (as the remote child is
    one): not in the test worker, whose importlib.metadata state earlier test files have touched."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=target, args=(theirs, *args))
    p.start()
    theirs.close()
    try:
        if not ours.poll(60):
            raise AssertionError("the local process gave no answer in 60 s")
        return ours.recv()
    finally:
        p.join(10)


@pytest.fixture
def host_dir():
    """A directory of the host's own (on its PYTHONPATH through python=), readable by its account."""
    d = tempfile.mkdtemp(prefix="rp-hostside-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _python(host_pythons, ver: str) -> str:    # noqa: F811 - (the fixture, passed on)
    return host_pythons.get(ver)[0] if ver != "same" else "python3"


# -- entry points and distributions() ---------------------------------------------------------------

@pytest.mark.parametrize("ver", ["same", "3.8", "3.13"])
def test_a_plugin_registry_finds_the_users_plugins_in_a_fresh_child(
        host_pythons, plain_user_host, plain_user_options, tmp_path, monkeypatch, host_dir, fresh, ver):  # noqa: F811
    """``entry_points(group=...)`` in a remote child found only the distributions the connection had
    been asked for by name: in a fresh child, none of the user's plugins.  Now it finds them all, as
    locally, loads them (forwarded), and a distribution the host has of its own (here of another
    version, with another plugin) is the host's, listed once."""
    tag = uuid.uuid4().hex[:8]
    group, prefix = "rp_plugins_" + tag, "rpplug_" + tag
    a, b, both = prefix + "_a", prefix + "_b", prefix + "_both"
    site = str(tmp_path / "site")
    dist_info(site, a, "1.0", {a + "/__init__.py": "", a + "/plugin.py": "def hello():\n    return 'a'\n"},
              "[%s]\nalpha = %s.plugin:hello\n\n[console_scripts]\nrp-a = %s.plugin:hello\n" % (group, a, a))
    dist_info(site, b, "2.0", {b + ".py": "VALUE = 'b'\n"}, "[%s]\nbeta = %s:VALUE\n" % (group, b))
    dist_info(site, both, "2.0", {both + ".py": "WHO = 'user'\n"}, "[%s]\nuser = %s:WHO\n" % (group, both))
    dist_info(host_dir, both, "1.0", {both + ".py": "WHO = 'host'\n"}, "[%s]\nhost = %s:WHO\n" % (group, both))
    monkeypatch.syspath_prepend(site)
    here = local(plugins, group, prefix)
    assert [p[:2] for p in here["plugins"]] == [("alpha", a + ".plugin:hello"), ("beta", b + ":VALUE"),
                                                ("user", both + ":WHO")]
    assert [p[2] for p in here["plugins"][1:]] == ["'b'", "'user'"]
    options = dict(plain_user_options, python="env PYTHONPATH=%s %s" % (host_dir, _python(host_pythons, ver)))
    got = _call(plain_user_host, options, plugins, group, prefix)
    assert [p[:2] for p in got["plugins"]] == [("alpha", a + ".plugin:hello"), ("beta", b + ":VALUE"),
                                               ("host", both + ":WHO")]
    assert got["plugins"][0][2].startswith("<function hello at") and got["plugins"][1][2] == "'b'"
    assert got["plugins"][2][2] == "'host'"
    assert got["listed"] == [(a, "1.0"), (b, "2.0"), (both, "1.0")]      # (each once: the host's wins)
    assert here["listed"] == [(a, "1.0"), (b, "2.0"), (both, "2.0")]


def test_a_distribution_installed_meanwhile_is_listed_by_the_next_process(
        plain_user_host, plain_user_options, tmp_path, monkeypatch, fresh):
    """The listing is kept per connection, and looked at again when the user's sys.path (or a
    directory on it) changed, as names found nowhere are: ``pip install`` between two processes."""
    tag = uuid.uuid4().hex[:8]
    group, prefix = "rp_plugins_" + tag, "rpplug_" + tag
    site = str(tmp_path / "site")
    first, later = prefix + "_first", prefix + "_later"
    dist_info(site, first, "1.0", {first + ".py": "X = 1\n"}, "[%s]\none = %s:X\n" % (group, first))
    monkeypatch.syspath_prepend(site)
    got = _call(plain_user_host, plain_user_options, plugins, group, prefix)
    assert [p[:2] for p in got["plugins"]] == [("one", first + ":X")]
    again = _call(plain_user_host, plain_user_options, plugins, group, prefix)
    assert again == got
    dist_info(site, later, "1.0", {later + ".py": "Y = 2\n"}, "[%s]\ntwo = %s:Y\n" % (group, later))
    got = _call(plain_user_host, plain_user_options, plugins, group, prefix)
    assert got["plugins"] == [("one", first + ":X", "1"), ("two", later + ":Y", "2")]
    assert got["listed"] == [(first, "1.0"), (later, "1.0")]


def test_the_relays_listing_leaves_out_what_the_host_could_not_load(tmp_path):
    """(No host: the relay's side.)  As a lookup by name: no distribution whose Requires-Python
    excludes the host's Python, nor one that needs files there that the host cannot take (its
    wheel's tags; any, with the cache off); an egg-info file is listed under its own name."""
    from remoteproc import distributions

    site = str(tmp_path / "site")
    dist_info(site, "rp_pure", "1.0", {"rp_pure.py": ""}, "[g]\nx = rp_pure:f\n")
    dist_info(site, "rp_new", "1.0", {"rp_new.py": ""})
    meta = os.path.join(site, "rp_new-1.0.dist-info", "METADATA")
    with open(meta) as f:
        text = f.read()
    with open(meta, "w") as f:
        f.write(text.replace("Requires-Dist:", "Requires-Python: >=3.9\nRequires-Dist:"))
    dist_info(site, "rp_data", "1.0", {"rp_data/__init__.py": "", "rp_data/table.csv": "a,b\n"})
    # (an extension module alone: a package with Python code beside its extension goes from memory
    # without it, and is listed: tests/test_forwarding_audit.py)
    dist_info(site, "rp_ext", "1.0", {"rp_ext.cpython-399-x86_64-linux-gnu.so": ""})
    with open(os.path.join(site, "rp_ext-1.0.dist-info", "WHEEL"), "w") as f:
        f.write("Wheel-Version: 1.0\nTag: cp399-cp399-manylinux_2_17_x86_64\n")
    _write(site, {"Rp.Egg-2.0-py3.8.egg-info": "Metadata-Version: 1.1\nName: Rp.Egg\nVersion: 2.0\n"})
    abi = dict(distributions.local_abi(), version=[3, 8], python=[3, 8, 10])

    def names(abi, cache_on):
        return [(d["key"], d["name"], d["version"]) for d in distributions.listing([site], abi, cache_on)]

    assert names(None, True) == [("rp_egg", "Rp.Egg", "2.0"), ("rp_data", "rp-data", "1.0"),
                                 ("rp_ext", "rp-ext", "1.0"), ("rp_new", "rp-new", "1.0"),
                                 ("rp_pure", "rp-pure", "1.0")]
    assert names(abi, True) == [("rp_egg", "Rp.Egg", "2.0"), ("rp_data", "rp-data", "1.0"),
                                ("rp_pure", "rp-pure", "1.0")]
    assert names(abi, False) == [("rp_egg", "Rp.Egg", "2.0"), ("rp_pure", "rp-pure", "1.0")]
    pure = distributions.listing([site], abi, True)[-1]
    assert pure["files"] == {"entry_points.txt": "[g]\nx = rp_pure:f\n", "top_level.txt": "rp_pure\n"}
    assert distributions.find_info("rp-egg", [site]) == (site, "Rp.Egg-2.0-py3.8.egg-info")


# -- .egg-info ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ver", ["same", "3.8"])
def test_egg_info_metadata_is_served_as_importlib_metadata_reads_it_locally(
        host_pythons, plain_user_host, plain_user_options, tmp_path, monkeypatch, ver):  # noqa: F811
    """``setup.py develop`` leaves ``NAME.egg-info/`` (PKG-INFO, entry_points.txt, SOURCES.txt...)
    beside the package in the project's directory, which is on sys.path; a distro's package may
    install ``NAME-VERSION.egg-info`` as a single file.  importlib.metadata reads both; on the host
    they were PackageNotFoundError (only ``*.dist-info`` was looked at)."""
    tag = uuid.uuid4().hex[:8]
    group = "rp_eggs_" + tag
    dev, flat = "rpeggdev_" + tag, "rpeggflat_" + tag
    project = str(tmp_path / "project")
    _write(project, {
        dev + "/__init__.py": "WHO = 'dev'\n",
        dev + ".egg-info/PKG-INFO": "Metadata-Version: 2.1\nName: %s\nVersion: 0.3.dev0\nSummary: in develop "
                                    "mode\n" % dev.replace("_", "-"),
        dev + ".egg-info/entry_points.txt": "[%s]\ndev = %s:WHO\n" % (group, dev),
        dev + ".egg-info/requires.txt": "six>=1\n\n[extra]\nrequests\n",
        dev + ".egg-info/top_level.txt": dev + "\n",
        dev + ".egg-info/SOURCES.txt": "setup.py\n%s/__init__.py\n%s.egg-info/PKG-INFO\n" % (dev, dev),
    })
    site = str(tmp_path / "dist-packages")
    _write(site, {flat + ".py": "WHO = 'flat'\n",
                  flat + "-1.4.egg-info": "Metadata-Version: 1.1\nName: %s\nVersion: 1.4\nSummary: a distro's\n"
                                          % flat})
    monkeypatch.syspath_prepend(site)
    monkeypatch.syspath_prepend(project)
    args = ([dev.replace("_", "-"), flat, dev + "-not-there"], group)
    here = local(described, *args)
    assert here[dev.replace("_", "-")]["version"] == "0.3.dev0" and here[flat]["version"] == "1.4"
    assert here["group"] == [("dev", dev + ":WHO")]
    options = dict(plain_user_options, python=_python(host_pythons, ver))
    got = _call(plain_user_host, options, described, *args)
    assert got == here


# -- pkgutil ------------------------------------------------------------------------------------------

PACKAGE = {
    "__init__.py": "WHO = 'pkg'\n",
    "one.py": "WHO = 'one'\n",
    "sub/__init__.py": "WHO = 'sub'\n",
    "sub/two.py": "WHO = 'two'\n",
    "data/readme.txt": "not a module\n",
    "nsdir/three.py": "WHO = 'three'\n",     # (no __init__.py: pkgutil lists no such directory)
}


@pytest.mark.parametrize("ver", ["same", "3.8"])
def test_iter_modules_of_a_forwarded_package_lists_what_it_lists_locally(
        host_pythons, plain_user_host, plain_user_options, tmp_path, monkeypatch, ver):  # noqa: F811
    """(It did already: the relay sends each package's list of modules along.)"""
    name = "rppkg_" + uuid.uuid4().hex[:8]
    site = str(tmp_path / "site")
    _write(site, {"%s/%s" % (name, rel): text for rel, text in PACKAGE.items() if not rel.startswith("data/")})
    monkeypatch.syspath_prepend(site)
    here = local(submodules, name)
    assert here["iter"] == [("one", False), ("sub", True)]
    assert here["walk"] == [name + ".one", name + ".sub", name + ".sub.two"]
    assert _call(plain_user_host, dict(plain_user_options, python=_python(host_pythons, ver)), submodules,
                 name) == here


@pytest.mark.parametrize("ver", ["same", "3.8", "3.13"])
@pytest.mark.parametrize("on_host", [False, True])
def test_iter_modules_of_a_namespace_package_lists_the_users_modules(
        host_pythons, plain_user_host, plain_user_options, tmp_path, monkeypatch, host_dir, on_host, ver):  # noqa: F811
    """A namespace package (no ``__init__.py``) the user's plugins live in, as the packaging guide's
    plugin discovery does (``pkgutil.iter_modules(ns.__path__, ns.__name__ + ".")``).  With none on the
    host, its ``__path__`` there was empty: nothing listed.  With a part on the host (its own
    module in it), only the host's part was listed.  Now the user's modules are listed (and
    imported from the user's machine) beside the host's."""
    ns = "rpns_" + uuid.uuid4().hex[:8]
    site = str(tmp_path / "site")
    _write(site, {ns + "/mine.py": "WHO = 'mine'\n", ns + "/plug/__init__.py": "WHO = 'plug'\n",
                  ns + "/plug/deep.py": "WHO = 'deep'\n"})
    other = str(tmp_path / "other")          # (a second part of the user's, in another sys.path entry)
    _write(other, {ns + "/second.py": "WHO = 'second'\n"})
    monkeypatch.syspath_prepend(site)
    monkeypatch.syspath_prepend(other)
    here = local(submodules, ns)
    assert here["iter"] == [("mine", False), ("plug", True), ("second", False)]
    python = _python(host_pythons, ver)
    if on_host:
        _write(host_dir, {ns + "/theirs.py": "WHO = 'theirs'\n"})
        python = "env PYTHONPATH=%s %s" % (host_dir, python)
    got = _call(plain_user_host, dict(plain_user_options, python=python), submodules, ns)
    if on_host:
        for key, value in {"iter": ("theirs", False), "prefixed": ns + ".theirs", "walk": ns + ".theirs",
                           "loaded": (ns + ".theirs", "theirs")}.items():
            here[key] = sorted(here[key] + [value])
    assert got == here
