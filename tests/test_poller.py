"""The relay's and the agent's selector (``agent/poller.py``) answers as ``selectors`` does."""

from __future__ import annotations

import os
import select
import selectors
import socket

import pytest

from remoteproc.agent import poller

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux's")


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _ready(sel, timeout=0.0):
    return {key.fd: (mask, key.data) for key, mask in sel.select(timeout)}


@pytest.mark.parametrize("make", [poller.Poller, selectors.EpollSelector], ids=["poller", "selectors"])
def test_same_answers_as_selectors(make, pair):
    """Readable, writable, a hang-up (which wakes both a reader and a writer), modify and
    unregister: the Poller and selectors' own epoll selector say the same."""
    a, b = pair
    sel = make()
    try:
        sel.register(a, selectors.EVENT_READ, "a-read")
        assert _ready(sel) == {}
        b.send(b"x")
        assert _ready(sel) == {a.fileno(): (selectors.EVENT_READ, "a-read")}
        sel.modify(a.fileno(), selectors.EVENT_READ | selectors.EVENT_WRITE, "a-both")
        assert _ready(sel) == {a.fileno(): (selectors.EVENT_READ | selectors.EVENT_WRITE, "a-both")}
        sel.modify(a, selectors.EVENT_WRITE, "a-write")
        assert _ready(sel) == {a.fileno(): (selectors.EVENT_WRITE, "a-write")}
        b.close()
        sel.modify(a, selectors.EVENT_READ, "a-read")
        a.recv(1)
        assert _ready(sel) == {a.fileno(): (selectors.EVENT_READ, "a-read")}      # EOF
        key = sel.unregister(a)
        assert key.data == "a-read" and _ready(sel) == {}
        with pytest.raises(KeyError):
            sel.unregister(a)
        with pytest.raises(KeyError):
            sel.modify(a, selectors.EVENT_READ)
        sel.register(a, selectors.EVENT_READ)
        with pytest.raises(KeyError):
            sel.register(a.fileno(), selectors.EVENT_READ)
        assert _ready(sel) == {a.fileno(): (selectors.EVENT_READ, None)}      # (the EOF stays)
        c, d = socket.socketpair()
        with c, d, pytest.raises(ValueError):
            sel.register(c, 0)
    finally:
        sel.close()


def test_a_regular_file_is_refused_and_left_out(tmp_path):
    """mux relies on this: epoll refuses a regular file (PermissionError), and nothing of it stays."""
    sel = poller.Poller()
    with open(tmp_path / "f", "w") as f:
        with pytest.raises(PermissionError):
            sel.register(f.fileno(), selectors.EVENT_READ)
        with pytest.raises(KeyError):
            sel.unregister(f.fileno())          # nothing of it was kept
    sel.close()


def test_an_fd_closed_before_unregister_is_forgotten(pair):
    a, b = pair
    sel = poller.Poller()
    fd = os.dup(a.fileno())
    sel.register(fd, selectors.EVENT_READ, "dup")
    os.close(fd)
    assert sel.unregister(fd).data == "dup"
    assert sel.select(0) == []
    sel.close()


def test_a_timeout_waits_and_none_is_forever_until_ready(pair):
    a, b = pair
    sel = poller.Poller()
    sel.register(a, selectors.EVENT_READ, "a")
    assert sel.select(0.02) == [] and sel.select(-1) == []
    b.send(b"x")
    assert [(k.data, m) for k, m in sel.select(None)] == [("a", selectors.EVENT_READ)]
    assert sel.fileno() >= 0
    sel.close()


def test_without_epoll_the_default_selector_serves(monkeypatch):
    assert isinstance(poller.make(), poller.Poller)
    monkeypatch.delattr(select, "epoll")
    sel = poller.make()
    assert isinstance(sel, selectors.BaseSelector)
    sel.close()
