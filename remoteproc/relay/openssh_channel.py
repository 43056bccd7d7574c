"""The agent's channel over the user's own ``ssh``: one ``ssh`` process per connection.

``ssh`` runs the agent's command with its standard input and output as the channel
(pipes of our own, non-blocking) and its standard error read by a small thread, so
that ``ssh`` never blocks on a full stderr pipe.  One ``ssh`` process carries every
process of its host, as one paramiko connection does: the link multiplexes them.
Closing the channel closes ``ssh``'s input and then ends ``ssh``: the remote agent sees
its channel close and kills what it started, exactly as with paramiko.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
import subprocess
import threading
import time
from typing import Callable, Optional

from ..errors import AGENT_GONE, ENDED, ConnectError, RemoteProcessError, jump_lost
from ..ssh import openssh, probe
from ..ssh.target import Target
from .channel import AgentChannel, AgentOpener, ChannelLost

#: what ``ssh`` says when it lost its connection to the server it names
_LOST_AT = re.compile(r"^(?:Connection to (\S+) closed|Timeout, server (\S+) not responding)")

log = logging.getLogger("remoteproc")

STDERR_KEEP = 64 << 10      # what we keep of ssh's stderr between two reads
CLOSE_GRACE = 1.0           # after closing ssh's input, how long it may take to end by itself


PIPE_SIZE = 1 << 20         # bytes a pipe to or from ssh holds (Linux's default is 64 KiB)


def _prepare(fd: int) -> int:
    """Non-blocking, and (where Linux allows) a 1 MiB pipe: one read or write moves up to 16 times
    as much, which is most of the download throughput of this transport.  Returns what the pipe
    holds (64 KiB where its size cannot be read)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except OSError:
        pass        # (over /proc/sys/fs/pipe-max-size for an unprivileged user, or not Linux)
    try:
        return max(fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032)), 1 << 16)
    except OSError:
        return 1 << 16


class OpenSSHChannel(AgentChannel):
    """An ``ssh`` child process running the agent's command."""

    def __init__(self, proc: subprocess.Popen, target: Target, start_ms: float, own_group: bool = False) -> None:
        self.proc = proc
        self.target = target
        self.display = target.display
        self.start_ms = start_ms
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.write_fd = proc.stdin.fileno()
        self.read_fd = proc.stdout.fileno()
        _prepare(self.write_fd)
        # One read never returns more than the pipe holds: a buffer of that size, reused, takes all
        # of it, where os.read(fd, limit) would allocate (mmap) and free limit bytes per call.
        self._scratch = memoryview(bytearray(_prepare(self.read_fd)))
        self._err = bytearray()             # not yet taken by recv_stderr
        self._said = bytearray()            # all of it (the last 64 KiB), for the failure's words
        self._err_lock = threading.Lock()
        self._closed = False
        #: ssh was started in a session of its own (no prompts), so its process group is its own
        self.own_group = own_group
        self._reader = threading.Thread(target=self._read_stderr, name="remoteproc-ssh-stderr", daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        """ssh's stderr until its end; this thread closes it (see ``close``)."""
        stderr = self.proc.stderr
        assert stderr is not None
        fd = stderr.fileno()
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    return
                if not data:
                    return
                if self.target.says_login:
                    if not self.logged_in and openssh.logged_in(self.target, data.decode("utf-8", "replace")):
                        self.logged_in = True
                    if self.target.says_login == "ours":
                        data = openssh.drop_verbose(data)
                with self._err_lock:
                    self._err += data
                    del self._err[:-STDERR_KEEP]
                    self._said += data
                    del self._said[:-STDERR_KEEP]
        finally:
            stderr.close()

    def fileno(self) -> int:
        return self.read_fd

    def writable_fileno(self) -> Optional[int]:
        return self.write_fd

    def pipe_fds(self) -> tuple[Optional[int], Optional[int]]:
        return self.read_fd, self.write_fd

    def on_writable(self, callback: Callable[[], None]) -> None:
        pass    # (the link watches writable_fileno())

    def recv(self, limit: int) -> Optional[bytes]:
        view = self._scratch[:limit]
        try:
            n = os.readv(self.read_fd, [view])
        except BlockingIOError:
            return None
        except OSError:
            return b""
        return bytes(view[:n])

    def recv_stderr(self) -> bytes:
        if not self._err:
            return b""      # (the common case, without the lock: a stale answer is caught next time)
        with self._err_lock:
            got, self._err = bytes(self._err), bytearray()
        return got

    def send(self, data: memoryview) -> int:
        if self._closed:
            raise ChannelLost("the channel closed")
        try:
            return os.write(self.write_fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            # (ssh exited, or closed its input: describe_loss says which, and why)
            raise ChannelLost("ssh stopped reading its input (%s)" % (exc.strerror or exc), True) from None

    def exit_status(self) -> Optional[int]:
        code = self.proc.poll()
        if code is None:
            return None
        return -1 if code < 0 or code == 255 else code

    def said(self) -> str:
        """Everything ssh wrote on stderr (up to the last 64 KiB), once it has ended, but its debug lines."""
        self._reader.join(2.0)
        with self._err_lock:
            return openssh.ssh_words(self._said.decode("utf-8", "replace")).strip()

    def startup_error(self, status: Optional[int]) -> Optional[RemoteProcessError]:
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            return None
        error = openssh.failure(self.target, self.proc.returncode, self.said())
        if isinstance(error, ConnectError) and error.turned_away:
            return probe.unless_not_ssh(self.target, error)
        return error

    def describe_loss(self) -> str:
        try:
            code = self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            return "ssh closed the agent's output but did not exit"
        self._reader.join(2.0)      # (ssh has exited: the rest of its stderr is for recv_stderr now)
        if code < 0:
            return ("the ssh process (pid %d) of this connection was killed by signal %d (on this machine); every "
                    "process of this connection on the host ended with it. Start them again: the next start() "
                    "runs a new ssh" % (self.proc.pid, -code))
        if code == 255:
            last = self.said().splitlines()
            jump = self._jump_lost(last)
            if jump is not None:
                return jump
            if last:
                return "ssh lost the connection (%s; %s)" % (last[-1], ENDED)
            # ssh says nothing when the remote command dies by a signal (it exits 255 then), nor as
            # a client of a master connection (ControlPath) that ended
            if self.target.control_path:
                return ("ssh exited with status 255 without a word: the master connection it shared (ControlPath "
                        "%s) ended (its ssh process on this machine was killed or exited), or %s"
                        % (self.target.control_path, AGENT_GONE))
            return AGENT_GONE + ", ssh exited with status 255"
        return "the remote agent exited with status %d" % code

    def _terminate(self) -> None:
        """SIGTERM ssh and, when it runs in a session of its own, its process group: an ``ssh`` still
        connecting dies at once, leaving the ``ssh -W`` of its jump hosts (or its ProxyCommand)
        running until their own connect timeout, after the program's end."""
        if self.own_group:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                return
            except OSError:
                pass
        self.proc.terminate()

    def _end_hops(self) -> None:
        """End what ``ssh`` left in its process group: the ``ssh -W`` of its jump hosts (or its
        ProxyCommand).  ssh ends them itself with SIGHUP, but the relay has SIGHUP ignored, and so
        have they (relay/process.py says why), so that a hop that lost its own connection still
        says so; this SIGTERM is the end that SIGHUP was, once ``ssh`` itself has ended."""
        if self.own_group:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass        # (none left: the group is gone)

    def _jump_lost(self, lines: list[str]) -> Optional[str]:
        """Through jump hosts, a jump's ``ssh -W`` that lost its own connection says so first
        (``Connection to BASTION closed by remote host.``, ``Timeout, server BASTION not
        responding.``) before ssh's last words (``client_loop: send disconnect: Broken pipe``),
        which alone blamed the target."""
        if not self.target.proxy_jump:
            return None
        for line in lines:
            found = _LOST_AT.search(line)
            if found and (found.group(1) or found.group(2)).strip("[]") != self.target.hostname:
                return jump_lost("(%s)" % ",".join(self.target.proxy_jump), line.strip())
        return None

    def details(self) -> str:
        return "through ssh (pid %d), started in %.0f ms" % (self.proc.pid, self.start_ms)

    def close_input(self) -> None:
        """Close ssh's input: the agent sees its channel close and cleans up, and ssh then ends."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def close(self, grace: float = CLOSE_GRACE) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_input()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._end_hops()
        # stdout only: stderr is its reader thread's to close, when it has read to the end. Closed
        # here, its number could go to the relay's next pipe or socket while that thread, between
        # two reads, still reads from it (and takes what another channel or a start was sent).
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class OpenSSHOpener(AgentOpener):
    """Runs the user's ``ssh`` for each connection; ``ssh`` itself connects and authenticates."""

    def __init__(self) -> None:
        self.channels: list[OpenSSHChannel] = []
        self.lock = threading.Lock()

    def open(self, target: Target, command: Callable[[], str]) -> AgentChannel:
        argv = [openssh.ssh_binary(target.display), *target.ssh_args, command()]
        prompt = bool(target.options.get("allow_prompt"))
        t0 = time.monotonic()
        try:
            # Without prompts, ssh gets a session of its own: Ctrl-C on the user's terminal reaches the
            # relay (which passes it on to the remote children), not ssh, which would drop the connection.
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    bufsize=0, start_new_session=not prompt, close_fds=True)
        except OSError as exc:      # (gone since ssh_binary() found it, or not a program: ENOEXEC)
            raise openssh.cannot_run(target.display, argv[0], exc) from None
        log.debug("%s: ssh started (pid %d): %s", target.display, proc.pid, " ".join(argv[:-1]))
        chan = OpenSSHChannel(proc, target, (time.monotonic() - t0) * 1e3, own_group=not prompt)
        with self.lock:
            self.channels = [c for c in self.channels if not c._closed] + [chan]
        return chan

    def close(self) -> None:
        with self.lock:
            channels, self.channels = self.channels, []
        # Every ssh's input closes first, then each gets what is left of one grace period: one after
        # another, eight hosts behind a bastion that did not answer took 8 x CLOSE_GRACE to end (a
        # program interrupted with Ctrl-C while connecting exited 9.7 s later)
        for chan in channels:
            chan.close_input()
        deadline = time.monotonic() + CLOSE_GRACE
        for chan in channels:
            chan.close(max(0.0, deadline - time.monotonic()))
        openssh.remove_configs()
