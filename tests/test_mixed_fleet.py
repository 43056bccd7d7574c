"""One program, several hosts that are not twins: each with its own Python at once.

A real fleet mixes a host of this Python (same-version mode: the script's code travels by value)
with hosts of other CPythons (spawn mode: everything by reference), and the processes on them
share one Queue, one Pipe, one Pool. What one process sends, another of another Python must
read, as between local spawn children. The hosts are the suite's ``rpuser`` account (Debian's
python3, this Python's version) and the same account with ``python=`` one of pyenv's other
CPythons (copied by the ``host_pythons`` fixture): two connections, two agents, two Pythons.
The user programs are script files run as their own processes, as users run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_host_pythons import REPO, host_pythons  # noqa: F401 - the fixture: copies of other CPythons


def _run(path: str, *args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, path, *(json.dumps(a) for a in args)], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(path), env=dict(os.environ, PYTHONPATH=REPO))


QUEUE_BETWEEN_PYTHONS = """
import dataclasses, enum, json, platform, sys
from remoteproc import Queue, RemoteProcess

class Color(enum.Enum):
    RED = 1
    BLUE = 2

@dataclasses.dataclass
class Item:
    n: int
    color: Color

class Box:
    def __init__(self, v):
        self.v = v

def helper(x):
    return x + 1

def producer(q, n):
    for _ in range(n):
        q.put(Item(1, Color.RED))
        q.put(Box(Color.BLUE))
        q.put(helper)

def consumer(q, out):
    got = []
    for _ in range(3):
        x = q.get(timeout=60)
        got.append(type(x).__name__ if not callable(x) or isinstance(x, type) else "helper:%d" % x(1))
    got.append(platform.python_version())
    out.put(got)

if __name__ == "__main__":
    same, other = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    q, out = Queue(), Queue()
    consumer_proc = RemoteProcess(other[0], target=consumer, args=(q, out), **other[1])
    consumer_proc.start()
    producer_proc = RemoteProcess(same[0], target=producer, args=(q, 2), **same[1])
    producer_proc.start()
    producer_proc.join(60)
    consumer_proc.join(60)
    print("exitcodes", producer_proc.exitcode, consumer_proc.exitcode)
    print("consumer", out.get(timeout=10))
    mine = [q.get(timeout=10) for _ in range(3)]      # (the same-version child's items, got here)
    print("owner", type(mine[0]) is Item, mine[0].color is Color.RED, type(mine[1]) is Box,
          mine[1].v is Color.BLUE, mine[2] is helper)
"""


@pytest.mark.parametrize("ver", ["3.8", "3.12"])
def test_queue_items_of_a_same_version_child_reach_a_child_of_another_python(
        host_pythons, plain_user_host, plain_user_options, scripts, ver):  # noqa: F811
    """A child on a host of this Python puts the script's dataclass, class instance, enum and
    function into a Queue; a child on a host of another Python gets them. Locally (spawn) that works;
    here the same-version child pickled them by value (cloudpickle: bytecode, 3.11's ``Field``s), so
    the 3.8 child failed to load them (``'Field' object has no attribute 'kw_only'``, ``code() takes
    at most 16 arguments``), a 3.12 child of a 3.11.7 producer died of a segfault, and the owner got
    a copy of its function, not the function. Now what the child's ``__main__`` names goes by
    reference, as multiprocessing sends it, and the owner gets its own objects back."""
    wrapper, full = host_pythons.get(ver)
    path = scripts("mf_queue.py", QUEUE_BETWEEN_PYTHONS)
    other = dict(plain_user_options, python=wrapper)
    proc = _run(path, [plain_user_host, plain_user_options], [plain_user_host, other])
    assert "exitcodes 0 0" in proc.stdout, proc.stdout + proc.stderr
    assert "consumer ['Item', 'Box', 'helper:2', '%s']" % full in proc.stdout, proc.stdout + proc.stderr
    assert "owner True True True True True" in proc.stdout, proc.stdout + proc.stderr


SLOTTED = """
import dataclasses, json, sys, typing
from remoteproc import Pipe, Pool, Queue, RemoteProcess

class Pair(typing.NamedTuple):     # (slots of its own: __slots__ = () made by typing)
    a: int
    b: str = "b"

@dataclasses.dataclass(slots=True)
class P:
    x: int
    y: int = 0

class S:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b

def bump(p):
    return P(p.x + 1, p.y), S(p.x, hasattr(p, "__dict__"))

def child(conn, q):
    p = conn.recv()
    conn.send(bump(p))
    q.put(S(3, hasattr(S(0, 0), "__dict__")))

if __name__ == "__main__":
    spec, options = json.loads(sys.argv[1])
    with Pool([(spec, options)], 1) as pool:
        p, s = pool.apply(bump, (P(1, 2),))
        print("pool", p, s.a, s.b, type(p) is P, type(s) is S)
        print("pair", pool.apply(Pair, (1,)) == Pair(1, "b"))
    here, there = Pipe()
    q = Queue()
    proc = RemoteProcess(spec, target=child, args=(there, q), **options)
    proc.start()
    here.send(P(5, 6))
    p, s = here.recv()
    print("pipe", p, s.a, s.b)
    s = q.get(timeout=60)
    print("queue", s.a, s.b)
    proc.join(60)
    print("exitcode", proc.exitcode)
"""


def test_classes_with_slots_of_the_script_come_back_from_a_same_version_host(plain_user_host, plain_user_options,
                                                                               scripts):
    """``@dataclass(slots=True)`` (or ``__slots__``) in the user's script: a Pool task's result, a Pipe
    message and a Queue item of such a class from a host of this Python raised ``AttributeError: 'P'
    object has no attribute '__dict__'`` here (``ResultUnpicklingError`` from the Pool), where
    multiprocessing works: cloudpickle rebuilt the class there without its slots, so its instances had
    a ``__dict__`` and came back as one. The class now keeps its slots there (agent/byvalue.py)."""
    path = scripts("mf_slots.py", SLOTTED)
    proc = _run(path, [plain_user_host, plain_user_options])
    out = proc.stdout + proc.stderr
    assert "pool P(x=2, y=2) 1 False True True" in proc.stdout, out
    assert "pipe P(x=6, y=6) 5 False" in proc.stdout, out
    assert "queue 3 False" in proc.stdout, out
    assert "pair True" in proc.stdout, out
    assert "exitcode 0" in proc.stdout, out


PUT_BEFORE = """
import dataclasses, enum, json, sys
from remoteproc import JoinableQueue, Queue, RemoteProcess

class Color(enum.Enum):
    RED = 1

@dataclasses.dataclass
class Item:
    n: int
    color: Color

def helper(x):
    return x + 1

def consumer(q, out):
    got = []
    for _ in range(3):
        try:
            x = q.get(timeout=30)
            got.append("helper:%d" % x(1) if callable(x) and not isinstance(x, type) else repr(x))
        except Exception as exc:
            got.append("%s: %s" % (type(exc).__name__, exc))
        if hasattr(q, "task_done"):
            q.task_done()
    out.put(got)

if __name__ == "__main__":
    spec, options = json.loads(sys.argv[1])
    for kind in (Queue, JoinableQueue):
        q, out = kind(), Queue()
        q.put(Item(1, Color.RED))       # (before any process of another Python has the queue)
        q.put(helper)
        q.put([Color.RED, 2])
        proc = RemoteProcess(spec, target=consumer, args=(q, out), **options)
        proc.start()
        print(kind.__name__, out.get(timeout=60))
        proc.join(60)
        print("exitcode", proc.exitcode)
"""


@pytest.mark.parametrize("ver", ["3.8", "3.12"])
def test_items_put_before_a_child_of_another_python_got_the_queue(
        host_pythons, plain_user_host, plain_user_options, scripts, ver):  # noqa: F811
    """The owner puts the script's dataclass and function into a Queue, then starts a consumer on a host
    of another Python. Locally that works; here those items had been pickled by value for this Python
    (the queue had no spawn-mode process yet): on 3.8 ``'Field' object has no attribute 'kw_only'`` and
    ``code() takes at most 16 arguments``, on 3.12 a segfault (exit code -11). Now the items already
    waiting are pickled again by reference when the queue first goes to another Python."""
    wrapper, _full = host_pythons.get(ver)
    path = scripts("mf_before.py", PUT_BEFORE)
    proc = _run(path, [plain_user_host, dict(plain_user_options, python=wrapper)])
    out = proc.stdout + proc.stderr
    for kind in ("Queue", "JoinableQueue"):
        assert "%s ['Item(n=1, color=<Color.RED: 1>)', 'helper:2', '[<Color.RED: 1>, 2]']" % kind in proc.stdout, out
    assert proc.stdout.count("exitcode 0") == 2, out


LAMBDA_ITEM = """
import json, sys
from remoteproc import Queue, RemoteProcess

def producer(q):
    k = 3
    q.put(lambda x: x + k)      # (a same-version child may: it goes by value)
    q.put("next")

def consumer(q, out):
    for _ in range(2):
        try:
            out.put(repr(q.get(timeout=30)))
        except Exception as exc:
            out.put("%s: %s" % (type(exc).__name__, exc))

if __name__ == "__main__":
    same, other = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    q, out = Queue(), Queue()
    consumer_proc = RemoteProcess(other[0], target=consumer, args=(q, out), **other[1])
    consumer_proc.start()
    producer_proc = RemoteProcess(same[0], target=producer, args=(q,), **same[1])
    producer_proc.start()
    print("got", out.get(timeout=60))
    print("got", out.get(timeout=60))
    producer_proc.join(60)
    consumer_proc.join(60)
    print("exitcodes", producer_proc.exitcode, consumer_proc.exitcode)
"""


@pytest.mark.parametrize("ver", ["3.8", "3.13"])
def test_code_by_value_in_an_item_is_refused_by_a_child_of_another_python(
        host_pythons, plain_user_host, plain_user_options, scripts, ver):  # noqa: F811
    """A same-version child puts a lambda (by value: this Python's bytecode) into a Queue that a child
    on a host of another Python reads: on 3.8 ``get()`` raised ``TypeError: code() takes at most 16
    arguments (18 given)``, on 3.13 the child died of a segfault. Now ``get()`` raises an
    ``UnpicklingError`` naming the host, both Pythons and the fix, and the queue goes on."""
    wrapper, full = host_pythons.get(ver)
    path = scripts("mf_lambda.py", LAMBDA_ITEM)
    other = dict(plain_user_options, python=wrapper)
    proc = _run(path, [plain_user_host, plain_user_options], [plain_user_host, other])
    out = proc.stdout + proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("got UnpicklingError")]
    assert line, out
    assert plain_user_host in line[0] and "Python %s" % full in line[0] and "by value" in line[0], out
    assert "Fix: put functions and classes defined at the top level" in line[0], out
    assert "got 'next'" in proc.stdout and "exitcodes 0 0" in proc.stdout, out


FLEET = """
import dataclasses, enum, json, platform, sys
from remoteproc import Barrier, Executor, Lock, Pool, Queue, RemoteProcess, Value

class Color(enum.Enum):
    RED = 1

@dataclasses.dataclass(frozen=True)
class Result:
    x: int
    python: str
    tag: str

class TaskFailed(Exception):
    def __init__(self, x, why):
        super().__init__(x, why)
        self.x = x

TAG = {}

def init(tag):
    TAG["tag"] = tag

def task(x):
    if x % 7 == 3:
        raise TaskFailed(x, "multiple of seven plus three")
    return Result(x, platform.python_version(), TAG.get("tag"))

def producer(q, barrier, n):
    barrier.wait(60)
    for i in range(n):
        q.put(Result(i, platform.python_version(), Color.RED.name))
    for _ in range(2):
        q.put(None)

def consumer(q, barrier, lock, count, out):
    barrier.wait(60)
    got = []
    for item in iter(lambda: q.get(timeout=60), None):
        got.append(item.x)
        with lock:
            count.value += 1
    out.put((platform.python_version(), got))

if __name__ == "__main__":
    hosts = json.loads(sys.argv[1])
    with Pool([tuple(h) for h in hosts], 1, initializer=init, initargs=("set",)) as pool:
        results = pool.map(task, [x for x in range(30) if x % 7 != 3])
        pythons = {r.python for r in results}
        print("map", len(results), sorted({r.tag for r in results}), len(pythons))
        outcomes = []
        it = pool.imap_unordered(task, range(14))
        for _ in range(14):
            try:
                outcomes.append(next(it).x)
            except TaskFailed as exc:
                outcomes.append(("failed", exc.x, type(exc.__cause__).__name__))
        print("imap", sorted(o for o in outcomes if isinstance(o, int)) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 11, 12, 13],
              sorted(o for o in outcomes if not isinstance(o, int)))
    with Executor([tuple(h) for h in hosts], 1, initializer=init, initargs=("ex",)) as ex:
        futures = [ex.submit(task, x) for x in range(6)]
        print("executor", [type(f.exception(60)).__name__ if f.exception(60) else f.result().tag for f in futures])
    q, out, lock, count, barrier = Queue(), Queue(), Lock(), Value("i", 0), Barrier(3)
    (s0, o0), (s1, o1), (s2, o2) = hosts
    procs = [RemoteProcess(s0, target=producer, args=(q, barrier, 40), **o0),
             RemoteProcess(s1, target=consumer, args=(q, barrier, lock, count, out), **o1),
             RemoteProcess(s2, target=consumer, args=(q, barrier, lock, count, out), **o2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in range(2)]
    for p in procs:
        p.join(60)
    print("queue", sorted(x for _, xs in got for x in xs) == list(range(40)), count.value,
          sorted(v for v, _ in got) == sorted(json.loads(sys.argv[2])),
          [p.exitcode for p in procs])
"""


def test_one_program_across_hosts_of_three_pythons(
        host_pythons, plain_user_host, plain_user_options, scripts):  # noqa: F811
    """One Pool, one Executor, one Queue with a Lock, a Value and a Barrier over three hosts at once:
    this Python (same-version mode), CPython 3.8 and CPython 3.12 through ``transport="openssh"``
    (spawn mode), as a real fleet has them: results, the script's exception class with its remote
    traceback, the initializer's globals, the script's frozen dataclass going between the hosts."""
    (py38, v38), (py312, v312) = host_pythons.get("3.8"), host_pythons.get("3.12")
    hosts = [[plain_user_host, plain_user_options], [plain_user_host, dict(plain_user_options, python=py38)],
             [plain_user_host, dict(plain_user_options, python=py312, transport="openssh")]]
    proc = _run(scripts("mf_fleet.py", FLEET), hosts, [v38, v312])
    out = proc.stdout + proc.stderr
    assert "map 26 ['set'] 3" in proc.stdout, out
    assert "imap True [('failed', 3, 'RemoteTraceback'), ('failed', 10, 'RemoteTraceback')]" in proc.stdout, out
    assert "executor ['ex', 'ex', 'ex', 'TaskFailed', 'ex', 'ex']" in proc.stdout, out
    assert "queue True 40 True [0, 0, 0]" in proc.stdout, out


CTYPES_STRUCT = """
import ctypes, json, sys
from remoteproc import Array, RemoteProcess, Value

class Point(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_int), ("pad", ctypes.c_char * 3)]

    def total(self):
        return self.x + self.y

def work(v, a, k):
    with v.get_lock():
        v.x += k
        v.y += 1
    a[k] = Point(k, k * 2)
    print("child", k, a[k].total(), flush=True)

if __name__ == "__main__":
    hosts = json.loads(sys.argv[1])
    v, a = Value(Point, 0.0, 0), Array(Point, len(hosts) + 1)
    procs = [RemoteProcess(spec, target=work, args=(v, a, k + 1), **options) for k, (spec, options) in enumerate(hosts)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    print("exitcodes", [p.exitcode for p in procs], v.x, v.y, [(p.x, p.y) for p in a])
"""


def test_a_ctypes_structure_of_the_script_goes_to_hosts_of_this_and_another_python(
        host_pythons, plain_user_host, plain_user_options, scripts):  # noqa: F811
    """``Value(Point)`` and ``Array(Point, n)`` with a ``ctypes.Structure`` defined in the user's script:
    multiprocessing passes them to its children; here ``start()`` to a host of this Python raised
    ``PicklingError: ... TypeError: cannot pickle '_ctypes.CField' object`` (cloudpickle rebuilds the
    script's classes by value, and neither a Structure's fields nor its metaclass pickle). The
    Structure is now made there from its ``_fields_`` (agent/byvalue.py); a 3.8 host imports it."""
    hosts = [[plain_user_host, plain_user_options],
             [plain_user_host, dict(plain_user_options, python=host_pythons.get("3.8")[0])]]
    proc = _run(scripts("mf_ctypes.py", CTYPES_STRUCT), hosts)
    out = proc.stdout + proc.stderr
    assert "exitcodes [0, 0] 3.0 2 [(0.0, 0), (1.0, 2), (2.0, 4)]" in proc.stdout, out
    assert "child 1 3.0" in proc.stdout and "child 2 6.0" in proc.stdout, out


SUBCLASS = """
import json, platform, sys
from remoteproc import Pipe, RemoteProcess

class Accumulator(RemoteProcess):
    def __init__(self, host, conn, **options):
        super().__init__(host, **options)
        self.conn = conn
        self.total = 0

    def run(self):
        for n in iter(self.conn.recv, None):
            self.total += n
            self.conn.send((self.total, platform.python_version(), type(self).__mro__[1].__name__))

if __name__ == "__main__":
    spec, options = json.loads(sys.argv[1])
    here, there = Pipe()
    acc = Accumulator(spec, there, **options)
    acc.start()
    there.close()
    for n in (1, 2, 3):
        here.send(n)
        print("got", here.recv())
    here.send(None)
    acc.join(60)
    print("exitcode", acc.exitcode)
"""


@pytest.mark.parametrize("ver", ["3.8", "3.12"])
def test_a_subclass_of_remoteprocess_runs_on_a_host_of_another_python(
        host_pythons, plain_user_host, plain_user_options, scripts, ver):  # noqa: F811
    """``class Accumulator(RemoteProcess)`` with ``run()`` and state on ``self`` (api.md's example), as
    one subclasses ``multiprocessing.Process`` and runs it with spawn: on a host of another Python the
    child failed at once with ``AttributeError: 'Accumulator' object has no attribute '_bootstrap'``
    (its base was a stand-in there), nothing naming the host or why. The stand-in of
    ``RemoteProcess`` is now a ``multiprocessing.Process`` there, as in a same-version child."""
    wrapper, full = host_pythons.get(ver)
    proc = _run(scripts("mf_subclass.py", SUBCLASS), [plain_user_host, dict(plain_user_options, python=wrapper)])
    out = proc.stdout + proc.stderr
    for total in (1, 3, 6):
        assert "got (%d, '%s', 'RemoteProcess')" % (total, full) in proc.stdout, out
    assert "exitcode 0" in proc.stdout, out
