"""The one name a user changes: ``multiprocessing`` here, remoteproc's across hosts.

Each program in this directory imports its multiprocessing names from here. With
``UP_HOSTS`` unset they are ``multiprocessing``'s own (and ``ProcessPoolExecutor``); with
``UP_HOSTS`` a JSON list of ``[spec, {ssh options}]`` they are remoteproc's, and each new
``Process`` goes to the next host in turn, as a user would write ``RemoteProcess(host, ...)``.
"""

from __future__ import annotations

import faulthandler
import itertools
import json
import os
import signal

# the test's stack dump of a hung program; only in the program itself, as children are the user's
faulthandler.register(signal.SIGUSR1, all_threads=True)
os.register_at_fork(after_in_child=lambda: faulthandler.unregister(signal.SIGUSR1))

HOSTS = [tuple(h) for h in json.loads(os.environ.get("UP_HOSTS") or "[]")]
REMOTE = bool(HOSTS)

if REMOTE:
    import remoteproc
    from remoteproc import (  # noqa: F401
        Array,
        Barrier,
        Condition,
        Event,
        JoinableQueue,
        Lock,
        Manager,
        Pipe,
        Queue,
        SimpleQueue,
        Value,
    )

    _turn = itertools.cycle(range(len(HOSTS)))

    def Process(*args, **kwargs):
        spec, options = HOSTS[next(_turn)]
        return remoteproc.RemoteProcess(spec, *args, **options, **kwargs)

    def _per_host(n: int) -> int:
        return max(1, -(-n // len(HOSTS)))

    def Pool(processes: int, **kwargs):
        return remoteproc.Pool([(s, o) for s, o in HOSTS], processes_per_host=_per_host(processes), **kwargs)

    def Executor(max_workers: int, **kwargs):
        return remoteproc.Executor([(s, o) for s, o in HOSTS], processes_per_host=_per_host(max_workers),
                                   **kwargs)
else:
    from concurrent.futures import ProcessPoolExecutor as Executor  # noqa: F401
    from multiprocessing import (  # noqa: F401
        Array,
        Barrier,
        Condition,
        Event,
        JoinableQueue,
        Lock,
        Manager,
        Pipe,
        Pool,
        Process,
        Queue,
        SimpleQueue,
        Value,
    )
