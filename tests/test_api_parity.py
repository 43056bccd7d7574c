"""Side-by-side parity with multiprocessing (fork) in the less-travelled corners: what a daemonic
child may start, ``join()`` of oneself, ``Queue.join_thread()`` on an open queue, a Pool task whose
``args``/``kwds`` are no sequence or mapping, and a name the child's ``__main__`` lacks. Each case runs
the same code with multiprocessing and with remoteproc and compares types and messages."""

from __future__ import annotations

import multiprocessing
import sys

import pytest

import remoteproc

pytestmark = [pytest.mark.timeout(60), pytest.mark.one_transport]

FORK = multiprocessing.get_context("fork")


def _outcome(call):
    try:
        return ("ok", call())
    except BaseException as exc:        # noqa: BLE001 - the outcome is what is compared
        return (type(exc).__name__, str(exc))


# -- processes -------------------------------------------------------------------------------------------------

def _daemon_starts_children(report, host, options):
    """In a daemonic child: start a local fork Process, then a RemoteProcess."""
    import remoteproc as rp

    made = (lambda: FORK.Process(target=sys.exit), lambda: rp.RemoteProcess(host, target=sys.exit, **options))
    report.send([_outcome(lambda make=make: make().start()) for make in made])
    report.send([_outcome(lambda: multiprocessing.current_process().join())])


def test_a_daemonic_child_cannot_start_children_and_cannot_join_itself(host, ssh_options):
    results = []
    for make in (FORK.Process, lambda **kw: remoteproc.RemoteProcess(host, **kw, **ssh_options)):
        a, b = multiprocessing.Pipe()
        p = make(target=_daemon_starts_children, args=(b, host, ssh_options), daemon=True)
        p.start()
        assert a.poll(30)
        got = a.recv() + (a.recv() if a.poll(30) else [])
        p.join(30)
        results.append((got, p.exitcode))
    assert results[1] == results[0]
    assert results[0] == ([("AssertionError", "daemonic processes are not allowed to have children")] * 2
                          + [("AssertionError", "can only join a child process")], 0)


# -- __main__ --------------------------------------------------------------------------------------------------

def _main_lookups(report):
    """In the child: a name the program's ``__main__`` does not define, asked of its ``__main__``."""
    main = sys.modules["__main__"]
    report.send([_outcome(lambda: main.no_such_definition), hasattr(main, "no_such_definition")])


def test_a_name_the_program_does_not_define_is_missing_from_the_childs_main(host, ssh_options):
    """The remote child's ``__main__`` loads the script's definitions when first named; any other name
    is an AttributeError with the message a local child's ``__main__`` gives (pickle, multiprocessing
    and plugins probe ``__main__`` with getattr and hasattr)."""
    results = []
    for make in (FORK.Process, lambda **kw: remoteproc.RemoteProcess(host, **kw, **ssh_options)):
        a, b = multiprocessing.Pipe()
        p = make(target=_main_lookups, args=(b,))
        p.start()
        assert a.poll(30)
        results.append(a.recv())
        p.join(30)
        assert p.exitcode == 0
    assert results[1] == results[0]
    assert results[0] == [("AttributeError", "module '__main__' has no attribute 'no_such_definition'"), False]


# -- Queue.join_thread() -----------------------------------------------------------------------------------------

def _join_thread_open_and_closed(q, report):
    first = _outcome(q.join_thread)
    q.close()
    report.send([first, _outcome(q.join_thread)])


def _normalised(outcome):
    kind, text = outcome
    if not isinstance(text, str):
        return outcome
    return (kind, text.split(" object at ")[0].replace("remoteproc.agent.proxies.", "").replace(
        "remoteproc.queues.", "").replace("multiprocessing.queues.", ""))


def test_join_thread_of_an_open_queue_asserts_as_multiprocessing(host, ssh_options):
    """multiprocessing: ``AssertionError("Queue ... not closed")``; remoteproc's was a silent no-op."""
    expected = [("AssertionError", "Queue <Queue"), ("ok", None)]
    owner = []
    for lib in (FORK, remoteproc):
        q = lib.Queue()
        first = _normalised(_outcome(q.join_thread))
        q.close()
        owner.append([first, _outcome(q.join_thread)])
    assert owner[1] == owner[0] == expected
    children = []
    for lib, make in ((FORK, FORK.Process),
                      (remoteproc, lambda **kw: remoteproc.RemoteProcess(host, **kw, **ssh_options))):
        a, b = multiprocessing.Pipe()
        p = make(target=_join_thread_open_and_closed, args=(lib.Queue(), b))
        p.start()
        assert a.poll(30)
        children.append([_normalised(o) for o in a.recv()])
        p.join(30)
        assert p.exitcode == 0
    assert children[1] == children[0] == expected


# -- Pool.apply_async with args that are no sequence -------------------------------------------------------------

def square(x):
    return x * x


def test_apply_async_with_bad_args_fails_its_result_not_the_call(host, ssh_options):
    """multiprocessing calls ``func(*args, **kwds)`` in the worker: a non-iterable ``args`` (or a
    non-mapping ``kwds``) fails the result and reaches ``error_callback``; ``apply_async`` returns."""
    outcomes = []
    for make in (lambda: FORK.Pool(1), lambda: remoteproc.Pool([host], processes_per_host=1, **ssh_options)):
        with make() as pool:
            errors: list = []
            got = []
            for args, kwds in ((3, None), ((), [1])):
                r = pool.apply_async(square, args, kwds or {},
                                     error_callback=lambda e, errors=errors: errors.append(type(e)))
                got.append(_outcome(lambda r=r: r.get(30)))
                assert r.ready() and not r.successful()
            got.append(_outcome(lambda: pool.apply(square, (4,))))
            outcomes.append((got, errors))
    (mp_got, mp_errors), (rp_got, rp_errors) = outcomes
    assert rp_errors == mp_errors == [TypeError, TypeError]
    assert [kind for kind, _ in rp_got] == [kind for kind, _ in mp_got] == ["TypeError", "TypeError", "ok"]
    assert "argument after * must be an iterable, not int" in rp_got[0][1]
    assert "argument after ** must be a mapping, not list" in rp_got[1][1]
    assert rp_got[2] == mp_got[2] == ("ok", 16)


def _construct_in_a_daemon(report, host):
    from remoteproc.relay import client

    p = remoteproc.RemoteProcess(host)
    report.send((_outcome(p.start), client.current() is None))


def test_a_daemonic_process_constructing_a_remote_process_starts_no_relay(host):
    """Its start() can only fail (as multiprocessing's): the constructor leaves the relay process alone."""
    a, b = multiprocessing.Pipe()
    p = FORK.Process(target=_construct_in_a_daemon, args=(b, host), daemon=True)
    p.start()
    assert a.poll(30)
    assert a.recv() == (("AssertionError", "daemonic processes are not allowed to have children"), True)
    p.join(30)
    assert p.exitcode == 0
