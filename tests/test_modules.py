"""Module forwarding: the user's own packages run on a host where nothing is installed."""

from __future__ import annotations

import importlib
import importlib.util
import os
import py_compile
import sys
import textwrap
import types
import uuid

import pytest
from editable import install_editable

from remoteproc import Pipe, RemoteProcess, modules

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A fresh package, importable locally only (a unique name per test: agents cache modules)."""
    name = "rpfwd_" + uuid.uuid4().hex[:8]
    root = tmp_path / name
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "VERSION = 3\n",
        "helpers.py": "def triple(x):\n    return 3 * x\n",
        "jobs.py": """
            from . import helpers
            from .things import Thing

            def crunch(conn, x):
                conn.send(helpers.triple(x))

            def lazy(conn):
                from .sub import deep          # imported only when the target runs
                conn.send(deep.answer())

            def roundtrip(conn, thing):
                got = conn.recv()              # a Thing sent by the parent: unpickled remotely
                conn.send(Thing(thing.value + got.value))

            def where(conn):
                import sys
                conn.send(sys.modules[__name__].__file__)

            def boom():
                raise RuntimeError("raised in a forwarded module")

            def compiled_before_import(conn, name):
                import sys
                importer = sys.meta_path[-1]
                conn.send("code" in (importer.cache.get(name) or {}))

            def needs_extension():
                from . import fastmath  # noqa: F401
        """,
        "things.py": """
            class Thing:
                def __init__(self, value):
                    self.value = value

                def __eq__(self, other):
                    return isinstance(other, Thing) and other.value == self.value
        """,
        "sub/__init__.py": "",
        "sub/deep.py": "from .. import VERSION\n\ndef answer():\n    return VERSION * 14\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name, importlib.import_module(name + ".jobs"), str(root)
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def _run(host, options, target, *args):
    parent, child = Pipe()
    p = RemoteProcess(host, target=target, args=(child, *args), **options)
    p.start()
    child.close()
    return p, parent


def test_target_from_a_package_with_relative_imports(plain_user_host, plain_user_options, package):
    _name, jobs, _root = package
    p, conn = _run(plain_user_host, plain_user_options, jobs.crunch, 14)
    assert conn.recv() == 42
    p.join(30)
    assert p.exitcode == 0


def test_lazy_import_inside_the_target(plain_user_host, plain_user_options, package):
    _name, jobs, _root = package
    p, conn = _run(plain_user_host, plain_user_options, jobs.lazy)
    assert conn.recv() == 42
    p.join(30)
    assert p.exitcode == 0


def test_class_passed_and_returned_in_messages(plain_user_host, plain_user_options, package):
    name, jobs, _root = package
    Thing = sys.modules[name + ".things"].Thing
    p, conn = _run(plain_user_host, plain_user_options, jobs.roundtrip, Thing(40))
    conn.send(Thing(2))
    assert conn.recv() == Thing(42)
    p.join(30)
    assert p.exitcode == 0


def test_forwarded_code_keeps_its_file_name(plain_user_host, plain_user_options, package, capfd):
    _name, jobs, root = package
    p, conn = _run(plain_user_host, plain_user_options, jobs.where)
    assert conn.recv() == os.path.join(root, "jobs.py")
    p.join(30)
    p = RemoteProcess(plain_user_host, target=jobs.boom, **plain_user_options)
    p.start()
    p.join(30)
    err = capfd.readouterr().err
    assert p.exitcode == 1
    lines = open(os.path.join(root, "jobs.py")).read().splitlines()
    lineno = next(i for i, text in enumerate(lines, 1) if "raise RuntimeError" in text)
    assert 'jobs.py", line %d, in boom' % lineno in err
    assert 'raise RuntimeError("raised in a forwarded module")' in err


def test_c_extension_fails_clearly_when_the_package_cache_is_off(plain_user_host, plain_user_options, package,
                                                                 capfd):
    name, jobs, root = package
    # A C extension (by its file name: it is never loaded) that the remote host lacks. With the
    # package cache on, the package would go there (tests/test_packages.py); cache_size=0 turns
    # that off, and then the package is refused whole, at its import, saying so.
    with open(os.path.join(root, "fastmath" + importlib.machinery.EXTENSION_SUFFIXES[0]), "wb") as f:
        f.write(b"\x7fELF not really")
    p = RemoteProcess(plain_user_host, target=jobs.needs_extension, **dict(plain_user_options, cache_size=0))
    p.start()
    p.join(30)
    err = capfd.readouterr().err
    assert p.exitcode == 1
    assert "ImportError" in err and "a C extension (%s/fastmath" % name in err
    assert "cache_size=0" in err and "127.0.0.1" in err and "install %s there" % name in err


def import_zipped(conn):
    try:
        import zipped_mod  # noqa: F401
        conn.send("imported")
    except ImportError as exc:
        conn.send(str(exc))


def test_a_module_from_a_zip_on_sys_path_says_so_not_to_pip_install_it(plain_user_host, plain_user_options,
                                                                         tmp_path, monkeypatch):
    """Found by a shipping audit: it said "install zipped_mod there (pip install zipped_mod)", for a
    module that is no package on any index."""
    import zipfile

    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_mod.py", "VALUE = 1\n")
    monkeypatch.syspath_prepend(str(archive))
    p, parent = _run(plain_user_host, plain_user_options, import_zipped)
    said = parent.recv() if parent.poll(60) else "no answer"
    p.join(30)
    assert "is in a zip file (%s" % archive in said and "copy the zip to" in said, said
    assert "pip install" not in said


def test_the_fix_named_for_a_zip_on_sys_path_works(plain_user_host, plain_user_options, tmp_path, monkeypatch):
    """Found by an audit: the fix named was env={'PYTHONPATH': ...}, which sets the variable in a child
    forked from an agent whose interpreter started before, so its sys.path never had the zip. The
    message names setup='export PYTHONPATH=...' (or python='env PYTHONPATH=... python3'): both work."""
    import shutil
    import tempfile
    import zipfile

    name = "rpzip_" + uuid.uuid4().hex[:8]       # (unique: a new agent per setup=, but forwarded names are cached)
    archive = tmp_path / "deps.zip"            # (the plain user cannot read tmp_path: as on a host without it)
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(name + ".py", "VALUE = 42\n")
    monkeypatch.syspath_prepend(str(archive))
    copy_dir = tempfile.mkdtemp(prefix="rp-zip-")  # the copy "on the host", which the account can read
    try:
        os.chmod(copy_dir, 0o755)
        copy = os.path.join(copy_dir, "deps.zip")
        shutil.copy(archive, copy)
        os.chmod(copy, 0o644)

        def attempt(**extra):
            p, parent = _run(plain_user_host, dict(plain_user_options, **extra), import_named, name)
            said = parent.recv() if parent.poll(60) else "no answer"
            p.join(30)
            return said

        said = attempt()
        assert "is in a zip file (%s" % archive in said and "setup='export PYTHONPATH=" in said, said
        assert "env={'PYTHONPATH'" not in said, said
        assert attempt(env={"PYTHONPATH": copy}) != 42      # (as the docs say: env= is too late for imports)
        assert attempt(setup="export PYTHONPATH=%s" % copy) == 42
        assert attempt(python="env PYTHONPATH=%s python3" % copy) == 42
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)


def import_named(conn, name):
    try:
        conn.send(importlib.import_module(name).VALUE)
    except ImportError as exc:
        conn.send(str(exc))


def test_unknown_module_is_not_found(plain_user_host, plain_user_options):
    def try_import(conn):
        try:
            import rp_module_that_exists_nowhere  # noqa: F401
        except ModuleNotFoundError as exc:
            conn.send(str(exc))

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        p, conn = _run(plain_user_host, plain_user_options, try_import)
        assert "rp_module_that_exists_nowhere" in conn.recv()
        p.join(30)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert p.exitcode == 0


def test_a_module_found_nowhere_is_found_once_the_program_adds_it_to_sys_path(plain_user_host,
                                                                              plain_user_options, tmp_path,
                                                                              monkeypatch):
    """A name found nowhere was remembered so by the host's agent for as long as the connection
    lasted: a program (a notebook) that then added the missing directory to ``sys.path``, or wrote
    the missing module into a directory already there, still got ModuleNotFoundError in every
    new process on that host, where a new process of multiprocessing finds it.  Fixed in
    relay/link.py and agent/supervisor.py (``recheck``: when the user's sys.path or a directory
    on it changed since the last start, the agent forgets what was found nowhere)."""
    from host_python_targets import try_import
    from remote_call import call

    late, written = "rplate_" + uuid.uuid4().hex[:8], "rpwritten_" + uuid.uuid4().hex[:8]
    later, here = tmp_path / "later", tmp_path / "here"
    later.mkdir()
    here.mkdir()
    (later / (late + ".py")).write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(here))
    for name in (late, written):
        assert call(plain_user_host, plain_user_options, try_import, name)[0] == "ModuleNotFoundError"
    (here / written).mkdir()
    (here / written / "__init__.py").write_text("X = 2\n")
    got = call(plain_user_host, plain_user_options, try_import, written)
    assert got == ("imported", str(here / written / "__init__.py"))
    monkeypatch.syspath_prepend(str(later))
    assert call(plain_user_host, plain_user_options, try_import, late) == ("imported", str(later / (late + ".py")))


def test_find_serves_only_modules_on_the_given_path(tmp_path):
    (tmp_path / "onpath.py").write_text("X = 1\n")
    found = modules.find("onpath", [str(tmp_path)], "h")
    assert found["onpath"]["src"] == "X = 1\n"
    # Not on the given path: nothing, even though the file exists elsewhere.
    assert modules.find("onpath", [str(tmp_path / "elsewhere")], "h") == {"onpath": None}
    # Names that are not dotted identifiers are refused: no request can name a file.
    for bad in ("../etc/passwd", "/etc/passwd", "a..b", "", "os.path/../x"):
        entry = modules.find(bad, [str(tmp_path)], "h")[bad]
        assert "error" in entry
    assert modules.find("etc.passwd", ["/"], "h") == {"etc.passwd": None}


def test_a_module_that_is_not_python_source_is_refused_with_what_to_install(tmp_path):
    """A compiled-only module (a legacy ``mod.pyc``) or a lone C extension cannot go from memory:
    its entry is the ImportError the child raises, naming the file, the host and what to install."""
    (tmp_path / "compiledonly.py").write_text("X = 1\n")
    py_compile.compile(str(tmp_path / "compiledonly.py"), str(tmp_path / "compiledonly.pyc"))
    (tmp_path / "compiledonly.py").unlink()
    (tmp_path / ("fastext" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"\x7fELF not really")
    for name, what in (("compiledonly", "not Python source"), ("fastext", "a C extension")):
        error = modules.find(name, [str(tmp_path)], "u@h")[name]["error"]
        assert error.startswith("module %r is %s (%s/%s" % (name, what, tmp_path, name)), error
        assert "cannot be forwarded to u@h; install %s there" % name in error


def test_find_bundles_a_package(tmp_path):
    pkg = tmp_path / "bundled"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("A = 1\n")
    (pkg / "inner" / "__init__.py").write_text("")
    (pkg / "inner" / "b.py").write_text("B = 2\n")
    (pkg / "notapkg").mkdir()
    (pkg / "notapkg" / "c.py").write_text("C = 3\n")
    found = modules.find("bundled.a", [str(tmp_path)], "h")
    assert set(found) == {"bundled", "bundled.a", "bundled.inner", "bundled.inner.b"}
    assert found["bundled"]["pkg"] is True and found["bundled.a"]["pkg"] is False


def _import_value(conn, module):
    conn.send(importlib.import_module(module).VALUE)


def test_a_subdirectory_without_init_py_is_imported_as_locally(plain_user_host, plain_user_options, tmp_path,
                                                                 monkeypatch):
    """A directory without ``__init__.py`` inside a package (``proj/utils/``, a common slip that
    Python 3 imports as a namespace package), and one namespace package inside another: the
    relay, which never imports the parent package, finds them (PathFinder raised a KeyError
    for the parent missing from its ``sys.modules``: "cannot forward 'proj.utils'")."""
    tag = uuid.uuid4().hex[:8]
    regular, namespace = "rpreg_" + tag, "rpns_" + tag
    (tmp_path / regular / "utils").mkdir(parents=True)
    (tmp_path / regular / "__init__.py").write_text("")
    (tmp_path / regular / "utils" / "helpers.py").write_text("VALUE = 'in a plain directory'\n")
    (tmp_path / namespace / "inner").mkdir(parents=True)
    (tmp_path / namespace / "inner" / "mod.py").write_text("VALUE = 'two namespace levels down'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    for module, value in ((regular + ".utils.helpers", "in a plain directory"),
                          (namespace + ".inner.mod", "two namespace levels down")):
        p, conn = _run(plain_user_host, plain_user_options, _import_value, module)
        assert conn.recv() == value
        p.join(30)
        assert p.exitcode == 0
    assert modules.find(regular + ".utils", [str(tmp_path)], "h")[regular + ".utils"]["portions"] == \
        [str(tmp_path / regular / "utils")]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "latin-1", "cp1252"])
def test_a_module_is_decoded_as_python_decodes_it(plain_user_host, plain_user_options, tmp_path, monkeypatch,
                                                   encoding):
    """A module saved with a UTF-8 byte order mark, or in another encoding named by its PEP 263
    coding line, imports on the host as here (the mark was a SyntaxError there, a Latin-1 byte
    an undecodable surrogate: "surrogates not allowed")."""
    name = "rpenc_" + uuid.uuid4().hex[:8]
    cookie = "utf-8" if encoding == "utf-8-sig" else encoding
    text = "# -*- coding: %s -*-\r\nVALUE = 'caf\u00e9 \u00bd'\r\n" % cookie
    (tmp_path / (name + ".py")).write_bytes(text.encode(encoding))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert importlib.import_module(name).VALUE == "caf\u00e9 \u00bd"
    p, conn = _run(plain_user_host, plain_user_options, _import_value, name)
    assert conn.recv() == "caf\u00e9 \u00bd"
    p.join(30)
    assert p.exitcode == 0
    del sys.modules[name]


@pytest.fixture
def editable(tmp_path, monkeypatch):
    """A package installed as ``pip install -e`` (setuptools) installs one: on no sys.path entry,
    found through a finder in sys.meta_path whose module holds a MAPPING of name -> directory."""
    name = "rpedit_" + uuid.uuid4().hex[:8]
    root = tmp_path / "src" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("from remoteproc import Pipe  # (the package imports ours too)\n")
    (root / "work.py").write_text("def double(conn, n):\n    conn.send((n * 2, __name__))\n")
    install_editable(monkeypatch, name, root)
    yield name, root
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_find_serves_a_package_installed_in_editable_mode(editable):
    name, root = editable
    roots = modules.editable_roots()
    assert roots[name] == str(root)
    assert modules.find(name + ".work", [], "h") == {name + ".work": None}      # on no path entry
    found = modules.find(name + ".work", [], "h", roots)
    assert set(found) == {name, name + ".work"} and found[name]["pkg"] is True
    assert found[name + ".work"]["file"] == str(root / "work.py")
    single = root.parent / "rpsingle.py"        # a one-module project, and a mapping to nothing
    single.write_text("X = 1\n")
    mapping = {"rpsingle": str(single), "rpgone": str(root.parent / "gone")}
    assert modules.find("rpsingle", [], "h", mapping)["rpsingle"]["src"] == "X = 1\n"
    assert modules.find("rpgone", [], "h", mapping) == {"rpgone": None}


def test_the_roots_sent_follow_a_finder_that_took_a_collected_ones_place(monkeypatch):
    """A project's finder can leave ``sys.meta_path`` (a monkeypatch undone, a plugin unloaded)
    and another take its place, even at the same address once the first is collected.  The
    roots sent with a start are the new ones: a cache keyed by the finders' ids sent the old
    mapping, and the new project was not found on the host (ModuleNotFoundError)."""
    from remoteproc.relay import client

    def finder_class(name: str) -> type:
        module = types.ModuleType("__editable___%s_0_1_finder" % name)
        module.MAPPING = {name: "/src/" + name}      # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        return type("Finder", (), {"__module__": module.__name__})

    base = list(sys.meta_path)
    monkeypatch.setattr(sys, "meta_path", list(base))     # (put back at the end; changed in place)
    old_class, new_class = finder_class("rpold"), finder_class("rpnew")
    reused = False
    for _attempt in range(20):      # (the new finder usually gets the old one's address at once)
        old = old_class()
        old_id = id(old)
        sys.meta_path[:] = base + [old]
        assert client._editable_roots().get("rpold") == "/src/rpold"
        sys.meta_path[:] = base
        del old
        new = new_class()
        sys.meta_path[:] = base + [new]
        roots = client._editable_roots()
        assert roots.get("rpnew") == "/src/rpnew" and "rpold" not in roots, roots
        reused = reused or id(new) == old_id
        sys.meta_path[:] = base
        del new
    assert reused, "the case was not made: no new finder took a collected one's address"


def test_a_target_from_a_package_installed_in_editable_mode(plain_user_host, plain_user_options, editable):
    """pip install -e puts a project on no sys.path entry: its modules (and ours, which it
    imports, installed the same way on a developer's machine) are forwarded all the same."""
    name, _root = editable
    work = importlib.import_module(name + ".work")
    p, conn = _run(plain_user_host, plain_user_options, work.double, 21)
    assert conn.recv() == (42, name + ".work")
    p.join(60)
    assert p.exitcode == 0


def test_a_test_module_that_imports_pytest_and_remoteproc(plain_user_host, plain_user_options, tmp_path,
                                                          monkeypatch):
    """Targets defined in a user's test module travel by reference: the module is imported
    on the remote side, with its own imports of pytest and remoteproc forwarded."""
    name = "test_userstyle_" + uuid.uuid4().hex[:8]
    (tmp_path / (name + ".py")).write_text(textwrap.dedent("""
        import pytest
        from remoteproc import Pipe, RemoteProcess

        def work(conn, n):
            conn.send((n * 2, pytest.__name__, RemoteProcess.__name__, Pipe.__name__))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    mod = importlib.import_module(name)
    try:
        p, conn = _run(plain_user_host, plain_user_options, mod.work, 21)
        assert conn.recv() == (42, "pytest", "RemoteProcess", "Pipe")
        p.join(60)
        assert p.exitcode == 0
    finally:
        del sys.modules[name]


def test_later_children_inherit_compiled_modules(plain_user_host, plain_user_options, package):
    """The first child compiles a forwarded module and gives the code to the agent; children
    forked later neither ask for it nor compile it."""
    name, jobs, _root = package
    p, conn = _run(plain_user_host, plain_user_options, jobs.crunch, 1)
    assert conn.recv() == 3
    p.join(30)
    p, conn = _run(plain_user_host, plain_user_options, jobs.compiled_before_import, name + ".helpers")
    assert conn.recv() is True
    p.join(30)
    assert p.exitcode == 0



PLUGIN_PROGRAM = """
import importlib.util, json, sys, types
from remoteproc import Executor, Pipe, RemoteProcess

# a plugin loaded from its file (on no sys.path entry), and a module made at run time
spec = importlib.util.spec_from_file_location("rp_plugin_mod", sys.argv[2])
plugin = importlib.util.module_from_spec(spec)
sys.modules["rp_plugin_mod"] = plugin
spec.loader.exec_module(plugin)
made = types.ModuleType("rp_made_mod")
exec("def twice(x):\\n    return 2 * x\\n", made.__dict__)
sys.modules["rp_made_mod"] = made

if __name__ == "__main__":
    host, options = json.loads(sys.argv[1])
    parent, child = Pipe()
    p = RemoteProcess(host, target=plugin.send_hello, args=(child,), **options)
    p.start()
    got = [parent.recv()]
    p.join(60)
    with Executor([host], 1, **options) as ex:
        got += [ex.submit(plugin.hello).result(60), ex.submit(made.twice, 21).result(60)]
    print(json.dumps([p.exitcode] + got))
"""


def test_a_plugin_loaded_from_its_file_and_a_module_made_at_run_time_reach_the_host(plain_user_host,
                                                                                     plain_user_options, tmp_path):
    """Found by an audit: their functions went by reference, and the host's import failed with a bare
    ModuleNotFoundError (a local fork inherits them); they go by value now, as registered modules do."""
    import json
    import subprocess

    (tmp_path / "plugins").mkdir()
    plugin = tmp_path / "plugins" / "rp_plugin_mod.py"
    plugin.write_text("def hello():\n    return 'plugin-hello'\n\n\ndef send_hello(conn):\n    conn.send(hello())\n")
    program = tmp_path / "plugin_program.py"
    program.write_text(PLUGIN_PROGRAM)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(modules.__file__))))
    out = subprocess.run([sys.executable, str(program), json.dumps([plain_user_host, plain_user_options]),
                          str(plugin)], capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [0, "plugin-hello", "plugin-hello", 42]


def test_a_plugin_loaded_from_its_file_is_named_for_a_host_on_another_python(tmp_path):
    """Another Python takes everything by reference (spawn): the refusal says why the host cannot import it."""
    from remoteproc import reduction

    (tmp_path / "rp_plugin_two.py").write_text("def hello():\n    return 1\n")
    spec = importlib.util.spec_from_file_location("rp_plugin_two", str(tmp_path / "rp_plugin_two.py"))
    plugin = importlib.util.module_from_spec(spec)
    sys.modules["rp_plugin_two"] = plugin
    try:
        spec.loader.exec_module(plugin)
        why = reduction._not_importable(plugin.hello)
        assert "was loaded from %s, on no sys.path entry" % (tmp_path / "rp_plugin_two.py") in why, why
        assert reduction._not_importable(modules.find) == ""
    finally:
        del sys.modules["rp_plugin_two"]
