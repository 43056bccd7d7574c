"""remoteproc/agent/byvalue.py in this process: what a remote child's ForkingPickler does with code
that came by value (the end-to-end cases: tests/test_grandchildren.py)."""

from __future__ import annotations

import pickle
import sys
import threading
import types
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler

import pytest

from remoteproc.agent import byvalue

SOURCE = '''
import threading

LOCK = threading.Lock()


def work(x):
    return 10 * x


class Point:
    def __init__(self, x):
        self.x = x


def locked():
    return LOCK


square = lambda x: x * x  # noqa: E731
'''


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(SOURCE, "<%s>" % name, "exec"), module.__dict__)
    return module


@pytest.fixture
def shipped() -> Iterator[types.ModuleType]:
    """A module as a remote child has it: its code came by value, and ``sys.modules`` holds another
    module of that name (the forwarded one)."""
    name = "rp_byvalue_mod"
    came = _module(name)
    sys.modules[name] = _module(name)
    byvalue.enable([name])
    try:
        yield came
    finally:
        del ForkingPickler.reducer_override     # (this process is the user's again)
        byvalue._names.clear()
        sys.modules.pop(name, None)


def test_code_whose_name_gives_another_object_goes_by_value(shipped):
    work = pickle.loads(ForkingPickler.dumps(shipped.work))
    assert work is not shipped.work and work(2) == 20       # (a grandchild's copy: the module is by value there)
    point = pickle.loads(ForkingPickler.dumps(shipped.Point(3)))
    assert type(point) is shipped.Point and point.x == 3    # (cloudpickle tracks the class)


def test_code_whose_name_gives_it_goes_by_reference(shipped):
    here = sys.modules["rp_byvalue_mod"]
    assert b"cloudpickle" not in ForkingPickler.dumps(here.work)
    assert pickle.loads(ForkingPickler.dumps(here.work)) is here.work


def test_in_the_users_process_it_is_the_users_object(shipped):
    blob = ForkingPickler.dumps(shipped.work)
    byvalue._names.clear()      # (where the module did not come by value)
    assert pickle.loads(blob) is sys.modules["rp_byvalue_mod"].work


def test_a_lambda_fails_as_locally(shipped):
    with pytest.raises((pickle.PicklingError, AttributeError), match="<lambda>"):     # (as pickle words it)
        ForkingPickler.dumps(shipped.square)


def test_code_that_cannot_go_by_value_says_why(shipped):
    with pytest.raises(pickle.PicklingError, match="came by value.*cannot pickle '_thread.lock'"):
        ForkingPickler.dumps(shipped.locked)
    assert isinstance(shipped.LOCK, type(threading.Lock()))
