"""Packages follow: compiled extensions and package data reach a host that has only python3,
through its package cache (~/.cache/remoteproc, addressed by content)."""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
import uuid

import pytest

from remoteproc import Pipe, RemoteProcess, distributions
from remoteproc.agent import pkgcache
from remoteproc.relay import client

pytestmark = pytest.mark.timeout(600)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXT = sysconfig.get_config_var("EXT_SUFFIX")


def _cache_root() -> str:
    return os.path.join(pwd.getpwnam("rpuser").pw_dir, ".cache", "remoteproc")


def _entries(name: str | None = None, root: str | None = None) -> list[dict]:
    return [e for e in pkgcache.entries(root or _cache_root()) if name is None or e.get("name") == name]


def _entry_of(path: str, root: str | None = None) -> dict:
    """The cache entry that holds ``path`` (a module's __file__ on the host)."""
    (entry,) = [e for e in _entries(root=root) if path.startswith(e["path"] + "/")]
    return entry


def _call(host, options, target, *args, timeout=120):
    """Run target(conn, *args) on the host; returns what it sent back."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=target, args=(child, *args), **options)
    p.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise AssertionError("no answer from the remote child within %ds (exit code %s)" % (timeout, p.exitcode))
        return parent.recv()
    finally:
        parent.close()
        p.join(30)
        assert p.exitcode == 0


# -- targets (run remotely) -----------------------------------------------------------------

def numpy_job(conn):
    import numpy

    a = numpy.array([[3.0, 1.0], [1.0, 2.0]])
    x = numpy.linalg.solve(a, numpy.array([9.0, 8.0]))
    conn.send((numpy.__file__, [float(v) for v in x], numpy.__version__))


def requests_job(conn):
    import importlib.metadata
    import os

    import certifi
    import requests

    where = certifi.where()
    conn.send({"requests": requests.__version__, "where": where, "is_file": os.path.isfile(where),
               "size": os.path.getsize(where), "dist_version": importlib.metadata.version("certifi")})


def import_job(conn, name, expr):
    import importlib

    try:
        mod = importlib.import_module(name)
        conn.send(("ok", eval(expr, {"m": mod})))
    except ImportError as exc:
        conn.send(("ImportError", str(exc)))


# -- a private package with data files and a C extension, built here -------------------------

C_SOURCE = """
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(%d); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&mod); }
"""


def _build(pkg_dir: str, value: int) -> None:
    src = os.path.join(pkg_dir, "_speed.c")
    with open(src, "w") as f:
        f.write(C_SOURCE % value)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-I", sysconfig.get_paths()["include"], src, "-o",
                    os.path.join(pkg_dir, "_speed" + EXT)], check=True, capture_output=True, timeout=120)


@pytest.fixture
def private_package(tmp_path, monkeypatch):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test's C extension")
    name = "rppkg_" + uuid.uuid4().hex[:8]
    root = tmp_path / name
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text(textwrap.dedent("""
        import importlib.resources
        import os

        from ._speed import answer

        def report():
            here = os.path.dirname(__file__)
            with open(os.path.join(here, "data", "words.txt")) as f:
                words = f.read()
            res = importlib.resources.files(__name__).joinpath("data/words.txt").read_text()
            return answer(), words, res == words, __file__
    """))
    (root / "data" / "words.txt").write_text("forty-two\n")
    _build(str(root), 42)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, str(root)
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


# -- tests ------------------------------------------------------------------------------------

def test_numpy_computes_on_a_host_without_numpy(plain_user_host, plain_user_options, fresh):
    where, x, version = _call(plain_user_host, plain_user_options, numpy_job)
    assert x == [2.0, 3.0]
    assert where.startswith(_cache_root() + "/")
    import numpy

    assert version == numpy.__version__
    # cache directory: the account's own, mode 0700, the entry too
    st = os.stat(_cache_root())
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == pwd.getpwnam("rpuser").pw_uid
    entry = _entry_of(where)
    assert entry["name"] == "numpy"
    assert stat.S_IMODE(os.stat(entry["path"]).st_mode) == 0o700
    assert os.stat(entry["path"]).st_uid == st.st_uid
    assert os.path.isdir(os.path.join(entry["path"], "numpy.libs"))     # the vendored libraries came too
    # our bytecode came too, and the sources kept their times: the host compiled nothing
    tag = sys.implementation.cache_tag
    assert os.path.isfile(os.path.join(entry["path"], "numpy", "__pycache__", "__init__.%s.pyc" % tag))
    assert int(os.stat(os.path.join(entry["path"], "numpy", "__init__.py")).st_mtime) == int(
        os.stat(numpy.__file__).st_mtime)


def test_requests_imports_and_certifi_where_is_a_real_file(plain_user_host, plain_user_options, fresh):
    got = _call(plain_user_host, plain_user_options, requests_job)
    import certifi
    import requests

    assert got["requests"] == requests.__version__
    assert got["is_file"] and got["where"].startswith(_cache_root() + "/")
    assert got["size"] == os.path.getsize(certifi.where())
    assert got["dist_version"] == importlib.metadata.version("certifi")      # the dist-info came along: metadata works


def test_private_package_with_data_and_extension_then_rebuilt(plain_user_host, plain_user_options,
                                                              private_package, fresh):
    name, root = private_package
    value, words, same, where = _call(plain_user_host, plain_user_options, import_job, name, "m.report()")[1]
    assert (value, words, same) == (42, "forty-two\n", True)
    assert where.startswith(_cache_root() + "/")
    _build(root, 43)        # an edit, rebuilt: a new connection gets the new version
    client.shutdown()
    got = _call(plain_user_host, plain_user_options, import_job, name, "m.report()")
    assert got[1][0] == 43
    assert len(_entries(name)) == 2     # addressed by content: both builds are entries of their own


def test_cached_import_sends_nothing_and_a_truncated_file_is_replaced(plain_user_host, own_cache, fresh, caplog):
    options, root = own_cache
    entry = _entry_of(_call(plain_user_host, options, numpy_job)[0], root)
    victim = os.path.join(entry["path"], "numpy", "_core", "_multiarray_umath" + EXT)
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    client.shutdown()
    caplog.set_level(logging.INFO, logger="remoteproc")
    where, x, _version = _call(plain_user_host, options, numpy_job)
    # sent again (over 4 MB: the relay says so, with the size), into the same entry
    said = [r.getMessage() for r in caplog.records if r.name == "remoteproc.packages"]
    assert any("sending numpy" in m and "MB" in m for m in said), said
    assert any(m.startswith(plain_user_host + ": sent numpy") for m in said), said
    assert x == [2.0, 3.0]
    assert os.path.getsize(victim) == size       # replaced by a whole copy, never used damaged
    assert where.startswith(entry["path"] + "/")
    assert pkgcache.digest_of(entry["path"]) == entry["hash"]


def test_incompatible_wheel_is_refused_with_both_tags(plain_user_host, plain_user_options, tmp_path, monkeypatch,
                                                      fresh):
    # (orjson: its package is nothing without its extension; one that falls back to Python code of
    # its own, charset_normalizer, runs there: tests/test_forwarding_audit.py)
    import orjson

    real_site = os.path.dirname(os.path.dirname(orjson.__file__))
    site = tmp_path / "site"
    site.mkdir()
    info = next(n for n in os.listdir(real_site) if n.startswith("orjson-") and n.endswith(".dist-info"))
    for rel, _hash, _size in distributions._record(real_site, info):
        src = os.path.join(real_site, rel)
        if rel.startswith("..") or not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(site, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(site, rel))
    wheel = site / info / "WHEEL"
    text = wheel.read_text()
    wheel.write_text("\n".join(line for line in text.splitlines() if not line.startswith("Tag:"))
                     + "\nTag: cp311-cp311-manylinux_2_99_x86_64\n")
    monkeypatch.syspath_prepend(str(site))
    kind, message = _call(plain_user_host, plain_user_options, import_job, "orjson", "1")
    assert kind == "ImportError"
    assert "orjson" in message and "manylinux_2_99_x86_64" in message     # our tags
    assert "glibc 2." in message and ".cpython-311-x86_64-linux-gnu.so" in message      # the host's
    assert "Fix:" in message and "pip install" in message


def test_record_entries_outside_the_distribution_are_never_served(plain_user_host, plain_user_options, tmp_path,
                                                                  monkeypatch, fresh):
    name = "rpdist_" + uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("import os\nHERE = os.path.dirname(__file__)\n")
    (site / name / "table.dat").write_text("data\n")
    os.symlink("/etc/passwd", site / name / "escape.txt")
    info = site / (name + "-1.0.dist-info")
    info.mkdir()
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: py3-none-any\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
    (info / "RECORD").write_text("\n".join([
        "%s/__init__.py,," % name, "%s/table.dat,," % name, "%s/escape.txt,," % name,
        "../../etc/passwd,,", "/etc/hostname,,", "%s/../../../etc/group,," % name,
        "%s-1.0.dist-info/RECORD,," % name, "%s-1.0.dist-info/WHEEL,," % name,
    ]) + "\n")
    monkeypatch.syspath_prepend(str(site))
    dist = distributions.find(name, [str(site)])
    assert dist is not None
    assert sorted(f[0] for f in dist.files) == sorted([
        name + "/__init__.py", name + "/table.dat", name + "-1.0.dist-info/RECORD", name + "-1.0.dist-info/WHEEL"])
    assert set(dist.refused) >= {"../../etc/passwd", "/etc/hostname", name + "/escape.txt"}
    kind, here = _call(plain_user_host, plain_user_options, import_job, name, "m.HERE")
    assert kind == "ok"
    entry = os.path.dirname(here)
    served = sorted(os.path.relpath(os.path.join(d, f), entry) for d, _dn, fs in os.walk(entry) for f in fs
                    if "__pycache__" not in d)
    assert served == sorted([pkgcache.MANIFEST, name + "/__init__.py", name + "/table.dat",
                             name + "-1.0.dist-info/RECORD", name + "-1.0.dist-info/WHEEL"])


def test_two_top_level_packages_of_one_distribution_share_its_entry(plain_user_host, plain_user_options, tmp_path,
                                                                    monkeypatch, fresh):
    """Two children import the two top-level packages of one distribution at once: one
    transfer, one entry, both answered."""
    tag = uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    names = ["rptwo_a_" + tag, "rptwo_b_" + tag]
    info = site / ("rptwo-%s-1.0.dist-info" % tag)
    info.mkdir(parents=True)
    record = []
    for name in names:
        (site / name).mkdir()
        (site / name / "__init__.py").write_text("import os\nHERE = os.path.dirname(__file__)\n")
        (site / name / "blob.bin").write_bytes(os.urandom(1 << 20))
        record += ["%s/__init__.py,," % name, "%s/blob.bin,," % name]
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: py3-none-any\n")
    (info / "RECORD").write_text("\n".join(record + [info.name + "/RECORD,,", info.name + "/WHEEL,,"]) + "\n")
    monkeypatch.syspath_prepend(str(site))
    pipes = []
    for name in names:
        parent, child = Pipe()
        p = RemoteProcess(plain_user_host, target=import_job, args=(child, name, "m.HERE"), **plain_user_options)
        p.start()
        child.close()
        pipes.append((p, parent))
    homes = []
    for p, parent in pipes:
        assert parent.poll(120)
        kind, here = parent.recv()
        assert kind == "ok"
        homes.append(os.path.dirname(here))
        p.join(30)
        assert p.exitcode == 0
    assert homes[0] == homes[1]
    assert sorted(n for n in os.listdir(homes[0]) if not n.startswith(".")) == sorted(names + [info.name])


@pytest.fixture
def namespace_site(tmp_path, monkeypatch):
    """A namespace package (no __init__.py) of three distributions: ``<ns>.fast`` (a C
    extension), ``<ns>.data_tools`` (a data file read next to __file__) and ``<ns>.plain``
    (Python only).  Returns (namespace, site, fast's and data_tools' distribution names)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test's C extension")
    tag = uuid.uuid4().hex[:8]
    ns, site = "rpns_" + tag, tmp_path / "site"
    parts = {"fast": ("from ._speed import answer\n", {}), "data_tools": (
        "import os\n\ndef words():\n    with open(os.path.join(os.path.dirname(__file__), 'words.txt')) as f:\n"
        "        return f.read()\n", {"words.txt": "forty-two\n"}), "plain": ("VALUE = 42\n", {})}
    dists = {}
    for sub, (init, extra) in parts.items():
        pkg = site / ns / sub
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(init)
        for fn, text in extra.items():
            (pkg / fn).write_text(text)
        if sub == "fast":
            _build(str(pkg), 42)
            os.unlink(pkg / "_speed.c")
        dist = dists[sub] = "rpns_%s_%s" % (sub.replace("_", ""), tag)
        info = site / ("%s-1.0.dist-info" % dist)
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % dist)
        files = ["%s/%s/%s" % (ns, sub, fn) for fn in sorted(os.listdir(pkg))]
        (info / "RECORD").write_text("\n".join(["%s,," % f for f in files] + [info.name + "/RECORD,,"]) + "\n")
    monkeypatch.syspath_prepend(str(site))
    yield ns, str(site), dists["fast"], dists["data_tools"]
    for mod in [m for m in sys.modules if m == ns or m.startswith(ns + ".")]:
        del sys.modules[mod]


def test_packages_inside_a_namespace_package_go_through_the_cache(plain_user_host, plain_user_options,
                                                                   namespace_site, fresh):
    """A subpackage of a namespace package that needs files (``google.protobuf``) goes through the
    host's cache as its own distribution (the one whose RECORD lists it), and imports from there:
    its C extension loads and its data file is a real file; a pure one comes from memory."""
    ns, _site, fast, data_tools = namespace_site
    assert _call(plain_user_host, plain_user_options, import_job, ns + ".fast", "m.answer()") == ("ok", 42)
    assert _call(plain_user_host, plain_user_options, import_job, ns + ".data_tools", "m.words()") == (
        "ok", "forty-two\n")
    kind, where = _call(plain_user_host, plain_user_options, import_job, ns + ".data_tools", "m.__file__")
    assert kind == "ok" and "/.cache/remoteproc/" in where and where.endswith("/%s/data_tools/__init__.py" % ns)
    assert _call(plain_user_host, plain_user_options, import_job, ns + ".plain", "m.VALUE") == ("ok", 42)


def test_the_owner_of_a_file_inside_a_namespace_package_is_found_by_record(namespace_site):
    ns, site, fast, data_tools = namespace_site
    speed = next(f for f in os.listdir(os.path.join(site, ns, "fast")) if f.startswith("_speed"))
    assert distributions.owner_name(os.path.join(site, ns, "fast", speed), [site]) == fast
    assert distributions.owner_name(os.path.join(site, ns, "data_tools", "words.txt"), [site]) == data_tools
    unit = distributions.locate(ns + ".data_tools.x", [site])
    assert unit is not None and (unit.name, unit.rel, unit.namespace) == (ns + ".data_tools", ns + "/data_tools", ns)
    assert unit.dist_name == data_tools
    assert distributions.locate(ns, [site]) is None     # the namespace package itself: nothing of its own


CONCURRENT = """
import json, sys
sys.path.insert(0, %(repo)r)
from multiprocessing import Pipe
from remoteproc import RemoteProcess

def job(conn):
    import numpy
    conn.send((numpy.__file__, float(numpy.arange(10).sum())))

if __name__ == "__main__":
    options = json.loads(sys.argv[2])
    parent, child = Pipe()
    p = RemoteProcess(sys.argv[1], target=job, args=(child,), **options)
    p.start()
    child.close()
    print(json.dumps(parent.recv() if parent.poll(300) else None))
    p.join(30)
    sys.exit(p.exitcode)
"""


def test_eight_programs_import_numpy_at_once_on_an_empty_cache(plain_user_host, own_cache, tmp_path):
    options, root = own_cache
    script = tmp_path / "importer.py"
    script.write_text(CONCURRENT % {"repo": REPO})
    procs = [subprocess.Popen([sys.executable, str(script), plain_user_host, json.dumps(options)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=540)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    (entry,) = _entries(root=root)
    assert entry["name"] == "numpy"
    assert all(r[1] == 45.0 and r[0].startswith(entry["path"] + "/") for r in results)
    assert not [n for n in os.listdir(root) if n.startswith((".tmp-", ".trash-"))]


def _snapshot(home: str) -> dict[str, tuple[int, int]]:
    out = {}
    skip = os.path.join(home, ".cache", "remoteproc")
    for dirpath, dirnames, filenames in os.walk(home):
        if dirpath == skip or dirpath.startswith(skip + os.sep):
            dirnames[:] = []
            continue
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            out[full] = (st.st_size, st.st_mtime_ns)
    return out


def test_nothing_is_written_outside_the_cache(plain_user_host, plain_user_options, private_package, fresh):
    home = pwd.getpwnam("rpuser").pw_dir
    before = _snapshot(home)
    name, _root = private_package
    assert _call(plain_user_host, plain_user_options, import_job, name, "m.report()[0]")[1] == 42
    _call(plain_user_host, plain_user_options, numpy_job)
    client.shutdown()
    assert _snapshot(home) == before


def test_cache_size_zero_turns_the_cache_off(plain_user_host, plain_user_options, private_package, tmp_path,
                                             monkeypatch, fresh):
    """Compiled packages and packages with data files alike are refused, by an ImportError
    that says the cache is off and what to install; never imported with local file names."""
    off = dict(plain_user_options, cache_size=0)
    kind, message = _call(plain_user_host, off, import_job, "numpy", "1")
    assert kind == "ImportError" and "a C extension (numpy/" in message and "cache_size=0" in message
    assert "install numpy there" in message and "pip install" in message and "numpy==" in message
    name, _root = private_package
    kind, message = _call(plain_user_host, off, import_job, name, "m.report()")
    assert kind == "ImportError" and "cache_size=0" in message and "install %s there" % name in message
    data = "rpdata_" + uuid.uuid4().hex[:8]      # data files only: no compiled code at all
    (tmp_path / "site" / data).mkdir(parents=True)
    (tmp_path / "site" / data / "__init__.py").write_text("import os\nHERE = os.path.dirname(__file__)\n")
    (tmp_path / "site" / data / "table.dat").write_text("data\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    kind, message = _call(plain_user_host, off, import_job, data, "m.HERE")
    assert kind == "ImportError", message
    assert "data files (%s/table.dat)" % data in message and "cache_size=0" in message
    assert "install %s there" % data in message and plain_user_host in message


def test_cache_command_lists_and_clears(plain_user_host, own_cache, fresh, capsys):
    from remoteproc import cli

    options, root = own_cache
    _call(plain_user_host, options, requests_job)
    argv = [plain_user_host, "-p", str(options["port"]), "-i", options["key_filename"],
            "--known-hosts", options["known_hosts"], "--python", options["python"]]
    assert cli.main(["cache"] + argv) == 0
    out = capsys.readouterr().out
    assert "certifi" in out and root in out
    names = sorted(e["name"] for e in _entries(root=root))
    assert "certifi" in names and "charset_normalizer" in names     # (compiled with mypyc)
    client.shutdown()       # (that program ends: its connection no longer holds its entries)
    _wait_unlocked(root)
    _age(root, 3600)        # (and used them an hour ago)
    assert cli.main(["cache", "--clear"] + argv) == 0
    assert "removed %d entries" % len(names) in capsys.readouterr().out
    assert _entries(root=root) == []


def _age(root: str, seconds: float) -> None:
    """Make every entry look last used ``seconds`` ago."""
    for e in _entries(root=root):
        then = time.time() - seconds
        os.utime(os.path.join(e["path"], pkgcache.MANIFEST), (then, then))


def _wait_unlocked(root: str, timeout: float = 60) -> None:
    """Wait until no agent (of a closed connection) holds an entry any more."""
    deadline = time.monotonic() + timeout
    while True:
        held = []
        for e in _entries(root=root):
            fd = os.open(os.path.join(e["path"], pkgcache.MANIFEST), os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                held.append(e["name"])
            finally:
                os.close(fd)
        if not held:
            return
        assert time.monotonic() < deadline, "entries still held after the connection closed: %s" % held
        time.sleep(0.2)


CLEAR = """
import sys
sys.path.insert(0, %(repo)r)
from remoteproc import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_clearing_spares_what_a_running_program_uses(plain_user_host, own_cache, private_package, tmp_path, fresh):
    """`remoteproc cache --clear` from another program, while this one runs: the entry it
    imported from stays (even when last used long ago), unused ones go, and a new child of
    the running program still imports the package."""
    options, root = own_cache
    name, _root = private_package
    _call(plain_user_host, options, requests_job)       # (certifi, charset_normalizer: then unused)
    client.shutdown()
    _wait_unlocked(root)
    assert _call(plain_user_host, options, import_job, name, "m.report()[0]")[1] == 42
    (ours,) = _entries(name, root)
    others = len(_entries(root=root)) - 1
    assert others >= 2
    _age(root, 3600)            # all of them last used an hour ago: only the lock tells ours is in use
    script = tmp_path / "clear.py"
    script.write_text(CLEAR % {"repo": REPO})
    argv = [plain_user_host, "-p", str(options["port"]), "-i", options["key_filename"],
            "--known-hosts", options["known_hosts"], "--python", options["python"]]
    done = subprocess.run([sys.executable, str(script), "cache", "--clear"] + argv, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert [e["hash"] for e in _entries(root=root)] == [ours["hash"]], done.stdout
    assert "removed %d entries" % others in done.stdout
    value, _words, same, where = _call(plain_user_host, options, import_job, name, "m.report()")[1]
    assert (value, same) == (42, True) and where.startswith(ours["path"] + "/")


# -- the pieces, without a host -----------------------------------------------------------------

HOST = {"implementation": "cpython", "version": [3, 11], "machine": "x86_64", "system": "linux",
        "suffixes": [".cpython-311-x86_64-linux-gnu.so", ".abi3.so", ".so"], "libc": ["glibc", "2.28"]}


@pytest.mark.parametrize("tag, ok", [
    ("cp311-cp311-manylinux_2_17_x86_64", True),
    ("cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64", True),
    ("cp311-cp311-manylinux_2_28_x86_64", True),
    ("cp311-cp311-manylinux_2_34_x86_64", False),       # needs a newer glibc than the host's
    ("cp311-cp311-manylinux2014_aarch64", False),       # another machine
    ("cp311-cp311-musllinux_1_2_x86_64", False),        # another libc
    ("cp312-cp312-manylinux_2_17_x86_64", False),       # another Python
    ("cp38-abi3-manylinux_2_17_x86_64", True),          # abi3: cp38 means CPython 3.8 or later
    ("cp312-abi3-manylinux_2_17_x86_64", False),        # abi3 of a later CPython than the host's
    ("cp38-cp38-manylinux_2_17_x86_64", False),         # not abi3: exactly CPython 3.8
    ("cp311-abi3-manylinux_2_17_x86_64", True),
    ("py3-none-any", True),
    ("py2.py3-none-any", True),
    ("cp311-cp311-linux_x86_64", True),
    ("cp311-cp311-win_amd64", False),
    ("pp39-pypy39_pp73-manylinux_2_17_x86_64", False),
    ("cp311-abi3-macosx_11_0_x86_64", False),             # another system
    ("py3-none", False),                                  # not a wheel tag (two parts)
    ("xx3-none-any", False),                              # no such interpreter
])
def test_wheel_tags_against_a_host(tag, ok):
    assert distributions.tag_ok(tag, HOST) is ok


def test_musl_host_takes_musllinux_wheels():
    musl = dict(HOST, libc=["musl", "1.2.4"])
    assert distributions.tag_ok("cp311-cp311-musllinux_1_1_x86_64", musl)
    assert not distributions.tag_ok("cp311-cp311-musllinux_1_3_x86_64", musl)
    assert not distributions.tag_ok("cp311-cp311-manylinux_2_17_x86_64", musl)


def test_macos_and_pypy_hosts_take_their_own_wheels():
    mac = dict(HOST, system="darwin", machine="arm64", libc=[None, None],
               suffixes=[".cpython-311-darwin.so", ".abi3.so", ".so"])
    assert distributions.tag_ok("cp311-cp311-macosx_11_0_arm64", mac)
    assert distributions.tag_ok("cp311-abi3-macosx_10_9_universal2", mac)
    assert not distributions.tag_ok("cp311-cp311-macosx_11_0_x86_64", mac)
    assert not distributions.tag_ok("cp311-cp311-manylinux_2_17_x86_64", mac)
    pypy = dict(HOST, implementation="pypy", version=[3, 9], suffixes=[".pypy39-pp73-x86_64-linux-gnu.so", ".so"])
    assert distributions.tag_ok("pp39-pypy39_pp73-manylinux_2_17_x86_64", pypy)
    assert not distributions.tag_ok("pp310-pypy310_pp73-manylinux_2_17_x86_64", pypy)
    assert not distributions.tag_ok("cp39-abi3-manylinux_2_17_x86_64", pypy)


def _built(*files, tags=()):
    """A distribution holding ``files`` (no WHEEL tags: built here, e.g. an editable install)."""
    return distributions.Distribution(top="fast", name="fast", version="1.0", site="/site",
                                      files=[(f, 0o644, 10, 0) for f in files], tags=list(tags),
                                      info="fast-1.0.dist-info")


def test_an_extension_the_host_cannot_load_is_refused_with_the_reason():
    # its file name says another interpreter (with no wheel tags to speak for it)
    with pytest.raises(distributions.Unsendable) as info:
        distributions.check(_built("fast/_x.cpython-312-x86_64-linux-gnu.so"), HOST, "rp@h")
    said = str(info.value)
    assert "'fast' (fast 1.0) to rp@h" in said and "fast/_x.cpython-312-x86_64-linux-gnu.so is built for another " \
        "interpreter" in said and "cpython 3.11 on x86_64 with glibc 2.28" in said
    assert "Fix:" in said and "pip install --user fast==1.0" in said
    pypy = dict(HOST, implementation="pypy", version=[3, 9], suffixes=[".pypy39-pp73-x86_64-linux-gnu.so", ".so"])
    with pytest.raises(distributions.Unsendable, match="_x.abi3.so is built for another interpreter"):
        distributions.check(_built("fast/_x.abi3.so"), pypy, "rp@h")
    # built here, untagged or abi3: fine for a host like this one, refused for another machine
    ours = distributions.local_abi()
    like_us = dict(ours, libc=list(ours["libc"]))
    distributions.check(_built("fast/_x.abi3.so", "fast/_y.so"), like_us, "rp@h")
    other = dict(like_us, machine="aarch64" if ours["machine"] != "aarch64" else "x86_64")
    for dist in (_built("fast/_x.abi3.so"), _built("fast/_y.so")):
        with pytest.raises(distributions.Unsendable) as info:
            distributions.check(dist, other, "rp@h")
        assert "it was built here, for %s" % distributions.describe_abi(ours) in str(info.value)
    # a wheel's tags speak for its untagged files
    distributions.check(_built("fast/_x.abi3.so", tags=["cp38-abi3-manylinux_2_17_x86_64"]), HOST, "rp@h")


def test_the_fix_suits_the_hosts_python():
    """The fix named ``pip install --user``, which the host's Python refuses where it is externally
    managed (PEP 668: Debian 12, Ubuntu 23.04 and later; this machine's /usr/bin/python3): there it
    installs into a virtual environment and names it with python=.  And a host that runs another
    Python was told to "install here a build whose tags that host accepts", which no build for this
    Python is: it is told to run ours there (python=).  Fixed in distributions._install and check."""
    managed = dict(HOST, managed=True)
    wheel = _built("fast/_x.cpython-310-x86_64-linux-gnu.so", tags=["cp310-cp310-manylinux_2_17_x86_64"])
    with pytest.raises(distributions.Unsendable) as info:
        distributions.check(wheel, managed, "rp@h", "/usr/bin/python3.11")
    said = str(info.value)
    assert "`/usr/bin/python3.11 -m venv ~/venv && ~/venv/bin/pip install fast==1.0`" in said
    assert "python='~/venv/bin/python3'" in said and "externally managed" in said and "--user" not in said
    said = str(distributions.refuse_cache_off(wheel, "rp@h", "/usr/bin/python3.11", managed))
    assert "~/venv/bin/pip install fast==1.0" in said and "--user" not in said
    unit = distributions.Unit("fast", "/site", "fast", info="fast-1.0.dist-info")
    old = dict(managed, version=[3, 8], python=[3, 8, 10])
    import unittest.mock

    with unittest.mock.patch.object(distributions, "metadata", lambda site, info: {
            "requires-python": ">=3.9", "name": "fast", "version": "1.0"}):
        with pytest.raises(distributions.Unsendable) as info:
            distributions.check_python(unit, old, "rp@h", "/usr/bin/python3.8")
        assert "`/usr/bin/python3.8 -m venv ~/venv && ~/venv/bin/pip install fast` there picks one" in str(info.value)
        with pytest.raises(distributions.Unsendable) as info:
            distributions.check_python(unit, dict(old, managed=False), "rp@h", "/usr/bin/python3.8")
        assert "`/usr/bin/python3.8 -m pip install --user fast` there picks one" in str(info.value)
    # the host runs another Python: no build installed here is for it
    ours = distributions.local_abi()
    other = dict(ours, libc=list(ours["libc"]), version=[3, 99], python=[3, 99, 0],
                 suffixes=[".cpython-399-x86_64-linux-gnu.so", ".abi3.so", ".so"])
    here = _built("fast/_x%s" % ours["suffixes"][0], tags=["cp3%d-cp3%d-manylinux_2_17_%s" % (
        sys.version_info[1], sys.version_info[1], ours["machine"])])
    with pytest.raises(distributions.Unsendable) as info:
        distributions.check(here, other, "rp@h")
    said = str(info.value)
    assert "install here a build" not in said
    assert "run on that host a CPython %d.%d, as here (the python= option)" % sys.version_info[:2] in said
    with pytest.raises(distributions.Unsendable) as info:
        distributions.check(here, dict(ours, libc=["glibc", "2.5"]), "rp@h")
    assert "install here a build of fast whose tags that host accepts" in str(info.value)


def pip_user_install(conn):
    """What the host's Python says to ``pip install --user`` (of nothing that exists, from no index)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pip", "install", "--user", "--no-index", "rp-nothing-such"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    conn.send(done.stdout)


def test_the_fix_for_a_package_the_host_cannot_take_is_one_its_python_accepts(plain_user_host, plain_user_options,
                                                                              fresh):
    """The agent says whether its Python is externally managed; the fix is the one its pip accepts."""
    kind, message = _call(plain_user_host, dict(plain_user_options, cache_size=0), import_job, "numpy", "1")
    assert kind == "ImportError" and "Fix:" in message
    pip = _call(plain_user_host, plain_user_options, pip_user_install)
    if "No module named pip" in pip:
        pytest.skip("the host's python3 has no pip")
    if "externally-managed-environment" in pip:
        assert "-m venv ~/venv && ~/venv/bin/pip install numpy==" in message
        assert "python='~/venv/bin/python3'" in message
    else:
        assert "-m pip install --user numpy==" in message, (pip, message)


def _fake_entry(root, name, size, used):
    digest = uuid.uuid4().hex * 2
    path = os.path.join(root, digest)
    os.makedirs(path)
    with open(os.path.join(path, pkgcache.MANIFEST), "w") as f:
        json.dump({"name": name, "size": size}, f)
    os.utime(os.path.join(path, pkgcache.MANIFEST), (used, used))
    return digest


def test_eviction_removes_the_least_recently_used(tmp_path):
    now = time.time()
    _fake_entry(str(tmp_path), "old", 600, now - 3 * 3600)
    mid = _fake_entry(str(tmp_path), "mid", 600, now - 2 * 3600)
    new = _fake_entry(str(tmp_path), "new", 600, now - 3600)
    recent = _fake_entry(str(tmp_path), "recent", 600, now - 60)
    pkgcache.evict(str(tmp_path), 1900, keep={mid})
    assert sorted(os.listdir(tmp_path)) == sorted([mid, new, recent])
    pkgcache.evict(str(tmp_path), 0, keep={mid})
    assert sorted(os.listdir(tmp_path)) == sorted([mid, recent])     # in use here, or used a minute ago


def test_clear_keeps_entries_in_use_and_downloads_under_way(tmp_path):
    root = str(tmp_path)
    now = time.time()
    _fake_entry(root, "old", 600, now - 3 * 3600)
    recent = _fake_entry(root, "recent", 600, now - 30)     # (clear spares the last minute's)
    store = pkgcache.Store(root)        # a live connection's: it holds the entry it received
    h = pkgcache.Hasher()
    h.file("held/__init__.py", 0o644, 3)
    h.data(b"x=1")
    held = h.hexdigest()
    store.begin(held, {"name": "held"})
    store.add(held, [["held/__init__.py", 0o644, 3, 0, 3]], b"x=1", False)
    store.finish(held, 1 << 30)
    os.utime(os.path.join(root, held, pkgcache.MANIFEST), (now - 2 * 3600, now - 2 * 3600))   # used long ago
    store.begin("ab" * 32, {"name": "coming"})          # a download under way
    live = [n for n in os.listdir(root) if n.startswith(".tmp-")]
    dead = os.path.join(root, ".tmp-cdcdcdcdcdcd-x")    # one whose writer died, long ago
    os.mkdir(dead)
    os.utime(dead, (now - 2 * 3600, now - 2 * 3600))
    try:
        result = pkgcache.clear(root)
        assert sorted(os.listdir(root)) == sorted([recent, held] + live)
        removed, kept = result
        why = {k.get("name") or k["hash"]: k["why"] for k in kept}
        assert removed == 1 and sorted(why) == ["abababababab", "held", "recent"]
        assert "in use" in why["held"] and "used 30 s ago" in why["recent"] and "under way" in why["abababababab"]
        pkgcache.evict(root, 0)     # the cap spares what a connection holds too, whatever its age
        assert held in os.listdir(root)
    finally:
        store.close()
    pkgcache.evict(root, 0)     # (closed: nothing held, the download abandoned)
    assert sorted(os.listdir(root)) == [recent]


def test_a_transfer_that_does_not_hash_right_leaves_nothing(tmp_path):
    store = pkgcache.Store(str(tmp_path / "cache"))
    h = pkgcache.Hasher()
    h.file("pkg/__init__.py", 0o644, 3)
    h.data(b"x=1")
    digest = h.hexdigest()
    store.begin(digest, {"name": "pkg"})
    store.add(digest, [["pkg/__init__.py", 0o644, 3, 0, 3]], b"x=2", False)     # damaged in transit
    with pytest.raises(pkgcache.CacheError):
        store.finish(digest, 1 << 30)
    assert os.listdir(tmp_path / "cache") == []
    store.begin(digest, {"name": "pkg"})
    store.add(digest, [["pkg/__init__.py", 0o644, 3, 0, 3]], b"x=1", False)
    path = store.finish(digest, 1 << 30)
    assert os.listdir(tmp_path / "cache") == [digest] and pkgcache.digest_of(path) == digest
    with pytest.raises(pkgcache.CacheError):
        store.begin("0" * 64, {})
        store.add("0" * 64, [["../escape", 0o644, 1, 0, 1]], b"x", False)
    store.close()
    assert os.listdir(tmp_path / "cache") == [digest]


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_compression_only_when_the_link_is_slower_than_zlib(monkeypatch):
    from remoteproc import pkgtransfer

    clock = _Clock()
    monkeypatch.setattr(pkgtransfer.time, "monotonic", clock)
    raw = (b"def f(x):\n    return x * 2\n" * 40000)[:1 << 20]     # compresses well
    taken = [0]
    squeeze = pkgtransfer.Squeeze(lambda: taken[0])
    assert squeeze.encode(raw) == (raw, False)          # too early to know the link: stored
    squeeze.zlib_rate, squeeze.ratio = 50e6, 0.2         # (as a probe measures them: 50 MB/s, 5:1)
    for _ in range(5):                                   # a fast link: 1 GB/s
        clock.now += 0.2
        taken[0] += 200_000_000
        assert squeeze.encode(raw)[1] is False
    for _ in range(5):                                   # then a slow one: 1 MB/s
        clock.now += 0.2
        taken[0] += 200_000
        blob, packed = squeeze.encode(raw)
    assert packed and len(blob) < len(raw) // 4
    import zlib

    assert zlib.decompress(blob) == raw


def test_the_agent_answers_every_name_waiting_for_one_entry(tmp_path):
    """Two top-level names of one distribution asked while its entry is on its way: one
    fetch, and both names are answered when it lands."""
    from remoteproc.agent import supervisor

    sup = supervisor.Supervisor.__new__(supervisor.Supervisor)
    sup.pkgs = pkgcache.Store(str(tmp_path / "cache"))
    sup.fetching, sup.modules, sup.waiting, sup.import_socks, sup.host = {}, {}, {}, {}, "h"
    sent = []
    sup.control = lambda msg, blob=b"": sent.append(msg)
    h = pkgcache.Hasher()
    h.file("a/__init__.py", 0o644, 3)
    h.data(b"A=1")
    digest = h.hexdigest()
    for name in ("a", "b"):
        dist = {"hash": digest, "name": "ab", "cap": 1 << 30}
        sup._modules_arrived({"name": name, "modules": {name: {"dist": dist}}})
    assert sent == [{"op": "fetch", "hash": digest}]
    assert "a" not in sup.modules and "b" not in sup.modules
    sup._package_piece("pkg", {"hash": digest, "parts": [["a/__init__.py", 0o644, 3, 0, 3]]}, b"A=1")
    sup._package_piece("pkg-end", {"hash": digest}, b"")
    assert sup.modules["a"] == sup.modules["b"] == {"path": str(tmp_path / "cache" / digest)}
