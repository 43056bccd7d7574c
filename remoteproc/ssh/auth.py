"""Authentication as ``ssh`` does it: ssh-agent and identity files in its order, then the password."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import socket
from typing import Any

from ..errors import AuthenticationError
from .hostkeys import fingerprint
from .target import DEFAULT_IDENTITIES, Target

log = logging.getLogger("remoteproc.ssh")


def _agent(target: Target):
    """The ssh-agent to use (a paramiko AgentSSH), or None."""
    import paramiko
    from paramiko.agent import AgentSSH

    if not target.allow_agent or target.identity_agent == "":
        return None
    path = target.identity_agent or os.environ.get("SSH_AUTH_SOCK")
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(target.connect_timeout)
        sock.connect(path)
        agent = AgentSSH()
        agent._connect(sock)
    except (OSError, paramiko.SSHException) as exc:
        sock.close()
        log.debug("%s: no usable ssh-agent at %s: %s", target.display, path, exc)
        return None
    return agent


def _public_blob(path: str) -> bytes | None:
    """The public key of an identity file: ``path.pub``, or ``path`` itself if it is a public key."""
    for candidate in (path + ".pub", path):
        try:
            with open(candidate, encoding="ascii", errors="replace") as f:
                fields = f.read(16384).split()
            if len(fields) >= 2 and fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
                return base64.b64decode(fields[1], validate=True)
        except (OSError, ValueError, binascii.Error):
            pass
    return None


def _identities(target: Target, agent) -> list[tuple[str, Any]]:
    """(label, key or path) in the order they are offered.

    First the files passed as ``key_filename`` (through the agent if it holds them):
    an explicit key is meant to be used, and trying the agent's keys before it could
    exhaust the server's MaxAuthTries.  Then ssh's own order: agent keys that an
    IdentityFile names (in the agent's order), the other agent keys (unless
    IdentitiesOnly), and the remaining IdentityFiles (or default key files).
    """
    agent_keys = list(agent.get_keys()) if agent is not None else []
    by_blob = {key.asbytes(): key for key in agent_keys}
    used: set[bytes] = set()
    first: list[tuple[str, Any]] = []
    explicit = [p for p in dict.fromkeys(target.explicit_keys) if os.path.isfile(p)]
    for path in explicit:
        blob = _public_blob(path)
        if blob is not None and blob in by_blob:
            used.add(blob)
            first.append(("%s (from ssh-agent)" % path, by_blob[blob]))
        else:
            first.append((path, path))
    files = [(path, _public_blob(path)) for path in dict.fromkeys(target.key_filenames)
             if path not in explicit and os.path.isfile(path)]
    preferred: list[tuple[str, Any]] = []
    others: list[tuple[str, Any]] = []
    for key in agent_keys:
        blob = key.asbytes()
        if blob in used:
            continue
        match = next((f for f in files if f[1] == blob), None)
        if match is not None:
            files.remove(match)
            preferred.append(("%s (from ssh-agent)" % match[0], key))
        elif not target.identities_only:
            comment = key.comment if isinstance(getattr(key, "comment", None), str) else ""
            others.append(("ssh-agent key %s %s" % (fingerprint(key), comment), key))
    return first + preferred + others + [(path, path) for path, _blob in files]


def authenticate(transport, target: Target) -> None:
    """Authenticate as ``ssh`` would: keys (agent and files, in its order), then the password."""
    import paramiko

    user = target.username
    tried: list[str] = []
    try:
        allowed = transport.auth_none(user)
    except paramiko.BadAuthenticationType as exc:
        allowed = list(exc.allowed_types)
    except paramiko.SSHException as exc:
        raise _auth_failed(target, transport, tried, None, exc) from None
    if transport.is_authenticated():
        return
    defaults = {os.path.expanduser("~/.ssh/" + name) for name in DEFAULT_IDENTITIES}
    tried += ["%s (no such file)" % p for p in target.key_filenames if p not in defaults and not os.path.isfile(p)]
    agent = _agent(target)
    try:
        if "publickey" in allowed:
            for label, key in _identities(target, agent):
                if isinstance(key, str):
                    try:
                        key = paramiko.PKey.from_path(key, target.passphrase)
                    except paramiko.PasswordRequiredException:
                        tried.append("%s (encrypted: pass passphrase= or add it to ssh-agent)" % label)
                        continue
                    except (paramiko.SSHException, OSError, ValueError) as exc:
                        tried.append("%s (unusable: %s)" % (label, exc))
                        continue
                try:
                    remaining = transport.auth_publickey(user, key)
                except paramiko.BadAuthenticationType as exc:
                    allowed = list(exc.allowed_types)
                    break
                except paramiko.AuthenticationException:
                    tried.append("%s (refused)" % label)
                    if not transport.is_active():
                        break
                    continue
                except paramiko.SSHException as exc:
                    tried.append("%s (%s)" % (label, exc))
                    break
                if transport.is_authenticated():
                    return
                allowed = list(remaining)      # partial success: the server wants more
                tried.append("%s (accepted, more needed: %s)" % (label, ",".join(allowed)))
                if "publickey" not in allowed:
                    break
        if target.password is not None and transport.is_active() and (
                "password" in allowed or "keyboard-interactive" in allowed):
            try:
                transport.auth_password(user, target.password)
            except paramiko.AuthenticationException:
                tried.append("password (refused)")
            except paramiko.SSHException as exc:
                tried.append("password (%s)" % exc)
            if transport.is_authenticated():
                return
    finally:
        if agent is not None:
            agent._close()
    raise _auth_failed(target, transport, tried, allowed, None)


def _auth_failed(target: Target, transport, tried: list[str], allowed, exc) -> AuthenticationError:
    if exc is not None:
        return AuthenticationError("%s: authentication failed: %s" % (target.display, exc), target.display)
    closed = "" if transport.is_active() else (
        " The server closed the connection (too many keys offered? set IdentitiesOnly yes for this host, "
        "or pass key_filename= with allow_agent=False).")
    return AuthenticationError(
        "%s: authentication failed; the server accepts %s; tried: %s.%s Fix: add your public key to "
        "~%s/.ssh/authorized_keys on the host, load the right key into ssh-agent, or pass key_filename=."
        % (target.display, ", ".join(allowed or ()) or "nothing we offered",
           "; ".join(tried) or "no key (no agent, no key file found)", closed, target.username),
        target.display)

