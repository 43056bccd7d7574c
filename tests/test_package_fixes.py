"""What the user sees when a package or a pool worker cannot go where it was sent.

* A C extension built in place for the stable ABI (``build_ext --inplace`` with ``py_limited_api``:
  an ``.abi3.so`` and no wheel's tags) says nothing of the oldest Python it loads on: it goes to
  our Python and newer ones, as a ``cpXY-abi3`` wheel of our X.Y would, and an older host's refusal
  names the host, the package, both Pythons and the fix (it went, and failed there with a bare
  ``undefined symbol: PyType_GetName``).
* A pool worker that cannot start says why in the exception (its stderr's last lines), not only on
  a stderr that pytest, cron or a logging setup may have taken.
* The ``pip install`` a fix suggests runs the host's Python as the user reached it: their python=
  words (a wrapper that sets LD_LIBRARY_PATH) after their setup= lines, not the interpreter's bare
  path, which may not start by itself.
"""

from __future__ import annotations

import os
import shlex
import sys
import uuid

import pytest
from host_python_targets import try_import
from test_host_pythons import host_pythons  # noqa: F401 - the fixture: copies of other CPythons

from remoteproc import Pool, RemoteProcessError, distributions, workers
from remoteproc.relay import client

pytestmark = pytest.mark.timeout(300)

OURS = tuple(sys.version_info[:2])


def _in_place(*files: str) -> distributions.Distribution:
    """A package built in place (no distribution, so no wheel's tags) holding ``files``."""
    return distributions.Distribution(top="fast", name="fast", version="", site="/src/fast",
                                      files=[(f, 0o644, 10, 0) for f in files])


def _cpython(minor: int) -> dict:
    """A host like this machine whose Python is CPython 3.``minor``."""
    ours = distributions.local_abi()
    return dict(ours, libc=list(ours["libc"]), implementation="cpython", version=[3, minor],
                python=[3, minor, 0], suffixes=[".cpython-3%d-%s-linux-gnu.so" % (minor, ours["machine"]),
                                                ".abi3.so", ".so"])


# -- A: an in-place abi3 build goes to our Python and newer ones only ---------------------------------

@pytest.mark.skipif(OURS < (3, 9) or sys.implementation.name != "cpython", reason="needs a CPython 3.9+ here")
def test_an_abi3_extension_built_in_place_is_refused_for_an_older_python_with_the_fix():
    older = OURS[1] - 1
    with pytest.raises(distributions.Unsendable) as info:
        distributions.check(_in_place("fast/__init__.py", "fast/_impl.abi3.so"), _cpython(older), "rp@h",
                            "python3.%d" % older)
    said = str(info.value)
    assert "'fast' (fast) to rp@h" in said and "fast/_impl.abi3.so" in said
    assert "stable ABI of CPython %d.%d" % OURS in said and "cpython 3.%d on" % older in said
    assert "Fix: install fast on the host with its own Python (`python3.%d -m pip install --user .`" % older in said
    assert "Py_LIMITED_API=0x03%02x0000" % older in said and "cp3%d-abi3 wheel" % older in said
    assert "run on that host a CPython %d.%d or later (the python= option)" % OURS in said
    # our Python and newer ones load it, as they load a cp3X-abi3 wheel of ours
    for minor in (OURS[1], OURS[1] + 1, OURS[1] + 2):
        distributions.check(_in_place("fast/_impl.abi3.so"), _cpython(minor), "rp@h")
    # a wheel's tag says its oldest Python: that one decides, as before
    wheel = distributions.Distribution(top="fast", name="fast", version="1.0", site="/site", info="fast-1.0.dist-info",
                                       files=[("fast/_impl.abi3.so", 0o644, 10, 0)],
                                       tags=["cp38-abi3-linux_%s" % distributions.local_abi()["machine"]])
    distributions.check(wheel, _cpython(older), "rp@h")


@pytest.fixture
def abi3_in_place(tmp_path, monkeypatch) -> str:
    """The name of a package on sys.path built in place for the stable ABI: ``NAME/_impl.abi3.so``, no
    distribution (its bytes are no extension: it is refused before it is sent, or fails to load)."""
    name = "rpfix_abi3_" + uuid.uuid4().hex[:8]
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from ._impl import tname\n")
    (pkg / "_impl.c").write_text("/* built with: python setup.py build_ext --inplace (py_limited_api) */\n")
    (pkg / "_impl.abi3.so").write_bytes(b"\x7fELF not really\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.skipif(OURS <= (3, 9), reason="the host's Python must be older than ours")
def test_an_older_host_refuses_an_abi3_extension_built_in_place_here(host_pythons, plain_user_host,  # noqa: F811
                                                                    plain_user_options, abi3_in_place):
    """The audit's case: built in place by CPython 3.11, sent to a 3.9 host (spawn mode), where it failed
    at its import with ``undefined symbol: PyType_GetName`` and nothing else."""
    from remote_call import call

    wrapper, full = host_pythons.get("3.9")
    kind, said = call(plain_user_host, dict(plain_user_options, python=wrapper), try_import, abi3_in_place)
    assert kind == "ImportError", said
    assert "cannot send '%s._impl' (%s) to %s" % (abi3_in_place, abi3_in_place, plain_user_host) in said
    assert "%s/_impl.abi3.so was built here in place" % abi3_in_place in said
    assert "stable ABI of CPython %d.%d" % OURS in said and "the host runs cpython 3.9 on" in said
    assert "Py_LIMITED_API=0x03090000" in said and "CPython %d.%d or later (the python= option)" % OURS in said


# -- B: a pool worker that cannot start says why -------------------------------------------------------

def test_last_words_are_the_exception_and_what_follows_it_bounded():
    said = ("some output\nremoteproc: the remote child could not start:\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in <module>\n    import fast\nImportError: cannot send package \'fast\'. '
            "Fix: install it\nremoteproc: h: this host runs Python 3.9\n\n")
    assert workers.last_words(said) == ("ImportError: cannot send package 'fast'. Fix: install it\n"
                                        "remoteproc: h: this host runs Python 3.9")
    assert workers.last_words("") == ""
    long = workers.last_words("ValueError: " + "x" * 10000 + " the end")
    assert len(long) <= workers.LAST_CHARS and long.startswith("ValueError: xxx") and long.endswith(" the end")
    assert workers.last_words("\n".join("line %d" % i for i in range(10))) == "line 7\nline 8\nline 9"


def test_a_pool_worker_that_cannot_start_says_why_in_the_exception(plain_user_host, plain_user_options, tmp_path,
                                                                   monkeypatch):
    """The audit's case: the worker's module imports a package the host cannot take; its ImportError (what
    to install, and how) was on stderr only, and the exception said "see its stderr above"."""
    tag = uuid.uuid4().hex[:8]
    data, init = "rpfix_data_" + tag, "rpfix_init_" + tag
    (tmp_path / data).mkdir()
    (tmp_path / data / "__init__.py").write_text("VALUE = 1\n")
    (tmp_path / data / "table.dat").write_text("data\n")      # (files on the host: the cache, which is off)
    (tmp_path / (init + ".py")).write_text("import %s\n\n\ndef init():\n    pass\n" % data)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        initializer = __import__(init).init
        with pytest.raises(RemoteProcessError) as info:
            Pool(plain_user_host, processes_per_host=1, initializer=initializer,
                 **dict(plain_user_options, cache_size=0))
    finally:
        sys.modules.pop(init, None)
        sys.modules.pop(data, None)
    said = str(info.value)
    assert "a pool worker ended (exitcode 1) before it was ready" in said, said
    assert "ImportError: cannot send package %r" % data in said and "cache_size=0" in said and "Fix:" in said
    assert "see its stderr above" not in said and "Traceback" not in said and len(said) < 2500


# -- C: the fix's pip runs the host's Python as the user reached it -------------------------------------

def test_the_hosts_python_in_a_fix_is_the_users_words_after_their_setup_lines():
    assert distributions.host_python("python=env X=1 ~/py/python3", "/opt/py/bin/python3.13") == \
        "env X=1 ~/py/python3"
    assert distributions.host_python("PATH", "/opt/my py/bin/python3") == "'/opt/my py/bin/python3'"
    assert distributions.host_python("python=python3.12", "/usr/bin/python3.12",
                                     ("module load python/3.12", "export A=1")) == \
        "module load python/3.12 && export A=1 && python3.12"
    assert distributions.host_python("pyenv", None, ()) == "python3"


@pytest.mark.parametrize("how", ["python=", "setup="])
def test_a_fix_installs_with_the_python_the_user_named(host_pythons, plain_user_host, plain_user_options,  # noqa: F811
                                                        tmp_path, monkeypatch, how):
    """python= a wrapper (LD_LIBRARY_PATH for a Python of a module system): the fix said the interpreter's
    own path (``.../bin/python3.9 -m pip install``), which does not start without it."""
    from remote_call import call

    name = "rpfix_data_" + uuid.uuid4().hex[:8]
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("VALUE = 1\n")
    (tmp_path / name / "table.dat").write_text("data\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    wrapper, _full = host_pythons.get("3.9")
    real = os.path.join(os.path.dirname(wrapper), "bin", "python3.9")
    if how == "python=":
        options, words = dict(plain_user_options, python=wrapper), wrapper
    else:       # (the wrapper's directory first on PATH, by a setup= line: its python3 found there)
        line = "PATH=%s:$PATH; export PATH" % shlex.quote(os.path.dirname(wrapper))
        options, words = dict(plain_user_options, setup=line, python="python3"), "%s && python3" % line
    try:
        kind, said = call(plain_user_host, dict(options, cache_size=0), try_import, name)
    finally:
        client.shutdown()       # (the agents of these python=, setup= values go with their relay)
    assert kind == "ImportError" and "cache_size=0" in said, said
    assert "`%s -m pip install --user ." % words in said, said
    assert "%s -m pip" % real not in said
