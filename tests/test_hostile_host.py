"""What a compromised host cannot do to the user's machine through the relay (found by a security
audit): make it hold without bound the answers to requests it never reads, a control frame that
claims gigabytes, or a flood on its stderr; nor keep the link's thread (or a start) in a loop
reading that flood."""

from __future__ import annotations

import logging
import sys

import pytest

from remoteproc import bootstrap, ssh
from remoteproc.agent import frames
from remoteproc.relay import link as link_mod
from remoteproc.relay.link import Link
from remoteproc.relay.paramiko_channel import ParamikoChannel


class Stalled:
    """The agent's channel, as a host that never reads its input leaves it: it takes nothing."""

    taking = False
    sent = 0

    def send(self, data):
        if not self.taking:
            return 0
        self.sent += len(data)
        return len(data)

    def recv_stderr(self):
        return b""

    def close(self):
        pass


def _link():
    link = Link(ssh.resolve("evil@h", {}, ssh.Config([])), opener=None, on_finish=lambda link: None)
    link.chan = Stalled()
    link.hello = {"mode": "same"}
    link.sys_path = list(sys.path)
    return link


def test_requests_the_host_does_not_read_the_answers_of_wait_and_are_bounded():
    """One 60-byte request, one 0.7 MB answer: 100 of them held 70 MB (a thousand, 700 MB: the
    audit's relay grew to 2.3 GB).  Answers stop while ANSWERS_HELD waits to go out; the requests
    wait, at most ASKED_MAX of them; they are answered, in order, as the channel takes what waits."""
    link = _link()
    request = frames.control({"op": "import", "name": "pydoc_data.topics"})
    link.endpoint.feed(request * 100)
    held = len(link.endpoint.out)
    assert link_mod.ANSWERS_HELD <= held < link_mod.ANSWERS_HELD + (2 << 20), held
    assert 0 < len(link.asked) < 100
    waiting = len(link.asked)
    with pytest.raises(frames.FrameError, match="requests wait for answers the agent does not read"):
        link.endpoint.feed(frames.control({"op": "import", "name": "json"}) * (link_mod.ASKED_MAX - waiting + 1))
    link.chan.taking = True
    for _ in range(200):
        link._flush()
        if not link.asked and not link.endpoint.pending:
            break
    assert not link.asked and not link.endpoint.pending
    assert link.chan.sent > 100 * (held // 50), "every answer went out once the host read them"
    link._finish()


def test_a_control_frame_claiming_more_than_the_agent_ever_sends_is_refused():
    """A header claiming 4 GiB made the relay hold all the host sent of it (1.5 GB in the audit)."""
    link = _link()
    link.endpoint.feed(frames.control({"op": "pong", "t": 1.0}))       # (a real one passes)
    with pytest.raises(frames.FrameError):
        link.endpoint.feed(frames.header(frames.CONTROL, 0, link_mod.MAX_CONTROL + 1))
    link._finish()


def test_a_flood_on_the_channels_stderr_is_read_a_bounded_piece_at_a_time():
    """paramiko's channel: the read looped while stderr was ready, so a host that wrote faster than
    it was read kept the link's thread (no pings, no keepalive verdict, a start past its timeout)
    and a copy of it all, copied again for every piece."""

    class Flooding:
        calls = 0

        def recv_stderr_ready(self):
            return True

        def recv_stderr(self, n):
            Flooding.calls += 1
            assert Flooding.calls < 1000, "still reading the flood"
            return b"x" * n

        def settimeout(self, t):
            pass

    chan = ParamikoChannel(Flooding(), conn=None, pool=None, connect_ms=0.0)
    got = chan.recv_stderr()
    assert 0 < len(got) <= 2 * (256 << 10)


def test_a_flood_on_stderr_is_logged_as_its_end_and_how_much_was_left_out(caplog):
    link = _link()
    with caplog.at_level(logging.INFO, logger="remoteproc"):
        link._note_stderr(b"x" * (5 << 20) + b"\nremoteproc: the agent says goodbye\n")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert len(text) < link_mod.STDERR_LOGGED + 1000 and "bytes left out]" in text, len(text)
    assert link.last_words == "the agent says goodbye"
    link._finish()


def test_a_startup_file_that_floods_stdout_and_stderr_before_ready_leaves_only_its_end():
    class Noisy:
        def recv_stderr(self):
            return b"e" * (100 << 10)

        def recv(self, n):
            return b"o" * n

    buf, err = bytearray(), bytearray()
    for _ in range(100):
        bootstrap._take(Noisy(), None, buf, err, 0.0)
    assert len(buf) <= 2 * bootstrap.NOISE_KEPT + 65536 and len(err) <= bootstrap.NOISE_KEPT
    assert bytes(buf[-10:]) == b"o" * 10 and bytes(err[-10:]) == b"e" * 10     # (its last words)
