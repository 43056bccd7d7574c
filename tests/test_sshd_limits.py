"""Many connections at once against sshd's own limits, as a cluster's sshd has them.

The shared namespace rig (tests/netns.py) raises ``MaxStartups`` and ``MaxSessions``; real hosts
keep sshd's defaults (``MaxStartups 10:30:100``: past 10 connections that have not logged in yet,
sshd drops 30 % of new ones, right after accepting them, before its banner).  A program reaches
that with a Pool over a dozen hosts behind one bastion with ``transport="openssh"`` (each host's
``ssh`` runs an ``ssh -W`` of its own, so each is a connection to the bastion), or when several
programs start at the same moment (a job array, a local Pool whose workers use remoteproc).

This module's rig sets ``MaxStartups 1`` (every connection that arrives while another has not
logged in yet is dropped), so that the drops are certain with a handful of connections rather
than likely with dozens.  Connections that cannot share: each process gets a known_hosts file of
its own (a process with other known_hosts files gets its own connection, docs/ssh.md).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PLAIN_USER, running_rig
from proctable import cmdline, descendants, eventually

from remoteproc import ConnectError, Pipe, RemoteProcess, RemoteProcessError

pytestmark = [pytest.mark.timeout(90), pytest.mark.loopback_only]

PER_TEST = 4


@pytest.fixture(scope="module")
def strict() -> Iterator[Any]:
    """Hosts ``s1``, ``s2`` and a bastion ``sb`` whose sshds take one unauthenticated connection at a time."""
    from netns import NetnsRig

    class StrictRig(NetnsRig):
        limits = ["MaxStartups 1"]

    yield from running_rig(StrictRig, ["s1", "s2", "sb"])


def hello(conn):
    conn.send((os.getpid(), os.environ["SSH_CONNECTION"].split()[2]))
    conn.close()


def ours(rig: Any) -> list[int]:
    return [p for h in rig.hosts.values() if h.proc is not None
            for p in descendants(h.proc.pid) if cmdline(p).startswith("python")]


def start_at_once(specs_and_options: list[tuple[str, dict]]) -> tuple[dict, dict]:
    """Start one process per (spec, options) from a thread each, at the same moment: (hellos, errors)."""
    hellos: dict[int, Any] = {}
    errors: dict[int, RemoteProcessError] = {}
    go = threading.Event()

    def one(i: int, spec: str, opts: dict) -> None:
        parent, child = Pipe()
        p = RemoteProcess(spec, target=hello, args=(child,), **opts)
        go.wait(10)
        try:
            p.start()
        except RemoteProcessError as exc:
            errors[i] = exc
            return
        finally:
            child.close()
        if parent.poll(30):
            hellos[i] = parent.recv()
        p.join(30)

    threads = [threading.Thread(target=one, args=(i, s, o)) for i, (s, o) in enumerate(specs_and_options)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(60)
    return hellos, errors


def known_hosts_copies(rig: Any, tmp_path: Any, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = str(tmp_path / ("known_hosts_%d" % i))
        shutil.copy(rig.known_hosts, path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_connections_past_max_startups_are_tried_again(strict, tmp_path, transport):
    """Fixed: a connection that sshd dropped past its MaxStartups failed ``start()`` at once with
    "the server closed the connection before its SSH banner ... Check that an SSH server answers on
    port 22" (paramiko) or "ssh failed: kex_exchange_identification: ... Fix: run `ssh -v ...`"
    (openssh), although the same start a moment later works; ``ssh -v`` by hand then shows nothing
    wrong.  Now the relay tries such a connection again after a short, growing, jittered pause."""
    host = strict.hosts["s1"]
    opts = strict.options(transport=transport, idle_timeout=1)
    copies = known_hosts_copies(strict, tmp_path, PER_TEST)
    starts = [(host.spec(PLAIN_USER), dict(opts, known_hosts=k)) for k in copies]
    dropped_before = strict.log_tail(host, 10 ** 6).count("past MaxStartups")
    t0 = time.monotonic()
    hellos, errors = start_at_once(starts)
    assert errors == {}, {i: str(e) for i, e in errors.items()}
    assert sorted(hellos) == list(range(PER_TEST)) and {h[1] for h in hellos.values()} == {host.address}
    assert strict.log_tail(host, 10 ** 6).count("past MaxStartups") > dropped_before, "no drop: the test tests nothing"
    assert time.monotonic() - t0 < 30
    assert eventually(lambda: not ours(strict), 15), ours(strict)


def test_hosts_behind_one_bastion_with_openssh(strict, tmp_path):
    """Fixed: a Pool (here: processes) over hosts behind one jump host with ``transport="openssh"``
    opens one connection to the bastion per host, all at once; those its sshd dropped failed with
    "at the jump host (sb): ssh failed: kex_exchange_identification: read: Connection reset by peer".
    Now they are tried again, as a direct connection is."""
    hs = strict.hosts
    config = tmp_path / "ssh_config"
    config.write_text("".join("Host t%s-%d\n    HostName %s\n    Port %d\n    ProxyJump sb\n"
                              % (n, port, hs[n].address, port) for n in ("s1", "s2") for port in (22, 2222))
                      + textwrap.dedent("""\
                          Host sb
                              HostName %s
                          Host *
                              User %s
                              IdentityFile %s
                              IdentitiesOnly yes
                              UserKnownHostsFile %s
                          """ % (hs["sb"].address, PLAIN_USER, strict.client_key, strict.known_hosts)))
    opts = {"ssh_config": str(config), "allow_agent": False, "transport": "openssh", "idle_timeout": 1}
    aliases = ["t%s-%d" % (n, port) for n in ("s1", "s2") for port in (22, 2222)]
    dropped_before = strict.log_tail(hs["sb"], 10 ** 6).count("past MaxStartups")
    hellos, errors = start_at_once([(a, opts) for a in aliases])
    assert errors == {}, {i: str(e) for i, e in errors.items()}
    assert sorted(h[1] for h in hellos.values()) == sorted([hs["s1"].address] * 2 + [hs["s2"].address] * 2)
    assert strict.log_tail(hs["sb"], 10 ** 6).count("past MaxStartups") > dropped_before, "no drop at the bastion"
    assert eventually(lambda: not ours(strict), 15), ours(strict)


def test_a_host_that_always_turns_connections_away_fails_naming_the_limit(strict):
    """When every attempt is dropped, the error says what sshd does past MaxStartups, how often it was
    tried and the fix, within ``connect_timeout``."""
    host = strict.hosts["s2"]
    # a connection that never logs in holds s2's one startup slot (until sshd's LoginGraceTime, 120 s)
    holder = socket.create_connection((host.address, 22), timeout=5)
    try:
        assert holder.recv(64).startswith(b"SSH-")
        for transport in ("paramiko", "openssh"):
            t0 = time.monotonic()
            with pytest.raises(ConnectError) as info:
                RemoteProcess(host.spec(PLAIN_USER), target=hello, args=(None,),
                              **strict.options(transport=transport, connect_timeout=3)).start()
            text = str(info.value)
            assert info.value.host and text.startswith(info.value.host) and host.address in text, text
            assert "before its SSH banner" in text and "MaxStartups allows (default 10)" in text, text
            assert "Fix: raise MaxStartups in that host's sshd_config" in text, text
            assert re.search(r"\. Tried \d times in \d\.\ds\.$", text), text
            assert time.monotonic() - t0 < 3 + 5, (transport, time.monotonic() - t0)
    finally:
        holder.close()
    assert eventually(lambda: not ours(strict), 15), ours(strict)

