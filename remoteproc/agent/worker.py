"""The loop of one ``remoteproc.Pool`` / ``remoteproc.Executor`` worker.

It runs in a remote child (this module is shipped with the agent), on the
Connection the pool gave it.  Standard library only.

Messages (each a pickled tuple on the Connection):
    pool -> worker  ``("task", chunk_id, mode, func_bytes, args_bytes)`` or ``("stop",)``, or
                    ``("blob", key, [keys to drop])`` followed by the blob's raw bytes: a large
                    argument that later tasks refer to by key (``blob``; the joblib backend's)
    worker -> pool  ``("hello", pid, ppid, cpus)`` once, after the initializer (``usable_cpus``);
                    ``("init-error", traceback_text)`` if the initializer raised;
                    ``("result", chunk_id, all_ok, payload)``: ``payload`` is the pickled list
                    ``[value, ...]`` if every call returned (``all_ok``), else
                    ``[(ok, value_or_error), ...]``; or ``("failed", chunk_id, error)`` when the
                    task itself could not be unpickled.
An error is ``(pickled exception or None, traceback text, "Type: message")``: pickled as results
are (``_dumps``: by value where needed), None if it cannot be pickled or not loaded again.
The payload is pickled apart from the envelope, so that a result the pool's
process cannot unpickle fails that chunk only (it always learns the chunk id).
A chunk is one pool task: ``mode`` says how to call ``func`` on each element of
the argument list (``func(x)``, ``func(*x)`` or ``func(*args, **kwargs)``).
``SUBMIT`` is ``APPLY`` under ProcessPoolExecutor's rules: whatever the call raises, even
``SystemExit``, is its outcome and the worker goes on; a result that cannot be pickled fails
with the error that pickling raised; a task that cannot be unpickled fails with
``BrokenProcessPool``.
"""

import contextlib
import os
import pickle
import sys
import traceback
import types

CALL = 0        # func(x)
STAR = 1        # func(*x)
APPLY = 2       # func(*args, **kwargs) for (args, kwargs)
SUBMIT = 3      # the same, for the Executor (ProcessPoolExecutor's rules, above)

_FUNC_CACHE = 8

_BLOBS = {}  # type: dict[str, bytes]  # the shared arguments this worker holds, by key (the pool says which to drop)


def blob(key, writable=False):
    """A shared argument, as a task's arguments refer to it (the pool sent it before the task):
    the worker's one read-only copy, or a private writable one (``writable``)."""
    try:
        data = _BLOBS[key]
    except KeyError:
        raise RuntimeError("this pool worker does not hold the shared argument %s that the task refers to "
                           "(the pool sends it before the task)" % key) from None
    return bytearray(data) if writable else data


_SHARED = {}  # type: dict[str, dict[str, object]]  # module name -> the globals that its by-value functions share in this worker


def share_globals(func):
    """Give a function shipped by value the globals of its module as seen by earlier ones.

    cloudpickle rebuilds each shipped function with fresh globals, so a global the
    initializer set would not be seen by the tasks.  Here the first function of a
    module to arrive provides the module's globals; later ones are rebound to them
    (adding the names they bring), as if the module had been imported once per
    worker.  A function of the module that comes with a later one replaces the
    worker's (the sender redefined it); other values already there are kept (the
    initializer may have set them).  Functions of importable modules are left alone.
    """
    g = getattr(func, "__globals__", None)
    if not isinstance(g, dict):
        return func
    name = g.get("__name__")
    if name is None:
        return func
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__dict__", None) is g:
        return func
    # ``__main__``'s are the child's __main__ module's own (child._serve_main_definitions): a
    # function that a task passes on by reference (to its own spawn children, in a message) is
    # then the very one ``__main__.f`` names
    home = vars(mod) if name == "__main__" and mod is not None else g
    shared = _SHARED.setdefault(name, home)
    if shared is g:
        return func
    rebound = {}  # type: dict[int, types.FunctionType]

    def rebind(f):
        new = rebound.get(id(f))
        if new is None:
            new = types.FunctionType(f.__code__, shared, f.__name__, f.__defaults__, f.__closure__)
            new.__kwdefaults__ = f.__kwdefaults__
            new.__qualname__ = f.__qualname__
            new.__module__ = f.__module__
            new.__doc__ = f.__doc__
            new.__dict__.update(f.__dict__)
            rebound[id(f)] = new
        return new

    for key, value in list(g.items()):
        if isinstance(value, types.FunctionType) and value.__globals__ is g:
            # a function of the module that came by value with this one: the sender's current
            # definition (a helper redefined in a notebook cell) replaces the one seen before
            shared[key] = rebind(value)
        elif key not in shared:
            shared[key] = value
    return rebind(func) if isinstance(func, types.FunctionType) else func


def _error(exc):
    spawn = sys.modules.get(__package__ + ".spawn")
    if spawn is not None and spawn.ACTIVE:
        spawn.explain(exc)      # (a module of the user's that the task imports is newer than this host's Python)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        # (by value where needed, as results: an exception whose pickle refers to a function of
        # ``__main__`` that came by value, which ``__main__.<name>`` does not give here)
        blob = _dumps(exc)
        pickle.loads(blob)      # an exception that does not survive the trip is sent as text
    except BaseException:       # (its rebuilding may raise anything, SystemExit too: the worker goes on)
        blob = None
    return (blob, text, "%s: %s" % (type(exc).__name__, exc))


def _dumps(obj):
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        spawn = sys.modules.get(__package__ + ".spawn")
        if spawn is not None and spawn.ACTIVE:
            # Another Python than the user's: by-value bytecode of this one would crash theirs
            # (docs/python-versions.md); what plain pickle refuses fails as with spawn's pool.
            raise
        from . import byvalue  # cloudpickle, shipped with the agent: lambdas, local classes, ...

        return byvalue.dumps(obj, pickle.HIGHEST_PROTOCOL)


def _encode(cid, results, all_ok, mode=CALL):
    catch = BaseException if mode == SUBMIT else Exception
    try:
        payload = _dumps(results)
    except catch:
        pairs = results if not all_ok else [(True, v) for v in results]
        safe = []
        for ok, value in pairs:
            if ok:
                try:
                    _dumps(value)
                except catch as exc:
                    if mode != SUBMIT:
                        from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]

                        exc = MaybeEncodingError(exc, value)
                    ok, value = False, _error(exc)
            safe.append((ok, value))
        all_ok, payload = False, _dumps(safe)
    return pickle.dumps(("result", cid, all_ok, payload), pickle.HIGHEST_PROTOCOL)


def run_chunk(func, mode, items):
    """Call ``func`` on each element; returns ``(all_ok, results)`` as the message wants them."""
    catch = BaseException if mode == SUBMIT else Exception
    values = []
    for x in items:
        try:
            if mode == CALL:
                values.append(func(x))
            elif mode == STAR:
                values.append(func(*x))
            else:
                values.append(func(*x[0], **x[1]))
        except catch as exc:
            failed = exc
            break
    else:
        return True, values
    # slow path: something raised; keep going and report each element
    pairs = [(True, v) for v in values]
    pairs.append((False, _error(failed)))
    del failed
    for x in items[len(pairs):]:
        try:
            if mode == CALL:
                pairs.append((True, func(x)))
            elif mode == STAR:
                pairs.append((True, func(*x)))
            else:
                pairs.append((True, func(*x[0], **x[1])))
        except catch as exc:
            pairs.append((False, _error(exc)))
    return False, pairs


def usable_cpus():
    """The CPUs this process may run on: its affinity (a batch job's share of a node, ``taskset``,
    a container's cpuset), not the machine's count; as Python 3.13's ``os.process_cpu_count()``,
    which its own Pool counts workers by."""
    total = os.cpu_count() or 1
    try:
        return max(1, min(total, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return total


def limit_threads(here, explicit, given, names):
    """Cap the native thread pools (OpenMP, OpenBLAS, MKL, ...) of this worker, as loky caps its
    workers': without it each of the ``here`` workers on this host would start one thread per core
    in its BLAS calls, and they would oversubscribe the host's cores.

    Sets the variables ``names`` before anything (the initializer, a task's ``import numpy``)
    loads those libraries: to ``explicit`` (joblib's ``inner_max_num_threads``) if given; else a
    value this worker's environment has already (the host's login environment, ``env=``,
    ``setup=``) stays; else the value of the caller's own environment (``given``), as loky's
    workers inherit theirs; else this host's usable CPUs // ``here`` (None: one worker per CPU), at
    least 1.  ``ENABLE_IPC=1`` (TBB's schedulers coordinate across processes) unless set.
    """
    usable = usable_cpus()
    default = max(usable // (here or usable), 1)
    for name in names:
        if explicit is not None:
            os.environ[name] = str(explicit)
        elif name not in os.environ:
            os.environ[name] = str(given.get(name, default))
    os.environ.setdefault("ENABLE_IPC", "1")


def main(conn, initializer=None, initargs=(), maxtasks=None, may_have_children=False, threads=None):
    """The worker process's target: serve chunks until told to stop, EOF, or ``maxtasks``.

    ``threads``: ``limit_threads``'s arguments (the joblib backend's workers), or None.

    ``may_have_children``: an Executor's worker, whose calls may start processes of their own,
    as ProcessPoolExecutor's workers are not daemonic.  (Locally the worker stays daemonic: it
    ends with the program.  Here it only ceases to refuse children, which multiprocessing joins
    when the worker ends; a worker that is killed leaves them, as locally, until the agent ends
    its process group with the connection.)"""
    if threads is not None:
        limit_threads(*threads)
    if may_have_children:
        import multiprocessing

        multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]
    if initializer is not None:
        try:
            share_globals(initializer)(*initargs)
        except BaseException:
            conn.send_bytes(pickle.dumps(("init-error", traceback.format_exc())))
            raise
    conn.send_bytes(pickle.dumps(("hello", os.getpid(), os.getppid(), usable_cpus())))
    funcs = {}  # type: dict[bytes, object]  # the last few functions by their pickle
    done = 0
    while maxtasks is None or done < maxtasks:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except EOFError:
            break
        if msg[0] == "blob":
            for old in msg[2]:
                _BLOBS.pop(old, None)
            _BLOBS[msg[1]] = conn.recv_bytes()
            continue
        if msg[0] != "task":
            break
        _, cid, mode, fbytes, abytes = msg
        catch = BaseException if mode == SUBMIT else Exception
        del msg
        try:
            func = funcs.get(fbytes)
            if func is None:
                func = share_globals(pickle.loads(fbytes))
                if len(funcs) >= _FUNC_CACHE:
                    funcs.pop(next(iter(funcs)))
                funcs[fbytes] = func
            items = pickle.loads(abytes)
        except catch as exc:
            # cannot even unpickle the task: every element fails with that error
            conn.send_bytes(pickle.dumps(("failed", cid, _error(_unpickling_failed(exc, mode))),
                                         pickle.HIGHEST_PROTOCOL))
            done += 1
            continue
        del abytes
        all_ok, results = run_chunk(func, mode, items)
        del items, func
        data = _encode(cid, results, all_ok, mode)
        del results
        conn.send_bytes(data)
        del data
        done += 1
    conn.close()


def _unpickling_failed(exc, mode):
    """The Executor's task that cannot be unpickled here: ProcessPoolExecutor's worker dies of
    it and the future fails with BrokenProcessPool; this worker lives on, the future fails alike."""
    from . import spawn

    if spawn.explain(exc) is None:  # (a module of the user's is newer than this host's Python, or the host has its own)
        _while_loading(exc)
    if mode != SUBMIT:
        return exc
    from concurrent.futures.process import BrokenProcessPool

    broken = BrokenProcessPool("the task could not be unpickled on the worker: %s: %s" % (type(exc).__name__, exc))
    broken.__cause__ = exc
    return broken


def _while_loading(exc):
    """Say that ``exc`` came from loading the task, not from the user's function: a package of the
    host's that cannot rebuild what the user's release pickled (numpy's random generators) raised
    a bare ``ValueError`` that read as the function's own."""
    from . import spawn

    host = spawn.this_host()
    spawn.add_to_message(exc, "raised while the worker loaded the task%s, Python %d.%d, before your function ran"
                         % (" on %s" % host if host else "", sys.version_info[0], sys.version_info[1]))


def process_chunk(fn, chunk):
    """``Executor.map`` with a chunksize: one task computes a list of results."""
    fn = share_globals(fn)
    return [fn(*args) for args in chunk]


def run_calls(calls, nested=None):
    """One joblib batch (``remoteproc.joblib``): ``[func(*args, **kwargs) for func, args, kwargs in calls]``.

    ``nested`` is joblib's backend for a ``Parallel`` inside one of the calls, as joblib's
    ``BatchedCalls`` sets it around them (threads, or sequential deeper down), given as plain
    data ``(name, nesting_level, n_jobs)`` so that a host needs no joblib to take it.  It is
    set only when joblib is already imported here (unpickling calls that refer to it imports
    it); otherwise joblib's default there would be loky, which in this daemonic worker warns
    and runs the inner loop serially.
    """
    shared = {}  # type: dict[int, types.FunctionType]  # id(func) -> func with its module's shared globals
    out = []
    with _joblib_nested(nested):
        for func, args, kwargs in calls:
            f = shared.get(id(func))
            if f is None:
                f = shared[id(func)] = share_globals(func)
            out.append(f(*args, **kwargs))
    return out


def _joblib_nested(nested):
    """joblib's ``parallel_config`` for the nested backend ``(name, nesting_level, n_jobs)``, if joblib is loaded."""
    joblib = sys.modules.get("joblib")
    if nested is None or joblib is None:
        return contextlib.nullcontext()
    try:
        from joblib import _parallel_backends as backends

        name, level, n_jobs = nested
        cls = backends.ThreadingBackend if name == "threading" else backends.SequentialBackend
        config = getattr(joblib, "parallel_config", None)
        if config is not None:
            return config(backend=cls(nesting_level=level), n_jobs=n_jobs)
        return joblib.parallel_backend(cls(nesting_level=level), n_jobs=n_jobs)
    except Exception:       # another joblib than the caller's: its own default, as before
        return contextlib.nullcontext()
