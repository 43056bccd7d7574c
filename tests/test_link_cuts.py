"""A namespace host's link cut in the middle of a 50 MB message, on both transports.

``ip link set <veth> down`` while a 50 MB message is on its way to the host and back; the link
comes back after an outage shorter, or longer, than the keepalive bound
(``keepalive_interval * (keepalive_count + 1)``, here 1 s * 6: TCP retransmits with a growing
back-off, so after a 1.5 s outage the first byte may come back only about 3 s after the cut):

* shorter: nothing is lost; the message arrives whole (its SHA-256 checked there) and its echo
  comes back whole; the process goes on;
* longer: the process ends with ``CONNECTION_LOST`` within the bound (plus slack), its
  ``connection_error`` a ``ConnectionLostError`` naming the host; a message cut off mid-way
  raises ``OSError("got end of file during message")`` and the next ``recv()`` ``EOFError``, as
  from a local process that dies mid-send; a ``send()`` in flight raises ``BrokenPipeError``; once
  the link is back, nothing of ours is left on the host.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from multiprocessing.connection import wait

import cloudpickle
import pytest
from proctable import cmdline, descendants, eventually
from remote_call import start

import remoteproc

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.loopback_only]

PLAIN_USER = "rpuser"
BOUND = 6.0         # keepalive_interval=1, keepalive_count=5


def echo_checked(conn):
    """Sends its pid; then for each message: its length and SHA-256, then the message itself."""
    conn.send(os.getpid())
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        conn.send((len(data), hashlib.sha256(data).hexdigest()))
        conn.send_bytes(data)


def ours(host) -> list[int]:
    return [p for p in descendants(host.proc.pid) if cmdline(p).startswith("python")]


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
@pytest.mark.parametrize("outage", [1.5, 9.0])
def test_a_link_cut_mid_message(netns, fresh, transport, outage):
    host = netns.hosts["h2"]
    options = netns.options(transport=transport, keepalive_interval=1, keepalive_count=5)
    p, parent, _pid = start(host.spec(PLAIN_USER), options, echo_checked)
    data = os.urandom(50 << 20)
    sent: dict = {}

    def send():
        try:
            parent.send_bytes(data)
            sent["ok"] = True
        except OSError as exc:
            sent["error"] = exc

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(0.2)                 # (on its way)
    host.set_link(False)
    cut = time.monotonic()
    try:
        ended = wait([p.sentinel], outage)
        lost_after = time.monotonic() - cut
    finally:
        host.set_link(True)
    sender.join(60)
    assert not sender.is_alive(), "send() still blocked a minute after the link came back"
    if outage < BOUND:
        assert not ended, "a %.1f s outage ended the process (bound %.0f s): %r" % (outage, BOUND, p.connection_error)
        assert sent == {"ok": True}
        assert parent.poll(60)
        assert parent.recv() == (len(data), hashlib.sha256(data).hexdigest())
        assert parent.recv_bytes() == data
        parent.close()
        p.join(30)
        assert p.exitcode == 0
        return
    assert ended, "the process did not end within a %.1f s outage (bound %.0f s)" % (outage, BOUND)
    assert lost_after < BOUND + 2.5, lost_after
    p.join(10)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    assert isinstance(p.connection_error, remoteproc.ConnectionLostError)
    assert host.address in str(p.connection_error)
    if "error" in sent:
        assert isinstance(sent["error"], BrokenPipeError), sent
    try:
        reply = parent.recv()           # the message may have arrived before the cut, its echo not
        assert reply == (len(data), hashlib.sha256(data).hexdigest())
        with pytest.raises(OSError, match="end of file during message"):
            parent.recv_bytes()
    except EOFError:
        pass
    with pytest.raises(EOFError):
        parent.recv_bytes()
    assert eventually(lambda: not ours(host), 30), [cmdline(q)[:50] for q in ours(host)]
