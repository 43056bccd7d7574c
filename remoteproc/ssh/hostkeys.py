"""Host keys: known_hosts read, checked and recorded as ``ssh`` does, and OpenSSH fingerprints."""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import HostKeyError
from .config import match_pattern_list
from .target import Target, account_home, home_hint

log = logging.getLogger("remoteproc.ssh")


def fingerprint(key: Any) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass
class KnownHost:
    """One line of a known_hosts file."""

    marker: str | None
    hosts: str
    keytype: str
    blob: bytes
    where: str

    def matches(self, name: str) -> bool:
        if self.hosts.startswith("|1|"):
            try:
                _, _, salt_text, digest_text = self.hosts.split("|", 3)
                salt, digest = base64.b64decode(salt_text), base64.b64decode(digest_text)
            except (ValueError, binascii.Error):
                return False
            return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
        return match_pattern_list(name, self.hosts.split(","), fold=True)


def read_known_hosts(paths: list[str]) -> list[KnownHost]:
    """Every usable line of the given known_hosts files (missing files are skipped)."""
    out = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                lines = f.read().split("\n")       # (as ssh: a line ends at \n only, not at \r, \f, U+2028 ...)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except OSError as exc:
            log.warning("ignoring unreadable known_hosts file %s: %s", path, exc.strerror or exc)
            continue
        for number, line in enumerate(lines, 1):
            fields = _fields(line)
            if not fields or fields[0].startswith("#"):
                continue
            marker = fields.pop(0) if fields[0].startswith("@") else None
            if len(fields) < 3:
                continue
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except (ValueError, binascii.Error):
                continue
            if _blob_type(blob) != fields[1]:
                continue        # (ssh skips a line whose key is not of the type it names)
            out.append(KnownHost(marker, fields[0], fields[1], blob, "%s:%d" % (path, number)))
    return out


def _fields(line: str) -> list[str]:
    """A known_hosts line's fields, split as ssh splits them: at blanks and tabs only (a CRLF
    file's \r ends the last field)."""
    return [f for f in re.split(r"[ \t]+", line.rstrip("\r")) if f]


def _blob_type(blob: bytes) -> str:
    """The key type a public key blob names (its first string)."""
    size = int.from_bytes(blob[:4], "big")
    return blob[4:4 + size].decode("ascii", "replace") if 0 < size <= len(blob) - 4 else ""


#: host key algorithms negotiated for each known_hosts key type
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def prefer_known_types(transport: Any, entries: list[KnownHost]) -> None:
    """As ssh does: offer the key types already known for this host first."""
    opts = transport.get_security_options()
    available = [k for k in opts.key_types if "-cert-" not in k]
    known: list[str] = []
    for e in entries:
        if e.marker is None:
            for alg in _ALGORITHMS.get(e.keytype, (e.keytype,)):
                if alg in available and alg not in known:
                    known.append(alg)
    known.sort(key=available.index)     # (in the order of preference, as ssh's, not of the file's lines)
    if known:
        opts.key_types = tuple(known + [k for k in available if k not in known])


_record_lock = threading.Lock()


def record_host_key(path: str, name: str, key: Any, hashed: bool) -> None:
    """Append ``name keytype base64`` to a known_hosts file, as ssh does for a new host."""
    if hashed:
        salt = os.urandom(20)
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        name = "|1|%s|%s" % (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    line = "%s %s %s\n" % (name, key.get_name(), key.get_base64())
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    with _record_lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            size = f.seek(0, os.SEEK_END)
            if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
                line = "\n" + line
            f.write(line.encode())


def check_host_key(target: Target, key: Any) -> None:
    """Accept a known key; refuse a changed or revoked one; unknown: refuse or record (accept-new)."""
    name = target.host_key_name
    files = list(target.known_hosts) + list(target.global_known_hosts)
    known = read_known_hosts(files)
    entries = [e for e in known if e.matches(name)]
    # As ssh does: a host on a port other than 22 whose [host]:port entries do not know this key
    # is looked up by its bare name too, where only the same key counts (another key there is
    # no change, and accept-new records the key under [host]:port).  Not with a HostKeyAlias.
    bare = [] if target.host_key_alias or target.port == 22 else [e for e in known if e.matches(target.hostname)]
    blob = key.asbytes()
    kind = key.get_name()
    revoked = {e.blob: e for e in entries + bare if e.marker == "@revoked"}
    if blob in revoked:
        raise HostKeyError(
            "%s: the host key %s %s is marked @revoked in %s; it is always refused. Ask the host's "
            "administrator for its current key." % (target.display, kind, fingerprint(key), revoked[blob].where),
            target.display)
    _check_revoked_file(target, key)
    plain = [e for e in entries if e.marker is None]
    if any(e.blob == blob for e in plain):
        return
    if plain:
        # As ssh decides: any other key known for the name is a change, whatever its type (a
        # machine in the middle that offers only a key of another type is no new host).  The
        # bare name of a host on another port is looked at only when its [host]:port has none.
        old = plain[0]
        raise HostKeyError(
            "%s: the host key has CHANGED: the host sent %s %s, but %s holds another key (%s) for %s. "
            "This may be an attack (or the host was reinstalled); it is always refused. If the change is "
            "expected, remove the old entry with `ssh-keygen -R '%s'%s` and connect again." % (
                target.display, kind, fingerprint(key), old.where, old.keytype, name, name,
                "" if old.where.startswith(_keygen_default() + ":")
                else " -f %s" % old.where.rsplit(":", 1)[0]),
            target.display)
    if any(e.marker is None and e.blob == blob for e in bare):
        return
    # (ssh trusts a host certificate through a CA line of the bare name too, on any port)
    authorities = [e for e in entries + bare if e.marker == "@cert-authority"]
    for authority in authorities:
        if authority.blob in revoked:
            # (the host's certificate is signed by a key revoked: ssh refuses it; accept-new must not
            # take the plain key instead, nor is transport='openssh' a way out)
            raise HostKeyError(
                "%s: the certificate authority that vouches for this host (@cert-authority in %s) is marked "
                "@revoked in %s; ssh refuses every host key it signed, and so does this. Ask the host's "
                "administrator for its current key or authority." % (target.display, authority.where,
                                                                     revoked[authority.blob].where),
                target.display)
    if authorities and target.policy != "accept-new":
        raise HostKeyError(
            "%s: the host key is unknown: this host is known only through a certificate authority "
            "(@cert-authority in %s), and the paramiko transport cannot check host certificates. Fix: pass "
            "transport='openssh' (your own ssh checks the certificate), or add the host's own key "
            "(%s %s) to known_hosts."
            % (target.display, authorities[0].where, kind, fingerprint(key)), target.display)
    if target.policy == "accept-new" and not target.known_hosts:
        # (ssh refuses a new key it has no user known_hosts file to record in, whatever StrictHostKeyChecking says)
        raise HostKeyError(
            "%s: the host key is unknown (%s %s), and there is no user known_hosts file to record it in "
            "(UserKnownHostsFile none, or known_hosts=[]), so it is refused under host_key_policy='accept-new' "
            "too, as ssh refuses it. Fix: name a file to record keys in (known_hosts= or UserKnownHostsFile), "
            "or add the key to %s." % (target.display, kind, fingerprint(key),
                                       " or ".join(target.global_known_hosts) or "a GlobalKnownHostsFile"),
            target.display)
    if target.policy == "accept-new":
        path = target.known_hosts[0]
        try:
            record_host_key(path, name, key, target.hash_known_hosts)
        except OSError as exc:
            log.warning("%s: could not record the host key in %s: %s", target.display, path, exc)
        else:
            log.log(logging.INFO if target.quiet else logging.WARNING,
                    "%s: permanently added the %s host key %s for %s to %s (host_key_policy='accept-new')",
                    target.display, kind, fingerprint(key), name, path)
        return
    found = [f for f in files if os.path.exists(f)]
    if found:
        checked = "checked " + ", ".join(found)
    elif files:
        checked = "no known_hosts file: %s %s not exist" % (", ".join(files), "does" if len(files) == 1 else "do")
    else:
        checked = "no known_hosts file given"
    raise HostKeyError(
        "%s: the host key is unknown (%s %s; %s). Check that fingerprint with the host's "
        "administrator, then trust it: %s; or pass host_key_policy='accept-new' to record it on first "
        "use.%s%s" % (target.display, kind, fingerprint(key), checked, _how_to_trust(target, kind),
                       _note(stray_hint(target, blob)), home_hint(target.options)), target.display)


#: the first bytes of an OpenSSH key revocation list (a binary file; else a list of public keys)
_KRL_MAGIC = b"SSHKRL\n\0"


def _check_revoked_file(target: Target, key: Any) -> None:
    """``RevokedHostKeys``: refuse a key the file lists, as ssh does; a file that cannot be read
    refuses every key (ssh: "Error checking host key ... in revoked keys file"), and so does a
    binary KRL, which the paramiko transport cannot read (transport='openssh' can)."""
    path = target.revoked_host_keys
    if path is None:
        return
    what = "%s %s" % (key.get_name(), fingerprint(key))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise HostKeyError(
            "%s: cannot check the host key %s against RevokedHostKeys %s: %s; ssh refuses the host then, and "
            "so does this. Fix: make the file readable, or remove RevokedHostKeys from the ssh config"
            % (target.display, what, path, exc.strerror or exc), target.display) from None
    if data.startswith(_KRL_MAGIC):
        raise HostKeyError(
            "%s: RevokedHostKeys %s is a key revocation list (KRL), which the paramiko transport cannot read, "
            "so it cannot tell whether the host key %s is revoked. Fix: pass transport='openssh' (your own ssh "
            "reads it), or list the revoked keys as public key lines instead" % (target.display, path, what),
            target.display)
    blob = key.asbytes()
    for number, line in enumerate(data.decode("utf-8", "replace").split("\n"), 1):
        fields = _fields(line)
        if fields and fields[0].startswith("@"):
            fields = fields[1:]
        if any(_decoded(field) == blob for field in fields[1:]):     # ("type base64 [comment]")
            raise HostKeyError(
                "%s: the host key %s is revoked by RevokedHostKeys %s (line %d); it is always refused. "
                "Ask the host's administrator for its current key." % (target.display, what, path, number),
                target.display)


def _decoded(field: str) -> bytes | None:
    try:
        return base64.b64decode(field, validate=True)
    except (ValueError, binascii.Error):
        return None


def _keygen_default() -> str:
    """The file ``ssh-keygen -R`` edits without ``-f``: the account's ``~/.ssh/known_hosts``, whatever
    ``$HOME`` says (``$HOME``'s, which paramiko reads, needs the ``-f``)."""
    return os.path.join(account_home() or os.path.expanduser("~"), ".ssh", "known_hosts")


def _note(clause: str) -> str:
    return " Note: %s." % clause if clause else ""


#: files of ~/.ssh that hold no host keys: never read for a stray one
_NOT_HOST_KEYS = ("config", "authorized_keys", "authorized_keys2", "environment", "rc")
_STRAY_MAX = 1 << 20


def stray_known_hosts(target: Target, blob: bytes | None = None) -> list[str]:
    """Files beside the known_hosts files (in ~/.ssh, or the directory of the first one) that hold a
    key for this host, with ``blob`` that key, although no known_hosts setting names them: where
    ``ssh-keyscan HOST > ~/.ssh/FILE`` put it.  Private keys and ``*.pub`` files are not read."""
    named = set(os.path.abspath(f) for f in list(target.known_hosts) + list(target.global_known_hosts))
    directories = [os.path.expanduser("~/.ssh")]
    if target.known_hosts:
        directories.insert(0, os.path.dirname(os.path.abspath(target.known_hosts[0])))
    names = [target.host_key_name] + ([target.hostname] if not target.host_key_alias else [])
    found: list[str] = []
    for directory in dict.fromkeys(directories):
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = os.path.abspath(entry.path)
            if path in named or entry.name in _NOT_HOST_KEYS or entry.name.endswith(".pub") \
                    or entry.name.startswith("id_") or path in found:
                continue
            try:
                if not entry.is_file() or entry.stat().st_size > _STRAY_MAX:
                    continue
                with open(path, "rb") as f:
                    if f.read(64).lstrip().startswith(b"-----BEGIN"):
                        continue        # (a private key, by another name)
            except OSError:
                continue
            lines = read_known_hosts([path])
            if any(e.marker is None and (blob is None or e.blob == blob) and any(e.matches(n) for n in names)
                   for e in lines):
                found.append(path)
    return found


def stray_hint(target: Target, blob: bytes | None = None) -> str:
    """The clause that names ``stray_known_hosts`` files and their fix, or ""."""
    import shlex

    stray = stray_known_hosts(target, blob)
    if not stray:
        return ""
    first = shlex.quote(target.known_hosts[0]) if target.known_hosts else "~/.ssh/known_hosts"
    unchecked = (" (not compared with the key the host offers, which ssh does not show: check its fingerprint, "
                 "`ssh-keygen -l -f %s`, against the host's first)" % shlex.quote(stray[0])) if blob is None else ""
    return ("a key for this host is in %s%s, which no known_hosts setting names (ssh reads only its "
            "UserKnownHostsFile and GlobalKnownHostsFile): if you trust it, `cat %s >> %s`, or pass "
            "known_hosts=%r" % (", ".join(stray), unchecked, shlex.quote(stray[0]), first, stray[0]))


def _how_to_trust(target: Target, kind: str) -> str:
    """The commands that record an unknown key where this program will look for it.

    The ssh line is the openssh transport's (the caller's config, keys and known_hosts files):
    ssh records the key in the first ``UserKnownHostsFile``, which is ours (with a
    ``known_hosts=`` of the caller's, ``~/.ssh/known_hosts`` would never be read)."""
    import shlex

    from .openssh import user_command

    ssh = user_command(target)
    if target.known_hosts and os.path.realpath(target.known_hosts[0]) == os.devnull:
        # (found by an audit: the fix appended the key to /dev/null)
        return ("the known_hosts file is %s, which keeps no key: pass known_hosts= (--known-hosts) with a file "
                "of yours and record the key there, or host_key_policy='accept-new' (--accept-new) to take it on "
                "first use" % target.known_hosts[0])
    where = ""
    if target.options.get("known_hosts") is not None and len(target.known_hosts) > 1:
        where = " (ssh records it in the first of those files, %s)" % target.known_hosts[0]
    if target.jump is not None or target.proxy_command or target.host_key_alias:
        # (ssh-keyscan would record the key under the host's name, not under its HostKeyAlias)
        return "connect once with `%s` and answer yes%s" % (ssh, where)
    return "connect once with `%s` and answer yes%s, or run `ssh-keyscan %s-t %s %s >> %s`" % (
        ssh, where, "-p %d " % target.port if target.port != 22 else "", kind.replace("ssh-", "").split("-")[0],
        shlex.quote(target.hostname), shlex.quote(target.known_hosts[0]) if target.known_hosts
        else "~/.ssh/known_hosts")

