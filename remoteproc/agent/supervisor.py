"""The resident agent: one per SSH connection.

It forks one child per RemoteProcess (so a warm start costs a fork, not an
interpreter start-up), relays the child's Connections and standard streams as
frames on its own stdin/stdout, reports pids and exit statuses, and kills every
child it started when the channel goes away: no orphans.
"""

import errno
import json
import os
import selectors
import signal
import socket
import stat
import sys
import time
import zlib

from . import PROTOCOL_VERSION, fdlimit, frames, grandchild, limits, mux, pkgcache, poller
from .child import METADATA_LISTING, RESET_SIGNALS
from .child import run as run_child
from .endpoint import FrameEndpoint
from .waker import Waker

GRACE = 2.0     # seconds from SIGTERM to SIGKILL when cleaning up
MAX_IMPORT_LINE = 64 << 20      # bytes of one message on a child's import socket


class RemoteChild:
    """One child of the agent."""

    __slots__ = ("id", "pid", "sentinel", "code", "payload_sid", "temps")

    def __init__(self, child_id, pid, sentinel, payload_sid=None, temps=()):
        self.id = child_id
        self.pid = pid
        self.sentinel = sentinel    # write end: its closing tells the child the agent is gone
        self.code = None
        self.payload_sid = payload_sid  # the stream of a big start payload (the child reads it alone)
        self.temps = temps          # temp dirs its env= names (where a killed child's hand-off dir is)


def _log(msg):
    try:
        os.write(2, ("remoteproc agent[%d]: %s\n" % (os.getpid(), msg)).encode("utf-8", "replace"))
    except OSError:
        pass


def _try_grow_pipe(fd):
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


class Supervisor:
    """Serve one frame channel on (fd_in, fd_out) until it ends."""

    def __init__(self, fd_in, fd_out, nofile=None):
        self.fd_in = fd_in
        self.nofile = nofile    # the open-files limit to restore in children (see fdlimit.py)
        self.fd_out = fd_out
        self.sel = poller.make()
        self.endpoint = FrameEndpoint(self.sel, lambda view: os.write(fd_out, view), self.on_frame,
                                      lambda exc: self._stop("the channel's output is closed"), write_fd=fd_out)
        self.mux = self.endpoint.mux
        self.reader = self.endpoint.reader
        self._in_view = memoryview(bytearray(1 << 20))      # reused: see Mux._scratch
        self.modules = {}       # forwarded modules: name -> entry (None: not found there either)
        self.waiting = {}       # module name -> import sockets of children waiting for it
        self.children = {}      # id -> RemoteChild, for children not yet reaped
        #: reaped children whose own children live on in their process group: ended with the channel
        self.left_behind = []
        # the host's package cache, once a package needs it
        self.pkgs = None  # type: pkgcache.Store | None
        self.fetching = {}      # entry hash -> (module names waiting, cache cap) of packages on their way
        self.host = "the remote host"
        self.by_pid = {}
        self.import_socks = {}  # a child's import socket -> [process id, partial request]
        self.running = True
        self.stop_reason = None
        # The keepalive, both ways, once the relay's "keepalive" op says its interval (None
        # before).  The relay sends something at least every ``interval`` while the link lives
        # (a ping when it has nothing else to say), so silence past ``silence`` seconds means the
        # link is gone even though no end of the channel ever comes: a black-holed link (a NAT or
        # firewall that forgot the connection, a route gone) leaves sshd's session open for
        # hours (its ClientAliveInterval is off by default), and every child with it.  And this
        # side says something at least every ``interval`` while bytes come in: the relay's ping
        # waits behind what it sends, which a slow link takes longer than its bound to carry.
        self.silence = None
        self.interval = None
        self.last_heard = time.monotonic()
        self.heard = False          # bytes came in since the loop last read the clock
        self.said_mark = 0          # endpoint.written when the loop last saw it move
        self.last_said = time.monotonic()
        for fd in (fd_in, fd_out):
            os.set_blocking(fd, False)
            _try_grow_pipe(fd)
        self.endpoint.enable_splice(fd_in, fd_out)      # (where they are pipes: see splice.py)
        self.waker = Waker()
        signal.set_wakeup_fd(self.waker.write_fd)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        self.sel.register(fd_in, selectors.EVENT_READ, self._on_input)
        self.sel.register(self.waker.fileno(), selectors.EVENT_READ, self._on_wake)

    # -- output ---------------------------------------------------------------
    def control(self, msg, blob=b""):
        self.endpoint.control(msg, blob)

    # -- input ----------------------------------------------------------------
    def _on_input(self, mask):
        try:
            n = self.endpoint.pull(self.fd_in, self._in_view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if n:
            self.heard = True       # (see _check_silence)
            return
        if not self.reader.idle:
            _log("the channel ended in the middle of a frame")
        self._stop("the channel closed")

    def on_frame(self, ftype, sid, value, payload):
        if ftype != frames.CONTROL:
            self.mux.on_frame(ftype, sid, value)
            return
        msg, blob = frames.parse_control(payload)
        op = msg["op"]
        if op == "start":
            self._start(msg, blob)
        elif op == "signal":
            self._signal(msg)
        elif op == "modules":
            self._modules_arrived(msg)
        elif op in ("pkg", "pkg-end", "pkg-fail"):
            self._package_piece(op, msg, blob)
        elif op == "ping":
            self.control({"op": "pong", "t": msg.get("t")})
        elif op == "keepalive":
            self._keepalive(msg)
        else:
            raise frames.FrameError("unknown control operation %r" % op)

    # -- children -------------------------------------------------------------
    def _start(self, msg, blob):
        child_id, streams, out_sid, err_sid, tty = _parse_start(msg)
        payload_sid = _payload_sid(msg)
        source = blob       # the pickled process: the start's blob, or a pipe's read end
        self.host = str(msg.get("host") or self.host)
        if child_id in self.children:
            raise frames.FrameError("process %d started twice" % child_id)
        cwd = _check_cwd(msg.get("cwd"))
        if cwd is not None and cwd.startswith("!"):
            self._refuse(msg, child_id, cwd[1:])
            return
        if msg.get("recheck"):
            self._forget_missing()
        made = []  # type: list[int]  # every fd created here, closed again on failure
        try:
            theirs, mine = _child_streams(streams, made)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            sen_r, sen_w = os.pipe()
            imp_a, imp_b = socket.socketpair()
            imp_r, imp_w = imp_a.detach(), imp_b.detach()
            made += [out_r, out_w, err_r, err_w, sen_r, sen_w, imp_r, imp_w]
            mine += [(out_sid, out_r, True, False), (err_sid, err_r, True, False)]
            if payload_sid is not None:
                # A big payload streams in after the start: the child reads it from a pipe.
                pay_r, pay_w = os.pipe()
                made += [pay_r, pay_w]
                _try_grow_pipe(pay_w)
                mine.append((payload_sid, pay_w, False, True))
                source = pay_r
            for sid, _fd, _r, _w in mine:
                if sid in self.mux.streams or sid <= self.mux.high_sid:
                    raise frames.FrameError("stream %d reused" % sid)
            close = self._agent_fds() + [fd for _sid, fd, _r, _w in mine] + [sen_w, imp_r]
            pid = _fork()
        except OSError as exc:
            for fd in made:
                os.close(fd)
            self._refuse(msg, child_id, "could not start the child: %s%s" % (
                exc, ": " + limits.hint() if limits.reached(exc) else ""))
            return
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        if pid == 0:    # pragma: no cover - the child never returns (os._exit)
            _enter(cwd, msg.get("env"))
            run_child(source, theirs, out_w, err_w, sen_r, close, tty, imp_w, self.modules,
                      str(msg.get("host") or "the remote host"), self.nofile)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RESET_SIGNALS)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        for fd in list(theirs.values()) + [out_w, err_w, sen_r, imp_w]:
            os.close(fd)
        if isinstance(source, int):
            os.close(source)
        self._adopt(RemoteChild(child_id, pid, sen_w, payload_sid, _temps(cwd, msg.get("env"))), mine, imp_r)

    def _refuse(self, msg, child_id, message):
        """Answer a start with an error.  Frames the relay sent on the start's streams
        before it hears of it are then dropped as late ones, not taken for a protocol error."""
        sids = [sid for sid, _kind, _r, _w in _parse_start(msg)[1]] + [int(msg["stdout"]), int(msg["stderr"])]
        self.mux.high_sid = max([self.mux.high_sid, _payload_sid(msg) or 0] + sids)
        self.control({"op": "error", "id": child_id, "message": message})

    def _agent_fds(self):
        """The agent's own fds: a forked child closes them."""
        close = [self.fd_in, self.fd_out, self.sel.fileno()] + self.waker.fds() + self.endpoint.fds()
        close += list(self.mux.streams_fds())
        close += [p.sentinel for p in self.children.values()]
        close += [sock.fileno() for sock in self.import_socks]
        return close

    def _adopt(self, child, mine, imp_r):
        """A child is forked: serve its import socket and its streams, and say so."""
        imp = socket.socket(fileno=imp_r)
        imp.setblocking(True)
        self.import_socks[imp] = [child.id, b""]
        self.sel.register(imp, selectors.EVENT_READ, lambda mask, sock=imp: self._on_import(sock))
        self.children[child.id] = child
        self.by_pid[child.pid] = child
        for sid, fd, reading, writing in mine:
            self.mux.add(sid, fd, reading=reading, writing=writing, owner=child)
        self.control({"op": "started", "id": child.id, "pid": child.pid})

    # -- module forwarding ----------------------------------------------------
    def _on_import(self, sock):
        state = self.import_socks[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(sock)
            del self.import_socks[sock]
            sock.close()
            return
        state[1] += data
        if len(state[1]) > MAX_IMPORT_LINE:
            _log("a child's module message is over %d bytes; ignoring that child's imports" % MAX_IMPORT_LINE)
            self.sel.unregister(sock)
            del self.import_socks[sock]
            sock.close()
            return
        while b"\n" in state[1]:
            line, state[1] = state[1].split(b"\n", 1)
            try:
                msg = json.loads(line)
                if "compiled" in msg:
                    self._learn(str(msg["compiled"]), msg["code"])
                    continue
                name = str(msg["name"])
            except (ValueError, KeyError, TypeError):
                continue
            if name in self.modules:
                self._answer(sock, name)
            else:
                first = name not in self.waiting
                self.waiting.setdefault(name, []).append(sock)
                if first:
                    self.control({"op": "import", "id": state[0], "name": name})

    def _forget_missing(self):
        """The user's sys.path, or a directory on it, changed since the last start: a module (or
        distribution) found nowhere before may be there now, as a new process of multiprocessing
        would find it.  What was found stays (forwarded code lives as long as the connection); the
        list of the user's distributions goes too (one may have been installed meanwhile)."""
        for name in [n for n, e in self.modules.items() if e is None or n == METADATA_LISTING]:
            del self.modules[name]

    def _learn(self, name, encoded):
        """A child compiled a forwarded module: keep the code for children forked later."""
        import base64
        import marshal
        import types

        entry = self.modules.get(name)
        if entry and "src" in entry and "code" not in entry:
            code = marshal.loads(base64.b64decode(encoded))
            if isinstance(code, types.CodeType):
                entry["code"] = code

    def _answer(self, sock, name):
        top = name.split(".")[0]
        reply = {n: (e and {k: v for k, v in e.items() if k != "code"})
                 for n, e in self.modules.items() if n == name or n.split(".")[0] == top}
        try:
            sock.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass        # that child is gone

    def _modules_arrived(self, msg):
        name = msg.get("name")
        mods = msg.get("modules")
        if not isinstance(name, str) or not isinstance(mods, dict):
            raise frames.FrameError("malformed modules message")
        entry = mods.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("dist"), dict) and self._from_cache(name, mods):
            return      # the package is on its way into the cache
        self._modules_ready(name, mods)

    def _modules_ready(self, name, mods):
        self.modules.update(mods)
        self.modules.setdefault(name, None)
        for sock in self.waiting.pop(name, []):
            if sock in self.import_socks:
                self._answer(sock, name)

    # -- packages through the host's cache (agent/pkgcache.py) -----------------
    def _from_cache(self, name, mods):
        """Point ``name`` at its cache entry; True if the entry must be fetched first."""
        dist = mods[name]["dist"]
        digest = str(dist.get("hash"))
        try:
            if self.pkgs is None:
                self.pkgs = pkgcache.Store()
            path = self.pkgs.lookup(digest)
            if path is None:
                if digest in self.fetching:
                    self.fetching[digest][0].append(name)   # another top-level name of the same one
                else:
                    self.pkgs.begin(digest, {k: dist.get(k) for k in ("name", "version", "top")})
                    self.fetching[digest] = ([name], int(dist.get("cap") or pkgcache.DEFAULT_CAP))
                    self.control({"op": "fetch", "hash": digest})
                return True
            mods[name] = {"path": path}
        except (OSError, ValueError, pkgcache.CacheError) as exc:
            mods[name] = {"error": self._cache_error(name, exc)}
        return False

    def _cache_error(self, name, exc):
        root = self.pkgs.root if self.pkgs is not None else pkgcache.cache_root()
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            fix = "free space there (df -h %s), or put the cache on a larger disk" % root
        else:
            fix = "repair its permissions, or put the cache in a directory of the account's"
        return ("%s: cannot put package %r into the package cache %s: %s. Fix: %s (python='env XDG_CACHE_HOME=DIR "
                "python3' puts it in DIR/remoteproc), or pass cache_size=0 to refuse packages that need files "
                "instead" % (self.host, name, root, exc, fix))

    def _package_piece(self, op, msg, blob):
        digest = msg.get("hash")
        if digest not in self.fetching:
            return      # a transfer this agent gave up on
        names, cap = self.fetching[digest]
        store = self.pkgs
        assert store is not None, "fetching without a cache"
        try:
            if op == "pkg":
                store.add(digest, msg["parts"], blob, bool(msg.get("z")))
                return
            if op == "pkg-fail":
                raise pkgcache.CacheError(str(msg.get("message")))
            entry = {"path": store.finish(digest, cap)}
        except (OSError, ValueError, KeyError, TypeError, zlib.error, pkgcache.CacheError) as exc:
            store.abort(digest)     # a damaged transfer is refused, never used
            entry = {"error": str(exc) if op == "pkg-fail" else self._cache_error(names[0], exc)}
        del self.fetching[digest]
        for name in names:
            self._modules_ready(name, {name: entry})

    def _signal(self, msg):
        child = self.children.get(msg.get("id"))
        sig = msg.get("sig")
        if child is None or not isinstance(sig, int):
            return      # already exited: as multiprocessing, a late signal is a no-op
        try:
            if msg.get("group"):
                # A Ctrl-C reaches the whole foreground process group, locally: the child's own
                # children too (its multiprocessing children, which it joins as it exits).
                _killpg(child.pid, sig)
            else:
                os.kill(child.pid, sig)     # terminate() and kill(): the child alone, as locally
        except (ProcessLookupError, ValueError):
            pass

    def _on_wake(self, mask):
        self.waker.clear()
        self._reap()

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.by_pid.pop(pid, None)
            if child is None:
                continue
            del self.children[child.id]
            child.code = _exitcode(status)
            if _group_lives(pid):       # (a killed child's subprocesses, say: init adopts them)
                self.left_behind = [c for c in self.left_behind if _group_lives(c.pid)] + [child]
            os.close(child.sentinel)
            grandchild.remove_for(pid, child.temps)
            # Whatever the child wrote before it exited goes out before its exit status.
            for s in self.mux.owned_by(child):
                self.mux.drain(s)
            # A start payload the child did not read to its end: nobody else reads that pipe,
            # and with nothing queued for it no write would ever find out (EPIPE).
            payload = self.mux.streams.get(child.payload_sid)
            if payload is not None:
                self.mux.close(payload)
            self.control({"op": "exited", "id": child.id, "code": child.code})

    def _keepalive(self, msg):
        """The relay's keepalive settings: it is silent for at most ``interval`` seconds while the
        link lives; give it ``count + 2`` of them (one more than the relay gives this side, so
        that the relay, which tells the user, is first)."""
        try:
            interval, count = float(msg["interval"]), int(msg["count"])
        except (KeyError, TypeError, ValueError):
            raise frames.FrameError("bad keepalive request %r" % (msg,))
        if not interval > 0 or count < 1:
            raise frames.FrameError("bad keepalive request %r" % (msg,))
        self.interval = interval
        self.silence = interval * (count + 2)
        self.last_heard = self.last_said = time.monotonic()

    def _check_silence(self):
        """Stop when the relay has been silent past ``silence``; say we are here when bytes
        come in and we have said nothing for ``interval``."""
        interval, silence = self.interval, self.silence
        if interval is None or silence is None:
            return
        now = time.monotonic()
        if self.endpoint.written != self.said_mark:
            self.said_mark = self.endpoint.written
            self.last_said = now
        if self.heard:
            self.heard = False
            self.last_heard = now
            if now - self.last_said >= interval:
                self.last_said = now
                self.control({"op": "alive"})
        elif now - self.last_heard > silence:
            _log("no word from the relay for %.0fs (keepalive): the link is lost; ending every child"
                 % (now - self.last_heard))
            self._stop("the link is lost (keepalive)")

    def _on_stop_signal(self, signum, frame):
        self._stop("signal %d" % signum)

    def _stop(self, reason):
        if self.running:
            self.running = False
            self.stop_reason = reason

    # -- main loop and clean-up ----------------------------------------------
    def serve(self):
        try:
            while self.running:
                ready = self.sel.select(None if self.interval is None else self.interval / 2)
                if len(ready) > 1:
                    self.endpoint.cork()    # (what this pass sends goes in one write: FrameEndpoint.cork)
                try:
                    for key, mask in ready:
                        key.data(mask)
                        if not self.running:
                            break
                finally:
                    self.endpoint.uncork()
                if self.running:
                    # (after the events: input that waited while this process was stopped counts)
                    self._check_silence()
        except frames.FrameError as exc:
            _log("protocol error, exiting: %s" % exc)
            self.stop_reason = "protocol error"
        finally:
            self.cleanup()

    def cleanup(self):
        """SIGTERM every child's process group, SIGKILL after GRACE seconds, reap all."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self.pkgs is not None:
            self.pkgs.close()       # unfinished entries: their temporary directories go
        children = list(self.children.values())
        for child in children:
            _killpg(child.pid, signal.SIGTERM)
        # (killpg only: the pid of a reaped child is no longer ours, its group while a member lives)
        left = [c for c in self.left_behind if _group_lives(c.pid, signal.SIGTERM)]
        children += left
        deadline = time.monotonic() + GRACE
        while (self.by_pid or _any_group(children)) and time.monotonic() < deadline:
            self._reap_quietly()
            time.sleep(0.02)
        for pid in list(self.by_pid):
            _killpg(pid, signal.SIGKILL)
        # A child may be gone while its group is not: its own children that ignore SIGTERM.
        for child in children:
            if child.pid not in self.by_pid:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except OSError:
                    pass
        while self.by_pid:
            for pid in list(self.by_pid):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
                self.by_pid.pop(pid, None)
        for child in children:
            grandchild.remove_for(child.pid, child.temps)

    def _reap_quietly(self):
        while self.by_pid:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.by_pid.clear()
                return
            if pid == 0:
                return
            self.by_pid.pop(pid, None)


def _parse_start(msg):
    """A start request's fields, checked: (id, streams, stdout sid, stderr sid, tty)."""
    try:
        child_id = int(msg["id"])
        streams = [(int(sid), str(kind), bool(r), bool(w)) for sid, kind, r, w in msg["streams"]]
        return child_id, streams, int(msg["stdout"]), int(msg["stderr"]), bool(msg.get("tty"))
    except (KeyError, TypeError, ValueError) as exc:
        raise frames.FrameError("malformed start request: %r" % (exc,)) from None


def _payload_sid(msg):
    """The stream a big start payload follows on, or None: it came in the start's blob."""
    payload = msg.get("payload")
    if payload is None:
        return None
    try:
        return int(payload["sid"])
    except (KeyError, TypeError, ValueError) as exc:
        raise frames.FrameError("malformed start payload: %r" % (exc,)) from None


def _child_streams(streams, made):
    """A socketpair or pipe per bridged stream: returns the child's ends by placeholder
    index and ours as (sid, fd, reading, writing); every fd made is added to ``made``."""
    theirs, mine = {}, []
    for index, (sid, kind, child_reads, child_writes) in enumerate(streams):
        if kind == "socket":
            a, b = socket.socketpair()
            fa, fb = a.detach(), b.detach()
            made += [fa, fb]
            if child_reads:
                mux.widen_send_buffer(fa)       # we write what the parent sent
            if child_writes:
                mux.widen_send_buffer(fb)       # the child's sends complete before we read
            mine.append((sid, fa, child_writes, child_reads))
            theirs[index] = fb
        else:
            r, w = os.pipe()
            made += [r, w]
            if child_reads:
                mine.append((sid, w, False, True))
                theirs[index] = r
            else:
                mine.append((sid, r, True, False))
                theirs[index] = w
    return theirs, mine


def _fork():
    """fork() with the signals the child resets blocked: one sent to the child before it
    has reset its handlers would run the agent's handler there and be lost.  The parent
    unblocks them once it is done with the fork."""
    signal.pthread_sigmask(signal.SIG_BLOCK, RESET_SIGNALS)
    try:
        return os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RESET_SIGNALS)
        raise


def _check_cwd(cwd):
    """The child's directory, ``~`` expanded; "!message" if it cannot go there."""
    if cwd is None:
        return None
    path = os.path.expanduser(str(cwd))
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        # (a directory above it that this account cannot enter is EACCES: it may well exist)
        why = {errno.ENOENT: "it does not exist", errno.EACCES: "permission denied (on it or a directory above it)",
               errno.ENOTDIR: "a part of the path is not a directory"}.get(getattr(exc, "errno", None) or 0, str(exc))
        return "!cannot start the process in directory %r: %s" % (cwd, why)
    if not stat.S_ISDIR(st.st_mode):
        return "!cannot start the process in directory %r: it is not a directory" % (cwd,)
    if not os.access(path, os.X_OK):
        return "!cannot start the process in directory %r: permission denied" % (cwd,)
    return path


def _enter(cwd, env):
    """In the forked child, before anything else: its directory and its added variables."""
    if env:
        os.environ.update({str(k): str(v) for k, v in env.items()})
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as exc:
            os.write(2, ("remoteproc: cannot change to directory %r: %s\n" % (cwd, exc)).encode())
            os._exit(2)


def _temps(cwd, env):
    """The temp dirs a child's ``env=`` gives it (``TMPDIR``, ``TEMP``, ``TMP``), as absolute paths."""
    if not env:
        return ()
    here = os.path.join(os.getcwd(), cwd or "")
    return tuple(os.path.join(here, str(env[v])) for v in ("TMPDIR", "TEMP", "TMP") if env.get(v))


def _exitcode(status):
    """``os.waitstatus_to_exitcode`` (Python 3.9+)."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _any_group(children):
    """Whether a process is left in the process group of one of ``children`` (the child or its own).
    Zombies do not count where /proc tells them (Linux): a killed child's children are reaped by
    init, which may take its time, and ``killpg(g, 0)`` counts them until then."""
    groups = {str(child.pid) for child in children}
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        pids = None
    if pids is None:
        for child in children:
            try:
                os.killpg(child.pid, 0)
                return True
            except OSError:
                pass
        return False
    for pid in pids:
        try:
            with open("/proc/%s/stat" % pid, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2].decode() in groups and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _group_lives(pgid, sig=0):
    """Whether the process group ``pgid`` has a member (sending it ``sig``, 0: none)."""
    try:
        os.killpg(pgid, sig)
        return True
    except OSError:
        return False


def _killpg(pid, sig):
    try:
        os.killpg(pid, sig)
    except OSError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def hello(found=""):
    return {
        "implementation": sys.implementation.name,
        "found": found,
        "op": "hello",
        "version": PROTOCOL_VERSION,
        "python": list(sys.version_info[:3]),
        "pid": os.getpid(),
        "platform": sys.platform,
        "executable": sys.executable,
        "cpus": os.cpu_count(),
        "abi": pkgcache.abi(),
    }


def main(fd_in, fd_out, found=""):
    """Run the agent on the given channel fds; returns the process exit status.  Out of
    memory (a low ``ulimit -v``), it says which limit before it goes."""
    try:
        return _main(fd_in, fd_out, found)
    except MemoryError:
        sys.stderr.write("remoteproc: the agent ran out of memory: %s\n" % limits.hint())
        raise


def _main(fd_in, fd_out, found):
    sup = Supervisor(fd_in, fd_out, nofile=fdlimit.raise_fd_limit())
    sup.control(hello(found))
    # Preload what every child needs, so that a fork is all a start costs.
    import multiprocessing.connection  # noqa: F401
    import multiprocessing.context  # noqa: F401
    import multiprocessing.process  # noqa: F401
    import multiprocessing.reduction  # noqa: F401
    import multiprocessing.resource_sharer  # noqa: F401  (child._explain_foreign_handles)
    import multiprocessing.spawn  # noqa: F401  (grandchild.enable wraps it in every child)
    import pickle  # noqa: F401
    import pkgutil  # noqa: F401  (child._list_users_namespace_parts wraps it in every child)
    import threading  # noqa: F401
    import traceback  # noqa: F401

    import cloudpickle  # noqa: F401

    from . import spawn  # noqa: F401  (a spawn-mode child's first import: compiled once, here)

    # What is loaded now lives as long as the agent: keep the garbage collector from
    # touching it, so that forked children do not copy those pages when they collect.
    gc = __import__("gc")
    if hasattr(gc, "freeze"):   # (not in PyPy)
        gc.freeze()
    sup.serve()
    return 0 if sup.stop_reason != "protocol error" else 2
