"""Authentication as ``ssh`` does it: ssh-agent and identity files in its order, then the password."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from ..errors import AuthenticationError
from .hostkeys import fingerprint
from .target import DEFAULT_IDENTITIES, Target, public_key

log = logging.getLogger("remoteproc.ssh")


def _agent(target: Target) -> Any:
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
    found = public_key(path)
    return found[1] if found is not None else None


def _identities(target: Target, agent: Any) -> list[tuple[str, Any]]:
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


def authenticate(transport: Any, target: Target) -> None:
    """Authenticate as ``ssh`` would: keys (agent and files, in its order), then the password."""
    attempt = _Attempt(transport, target)
    if attempt.none():
        return
    defaults = {os.path.expanduser("~/.ssh/" + name) for name in DEFAULT_IDENTITIES}
    attempt.tried += [p + _NO_FILE for p in target.key_filenames
                      if p not in defaults and not os.path.isfile(p)]
    agent = _agent(target)
    try:
        if attempt.keys(agent) or attempt.password():
            return
    finally:
        if agent is not None:
            agent._close()
    raise _auth_failed(target, transport, attempt.tried, attempt.allowed, None)


#: what offering one key leads to
_DONE, _NEXT, _STOP = "authenticated", "next key", "no more keys"


class _Attempt:
    """One authentication: what the server still allows, and what was tried (for the error message)."""

    def __init__(self, transport: Any, target: Target) -> None:
        self.transport = transport
        self.target = target
        self.tried: list[str] = []
        self.allowed: list[str] = []

    def none(self) -> bool:
        """The "none" method: authenticated already (rare), else learn what the server allows."""
        import paramiko

        try:
            self.allowed = self.transport.auth_none(self.target.username)
        except paramiko.BadAuthenticationType as exc:
            self.allowed = list(exc.allowed_types)
        except paramiko.SSHException as exc:
            raise _auth_failed(self.target, self.transport, self.tried, None, exc) from None
        return bool(self.transport.is_authenticated())

    def keys(self, agent: Any) -> bool:
        """Offer each identity in turn until one is accepted or the server stops listening."""
        if "publickey" not in self.allowed:
            return False
        for label, key in _identities(self.target, agent):
            if isinstance(key, str):
                key = self._load(label, key)
                if key is None:
                    continue
            outcome = self._offer(label, key)
            if outcome == _DONE:
                return True
            if outcome == _STOP:
                break
        return False

    def _load(self, label: str, path: str) -> Any:
        """The private key in ``path`` (a paramiko PKey), or None (noted in ``tried``).

        Loaded without the passphrase first: ``cryptography``, under paramiko, refuses a
        passphrase for a key that has none, and says a key is encrypted with TypeError.
        A kind of key paramiko cannot use (a FIDO ``sk-`` key, DSA) is noted, not raised:
        ``cryptography`` says so with UnsupportedAlgorithm, paramiko with UnknownKeyType,
        neither of them an SSHException.
        """
        import paramiko
        from cryptography.exceptions import UnsupportedAlgorithm
        from paramiko.pkey import UnknownKeyType

        try:
            return paramiko.PKey.from_path(path)
        except (TypeError, paramiko.PasswordRequiredException):
            if self.target.passphrase is None:
                self.tried.append("%s (encrypted: pass passphrase= or add it to ssh-agent)" % label)
                return None
        except (UnsupportedAlgorithm, UnknownKeyType) as exc:
            self.tried.append("%s (%s)" % (label, _unsupported(path, exc)))
            return None
        except (paramiko.SSHException, OSError, ValueError) as exc:
            self.tried.append("%s (unusable: %s)" % (label, exc))
            return None
        try:
            return paramiko.PKey.from_path(path, self.target.passphrase.encode())
        except (UnsupportedAlgorithm, UnknownKeyType) as exc:
            self.tried.append("%s (%s)" % (label, _unsupported(path, exc)))
        except (TypeError, paramiko.SSHException, OSError, ValueError) as exc:
            self.tried.append("%s (encrypted, and the passphrase given does not open it: %s)" % (label, exc))
        return None

    def _offer(self, label: str, key: Any) -> str:
        import paramiko

        if isinstance(key, paramiko.AgentKey):
            key = _Declinable(key)
        try:
            remaining = self.transport.auth_publickey(self.target.username, key)
        except paramiko.BadAuthenticationType as exc:
            self.allowed = list(exc.allowed_types)
            return _STOP
        except paramiko.AuthenticationException:
            declined = getattr(key, "declined", None)
            self.tried.append("%s (%s)" % (label, "ssh-agent declined to sign: %s" % declined if declined
                                                   else "refused"))
            return _NEXT if self.transport.is_active() else _STOP
        except paramiko.SSHException as exc:
            self.tried.append("%s (%s)" % (label, exc))
            return _STOP
        if self.transport.is_authenticated():
            return _DONE
        self.allowed = list(remaining)      # partial success: the server wants more
        self.tried.append("%s (accepted, more needed: %s)" % (label, ",".join(self.allowed)))
        return _NEXT if "publickey" in self.allowed else _STOP

    def password(self) -> bool:
        """The password (or keyboard-interactive with it), if one was given and the server takes it."""
        import paramiko

        if self.target.password is None or not self.transport.is_active() or (
                "password" not in self.allowed and "keyboard-interactive" not in self.allowed):
            return False
        try:
            self.transport.auth_password(self.target.username, self.target.password)
        except paramiko.AuthenticationException:
            self.tried.append("password (refused)")
        except paramiko.SSHException as exc:
            self.tried.append("password (%s)" % exc)
        return bool(self.transport.is_authenticated())


class _Declinable:
    """An ssh-agent key whose agent may decline to sign (``ssh-add -c`` unconfirmed, a token
    that is locked).  paramiko signs in its transport thread, where the agent's refusal would
    end the connection; ``ssh`` goes on to the next key.  A declined signature goes out as an
    empty one, which the server refuses, and the login goes on."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.declined: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.key, name)

    def sign_ssh_data(self, data: bytes, algorithm: str | None = None) -> bytes:
        import paramiko

        try:
            return self.key.sign_ssh_data(data, algorithm)
        except paramiko.SSHException as exc:
            self.declined = str(exc)
            empty = paramiko.Message()
            empty.add_string(algorithm or self.key.get_name())
            empty.add_string(b"")
            return empty.asbytes()


def _unsupported(path: str, exc: Exception) -> str:
    """Why a key file paramiko cannot load is left out, for ``tried``."""
    public = public_key(path)
    if public is not None and public[0].startswith("sk-"):
        return "a FIDO security key (%s), which the paramiko transport cannot use" % public[0]
    return "unusable: paramiko cannot use this kind of key: %s" % (str(exc) or type(exc).__name__)


def _words(phrases: tuple | list) -> str:
    """"a", "a and b", "a, b and c"."""
    return phrases[0] if len(phrases) == 1 else "%s and %s" % (", ".join(phrases[:-1]), phrases[-1])


def _the_server_takes(cannot: tuple[str, ...], allowed: list[str]) -> tuple[str, ...]:
    """Of the settings the paramiko transport cannot honour, those the server could use: Kerberos
    needs a ``gssapi-*`` method, the rest (tokens, FIDO keys, certificates) ``publickey``.

    Debian's ``/etc/ssh/ssh_config`` says ``GSSAPIAuthentication yes`` for every host: naming it
    for a server that takes no GSSAPI would send every refused login to transport='openssh',
    where ``ssh`` is refused just the same.  With nothing known of the server, all count."""
    if not allowed:
        return cannot
    gssapi = any(method.startswith("gssapi") for method in allowed)
    return tuple(p for p in cannot if (gssapi if p.startswith("GSSAPI") else "publickey" in allowed))


_NO_FILE = " (no such file)"     # how a key_filename that does not exist shows among the keys tried


def _auth_failed(target: Target, transport: Any, tried: list[str], allowed: list[str] | None,
                 exc: Exception | None) -> AuthenticationError:
    """The error for a refused login: what the server accepts, what was tried, and the way out.

    When the host's config asks for what the paramiko transport cannot do
    (``Target.paramiko_cannot``), those settings are named and transport='openssh' is
    the first fix: no key of ours will help then.
    """
    if exc is not None:
        return AuthenticationError("%s: authentication failed: %s" % (target.display, exc), target.display)
    closed = "" if transport.is_active() else (
        " The server closed the connection (too many keys offered? set IdentitiesOnly yes for this host, "
        "or pass key_filename= with allow_agent=False).")
    allowed = list(allowed or ())
    ways = []
    if not allowed or "publickey" in allowed:
        ways.append("add your public key to ~%s/.ssh/authorized_keys on the host, load the right key into "
                    "ssh-agent, or pass key_filename=" % target.username)
    if target.password is None and ("password" in allowed or "keyboard-interactive" in allowed):
        ways.append("pass password= (or transport='openssh' with allow_prompt=True, and ssh asks for it)")
    keys = "; or ".join(ways) or "ask the host's administrator which login it takes"
    missing = [t[:-len(_NO_FILE)] for t in tried if t.endswith(_NO_FILE)]
    if missing and (not allowed or "publickey" in allowed):
        # (a mistyped path is the likeliest cause: say it first)
        keys = "check key_filename: %s does not exist (give the path of your private key); or %s" % (
            ", ".join(missing), keys)
    if not tried:
        tried = (["no key: the server takes none"] if allowed and "publickey" not in allowed
                 else ["no key (no agent, no key file found)"])
    cannot = _the_server_takes(target.paramiko_cannot, allowed)
    if cannot:
        fix = (" This host's ssh config asks for %s, which the paramiko transport cannot use. Fix: pass "
               "transport='openssh' (your own ssh logs in with them), or %s."
               % (_words(cannot), keys))
    else:
        fix = (" Fix: %s. If `ssh` itself logs you in (a certificate, Kerberos/GSSAPI, a FIDO or PKCS#11 key, "
               "2FA), pass transport='openssh' to use it." % keys)
    return AuthenticationError(
        "%s: authentication failed; the server accepts %s; tried: %s.%s%s"
        % (target.display, ", ".join(allowed) or "nothing we offered", "; ".join(tried), closed, fix),
        target.display)

