"""The remote child: what runs in the process the agent forks for one RemoteProcess.

It rewires the standard streams to the pipes the agent relays, rebuilds the
bridged Connections from the fds it was given, unpickles the process object and
runs it with multiprocessing's own ``_bootstrap``, so exit codes and tracebacks are
exactly those of a local child.
"""

import os
import signal
import sys
import threading

_fds = {}           # placeholder index -> fd of the child's end
GRACE = 2.0         # seconds between SIGTERM and SIGKILL when the agent vanishes


def rebuild_connection(index, readable, writable):
    """Unpickling hook: the bridged Connection number ``index`` of this child."""
    from multiprocessing.connection import Connection

    return Connection(_fds[index], readable=readable, writable=writable)


def rebuild_process(cls, state):
    """Unpickling hook: the process object, without re-running ``__init__``."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def refuse_handle(obj):
    """Reducer for Connections and sockets inside a message: they cannot cross hosts."""
    raise TypeError(
        "cannot send a %s inside a message from a remote process: a file descriptor "
        "cannot cross hosts; pass Connections as RemoteProcess arguments instead"
        % type(obj).__name__
    )


def _watchdog(fd):
    """Kill this child's process group if the agent dies without doing it."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        return          # the user closed the fd: not a sign of the agent's death
    try:
        os.killpg(0, signal.SIGTERM)
        threading.Event().wait(GRACE)
        os.killpg(0, signal.SIGKILL)
    except OSError:
        pass


def _reset_signals():
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run(payload, fds, stdout_fd, stderr_fd, sentinel_fd, close_fds, tty):
    """Set up and run the child; never returns."""
    code = 1
    try:
        _reset_signals()
        os.setpgid(0, 0)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        for fd in {devnull, stdout_fd, stderr_fd} - {0, 1, 2}:
            os.close(fd)
        if tty:
            sys.stdout.reconfigure(line_buffering=True)
        for fd in fds.values():
            os.set_blocking(fd, True)
        _fds.update(fds)
        threading.Thread(target=_watchdog, args=(sentinel_fd,), daemon=True,
                         name="remoteproc-watchdog").start()

        import socket
        from multiprocessing import reduction
        from multiprocessing.connection import Connection

        reduction.register(Connection, refuse_handle)
        reduction.register(socket.socket, refuse_handle)

        import pickle

        import cloudpickle  # noqa: F401  (registers what the payload refers to)

        process_obj = pickle.loads(payload)
        del payload
        code = process_obj._bootstrap(parent_sentinel=sentinel_fd)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        sys.stderr.write("remoteproc: the remote child could not start:\n")
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
