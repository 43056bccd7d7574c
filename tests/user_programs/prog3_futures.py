"""concurrent.futures: as_completed, wait(FIRST_EXCEPTION), cancel, shutdown(cancel_futures=True)."""
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, CancelledError, as_completed, wait

from _mp import Executor


class BadInput(ValueError):
    """An exception class of the user's own, defined in __main__."""


def square(x):
    if x % 7 == 3:
        raise BadInput("bad input %d" % x)
    return x * x


def nap(seconds, fail=False):
    time.sleep(seconds)
    if fail:
        raise RuntimeError("failed after %.1f s" % seconds)
    return seconds


if __name__ == "__main__":
    with Executor(2) as ex:
        futures = {ex.submit(square, i): i for i in range(30)}
        good, bad = [], []
        for f in as_completed(futures, timeout=60):
            try:
                good.append(f.result())
            except BadInput as e:
                bad.append(str(e))
        print("as_completed", sorted(good) == [i * i for i in range(30) if i % 7 != 3], sorted(bad))
        print("map", list(ex.map(square, [1, 2, 4], timeout=60)))
        try:
            list(ex.map(square, [1, 3]))
        except BadInput as e:
            print("map raises", type(e).__name__, e, "with the remote traceback", "in square" in str(e.__cause__))

    T0 = time.monotonic()

    def lap(what):
        print("TIME %s %.2f" % (what, time.monotonic() - T0), file=sys.stderr)

    lap("as_completed")
    with Executor(2) as ex:
        fs = [ex.submit(nap, 0.3, fail=True)] + [ex.submit(nap, 2) for _ in range(3)]
        done, not_done = wait(fs, timeout=60, return_when=FIRST_EXCEPTION)
        print("first exception", fs[0] in done, type(fs[0].exception()).__name__, len(not_done) >= 2)
        for f in fs:
            f.cancel()

    lap("first_exception")
    with Executor(2) as ex:
        fs = [ex.submit(nap, 1.0) for _ in range(12)]
        deadline = time.monotonic() + 30
        while not (fs[0].running() and fs[1].running()) and time.monotonic() < deadline:
            time.sleep(0.01)
        cancelled = [f.cancel() for f in fs]
        print("running ones cannot be cancelled", cancelled[:2] == [False, False])
        print("queued ones can", all(cancelled[6:]))
        print("cancelled() agrees", [f.cancelled() for f in fs] == cancelled)
        try:
            fs[-1].result()
        except CancelledError:
            print("result() of a cancelled one: CancelledError")

    lap("cancel")
    ex = Executor(2)
    fs = [ex.submit(nap, 0.5) for _ in range(20)]
    time.sleep(0.2)
    ex.shutdown(wait=True, cancel_futures=True)
    n_done = sum(1 for f in fs if f.done() and not f.cancelled())
    n_cancelled = sum(1 for f in fs if f.cancelled())
    # (ProcessPoolExecutor runs what its workers hold, about 4; a loaded machine that delays this
    # thread past a 0.5 s nap lets more start, locally as remotely: half is far from either end)
    print("shutdown(cancel_futures): all settled", all(f.done() for f in fs),
          "ran <= 10", n_done <= 10, "cancelled >= 10", n_cancelled >= 10, "sum 20", n_done + n_cancelled == 20)
    lap("shutdown")
    try:
        ex.submit(nap, 0)
    except RuntimeError as e:
        print("submit after shutdown:", type(e).__name__)
    sys.stdout.flush()
