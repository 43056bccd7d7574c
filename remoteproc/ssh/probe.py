"""What answers on a port that closed the connection before an SSH banner.

Both transports see the same thing when a port's server is not sshd (a web server on the
port by mistake, a mail server, TLS): the connection closes before the server's SSH
identification line.  An sshd that turns connections away (``MaxStartups``) looks the same,
and that one is worth waiting and retrying for; a web server is not.  So, on a direct
connection only (a jump host or ProxyCommand would need a route of its own), one more short
connection asks the port, and a first line that is not ``SSH-...`` names the mistake at once.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Optional

from ..errors import ConnectError
from .target import Target

#: seconds the probe may take in all (it runs only after a connection has already failed)
PROBE_TIMEOUT = 1.0
#: what sshd itself writes before closing a connection it turns away (MaxStartups, PerSourceMaxStartups,
#: PerSourcePenalties): an sshd, busy
_SSHD_DROP = re.compile(rb"Exceeded \w*MaxStartups|Not allowed at this time")
#: ports the probe found no other server on (an sshd, or one that said nothing): not asked again
_SSHD_SEEN: set[tuple[str, int]] = set()
#: what the probe sends first: an SSH client's identification (a web server answers it with an error)
_HELLO = b"SSH-2.0-remoteproc_probe\r\n"


def not_ssh(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> Optional[str]:
    """The first words of the server on ``host:port`` when it is not an SSH server, else None
    (an SSH banner, a silence, a refusal or a close: nothing to tell from a turned-away sshd)."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                sock.sendall(_HELLO)
            except OSError:
                pass        # (a server that spoke first and closed: what it said may still be there)
            data = sock.recv(256)
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line or line.startswith(b"SSH-") or _SSHD_DROP.match(line):
        return None
    text = line.decode("ascii", "replace")
    if text.isprintable():
        return repr(text)
    return "%d bytes that are not text (%r...)" % (len(data), data[:8])


def unless_not_ssh(target: Target, error: ConnectError) -> ConnectError:
    """``error`` (a connection closed before the SSH banner, retried as a turned-away one), or,
    when the target's port answers as no SSH server does, the error that says so (not retried)."""
    if target.proxy_jump or target.proxy_command or (target.hostname, target.port) in _SSHD_SEEN:
        return error
    said = not_ssh(target.hostname, target.port)
    if said is None:
        _SSHD_SEEN.add((target.hostname, target.port))     # (each retry of a busy sshd need not ask again)
    return error if said is None else not_ssh_error(target, "it said " + said)


def not_ssh_error(target: Target, evidence: str) -> ConnectError:
    """The error for a target whose port's server is not sshd, with what shows it and the fix."""
    label = target.display + (" (transport='openssh')" if target.transport == "openssh" else "")
    return ConnectError("%s: what answers on port %d is not an SSH server: %s. Fix: give the port sshd "
                        "listens on (22 unless its sshd_config says otherwise; -p PORT, `Port` in ~/.ssh/config, "
                        "or port=)" % (label, target.port, evidence), target.display)
