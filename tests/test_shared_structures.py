"""ctypes Structures and arrays in remoteproc's Value and Array, as multiprocessing's docs use them.

The docs' own example (``Array(Point, [...])`` and ``for a in A: a.x **= 2`` in the child) once left
the array unchanged: a child's ``A[i]`` was a copy of the element, whose class (of ``__main__``) the
remote child could not even unpickle.  And a target that used a Structure class of ``__main__`` (or
a Queue item, a Pool argument that was one) could not be pickled at all: cloudpickle ships such a
class by value, with field descriptors that do not pickle (``cannot pickle '_ctypes.CField'
object``).  Each case runs with multiprocessing's fork children too, and the two must agree.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import sys

import cloudpickle
import pytest

import remoteproc
from remoteproc import RemoteProcess

# the module travels by value, as a user's __main__ does: its Structure classes too
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)
FORK = multiprocessing.get_context("fork")


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double)]


class Inner(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int), ("b", ctypes.c_double)]


class Outer(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("n", ctypes.c_int), ("inner", Inner), ("arr", ctypes.c_int * 3), ("name", ctypes.c_char * 8),
                ("grid", (ctypes.c_int * 2) * 2)]


Row = ctypes.c_double * 2


def modify(n, x, s, A):
    """multiprocessing's docs, "Shared ctypes Objects"."""
    n.value **= 2
    x.value **= 2
    s.value = s.value.upper()
    for a in A:
        a.x **= 2
        a.y **= 2


def docs_example(lib, start):
    lock = lib.Lock()
    n = lib.Value("i", 7)
    x = lib.Value(ctypes.c_double, 1.0 / 3.0, lock=False)
    s = lib.Array("c", b"hello world", lock=lock)
    A = lib.Array(Point, [(1.875, -6.25), (-5.75, 2.0), (2.375, 9.5)], lock=lock)
    p = start(modify, (n, x, s, A))
    p.join(60)
    return p.exitcode, n.value, x.value, s.value, [(a.x, a.y) for a in A]


def test_the_docs_example_modifies_the_array_of_structures_in_place(host, ssh_options):
    expected = docs_example(multiprocessing, lambda f, a: _started(FORK.Process(target=f, args=a)))
    assert expected == (0, 49, 1.0 / 9.0, b"HELLO WORLD", [(3.515625, 39.0625), (33.0625, 4.0), (5.640625, 90.25)])
    remote = docs_example(remoteproc, lambda f, a: _started(RemoteProcess(host, target=f, args=a, **ssh_options)))
    assert remote == expected
    forked = docs_example(remoteproc, lambda f, a: _started(FORK.Process(target=f, args=a)))
    assert forked == expected


def _started(p):
    p.start()
    return p


class Vec(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double)]
    UNIT = 1.0

    def scale(self, k):
        self.x *= k
        self.y *= k
        return self.norm2

    @property
    def norm2(self):
        return self.x * self.x + self.y * self.y

    @property
    def first(self):
        return self.x

    @first.setter
    def first(self, value):
        self.x = value

    @staticmethod
    def kind():
        return "vec"


def use_methods(A, out):
    got = [A[0].scale(2), A[1].norm2, A[0].UNIT, A[0].kind()]
    A[1].first = 7.0
    out.put(got)


def run_methods(lib, start):
    A, out = lib.Array(Vec, [(1.0, 2.0), (3.0, 4.0)]), lib.Queue()
    p = start(use_methods, (A, out))
    got = out.get(timeout=60)
    p.join(60)
    return p.exitcode, got, [(e.x, e.y) for e in A]


def test_a_structures_methods_and_properties_work_on_a_childs_element(host, ssh_options):
    """``A[0].scale(2)`` in a child: a method of the user's Structure class, on the child's view of the
    element, reads and writes the owner's object, as on multiprocessing's element in shared memory
    (the view had only the fields: ``AttributeError``)."""
    expected = run_methods(multiprocessing, lambda f, a: _started(FORK.Process(target=f, args=a)))
    assert expected == (0, [20.0, 25.0, 1.0, "vec"], [(2.0, 4.0), (7.0, 4.0)])
    remote = run_methods(remoteproc, lambda f, a: _started(RemoteProcess(host, target=f, args=a, **ssh_options)))
    assert remote == expected


def parts(v, A, R, M, out):
    v.n = 5
    v.inner.a = 7
    v.inner.b += 0.5
    v.arr[1] = 11
    v.arr[0:2] = [4, 4]
    v.name = b"hey"
    v.grid[1][0] = 9
    for p in A:
        p.n += 1
        p.inner.a = p.n * 10
    A[2] = A[0]                         # a whole element, from another element
    A[1] = Outer(n=99)                  # ... from a Structure of the (shipped) class
    A[0].arr[2] = 33
    A[-1].inner.b = 1.25
    for r in R:
        r.inner.b = 2.5
    M[0][1] = 1.5
    M[1] = (3.0, 4.0)
    errors = []
    for bad in (lambda: A[3], lambda: A[0].zz, lambda: A["x"]):
        try:
            bad()
        except Exception as exc:
            errors.append(type(exc).__name__)
    out.put(([p.n for p in A[::2]], len(A), errors))


def run_parts(lib, start):
    v, A, R, M, out = lib.Value(Outer), lib.Array(Outer, 3), lib.RawArray(Outer, 2), lib.Array(Row, 2), lib.Queue()
    p = start(parts, (v, A, R, M, out))
    seen = out.get(timeout=60)
    p.join(60)
    return (p.exitcode, seen, v.n, v.inner.a, v.inner.b, list(v.arr), v.name, [list(r) for r in v.grid],
            [(e.n, e.inner.a, e.inner.b, list(e.arr)) for e in A], [e.inner.b for e in R], [list(r) for r in M])


def test_nested_parts_are_written_in_place_from_a_child(host, ssh_options):
    expected = run_parts(multiprocessing, lambda f, a: _started(FORK.Process(target=f, args=a)))
    assert expected[0] == 0 and expected[2:5] == (5, 7, 0.5)
    remote = run_parts(remoteproc, lambda f, a: _started(RemoteProcess(host, target=f, args=a, **ssh_options)))
    assert remote == expected
    assert run_parts(remoteproc, lambda f, a: _started(FORK.Process(target=f, args=a))) == expected


def structures_both_ways(q, out):
    p = q.get(timeout=30)
    out.put((type(p).__name__, p.x, p.y))
    out.put(Point(7.0, 8.0))
    out.put(Row(1.0, 2.0))


def swap(p):
    return Point(p.y, p.x)


def test_structure_classes_of_a_shipped_module_travel(host, ssh_options):
    q, out = remoteproc.Queue(), remoteproc.Queue()
    q.put(Point(1.0, 2.0))
    p = RemoteProcess(host, target=structures_both_ways, args=(q, out), **ssh_options)
    p.start()
    assert out.get(timeout=60) == ("Point", 1.0, 2.0)
    back = out.get(timeout=30)
    assert type(back) is Point and (back.x, back.y) == (7.0, 8.0)
    row = out.get(timeout=30)
    assert type(row) is Row and list(row) == [1.0, 2.0]
    p.join(60)
    assert p.exitcode == 0
    with remoteproc.Pool(host, processes_per_host=1, **ssh_options) as pool:
        results = pool.map(swap, [Point(i, -i) for i in range(3)])
    assert all(type(r) is Point for r in results)
    assert [(r.x, r.y) for r in results] == [(0.0, 0.0), (-1.0, 1.0), (-2.0, 2.0)]


def array_values(v, s, r):
    v[1] = v[0] + 5
    s.value = s.value.upper()
    r[:] = [7, 8]


def test_a_value_of_an_array_type_is_an_array(host, ssh_options):
    """``Value(c_int * 3)`` is multiprocessing's SynchronizedArray (it was a Synchronized without
    indexing: ``TypeError: 'Synchronized' object is not subscriptable``)."""
    results = []
    for lib, start in ((multiprocessing, lambda f, a: _started(FORK.Process(target=f, args=a))),
                       (remoteproc, lambda f, a: _started(RemoteProcess(host, target=f, args=a, **ssh_options)))):
        v, s, r = lib.Value(ctypes.c_int * 3, 1, 2, 3), lib.Value(ctypes.c_char * 4), lib.RawValue(Row)
        s.value = b"ab"
        p = start(array_values, (v, s, r))
        p.join(60)
        results.append((p.exitcode, v[:], len(v), s.value, s.raw, list(r[:])))
    assert results[0] == results[1] == (0, [1, 6, 3], 3, b"AB", b"AB\0\0", [7.0, 8.0])


class Base(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int)]
    KIND = "base"

    def twice(self):
        return self.a * 2


class Derived(Base):
    _fields_ = [("b", ctypes.c_short)]


class Either(ctypes.Union):
    _fields_ = [("i", ctypes.c_uint32), ("f", ctypes.c_float)]


class Wire(ctypes.BigEndianStructure):
    _pack_ = 1
    _fields_ = [("x", ctypes.c_uint16), ("flag", ctypes.c_uint8, 3)]


class Tagged(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("u", Either), ("tag", ctypes.c_int)]


def kinds_of_structures(out):
    d, e, w, t = Derived(1, 2), Either(), Wire(0x1234, 5), Tagged()
    e.f = 1.0
    t.i, t.tag = 7, 3
    out.put((d.twice(), Derived.KIND, ctypes.sizeof(Derived), e.i, bytes(w), w.flag, t.i, ctypes.sizeof(Tagged)))
    out.put((d, w, t))


def test_subclassed_union_big_endian_and_anonymous_structures_travel(host, ssh_options):
    out = remoteproc.Queue()
    p = RemoteProcess(host, target=kinds_of_structures, args=(out,), **ssh_options)
    p.start()
    assert out.get(timeout=60) == (2, "base", 8, 1065353216, b"\x12\x34\xa0", 5, 7, 8)
    d, w, t = out.get(timeout=30)
    p.join(60)
    assert p.exitcode == 0
    assert (type(d), d.a, d.b, type(w), w.x, w.flag, type(t), t.i, t.tag) == (Derived, 1, 2, Wire, 0x1234, 5,
                                                                                Tagged, 7, 3)
