"""A child with a heartbeat over a Pipe; wait() over Pipes and sentinels; stuck children
terminated and killed; exit codes and join(timeout)."""
import signal
import sys
import time
from multiprocessing.connection import wait

from _mp import Pipe, Process


def heartbeat(conn, beats, period):
    for i in range(beats):
        conn.send(("beat", i))
        time.sleep(period)
    conn.send(("done", beats))
    conn.close()


def goes_silent(conn, beats):
    for i in range(beats):
        conn.send(("beat", i))
        time.sleep(0.05)
    while True:                      # hangs without a word, its end of the Pipe still open
        time.sleep(0.05)


def reporter(conn, delay, tag):
    time.sleep(delay)
    conn.send(tag)
    conn.close()
    time.sleep(delay)


def stuck(conn, ignore_term):
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send("stuck")
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    parent, child = Pipe()
    p = Process(target=heartbeat, args=(child, 8, 0.1))
    p.start()
    child.close()
    beats, silent = [], 0
    while True:
        if not parent.poll(5):
            silent += 1
            break
        kind, n = parent.recv()
        if kind == "done":
            break
        beats.append(n)
    print("beats", beats, "silent polls", silent)
    print("poll(0.2) on a quiet pipe", parent.poll(0.2))
    try:
        parent.recv()
    except EOFError:
        print("recv after the child closed: EOFError")
    p.join(10)
    print("heartbeat exit", p.exitcode)

    parent, child = Pipe()
    p = Process(target=goes_silent, args=(child, 3))
    p.start()
    child.close()
    beats = []
    while parent.poll(1.0):
        beats.append(parent.recv()[1])
    print("beats before silence", beats, "alive", p.is_alive())
    p.terminate()
    p.join(10)
    print("silent child terminated", p.exitcode)
    try:
        print("poll after its death", parent.poll(5))
        parent.recv()
    except EOFError:
        print("recv after its death: EOFError")

    ends, procs = [], []
    for delay, tag in ((0.6, "slow"), (0.1, "fast"), (0.3, "middle")):
        r, w = Pipe(duplex=False)
        q = Process(target=reporter, args=(w, delay, tag))
        q.start()
        w.close()
        ends.append(r)
        procs.append(q)
    waiting = ends + [q.sentinel for q in procs]
    events = []
    deadline = time.monotonic() + 30
    while waiting and time.monotonic() < deadline:
        for obj in wait(waiting, timeout=10):
            if isinstance(obj, int):
                events.append("exit")
                waiting.remove(obj)
            else:
                try:
                    events.append(obj.recv())
                except EOFError:
                    waiting.remove(obj)
    print("messages in order", [e for e in events if e != "exit"], "exits", events.count("exit"))
    print("first message came before the last exit", events.index("fast") < len(events) - 1)
    for q in procs:
        q.join(10)
    print("reporter exits", [q.exitcode for q in procs])

    for ignore_term in (False, True):
        a, b = Pipe()
        s = Process(target=stuck, args=(b, ignore_term))
        s.start()
        print("stuck says", a.recv())
        t = time.monotonic()
        s.join(0.5)
        waited = time.monotonic() - t
        print("join(0.5) on a stuck child: alive", s.is_alive(), "exitcode", s.exitcode,
              "waited about 0.5 s", 0.45 < waited < 10)
        s.terminate()
        s.join(1.0)
        if s.is_alive():
            print("SIGTERM ignored: still alive; kill()")
            s.kill()
            s.join(10)
        print("exitcode", s.exitcode, "alive", s.is_alive())
        print("sentinel ready", bool(wait([s.sentinel], timeout=5)))
        s.close()
        try:
            s.is_alive()
        except ValueError as e:
            print("after close:", e)
    sys.stdout.flush()
