"""Packages follow, as real-world packages use them: a remote child on a host that has only
its system python3 imports what the user has installed, and the package behaves there as it
does locally (its metadata, its data files, its C extension, its sibling modules).

Each distribution built here is a small stand-in, named after the real package whose
behaviour it copies (paramiko and prompt_toolkit read their own version from their metadata
at import; cffi's package checks that its ``_cffi_backend`` module is of its own release;
``pip install -e`` of a project with a C extension); msgpack and tzdata are the real ones.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import uuid

import pytest
from conftest import _unavailable
from editable import install_editable
from test_packages import _call

from remoteproc.relay import client

pytestmark = [pytest.mark.timeout(300), pytest.mark.one_transport]

EXT = sysconfig.get_config_var("EXT_SUFFIX")


# -- targets (run remotely) -----------------------------------------------------------------

def eval_job(conn, code, expr):
    """Run ``code``, then send ("ok", eval(expr)) or the exception's type name and message."""
    ns: dict = {}
    try:
        exec(code, ns)
        conn.send(("ok", eval(expr, ns)))
    except Exception as exc:
        conn.send((type(exc).__name__, str(exc)))


def msgpack_tzdata_job(conn):
    import datetime
    import importlib.metadata
    import importlib.resources
    import zoneinfo

    import msgpack
    import tzdata

    packed = msgpack.packb({"a": [1, 2.5, "x"]})
    zone = zoneinfo.ZoneInfo("Asia/Kolkata")
    conn.send({
        "msgpack": msgpack.unpackb(packed), "packer": msgpack.Packer.__module__,
        "msgpack_version": importlib.metadata.version("msgpack"),
        "tzdata_file": tzdata.__file__, "tzdata_version": importlib.metadata.version("tzdata"),
        "offset": datetime.datetime(2024, 1, 1, tzinfo=zone).utcoffset().total_seconds(),
        "zone_bytes": len(importlib.resources.files("tzdata.zoneinfo.Asia").joinpath("Kolkata").read_bytes()),
    })


# -- distributions built here -------------------------------------------------------------------

def _dist(site, name: str, files: dict[str, str | bytes], version: str = "1.0", extra_info: dict | None = None):
    """Install distribution ``name`` (files: rel -> content) into ``site`` with a dist-info
    (METADATA, WHEEL py3-none-any, RECORD listing everything, and ``extra_info`` files)."""
    os.makedirs(site, exist_ok=True)
    info = "%s-%s.dist-info" % (name, version)
    meta = {"METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version),
            "WHEEL": "Wheel-Version: 1.0\nTag: py3-none-any\n", **(extra_info or {})}
    everything = dict(files, **{"%s/%s" % (info, k): v for k, v in meta.items()})
    for rel, content in everything.items():
        full = os.path.join(site, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
    with open(os.path.join(site, info, "RECORD"), "w") as f:
        f.write("".join("%s,,\n" % rel for rel in sorted(everything)) + "%s/RECORD,,\n" % info)
    return str(site)


@pytest.fixture
def names():
    """Fresh top-level names; their modules are forgotten here afterwards."""
    made: list[str] = []

    def new(prefix: str) -> str:
        made.append(prefix + "_" + uuid.uuid4().hex[:8])
        return made[-1]

    yield new
    for mod in [m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in made)]:
        del sys.modules[mod]


C_SOURCE = """
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&mod); }
"""


def _build_extension(pkg_dir: str) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test's C extension")
    src = os.path.join(pkg_dir, "_speed.c")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-I", sysconfig.get_paths()["include"], src, "-o",
                    os.path.join(pkg_dir, "_speed" + EXT)], check=True, capture_output=True, timeout=120)


# -- pure distributions: their metadata --------------------------------------------------------------

def test_a_pure_package_that_reads_its_own_version_at_import(plain_user_host, own_cache, tmp_path, monkeypatch,
                                                             names, fresh):
    name = names("rpmeta")
    init = "import importlib.metadata\n__version__ = importlib.metadata.version(%r)\n" % name
    site = _dist(tmp_path / "site", name, {name + "/__init__.py": init}, version="3.1.4", extra_info={
        "entry_points.txt": "[rpmeta.plugins]\n%s = %s:__version__\n" % (name, name)})
    monkeypatch.syspath_prepend(site)
    options, _root = own_cache
    assert _call(plain_user_host, options, eval_job, "import %s as m" % name, "m.__version__") == ("ok", "3.1.4")
    assert _call(plain_user_host, options, eval_job, "import importlib.metadata as md; import %s" % name,
                 "[e.name for e in md.entry_points(group='rpmeta.plugins')]") == ("ok", [name])


def test_paramiko_imports_on_a_host_without_it(plain_user_host, own_cache, fresh):
    import paramiko

    options, _root = own_cache
    kind, where = _call(plain_user_host, options, eval_job, "import importlib.machinery as im",
                        "im.PathFinder.find_spec('paramiko')")
    if where is not None:
        pytest.skip("the host has paramiko itself")
    assert _call(plain_user_host, options, eval_job, "import paramiko", "paramiko.__version__") == (
        "ok", paramiko.__version__)


def test_metadata_of_a_package_not_imported_yet(plain_user_host, own_cache, tmp_path, monkeypatch, names, fresh):
    name = names("rpmetadata")
    site = _dist(tmp_path / "site", name, {name + "/__init__.py": "X = 1\n", name + "/table.dat": "data\n"},
                 version="4.2")
    monkeypatch.syspath_prepend(site)
    options, _root = own_cache
    assert _call(plain_user_host, options, eval_job, "import importlib.metadata as md",
                 "md.version(%r)" % name) == ("ok", "4.2")


def test_a_pure_package_that_discovers_its_plugins_with_pkgutil(plain_user_host, own_cache, tmp_path, monkeypatch,
                                                                names, fresh):
    name = names("rpplugins")
    pkg = tmp_path / "src" / name
    (pkg / "plugins").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugins" / "__init__.py").write_text(textwrap.dedent("""
        import importlib
        import pkgutil

        FOUND = {m.name: importlib.import_module(__name__ + "." + m.name).VALUE
                 for m in pkgutil.iter_modules(__path__)}
    """))
    (pkg / "plugins" / "alpha.py").write_text("VALUE = 1\n")
    (pkg / "plugins" / "beta.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    options, _root = own_cache
    assert importlib.import_module(name + ".plugins").FOUND == {"alpha": 1, "beta": 2}
    assert _call(plain_user_host, options, eval_job, "import %s.plugins as m" % name, "m.FOUND") == (
        "ok", {"alpha": 1, "beta": 2})


# -- packages through the host's cache --------------------------------------------------------------

def test_pkg_resources_imported_first_sees_a_package_from_the_cache(plain_user_host, own_cache, tmp_path,
                                                                    monkeypatch, names, fresh):
    name = names("rppkgres")
    site = _dist(tmp_path / "site", name, {name + "/__init__.py": "X = 1\n", name + "/table.dat": "data\n"},
                 version="2.5")
    monkeypatch.syspath_prepend(site)
    options, _root = own_cache
    code = "import warnings\nwarnings.simplefilter('ignore')\nimport pkg_resources\nimport %s\n" % name
    assert _call(plain_user_host, options, eval_job, code, "pkg_resources.get_distribution(%r).version" % name) == (
        "ok", "2.5")


def test_a_distributions_sibling_module_comes_from_its_own_entry(plain_user_host, own_cache, tmp_path,
                                                                 monkeypatch, names, fresh):
    """cffi's case: the distribution has a package (``cffi``, with data files) and a top-level
    backend module (``_cffi_backend``); the host has an older backend alone (Debian's
    python3-cffi-backend).  The package sent must get the backend sent with it."""
    name = names("rpmix")
    backend = "_" + name + "_backend"
    init = ("from %s import VERSION as BACKEND\nif BACKEND != '2.0':\n"
            "    raise Exception('version mismatch: package 2.0, backend %%s' %% BACKEND)\n" % backend)
    site = _dist(tmp_path / "site", name, {name + "/__init__.py": init, name + "/table.dat": "data\n",
                                           backend + ".py": "VERSION = '2.0'\n"}, version="2.0")
    monkeypatch.syspath_prepend(site)
    host_site = tempfile.mkdtemp(prefix="rp-host-site-")        # the host's own, older backend
    try:
        os.chmod(host_site, 0o755)
        with open(os.path.join(host_site, backend + ".py"), "w") as f:
            f.write("VERSION = '1.15'\n")
        os.chmod(os.path.join(host_site, backend + ".py"), 0o644)
        options, _root = own_cache
        options["python"] = options["python"].replace("env ", "env PYTHONPATH=%s " % host_site, 1)
        assert _call(plain_user_host, options, eval_job, "import %s as m" % backend, "m.VERSION") == ("ok", "1.15")
        client.shutdown()       # (a new agent: the package's first import on it)
        assert _call(plain_user_host, options, eval_job, "import %s as m" % name, "m.BACKEND") == ("ok", "2.0")
    finally:
        shutil.rmtree(host_site, ignore_errors=True)


@pytest.fixture
def editable_extension(tmp_path, monkeypatch, names):
    """A project with a C extension and a data file, installed as ``pip install -e`` (setuptools)
    installs one: built in place, on no sys.path entry, found through a finder in sys.meta_path
    whose module holds a MAPPING of name -> directory."""
    name = names("rpeditc")
    root = tmp_path / "project" / name
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text(textwrap.dedent("""
        import os
        from ._speed import answer

        def words():
            with open(os.path.join(os.path.dirname(__file__), "data", "words.txt")) as f:
                return f.read()
    """))
    (root / "data" / "words.txt").write_text("forty-two\n")
    _build_extension(str(root))
    install_editable(monkeypatch, name, root)
    return name


def test_an_editable_project_with_a_c_extension(plain_user_host, own_cache, editable_extension, fresh):
    name = editable_extension
    options, root = own_cache
    kind, got = _call(plain_user_host, options, eval_job, "import %s as m" % name,
                      "(m.answer(), m.words(), m.__file__)")
    assert kind == "ok", got
    value, words, where = got
    assert (value, words) == (42, "forty-two\n") and where.startswith(root + "/")


# -- what works: real packages --------------------------------------------------------------------

def test_msgpack_with_its_c_extension_and_zoneinfo_with_tzdata(plain_user_host, own_cache, fresh):
    """msgpack falls back to pure Python when its C extension does not load: the extension is
    what runs there.  zoneinfo finds its zones in tzdata's package data (importlib.resources,
    in subpackages several levels down), and both distributions' metadata is there."""
    try:
        import msgpack  # noqa: F401
        import tzdata
    except ImportError as exc:
        _unavailable("msgpack and tzdata are in the test extra: %s" % exc)
    import importlib.metadata

    options, root = own_cache
    got = _call(plain_user_host, options, msgpack_tzdata_job)
    assert got["msgpack"] == {"a": [1, 2.5, "x"]} and got["packer"] == "msgpack._cmsgpack"
    assert got["msgpack_version"] == importlib.metadata.version("msgpack")
    assert got["tzdata_file"].startswith(root + "/") and got["tzdata_file"] != tzdata.__file__
    assert got["tzdata_version"] == importlib.metadata.version("tzdata")
    assert got["offset"] == 5.5 * 3600 and got["zone_bytes"] > 0


def crypto_job(conn):
    import cffi
    import cryptography
    from cryptography.fernet import Fernet

    f = Fernet(Fernet.generate_key())
    ffi = cffi.FFI()
    ffi.cdef("int abs(int);")
    conn.send((cryptography.__version__, cryptography.__file__, f.decrypt(f.encrypt(b"secret")), cffi.__version__,
               ffi.dlopen(None).abs(-7)))


def test_cryptography_and_cffi_on_a_host_with_only_the_standard_library(plain_user_host, own_cache, fresh):
    """cryptography's abi3 wheel (cp3x-abi3: CPython 3.x or later) with its Rust extension, and
    cffi, whose distribution has a second top-level module (the _cffi_backend extension), on a
    python3 -S: no site directory at all, so nothing of the host's own is in the way."""
    import cffi
    import cryptography

    options, root = own_cache
    options["python"] += " -S"
    version, where, plain, cffi_version, value = _call(plain_user_host, options, crypto_job)
    assert (version, plain, cffi_version, value) == (cryptography.__version__, b"secret", cffi.__version__, 7)
    assert where.startswith(root + "/")


# -- the relay's side, without a host -------------------------------------------------------------

def test_the_relay_finds_a_distributions_metadata_and_an_editable_package(tmp_path):
    from remoteproc import distributions, modules

    site = _dist(tmp_path / "site", "Rp.Meta_Dist", {"rp_meta/__init__.py": "", "rp_meta/sub.py": "",
                                                     "rp_meta/inner/__init__.py": "", "rp_solo.py": ""},
                 version="1.5", extra_info={"entry_points.txt": "[g]\nx = rp_meta:f\n"})
    assert distributions.find_info("rp-meta.dist", ["relative", site]) == (site, "Rp.Meta_Dist-1.5.dist-info")
    assert distributions.find_info("rp_meta_dis", [site]) is None
    info = "Rp.Meta_Dist-1.5.dist-info"
    assert sorted(distributions.top_names(site, info)) == ["rp_meta", "rp_solo"]
    files = distributions.info_files(site, info)
    assert files["entry_points.txt"] == "[g]\nx = rp_meta:f\n" and "Version: 1.5" in files["METADATA"]
    assert modules._children(os.path.join(site, "rp_meta")) == [["inner", True], ["sub", False]]

    root = tmp_path / "proj" / "rp_edit"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    unit = distributions.locate("rp_edit", [site], {"rp_edit": str(root)})
    assert unit is not None and (unit.name, unit.site, unit.rel, unit.info) == ("rp_edit", str(root.parent),
                                                                               "rp_edit", None)
    assert distributions.locate("rp_edit", [site]) is None
    assert distributions.locate("rp_other", [site], {"rp_other": str(root)}) is None    # (not under its name)
