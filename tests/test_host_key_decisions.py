"""Host keys decided as OpenSSH decides them, on the same files (found by an audit that put the
paramiko transport and ``ssh`` side by side): every case below is also run through ``ssh`` itself,
and both must refuse.

* a key of another type than the one known is a CHANGED key, not a new one: accept-new recorded the
  key of a machine in the middle that offered only another type, for good;
* on another port, ``[host]:port`` holding a key of another type is a change too: the bare name's
  entry is looked at only when ``[host]:port`` has none;
* a host known through a ``@cert-authority`` whose key is ``@revoked``: refused under accept-new too;
* ``RevokedHostKeys``: a listed key is refused; a KRL, which paramiko cannot read, refuses with the fix;
* a known_hosts line ends at ``\\n`` only: a comment ending in a form feed hides what follows;
* the known key types are negotiated in ssh's order of preference, not the file's.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from own_sshd import USER, own_sshd

from remoteproc import ssh
from remoteproc.errors import HostKeyError
from remoteproc.ssh.connect import connect
from remoteproc.testing import LoopbackSSHServer, current_user
from remoteproc.testing.keys import public_line
from remoteproc.testing.net import HOST

KEYGEN = shutil.which("ssh-keygen")
SSH = shutil.which("ssh")


def other_key(tmp_path, kind: str) -> str:
    """'TYPE BASE64' of a fresh key of ``kind``: one the server does not hold."""
    path = str(tmp_path / ("other_" + kind))
    subprocess.run([KEYGEN, "-q", "-t", kind, "-N", "", "-f", path], check=True, timeout=60)
    return public_line(path + ".pub")


def decide(server, known_hosts: str, policy: str = "reject", **config: str):
    """(remoteproc's HostKeyError or None, ssh's exit status and last words) on these files."""
    cfg = os.path.join(os.path.dirname(known_hosts), "ssh_config")
    with open(cfg, "w") as f:
        f.write("Host *\n  GlobalKnownHostsFile /dev/null\n  UserKnownHostsFile %s\n"
                "  StrictHostKeyChecking %s\n%s" % (known_hosts, "accept-new" if policy == "accept-new" else "yes",
                                                  "".join("  %s %s\n" % kv for kv in config.items())))
    with open(known_hosts) as f:
        before = f.read()
    ours = None
    try:
        connect(ssh.resolve("%s@%s:%d" % (USER, HOST, server.port),
                            {"ssh_config": cfg, "key_filename": server.client_key, "look_for_keys": False,
                             "allow_agent": False, "connect_timeout": 20})).close()
    except HostKeyError as exc:
        ours = exc
    with open(known_hosts) as f:
        after = f.read()
    with open(known_hosts, "w") as f:
        f.write(before)         # (what ssh finds is what we found)
    theirs = subprocess.run([SSH, "-F", cfg, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", server.client_key,
                             "-p", str(server.port), "%s@%s" % (USER, HOST), "true"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return ours, after == before, theirs


@pytest.fixture
def server(tmp_path):
    """An sshd that offers an ed25519 key and, as a second one, an RSA key (its public line as ``rsa``)."""
    rsa = str(tmp_path / "host_rsa")
    subprocess.run([KEYGEN, "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", rsa], check=True, timeout=60)
    with own_sshd(str(tmp_path / "sshd"), "HostKey %s" % rsa) as srv:
        srv.rsa = public_line(rsa + ".pub")     # type: ignore[attr-defined]
        yield srv


@pytest.fixture
def ed_only(tmp_path):
    with own_sshd(str(tmp_path / "sshd")) as srv:
        yield srv


@pytest.mark.parametrize("policy", ["reject", "accept-new"])
def test_a_key_of_another_type_than_the_known_one_is_a_changed_key(ed_only, tmp_path, policy):
    """known_hosts holds an RSA key for the host, which offers only ed25519 (as a machine in the
    middle would): ssh says CHANGED; accept-new recorded the ed25519 key and connected."""
    known = str(tmp_path / "known_hosts")
    with open(known, "w") as f:
        f.write("[%s]:%d %s\n" % (HOST, ed_only.port, other_key(tmp_path, "rsa")))
    ours, unchanged, theirs = decide(ed_only, known, policy)
    assert theirs.returncode != 0 and "CHANGED" in theirs.stderr.upper(), theirs.stderr
    assert ours is not None and "has CHANGED" in str(ours) and "another key (ssh-rsa)" in str(ours), ours
    assert unchanged


def test_on_another_port_a_changed_entry_is_not_overruled_by_the_bare_name(ed_only, tmp_path):
    known = str(tmp_path / "known_hosts")
    with open(known, "w") as f:
        f.write("[%s]:%d %s\n%s %s\n" % (HOST, ed_only.port, other_key(tmp_path, "rsa"), HOST,
                                         ed_only.host_public))
    ours, _unchanged, theirs = decide(ed_only, known, "accept-new")
    assert theirs.returncode != 0, theirs.stderr
    assert ours is not None and "has CHANGED" in str(ours), ours


def test_a_comment_that_ends_in_a_form_feed_hides_the_rest_of_its_line(ed_only, tmp_path):
    known = str(tmp_path / "known_hosts")
    with open(known, "w", newline="") as f:
        f.write("# old entry\x0c[%s]:%d %s\n" % (HOST, ed_only.port, ed_only.host_public))
    ours, _unchanged, theirs = decide(ed_only, known)
    assert theirs.returncode != 0, theirs.stderr
    assert ours is not None and "unknown" in str(ours), ours


def test_the_known_types_are_negotiated_in_sshs_order_not_the_files(server, tmp_path):
    """known_hosts: the host's right RSA key first, another ed25519 key second; ssh prefers
    ed25519, finds it changed and refuses; we negotiated RSA (the file's first) and connected."""
    known = str(tmp_path / "known_hosts")
    with open(known, "w") as f:
        f.write("[%s]:%d %s\n[%s]:%d %s\n" % (HOST, server.port, server.rsa, HOST, server.port,
                                              other_key(tmp_path, "ed25519")))
    ours, _unchanged, theirs = decide(server, known)
    assert theirs.returncode != 0, theirs.stderr
    assert ours is not None and "has CHANGED" in str(ours), ours


def test_revoked_host_keys_refuses_a_listed_key_and_names_the_fix_for_a_krl(ed_only, tmp_path):
    known = str(tmp_path / "known_hosts")
    with open(known, "w") as f:
        f.write("[%s]:%d %s\n" % (HOST, ed_only.port, ed_only.host_public))
    listed = tmp_path / "revoked.pub"
    listed.write_text(other_key(tmp_path, "rsa") + "\n" + ed_only.host_public + " old host key\n")
    ours, _unchanged, theirs = decide(ed_only, known, RevokedHostKeys=str(listed))
    assert theirs.returncode != 0 and "revoked" in theirs.stderr.lower(), theirs.stderr
    assert ours is not None and "revoked by RevokedHostKeys %s (line 2)" % listed in str(ours), ours
    krl = str(tmp_path / "revoked.krl")
    with open(tmp_path / "host.pub", "w") as f:
        f.write(ed_only.host_public + "\n")
    subprocess.run([KEYGEN, "-q", "-k", "-f", krl, str(tmp_path / "host.pub")], check=True, timeout=60)
    ours, _unchanged, theirs = decide(ed_only, known, RevokedHostKeys=krl)
    assert theirs.returncode != 0, theirs.stderr
    assert ours is not None and "transport='openssh'" in str(ours) and "(KRL)" in str(ours), ours
    unlisted = tmp_path / "unlisted.pub"
    unlisted.write_text(other_key(tmp_path, "ed25519") + "\n")
    ours, _unchanged, theirs = decide(ed_only, known, RevokedHostKeys=str(unlisted))
    assert theirs.returncode == 0 and ours is None, (theirs.stderr, ours)


def test_a_host_whose_certificate_authority_is_revoked_is_refused_under_accept_new_too():
    """ssh refuses the host's certificate (its CA is @revoked); accept-new took the plain key
    instead and recorded it."""
    server = LoopbackSSHServer(users=[current_user()], certificates=True).start()
    try:
        ca = server._server.ca_public
        with open(server.known_hosts, "a") as f:
            f.write("@revoked * %s\n" % ca)
        with open(server.known_hosts) as f:
            before = f.read()
        with pytest.raises(HostKeyError, match="certificate authority that vouches for this host .* is marked "
                                               "@revoked"):
            connect(ssh.resolve(server.spec(), {**server.options(), "host_key_policy": "accept-new"})).close()
        with open(server.known_hosts) as f:
            assert f.read() == before
    finally:
        server.stop()


def test_an_unknown_key_with_known_hosts_dev_null_says_to_give_a_file(ed_only):
    """Found by an audit: with known_hosts=/dev/null (--known-hosts /dev/null), the fix for an
    unknown key said ``ssh-keyscan ... >> /dev/null``, which records nothing."""
    with pytest.raises(HostKeyError) as info:
        connect(ssh.resolve("%s@%s:%d" % (USER, HOST, ed_only.port),
                            {"ssh_config": "none", "known_hosts": os.devnull, "key_filename": ed_only.client_key,
                             "look_for_keys": False, "allow_agent": False, "connect_timeout": 20})).close()
    text = str(info.value)
    assert "which keeps no key" in text and "host_key_policy='accept-new'" in text, text
    assert ">> /dev/null" not in text, text
