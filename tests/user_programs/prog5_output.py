"""Logging from children (get_logger/log_to_stderr, QueueHandler/QueueListener), print
ordering, sys.exit(3), os._exit, an uncaught exception's traceback."""
import logging
import logging.handlers
import multiprocessing
import os
import sys

from _mp import Process, Queue


def logs_with_mp_logger(n):
    log = multiprocessing.get_logger()
    for i in range(n):
        log.warning("mp-logger line %d", i)


def logs_through_queue(q, wid):
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(logging.DEBUG)
    log = logging.getLogger("app.worker%d" % wid)
    for i in range(3):
        log.info("record %d from worker %d", i, wid)
    log.debug("debug from %d", wid)


def prints(n):
    for i in range(n):
        print("child line", i, flush=True)
    print("child unflushed tail")


def exits(code):
    print("before sys.exit", flush=True)
    sys.exit(code)


def hard_exit(code):
    print("flushed before os._exit", flush=True)
    print("buffered, lost by os._exit")
    os._exit(code)


def raises():
    print("about to raise", flush=True)
    {}["missing key"]


def exit_with_message():
    sys.exit("fatal: giving up")


def run(target, *args):
    p = Process(target=target, args=args)
    p.start()
    p.join(30)
    return p.exitcode


if __name__ == "__main__":
    multiprocessing.log_to_stderr(logging.INFO)
    print("mp logger exit", run(logs_with_mp_logger, 2), flush=True)
    multiprocessing.get_logger().setLevel(logging.ERROR)

    q = Queue()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append((record.name, record.levelname, record.getMessage()))

    listener = logging.handlers.QueueListener(q, Keep())
    listener.start()
    ps = [Process(target=logs_through_queue, args=(q, w)) for w in range(3)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(30)
    listener.stop()
    print("queue logging exits", [p.exitcode for p in ps])
    print("records", len(seen), sorted(seen)[:2], "debug records", sum(1 for r in seen if r[1] == "DEBUG"))

    print("prints exit", run(prints, 3))
    print("after the child's output", flush=True)
    print("sys.exit(3) exit", run(exits, 3), flush=True)
    print("os._exit(7) exit", run(hard_exit, 7), flush=True)
    print("raise exit", run(raises), flush=True)
    print("sys.exit(str) exit", run(exit_with_message), flush=True)
    sys.exit(5)
