"""Targets for tests/test_host_pythons.py: they run on CPython 3.8 ... 3.13 hosts in spawn mode, so
standard library only and Python 3.8 syntax; the remote side imports this module by forwarding."""

import collections
import importlib
import sys


def try_import(conn, name):
    try:
        mod = importlib.import_module(name)
        conn.send(("imported", getattr(mod, "__file__", None)))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        conn.send((type(exc).__name__, str(exc)))


def fill_manager(d, items):
    d["python"] = tuple(sys.version_info[:2])
    items.append("from the child")


def paths_back(conn, q):
    import pathlib

    got = conn.recv()
    conn.send((got, type(got).__module__, pathlib.PurePosixPath("/srv")))
    q.put(pathlib.Path("/tmp"))


def path_to_queue(q):
    import pathlib

    q.put(pathlib.Path("/tmp"))


def path_from_queue(q, conn):
    conn.send(q.get(timeout=60))


def path_of(x):
    import pathlib

    return pathlib.PurePosixPath("/srv", str(x))


def data_of(conn, thing):
    conn.send(thing.data)


def local_row(x):
    Row = collections.namedtuple("Row", "x")       # (a class made by the call: pickle cannot name it)
    return Row(x)


def local_lambda(k):
    return lambda v: v * k


def local_error(x):
    class JobFailed(Exception):
        def __str__(self):
            return "job %s failed" % self.args[0]
    raise JobFailed(x)
