"""Ctrl-C (SIGINT to the process group) while children run.

argv[1]: "handled" (children and parent catch KeyboardInterrupt, as careful programs do),
"twice" (the same, Ctrl-C pressed again during the children's clean-up), "unhandled" (nobody
catches it), "pool" (Ctrl-C during Pool.map in a ``with`` block), "pool-idiom" (workers ignore
SIGINT through the initializer; the parent catches KeyboardInterrupt and terminates the pool),
"executor" (Ctrl-C during Executor.map), "queue" (the parent waits in Queue.get()).
Prints "READY" when it is time for the Ctrl-C, and before it "PIDS host pid ppid" lines that
let the test check that nothing is left running.
"""
import os
import sys
import time

from _mp import Pool, Process, Queue


def sleeper(q, handled, cleanup=0.0):
    q.put((os.uname().nodename, os.getpid(), os.getppid()))
    if handled:
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print("child interrupted, cleaning up", flush=True)
            time.sleep(cleanup)
            sys.exit(130)
    else:
        time.sleep(60)


def slow_square(x):
    time.sleep(0.2)
    return x * x


def ignore_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def where(_):
    time.sleep(0.3)
    return os.uname().nodename, os.getpid(), os.getppid()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "pool":
        with Pool(2) as pool:
            for host, pid, ppid in set(pool.map(where, range(8), chunksize=1)):
                print("PIDS", host, pid, ppid, flush=True)
            print("READY", flush=True)
            try:
                pool.map(slow_square, range(1000), chunksize=1)
            except KeyboardInterrupt:
                print("parent: map interrupted", flush=True)
                raise
        sys.exit(0)
    if mode == "pool-idiom":
        pool = Pool(2, initializer=ignore_sigint)
        for host, pid, ppid in set(pool.map(where, range(8), chunksize=1)):
            print("PIDS", host, pid, ppid, flush=True)
        print("READY", flush=True)
        try:
            pool.map_async(slow_square, range(1000), chunksize=1).get(60)
        except KeyboardInterrupt:
            print("parent: interrupted, terminating the pool", flush=True)
            pool.terminate()
        else:
            pool.close()
        pool.join()
        print("pool joined", flush=True)
        sys.exit(1)
    if mode == "executor":
        from _mp import Executor

        with Executor(2) as ex:
            for host, pid, ppid in set(ex.map(where, range(8))):
                print("PIDS", host, pid, ppid, flush=True)
            print("READY", flush=True)
            try:
                list(ex.map(slow_square, range(40)))
            except KeyboardInterrupt:
                print("parent: map interrupted", flush=True)
                raise
    if mode == "queue":
        q = Queue()
        procs = [Process(target=sleeper, args=(q, True)) for _ in range(2)]
        for p in procs:
            p.start()
        for _ in procs:
            print("PIDS %s %d %d" % q.get(timeout=60), flush=True)
        print("READY", flush=True)
        try:
            q.get()                          # nothing ever comes
        except KeyboardInterrupt:
            print("parent: get interrupted", flush=True)
        for p in procs:
            p.join(10)
        print("exit codes", [p.exitcode for p in procs], flush=True)
        q.put("still usable")
        print(q.get(timeout=10), flush=True)
        sys.exit(0)
    q = Queue()
    cleanup = 3.0 if mode == "twice" else 0.0
    procs = [Process(target=sleeper, args=(q, mode in ("handled", "twice"), cleanup)) for _ in range(3)]
    for p in procs:
        p.start()
    for _ in procs:
        host, pid, ppid = q.get(timeout=60)
        print("PIDS", host, pid, ppid, flush=True)
    print("READY", flush=True)
    if mode in ("handled", "twice"):
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            print("parent interrupted", flush=True)
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.terminate()
                    p.join(10)
            print("exit codes", [p.exitcode for p in procs], flush=True)
            sys.exit(130)
    else:
        for p in procs:
            p.join()
