"""Authentication as ``ssh`` does it: ssh-agent, identity files and user certificates in its order,
then the password; and ``ForwardAgent``: the host's use of that agent."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import AuthenticationError, ConnectError
from .hostkeys import fingerprint
from .target import DEFAULT_IDENTITIES, Target, config_read, home_hint, own_key_fix, public_key, timeout_said

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


CERT_SUFFIX = "-cert-v01@openssh.com"
#: how many length-prefixed public fields follow the name in each kind of key's blob (in a
#: certificate they follow the nonce, in the same order)
_PUBLIC_FIELDS = {"ssh-ed25519": 1, "ssh-rsa": 2, "ssh-dss": 4, "ecdsa-sha2-nistp256": 2, "ecdsa-sha2-nistp384": 2,
                  "ecdsa-sha2-nistp521": 2, "sk-ssh-ed25519@openssh.com": 2, "sk-ecdsa-sha2-nistp256@openssh.com": 3}
_USER_CERT = 1


@dataclass(frozen=True)
class Certificate:
    """A user certificate (``ssh-keygen -s`` writes it as ``KEY-cert.pub``) and the key it certifies."""

    path: str
    kind: str           # "ssh-ed25519-cert-v01@openssh.com"
    blob: bytes         # the certificate as the server gets it
    public: bytes       # the certified public key's blob: the private key that signs has it


def _ssh_string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise ValueError("truncated")
    size = int.from_bytes(data[pos:pos + 4], "big")
    if pos + 4 + size > len(data):
        raise ValueError("truncated")
    return data[pos + 4:pos + 4 + size], pos + 4 + size


def blob_kind(blob: bytes) -> str:
    """The key type a public key (or certificate) blob names; "" if it is not one."""
    try:
        return _ssh_string(blob, 0)[0].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return ""


def read_certificate(path: str) -> Certificate | str:
    """The user certificate in ``path``, or why it cannot be offered."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            fields = f.read(65536).split()
    except OSError as exc:
        return "unreadable: %s" % (exc.strerror or exc)
    try:
        blob = base64.b64decode(fields[1], validate=True) if len(fields) >= 2 else b""
        kind = blob_kind(blob)
        base = kind[:-len(CERT_SUFFIX)] + ("@openssh.com" if kind.startswith("sk-") else "")
        if not kind.endswith(CERT_SUFFIX) or kind != fields[0] or base not in _PUBLIC_FIELDS:
            return "not a certificate"
        pos = _ssh_string(blob, _ssh_string(blob, 0)[1])[1]        # (past the name and the nonce)
        start = pos
        for _ in range(_PUBLIC_FIELDS[base]):
            pos = _ssh_string(blob, pos)[1]
        if pos + 12 > len(blob):
            return "not a certificate"
        if struct.unpack(">QI", blob[pos:pos + 12])[1] != _USER_CERT:
            return "a host certificate, not a user certificate"
    except (ValueError, binascii.Error):
        return "not a certificate"
    name = base.encode()
    return Certificate(path, kind, blob, len(name).to_bytes(4, "big") + name + blob[start:pos])


class _CertOffer(NamedTuple):
    """A certificate to offer, and what signs for it: a key file's path or an ssh-agent key."""

    signer: Any
    cert: Certificate


def _identities(target: Target, agent: Any) -> list[tuple[str, Any]]:
    """(label, key) in the order they are offered: the key is an agent key, a key file's path, a
    ``_CertOffer``, or None for a certificate that cannot be offered (the label says why).

    First the files passed as ``key_filename`` (through the agent if it holds them):
    an explicit key is meant to be used, and trying the agent's keys before it could
    exhaust the server's MaxAuthTries.  Then ssh's own order: the ``CertificateFile``s,
    agent keys that an IdentityFile names (in the agent's order), the other agent keys
    (unless IdentitiesOnly), and the remaining IdentityFiles (or default key files).
    A key file's certificate (``KEY-cert.pub``, which ssh loads with it) comes right after
    the key, signed by whichever holds the key (the agent, else the file).
    """
    order = _Order(list(agent.get_keys()) if agent is not None else [])
    explicit = [(p, _public_blob(p)) for p in dict.fromkeys(target.explicit_keys) if os.path.isfile(p)]
    for path, blob in explicit:
        order.add_key(path, blob)
    files = [(path, _public_blob(path)) for path in dict.fromkeys(target.key_filenames)
             if path not in dict(explicit) and os.path.isfile(path)]
    for path in dict.fromkeys(target.certificate_files):
        cert = read_certificate(path) if os.path.isfile(path) else None     # (ssh skips a missing one)
        if isinstance(cert, str):
            order.found.append(("CertificateFile %s (%s)" % (path, cert), None))
        elif cert is not None and not order.add_cert(cert, next((f for f, b in explicit + files
                                                                 if b == cert.public), None)):
            order.found.append(("CertificateFile %s (its private key is neither in ssh-agent nor an IdentityFile)"
                                % path, None))
    preferred: list[tuple[str, bytes | None]] = []
    others: list[tuple[str, Any]] = []
    for key in order.agent_keys:
        blob = key.asbytes()
        if blob in order.offered:
            continue
        match = next((f for f in files if f[1] == blob), None)
        if match is not None:
            files.remove(match)
            preferred.append(match)
        elif not target.identities_only:
            comment = key.comment if isinstance(getattr(key, "comment", None), str) else ""
            what = "certificate" if blob in order.held else "key %s" % fingerprint(key)
            others.append(("ssh-agent %s %s" % (what, comment), key))
    for path, blob in preferred:
        order.add_key(path, blob)
    for label, key in others:
        order.add(label, key, key.asbytes())
    for path, blob in files:
        order.add_key(path, blob)
    return order.found


class _Order:
    """The identities of one login as ``_identities`` lists them, each offered once."""

    def __init__(self, agent_keys: list[Any]) -> None:
        self.agent_keys = agent_keys
        self.plain: dict[bytes, Any] = {}       # public key blob -> the agent's key
        self.held: dict[bytes, Any] = {}        # certificate blob -> the agent's certificate (ssh-add adds both)
        for key in agent_keys:
            blob = key.asbytes()
            (self.held if blob_kind(blob).endswith(CERT_SUFFIX) else self.plain).setdefault(blob, key)
        self.found: list[tuple[str, Any]] = []
        self.offered: set[bytes] = set()

    def add(self, label: str, key: Any, blob: bytes | None) -> None:
        if blob is None or blob not in self.offered:
            self.found.append((label, key))
            if blob is not None:
                self.offered.add(blob)

    def add_cert(self, cert: Certificate, file: str | None) -> bool:
        """Offer ``cert`` signed by the agent's key, else by ``file``; False when neither holds it."""
        if cert.blob in self.held:
            self.add("%s (from ssh-agent)" % cert.path, self.held[cert.blob], cert.blob)
        elif cert.public in self.plain:
            self.add("%s (with its key from ssh-agent)" % cert.path, _CertOffer(self.plain[cert.public], cert),
                     cert.blob)
        elif file is not None:
            self.add(cert.path, _CertOffer(file, cert), cert.blob)
        else:
            return False
        return True

    def add_key(self, path: str, blob: bytes | None) -> None:
        """A key file: through the agent when it holds the key; then its certificate."""
        if blob is not None and blob in self.plain:
            self.add("%s (from ssh-agent)" % path, self.plain[blob], blob)
        else:
            # (not skipped for a key offered already: that file may be one ssh cannot use, encrypted
            # or open to others, and this copy usable, as ssh tries it; ``_Attempt.keys`` skips it
            # once a key with its public half was actually offered)
            self.found.append((path, path))
        beside = path + "-cert.pub"
        cert = read_certificate(beside) if os.path.isfile(beside) else None
        if isinstance(cert, Certificate) and (blob is None or cert.public == blob):
            self.add_cert(cert, path)


def authenticate(transport: Any, target: Target) -> None:
    """Authenticate as ``ssh`` would: keys (agent and files, in its order), then the password."""
    attempt = _Attempt(transport, target)
    if attempt.none():
        return
    defaults = {os.path.expanduser("~/.ssh/" + name) for name in DEFAULT_IDENTITIES}
    attempt.tried += [p + _NO_FILE for p in dict.fromkeys(target.key_filenames)
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
        self.loaded: dict[str, Any] = {}       # key file -> its key (None: unusable, noted in tried)
        self.offered: set[bytes] = set()       # public key blobs offered (a second copy is not)

    def none(self) -> bool:
        """The "none" method: authenticated already (rare), else learn what the server allows."""
        import paramiko

        try:
            self.allowed = self.transport.auth_none(self.target.username)
        except paramiko.BadAuthenticationType as exc:
            self.allowed = list(exc.allowed_types)
        except paramiko.SSHException as exc:
            _unless_unanswered(exc, self.target)
            raise _auth_failed(self.target, self.transport, self.tried, None, exc) from None
        return bool(self.transport.is_authenticated())

    def keys(self, agent: Any) -> bool:
        """Offer each identity in turn until one is accepted or the server stops listening."""
        import paramiko

        if "publickey" not in self.allowed:
            return False
        for label, key in _identities(self.target, agent):
            if key is None:             # (a certificate that cannot be offered: noted for the error)
                self.tried.append(label)
                continue
            cert = None
            if isinstance(key, _CertOffer):
                key, cert = key
            if isinstance(key, str):
                key = self._load(key, key)
                if key is None or (cert is None and key.asbytes() in self.offered):
                    continue
            if cert is not None:
                if key.asbytes() != cert.public:
                    self.tried.append("%s (a certificate for another key)" % label)
                    continue
                key = _Certified(_Declinable(key) if isinstance(key, paramiko.AgentKey) else key, cert)
            outcome = self._offer(label, key)
            if cert is None:
                self.offered.add(key.asbytes())
            if outcome == _DONE:
                return True
            if outcome == _STOP:
                break
        return False

    def _load(self, label: str, path: str) -> Any:
        """The private key in ``path`` (a paramiko PKey), or None (noted in ``tried``, once: a key
        and its certificate share one load).

        Loaded without the passphrase first: ``cryptography``, under paramiko, refuses a
        passphrase for a key that has none, and says a key is encrypted with TypeError.
        A kind of key paramiko cannot use (a FIDO ``sk-`` key, DSA) is noted, not raised:
        ``cryptography`` says so with UnsupportedAlgorithm, paramiko with UnknownKeyType,
        neither of them an SSHException.
        """
        if path not in self.loaded:
            key = self._read_key(label, path)
            if key is not None and _open_to_others(path):
                # as ssh ("UNPROTECTED PRIVATE KEY FILE! ... This private key will be ignored."): a
                # key that others may read is not yours alone, and the openssh transport would not use it
                self.tried.append("%s (ignored, as ssh ignores it: others may read it; fix: chmod 600 %s)"
                                  % (label, path))
                key = None
            self.loaded[path] = key
            if key is not None:
                key.public_blob = None      # (paramiko loads KEY-cert.pub onto it: ssh offers the key, then that)
        return self.loaded[path]

    def _read_key(self, label: str, path: str) -> Any:
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
        except PermissionError:
            self.tried.append("%s (unreadable: permission denied; fix: make it yours, readable by you only: %s)"
                              % (label, own_key_fix(path)))
            return None
        except (paramiko.SSHException, OSError, ValueError) as exc:
            self.tried.append("%s (unusable: %s)" % (label, exc))
            return None
        try:
            return paramiko.PKey.from_path(path, self.target.passphrase.encode())
        except (UnsupportedAlgorithm, UnknownKeyType) as exc:
            self.tried.append("%s (%s)" % (label, _unsupported(path, exc)))
        except (TypeError, paramiko.SSHException, OSError, ValueError) as exc:
            if _wrong_passphrase(path, self.target.passphrase):
                self.tried.append("%s (encrypted, and the passphrase given is not its passphrase: check "
                                  "passphrase=, or load the key into ssh-agent with ssh-add)" % label)
            else:
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
        except paramiko.AuthenticationException as exc:
            _unless_unanswered(exc, self.target)
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
        except paramiko.AuthenticationException as exc:
            _unless_unanswered(exc, self.target)
            self.tried.append("password (refused)")
        except paramiko.SSHException as exc:
            self.tried.append("password (%s)" % exc)
        return bool(self.transport.is_authenticated())


def _unless_unanswered(exc: Exception, target: Target) -> None:
    """paramiko's ``auth_timeout`` ends a login request that got no answer with the same exception as a
    refusal: a server that does not answer (an sshd waiting on an account lookup: LDAP, SSSD, an
    ``AuthorizedKeysCommand``; a stalled network) is not one that refused every key, and the next key
    would wait as long again."""
    if str(exc) == "Authentication timeout.":
        from .openssh import user_command

        raise ConnectError("%s: the server did not answer a login request within %gs%s: sshd there waits on "
                           "something (an account lookup: LDAP, SSSD, an AuthorizedKeysCommand) or the network "
                           "stalled. Fix: `%s -v true` shows where it stops; a slow server: raise "
                           "connect_timeout=." % (target.display, target.connect_timeout, timeout_said(target),
                                                  user_command(target)), target.display) from None


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


class _Certified:
    """A key offered with its certificate: the server checks the certificate, the key (a file's, or
    the agent's) signs.  paramiko offers what ``public_blob`` holds."""

    def __init__(self, key: Any, cert: Certificate) -> None:
        from paramiko.pkey import PublicBlob

        self.key = key
        self.public_blob = PublicBlob(cert.kind, cert.blob)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.key, name)

    def get_name(self) -> str:
        return str(self.public_blob.key_type)

    def asbytes(self) -> bytes:
        return bytes(self.public_blob.key_blob)

    def sign_ssh_data(self, data: bytes, algorithm: str | None = None) -> Any:
        return self.key.sign_ssh_data(data, algorithm)


def _open_to_others(path: str) -> bool:
    """Whether ssh would ignore private key file ``path``: yours, with any permission for others."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and bool(st.st_mode & 0o077)


def _wrong_passphrase(path: str, passphrase: str) -> bool:
    """Whether ``cryptography`` says the key file is one it reads, but not with this passphrase
    (paramiko's own error is that of the last key class it tried: "no BEGIN/END delimiters", ...)."""
    from cryptography.hazmat.primitives import serialization

    try:
        with open(path, "rb") as f:
            data = f.read()
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            serialization.load_ssh_private_key(data, passphrase.encode())
        else:
            serialization.load_pem_private_key(data, passphrase.encode())
    except ValueError as exc:
        text = str(exc).lower()
        if b"Proc-Type: 4,ENCRYPTED" in data and "deserialize" in text:
            # (a legacy PEM key decrypted with a wrong passphrase passes its padding check about
            # once in 256 tries: then its garbage fails to parse instead of to decrypt)
            return True
        return "checksum" in text or "password" in text or "decrypt" in text
    except Exception:  # noqa: BLE001 - any other failure: not known to be the passphrase
        return False
    return False


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
    needs a ``gssapi-*`` method, the rest (tokens, FIDO keys) ``publickey``.

    Debian's ``/etc/ssh/ssh_config`` says ``GSSAPIAuthentication yes`` for every host: naming it
    for a server that takes no GSSAPI would send every refused login to transport='openssh',
    where ``ssh`` is refused just the same.  With nothing known of the server, all count."""
    if not allowed:
        return cannot
    gssapi = any(method.startswith("gssapi") for method in allowed)
    return tuple(p for p in cannot if (gssapi if p.startswith("GSSAPI") else "publickey" in allowed))


_NO_FILE = " (no such file)"     # how a key_filename or IdentityFile that does not exist shows among the keys tried


def _missing_keys(target: Target, missing: list[str]) -> str:
    """The fix for key files that do not exist, named where each was given: ``key_filename=``, or
    an ``IdentityFile`` of the ssh config (which ssh skips silently).  A user who passed no
    key_filename= and was told to check it looked for an option they never gave."""
    given = [p for p in missing if p in target.explicit_keys]
    configured = [p for p in missing if p not in target.explicit_keys]
    fixes = []
    if given:
        fixes.append("check key_filename: %s %s (give the path of your private key)"
                     % (", ".join(given), "does not exist" if len(given) == 1 else "do not exist"))
    if configured:
        fixes.append("check IdentityFile for %s in %s: %s %s (correct the path of your private key, or remove "
                     "the line)" % (target.original_host or target.hostname,
                                    config_read(target.options) or "the ssh config", ", ".join(configured),
                                    "does not exist" if len(configured) == 1 else "do not exist"))
    return "; or ".join(fixes)


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
        keys = "%s; or %s" % (_missing_keys(target, missing), keys)
    if not tried:
        tried = (["no key: the server takes none"] if allowed and "publickey" not in allowed
                 else ["no key (no agent, no key file found)"])
    cannot = _the_server_takes(target.paramiko_cannot, allowed)
    if cannot:
        fix = (" This host's ssh config asks for %s, which the paramiko transport cannot use. Fix: pass "
               "transport='openssh' (your own ssh logs in with them), or %s."
               % (_words(cannot), keys))
    else:
        fix = (" Fix: %s. If `ssh` itself logs you in (Kerberos/GSSAPI, a FIDO or PKCS#11 key, 2FA), pass "
               "transport='openssh' to use it." % keys)
    return AuthenticationError(
        "%s: authentication failed; the server accepts %s; tried: %s.%s%s%s"
        % (target.display, ", ".join(allowed) or "nothing we offered", "; ".join(tried), closed, fix,
           home_hint(target.options)),
        target.display)



# -- ForwardAgent ------------------------------------------------------------------------------

#: bound on connecting to the local agent and on one write to it or to the channel
AGENT_IO_TIMEOUT = 10.0
#: how often an idle forwarded connection looks whether its channel closed
AGENT_POLL = 1.0


def agent_to_forward(target: Target) -> str | None:
    """The socket that ``ForwardAgent`` hands the host, or None.

    ``ForwardAgent yes`` forwards the agent we authenticate with (``IdentityAgent``, else
    ``$SSH_AUTH_SOCK``), as ssh does (it sets ``$SSH_AUTH_SOCK`` from ``IdentityAgent``);
    ``ForwardAgent PATH`` that socket.  ``allow_agent=False`` means no ssh-agent at all: the
    openssh transport passes ``IdentityAgent=none`` for it, with which ssh forwards nothing.
    """
    if not target.forward_agent or not target.allow_agent:
        return None
    if target.forward_agent_path is not None:
        return target.forward_agent_path
    if target.identity_agent == "":
        return None
    return target.identity_agent or os.environ.get("SSH_AUTH_SOCK") or None


def _agent_answers(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(AGENT_IO_TIMEOUT)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def forward_agent(chan: Any, target: Target) -> None:
    """Ask for agent forwarding on the session channel ``chan`` (before its command runs), as ssh
    does for ``ForwardAgent``: its processes then find ``$SSH_AUTH_SOCK``, and each connection one
    of them makes to it reaches the local agent through the SSH connection.

    As ssh: ``ForwardAgent yes`` with no agent answering is no forwarding, silently (logged at
    INFO here); a named socket that does not exist is warned about and forwarded all the same
    (the host's requests then fail, and succeed once an agent listens there).
    """
    path = agent_to_forward(target)
    if path is None:
        if target.forward_agent:
            log.info("%s: ForwardAgent: no ssh-agent to forward (allow_agent=False or IdentityAgent none)",
                     target.display)
        return
    if target.forward_agent_path is None and not _agent_answers(path):
        log.info("%s: ForwardAgent yes, but no ssh-agent answers at %s: not forwarded", target.display, path)
        return
    if target.forward_agent_path is not None and not os.path.exists(path):
        log.warning("%s: ForwardAgent: cannot forward the agent socket %s: no such file (the host's requests "
                    "to the agent fail until an agent listens there)", target.display, path)
    display = target.display

    def opened(remote: Any) -> None:
        # (called in paramiko's transport thread: connecting and copying happen in a thread of their own)
        _AgentPipe(remote, path, display).start()

    chan.request_forward_agent(opened)


class _AgentPipe(threading.Thread):
    """One connection of the host to the forwarded agent: its channel, copied to and from a new
    connection to the local agent's socket until either side closes (or the SSH connection does)."""

    def __init__(self, chan: Any, path: str, display: str) -> None:
        super().__init__(name="remoteproc-agent-forward", daemon=True)
        self.chan = chan
        self.path = path
        self.display = display

    def run(self) -> None:
        import paramiko

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(AGENT_IO_TIMEOUT)
            sock.connect(self.path)
        except OSError as exc:
            log.debug("%s: a forwarded agent request could not reach %s: %s", self.display, self.path, exc)
            sock.close()
            self.chan.close()
            return
        self.chan.settimeout(AGENT_IO_TIMEOUT)
        try:
            self._copy(sock)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("%s: a forwarded agent connection ended: %s", self.display, exc)
        finally:
            sock.close()
            self.chan.close()

    def _copy(self, sock: socket.socket) -> None:
        chan = self.chan
        while not chan.closed:
            ready, _, _ = select.select([chan, sock], [], [], AGENT_POLL)
            if chan in ready:
                data = chan.recv(32768)
                if not data:
                    return
                sock.sendall(data)
            if sock in ready:
                data = sock.recv(32768)
                if not data:
                    return
                chan.sendall(data)

