"""The exception tree: every error remoteproc raises derives from RemoteProcessError.

Each message names the host it concerns and says what to do about it.
"""

from __future__ import annotations

import pickle


class RemoteProcessError(Exception):
    """Base class of every remoteproc error; ``host`` names the host concerned."""

    def __init__(self, message: str, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host

    def __reduce__(self):
        return (type(self), (str(self), self.host))


class ConfigError(RemoteProcessError, ValueError):
    """A host spec, option or ssh_config entry that cannot be used as given."""


class ConnectError(RemoteProcessError):
    """The host could not be reached: unknown name, refused, unreachable or timed out."""

    #: set on an error whose server accepted the TCP connection and closed it before its SSH
    #: banner, as sshd does past its ``MaxStartups`` limit: the relay tries such a connection again
    #: a moment later (``bootstrap.start_agent``); not sent over the wire
    turned_away = False


#: why a server closes a connection before its SSH banner (``ConnectError.turned_away``)
TURNED_AWAY = ("sshd closes a connection at once when more connections than its MaxStartups allows "
               "(default 10) have not logged in yet (many programs, or many hosts behind one jump host with "
               "transport='openssh', connecting at the same moment), or when it refuses the client's address "
               "(hosts.deny, PerSourceMaxStartups, PerSourcePenalties)")
TURNED_AWAY_FIX = "Fix: raise MaxStartups in that host's sshd_config, or start fewer connections at once"


def proxy_command_ended(command: str, hostname: str, port: int) -> str:
    """Why no SSH banner came through a ProxyCommand that ended by itself, and the fix (not a server
    turning the connection away: tried again, it fails again)."""
    return ("the ProxyCommand ended before the server's SSH banner came through it. Fix: run it by hand "
            "(%s): it must connect to %s:%d and print a line starting with SSH-" % (command, hostname, port))


def out_of_files(host: str, exc: BaseException | None = None) -> RemoteProcessError | None:
    """The error for this process running out of open files while it starts a remote process
    on ``host`` (None when ``exc`` is another OSError): each Queue, Lock, Value ... passed to a
    running remote process costs this process one or two fds, each running one (a pool worker)
    about three, where a local one costs none or one.  The limit is the user's to raise: a soft
    limit lifted here would be inherited by every process the program starts."""
    import errno

    if exc is not None and getattr(exc, "errno", None) not in (errno.EMFILE, errno.ENFILE):
        return None
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = "limit %d%s" % (soft, ", the hard limit too" if soft == hard else ", hard limit %d" % hard)
    except (ImportError, OSError, ValueError):     # pragma: no cover - every Unix has it
        limit = "its limit"
    return RemoteProcessError(
        "%s: cannot start a remote process: this process is out of open files (%s): each object (Queue, Lock, "
        "Value, ...) passed to a running remote process costs it one or two, and each running remote process "
        "(a pool worker) about three. Fix: raise the limit (`ulimit -n`, up to the hard limit; or in the program "
        "resource.setrlimit(resource.RLIMIT_NOFILE, ...); LimitNOFILE= for a service, /etc/security/limits.conf "
        "for the hard limit), or run fewer processes at once" % (host, limit), host)


#: what a lost connection means, and what to do: said after the transport's own words
ENDED = ("the host's sshd ended it, or the network to the host failed: a reboot, an sshd restart, a killed "
         "session; every process of this connection there ended with it. Start them again once ssh to the "
         "host connects")


#: the agent's channel closed while its connection lives: the agent (or its session) was killed
AGENT_GONE = ("the remote agent's channel closed (agent killed? by a user, the out-of-memory killer or a job "
              "limit there, or its sshd session was; every process of this connection there ended with it)")


def jump_lost(jump: str, said: str = "") -> str:
    """Why a connection through a jump host was lost when the jump host's own connection went
    first (its sshd ended or restarted, or the network to it failed), and the fix: the jump host,
    not the target, is what to check; every process on a host behind it ends with it."""
    return ("the connection to the jump host %s closed%s (its sshd ended or restarted, or the network to it "
            "failed); every process on a host behind it ended with it. Check the jump host"
            % (jump, " (%s)" % said if said else ""))


def jump_open_failed(jump: str, to: str, reason: str) -> str:
    """Why a jump host did not open the way to the next hop (its sshd's answer to our forwarding
    request, ``reason``), and the fix: a refusal by its own sshd's rules is no matter of the target."""
    if "prohibited" in reason.lower():
        return ("the jump host %s refused to forward to %s (%s): its sshd does not allow it "
                "(AllowTcpForwarding, PermitOpen, or a Match block in its sshd_config, or a restricted key in its "
                "authorized_keys). Fix: ask its administrator to allow forwarding to %s, or reach the host "
                "another way" % (jump, to, reason, to))
    return ("the jump host %s could not connect to %s: %s. Fix: check the address and port, and that sshd runs "
            "there and is reachable from the jump host" % (jump, to, reason))


class AuthenticationError(RemoteProcessError):
    """The SSH server refused every credential that was offered."""


class HostKeyError(RemoteProcessError):
    """The host's key is unknown or has changed, and the policy refuses it."""


class BootstrapError(RemoteProcessError):
    """The remote agent could not be started (no python3, wrong version, ...)."""


class ProtocolError(RemoteProcessError):
    """The other side sent something that is not valid protocol."""


class ConnectionLostError(RemoteProcessError, EOFError):
    """The SSH connection (or the local relay) carrying a remote process went away."""


class PicklingError(RemoteProcessError, TypeError, pickle.PicklingError):
    """The target or its arguments cannot be shipped to the remote host (also a
    ``pickle.PicklingError``, as multiprocessing and concurrent.futures report it)."""


#: ``exitcode`` of a remote process whose connection was lost before it exited
#: (the convention of ``ssh``, which exits with 255 when the connection fails).
CONNECTION_LOST = 255

_BY_NAME = {
    cls.__name__: cls
    for cls in (
        RemoteProcessError, ConfigError, ConnectError, AuthenticationError, HostKeyError,
        BootstrapError, ProtocolError, ConnectionLostError, PicklingError,
    )
}


def from_wire(name: str, message: str, host: str | None) -> RemoteProcessError:
    """Rebuild an error the relay process reported by class name."""
    return _BY_NAME.get(name, RemoteProcessError)(message, host)


def describe(exc: BaseException) -> str:
    """An exception's words for a message, or its class name when it has none
    (paramiko raises bare ``EOFError()``; an exception object is always true)."""
    return str(exc) or type(exc).__name__
