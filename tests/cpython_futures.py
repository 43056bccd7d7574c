"""CPython's test_concurrent_futures process-pool classes with remoteproc.Executor.

    python3 tests/cpython_futures.py [--local] [--only PATTERN] [-v]

Loads ``test_concurrent_futures.py`` (Debian's ``libpython3.X-testsuite`` puts it under
/usr/lib/python3.X/test; pyenv builds may lack it) as the top-level module
``cpython_test_concurrent_futures``, so that a remote worker imports it by module
forwarding, and runs its ``ProcessPoolFork*`` classes with ``executor_type`` replaced by a
``remoteproc.Executor`` on a private loopback sshd (``--local``: ProcessPoolExecutor, the
baseline).  Prints what does not pass and the counts.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import unittest

NAME = "cpython_test_concurrent_futures"


def _find() -> str:
    for d in ["/usr/lib/python%d.%d/test" % sys.version_info[:2]] + [os.path.dirname(__import__("test").__file__)]:
        path = os.path.join(d, "test_concurrent_futures.py")
        if os.path.exists(path):
            return path
    raise SystemExit("test_concurrent_futures.py not found (apt-get install libpython3.X-testsuite)")


def load():
    directory = tempfile.mkdtemp(prefix="remoteproc-cf-")
    os.chmod(directory, 0o755)
    os.symlink(_find(), os.path.join(directory, NAME + ".py"))
    sys.path.insert(0, directory)
    return __import__(NAME)


def remote_executor_type(host: str, options: dict):
    from concurrent import futures

    import remoteproc

    class RemoteExecutor(remoteproc.Executor):
        def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(),
                     *, max_tasks_per_child=None):
            if max_workers is not None and max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            super().__init__([host], processes_per_host=max_workers or 2, initializer=initializer,
                             initargs=initargs, max_tasks_per_child=max_tasks_per_child, **options)

    RemoteExecutor.__name__ = futures.ProcessPoolExecutor.__name__
    return RemoteExecutor


def run(host, options, only="", verbosity=1, stream=None):
    module = load()
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    executor_type = remote_executor_type(host, options) if host else None
    for name, cls in sorted(vars(module).items()):
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
            continue
        if not name.startswith("ProcessPoolFork") or name.startswith("ProcessPoolForkserver"):
            continue
        if only and only not in name:
            continue
        if executor_type is not None:
            cls.executor_type = executor_type
        suite.addTests(loader.loadTestsFromTestCase(cls))
    result = unittest.TextTestRunner(stream=stream or io.StringIO(), verbosity=verbosity).run(suite)
    failed = [(t.id(), "FAIL") for t, _ in result.failures] + [(t.id(), "ERROR") for t, _ in result.errors]
    failed += [(t.id(), "skip: %s" % why) for t, why in result.skipped]
    passed = result.testsRun - len(failed) - len(result.unexpectedSuccesses)
    return result.testsRun, passed, sorted(failed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="")
    ap.add_argument("--local", action="store_true")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    server, host, options = None, None, {}
    if not args.local:
        from remoteproc.testing import LoopbackSSHServer, current_user

        server = LoopbackSSHServer(users=[current_user()]).start()
        host, options = server.spec(current_user()), server.options(current_user())
    t0 = time.monotonic()
    try:
        n, passed, failed = run(host, options, args.only, 1 + args.verbose, sys.stderr if args.verbose else None)
    finally:
        if server is not None:
            server.stop()
    for test_id, outcome in failed:
        print("%-100s %s" % (test_id.split(".", 1)[1], outcome))
    print("%s: %d of %d passed in %.0f s" % ("ProcessPoolExecutor" if args.local else "remoteproc.Executor",
                                            passed, n, time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
