"""What the host tests run on their hosts, and the one-call helpers around it.

The targets are shipped by value: the namespace hosts' account has python3 and nothing else.
"""

from __future__ import annotations

import os
import sys
import textwrap

import cloudpickle

from remoteproc import Pipe, RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def where(conn):
    """Sends (SSH_CONNECTION, user name) of the remote child."""
    import pwd

    conn.send((os.environ.get("SSH_CONNECTION", ""), pwd.getpwuid(os.getuid()).pw_name))
    conn.close()


def report_and_wait(conn):
    """Sends its pid, then waits until the parent's end closes."""
    conn.send(os.getpid())
    try:
        conn.recv()
    except EOFError:
        pass


def run_where(spec, **options):
    """Run ``where`` on SPEC and return its answer (the process must exit with 0)."""
    parent, child = Pipe()
    p = RemoteProcess(spec, target=where, args=(child,), **options)
    p.start()
    child.close()
    assert parent.poll(60), "no answer from %s" % spec
    got = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    return got


def write_config(tmp_path, text, name="ssh_config") -> str:
    """An ssh_config file in TMP_PATH from TEXT (dedented); its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)
