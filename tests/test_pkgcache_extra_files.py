"""The package cache's check of an entry covers the files it was written with (agent/pkgcache.py).

A cached package that writes into its own directory (a file it computes once and keeps beside
itself, or bytecode of a directory nobody expected) leaves its entry intact: before, every
file there was hashed, so the entry looked damaged, was removed by the next program and sent
again on every new connection, silently.  A damaged entry that another program holds is
never removed under it: the connection that found it uses a copy of its own.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid

import pytest

from remoteproc import Pipe, RemoteProcess
from remoteproc.agent import pkgcache
from remoteproc.relay import client

pytestmark = pytest.mark.timeout(120)

FILES = {
    "pkg/__init__.py": b"X = 1\n",
    "pkg/data.bin": b"d" * 1000,
    "pkg/tool.sh": b"#!/bin/sh\n",
    "pkg-1.0.dist-info/RECORD": b"pkg/__init__.py,,\n",
    "pkg/__pycache__/__init__.cpython-311.pyc": b"bytecode",      # (not content: not in the hash)
}
MODES = {"pkg/tool.sh": 0o755}


def _digest(files: dict[str, bytes]) -> str:
    """The entry hash of ``files``, as the local side computes it."""
    h = pkgcache.Hasher()
    for rel in sorted(files):
        if not pkgcache.is_bytecode(rel):
            h.file(rel, MODES.get(rel, 0o644), len(files[rel]))
            h.data(files[rel])
    return h.hexdigest()


def _receive(store: pkgcache.Store, files: dict[str, bytes] = FILES) -> tuple[str, str]:
    """Send ``files`` into ``store`` as the relay does; returns (hash, the entry's path)."""
    digest = _digest(files)
    store.begin(digest, {"name": "pkg", "version": "1.0"})
    for rel in sorted(files):       # (in the hash's order, as the relay sends them)
        data = files[rel]
        store.add(digest, [[rel, MODES.get(rel, 0o644), len(data), 0, len(data)]], data, False)
    return digest, store.finish(digest, 1 << 30)


def _old_entry(root: str, files: dict[str, bytes] = FILES) -> str:
    """An entry as an earlier remoteproc wrote it: its manifest lists no files."""
    work = os.path.join(root, "work")
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(work, rel)), exist_ok=True)
        with open(os.path.join(work, rel), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(work, rel), MODES.get(rel, 0o644))
    with open(os.path.join(work, pkgcache.MANIFEST), "w") as f:
        json.dump({"name": "pkg", "version": "1.0", "size": 1, "files": len(files), "created": time.time()}, f)
    digest = _digest(files)
    os.rename(work, os.path.join(root, digest))
    return digest


def _add(path: str, rel: str, data: bytes = b'{"v": 42}') -> None:
    full = os.path.join(path, *rel.split("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "remoteproc" and r.levelno == logging.INFO]


@pytest.fixture
def root(tmp_path) -> str:
    path = str(tmp_path / "remoteproc")
    os.mkdir(path, 0o700)
    return path


def test_files_a_package_adds_beside_its_own_leave_its_entry_in_use(root, caplog):
    """What the package writes into its own directory (a computed table, a new directory, bytecode
    of a data directory) is not damage: the next program uses the entry as it is, nothing is sent
    again (before: the entry was removed and its package sent again by every new connection)."""
    caplog.set_level(logging.INFO, logger="remoteproc")
    first = pkgcache.Store(root)
    digest, path = _receive(first)
    first.close()
    inode = os.stat(path).st_ino
    _add(path, "pkg/computed.json")
    _add(path, "pkg/cache/part-0001.npy", b"\0" * 100)
    _add(path, "pkg/data/__pycache__/helper.cpython-39.pyc", b"bytecode of ours")
    _add(path, "extra-top-level.txt")
    for _ in range(2):      # (a new connection each time)
        store = pkgcache.Store(root)
        try:
            assert store.lookup(digest) == path
        finally:
            store.close()
    assert os.stat(path).st_ino == inode
    with open(os.path.join(path, "pkg", "computed.json"), "rb") as f:
        assert f.read() == b'{"v": 42}'
    assert os.listdir(root) == [digest]
    assert not any("replacing" in m for m in _said(caplog))
    (listed,) = pkgcache.entries(root)
    assert listed["name"] == "pkg" and "content" not in listed     # (the file list is not listed)


@pytest.mark.parametrize("how", ["cut short", "changed", "removed", "made executable"])
def test_a_file_it_was_written_with_that_changed_is_still_damage(root, caplog, how):
    """One of the entry's own files cut short, changed in place (same size), removed or given another
    mode is damage, files added beside them or not: the entry is replaced, never used, and the
    log says which and why (before: replaced without a word)."""
    caplog.set_level(logging.INFO, logger="remoteproc")
    first = pkgcache.Store(root)
    digest, path = _receive(first)
    first.close()
    _add(path, "pkg/computed.json")
    victim = os.path.join(path, "pkg", "data.bin")
    if how == "cut short":
        os.truncate(victim, 10)
    elif how == "changed":
        _add(path, "pkg/data.bin", b"e" * 1000)
    elif how == "removed":
        os.unlink(victim)
    else:
        os.chmod(victim, 0o755)
    store = pkgcache.Store(root)
    try:
        assert store.lookup(digest) is None
        assert not os.path.exists(path)
        (said,) = [m for m in _said(caplog) if "replacing entry" in m]
        assert path in said and "pkg 1.0" in said
        assert ("pkg/data.bin" in said) if how == "removed" else ("hash to" in said and digest[:12] in said)
        assert _receive(store)[1] == path       # (fetched again, into its place)
        assert pkgcache.digest_of(path) == digest
    finally:
        store.close()


def test_an_entry_of_an_earlier_remoteproc_is_checked_whole(root, caplog):
    """An entry whose manifest lists no files (written by an earlier remoteproc) is checked as it was
    then: all its files.  Unchanged, it is used; with a file added, it is replaced, once, saying
    so, and the new entry lists its files, so that the next added file is no damage."""
    caplog.set_level(logging.INFO, logger="remoteproc")
    digest = _old_entry(root)
    path = os.path.join(root, digest)
    store = pkgcache.Store(root)
    assert store.lookup(digest) == path
    store.close()
    _add(path, "pkg/computed.json")
    store = pkgcache.Store(root)
    try:
        assert store.lookup(digest) is None
        (said,) = [m for m in _said(caplog) if "replacing entry" in m]
        assert "earlier remoteproc" in said and path in said
        assert _receive(store)[1] == path
    finally:
        store.close()
    _add(path, "pkg/computed.json")
    store = pkgcache.Store(root)
    try:
        assert store.lookup(digest) == path
    finally:
        store.close()


def test_a_damaged_entry_another_program_holds_is_never_removed_under_it(root, caplog):
    """Another running program holds the entry (its agent's shared lock) when this one finds it damaged
    (here: an earlier remoteproc's entry, with a file its package added): the entry stays as it is,
    for that program; this connection fetches a copy of its own, kept in use as a download is,
    that neither the size cap nor ``--clear`` removes while it is held.  Once nobody holds the
    damaged entry, the next connection replaces it (before: removed at once, under the program
    that was using it)."""
    caplog.set_level(logging.INFO, logger="remoteproc")
    digest = _old_entry(root)
    path = os.path.join(root, digest)
    other = pkgcache.Store(root)         # the other program: it uses the entry
    assert other.lookup(digest) == path
    _add(path, "pkg/computed.json")      # ... and its package writes beside itself
    this = pkgcache.Store(root)
    try:
        assert this.lookup(digest) is None
        assert pkgcache.digest_of(path) != digest
        with open(os.path.join(path, "pkg", "data.bin"), "rb") as f:
            assert f.read() == FILES["pkg/data.bin"]    # (the other program's files: all still there)
        assert os.path.isfile(os.path.join(path, "pkg", "computed.json"))
        assert any("another program is using it" in m and path in m for m in _said(caplog))
        got_digest, copy = _receive(this)
        assert got_digest == digest and copy != path
        assert os.path.dirname(copy) == root and os.path.basename(copy).startswith(".tmp-")
        assert pkgcache.digest_of(copy) == digest
        assert os.path.isfile(os.path.join(path, "pkg", "computed.json"))     # (the held one: untouched)
        assert this.lookup(digest) == copy      # (this connection's later children: the same copy)
        past = time.time() - 2 * pkgcache.STALE
        os.utime(copy, (past, past))
        pkgcache.evict(root, 0, keep={digest})
        removed, kept = pkgcache.clear(root, recent=0)
        assert os.path.isdir(copy) and os.path.isdir(path)
        assert removed == 0
        why = {k["path"]: k["why"] for k in kept}
        assert "a copy in use" in why[copy] and "in use" in why[path]
    finally:
        this.close()
        other.close()
    pkgcache.evict(root, 1 << 30)       # (nobody holds the copy: it goes, as an abandoned download does)
    assert os.listdir(root) == [digest]
    caplog.clear()
    last = pkgcache.Store(root)
    try:
        assert last.lookup(digest) is None
        assert not os.path.exists(path)
        assert any("replacing entry" in m and path in m for m in _said(caplog))
        assert _receive(last)[1] == path
    finally:
        last.close()


def test_an_entry_being_removed_is_not_used(root):
    """An entry on which another program holds the exclusive lock (the size cap, ``--clear`` or a
    replacement, removing it) is not used, nor removed by this one: it is fetched again
    (before: checked and used, without the lock that says so, while it was being deleted)."""
    first = pkgcache.Store(root)
    digest, path = _receive(first)
    first.close()
    fd = os.open(os.path.join(path, pkgcache.MANIFEST), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        store = pkgcache.Store(root)
        try:
            assert store.lookup(digest) is None
            assert os.path.isdir(path)
        finally:
            store.close()
    finally:
        os.close(fd)


def _self_writing_job(conn, name):
    import importlib

    mod = importlib.import_module(name)
    conn.send((mod.table(), mod.__file__))


def test_a_package_that_writes_beside_itself_travels_once(plain_user_host, own_cache, tmp_path, monkeypatch, fresh):
    """End to end: a package with data that writes a file into its own directory on its first use goes
    to the host's cache once; the next connection uses the same entry, sending nothing (before: sent
    again by every new connection)."""
    options, cache = own_cache
    name = "rpself_" + uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(
        "import json, os\nHERE = os.path.dirname(__file__)\n"
        "def table():\n"
        "    cached = os.path.join(HERE, 'computed.json')\n"
        "    if not os.path.exists(cached):\n"
        "        with open(cached, 'w') as f:\n"
        "            json.dump({'v': 42}, f)\n"
        "    with open(cached) as f:\n"
        "        return json.load(f)['v']\n")
    (site / name / "words.txt").write_text("hello\n")
    info = site / (name + "-1.0.dist-info")
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: py3-none-any\n")
    (info / "RECORD").write_text("%s/__init__.py,,\n%s/words.txt,,\n%s-1.0.dist-info/METADATA,,\n"
                                 "%s-1.0.dist-info/WHEEL,,\n%s-1.0.dist-info/RECORD,,\n" % ((name,) * 5))
    monkeypatch.syspath_prepend(str(site))
    where, made = [], []
    for _ in range(2):
        parent, child = Pipe()
        p = RemoteProcess(plain_user_host, target=_self_writing_job, args=(child, name), **options)
        p.start()
        child.close()
        assert parent.poll(60)
        value, path = parent.recv()
        parent.close()
        p.join(30)
        assert p.exitcode == 0 and value == 42
        where.append(path)
        (entry,) = [e for e in pkgcache.entries(cache) if e.get("name") == name]
        made.append((entry["created"], os.stat(entry["path"]).st_ino))
        client.shutdown()       # (the next one: a new connection, a new agent)
    assert where[0] == where[1] and where[0].startswith(cache + "/")
    assert os.path.isfile(os.path.join(os.path.dirname(where[0]), "computed.json"))
    assert made[0] == made[1]       # (the same entry, not one sent and written again)
