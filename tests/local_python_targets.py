"""Targets for tests/test_local_pythons.py that run on the host (standard library only)."""

import multiprocessing


def nested_pool(conn, method):
    """A Pool of the host's own multiprocessing in a remote child, started with ``method``."""
    with multiprocessing.get_context(method).Pool(1) as pool:
        conn.send(pool.map(abs, [-1, -2]))
    conn.close()


def fork_warnings(conn, with_a_thread):
    """The warnings that os.fork() gives here (CPython 3.12+ warns in a multi-threaded process)."""
    import os
    import threading
    import warnings

    stop = threading.Event()
    if with_a_thread:
        threading.Thread(target=stop.wait, args=(30,), daemon=True).start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    stop.set()
    conn.send([str(w.message) for w in caught])
    conn.close()
