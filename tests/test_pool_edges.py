"""Pool and Executor at their edges, end to end against the loopback sshd (and an sshd of the test's own
for a host that goes away for good).

Behaviours covered here:

* arguments a pool cannot work with are refused before any connection is made;
* a function or argument that pickles here but cannot be unpickled on the worker fails that task
  only (the Executor's future with ``BrokenProcessPool``); a result that cannot be unpickled here
  fails with ``ResultUnpicklingError``; a ``multiprocessing.Queue`` argument names the alternative;
* arguments bigger than the worker's socket buffer arrive (the manager waits for it to drain);
* a worker that dies in its initializer (``os._exit``, or its connection lost) fails ``Pool()``
  with why; a replacement worker whose initializer raises, or that cannot be started at all (its
  initializer's arguments no longer pickle), marks its host broken and later tasks fail at once;
* a one-host pool whose connection is lost, without retries: later tasks fail at once, naming
  the host and why;
* with ``retries``: a task whose connection is lost runs again once the host is back
  (``maxtasksperchild`` too); a host that never comes back is tried again with backoff
  while the other hosts go on, until the pool ends; a pool terminated while a host's workers are
  being started again leaves none of them behind;
* ``terminate()`` kills a worker that ignores SIGTERM after the grace, and drops the result it
  sends meanwhile;
* a callback that raises is logged and the pool goes on; a callback that closes and joins the
  pool does not deadlock;
* the Executor: a cancelled future never runs; ``shutdown(wait=False)`` returns at once and the
  work finishes; shutting down twice;
* the same host twice in ``hosts``; a forked child of a process with a pool leaves it alone;
* a ``multiprocessing.Queue`` or ``Lock`` task argument (or queue item) names ``remoteproc.Queue``/
  ``Lock``, as the docs promise;
* with ``retries``, a replacement worker whose start meets the connection's loss leaves its host
  lost (and reconnected), not broken for good.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

import cloudpickle
import pytest
from own_sshd import own_sshd
from proctable import eventually, gone

import remoteproc
from remoteproc import Executor, Pool
from remoteproc.tasks import ResultUnpicklingError, WorkerDiedError, WorkerLostError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.loopback_only]     # kills processes of this machine

LOCAL_PID = os.getpid()      # (shipped by value: a remote copy of this module sees the test's pid)


# -- remote targets ------------------------------------------------------------------------------

def square(x):
    return x * x


def size(data):
    return len(data)


def naps(seconds):
    time.sleep(seconds)
    return seconds


def no_positive(x):
    if x > 0:
        raise ValueError("positive")
    return x


def worker_pid(_x=None):
    return os.getpid()


def exit_now(code):
    os._exit(code)


def exit_saying(code, words):
    sys.stderr.write("a line of an earlier task\n  indented detail\n%s\n" % words)
    sys.stderr.flush()
    os._exit(code)


def kill_my_agent(_x=None):
    """Kills the remote agent that started this worker: its connection is lost."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)


def kill_my_agent_once(marker):
    """The first time: the connection is lost under this task; after that: the task's result."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        kill_my_agent()
    return "ran again"


def touch(path):
    with open(path, "w"):
        pass


def ignores_sigterm(seconds, marker):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "finished anyway"


def _rebuild_only_here():
    if os.getpid() != LOCAL_PID:
        raise ValueError("cannot be rebuilt on the host")
    return OnlyHere()


class OnlyHere:
    """Pickles anywhere; unpickles only in the test's process."""

    def __reduce__(self):
        return (_rebuild_only_here, ())


def _rebuild_only_there():
    if os.getpid() == LOCAL_PID:
        raise ValueError("cannot be rebuilt here")
    return OnlyThere()


class OnlyThere:
    """Pickles anywhere; unpickles only on the host."""

    def __reduce__(self):
        return (_rebuild_only_there, ())


def returns_only_there(_x):
    return OnlyThere()


def init_exits(code):
    os._exit(code)


def init_fails_once_marked(marker):
    if os.path.exists(marker):
        raise RuntimeError("this initializer fails from now on")


def init_takes_state(state):
    pass


def init_slow_once_marked(directory):
    """Slow (and says so, with its pid) once the test put a marker there."""
    if os.path.exists(os.path.join(directory, "slow")):
        with open(os.path.join(directory, "pid-%d" % os.getpid()), "w"):
            pass
        time.sleep(3)


def _wait_for(predicate, timeout=30.0):
    return eventually(predicate, timeout, 0.1)


# -- arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, words", [
    ({"retries": -1}, ValueError, "retries"),
    ({"retries": True}, ValueError, "retries"),
    ({"processes_per_host": 0}, ValueError, "processes_per_host"),
    ({"maxtasksperchild": 0}, ValueError, "maxtasksperchild"),
    ({"initializer": "not callable"}, TypeError, "initializer"),
])
def test_arguments_a_pool_cannot_use_are_refused_before_connecting(kwargs, error, words):
    for cls in (Pool, Executor):
        if cls is Executor and "maxtasksperchild" in kwargs:
            kwargs, words = {"max_tasks_per_child": kwargs["maxtasksperchild"]}, "max_tasks_per_child"
        with pytest.raises(error, match=words):
            cls("nobody@host.invalid", **kwargs)


@pytest.mark.parametrize("hosts", [[], [("nobody@host.invalid", "not options")], [("h", {}, 0)], [42]])
def test_hosts_a_pool_cannot_use_are_refused(hosts):
    with pytest.raises(remoteproc.ConfigError):
        Pool(hosts)


# -- what cannot travel ----------------------------------------------------------------------------

@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_what_cannot_be_unpickled_on_one_side_fails_that_task_only(host, ssh_options):
    with Pool(host, processes_per_host=1, **ssh_options) as pool:
        with pytest.raises(ValueError, match="cannot be rebuilt on the host") as info:
            pool.apply(square, (OnlyHere(),))
        assert "pool worker pid" in str(info.value.__cause__)       # the remote traceback
        assert "(raised while the worker loaded the task on %s, Python " % host in str(info.value), info.value
        with pytest.raises(ResultUnpicklingError, match="cannot unpickle the results") as lost:
            pool.apply(returns_only_there, (1,))
        assert isinstance(lost.value, concurrent.futures.process.BrokenProcessPool) and lost.value.host == host
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]      # the worker goes on
    with Executor(host, processes_per_host=1, **ssh_options) as ex:
        future = ex.submit(square, OnlyHere())
        assert isinstance(future.exception(60), concurrent.futures.process.BrokenProcessPool)
        assert "while the worker loaded the task on %s" % host in str(future.exception()), future.exception()
        assert ex.submit(square, 7).result(60) == 49


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_multiprocessing_queue_as_a_task_argument_names_the_alternative(host, ssh_options):
    with Pool(host, processes_per_host=1, **ssh_options) as pool:
        with pytest.raises(remoteproc.PicklingError, match="remoteproc.Queue") as info:
            pool.apply_async(size, (multiprocessing.Queue(),))
        assert "cannot send the arguments to the pool's workers on %s: a multiprocessing Queue cannot be sent" % (
            host) in str(info.value)
        with pytest.raises(remoteproc.PicklingError, match=r"remoteproc\.Lock"):
            pool.map(size, [multiprocessing.Lock()])
    q = remoteproc.Queue()
    with pytest.raises(TypeError, match="remoteproc.Event"):     # (an item too, in the caller)
        q.put(multiprocessing.Event())


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_arguments_bigger_than_the_worker_s_socket_buffer(host, ssh_options):
    blobs = [bytes([i]) * (8 << 20) for i in range(3)]
    with Pool(host, processes_per_host=1, **ssh_options) as pool:
        assert pool.map(size, blobs, chunksize=1) == [8 << 20] * 3


def affinity(_):
    return sorted(os.sched_getaffinity(0)), os.getpid()


@pytest.mark.one_transport     # (the worker's count: alike on both transports)
@pytest.mark.loopback_only     # (taskset, and a host of 2 CPUs or more: this machine)
def test_a_host_s_workers_are_as_many_as_the_cpus_a_process_may_use_there(host, ssh_options):
    """A batch job's share of a node (Slurm, a cpuset, taskset) is the CPUs the host's processes may
    use, not the machine's count: one worker per usable CPU, as Python 3.13's Pool counts."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a host of 2 CPUs or more to narrow")
    # (the login shell narrows itself to CPU 0, and the agent it execs inherits that)
    with Pool(host, setup="taskset -pc 0 $$ >/dev/null", **ssh_options) as pool:
        assert len(pool.workers()) == 1, pool.workers()
        assert {tuple(cpus) for cpus, _ in pool.map(affinity, range(4))} == {(0,)}
    with Pool(host, **ssh_options) as pool:          # (the same host without it: every CPU)
        assert len(pool.workers()) == os.cpu_count()


# -- workers that die while starting ---------------------------------------------------------------------

@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_worker_that_exits_in_its_initializer(host, ssh_options):
    with pytest.raises(remoteproc.RemoteProcessError, match=r"ended \(exitcode 3\) before it was ready") as info:
        Pool(host, processes_per_host=1, initializer=init_exits, initargs=(3,), **ssh_options)
    assert info.value.host == host


def test_a_worker_whose_connection_is_lost_in_its_initializer(host, ssh_options):
    with pytest.raises(remoteproc.ConnectionLostError, match="lost while starting a pool worker") as info:
        Pool(host, processes_per_host=1, initializer=kill_my_agent, **ssh_options)
    assert info.value.host == host


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_worker_that_dies_in_a_task_is_explained_by_its_last_words(host, ssh_options, capfd):
    """A task that ends its worker (a C library's abort, os._exit) failed with the exit code alone;
    what the worker said last on stderr, which pytest or cron may have taken, is quoted too."""
    with Pool(host, processes_per_host=1, **ssh_options) as pool:
        with pytest.raises(WorkerDiedError, match="exitcode 3") as info:
            pool.apply(exit_saying, (3, "fatal: out of widgets"))
        assert str(info.value).endswith("; its stderr ended with:\nfatal: out of widgets"), info.value
        with pytest.raises(WorkerDiedError) as quiet:
            pool.apply(exit_now, (4,))
        assert str(quiet.value).endswith("while running this task"), quiet.value     # (it said nothing)
    assert "fatal: out of widgets" in capfd.readouterr().err       # (and said it where it always did)


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_replacement_whose_initializer_raises_breaks_its_host(host, ssh_options, tmp_path):
    marker = str(tmp_path / "fail-now")
    with Pool(host, processes_per_host=1, initializer=init_fails_once_marked, initargs=(marker,),
              **ssh_options) as pool:
        assert pool.apply(square, (3,)) == 9
        open(marker, "w").close()
        with pytest.raises(WorkerDiedError, match="exitcode 7"):
            pool.apply(exit_now, (7,))           # its replacement's initializer raises
        with pytest.raises(remoteproc.RemoteProcessError, match="initializer raised"):
            pool.apply(square, (4,))
        assert _wait_for(lambda: not pool.hosts_status()[host]["up"])
        status = pool.hosts_status()[host]
        assert status["error"] == "its initializer raised" and status["workers"] == 0
        with pytest.raises(remoteproc.RemoteProcessError, match="no pool worker is left"):
            pool.apply(square, (5,))


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_replacement_that_cannot_be_started_breaks_its_host(host, ssh_options):
    """The initializer's arguments are pickled again for every replacement worker."""
    state = {"tag": "fine"}
    with Pool(host, processes_per_host=1, initializer=init_takes_state, initargs=(state,), **ssh_options) as pool:
        assert pool.apply(square, (3,)) == 9
        state["lock"] = threading.Lock()        # from now on they do not pickle
        with pytest.raises(WorkerDiedError):
            pool.apply(exit_now, (7,))
        status = pool.hosts_status()[host]
        assert not status["up"] and "lock" in status["error"]
        with pytest.raises(remoteproc.RemoteProcessError, match="no pool worker is left") as info:
            pool.apply(square, (5,))
        assert host in str(info.value)


def test_a_one_host_pool_whose_connection_is_lost_fails_later_tasks_at_once(host, ssh_options):
    with Pool(host, processes_per_host=1, **ssh_options) as pool:
        with pytest.raises(WorkerLostError, match="connection to this host was lost"):
            pool.apply(kill_my_agent)
        assert not pool.hosts_status()[host]["up"]
        later = pool.apply_async(square, (2,))
        assert later.ready(), "a task for a pool without workers must fail at once, not wait"
        with pytest.raises(remoteproc.RemoteProcessError, match="no pool worker is left .*lost"):
            later.get(0)


# -- retries ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("maxtasks", [None, 2])
def test_with_retries_a_task_whose_connection_is_lost_runs_again_once_the_host_is_back(
        host, ssh_options, tmp_path, caplog, maxtasks):
    caplog.set_level(logging.INFO, logger="remoteproc.pool")
    marker = str(tmp_path / "lost-once")
    with Pool(host, processes_per_host=2, maxtasksperchild=maxtasks, retries=1, **ssh_options) as pool:
        used = set(pool.map(worker_pid, range(4), chunksize=1))
        if maxtasks:        # every worker retires after two tasks: wait for their replacements
            assert _wait_for(lambda: used.isdisjoint(pid for _h, pid in pool.workers())), pool.workers()
        assert pool.apply(kill_my_agent_once, (marker,)) == "ran again"
        assert any("run again elsewhere" in r.getMessage() for r in caplog.records)
        assert _wait_for(lambda: pool.hosts_status()[host]["workers"] == 2), pool.hosts_status()
        assert pool.hosts_status()[host]["up"] and pool.hosts_status()[host]["down_since"] is None
        assert pool.map(square, range(8), chunksize=1) == [x * x for x in range(8)]
        pool.close()
        pool.join()
    assert pool.workers() == []


def test_a_host_that_never_comes_back_is_tried_with_backoff_until_the_pool_ends(host, ssh_options, tmp_path):
    transport = {"transport": ssh_options["transport"]} if "transport" in ssh_options else {}
    with own_sshd(str(tmp_path / "sshd")) as server:
        gone_host = "%s@127.0.0.1:%d" % (server.users[0], server.port)
        options = dict(transport, key_filename=server.client_key, known_hosts=server.known_hosts)
        pool = Pool([(gone_host, options), (host, ssh_options)], processes_per_host=1, retries=1)
        try:
            assert len(pool.workers()) == 2
            server.stop()                         # the sshd and its sessions: gone for good
            assert _wait_for(lambda: pool.hosts_status()[gone_host]["attempts"] >= 2, 30), pool.hosts_status()
            status = pool.hosts_status()[gone_host]
            assert not status["up"] and status["workers"] == 0 and status["error"]
            assert status["next_try"] - status["down_since"] > 2      # 1 s, then 2 s, ... apart
            assert pool.map(square, range(10)) == [x * x for x in range(10)]    # the other host goes on
        finally:
            pool.terminate()
    assert _wait_for(lambda: not [t for t in threading.enumerate() if t.name.endswith(gone_host)], 10), \
        "the reconnect thread outlived its pool"


def test_a_pool_terminated_while_a_host_s_workers_start_again_leaves_none_behind(host, ssh_options, tmp_path):
    directory = str(tmp_path)
    pool = Pool(host, processes_per_host=1, initializer=init_slow_once_marked, initargs=(directory,),
                retries=1, **ssh_options)
    try:
        open(os.path.join(directory, "slow"), "w").close()
        lost = pool.apply_async(kill_my_agent)
        # the connection is lost; 1 s later a new worker starts, and takes 3 s in its initializer
        assert _wait_for(lambda: [f for f in os.listdir(directory) if f.startswith("pid-")]), "no new worker"
    finally:
        pool.terminate()
    with pytest.raises(remoteproc.RemoteProcessError, match="terminated"):
        lost.get(10)
    (name,) = [f for f in os.listdir(directory) if f.startswith("pid-")]
    assert gone(int(name[4:]), 30), "the worker started again for a terminated pool was left running"
    assert _wait_for(lambda: not [t for t in threading.enumerate() if t.name.endswith(host)], 30)


def agent_pid(_x=None):
    return os.getppid()


@pytest.mark.parametrize("kind", [Pool, Executor])
def test_interrupted_while_another_host_connects_leaves_no_worker_behind(host, ssh_options, kind, monkeypatch):
    """Ctrl-C in ``Pool()`` while one host's first worker is up and another host is still
    connecting (it never answers): the KeyboardInterrupt comes through, the worker already started
    is stopped, and so is the one its host starts after that: none is left with no pool to own it."""
    import socket

    from remoteproc import workers

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)           # (takes the TCP connection, never says a word of SSH)
    up, spawned = [], []
    hello, spawn = workers.Starter.hello, workers.Starter.spawn

    def hello_then_interrupt(w):
        hello(w)
        if not up:
            up.append(w.pid)
            # (a SIGINT as Ctrl-C sends, to the main thread, which waits in Pool(): a real signal
            # interrupts its wait at once, where _thread.interrupt_main() would wait for the join)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def spawn_and_count(self, *args):
        w = spawn(self, *args)
        spawned.append(w.process)
        return w

    monkeypatch.setattr(workers.Starter, "hello", staticmethod(hello_then_interrupt))
    monkeypatch.setattr(workers.Starter, "spawn", spawn_and_count)
    silent_host = ("127.0.0.1", {"port": silent.getsockname()[1], "connect_timeout": 30}, 1)
    try:
        with pytest.raises(KeyboardInterrupt):
            kind([(host, {}, 2), silent_host], **ssh_options)
        assert up, "the good host's worker never said hello"
        # (the good host's second worker starts after the interruption: its own thread stops it)
        assert eventually(lambda: not [t for t in threading.enumerate() if t.name.endswith(host)], 30)
    finally:
        silent.close()
    assert not [p for p in multiprocessing.active_children() if "PoolWorker" in p.name]
    assert not any(p.is_alive() for p in spawned)
    assert all(gone(p.pid, 30) for p in spawned), "a worker started for the interrupted pool was left running"


def test_a_replacement_started_as_the_connection_dies_does_not_break_the_host_for_good(host, ssh_options):
    # (a python path of its own: a link, with these keepalive options, and an agent nobody else uses)
    options = dict(ssh_options, keepalive_interval=1, keepalive_count=1, python="/usr/bin/python3")
    pool = Pool(host, processes_per_host=2, maxtasksperchild=1, retries=1, **options)
    agent = None
    try:
        agent = pool.apply(agent_pid)
        assert _wait_for(lambda: len(pool.workers()) == 2)
        ran = []
        release = threading.Event()

        def hold_the_manager(pid):      # (callbacks run in the manager thread: it waits here)
            ran.append(pid)
            release.wait(20)

        pool.apply_async(worker_pid, callback=hold_the_manager)
        assert _wait_for(lambda: ran)
        (retired,) = [w for w in pool._core.workers if w.pid == ran[0]]
        from multiprocessing.connection import wait
        assert wait([retired.process.sentinel], 30), "the worker did not retire after its one task"
        os.kill(agent, signal.SIGSTOP)  # the connection dies unseen, just before its replacement starts
        release.set()
        assert _wait_for(lambda: not pool.hosts_status()[host]["up"], 30), "the loss was never seen"
        assert _wait_for(lambda: pool.hosts_status()[host]["workers"] == 2, 60), pool.hosts_status()
        assert pool.hosts_status()[host]["up"], pool.hosts_status()
        assert pool.map(square, range(6), chunksize=1) == [x * x for x in range(6)]
    finally:
        if agent is not None:
            with contextlib.suppress(ProcessLookupError):     # (gone already once its session closed)
                os.kill(agent, signal.SIGKILL)
                os.kill(agent, signal.SIGCONT)
        pool.terminate()


# -- ending --------------------------------------------------------------------------------------------

@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_terminate_kills_a_worker_that_ignores_sigterm_and_drops_its_late_result(host, ssh_options, tmp_path):
    marker = str(tmp_path / "running")
    pool = Pool(host, processes_per_host=1, **ssh_options)
    result = pool.apply_async(ignores_sigterm, (1.0, marker))
    assert _wait_for(lambda: os.path.exists(marker) and open(marker).read())
    pid = int(open(marker).read())
    pool.terminate()            # the worker finishes its task meanwhile: that result has nowhere to go
    with pytest.raises(remoteproc.RemoteProcessError, match="terminated"):
        result.get(0)
    assert gone(pid, 30)
    assert pool.workers() == []


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_callback_that_raises_is_logged_and_the_pool_goes_on(host, ssh_options, caplog):
    """multiprocessing's result thread dies of it (its pool then hangs); ours once ended the whole
    pool, failing every queued task with "the pool was terminated".  Now the callback's error is
    logged, as concurrent.futures logs a done-callback's, and the other tasks run."""
    def bad_callback(value):
        raise RuntimeError("callback failed on purpose")

    pool = Pool(host, processes_per_host=1, **ssh_options)
    try:
        first = pool.apply_async(naps, (0.5,), callback=bad_callback)
        waiting = pool.apply_async(naps, (0.1,))        # (one worker: this one waits its turn)
        failing = pool.map_async(no_positive, [1], error_callback=bad_callback)
        assert first.get(60) == 0.5
        assert waiting.get(60) == 0.1
        with pytest.raises(ValueError):
            failing.get(60)
        assert pool.map(square, range(4)) == [0, 1, 4, 9]
        logged = [r for r in caplog.records if "raised (the pool goes on)" in r.getMessage()]
        assert len(logged) == 2 and "callback failed on purpose" in str(logged[0].exc_info[1])
    finally:
        pool.terminate()


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_callback_that_raises_system_exit_is_logged_too(host, ssh_options, caplog):
    """Found by an audit: SystemExit passed the ``except Exception`` and silently ended the manager thread;
    the pool still took tasks, which nothing ran (map hung, join returned at once)."""
    def exits(value):
        raise SystemExit("bye")

    pool = Pool(host, processes_per_host=1, **ssh_options)
    try:
        assert pool.apply_async(square, (3,), callback=exits).get(60) == 9
        assert pool.map_async(square, range(4)).get(60) == [0, 1, 4, 9]
        assert any("raised (the pool goes on)" in r.getMessage() for r in caplog.records)
    finally:
        pool.terminate()


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_callback_that_closes_and_joins_its_pool(host, ssh_options):
    pool = Pool(host, processes_per_host=1, **ssh_options)
    done = threading.Event()

    def closes(value):
        pool.close()
        pool.join()             # from the manager thread itself: must not wait for itself
        done.set()

    try:
        assert pool.apply_async(square, (3,), callback=closes).get(60) == 9
        assert done.wait(30)
        pool.join()
        assert pool.workers() == []
    finally:
        pool.terminate()


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_executor_cancelled_futures_never_run_and_shutdown_without_waiting(host, ssh_options, tmp_path):
    ex = Executor(host, processes_per_host=1, **ssh_options)
    try:
        running = ex.submit(naps, 1.0)
        queued = [ex.submit(touch, str(tmp_path / ("f%d" % i))) for i in range(3)]
        assert all(f.cancel() for f in queued)
        kept = ex.submit(square, 5)
        ex.shutdown(wait=False)
        assert running.result(60) == 1.0 and kept.result(60) == 25
        with pytest.raises(RuntimeError):
            ex.submit(square, 1)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    assert not os.listdir(tmp_path), "a cancelled future ran"
    assert ex.workers() == []


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_the_same_host_twice(host, ssh_options):
    with Pool([host, host], processes_per_host=1, **ssh_options) as pool:
        status = pool.hosts_status()
        assert list(status) == [host] and status[host]["workers"] == 2
        assert sorted(pool.map(square, range(4))) == [0, 1, 4, 9]


@pytest.mark.one_transport     # (the scheduler's logic: alike on both transports)
def test_a_forked_child_leaves_its_parent_s_pool_alone(host, ssh_options):
    with Pool(host, processes_per_host=1, **ssh_options) as pool:
        pid = os.fork()
        if pid == 0:        # pragma: no cover - the child (measured by coverage's fork patch)
            ok = pool._core.state == "TERMINATE"
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pool.apply(square, (6,)) == 36


def test_hosts_status_while_a_reconnect_attempt_is_under_way():
    """A reconnect attempt may take the connect timeout (a cut link): meanwhile ``next_try`` is None,
    not a time already past; a failed attempt counts, and sets the next try, at once (a reader never
    sees one without the other).  (The reconnector's bookkeeping alone: its starter is a stand-in whose
    attempts the test releases.)"""
    from remoteproc import reconnect

    class Starter:
        def __init__(self):
            self.entered, self.release = threading.Semaphore(0), threading.Semaphore(0)

        def _start_host(self, index, host, options, count, out):
            self.entered.release()
            self.release.acquire(timeout=30)
            out[index] = (ConnectionRefusedError("refused"), [])

    starter = Starter()
    r = reconnect.Reconnector(starter, lambda host, workers: True)   # type: ignore[arg-type]
    old = reconnect.FIRST_DELAY
    reconnect.FIRST_DELAY = 0.05
    try:
        r.lost("h", {}, 1, "connection lost")
        first = r.status("h")
        assert first["attempts"] == 0 and first["next_try"] > first["down_since"]
        assert starter.entered.acquire(timeout=10)              # the first attempt is under way
        during = r.status("h")
        assert during["attempts"] == 0 and during["next_try"] is None
        starter.release.release()                                # ... and fails
        assert eventually(lambda: r.status("h")["attempts"] == 1, 10)
        after = r.status("h")
        assert "refused" in after["error"] and after["next_try"] > time.time() - 1
    finally:
        r.stop()
        reconnect.FIRST_DELAY = old
        starter.release.release()


def test_a_pool_whose_hosts_fail_in_several_ways_says_every_one(host, ssh_options):
    """Found by an audit: over eight hosts with four broken, Pool() raised the first host's error
    only (after the slowest had timed out), and the others' (an unknown key, a refused login) were
    dropped: one fixed per run.  The first host's error, its type kept, now says every host's."""
    from remoteproc.testing.net import HOST, free_port

    if "port" not in ssh_options:
        pytest.skip("the loopback sshd's own options only")
    own = {k: v for k, v in ssh_options.items() if k not in ("port", "username")}
    closed = "nobody@%s:%d" % (HOST, free_port())        # (nothing listens there)
    refused = "rp-no-such-user@%s:%d" % (HOST, ssh_options["port"])      # (the same sshd: that login is refused)
    with pytest.raises(remoteproc.ConnectError) as info:
        remoteproc.Pool([(closed, own, 1), (host, ssh_options, 1), (refused, own, 1)], 1)
    text = str(info.value)
    assert text.startswith(closed) and "and 1 other host failed to start: " in text, text
    others = text.split("and 1 other host failed to start: ", 1)[1]
    assert others.startswith("rp-no-such-user@") and ("authentication" in others.lower() or "log in" in others), text
    assert info.value.host == closed
