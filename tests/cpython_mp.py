"""Run CPython's own ``Lib/test/_test_multiprocessing.py`` test classes with remote processes.

    python3 tests/cpython_mp.py [--type processes|manager] [--only PATTERN] [--local] [-v]

Every test class of the chosen type is run whole, as CPython generates it, with the
mixin's ``Process`` replaced by a ``RemoteProcess`` on a private loopback sshd and
(``processes`` type) Queue, Lock, ..., Value, Array, Pool replaced by remoteproc's.
``--local`` runs the same classes with plain multiprocessing (the baseline).  Prints
one line per test that does not pass and the counts; used by
``tests/test_cpython_multiprocessing.py`` and for the numbers in docs/primitives.md.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RemoteDummyList:
    """For ``_test_multiprocessing._DummyList``, a helper of the Barrier tests that counts in
    shared memory under a multiprocessing Lock: the same count, in a remoteproc Value."""

    def __init__(self):
        import remoteproc

        self._count = remoteproc.Value("i", 0)

    def append(self, _):
        with self._count.get_lock():
            self._count.value += 1

    def __len__(self):
        return self._count.value


def remote_mixins(host: str, options: dict):
    """(processes mixin, manager mixin) whose Process is a RemoteProcess on ``host``."""
    import multiprocessing

    from test import _test_multiprocessing as T

    import remoteproc
    from remoteproc import RemoteProcess

    class _Process(RemoteProcess):
        def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):
            super().__init__(host, group=group, target=target, name=name, args=args, kwargs=kwargs or {},
                             daemon=daemon, **options)

    def _Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None):
        return remoteproc.Pool([host], processes_per_host=processes if processes is not None else 4,
                               initializer=initializer, initargs=initargs, maxtasksperchild=maxtasksperchild,
                               **options)

    class RemoteProcessesMixin(T.ProcessesMixin):
        Process = _Process
        Pool = staticmethod(_Pool)
        Queue = staticmethod(remoteproc.Queue)
        JoinableQueue = staticmethod(remoteproc.JoinableQueue)
        Lock = staticmethod(remoteproc.Lock)
        RLock = staticmethod(remoteproc.RLock)
        Semaphore = staticmethod(remoteproc.Semaphore)
        BoundedSemaphore = staticmethod(remoteproc.BoundedSemaphore)
        Condition = staticmethod(remoteproc.Condition)
        Event = staticmethod(remoteproc.Event)
        Barrier = staticmethod(remoteproc.Barrier)
        Value = staticmethod(remoteproc.Value)
        Array = staticmethod(remoteproc.Array)
        RawValue = staticmethod(remoteproc.RawValue)
        RawArray = staticmethod(remoteproc.RawArray)

    class RemoteManagerMixin(T.ManagerMixin):
        Process = _Process

    del multiprocessing
    return RemoteProcessesMixin, RemoteManagerMixin


def _generate(type_: str, mixin=None, only: str = "") -> list:
    """CPython's generated classes of ``type_`` as attributes of this module (with ``mixin``
    in place of CPython's).  At import, with CPython's own mixins: that is what a remote child
    imports (by module forwarding) to find a class pickled by name."""
    from test import _test_multiprocessing as T

    module = sys.modules[__name__]
    mixin = mixin or {"processes": T.ProcessesMixin, "manager": T.ManagerMixin}[type_]
    made = []
    for name, base in sorted(vars(T).items()):
        if not (isinstance(base, type) and issubclass(base, T.BaseTestCase)) or base is T.BaseTestCase:
            continue
        if type_ not in base.ALLOWED_TYPES or (only and only not in name):
            continue
        cls = type("With" + type_.capitalize() + name[1:], (base, mixin, unittest.TestCase), {})
        cls.__module__ = __name__
        setattr(module, cls.__name__, cls)
        made.append(cls)
    return made


if __name__ != "__main__":
    _generate("processes")
    _generate("manager")


def build_suite(type_: str, processes_mixin=None, manager_mixin=None, only: str = "") -> unittest.TestSuite:
    """CPython's generated classes of ``type_``, with our mixin in place of CPython's."""
    mixin = {"processes": processes_mixin, "manager": manager_mixin}[type_]
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for cls in _generate(type_, mixin, only):
        suite.addTests(loader.loadTestsFromTestCase(cls))
    return suite


class _Result(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed: list[str] = []

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed.append(test.id())


def run(type_: str, host: str | None, options: dict, only: str = "", verbosity: int = 1,
        stream=None) -> tuple[int, int, list[tuple[str, str]]]:
    """Returns (tests run, passed, [(test id, outcome)] of those that did not pass)."""
    import multiprocessing

    from test import _test_multiprocessing as T

    mixins = remote_mixins(host, options) if host else (None, None)
    if host:
        import remoteproc

        # Helpers of the test module itself that rest on shared memory: remoteproc's kin.
        T._DummyList = RemoteDummyList
        T.Value = remoteproc.Value      # _TestSharedCTypes uses multiprocessing.sharedctypes.Value
    suite = build_suite(type_, *mixins, only=only)
    old = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("fork", force=True)
    multiprocessing.get_logger().setLevel(T.LOG_LEVEL)
    try:
        runner = unittest.TextTestRunner(stream=stream or io.StringIO(), verbosity=verbosity,
                                         resultclass=_Result)
        result = runner.run(suite)
    finally:
        multiprocessing.set_start_method(old, force=True)
    failed = [(t.id(), "FAIL") for t, _ in result.failures] + [(t.id(), "ERROR") for t, _ in result.errors]
    failed += [(t.id(), "skip: %s" % why) for t, why in result.skipped]
    failed += [(t.id(), "unexpected success") for t in result.unexpectedSuccesses]
    return result.testsRun, len(result.passed) + len(result.expectedFailures), sorted(failed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--type", default="processes", choices=["processes", "manager"])
    ap.add_argument("--only", default="", help="run only classes whose name contains this")
    ap.add_argument("--local", action="store_true", help="plain multiprocessing (the baseline)")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    server = None
    host, options = None, {}
    if not args.local:
        from remoteproc.testing import LoopbackSSHServer, current_user

        server = LoopbackSSHServer(users=[current_user()]).start()
        host, options = server.spec(current_user()), server.options(current_user())
    t0 = time.monotonic()
    try:
        n, passed, failed = run(args.type, host, options, args.only, verbosity=1 + args.verbose,
                                stream=sys.stderr if args.verbose else None)
    finally:
        if server is not None:
            server.stop()
    if args.json:
        import json

        print(json.dumps({"run": n, "passed": passed, "not_passed": dict((t.split(".", 1)[1], o) for t, o in failed)}))
        return 0
    for test_id, outcome in failed:
        print("%-110s %s" % (test_id.split(".", 1)[1], outcome))
    print("%s, type %s: %d of %d passed in %.0f s" % ("local multiprocessing" if args.local else "remote processes",
                                                      args.type, passed, n, time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    # Run as the module ``cpython_mp``, so that its classes are pickled by name (a remote
    # child imports this module by module forwarding), not by value.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cpython_mp

    sys.exit(cpython_mp.main())
