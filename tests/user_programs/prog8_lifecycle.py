"""The end of a program: a non-daemon child not joined (the exit handler joins it), a daemon
child still running (terminated at exit), a child that uses a multiprocessing Pool of its own
on its host, and a child with a lot of output."""
import multiprocessing
import os
import sys
import time

from _mp import Process, Queue


def late(q):
    q.put((os.uname().nodename, os.getpid(), os.getppid()))
    time.sleep(1.0)
    print("non-daemon child done", flush=True)


def forever(q):
    q.put((os.uname().nodename, os.getpid(), os.getppid()))
    time.sleep(120)
    print("daemon child was not terminated", flush=True)


def cube(x):
    return x ** 3


def nested(q):
    with multiprocessing.Pool(2) as pool:          # the host's own multiprocessing
        q.put(sum(pool.map(cube, range(100))))


def chatty(n):
    for i in range(n):
        print("line %06d" % i)
    sys.stdout.flush()
    sys.stderr.write("chatty done\n")


if __name__ == "__main__":
    q = Queue()
    p = Process(target=nested, args=(q,))
    p.start()
    print("nested pool", q.get(timeout=60) == sum(x ** 3 for x in range(100)))
    p.join(30)
    print("nested exit", p.exitcode)

    p = Process(target=chatty, args=(20000,))
    p.start()
    p.join(60)
    print("chatty exit", p.exitcode, flush=True)

    d = Process(target=forever, args=(q,), daemon=True)
    d.start()
    print("PIDS %s %d %d" % q.get(timeout=60), flush=True)
    n = Process(target=late, args=(q,))
    n.start()
    print("PIDS %s %d %d" % q.get(timeout=60), flush=True)
    print("parent ends without join", flush=True)
