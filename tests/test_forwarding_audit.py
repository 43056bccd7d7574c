"""Module and package forwarding as a user meets it: findings of an audit, each pinned by a test.

The hosts are the suite's loopback sshd's ``rpuser`` account (nothing of the user's installed
there), over both transports.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import logging
import os
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


# -- the fix an unsendable package's error names, for a package no index has ----------------------

def _site_with(tmp_path, direct_url):
    """A site-packages holding distribution ``fast`` 1.0 (a C extension, wheel tags for CPython
    3.11), with the ``direct_url.json`` pip writes when it installs from a path or a VCS."""
    import json

    site = tmp_path / "site"
    (site / "fast").mkdir(parents=True)
    info = site / "fast-1.0.dist-info"
    info.mkdir()
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: cp311-cp311-linux_x86_64\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    from remoteproc import distributions

    return distributions.Distribution(top="fast", name="fast", version="1.0", site=str(site),
                                      files=[("fast/_x.cpython-311-x86_64-linux-gnu.so", 0o755, 10, 0)],
                                      tags=["cp311-cp311-linux_x86_64"], info=info.name)


OTHER_HOST = {"implementation": "cpython", "version": [3, 12], "python": [3, 12, 1], "machine": "x86_64",
              "system": "linux", "libc": ["glibc", "2.36"],
              "suffixes": [".cpython-312-x86_64-linux-gnu.so", ".abi3.so", ".so"]}


def _refusal(dist, abi=OTHER_HOST):
    from remoteproc import distributions

    with pytest.raises(distributions.Unsendable) as info:
        distributions.check(dist, abi, "rp@h", "/usr/bin/python3.12")
    return str(info.value)


def test_a_distribution_installed_from_a_local_directory_is_not_sent_to_an_index(tmp_path):
    """A package the user built and installed from its own source directory (``pip install
    ./fast``) was refused with the fix ``pip install --user fast==1.0`` on the host: no index has
    it, or one has another project by that name, which the fix then installed.  The fix names
    the directory it came from."""
    said = _refusal(_site_with(tmp_path, {"url": "file:///home/me/src/fast", "dir_info": {}}))
    assert "`/usr/bin/python3.12 -m pip install --user ./fast` beside a copy of /home/me/src/fast there" in said
    assert "not from a package index" in said and "fast==1.0" not in said
    # an sdist of this machine: its copy, by name; a wheel built for this Python: its source
    said = _refusal(_site_with(tmp_path / "a", {"url": "file:///tmp/fast-1.0.tar.gz", "archive_info": {}}))
    assert "pip install --user ./fast-1.0.tar.gz` beside a copy of /tmp/fast-1.0.tar.gz there" in said
    said = _refusal(_site_with(tmp_path / "b", {"url": "file:///tmp/dist/fast-1.0-cp311-cp311-linux_x86_64.whl",
                                                "archive_info": {}}))
    assert "pip install --user .` in a copy of its project there" in said
    assert "installed from /tmp/dist/fast-1.0-cp311-cp311-linux_x86_64.whl" in said and "==1.0" not in said


def test_a_distribution_installed_from_git_is_named_by_its_commit(tmp_path):
    said = _refusal(_site_with(tmp_path, {"url": "https://example.org/me/fast.git",
                                          "vcs_info": {"vcs": "git", "commit_id": "0123abcd"}}))
    assert "pip install --user 'git+https://example.org/me/fast.git@0123abcd'`" in said
    # from an index (no direct_url.json): by name and version, as before
    said = _refusal(_site_with(tmp_path / "a", None))
    assert "pip install --user fast==1.0`" in said


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_package_built_in_place_is_not_looked_up_on_an_index(plain_user_host, plain_user_options, tmp_path,
                                                               monkeypatch, transport, capfd):
    """A package of the user's own with a C extension built in place (``setup.py build_ext
    --inplace``), refused (here: the cache is off) was told ``pip install --user NAME`` on the
    host, which installs whatever an index has under that name, if anything."""
    import importlib.machinery

    from remoteproc import RemoteProcess

    name = "rpinplace_" + uuid.uuid4().hex[:8]
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("def job():\n    from . import fast  # noqa: F401\n")
    (root / ("fast" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"\x7fELF not really")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        job = importlib.import_module(name).job
        p = RemoteProcess(plain_user_host, target=job, **dict(plain_user_options, cache_size=0, transport=transport))
        p.start()
        p.join(60)
    finally:
        _forget(name)
    err = capfd.readouterr().err
    assert p.exitcode == 1, err
    assert "ImportError" in err and "cache_size=0" in err
    assert "pip install --user %s" % name not in err and "pip install %s" % name not in err, err
    assert "pip install --user .` in a copy of its project there" in err or "pip install .` in a copy of its " \
        "project there" in err, err
    assert "built in place in %s" % tmp_path in err, err


# -- a package whose compiled modules the host cannot load, but which does without them ----------

def _wheel_site(site, name, files, tag):
    """Distribution ``name`` 1.0 installed in ``site`` from a wheel tagged ``tag``."""
    info = "%s-1.0.dist-info" % name
    files = dict(files)
    files[info + "/METADATA"] = "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name
    files[info + "/WHEEL"] = "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: %s\n" % tag
    files[info + "/top_level.txt"] = name + "\n"
    files[info + "/entry_points.txt"] = "[%s.plugins]\nslow = %s._slow:add\n" % (name, name)
    files[info + "/RECORD"] = "".join("%s,,\n" % rel for rel in sorted(files) + [info + "/RECORD"])
    for rel, data in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())


FALLBACK_INIT = '''
try:
    from ._speed import add
    FAST, WHY = True, ""
except ImportError as exc:      # (as markupsafe, PyYAML, msgpack do)
    from ._slow import add
    FAST, WHY = False, str(exc)
'''


def fallback_job(conn, name):
    import importlib
    import importlib.metadata

    out = {}
    try:
        pkg = importlib.import_module(name)
        twin = importlib.import_module(name + ".twin")
        out["ok"] = (pkg.add(2, 3), pkg.FAST, pkg.WHY, twin.KIND, importlib.metadata.version(name),
                     [ep.name for ep in importlib.metadata.entry_points().select(group=name + ".plugins")])
    except ImportError as exc:
        out["ImportError"] = str(exc)
    conn.send(out)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_package_that_falls_back_to_python_runs_where_its_extension_cannot_load(plain_user_host,
                                                                                 plain_user_options, tmp_path,
                                                                                 monkeypatch, transport, fresh,
                                                                                 caplog):
    """markupsafe (so jinja2 and Flask), PyYAML, msgpack, charset_normalizer (compiled by mypyc,
    each .py beside its .so) were refused whole on a host whose Python cannot load their
    wheel's extensions (another Python version, an older glibc), though each runs without them:
    ``import jinja2`` failed on a 3.12 host.  The package now goes from memory, its extension's
    import raising the refusal (which the package's fallback catches)."""
    ext = importlib.machinery.EXTENSION_SUFFIXES[0]
    name = "rpfb_" + uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    _wheel_site(site, name, {
        name + "/__init__.py": FALLBACK_INIT,
        name + "/_slow.py": "def add(a, b):\n    return a + b\n",
        name + "/_speed" + ext: b"\x7fELF never loaded",
        name + "/_speed.c": "/* its source */\n",
        name + "/twin.py": "KIND = 'python'\n",
        name + "/twin" + ext: b"\x7fELF never loaded",
        name + "/py.typed": "",
    }, "cp311-cp311-manylinux_2_99_x86_64")        # (a glibc no host has)
    data = "rpfbd_" + uuid.uuid4().hex[:8]      # the same, with a data file: needs the cache, refused whole
    _wheel_site(site, data, {data + "/__init__.py": FALLBACK_INIT, data + "/_slow.py": "add = max\n",
                             data + "/table.json": "{}\n", data + "/_speed" + ext: b"\x7fELF"},
                "cp311-cp311-manylinux_2_99_x86_64")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    options = dict(plain_user_options, transport=transport)
    caplog.set_level(logging.INFO, logger="remoteproc")
    try:
        got = _call(plain_user_host, options, fallback_job, name)
        assert "ok" in got, got
        added, fast, why, kind, version, plugins = got["ok"]
        assert (added, fast, kind, version, plugins) == (5, False, "python", "1.0", ["slow"])
        # the extension's import said why, as the refusal of the whole package did
        assert "cannot send '%s._speed' (%s 1.0)" % (name, name) in why and "manylinux_2_99_x86_64" in why
        assert "Fix:" in why and "Python modules were sent" in why
        # (and the user's log says so: a fallback may be slower)
        assert any("sending %s from memory without its compiled modules" % name in r.getMessage()
                   for r in caplog.records if r.name == "remoteproc.packages"), caplog.records
        got = _call(plain_user_host, options, fallback_job, data)
        assert "cannot send package '%s'" % data in got.get("ImportError", ""), got
    finally:
        _forget(name)
        _forget(data)


# -- a package changed in place after it was installed ---------------------------------------------

def data_job(conn, name):
    import importlib

    pkg = importlib.import_module(name)
    with open(pkg.__file__.replace("__init__.py", "table.txt")) as f:
        conn.send((f.read(), pkg.__file__))


def _installed_with_record(site, name, text):
    """``name`` 1.0 (a package with a data file) installed in ``site`` as pip installs a wheel:
    RECORD, with each file's sha256, written last."""
    import base64
    import hashlib

    files = {name + "/__init__.py": "", name + "/table.txt": text}
    info = "%s-1.0.dist-info" % name
    files[info + "/METADATA"] = "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name
    files[info + "/WHEEL"] = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    rows = []
    for rel, data in sorted(files.items()):
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()).rstrip(b"=").decode()
        rows.append("%s,sha256=%s,%d\n" % (rel, digest, len(data.encode())))
    (site / info / "RECORD").write_text("".join(rows) + info + "/RECORD,,\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_file_changed_in_place_with_its_old_time_is_not_served_stale(plain_user_host, own_cache, tmp_path,
                                                                       monkeypatch, transport):
    """A package's file rewritten after its install, same size, with its modification time set
    back before RECORD's (``cp -p``/``rsync -a``/``tar x`` of another copy, ``touch -d``): its
    sha256 was taken from RECORD, so the distribution kept its old hash and the host imported
    the entry it had cached for the old content."""
    import os
    import time

    options, _root = own_cache
    options = dict(options, transport=transport)
    name = "rpstale_" + uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    _installed_with_record(site, name, "old table\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        assert _call(plain_user_host, options, data_job, name)[0] == "old table\n"
        from remoteproc.relay import client

        client.shutdown()       # (the next program: a new connection, which hashes it again)
        table = site / name / "table.txt"
        old = os.stat(table)
        time.sleep(0.05)
        table.write_text("new table\n")                     # (the same size)
        os.utime(table, ns=(old.st_atime_ns, old.st_mtime_ns))
        text, where = _call(plain_user_host, options, data_job, name)
        assert text == "new table\n", where
    finally:
        _forget(name)
        from remoteproc.relay import client

        client.shutdown()


def test_the_install_fix_for_a_python_in_a_virtual_environment_has_no_user_flag(tmp_path):
    """Found by an audit: with python= naming a virtual environment's Python (the docs' own way
    round an externally managed host), every install fix said ``pip install --user``, which a
    virtual environment's pip refuses ("User site-packages are not visible in this virtualenv")."""
    import subprocess

    from remoteproc.agent import pkgcache

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    probe = "import json, sys; sys.path.insert(0, %r); from remoteproc.agent import pkgcache; " \
            "print(json.dumps(pkgcache.abi()))" % os.path.dirname(os.path.dirname(os.path.abspath(pkgcache.__file__)))
    inside = json.loads(subprocess.run([str(venv / "bin" / "python3"), "-c", probe], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    assert inside["venv"] is True and pkgcache.abi()["venv"] is (sys.prefix != sys.base_prefix)
    said = _refusal(_site_with(tmp_path / "a", None), dict(OTHER_HOST, venv=inside["venv"]))
    assert "pip install fast==1.0`" in said and "--user" not in said, said
    said = _refusal(_site_with(tmp_path / "b", None), dict(OTHER_HOST, venv=False))
    assert "pip install --user fast==1.0`" in said, said
