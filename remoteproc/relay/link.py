"""The local I/O loop for one host connection (runs in the relay process).

One ``Link`` per host connection: it owns the channel of the resident agent (an
``AgentChannel``, see ``channel.py``: it does not know which transport carries it)
and, in its own thread, moves bytes between the parent's Connection ends (and its
stdout/stderr) and that channel, frame by frame, with the same stream engine the
agent uses.  It reports each process's pid and exit status to the parent over a
per-process status socket, which doubles as the process's sentinel.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import selectors
import signal
import socket
import threading
import time
from collections import deque
from typing import Callable, Optional

from .. import bootstrap, distributions, modules, pkgtransfer
from ..agent import frames, mux, pkgcache, poller
from ..agent.child import METADATA_FILES, METADATA_LISTING, METADATA_PREFIX
from ..agent.endpoint import FrameEndpoint
from ..agent.waker import Waker
from ..errors import CONNECTION_LOST, ConnectionLostError, ProtocolError, RemoteProcessError, describe
from ..ssh import openssh
from ..ssh.target import Target
from . import ipc
from .channel import AgentChannel, AgentOpener, ChannelLost

log = logging.getLogger("remoteproc.relay")

SEND_PIECE = 1 << 20
# Take all the channel holds at once: paramiko's buffer moves what is left after every
# partial read (an 8 MiB window read in 1 MiB pieces copied up to 7 MiB per piece).
RECV_ALL = 1 << 24
RECV_SCRATCH = 1 << 20  # what one read of a pipe channel takes at most (the pipe's size)
PUMP_LOW = 2 << 20      # a package transfer adds frames while less than this waits to go out
#: The agent's requests (imports, package fetches) are answered while less than this waits to go
#: out, and at most ASKED_MAX wait for that: a host that asks without reading (a compromised one)
#: cannot make the relay hold its answers (each up to a 16 MiB package) without bound.
ANSWERS_HELD = 32 << 20
ASKED_MAX = 10000
#: the largest control frame the relay takes from the agent: its messages are small (the hello,
#: read before the frames begin, has a bound of its own); a header claiming 4 GiB is refused
MAX_CONTROL = 1 << 20
STDERR_LOGGED = 64 << 10    # what one look at the channel's stderr logs of it, at most
#: a link idle this long first proves it is alive (a ping's answer) before starts go on it:
#: after a network blip, a connection that died unseen fails the start that finds it, where a
#: new connection works; a start that a lost link never sent moves to a new link instead
PROVE_AFTER = 2.0
#: ssh's last words when the server closes the connection (through a jump host, the jump's ``ssh -W``
#: may add its own: its write of a goodbye to the ssh that had gone first)
_CLOSED_BY_HOST = re.compile(r"(Connection to \S+ closed by remote host\.?|client_loop: send disconnect: "
                             r"Broken pipe)\s*$")
#: ssh's debug lines (``LogLevel DEBUG3`` in the user's config, ``-v`` in an ssh wrapper) and what it says
#: only from ``LogLevel VERBOSE`` on: logged at DEBUG
_SSH_DEBUG = openssh.CHATTER
#: while messages flow, the loop's timers (keepalive, ping, idle) and the ssh stderr it logs are
#: looked at once per TICK, not after every wake-up: a message's hop is then one wait, one read
#: and one write, with no clock reads or bookkeeping between them
TICK = 0.05


class RemoteChild:
    """One remote process as the relay sees it."""

    __slots__ = ("id", "status", "receiver", "pid", "code", "error", "delivered", "streams", "payload", "signalled",
                 "err_tail")

    def __init__(self, child_id: int, status_sock: socket.socket) -> None:
        self.id = child_id
        self.status = status_sock
        self.receiver = ipc.Receiver(status_sock)
        self.pid: Optional[int] = None
        self.code: Optional[int] = None
        self.error: Optional[tuple[str, str]] = None    # (exception class name, message) for the parent
        self.delivered = False
        self.streams: list[mux.Stream] = []
        self.payload: Optional[mux.Stream] = None   # a big start payload, streamed from its file
        self.signalled = False      # the parent sent it a signal (terminate(), kill())
        # The last of what it wrote on stderr (``mux.TAIL``), on its way to the user's: a child
        # that failed (a pool worker that could not start) is explained by its exit report too,
        # not only on a stderr that pytest, cron or a logging setup may have taken.
        self.err_tail = bytearray()


def only_copy(user_pid: int, fd: int) -> bool:
    """Whether the user's process (the relay's parent) has closed its copy of the socket ``fd``,
    as a program does with the child's end of a Pipe after ``start()``: then ours is the last.
    False where /proc cannot tell (not Linux), or when the fd is a copy of the user's still."""
    if not os.path.isdir("/proc/self/fd"):
        return False
    try:
        name = "socket:[%d]" % os.fstat(fd).st_ino
        entries = os.listdir("/proc/%d/fd" % user_pid)
    except FileNotFoundError:
        return True         # (the user's process is gone: nobody else holds it)
    except OSError:
        return False
    for entry in entries:
        try:
            if os.readlink("/proc/%d/fd/%s" % (user_pid, entry)) == name:
                return False
        except OSError:
            continue
    return True


class Link:
    """One host connection: resident agent channel plus the relay loop, in a thread.

    ``opener`` reaches the host (the transport); ``on_finish(link)`` is called from the
    link's thread once it takes no more work; ``move(request, status, fds)`` takes a start this
    link accepted but never sent (to a new link).  ``start()`` starts the thread.
    """

    packages: Optional[pkgtransfer.PackageServer] = None    # the host's package cache, after the hello

    def __init__(self, target: Target, opener: AgentOpener, on_finish: Callable[["Link"], None],
                 move: Optional[Callable[[dict, socket.socket, list], None]] = None) -> None:
        self.target = target
        self.opener = opener
        self.on_finish = on_finish
        self.move = move
        self.held: list = []        # starts waiting for the idle link's proof of life (PROVE_AFTER)
        self.held_since = 0.0
        self.display = target.display
        #: the agent's last words about itself on stderr ("remoteproc: the agent ..."): why it went
        self.last_words = ""
        #: an ssh debug line not yet complete when its stderr was last read (transport='openssh')
        self._debug_tail = ""
        self.sel = poller.make()
        self.pending: deque = deque()
        self.lock = threading.Lock()
        self.waker = Waker()
        self.sel.register(self.waker.fileno(), selectors.EVENT_READ, self._on_wake)
        self.children: dict[int, RemoteChild] = {}
        self.next_id = 1
        self.next_sid = 1
        self.endpoint = FrameEndpoint(self.sel, self._write_channel, self.on_frame, self._on_send_failed,
                                      piece=SEND_PIECE, on_stream_drained=self._stream_drained,
                                      on_stream_closed=self._stream_closed, max_control=MAX_CONTROL)
        self.asked: deque = deque()     # the agent's requests not answered yet (ANSWERS_HELD)
        self.mux = self.endpoint.mux
        self.mux.last_copy = functools.partial(only_copy, os.getppid())
        self.scratch = memoryview(bytearray(RECV_SCRATCH))  # reused: see Mux._scratch
        self.chan: Optional[AgentChannel] = None
        self.hello: dict = {}
        self.sys_path: list = []
        self.editable: dict = {}        # projects installed in editable mode (modules.editable_roots)
        #: modules sent to the agent as source, which it keeps for the connection (modules.find)
        self.sent_modules: set[str] = set()
        self.path_state: tuple | None = None    # modules.path_state of the last start's sys.path
        self.lost: RemoteProcessError | None = None
        self.closing = False
        #: the streams of the user's Connections (their other ends are in the user's process), and
        #: whether that process is exiting: then nobody reads them, and the end waits for none
        self.user_ends: set[int] = set()
        self.unread = False
        self.interrupted = False
        self.dead = False
        self.last_heard = time.monotonic()
        self.heard = False          # the channel gave us bytes since the loop last read the clock
        self.last_ping = 0.0
        self.sent_mark = 0          # endpoint.written at the last tick that saw it move
        self.last_sent = time.monotonic()
        self.idle_since = time.monotonic()
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start the link's thread: connect, start the agent, then serve."""
        self.thread = threading.Thread(target=self._run, name="remoteproc-link %s" % self.display, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    # -- requests from the relay's main thread --------------------------------------
    def submit(self, request, status_sock, fds) -> bool:
        """Queue a start request; False if this link is shutting down (open a new one)."""
        with self.lock:
            if self.dead or self.closing:
                return False
            self.pending.append((request, status_sock, fds))
        self.wake()
        return True

    def wake(self) -> None:
        self.waker.wake()

    def interrupt(self) -> None:
        """Pass a Ctrl-C on to every remote child of this link."""
        with self.lock:
            self.interrupted = True
        self.wake()

    def close(self, unread: bool = False) -> None:
        """Ask the loop to end: the agent then kills what it started.  ``unread``: the user's
        process is exiting, so what its Connections would still get is dropped, not flushed."""
        with self.lock:
            self.closing = True
            self.unread = self.unread or unread
        self.wake()

    def drop_pending(self) -> None:
        """The user's process is gone: refuse now the starts this link's thread has not taken
        (each holds the user's stdout and stderr), rather than once a connection still being
        made answers (or times out)."""
        with self.lock:
            self.closing = True
            todo, self.pending = list(self.pending), deque()
        for _request, status_sock, fds in todo:
            ipc.refuse(status_sock, fds, ConnectionLostError("%s: connection closed" % self.display, self.display))
        self.wake()

    # -- the thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            t0 = time.monotonic()
            self.chan, hello, extra = bootstrap.start_agent(self.opener, self.target)
            # (what came on stderr with the hello: the agent's last words may be in it already, when
            # it ran out of memory right after its hello and both arrived before we looked)
            self._note_stderr(hello.pop("stderr", b""))
            self.hello = hello
            # silence counts from the hello: connecting, a jump host and setup= lines may take
            # longer than the keepalive bound (as ssh's ServerAliveInterval starts once it is up)
            self.last_heard = self.idle_since = time.monotonic()
            log.debug("%s: agent %s ready in %.0f ms (Python %s; %s)", self.display, hello.get("pid"),
                      (time.monotonic() - t0) * 1e3, ".".join(map(str, hello.get("python", ()))),
                      self.chan.details())
            cap = self.target.options.get("cache_size", pkgcache.DEFAULT_CAP)
            # (the fixes it suggests run the host's Python as the user reached it: their python= words,
            # after their setup= lines; its bare path may not start without them)
            python = distributions.host_python(hello.get("found"), hello.get("executable"), self.target.setup)
            self.packages = pkgtransfer.PackageServer(self.display, hello.get("abi"), cap, python,
                                                      lambda: self.endpoint.written)
        except RemoteProcessError as exc:
            self._fail_pending(exc)
            self._finish()
            return
        except Exception as exc:  # noqa: BLE001 - anything unforeseen is reported, not swallowed
            log.exception("%s: could not start", self.display)
            self._fail_pending(RemoteProcessError("%s: could not start: %r" % (self.display, exc), self.display))
            self._finish()
            return
        chan = self.chan
        chan.on_writable(self.waker.wake)
        self.endpoint.write = chan.send     # (what _write_channel does, one call less per frame)
        self.endpoint.write_fd = chan.writable_fileno()
        self.endpoint.enable_splice(*chan.pipe_fds())
        self.sel.register(chan.fileno(), selectors.EVENT_READ, self._on_channel)
        # The agent ends its children when it hears nothing from us for longer than this allows:
        # a black-holed link never brings it an end of the channel (see _tick's pings)
        self.send(frames.control({"op": "keepalive", "interval": self.target.keepalive_interval,
                                  "count": self.target.keepalive_count}))
        self.last_sent = time.monotonic()
        try:
            if extra:
                self.endpoint.feed(extra)
            self._loop()
        except frames.FrameError as exc:
            self._lost("the agent broke the protocol (%s)" % exc, ProtocolError)
        except Exception as exc:  # noqa: BLE001
            log.exception("%s: relay failed", self.display)
            self._lost("the relay failed: %r" % (exc,))
        self._finish()

    def _loop(self) -> None:
        endpoint = self.endpoint
        select = self.sel.select
        sending_packages = self.packages.pending if self.packages is not None else bool
        timeout = 0.0
        next_tick = 0.0
        while not self.dead:
            if endpoint.pending or sending_packages():
                self._flush()
            ready = select(timeout)
            if len(ready) > 1:
                endpoint.cork()     # (what this pass sends goes in one write: FrameEndpoint.cork)
            try:
                for key, mask in ready:
                    key.data(mask)
                    if self.dead:
                        return
            finally:
                endpoint.uncork()
            now = time.monotonic()
            if ready and now < next_tick and not self.closing:
                # A message's hop: the timers are looked at once a TICK, and the next wait lasts
                # at most a TICK, so that none of them is ever late by more than that.
                timeout = TICK
                continue
            next_tick = now + TICK
            if not self._tick(now):
                return
            timeout = self._timeout(now)

    def _timeout(self, now: float) -> float:
        """How long the loop may wait for an event: until the next ping, idle close or proof of life."""
        timeout = self.target.keepalive_interval / 2
        if not self.children and not self.mux.streams and not self.pending and not self.held:
            timeout = min(timeout, max(TICK, self.idle_since + self.target.idle_timeout - now))
        if self.held:
            timeout = min(timeout, max(TICK, self.held_since + self._prove_within() - now))
        return timeout

    def _tick(self, now: float) -> bool:
        """The loop's timers and the ssh stderr it logs; False when the link is to end."""
        interval = self.target.keepalive_interval
        if self.heard:
            self.heard = False
            self.last_heard = now
        self._drain_stderr()
        if self.held and now - self.held_since > self._prove_within():
            # (an idle link, so nothing runs on it: its starts go to a new one)
            self._silent()
            self._lost("no answer to a ping within %gs" % self._prove_within())
            return False
        if now - self.last_heard > interval * (self.target.keepalive_count + 1):
            self._silent()
            self._lost("no answer from the host for %.0fs (keepalive)%s" % (now - self.last_heard,
                                                                           self._keepalive_hint()))
            return False
        if self.endpoint.written != self.sent_mark:
            self.sent_mark = self.endpoint.written
            self.last_sent = now
        if now - self.last_ping >= interval and (now - self.last_heard >= interval
                                                 or now - self.last_sent >= interval):
            # a silent host is asked for an answer; a host we have said nothing to for the
            # interval hears from us (the agent's own keepalive: see supervisor._keepalive)
            self.last_ping = now
            self.send(frames.control({"op": "ping", "t": now}))
        if self.closing:
            return False    # asked to close (the user's process is gone, or idle): the agent cleans up
        if self.children or self.mux.streams or self.pending or self.held:
            self.idle_since = now
        elif now - self.idle_since > self.target.idle_timeout:
            with self.lock:
                if not self.pending:
                    self.closing = True
            if self.closing:
                log.debug("%s: idle for %.0fs, closing", self.display, self.target.idle_timeout)
                return False
        return True

    # -- the channel ------------------------------------------------------------------
    def send(self, *parts) -> None:
        """Frames for the agent (dropped once the link is lost or closing)."""
        self.endpoint.send(*parts)

    def _write_channel(self, view: memoryview) -> int:
        assert self.chan is not None
        return self.chan.send(view)     # (0: nothing fits now: the channel wakes us when something does)

    def _on_send_failed(self, exc: OSError) -> None:
        if isinstance(exc, ChannelLost) and not exc.ended:
            self._lost(str(exc))
        elif isinstance(exc, (ChannelLost, BrokenPipeError, ConnectionResetError)) and self.chan is not None:
            self._lost(self._why_ended())   # the other end is gone: say who (the agent exited, ssh killed, ...)
        else:
            self._lost("sending failed: %s" % describe(exc))

    def _flush(self) -> None:
        """Write what waits; while a package transfer runs, keep the output topped up with its
        frames, as fast as the channel takes them (and no faster: other streams go between)."""
        while True:
            self.endpoint.flush()
            if self.asked:
                self._answer()
            if self.dead or self.endpoint.stopped or self.endpoint.pending or not self._sending_packages():
                return      # the channel is full (it wakes us when it is not), or all is sent
            while len(self.endpoint.out) < PUMP_LOW:
                piece = self.packages.next_frame() if self.packages is not None else None
                if piece is None:
                    break
                self.endpoint.out += piece

    def _sending_packages(self) -> bool:
        return self.packages is not None and self.packages.pending()

    def _on_channel(self, mask) -> None:
        chan = self.chan
        assert chan is not None
        n = self._take(chan)
        if n == 0:
            self._lost(self._why_ended())
            return
        if n:
            self.heard = True       # (also mid-frame: a big frame on a slow link); the loop reads the clock

    def _take(self, chan: AgentChannel) -> Optional[int]:
        """Bytes taken from the channel and fed to the endpoint; 0 at its end, None: none now."""
        fd = self.endpoint.pull_fd
        if fd is not None:      # a pipe (see AgentChannel.pipe_fds): the endpoint reads it itself
            try:
                return self.endpoint.pull(fd, self.scratch)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return 0
        # One recv takes all the channel holds (RECV_ALL); data arriving later makes its
        # fileno readable again, and the selector brings us back.
        data = chan.recv(RECV_ALL)
        if data:
            self.endpoint.feed(data)
        return None if data is None else len(data)

    def _why_ended(self) -> str:
        """Why the agent's channel ended, with the agent's last words if it left some."""
        assert self.chan is not None
        why = self.chan.describe_loss()     # (first: it waits for the exit, and with it all of stderr)
        if "not responding" in why:     # (ssh's own keepalive: "Timeout, server H not responding.")
            why += self._keepalive_hint()
        self._drain_stderr(final=True)
        if self.last_words:
            why += "; before it went, the agent said: " + self.last_words
        return why

    def _drain_stderr(self, final: bool = False) -> None:
        """Log what ssh or the agent said on stderr since the last look; ``final``: the channel
        has ended, so a line cut off at the end of this read is all there will be of it."""
        assert self.chan is not None
        self._note_stderr(self.chan.recv_stderr(), final)

    def _note_stderr(self, said: bytes, final: bool = False) -> None:
        """Log what came on the channel's stderr, and keep the agent's last words from it (at most
        its last STDERR_LOGGED bytes a look: a flood is one line saying how much was left out)."""
        if len(said) > STDERR_LOGGED:
            said = b"[%d bytes left out] " % (len(said) - STDERR_LOGGED) + said[-STDERR_LOGGED:]
        text = said.decode("utf-8", "replace") if said else ""
        if self.target.transport == "openssh" and (text or self._debug_tail):
            text = self._without_debug(text, final)
        text = text.rstrip()
        if text:
            # ssh's word that the server closed a connection nothing of ours used any more (the
            # host's sshd restarted, a test server stopped) is no warning: with paramiko that
            # end is silent too.  With processes on it, it is the loss, and said as one.
            idle = not self.children and not self.pending and not self.held
            quiet = idle and all(_CLOSED_BY_HOST.match(line) for line in text.splitlines())
            log.log(logging.INFO if quiet else logging.WARNING, "%s: %s", self.display, text)
            for line in text.splitlines():
                if line.startswith("remoteproc: the agent "):   # (agent/supervisor.py main)
                    self.last_words = line[len("remoteproc: "):][:1000]

    def _without_debug(self, text: str, final: bool) -> str:
        """``text`` without ssh's debug lines, which go to the log at DEBUG: a config's ``LogLevel DEBUG3``
        made every connection log a warning of hundreds of lines, and more while data flowed.  A debug
        line that one read of stderr cut in two waits for its end (the next read, or the last)."""
        text, self._debug_tail = self._debug_tail + text, ""
        lines = text.splitlines(keepends=True)
        last = lines[-1] if lines and not final and not lines[-1].endswith("\n") else ""
        if last and (_SSH_DEBUG.match(last) or (len(last) < 8 and _SSH_DEBUG.match(last + "debug1: "[len(last):]))):
            self._debug_tail = lines.pop()      # (a start of "debug1: " too short to tell is kept as well)
        debug = [line for line in lines if _SSH_DEBUG.match(line)]
        if debug:
            log.debug("%s: ssh: %s", self.display, "".join(debug).rstrip())
        return "".join(line for line in lines if not _SSH_DEBUG.match(line))

    def _on_wake(self, mask) -> None:
        self.waker.clear()
        with self.lock:
            todo, self.pending = list(self.pending), deque()
            interrupted, self.interrupted = self.interrupted, False
        for request, status_sock, fds in todo:
            if self.held or (self.move is not None and not request.get("moved") and not self.children
                             and not self.mux.streams and time.monotonic() - self.idle_since > PROVE_AFTER):
                self._hold(request, status_sock, fds)
            else:
                self._start(request, status_sock, fds)
        if interrupted:
            for child in self.children.values():
                if child.code is None:
                    self.send(frames.control({"op": "signal", "id": child.id, "sig": int(signal.SIGINT),
                                              "group": True}))     # (as a terminal's Ctrl-C: the child's group)
        if self.endpoint.pending or self._sending_packages():
            self._flush()

    def _hold(self, request, status_sock, fds) -> None:
        """Keep a start until the link answers a ping (the first held one sends it)."""
        if not self.held:
            self.last_ping = self.held_since = time.monotonic()
            self.send(frames.control({"op": "ping", "t": self.last_ping}))
        self.held.append((request, status_sock, fds))

    def _keepalive_hint(self) -> str:
        """What a silent link means and what to do about it, for a keepalive's verdict."""
        return (": the network path to the host is down or stalled (keepalive_interval=%g, keepalive_count=%d); "
                "check it, or raise keepalive_interval or keepalive_count (ssh_config: ServerAliveInterval, "
                "ServerAliveCountMax) to outlast longer outages" % (self.target.keepalive_interval,
                                                                   self.target.keepalive_count))

    def _prove_within(self) -> float:
        """How long a held start waits for the ping's answer: the connect timeout (a new
        connection would take as long), and never longer than the keepalive bound."""
        return min(self.target.connect_timeout,
                   self.target.keepalive_interval * (self.target.keepalive_count + 1))

    # -- processes ---------------------------------------------------------------------
    def _start(self, request, status_sock, fds) -> None:
        mode = self.hello.get("mode", "same")
        if request.get("mode", "same") != mode:
            # pickled for another Python than this host runs: the user's process pickles again
            try:
                ipc.send(status_sock, ("mode", mode))
            except OSError:
                pass
            status_sock.close()
            for fd in fds:
                os.close(fd)
            return
        child = RemoteChild(self.next_id, status_sock)
        self.next_id += 1
        self.children[child.id] = child
        status_sock.setblocking(False)
        self.sel.register(status_sock.fileno(), selectors.EVENT_READ, lambda mask, c=child: self._on_status(c))
        payload_fd = fds.pop() if request.get("streamed") is not None else None
        conn_fds, out_fd, err_fd = fds[:-2], fds[-2], fds[-1]
        wire = []
        for fd, (kind, child_reads, child_writes) in zip(conn_fds, request["streams"]):
            sid = self._sid()
            if kind == "socket" and child_writes:
                mux.widen_send_buffer(fd)       # the parent's recv() finds a whole message at once
            child.streams.append(self.mux.add(sid, fd, reading=child_reads, writing=child_writes, owner=child,
                                            shared=True))
            self.user_ends.add(sid)
            wire.append([sid, kind, child_reads, child_writes])
        out_sid, err_sid = self._sid(), self._sid()
        child.streams.append(self.mux.add(out_sid, out_fd, reading=False, writing=True, owner=child, shared=True))
        child.streams.append(self.mux.add(err_sid, err_fd, reading=False, writing=True, owner=child, shared=True))
        child.streams[-1].tail = child.err_tail
        msg = {"op": "start", "id": child.id, "streams": wire, "stdout": out_sid, "stderr": err_sid,
               "tty": bool(request.get("tty")), "host": self.display}
        if request.get("cwd") is not None:
            msg["cwd"] = request["cwd"]
        if request.get("env"):
            msg["env"] = request["env"]
        if request.get("path"):
            self.sys_path = list(request["path"])
        if isinstance(request.get("editable"), dict):
            self.editable = dict(request["editable"])
        state = modules.path_state(self.sys_path, self.editable)
        if state != self.path_state:
            if self.path_state is not None:
                msg["recheck"] = True   # (the agent forgets what was found nowhere: it may be there now)
            self.path_state = state
        if payload_fd is None:
            self.send(frames.control(msg, request["payload"]))
            return
        # A big payload follows the start as a stream of its own, with the credit of any
        # other: the agent hands it to the child through a pipe (docs/how-it-works.md).
        sid = self._sid()
        msg["payload"] = {"sid": sid, "size": request["streamed"]}
        self.send(frames.control(msg))
        child.payload = self.mux.add(sid, payload_fd, reading=True, writing=False, owner=child, shared=True)

    def _sid(self) -> int:
        sid = self.next_sid
        self.next_sid += 1
        return sid

    def on_frame(self, ftype, sid, value, payload) -> None:
        self.last_heard = time.monotonic()
        if ftype != frames.CONTROL:
            self.mux.on_frame(ftype, sid, value)
            return
        msg, _blob = frames.parse_control(payload)
        op = msg["op"]
        if op == "pong":
            held, self.held = self.held, []
            for request, status_sock, fds in held:      # alive: they go on this link, in order
                self._start(request, status_sock, fds)
            return
        if op == "alive":
            return      # (the agent hears us and we heard it: a big message to it is on its way)
        if op == "import" or (op == "fetch" and self.packages is not None):
            if len(self.asked) >= ASKED_MAX:
                raise frames.FrameError("%d requests wait for answers the agent does not read" % len(self.asked))
            self.asked.append(msg)
            self._answer()
            return
        child_id = msg.get("id")
        child = self.children.get(child_id) if isinstance(child_id, int) else None
        if child is None:
            raise frames.FrameError("%s for unknown process %r" % (op, msg.get("id")))
        if op == "started":
            child.pid = int(msg["pid"])
            self._report(child, ("started", child.pid, self.hello.get("mode", "same"), self.hello.get("found"),
                                 self.hello.get("executable")))
        elif op == "exited":
            child.code = int(msg["code"])
            # A child the parent signalled (terminate(), kill(): it may have given up reading) has
            # its exit reported at once, as a local one is gone at once, not behind output the parent
            # may never read; what it sent still follows, in order.
            self._deliver(child, force=child.signalled)
        elif op == "error":
            child.code = CONNECTION_LOST
            child.error = error = ("BootstrapError", "%s: %s" % (self.display, msg.get("message")))
            self._report(child, ("error",) + error)
            self._forget(child, abort_streams=True)
        else:
            raise frames.FrameError("unknown control operation %r" % op)

    def _answer(self) -> None:
        """Answer the agent's requests, in order, while less than ANSWERS_HELD waits to go out
        (``_flush`` answers the rest as the channel takes it)."""
        while self.asked and len(self.endpoint.out) < ANSWERS_HELD and not self.dead:
            msg = self.asked.popleft()
            if msg["op"] == "import":
                self._serve_module(msg.get("name"))
            elif self.packages is not None:
                self.send(self.packages.fetch(msg.get("hash")) or b"")

    def _serve_module(self, name) -> None:
        """Module forwarding: the agent lacks ``name``; answer from the user's sys.path."""
        if not isinstance(name, str):
            raise frames.FrameError("import request without a module name")
        if name.startswith(METADATA_PREFIX):
            self._serve_metadata(name)
            return
        mods: dict | None
        try:
            if self.hello.get("mode") == "spawn" and modules.from_stdlib(name, self.sys_path):
                # the host's Python has no such module in its own standard library (tomllib on
                # 3.10, imp on 3.12): as multiprocessing's spawn under that Python, none is found
                log.debug("%s: not forwarding %s: a module of this Python's standard library", self.display,
                          name)
                mods = {name: None}
            else:
                mods = (self.packages.answer(name, self.sys_path, self.editable, self.sent_modules)
                        if self.packages is not None else None)
            if mods is None:
                mods = modules.find(name, self.sys_path, self.display, self.editable, self.sent_modules)
            self.sent_modules.update(n for n, e in mods.items() if isinstance(e, dict) and "src" in e)
        except Exception as exc:  # noqa: BLE001 - an unreadable file must not kill the link
            mods = {name: {"error": "cannot forward %r to %s: %s" % (name, self.display, exc)}}
        log.debug("%s: forwarding %s (%d modules)", self.display, name, len(mods))
        self.send(frames.control({"op": "modules", "name": name, "modules": mods}))

    def _serve_metadata(self, key: str) -> None:
        """importlib.metadata in a child: the distribution ``key`` names (after METADATA_PREFIX,
        in canonical form) is not on the host.  The answer is None when we have none (or the host
        could not load it); the entry of its package cache (``dist``, as for an import) when it goes
        there, so its own dist-info lands with it; else its dist-info's files (``info``), a pure
        distribution's, whose modules come from memory.  ``METADATA_LISTING``: the distributions
        on the user's sys.path, for a listing (``entry_points()``, ``distributions()``); after
        ``METADATA_FILES``, the files of one listed there, from memory (reading a listed
        distribution's METADATA sends no package to the host's cache)."""
        files_only = key.startswith(METADATA_FILES)
        name = key[len(METADATA_FILES if files_only else METADATA_PREFIX):]
        entry: dict | None = None
        try:
            if key == METADATA_LISTING:
                abi = self.packages.abi if self.packages is not None else None
                entry = {"dists": distributions.listing(self.sys_path, abi,
                                                        bool(self.packages is None or self.packages.cap))}
            elif 0 < len(name) <= 256 and name.replace("_", "a").isalnum() and name.isascii():
                entry = self._metadata_entry(name) if not files_only else self._metadata_files(name)
        except Exception as exc:  # noqa: BLE001 - an unreadable file must not kill the link
            log.debug("%s: no metadata of %s: %s", self.display, name, exc)
            entry = None
        log.debug("%s: metadata of %s: %s", self.display, name or "every distribution",
                  "none" if entry is None else "from memory" if "dist" not in entry else "through the cache")
        self.send(frames.control({"op": "modules", "name": key, "modules": {key: entry}}))

    def _metadata_files(self, name: str) -> dict | None:
        """The dist-info (or egg-info) files of a distribution a listing named (``_serve_metadata``)."""
        found = distributions.find_info(name, self.sys_path)
        return {"info": distributions.info_files(*found), "site": found[0]} if found is not None else None

    def _metadata_entry(self, name: str) -> dict | None:
        found = distributions.find_info(name, self.sys_path)
        if found is None:
            return None
        site, info = found
        egg = info.endswith(".egg-info")
        for top in distributions.top_names(site, info):
            unit = distributions.locate(top, self.sys_path, self.editable)
            if unit is None or unit.name != top:
                continue
            if distributions.installed_editable(site, info, unit, self.editable):
                break           # (installed in editable mode: its dist-info is where pip put it, apart)
            if (unit.info, unit.site) != ((None if egg else info), site):
                # (that name is another distribution's here: not this one's to describe; an egg-info
                # has no RECORD, the package beside it with no dist-info of its own is its own)
                return None
            mods = self.packages.answer(top, self.sys_path, self.editable) if self.packages is not None else None
            if mods is not None:
                got = mods.get(top) or {}
                if "dist" in got and not egg:
                    return {"dist": got["dist"]}
                if "dist" not in got and "src" not in got:
                    return None     # (refused there: no metadata either; "src": from memory, its
                    #                  compiled modules left out, pkgtransfer.PackageServer._without_compiled)
            break
        abi = (self.packages.abi if self.packages is not None else None) or {}
        try:
            distributions.check_python(distributions.Unit(name, site, "", info=info), abi, self.display)
        except distributions.Unsendable:
            return None
        return {"info": distributions.info_files(site, info), "site": site}

    def _report(self, child: RemoteChild, msg) -> None:
        try:
            child.status.setblocking(True)
            ipc.send(child.status, msg)
            child.status.setblocking(False)
        except OSError:
            pass        # the parent dropped this process object; nobody is listening

    def _stream_drained(self, s) -> None:
        child = s.owner
        if child is not None and child.code is not None and not child.delivered:
            self._deliver(child)

    def _stream_closed(self, s) -> None:
        self.user_ends.discard(s.sid)
        child = s.owner
        if child is not None and s in child.streams:
            child.streams.remove(s)

    def _deliver(self, child: RemoteChild, force: bool = False) -> None:
        """Report the exit once everything the child wrote is in the parent's sockets."""
        if child.delivered:
            return
        if not force and any(s.outq for s in child.streams):
            return
        child.delivered = True
        said = bytes(child.err_tail[-mux.TAIL:]).decode("utf-8", "replace") if child.code else ""
        self._report(child, ("exited", child.code, child.error) + ((said,) if said else ()))
        self._forget(child)

    def _forget(self, child: RemoteChild, abort_streams: bool = False) -> None:
        self.children.pop(child.id, None)
        try:
            self.sel.unregister(child.status.fileno())
        except (KeyError, ValueError):
            pass
        child.status.close()
        if child.payload is not None:
            self.mux.close(child.payload)       # (what the child did not read is of no use now)
        if abort_streams:
            for s in list(child.streams):
                self.mux.close(s)

    def _on_status(self, child: RemoteChild) -> None:
        try:
            msgs, eof = child.receiver.recv_ready()
        except OSError:
            msgs, eof = [], True
        for (msg, _fds) in msgs:
            if msg[0] != "signal":
                continue
            child.signalled = True
            if child.code is None:
                self.send(frames.control({"op": "signal", "id": child.id, "sig": int(msg[1])}))
            elif not child.delivered:
                # It exited, and its exit waits behind output the parent has not read: a local child
                # would still be blocked in that send, and the signal would end the wait.
                self._deliver(child, force=True)
                return
        if eof:
            # The parent closed (or lost) this process object; a started process runs on, unobserved.
            # One whose start() never returned (interrupted, or the parent died meanwhile) has no
            # handle anywhere to join or stop it: it must not run.
            if child.pid is None and child.code is None:
                self.send(frames.control({"op": "signal", "id": child.id, "sig": int(signal.SIGKILL)}))
            try:
                self.sel.unregister(child.status.fileno())
            except (KeyError, ValueError):
                pass

    # -- endings -------------------------------------------------------------------------
    def _silent(self) -> None:
        """The agent stopped answering: its connection (shared with other agents) is suspect."""
        if self.chan is not None:
            self.chan.suspect()

    def _lost(self, reason: str, cls=ConnectionLostError) -> None:
        if self.dead:
            return
        self.dead = True
        self.endpoint.stop()
        message = "%s: connection lost: %s" % (self.display, reason)
        self.lost = cls(message, self.display)
        if self.children:
            log.warning("%s", message)
        for s in list(self.mux.streams.values()):
            if s.reading and s.sock is not None and s.fd >= 0:
                _discard_unread(s.sock)     # (recv() then ends with EOFError, never a reset)
        for child in list(self.children.values()):
            if child.code is None:
                child.code = CONNECTION_LOST
                child.error = (cls.__name__, message)
            if child.pid is None:
                self._report(child, ("error",) + (child.error or (cls.__name__, message)))
                self._forget(child, abort_streams=True)
            else:
                self._deliver(child, force=True)
        self.mux.peer_lost()

    def _move_unsent(self) -> None:
        """Starts this link took but never sent (held for its proof of life, or not yet taken
        from ``pending``) go to a new link, once, when this one was lost: the host is not known
        to be down, only this connection is.  A link that never came up, or that was closed
        (idle, or the user's process went away), fails them instead (with why)."""
        with self.lock:
            unsent, self.held = self.held + list(self.pending), []
            self.pending.clear()
        for request, status_sock, fds in unsent:
            if self.move is not None and self.hello and self.lost is not None and not request.get("moved"):
                log.info("%s: a start moves to a new connection (%s)", self.display,
                         self.lost or "this one closed")
                request["moved"] = True
                self.move(request, status_sock, fds)
            else:
                ipc.refuse(status_sock, fds, self.lost or ConnectionLostError(
                    "%s: connection closed" % self.display, self.display))

    def _fail_pending(self, exc: RemoteProcessError) -> None:
        with self.lock:
            self.dead = True
            todo, self.pending = list(self.pending), deque()
        for _request, status_sock, fds in todo:
            ipc.refuse(status_sock, fds, exc)

    def _finish(self) -> None:
        """Flush what the parent still has to get (bounded), close everything, leave the relay."""
        with self.lock:
            self.dead = True
        self.endpoint.stop()        # nothing more reaches the agent: it cleans up when the channel closes
        self.on_finish(self)
        deadline = time.monotonic() + 5.0
        while self.mux.streams and time.monotonic() < deadline:
            # (a child's stdout and stderr go on: the terminal, or a pipe's reader, outlives the program)
            pending = [s for s in self.mux.streams.values() if s.outq and not (self.unread and s.sid in self.user_ends)]
            if not pending:
                break
            for key, mask in self.sel.select(0.05):
                if key.fd != self.waker.fileno() and (self.chan is None or key.fd != self.chan.fileno()):
                    key.data(mask)
        for s in list(self.mux.streams.values()):
            if s.reading and s.sock is not None and s.fd >= 0:
                _discard_unread(s.sock)
            self.mux.close(s)
        for child in list(self.children.values()):
            if not child.delivered:
                child.code = CONNECTION_LOST if child.code is None else child.code
                child.error = child.error or ("ConnectionLostError", "%s: connection closed" % self.display)
                self._deliver(child, force=True)
        self._move_unsent()
        self._fail_pending(self.lost or ConnectionLostError("%s: connection closed" % self.display, self.display))
        if self.chan is not None:
            self.chan.close()       # (and with it, the transport lets go of the connection)
        self.sel.close()
        self.waker.close()


def _discard_unread(sock: socket.socket) -> None:
    """Drop what the user sent on a Connection of a lost process and nobody will read, before
    its socket is closed: Linux resets the peer of a Unix socket closed with unread data, and
    the user's ``recv()`` would raise ``ConnectionResetError`` instead of ``EOFError``. Reading
    is shut down first (the remote child is gone, so no one reads this end any more), so
    nothing can arrive between the last read and the close."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        return
    while True:
        try:
            if not sock.recv(1 << 16, socket.MSG_DONTWAIT):
                return
        except OSError:
            return
