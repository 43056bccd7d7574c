"""Targets for the spawn-mode tests: they run on another Python (PyPy 3.9), so standard library
only and Python 3.8 syntax; the remote side imports this module by module forwarding."""

import os
import platform
import sys
import time


class Point:
    def __init__(self, x):
        self.x = x


def describe(conn, point):
    conn.send((platform.python_implementation(), tuple(sys.version_info[:2]), point.x, __name__))
    conn.send(Point(point.x * 2))
    conn.close()


def square(x):
    return x * x


def exit_with(code):
    sys.exit(code)


def fail(message):
    raise ValueError(message)


def sleep_then_say(conn):
    conn.send("sleeping")
    time.sleep(60)


def put_items(q, items):
    for item in items:
        q.put(item)


def echo_from_queue(q_in, q_out):
    q_out.put(q_in.get(timeout=30))


def where(conn):
    conn.send((os.getcwd(), os.environ.get("RP_TEST_VAR"), os.environ.get("RP_FROM_SETUP"),
               sys.executable, platform.python_implementation()))


def set_event(ev, conn):
    ev.set()
    conn.send(ev.is_set())


def cwd_and_var(_):
    return os.getcwd(), os.environ.get("RP_TEST_VAR")


def digest(conn, data):
    import hashlib

    conn.send((len(data), hashlib.sha256(data).hexdigest()))


#: what a module has at its top level and still cannot go by reference (test_python_versions.py)
module_lambda = lambda x: x  # noqa: E731


def _plain_decorator(func):
    def inner(*args):
        return func(*args)
    return inner


@_plain_decorator
def decorated(x):
    return x


def _make_adder(n):
    def add(conn, x):
        conn.send(x + n)
    return add


add_two = _make_adder(2)        # (a closure kept at the top level: not a decorator's inner function)
