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


def jump_alias_config(tmp_path, netns, user) -> str:
    """An ssh_config where ``target2`` (namespace host h2) is reached through ``jump1`` (h1) as USER,
    with the namespace hosts' key and known_hosts: the alias file users write for a jump host."""
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    return write_config(tmp_path, f"""\
        Host jump1
            HostName {h1.address}
        Host target2
            HostName {h2.address}
            ProxyJump jump1
        Host *
            User {user}
            IdentityFile {netns.client_key}
            IdentitiesOnly yes
            UserKnownHostsFile {netns.known_hosts}
        """)
