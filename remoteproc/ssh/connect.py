"""Connecting: TCP, ProxyCommand or a jump host's channel, the paramiko Transport, and the connection object."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable

from ..errors import (
    TURNED_AWAY,
    TURNED_AWAY_FIX,
    ConnectError,
    RemoteProcessError,
    describe,
    jump_open_failed,
    proxy_command_ended,
)
from . import probe
from .auth import authenticate
from .hostkeys import check_host_key, prefer_known_types, read_known_hosts
from .target import Target, config_read, home_hint, timeout_said, typo_hint

WINDOW_SIZE = 8 << 20
MAX_PACKET = 128 << 10
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)     # (Linux only)


def _transport_factory(sock: Any, **kwargs: Any) -> Any:
    """A paramiko client Transport with our window, packet size and cipher preference."""
    import paramiko

    t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                           default_max_packet_size=MAX_PACKET, **kwargs)
    opts = t.get_security_options()
    ciphers = list(opts.ciphers)
    first = [c for c in PREFERRED_CIPHERS if c in ciphers]
    opts.ciphers = tuple(first + [c for c in ciphers if c not in first])
    return t


class TCPSocket(socket.socket):
    """The TCP socket under a connection; once it carries a jump host's channels, it
    acknowledges what it reads at once (``quick_acks``).

    A jump host's sshd forwards the target's bytes in SSH packets, often two in a row, and sets
    no TCP_NODELAY on a connection without a terminal: the second waits (Nagle) for our ACK of
    the first, which Linux delays up to 40 ms while it expects to answer soon. A Queue round trip
    through a jump host stalled so about once in twenty. Linux clears TCP_QUICKACK by itself,
    hence once per read. (Direct connections never stalled so: they are left as they are.)"""

    quick_acks = False

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if self.quick_acks:
            try:
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[arg-type]
            except OSError:
                pass
        return data


def _ack_quickly(jump: SSHConnection) -> None:
    """The TCP socket at the bottom of ``jump``'s chain acknowledges what it reads at once."""
    hop: SSHConnection | None = jump
    while hop is not None:
        sock = getattr(hop.transport, "sock", None)
        if isinstance(sock, TCPSocket) and _QUICKACK is not None:
            sock.quick_acks = True
        hop = hop.jump


def _tcp(target: Target) -> socket.socket:
    family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}.get(target.address_family, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(target.hostname, target.port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        config = config_read(target.options)
        raise ConnectError("%s: cannot resolve host name %r (%s). Check the name%s%s.%s"
                           % (target.display, target.hostname, exc.strerror, typo_hint(target),
                              "" if config is None else " or its HostName in %s" % config,
                              home_hint(target.options)),
                           target.display) from None
    deadline = time.monotonic() + target.connect_timeout
    error: OSError | None = None
    for af, kind, proto, _name, address in infos:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = TCPSocket(af, kind, proto)
        sock.settimeout(remaining)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if error is None or isinstance(error, socket.timeout):
        raise ConnectError("%s: connection timed out after %gs%s. Check that the host is up and the "
                           "port is right, or raise connect_timeout=." % (target.display, target.connect_timeout,
                                                                         timeout_said(target)), target.display)
    raise ConnectError("%s: cannot connect to port %d: %s. Check that sshd runs there and listens on that "
                       "port, and that the host is reachable." % (target.display, target.port,
                                                                  error.strerror or error), target.display)


def _proxy_command(target: Target, command: str) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """Run ProxyCommand with the user's shell, as ssh does; talk SSH over its stdin/stdout."""
    ours, theirs = socket.socketpair()
    shell = os.environ.get("SHELL") or "/bin/sh"
    try:
        proc = subprocess.Popen([shell, "-c", "exec " + command], stdin=theirs.fileno(), stdout=theirs.fileno(),
                                close_fds=True, start_new_session=True)
    except OSError as exc:
        ours.close()
        raise ConnectError("%s: cannot run ProxyCommand %r: %s" % (target.display, command, exc),
                           target.display) from None
    finally:
        theirs.close()
    return ours, proc


def _failed(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a ProxyCommand whose stream closed before the banner failed by itself (``nc`` or
    ``ssh -W`` whose server hung up end with status 0; a command not found, or an ``ssh`` that
    could not reach its jump host, with another)."""
    try:
        return proc.wait(1.0) != 0
    except subprocess.TimeoutExpired:
        return False


#: seconds a ProxyCommand gets to end by itself once its connection is closed (see ``_stop``)
PROXY_GRACE = 1.0


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 0.0) -> None:
    """End a ProxyCommand: wait ``grace`` seconds for it to end by itself, then terminate, then
    kill if it lingers.

    Why the grace: the goodbye ``_close_transport`` sent may still be in the command's buffers; a
    ``ssh bastion nc %h %p`` killed at once drops it, and its ``nc``, which does not end when its
    input does, then stays on the bastion with the target's sshd session, as long as the target lives.
    """
    if proc is None:
        return
    try:
        if proc.poll() is None and grace > 0:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.terminate()
            proc.wait(2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except OSError:
        pass
    # What it started and left in its session's group (the ``ssh -W`` of an ``ssh -J`` in it): the
    # relay ignores SIGHUP, and so do they, so an ``ssh`` ending does not end them (relay/process.py)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except OSError:
        pass        # (none left)


class SSHConnection:
    """One authenticated SSH connection (a paramiko Transport) and what it depends on."""

    def __init__(self, target: Target, transport: Any, jump: SSHConnection | None = None,
                 proc: subprocess.Popen[bytes] | None = None, owns_jump: bool = False) -> None:
        self.target = target
        self.transport = transport
        self.jump = jump
        self.proc = proc
        self.owns_jump = owns_jump
        self.closed = False
        #: which of its key's connections this is in the relay's pool (0: the shared one; ``pool.py``)
        self.slot = 0
        #: the relay's agents on it (open session channels) and those being opened (``paramiko_channel.py``)
        self.sessions = 0
        self.opening = 0
        #: when one of those sessions last closed (monotonic): sshd counts it until the agent has exited
        self.session_closed_at = 0.0
        #: an agent on it stopped answering: it is asked for an answer before it is used again (``pool.py``)
        self.suspect = False

    @property
    def active(self) -> bool:
        return not self.closed and self.transport.is_active()

    def answers(self, timeout: float) -> bool:
        """Whether the server answers a request on this connection within ``timeout`` seconds (a
        ``keepalive@openssh.com`` global request, which sshd refuses: any reply will do).  A TCP
        connection the network dropped unseen stays "active" for paramiko until a write fails."""
        if not self.active:
            return False
        done = threading.Event()

        def ask() -> None:
            try:
                self.transport.global_request("keepalive@openssh.com", wait=True)
            except Exception:       # (the transport ended meanwhile: no answer)
                return
            done.set()

        # (paramiko's wait has no bound: the asking thread ends when the reply comes or the transport does)
        threading.Thread(target=ask, name="remoteproc-ssh-probe", daemon=True).start()
        return done.wait(timeout) and self.transport.is_active()

    def close(self) -> None:
        """Close the transport (and its thread), the ProxyCommand, and a jump this connection owns."""
        if self.closed:
            return
        self.closed = True
        _close_transport(self.transport)
        _stop(self.proc, PROXY_GRACE)
        if self.owns_jump and self.jump is not None:
            self.jump.close()


def _say_goodbye(transport: Any) -> None:
    """Send SSH_MSG_DISCONNECT, as ``ssh`` does at its end, so the server ends the connection now.

    Why: without it a server learns of our leaving only from the stream's end, which a
    ProxyCommand such as ``ssh bastion nc %h %p`` never passes on (``nc`` does not end when its
    input does): the target's sshd session and the bastion's ``nc`` would stay. Sent from a thread
    of its own, waited for 1 s at most: a stuck link must not hold up the close.
    """
    if not transport.is_active():
        return

    def send() -> None:
        try:
            from paramiko.common import cMSG_DISCONNECT
            from paramiko.message import Message

            m = Message()
            m.add_byte(cMSG_DISCONNECT)
            m.add_int(11)                       # SSH_DISCONNECT_BY_APPLICATION
            m.add_string("disconnected by user")
            m.add_string("")
            transport._send_message(m)
        except Exception:   # pragma: no cover - a link already gone: nothing to tell
            pass

    sender = threading.Thread(target=send, name="remoteproc-ssh-goodbye", daemon=True)
    sender.start()
    sender.join(1.0)


def _close_transport(transport: Any) -> None:
    try:
        _say_goodbye(transport)
        transport.close()
        if transport.is_alive():
            transport.join(5)
    except Exception:   # pragma: no cover - closing never matters more than the error
        pass


def connect(target: Target, jump: SSHConnection | None = None) -> SSHConnection:
    """Open, verify and authenticate a connection to ``target``.

    ``jump`` is the open connection to ``target.jump``; when it is None and the
    target needs one, the jump chain is opened here and closed with the result.
    """
    owns_jump = False
    if target.jump is not None and jump is None:
        jump = open_jump(target, connect)
        owns_jump = True
    proc = None
    transport = None
    try:
        sock, proc = _open_socket(target, jump)
        try:
            transport = _transport_factory(sock)
        except BaseException:
            sock.close()
            raise
        _handshake(transport, target, proc)
        check_host_key(target, transport.get_remote_server_key())
        authenticate(transport, target)
    except BaseException:
        if transport is not None:
            _close_transport(transport)
        _stop(proc)
        if owns_jump and jump is not None:
            jump.close()
        raise
    return SSHConnection(target, transport, jump, proc, owns_jump)


def open_jump(target: Target, opener: Callable[[Target], SSHConnection]) -> SSHConnection:
    """``opener(target.jump)``; its failure says that it happened at the jump host, not at the
    host the user asked for (a jump's own messages name only the jump)."""
    assert target.jump is not None
    try:
        return opener(target.jump)
    except RemoteProcessError as exc:
        error = type(exc)("%s: at the jump host: %s" % (target.display, exc), target.display)
        if isinstance(exc, ConnectError) and isinstance(error, ConnectError):
            error.turned_away = exc.turned_away
        raise error from exc


def _open_socket(target: Target, jump: SSHConnection | None) -> tuple[Any, subprocess.Popen[bytes] | None]:
    """The byte stream SSH runs over: a jump host's channel, a ProxyCommand's stdin/stdout, or TCP."""
    if target.jump is not None:
        assert jump is not None, "connect() opens the jump connection first"
        return _jump_channel(target, jump), None
    if target.proxy_command:
        return _proxy_command(target, target.proxy_command)
    return _tcp(target), None


def _jump_channel(target: Target, jump: SSHConnection) -> Any:
    """A direct-tcpip channel from the jump host to the target (``ssh -W host:port``)."""
    import paramiko

    try:
        channel = jump.transport.open_channel("direct-tcpip", (target.hostname, target.port),
                                              ("127.0.0.1", 0), timeout=target.connect_timeout)
    except paramiko.ChannelException as exc:
        to = "%s:%d" % (target.hostname, target.port)
        raise ConnectError("%s: %s." % (target.display, jump_open_failed(jump.target.display, to, exc.text)),
                           target.display) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise ConnectError("%s: the jump host %s could not connect to %s:%d within %gs: %s" % (
            target.display, jump.target.display, target.hostname, target.port, target.connect_timeout,
            describe(exc)), target.display) from None
    _ack_quickly(jump)
    return channel


def _handshake(transport: Any, target: Target, proc: subprocess.Popen[bytes] | None) -> None:
    """Key exchange within the connect timeout, offering the host key types known_hosts has first
    (``proc``: the ProxyCommand the connection runs through)."""
    proxied = proc is not None
    transport.banner_timeout = transport.handshake_timeout = target.connect_timeout
    transport.auth_timeout = target.connect_timeout
    files = list(target.known_hosts) + list(target.global_known_hosts)
    prefer_known_types(transport, [e for e in read_known_hosts(files) if e.matches(target.host_key_name)])
    done = threading.Event()
    started = time.monotonic()
    transport.start_client(event=done)
    done.wait(target.connect_timeout + 1)
    if transport.is_active() and done.is_set() and transport.initial_kex_done:
        return
    error = transport.get_exception()
    if (error is None and not done.is_set()) or (
            isinstance(error, EOFError) and time.monotonic() - started >= target.connect_timeout):
        # (paramiko's handshake timeout is a bare EOFError, as is a hang-up: the clock tells them apart)
        reason = "no answer within %gs%s" % (target.connect_timeout, timeout_said(target))
    elif error is None or isinstance(error, EOFError) and not str(error):
        reason = "the server closed the connection"
    else:
        reason = str(error) or type(error).__name__
    if proc is not None and not reason.startswith("no answer") and _failed(proc):
        # a ProxyCommand that ended by itself, whatever paramiko made of its end (a hang-up before the
        # banner, or a closed stream); its own words went to this program's stderr, as ssh leaves them
        raise ConnectError("%s: SSH handshake failed: %s (exit status %d; its own words are on this program's "
                           "stderr)" % (target.display, proxy_command_ended(target.proxy_command or "", target.hostname,
                                                                            target.port), proc.returncode),
                           target.display)
    if reason.startswith("Error reading SSH protocol banner"):
        # (paramiko's words for both a silence and a hang-up before the banner: the clock tells them apart)
        if time.monotonic() - started >= target.connect_timeout * 0.9:
            reason = "no SSH banner within %gs (%s)%s" % (target.connect_timeout, reason, timeout_said(target))
        else:
            error = ConnectError("%s: SSH handshake failed: the server closed the connection before its SSH banner "
                                 "(%s): %s. %s. Check that an SSH server answers on port %d%s."
                                 % (target.display, reason, TURNED_AWAY, TURNED_AWAY_FIX, target.port,
                                    " and that ProxyCommand works" if proxied else ""), target.display)
            error.turned_away = True
            raise probe.unless_not_ssh(target, error)
    if "Incompatible ssh" in reason:
        # an SSH server answered, but it allows only algorithms that paramiko lacks (chacha20-poly1305
        # alone, sntrup761 key exchange alone, ...): the user's own ssh has them
        raise ConnectError("%s: SSH handshake failed: %s: the server allows only algorithms that paramiko does "
                           "not have. Fix: pass transport='openssh' (your own ssh has them), or ask the host's "
                           "administrator to allow one that paramiko has." % (target.display, reason), target.display)
    raise ConnectError("%s: SSH handshake failed: %s. Check that an SSH server answers on port %d%s."
                       % (target.display, reason, target.port,
                          " and that ProxyCommand works" if proxied else ""), target.display)
