"""The command line's remote targets: ``remoteproc check``'s probe and ``remoteproc demo``'s greeting.

Shipped with the agent (standard library only), so they run on a host where nothing
but Python is installed; ``remoteproc/cli.py`` starts them as RemoteProcess targets.
"""

import os
import sys

from .worker import usable_cpus


def demo_target(conn, n):
    """``remoteproc demo``: say hello, answer with 2n."""
    import socket

    print("hello from pid %d on %s" % (os.getpid(), socket.gethostname()))
    conn.send(n * 2)
    conn.close()


def probe(conn):
    """``remoteproc check``: describe this host, then echo until the parent closes."""
    import getpass
    import platform
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is not a failure of the check
        user = str(os.getuid())
    conn.send({
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "user": user,
        "cpus": os.cpu_count(),
        "usable": usable_cpus(),      # (what a Pool's workers per host follow)
        "pid": os.getpid(),
    })
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass
