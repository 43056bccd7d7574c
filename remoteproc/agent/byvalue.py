"""Code that came by value, passed on by value: ``__main__`` and the modules the user registered
with ``cloudpickle.register_pickle_by_value``, on the remote side.

A remote child gets their functions and classes rebuilt from the user's code, while the
module of that name that it imports here (forwarded from the user's machine, or the host's
own) holds other objects; its ``__main__`` holds the script's definitions up to a size (see
``reduction.main_definitions``), and a function that came later (in a Queue item) is a copy.

``multiprocessing`` pickles a function or a class by reference and checks that its name gives
the very object, so the child's own ``Pool``, ``ProcessPoolExecutor``, spawn/forkserver/fork
children and its messages over a Pipe failed with "Can't pickle <function work>: it's not the
same object as mymod.work", where the user's code works locally.

So in a remote child (and in its spawn/forkserver children, see grandchild.py),
``ForkingPickler`` sends such an object by value, as cloudpickle brought it: only when its
name does not give it here, and never a lambda or a local function (those fail as they do
locally).  Where it arrives in the user's own process, its name gives the user's object
itself, as by reference.  Standard library only (cloudpickle is shipped with the agent).
"""

import sys
import types

_names = set()  # type: set[str]  # modules whose code came by value, in this process


def enable(names) -> None:
    """Send the objects of modules ``names`` (and of their submodules) by value when needed."""
    if not names:
        return
    _names.update(names)
    from multiprocessing.reduction import ForkingPickler

    if vars(ForkingPickler).get("reducer_override") is not _reducer_override:
        ForkingPickler.reducer_override = _reducer_override  # type: ignore[assignment]  # (a method of ours)


def keep_slots(obj, reduced):
    """cloudpickle's reduction of ``obj`` (``reduced``), made to rebuild a by-value class whole where
    cloudpickle alone does not:

    - ``__slots__``: cloudpickle (3.1) rebuilds the class without them (it drops the slots'
      descriptors and expects new ones that nothing makes), so there its instances have a
      ``__dict__`` instead: one sent back (a Pool result, a Queue item, a Pipe message) carries its
      attributes as a dict, which the user's real class, that has no ``__dict__``, refuses
      (``AttributeError: 'P' object has no attribute '__dict__'``) where multiprocessing works.
      ``@dataclass(slots=True)`` in a script is enough.

    (ctypes classes, which cloudpickle cannot rebuild either, go by ``ctypes_type_reduce`` first.)
    """
    if not isinstance(obj, type) or not isinstance(reduced, tuple) or len(reduced) < 3 \
            or getattr(reduced[0], "__name__", None) != "_make_skeleton_class":
        return reduced
    args = list(reduced[1])
    if len(args) < 4 or not isinstance(args[3], dict):
        return reduced
    own = vars(obj)
    kwargs = dict(args[3])
    state = reduced[2]
    if "__slots__" in own and "__slots__" not in kwargs and isinstance(args[2], tuple) \
            and all(isinstance(b, type) for b in args[2]):
        # (not where a base makes the class itself, typing.NamedTuple's: it refuses __slots__ and
        # gives the class its own)
        kwargs["__slots__"] = own["__slots__"]
    if kwargs == args[3] and state is reduced[2]:
        return reduced
    args[3] = kwargs
    return (reduced[0], tuple(args), state) + tuple(reduced[3:])


_cfield = None


def ctypes_type_reduce(obj, by_value=True):
    """A ctypes Array type (``c_int * 3``, ``Point * 4``) as ``element * length``, and a Structure or
    Union class that travels by value (one of ``__main__``) without its field descriptors, which
    cannot be pickled (``TypeError: cannot pickle '_ctypes.CField' object``): ``_fields_`` makes
    them again, set last, after ``_pack_`` and ``_anonymous_``.  None for anything else."""
    global _cfield
    if not isinstance(obj, type) or "ctypes" not in sys.modules:    # (no ctypes type before ctypes)
        return None
    import ctypes
    import operator

    if type(obj) is type:
        # a metaclass: PyCStructType and its kin are not reachable by name in _ctypes, so by a class of it
        if getattr(obj, "__module__", None) == "_ctypes":
            for example in (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes.c_int):
                if type(example) is obj:
                    return type, (example,)
        return None
    if issubclass(obj, ctypes.Array):
        element, length = vars(obj).get("_type_"), vars(obj).get("_length_")
        if element is not None and obj.__name__ == "%s_Array_%s" % (getattr(element, "__name__", ""), length):
            return operator.mul, (element, length)        # what ``c_int * 3`` made
        return None
    if issubclass(obj, ctypes._SimpleCData):
        # the other byte order's twin of a simple type (a BigEndianStructure's fields): same name, other class
        for name in (obj.__qualname__, obj.__name__):       # (the twin's __name__ has a _be or _le suffix)
            native = getattr(ctypes, name, None)
            for twin in ("__ctype_be__", "__ctype_le__"):
                if native is not None and native is not obj and getattr(native, twin, None) is obj:
                    return getattr, (native, twin)
        return None
    if not by_value or not issubclass(obj, (ctypes.Structure, ctypes.Union)) or "_fields_" not in vars(obj):
        return None
    from cloudpickle import cloudpickle as cp

    if cp._should_pickle_by_reference(obj):
        return None
    if _cfield is None:
        class Probe(ctypes.Structure):
            _fields_ = [("a", ctypes.c_int)]
        _cfield = type(vars(Probe)["a"])
    reduced = list(cp._dynamic_class_reduce(obj))
    clsdict, slotstate = reduced[2]
    clsdict = {k: v for k, v in clsdict.items() if k != "_fields_" and not isinstance(v, _cfield)}
    clsdict["_fields_"] = vars(obj)["_fields_"]
    reduced[2] = (clsdict, slotstate)
    reduced[5] = ctypes_class_setstate
    return tuple(reduced)


def ctypes_class_setstate(cls, state):
    """cloudpickle's class state for a Structure that came by value.  The same class comes
    again with each message that holds it (cloudpickle then updates the one it made first),
    but its ``_fields_`` can be set only once (``AttributeError: _fields_ is final``)."""
    from cloudpickle import cloudpickle as cp

    clsdict, slotstate = state
    if "_fields_" in vars(cls):
        clsdict = {k: v for k, v in clsdict.items() if k not in ("_fields_", "_pack_", "_anonymous_")}
    return cp._class_setstate(cls, (clsdict, slotstate))


_slots_pickler = None


def pickler():
    """``cloudpickle.Pickler`` that rebuilds by-value classes whole: ctypes ones (``ctypes_type_reduce``),
    and ``__slots__`` (``keep_slots``)."""
    global _slots_pickler
    if _slots_pickler is None:
        import cloudpickle

        class SlotsPickler(cloudpickle.Pickler):
            def reducer_override(self, obj):
                reduced = ctypes_type_reduce(obj)
                if reduced is not None:
                    return reduced
                return keep_slots(obj, super().reducer_override(obj))

        _slots_pickler = SlotsPickler
    return _slots_pickler


def dumps(obj, protocol=None) -> bytes:
    """``cloudpickle.dumps`` with ``pickler()``."""
    import io
    import pickle

    buf = io.BytesIO()
    pickler()(buf, protocol=pickle.HIGHEST_PROTOCOL if protocol is None else protocol).dump(obj)
    return buf.getvalue()


def names() -> list:
    """The by-value modules of this process (for its spawn/forkserver children)."""
    return sorted(_names)


def _shipped(module) -> bool:
    return isinstance(module, str) and any(module == n or module.startswith(n + ".") for n in _names)


def _lookup(module, qualname):
    """What ``module.qualname`` gives in this process, without importing anything (None if nothing)."""
    found = sys.modules.get(module)
    for part in qualname.split("."):
        if found is None:
            return None
        found = getattr(found, part, None)
    return found


def named_here(obj) -> bool:
    """Whether ``obj`` is a function or class of a by-value module that its name gives in this
    process (``__main__.Item`` is the script's ``Item``): such an object goes by reference.

    A Queue item travels as bytes to whichever process gets it, maybe one of another Python
    (spawn mode, which cannot load by-value bytecode: a 3.12 child segfaults on 3.11's) or the
    user's own; every one of them resolves the name to its own copy of the script's definition
    (docs/python-versions.md)."""
    if not _names or not isinstance(obj, (types.FunctionType, type)):
        return False
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not _shipped(module) or not isinstance(qualname, str) or "<" in qualname:
        return False
    try:
        return _lookup(module, qualname) is obj
    except Exception:   # noqa: BLE001 - a module whose attributes raise: by value then
        return False


def _reducer_override(self, obj):
    """ForkingPickler's hook: a by-value function or class that its name would not give back."""
    if not isinstance(obj, (types.FunctionType, type)):
        return NotImplemented
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not _shipped(module) or not isinstance(qualname, str) or "<" in qualname:
        return NotImplemented       # (a lambda, a local function: by reference, which fails as locally)
    if named_here(obj):
        return NotImplemented
    import pickle

    try:
        blob = dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        from .grandchild import _host

        raise pickle.PicklingError(
            "%s: can't pickle %r: it came by value from the user's machine (module %s here does not hold "
            "it), and passing it on by value failed: %s: %s. Fix: keep the globals it uses picklable"
            % (_host(), obj, module, type(exc).__name__, exc)) from exc
    return load, (module, qualname, blob)


def load(module, qualname, blob):
    """Unpickling hook: the object from its by-value pickle; in a process where the module did not
    come by value (the user's own), what its name gives there, as multiprocessing's by-reference
    pickles give it."""
    if not _shipped(module):
        try:
            found = _lookup(module, qualname)
        except Exception:   # noqa: BLE001
            found = None
        if isinstance(found, (types.FunctionType, type)):
            return found
    import pickle

    return pickle.loads(blob)
