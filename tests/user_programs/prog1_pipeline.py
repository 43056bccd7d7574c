"""Producer -> 3 workers -> collector over JoinableQueues; one worker raises mid-way.

The failing worker takes the first items alone (the others wait for ``go``, which it sets as
it fails): a queue does not share items out fairly (multiprocessing's least of all: a worker
once had its third item only as item 445, and another never had three), so a worker that had
to win three items in a race now and then never failed."""
import sys
from dataclasses import dataclass

from _mp import Event, JoinableQueue, Process

N = 1000
WORKERS = 3


@dataclass
class Summary:
    count: int
    total: int


def producer(tasks, n, nworkers, ready):
    for _ in range(nworkers):
        ready.get()                          # every worker waits for items: each gets its share
    for i in range(n):
        tasks.put(i)
    for _ in range(nworkers):
        tasks.put(None)                      # one sentinel per worker


def worker(wid, tasks, results, fail_after, ready, go):
    done = 0
    ready.put(wid)
    if fail_after < 0 and not go.wait(60):
        raise RuntimeError("worker %d: the failing worker never failed" % wid)
    while True:
        item = tasks.get()
        try:
            if item is None:
                results.put(("done", wid))
                return
            if done == fail_after:
                go.set()
                raise ValueError("worker %d cannot handle item %d" % (wid, item))
            results.put(("item", item * item))
            done += 1
        finally:
            tasks.task_done()


def collector(results, nworkers, out):
    total = count = finished = 0
    while finished < nworkers:
        kind, value = results.get()
        if kind == "done":
            finished += 1
        else:
            total += value
            count += 1
        results.task_done()
    out.put(Summary(count, total))


if __name__ == "__main__":
    tasks, results, out, ready = JoinableQueue(), JoinableQueue(), JoinableQueue(), JoinableQueue()
    go = Event()
    prod = Process(target=producer, args=(tasks, N, WORKERS, ready))
    workers = [Process(target=worker, args=(w, tasks, results, 2 if w == 1 else -1, ready, go)) for w in range(WORKERS)]
    coll = Process(target=collector, args=(results, WORKERS, out))
    for p in [prod, *workers, coll]:
        p.start()
    prod.join()
    for w in workers:
        w.join(60)
    print("exitcodes", prod.exitcode, [w.exitcode for w in workers])
    dead = [i for i, w in enumerate(workers) if w.exitcode != 0]
    for i in dead:                           # the collector waits for every worker's "done"
        results.put(("done", i))
    left = 0
    while True:                              # the dead worker's sentinel is still queued
        try:
            tasks.get(timeout=1)
        except Exception:
            break
        left += 1
        tasks.task_done()
    tasks.join()
    print("left in tasks", left)
    summary = out.get(timeout=60)
    print("a Summary of __main__ came back", type(summary) is Summary)
    count, total = summary.count, summary.total
    out.task_done()
    results.join()
    coll.join(60)
    print("collected", count, "items; lost", N - count)
    missing = sum(i * i for i in range(N)) - total
    print("the sum lacks one item's square", round(missing ** 0.5) ** 2 == missing)
    print("collector exit", coll.exitcode)
    sys.stdout.flush()
