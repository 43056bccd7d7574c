"""A Connection or socket sent inside a message from the user's process to a remote child.

multiprocessing pickles it as a ticket for the sender's resource sharer, a Unix socket of the
sender's machine. A remote child cannot reach that socket (here: another account's private
directory, as another host's would be missing), and gets a ConnectionError naming the host and
the fix instead of multiprocessing's bare FileNotFoundError or PermissionError.
"""

from __future__ import annotations

import socket

import pytest

from remoteproc import Pipe, RemoteProcess

pytestmark = [pytest.mark.loopback_only]


def _receive(conn):
    try:
        got = conn.recv()
        conn.send(("got", type(got).__name__))
    except Exception as exc:  # noqa: BLE001 - what the child's code sees, sent back
        conn.send(("error", type(exc).__name__, isinstance(exc, OSError), str(exc)))


@pytest.mark.parametrize("kind", ["Connection", "socket"])
def test_a_handle_inside_a_message_from_the_parent_is_a_clear_error_in_the_child(plain_user_host,
                                                                                 plain_user_options, kind):
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=_receive, args=(child,), **plain_user_options)
    p.start()
    child.close()
    keep = Pipe() if kind == "Connection" else socket.socketpair()
    try:
        parent.send(keep[0])
        assert parent.poll(60)
        outcome, name, is_os_error, text = parent.recv()
    finally:
        for end in keep:
            end.close()
    p.join(30)
    assert (outcome, name, is_os_error) == ("error", "ConnectionError", True)
    assert text.startswith(plain_user_host + ": ") and "cannot cross hosts" in text, text
    assert "pass Connections as arguments of the RemoteProcess" in text
    assert p.exitcode == 0
