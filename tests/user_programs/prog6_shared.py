"""Shared state: Value/Array with get_lock(), Manager dict/list, Barrier(4), Condition.wait_for."""
import sys
import threading
import time

from _mp import Array, Barrier, Condition, Manager, Process, Value

ADDS = 100


def add(counter, slots, i):
    for _ in range(ADDS):
        with counter.get_lock():
            counter.value += 1
    with slots.get_lock():
        slots[i] = i * 10
        slots[4] += 1


def update(d, lst, i):
    d["worker%d" % i] = i * i
    lst.append(i)
    d["sum"] = d.get("sum", 0)       # a read-modify-write without a lock: not asserted


def meet(barrier, out, i):
    n = barrier.wait(30)
    with out.get_lock():
        out[i] = n


def meet_alone(barrier, out, i):
    try:
        barrier.wait(1.0)
        out[i] = 1
    except threading.BrokenBarrierError:
        out[i] = 2


def waiter(cond, level, need, out, i):
    with cond:
        ok = cond.wait_for(lambda: level.value >= need, timeout=30)
    out[i] = int(ok) * 10 + level.value


def run_all(procs):
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    return [p.exitcode for p in procs]


if __name__ == "__main__":
    counter, slots = Value("i", 0), Array("i", 5)
    print("value/array exits", run_all([Process(target=add, args=(counter, slots, i)) for i in range(4)]))
    print("counter", counter.value, "slots", slots[:])

    with Manager() as m:
        d, lst = m.dict(), m.list()
        print("manager exits", run_all([Process(target=update, args=(d, lst, i)) for i in range(4)]))
        print("dict", sorted((k, v) for k, v in d.items() if k != "sum"), "list", sorted(lst))

    barrier, out = Barrier(4), Array("i", [-1] * 4)
    print("barrier exits", run_all([Process(target=meet, args=(barrier, out, i)) for i in range(4)]))
    print("barrier indices", sorted(out[:]), "broken", barrier.broken, "waiting", barrier.n_waiting)

    barrier, out = Barrier(3), Array("i", [-1] * 2)
    print("short barrier exits", run_all([Process(target=meet_alone, args=(barrier, out, i)) for i in range(2)]))
    print("a party missing: every waiter gets BrokenBarrierError", out[:], "broken", barrier.broken)
    barrier.reset()
    print("after reset, broken", barrier.broken)

    cond, level, got = Condition(), Value("i", 0), Array("i", [-1] * 3)
    procs = [Process(target=waiter, args=(cond, level, need, got, i)) for i, need in enumerate((1, 2, 3))]
    for p in procs:
        p.start()
    time.sleep(1.0)
    print("waiting before any notify", [p.is_alive() for p in procs])
    for step in (1, 2, 3):
        with cond:
            level.value = step
            cond.notify_all()
        time.sleep(0.3)
    for p in procs:
        p.join(30)
    print("condition exits", [p.exitcode for p in procs], "saw", [g // 10 for g in got[:]],
          "levels >= need", all(g % 10 >= need for g, need in zip(got[:], (1, 2, 3))))
    sys.stdout.flush()
