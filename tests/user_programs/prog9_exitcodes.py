"""Exit codes of every way a child can end, and what each leaves on stderr."""
import os
import signal
import sys

from _mp import Process


def exit_with(code):
    sys.exit(code)


def raise_it(exc):
    raise exc


def signal_self(sig):
    os.kill(os.getpid(), sig)


def segfault():
    import ctypes

    ctypes.string_at(0)


def abort():
    os.abort()


def exit_in_thread():
    import threading

    t = threading.Thread(target=sys.exit, args=(4,))
    t.start()
    t.join()


CASES = [
    ("sys.exit(None)", exit_with, (None,)), ("sys.exit(0)", exit_with, (0,)),
    ("sys.exit(True)", exit_with, (True,)), ("sys.exit(False)", exit_with, (False,)),
    ("sys.exit(255)", exit_with, (255,)), ("sys.exit(256)", exit_with, (256,)),
    ("sys.exit(-1)", exit_with, (-1,)), ("sys.exit(1000)", exit_with, (1000,)),
    ("sys.exit('msg')", exit_with, ("exiting with a message",)),
    ("sys.exit(2.5)", exit_with, (2.5,)), ("sys.exit([1])", exit_with, ([1],)),
    ("raise KeyboardInterrupt", raise_it, (KeyboardInterrupt(),)),
    ("raise SystemExit(7)", raise_it, (SystemExit(7),)),
    ("raise GeneratorExit", raise_it, (GeneratorExit(),)),
    ("SIGTERM self", signal_self, (signal.SIGTERM,)), ("SIGKILL self", signal_self, (signal.SIGKILL,)),
    ("SIGUSR1 self", signal_self, (signal.SIGUSR1,)), ("SIGINT self", signal_self, (signal.SIGINT,)),
    ("segfault", segfault, ()), ("abort", abort, ()), ("exit in a thread", exit_in_thread, ()),
]

if __name__ == "__main__":
    for label, target, args in CASES:
        p = Process(target=target, args=args)
        p.start()
        p.join(30)
        print("%-26s exitcode %r" % (label, p.exitcode), flush=True)
        sys.stderr.flush()
