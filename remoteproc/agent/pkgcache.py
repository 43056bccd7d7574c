"""The package cache on the remote host: distributions stored by the hash of their content.

A package that the host lacks and that needs real files (C extensions, the shared
libraries wheels vendor beside them, package data) arrives here once per host:
``$XDG_CACHE_HOME/remoteproc/<hash>/`` (or ``~/.cache/remoteproc/<hash>/``), laid
out as in the user's site-packages, so a child adds the entry to ``sys.path`` and
imports it as an installed package.  An entry is written under a temporary name
and renamed into place (a crash or a second writer never leaves a half entry in
use), checked against its hash before a connection first uses it (a damaged entry
is replaced, never used), and evicted least recently used beyond a size cap.

The check covers the files the entry was written with, which its manifest lists
(``content``): a file that the package adds beside its own (what it computes once and
keeps there) is not damage, but one of its own files missing, cut short or changed is.
An entry of an earlier remoteproc, whose manifest lists nothing, is checked as it was
then: all its files.  A damaged entry that another program holds (below) is never
removed under it: the connection that found it uses a copy of its own instead.

What is in use is never removed, by the cap or by ``remoteproc cache --clear``: an
agent holds a shared ``flock`` on the manifest of every entry its connection uses
(its children inherit it, so it lasts while any of them runs), and one on the
temporary directory of each download under way; entries used in the last RECENT
seconds stay too (a program may be between finding an entry and locking it).

The hash (``Hasher``) is shared with the local side, which computes it over the
same files: one definition, no drift.  It is a sha256 over one line per file, in
sorted path order: relative path, mode (executable or not), size, and the file's own
sha256 -- the form an installed wheel's ``RECORD`` already holds, so the local side
reads those instead of hashing a large package again in every new program.

Bytecode that the local side had (``__pycache__/*.pyc``, valid for its source and
for this host's interpreter) comes along, and the sources keep their modification
times, so the first import here compiles nothing.  Bytecode is not content: it is
derived from the sources, which are, and Python checks it against them (source time
and size) before use, as it does the bytecode it writes here itself.
"""

import fcntl
import hashlib
import io  # noqa: F401  (named in a type comment)
import json
import os
import shutil
import stat
import sys
import threading
import time
import zlib

MANIFEST = ".remoteproc-entry.json"     # per entry: what it holds, and (mtime) when it was last used
DEFAULT_CAP = 4 << 30                   # bytes; the option cache_size changes it
STALE = 3600.0                          # seconds after which an unfinished temporary entry is litter
RECENT = 600.0                          # entries used this recently are not evicted (others may be using them)
CLEAR_RECENT = 60.0                     # ... nor cleared: a program between finding an entry and locking it
_HEX = frozenset("0123456789abcdef")


class CacheError(Exception):
    """The cache cannot hold or produce an entry (disk full, permissions, damage in transit)."""


def cache_root():
    """Where the cache lives on this host: the XDG base directory spec's cache home, or, for an
    account that cannot write in its home (read-only or missing, as service accounts have them)
    and has not set XDG_CACHE_HOME, a private directory of the account in the temp directory,
    so that packages still travel (docs/modules.md)."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if os.path.isabs(base):
        return os.path.join(base, "remoteproc")     # (the user's choice: its errors name it)
    home = os.path.join(os.path.expanduser("~"), ".cache", "remoteproc")
    if _can_make(home):
        return home
    try:
        import tempfile

        tmp = tempfile.gettempdir()
    except OSError:         # (no writable temp directory either: the error names the home one)
        return home
    spare = os.path.join(tmp, "remoteproc-cache-%d" % os.getuid())
    if not os.path.lexists(spare) or _private(spare):
        return spare if _can_make(spare) else home
    return _spare_of_ours(tmp, spare) or home


def _can_make(path):
    """True if ``path`` is a directory this account can write in, or its nearest existing
    ancestor is (so it can be made).  Ownership and mode are checked later (``_check_root``)."""
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _private(path):
    """Is ``path`` a real directory (not a link) of this account?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _listable(root):
    """May ``remoteproc cache`` list and clear ``root``: a real directory of this account (root's
    look at any)?  Another account's directory, named by XDG_CACHE_HOME, is not our cache."""
    try:
        st = os.lstat(root)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and os.getuid() in (0, st.st_uid)


def _spare_of_ours(tmp, taken):
    """The temp directory's cache name ``taken`` is another account's (it made it first, in a
    shared /tmp, or put a link there): a directory of a random name of ours instead, the one an
    earlier agent made (found by its prefix, ours and private) or a new one, so that another
    account can neither refuse us the cache nor have us use its files."""
    import tempfile

    prefix = os.path.basename(taken) + "-"
    try:
        names = sorted(n for n in os.listdir(tmp) if n.startswith(prefix))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(tmp, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700:
            return path
    try:
        return tempfile.mkdtemp(prefix=prefix, dir=tmp)     # (0700, a name nobody could make first)
    except OSError:
        return None


def _makedirs(path):
    """``os.makedirs`` that makes every missing directory 0700, not only the last (``~/.cache``
    too, as the XDG base directory spec asks): a parent that others could write would let them
    move the cache away and put theirs in its place."""
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        _makedirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def file_mode(mode):
    """The one bit of a file's mode that the hash covers: executable or not."""
    return 0o755 if mode & 0o111 else 0o644


class Hasher:
    """The entry hash: sha256 over ``path NUL mode NUL size NUL sha256(file) NL`` per file,
    in sorted path order.  Feed a file's bytes (``file`` then ``data``), or give its sha256
    when it is known (``known``)."""

    def __init__(self):
        self._h = hashlib.sha256()
        self._head = b""
        self._file = None  # type: hashlib._Hash | None

    def _line(self, rel, mode, size):
        return b"%s\0%o\0%d\0" % (rel.encode("utf-8", "surrogateescape"), file_mode(mode), size)

    def file(self, rel, mode, size):
        self._end()
        self._head = self._line(rel, mode, size)
        self._file = hashlib.sha256()

    def data(self, chunk):
        assert self._file is not None, "data() before file()"
        self._file.update(chunk)

    def known(self, rel, mode, size, hexdigest):
        self._end()
        self._h.update(self._line(rel, mode, size) + hexdigest.encode("ascii") + b"\n")

    def _end(self):
        if self._file is not None:
            self._h.update(self._head + self._file.hexdigest().encode("ascii") + b"\n")
            self._file = None

    def hexdigest(self):
        self._end()
        return self._h.hexdigest()


def is_digest(name):
    return len(name) == 64 and set(name) <= _HEX


def is_bytecode(rel):
    parts = rel.split("/")
    return len(parts) >= 2 and parts[-2] == "__pycache__" and rel.endswith(".pyc")


def safe_rel(rel):
    """A relative path that stays inside its entry (the local side sends only such paths)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\0" in rel or "\\" in rel:
        return False
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or rel == MANIFEST:
        return False
    return "__pycache__" not in parts or (is_bytecode(rel) and parts.count("__pycache__") == 1)


def entry_files(root):
    """Sorted (relative path, full path) of an entry's files; None if it is or holds a link, a
    special file or anything of another account than the entry's owner (never ours).
    ``__pycache__`` (bytecode) and the manifest are not content."""
    out = []
    top = os.lstat(root)
    if not stat.S_ISDIR(top.st_mode):
        return None
    uid = top.st_uid    # (the entry's owner: checked to be this account before a connection uses it)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
                return None
        bytecode = "__pycache__" in os.path.relpath(dirpath, root).split(os.sep)
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                return None     # (bytecode too: Python would load it, checking only its source's time and size)
            if rel != MANIFEST and not bytecode:
                out.append((rel, full))
    out.sort()
    return out


def _sha256_of(path, size):
    """A file's sha256 (hex), or None if it is not ``size`` bytes long."""
    h = hashlib.sha256()
    left = size
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                return None
            h.update(chunk)
            left -= len(chunk)
        if f.read(1):
            return None
    return h.hexdigest()


def digest_of(root, workers=None):
    """The hash of what an entry directory holds now, all its files (None if it holds something
    foreign).  Files are hashed by a few threads at once (hashlib and reads release the GIL)."""
    files = entry_files(root)
    if files is None:
        return None
    return _hash_files(files, workers)


def _hash_files(files, workers=None):
    """The entry hash of ``files`` (sorted (relative path, full path)); None if one cannot be read whole."""
    stats = [(rel, full, os.lstat(full)) for rel, full in files]
    sums = [None] * len(stats)
    order = sorted(range(len(stats)), key=lambda i: -stats[i][2].st_size)
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if not order:
                    return
                i = order.pop()
            try:
                sums[i] = _sha256_of(stats[i][1], stats[i][2].st_size)
            except OSError:
                sums[i] = None

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers or min(4, os.cpu_count() or 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h = Hasher()
    for (rel, _full, st), hexdigest in zip(stats, sums):
        if hexdigest is None:
            return None
        h.known(rel, st.st_mode, st.st_size, hexdigest)
    return h.hexdigest()


def recorded_content(path):
    """The files entry ``path`` was written with (sorted relative paths, bytecode aside: what its
    hash covers), as its manifest lists them; None when it lists none (an entry of an earlier
    remoteproc) or cannot be read."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    content = info.get("content") if isinstance(info, dict) else None
    if not isinstance(content, list) or not all(isinstance(r, str) and safe_rel(r) and not is_bytecode(r)
                                                for r in content):
        return None
    return content if content == sorted(set(content)) else None


def damage(path, digest, workers=None):
    """Why entry ``path`` must not be used as ``digest``; None if it is intact.  What is checked are
    the files it was written with (``recorded_content``): files added beside them (a package's own
    "compute once, keep it here" file) are not damage, but a missing, cut short or changed one is;
    an entry whose manifest lists none is checked whole, as before.  A link, a special file or a
    file of another account anywhere in it, added or not, is damage (``entry_files``)."""
    files = entry_files(path)
    if files is None:
        return "it holds a link, a special file or a file of another account"
    content = recorded_content(path)     # (after entry_files: the manifest is a plain file of ours)
    if content is not None:
        have = dict(files)
        missing = [rel for rel in content if rel not in have]
        if missing:
            return "%d of the files it was written with %s missing (%s%s)" % (
                len(missing), "is" if len(missing) == 1 else "are", ", ".join(missing[:3]),
                ", ..." if len(missing) > 3 else "")
        files = [(rel, have[rel]) for rel in content]
    got = _hash_files(files, workers)
    if got == digest:
        return None
    if got is None:
        return "one of its files changed size while it was read"
    if content is None:
        return ("its files hash to %s, not %s: one was changed, removed or added (an entry of an earlier "
                "remoteproc, which did not list the files it was written with)" % (got[:12], digest[:12]))
    return "the files it was written with hash to %s, not %s: one of them was changed" % (got[:12], digest[:12])


def _note(msg, *args):
    """An INFO record on the ``remoteproc`` logger (imported when needed: most agents never log)."""
    import logging

    logging.getLogger("remoteproc").info("remoteproc: package cache: " + msg, *args)


def _label(path):
    """An entry named for the log: its hash's start and path, and the package it holds."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    what = " ".join(str(info[k]) for k in ("name", "version") if info.get(k))
    return "%s (%s)" % (path, what) if what else path


INTACT, BUSY, DAMAGED, FOREIGN = "intact", "busy", "damaged", "foreign"


def _open_entry(path, digest):
    """Hold entry ``path`` (a shared lock on its manifest), then check it: in that order, so that no
    other program replaces it between the check and the use.  Returns (INTACT, the fd holding
    it, -1 for an entry without a manifest), (DAMAGED, why), (FOREIGN, why) for a link or
    another account's directory, or (BUSY, None): another program is removing it."""
    if not _private(path):
        return FOREIGN, "it is a link, or a directory of another account"
    fd = _lock(os.path.join(path, MANIFEST), fcntl.LOCK_SH, -1)
    if fd is None:
        return BUSY, None       # (an exclusive lock: the size cap, --clear or a replacement at work)
    try:
        why = damage(path, digest)
    except OSError as exc:      # (removed while it was read)
        why = "it could not be read (%s)" % exc
    if why is None:
        return INTACT, fd
    _release(fd)
    return DAMAGED, why


def _replace(root, path, why):
    """Remove damaged entry ``path`` so that a sound copy takes its place, unless another program
    holds it (a shared lock: in use): its files then stay as they are for it.  True if removed."""
    claim = _claim(os.path.join(path, MANIFEST))
    label = _label(path)
    if claim is None:
        _note("entry %s is damaged: %s; another program is using it, so it stays, and this connection "
              "gets a copy of its own", label, why)
        return False
    try:
        _note("replacing entry %s: %s", label, why)
        _trash(root, path)
    finally:
        _release(claim)
    return True


def _remove(path):
    shutil.rmtree(path, ignore_errors=True)


def _trash(root, path):
    """Move ``path`` out of the way at once (a rename), then delete it."""
    if os.path.islink(path):
        try:
            os.unlink(path)     # (rmtree refuses a link: it would stay as litter)
        except OSError:
            pass
        return
    spot = os.path.join(root, ".trash-%d-%d" % (os.getpid(), time.monotonic_ns()))
    try:
        os.rename(path, spot)
    except OSError:
        spot = path
    _remove(spot)


class Incoming:
    """One entry being received: written into a temporary directory, hashed as it lands."""

    def __init__(self, root, digest, info):
        import tempfile

        self.root = root
        self.digest = digest
        self.info = info
        self.tmp = tempfile.mkdtemp(prefix=".tmp-%s-" % digest[:12], dir=root)    # mode 0700
        self.lock = _hold(self.tmp)     # (a download under way: --clear and the cap leave it)
        self.hasher = Hasher()
        self.f = None  # type: io.BufferedWriter | None
        self.left = 0           # bytes still due for it
        self.f_offset = 0
        self.size = 0
        self.count = 0
        self.hashing = False    # the current file is content (bytecode is not)
        self.dirs = set()       # directories made so far
        self.mtime = None       # the current file's modification time, kept (its bytecode checks it)
        self.path = ""
        self.content = []       # the files the hash covers (relative paths): listed in the manifest

    def add(self, parts, blob, compressed):
        data = memoryview(zlib.decompress(blob) if compressed else blob)    # (pieces are views: no copies)
        pos = 0
        for part in parts:
            rel, mode, size, offset, n = part[:5]
            if offset == 0:
                self._open(rel, int(mode), int(size), part[5] if len(part) > 5 else None)
            elif self.f is None or offset != self.f_offset:
                raise CacheError("pieces of %s arrived out of order" % rel)
            piece = data[pos:pos + n]
            pos += n
            if len(piece) != n or n > self.left:
                raise CacheError("a piece of %s has the wrong length" % rel)
            if n:
                assert self.f is not None
                self.f.write(piece)
                if self.hashing:
                    self.hasher.data(piece)
            self.left -= n
            self.f_offset += n
            if not self.left:
                self._close()
        if pos != len(data):
            raise CacheError("a piece of %s carries %d bytes too many" % (self.info.get("name"), len(data) - pos))

    def _path(self, rel):
        """The file's path in the temporary entry, its directory made."""
        if not safe_rel(rel):
            raise CacheError("refusing the file name %r" % (rel,))
        full = os.path.join(self.tmp, *rel.split("/"))
        parent = os.path.dirname(full)
        if parent not in self.dirs:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            self.dirs.add(parent)
        return full

    def _create(self, full, mode):
        return os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700 if file_mode(mode) & 0o100 else 0o600)

    def _open(self, rel, mode, size, mtime):
        if self.f is not None:
            raise CacheError("%s started before the previous file ended" % rel)
        if size < 0:
            raise CacheError("refusing a size of %r for %r" % (size, rel))
        full = self._path(rel)
        self.f = os.fdopen(self._create(full, mode), "wb")
        self.f_offset = 0
        self.path = full
        self.mtime = mtime if rel.endswith(".py") else None     # (only a source's time is checked)
        self.hashing = not is_bytecode(rel)
        if self.hashing:
            self.hasher.file(rel, mode, size)
            self.content.append(rel)
        self.left = size
        self.size += size
        self.count += 1

    def _close(self):
        if self.f is not None:
            self.f.close()
        self.f = None
        if isinstance(self.mtime, (int, float)):
            os.utime(self.path, (self.mtime, self.mtime))

    def finish(self):
        """Check the hash and rename the entry into place.  Returns (its path, an fd that holds it
        in use, or None).  Where an entry of that name is there already: that one if it is intact
        (another program put it in place first); if it is damaged, it is replaced, unless another
        program holds it: then this one stays where it was written, a copy of this connection's
        own (held by its directory's lock, as a download is; removed as an abandoned one once no
        program holds it)."""
        if self.f is not None:
            raise CacheError("the transfer ended inside a file")
        got = self.hasher.hexdigest()
        if got != self.digest:
            raise CacheError("what arrived hashes to %s, not %s (a file changed while it was sent?)"
                             % (got[:12], self.digest[:12]))
        info = dict(self.info, size=self.size, files=self.count, created=time.time(), content=sorted(self.content))
        with open(os.path.join(self.tmp, MANIFEST), "w") as f:
            json.dump(info, f)
        final = os.path.join(self.root, self.digest)
        for _ in range(100):
            try:
                os.rename(self.tmp, final)
                self._unlock()
                return final, None
            except OSError:
                pass            # an entry of that name is there: another program's, or a damaged one
            if not os.path.lexists(final):
                continue        # (removed meanwhile)
            state, got = _open_entry(final, self.digest)
            if state == INTACT:
                self.abort()
                return final, got
            if state == BUSY:
                time.sleep(0.01)        # (another program is removing it: it goes in a moment)
            elif state == FOREIGN:
                _note("replacing entry %s: %s", final, got)
                _trash(self.root, final)
            elif not _replace(self.root, final, got):
                lock, self.lock = self.lock, None
                return self.tmp, lock
        raise CacheError("could not put the entry in place as %s: it kept changing" % final)

    def abort(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        _remove(self.tmp)
        self._unlock()

    def _unlock(self):
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


class Store:
    """The cache as one connection's agent uses it."""

    def __init__(self, root=None):
        self.chosen = root is not None     # (None: where cache_root() says, chosen again if taken meanwhile)
        self.root = root or cache_root()
        self.verified = {}      # digest -> path: checked by this connection, in use by it
        self.incoming = {}      # digest -> Incoming
        self.held = {}          # digest -> fd holding a shared lock on the entry's manifest (in use)

    def _ensure_root(self):
        self._usable_root(make=True)

    def _usable_root(self, make):
        """Check the root (made first if ``make``); one chosen by ``cache_root`` that another
        account took meanwhile (the spare one in /tmp, made first or after a tmp cleaner removed
        ours) is chosen again: a private one, never theirs."""
        for again in (False, True):
            try:
                if make:
                    _makedirs(self.root)
                self._check_root()
                return
            except CacheError:
                if self.chosen or again:
                    raise
                self.root = cache_root()

    def _check_root(self):
        """The root must be a real directory (not a link) of this account, private, in a
        directory that only its owner (this account or root) can change, or a sticky one such
        as /tmp: another account that could write there could swap an entry's files after
        they were checked, or the whole cache."""
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise CacheError("%s is not a directory of this account" % self.root)
        parent = os.path.dirname(os.path.abspath(self.root))
        up = os.stat(parent)
        if up.st_uid not in (0, os.getuid()) or (up.st_mode & stat.S_IWOTH and not up.st_mode & stat.S_ISVTX):
            raise CacheError("%s is in %s, which another account can change (its owner, or writable by all "
                             "without the sticky bit)" % (self.root, parent))
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.root, 0o700)

    def lookup(self, digest):
        """The entry's path if it is here and intact (held for this connection from before its
        check); None if it must be fetched.  A damaged entry is removed, unless another program
        holds it (``_replace``); one that another program is removing is left to it."""
        if not is_digest(digest):
            raise CacheError("%r is not an entry name" % (digest,))
        path = self.verified.get(digest)
        if path is None:
            try:
                self._usable_root(make=False)
            except FileNotFoundError:
                return None
            path = os.path.join(self.root, digest)
            if not os.path.isdir(path):
                return None
            state, got = _open_entry(path, digest)
            if state == FOREIGN:        # (a link, or another account's: never ours)
                _note("replacing entry %s: %s", path, got)
                _trash(self.root, path)
            elif state == DAMAGED:
                _replace(self.root, path, got)
            if state != INTACT:
                return None
            self._keep(digest, got)
            self.verified[digest] = path
        self._hold(digest, path)
        _touch(path)
        return path

    def _hold(self, digest, path):
        if digest not in self.held:
            fd = _hold(os.path.join(path, MANIFEST))
            if fd is not None:
                self.held[digest] = fd

    def _keep(self, digest, fd):
        """Hold ``digest`` by ``fd`` (a lock taken already; None or -1: none)."""
        if fd is None or fd < 0:
            return
        if digest in self.held:
            os.close(fd)
        else:
            self.held[digest] = fd

    def begin(self, digest, info):
        self._ensure_root()
        self.incoming[digest] = Incoming(self.root, digest, info)

    def add(self, digest, parts, blob, compressed):
        self.incoming[digest].add(parts, blob, compressed)

    def finish(self, digest, cap):
        inc = self.incoming.pop(digest)
        try:
            path, fd = inc.finish()
        except BaseException:
            inc.abort()
            raise
        self._keep(digest, fd)
        self.verified[digest] = path
        self._hold(digest, path)
        _touch(path)
        evict(self.root, cap, keep=set(self.verified))
        return path

    def abort(self, digest):
        inc = self.incoming.pop(digest, None)
        if inc is not None:
            inc.abort()

    def close(self):
        for digest in list(self.incoming):
            self.abort(digest)
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()


def _lock(target, how, missing):
    """An fd holding a ``how`` flock on ``target``; ``missing`` when it cannot be opened, None
    when someone else's lock is in the way."""
    try:
        fd = os.open(target, os.O_RDONLY)
    except OSError:
        return missing
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _hold(target):
    """A shared lock on ``target`` (an entry's manifest, a download's directory), held by the
    returned fd for as long as it is open: "in use".  None if it cannot be taken."""
    return _lock(target, fcntl.LOCK_SH, None)


def _claim(target):
    """An fd with an exclusive lock on ``target``, to hold while it is removed (-1 when there
    is nothing to lock); None when someone holds a lock on it: it is in use."""
    return _lock(target, fcntl.LOCK_EX, -1)


def _release(fd):
    if fd is not None and fd >= 0:
        os.close(fd)


def _touch(path):
    try:
        os.utime(os.path.join(path, MANIFEST))
    except OSError:
        pass


def entries(root=None):
    """What the cache holds: one dict per entry (its manifest, plus hash and last use)."""
    root = root or cache_root()
    out = []  # type: list[dict]
    if not _listable(root):
        return out      # (a link, or another account's directory: not our cache, never listed as ours)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for name in names:
        path = os.path.join(root, name)
        if not is_digest(name) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, MANIFEST)) as f:
                info = json.load(f)
            used = os.stat(os.path.join(path, MANIFEST)).st_mtime
        except (OSError, ValueError):
            info, used = {}, os.stat(path).st_mtime
        info = info if isinstance(info, dict) else {}
        info.pop("content", None)       # (the list of its files: for its check, not for listing)
        info.update(hash=name, path=path, used=used)
        out.append(info)
    return out


def evict(root, cap, keep=()):
    """Remove least recently used entries until the cache holds at most ``cap`` bytes, and
    temporary directories left behind by writers that died.  Entries in use stay, even over
    the cap: this connection's (``keep``), those a live agent holds a lock on, and those
    used in the last RECENT seconds (another program may be importing from them)."""
    now = time.time()
    for name in os.listdir(root):
        if name.startswith((".tmp-", ".trash-")):
            path = os.path.join(root, name)
            try:
                if now - os.stat(path).st_mtime > STALE:
                    _remove_unlocked(path)
            except OSError:
                pass
    have = entries(root)
    total = sum(int(e.get("size") or 0) for e in have)
    for e in sorted(have, key=lambda e: e["used"]):
        if total <= cap:
            break
        if e["hash"] in keep or now - e["used"] < RECENT:
            continue
        claim = _claim(os.path.join(e["path"], MANIFEST))
        if claim is None:
            continue        # a live connection uses it
        try:
            _trash(root, e["path"])
        finally:
            _release(claim)
        total -= int(e.get("size") or 0)


def _remove_unlocked(path):
    """Remove a temporary directory unless a live download holds it."""
    claim = _claim(path)
    if claim is None:
        return False
    try:
        _remove(path)
    finally:
        _release(claim)
    return True


def clear(root=None, recent=CLEAR_RECENT):
    """Empty the cache, but for what is in use (as the size cap spares it): entries that a
    live connection holds or that were used in the last ``recent`` seconds, and the temporary
    directories of downloads under way (those of writers that died go).  Returns (how many
    entries were removed, what was kept: entry facts and ``why``).  ``recent=0`` is for a
    caller that knows no other program uses the cache (a benchmark's cold start)."""
    root = root or cache_root()
    now = time.time()
    removed = 0
    kept = []  # type: list[dict]
    if not _listable(root):
        return removed, kept    # (a link, or another account's directory: nothing of ours to remove)
    for e in entries(root):
        claim = _claim(os.path.join(e["path"], MANIFEST))
        try:
            if claim is None:
                kept.append(dict(e, why="in use by a running program"))
            elif now - e["used"] < recent:
                kept.append(dict(e, why="used %d s ago: it may be in use (the last %d s count)"
                                 % (now - e["used"], recent)))
            else:
                _trash(root, e["path"])
                removed += 1
        finally:
            _release(claim)
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        path = os.path.join(root, name)
        if name.startswith(".trash-"):
            _remove(path)       # (being deleted already)
        elif name.startswith(".tmp-"):
            try:
                fresh = now - os.stat(path).st_mtime < recent
            except OSError:
                continue
            claim = _claim(path)
            try:
                if claim is None:
                    why = ("a copy in use by a running program (its entry was damaged while another used it)"
                           if os.path.isfile(os.path.join(path, MANIFEST)) else "a download under way")
                elif fresh:     # (a writer that takes no lock: an older remoteproc)
                    why = "written in the last %d s: maybe a download under way" % recent
                else:
                    _remove(path)
                    continue
            finally:
                _release(claim)
            kept.append({"hash": name[len(".tmp-"):].split("-")[0], "path": path, "name": None, "why": why})
    return removed, kept


def report(conn, wipe=False):
    """Target of ``remoteproc cache HOST``: send back the entries (after clearing them, if asked:
    ``removed`` is how many went, ``kept`` what stayed because it is in use, each with ``why``)."""
    removed, kept = clear() if wipe else (None, [])
    conn.send({"root": cache_root(), "entries": entries(), "removed": removed, "kept": kept})
    conn.close()


def _libc():
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")     # 'glibc 2.36'
    except (AttributeError, ValueError, OSError):
        text = None
    if text and " " in text:
        family, version = text.split(" ", 1)
        return [family, version]
    import glob

    for loader in sorted(glob.glob("/lib/ld-musl-*.so.1")):
        import subprocess

        try:
            said = subprocess.run([loader], capture_output=True, timeout=5).stderr
        except (OSError, subprocess.SubprocessError):
            said = b""
        for line in said.decode("ascii", "replace").splitlines():
            if line.startswith("Version "):
                return ["musl", line.split()[1]]
        return ["musl", None]
    return [None, None]


def abi():
    """What a compiled package must match to load here (sent in the agent's hello)."""
    import importlib.machinery

    return {
        "implementation": sys.implementation.name,
        "version": list(sys.version_info[:2]),
        "python": list(sys.version_info[:3]),     # (Requires-Python is checked against it)
        "suffixes": list(importlib.machinery.EXTENSION_SUFFIXES),
        "machine": os.uname().machine,
        "system": sys.platform,
        "libc": _libc(),
        "cache_tag": sys.implementation.cache_tag,
        "magic": _magic(),
        "managed": _externally_managed(),
        # (a virtual environment's pip refuses --user: its site is the one to install into)
        "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
    }


def _externally_managed():
    """Does this Python refuse ``pip install`` (``--user`` too): PEP 668's marker file beside its
    standard library (Debian 12, Ubuntu 23.04, Arch, Alpine ... mark their python3 so), outside a
    virtual environment?  The fixes our errors give then install into a virtual environment."""
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        return False
    return os.path.isfile(os.path.join(os.path.dirname(os.__file__), "EXTERNALLY-MANAGED"))


def _magic():
    """The bytecode magic number of this interpreter (hex), without importing importlib.util."""
    try:
        from importlib._bootstrap_external import MAGIC_NUMBER
    except ImportError:
        return None
    return MAGIC_NUMBER.hex()
