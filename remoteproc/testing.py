"""A private loopback SSH server for demos and tests.

``LoopbackSSHServer`` starts a throwaway SSH server on 127.0.0.1 that accepts
one freshly generated client key. It prefers a real OpenSSH ``sshd`` (so tests
exercise the same server that production hosts run) and falls back to a small
in-process paramiko server when no ``sshd`` binary is available.

Nothing here touches the machine's own SSH setup: keys, ``authorized_keys``,
``known_hosts``, ``ssh_config`` and the sshd configuration all live in a
temporary directory that ``stop()`` removes.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "LoopbackSSHServer",
    "current_user",
    "ensure_local_user",
    "find_sshd",
]

log = logging.getLogger("remoteproc.testing")

HOST = "127.0.0.1"
READY_TIMEOUT = 10.0
"""Seconds to wait for a freshly started sshd to accept connections."""
STOP_TIMEOUT = 5.0
"""Seconds to wait for a process to exit after SIGTERM before SIGKILL."""
BIND_ATTEMPTS = 5
"""How many ports to try when sshd fails to bind the one we picked."""

_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
_KEY_COMMENT = "remoteproc-testing"
_PRIVSEP_DIR = "/run/sshd"


class _PortInUse(Exception):
    """sshd could not bind the port we chose (someone took it meanwhile)."""


# --------------------------------------------------------------------------
# helpers: users, tools, processes
# --------------------------------------------------------------------------


def current_user() -> str:
    """Name of the account this process runs as (by uid, not by $USER)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def find_sshd() -> str | None:
    """Absolute path of the OpenSSH server binary, or None if there is none.

    sshd re-executes itself per connection and refuses to run unless started
    by an absolute path, so the result is always absolute.
    """
    candidates = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
    found = shutil.which("sshd")
    if found:
        candidates.append(os.path.abspath(found))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _find_tool(name: str) -> str | None:
    """Find an admin tool even when /usr/sbin is not on PATH."""
    for directory in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def _check_user_name(name: str) -> None:
    """Reject names that could break the generated config files."""
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise ValueError(f"invalid user name {name!r}")


def _run_tool(argv: list[str], timeout: float = 60.0) -> None:
    """Run an external tool, raising RuntimeError with its output on failure."""
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{argv[0]} failed: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise RuntimeError(
            f"{' '.join(argv)} exited with status {result.returncode}: {output}"
        )


def _shadow_password(name: str) -> str | None:
    """The password field of NAME from /etc/shadow (root only), or None."""
    try:
        with open("/etc/shadow", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.rstrip("\n").split(":")
                if len(fields) > 1 and fields[0] == name:
                    return fields[1]
    except OSError:
        pass
    try:
        return pwd.getpwnam(name).pw_passwd
    except KeyError:
        return None


def _is_locked(password_field: str | None) -> bool:
    """True if sshd (UsePAM no) would refuse the account as locked."""
    return bool(password_field) and password_field.startswith("!")  # type: ignore[union-attr]


def ensure_local_user(name: str) -> str:
    """Make sure local account NAME exists and is not locked; return its home.

    Why: sshd with ``UsePAM no`` refuses accounts whose password field starts
    with "!" (which is how ``useradd`` leaves new accounts). A missing account
    is created with ``useradd -m -s /bin/bash`` and given the password field
    "*" (no password login possible, but not "locked"). An existing account
    is left alone except that a "!" lock is removed. Root only.
    """
    _check_user_name(name)
    if os.geteuid() != 0:
        raise RuntimeError(f"ensure_local_user({name!r}) needs root")
    try:
        pwd.getpwnam(name)
    except KeyError:
        useradd = _find_tool("useradd")
        if useradd is None:
            raise RuntimeError("cannot create users: useradd not found") from None
        try:
            _run_tool([useradd, "-m", "-s", "/bin/bash", name])
        except RuntimeError:
            if not _user_exists(name):  # else: lost a race with another creator
                raise
        else:
            log.info("created local user %s", name)
    field = _shadow_password(name)
    if _is_locked(field):
        usermod = _find_tool("usermod")
        if usermod is None:
            raise RuntimeError(f"cannot unlock user {name}: usermod not found")
        remainder = (field or "").lstrip("!")
        if remainder and remainder != "*":
            _run_tool([usermod, "-U", name])  # restores the original hash
        else:
            _run_tool([usermod, "-p", "*", name])
        log.info("unlocked local user %s for key-only ssh logins", name)
    return pwd.getpwnam(name).pw_dir


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ssh_banner(port: int, timeout: float) -> bytes:
    """Connect to PORT and return the server's identification line ("" on failure)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return b""


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, starttime) of PID from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[1]), fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _descendants(root: int) -> list[tuple[int, int]]:
    """All descendants of ROOT as (pid, starttime) pairs (Linux /proc only)."""
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry), stat[2]))
    found: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _alive(pid: int, starttime: int) -> bool:
    """True if PID still runs the same process (not exited, not a zombie)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == starttime and stat[1] not in ("Z", "X")


def _signal_all(procs: list[tuple[int, int]], sig: int) -> None:
    """Send SIG to each still-identical process in PROCS."""
    for pid, starttime in procs:
        if _alive(pid, starttime):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _reap_descendants(procs: list[tuple[int, int]], timeout: float) -> None:
    """SIGTERM PROCS, wait up to TIMEOUT, then SIGKILL whatever is left."""
    if not procs:
        return
    _signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(pid, st) for pid, st in procs):
            return
        time.sleep(0.05)
    _signal_all(procs, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the sshd child before exec: SIGTERM it when its creator dies (Linux), so that
    a killed demo or test run leaves no server behind. Best effort elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux, or no ctypes: stop() still cleans up
        pass


def _stop_popen(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a child we started, wait up to TIMEOUT, then SIGKILL and reap."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        log.warning("pid %d ignored SIGTERM for %.1f s; killing it", proc.pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def _quote(value: str) -> str:
    """Quote a config value if it contains whitespace."""
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _write_text(path: str, text: str, mode: int) -> None:
    """Write TEXT to PATH and set MODE regardless of the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, mode)


def _public_line(pub_path: str) -> str:
    """'TYPE BASE64' from an OpenSSH .pub file (comment dropped)."""
    with open(pub_path, encoding="ascii") as fh:
        fields = fh.read().split()
    if len(fields) < 2:
        raise RuntimeError(f"unreadable public key file {pub_path}")
    return f"{fields[0]} {fields[1]}"


def _sshd_supports(sshd: str, keyword: str) -> bool:
    """True if the sshd binary knows config KEYWORD (used for version-specific options)."""
    try:
        with open(sshd, "rb") as fh:
            return keyword.lower().encode() in fh.read().lower()
    except OSError:
        return False


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------


class LoopbackSSHServer:
    """A throwaway SSH server on 127.0.0.1 for demos and tests.

    Attributes other than ``host``, ``users`` and ``kind`` are valid after
    ``start()``. ``workdir`` (the temp dir holding keys, configs and the sshd
    log) is created under the ``workdir`` argument, or the system temp dir.
    """

    host: str
    port: int
    pid: int | None
    workdir: str
    client_key: str
    known_hosts: str
    ssh_config: str
    kind: str
    users: list[str]

    def __init__(
        self,
        users: Sequence[str] | None = None,
        *,
        prefer_openssh: bool = True,
        workdir: str | None = None,
    ) -> None:
        if isinstance(users, str):
            raise TypeError("users must be a sequence of names, not a string")
        names = list(dict.fromkeys(users)) if users is not None else [current_user()]
        if not names:
            raise ValueError("users must name at least one account")
        for name in names:
            _check_user_name(name)
        self.users = names
        self.host = HOST
        self.port = 0
        self.pid = None
        self.workdir = ""
        self.client_key = ""
        self.known_hosts = ""
        self.ssh_config = ""
        self._parent_dir = workdir
        self._sshd = find_sshd() if prefer_openssh else None
        self.kind = "openssh" if self._sshd else "paramiko"
        self.log_file = ""
        self._host_public = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._fallback: Any = None
        self._started = False
        self._lock = threading.RLock()

    # -- public API --------------------------------------------------------

    def start(self) -> Self:
        """Start the server (no-op if running); RuntimeError says why it failed."""
        with self._lock:
            if self._started:
                return self
            self._check_users()
            self.workdir = tempfile.mkdtemp(
                prefix="remoteproc-sshd-", dir=self._parent_dir
            )
            self.client_key = os.path.join(self.workdir, "client_key")
            self.known_hosts = os.path.join(self.workdir, "known_hosts")
            self.ssh_config = os.path.join(self.workdir, "ssh_config")
            started = time.monotonic()
            try:
                if self.kind == "openssh":
                    self._start_openssh()
                else:
                    self._start_paramiko()
                self._write_client_files()
            except BaseException:
                self._teardown()
                raise
            self._started = True
            atexit.register(self.stop)
            log.info(
                "%s server for %s listening on %s:%d (pid %s), ready in %.2f s",
                self.kind,
                ",".join(self.users),
                self.host,
                self.port,
                self.pid,
                time.monotonic() - started,
            )
            return self

    def stop(self) -> None:
        """Stop the server and its sessions, and remove the workdir. Idempotent."""
        with self._lock:
            atexit.unregister(self.stop)
            self._teardown()
            self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def options(self, user: str | None = None) -> dict[str, Any]:
        """Connection options for USER (default: the first user) as a dict."""
        user = self._user(user)
        return {
            "port": self.port,
            "username": user,
            "key_filename": self.client_key,
            "known_hosts": self.known_hosts,
        }

    def spec(self, user: str | None = None) -> str:
        """'user@127.0.0.1:PORT' for USER (default: the first user)."""
        return f"{self._user(user)}@{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<LoopbackSSHServer {self.kind} {state} {self.host}:{self.port} users={self.users}>"

    # -- shared internals --------------------------------------------------

    def _user(self, user: str | None) -> str:
        if user is None:
            return self.users[0]
        if user not in self.users:
            raise ValueError(
                f"user {user!r} is not served by this server ({self.users})"
            )
        return user

    def _check_users(self) -> None:
        """Fail early, with a reason, for users this server cannot log in."""
        me = current_user()
        others = [u for u in self.users if u != me]
        if others and self.kind == "paramiko":
            raise RuntimeError(
                f"the paramiko fallback server runs commands as the current user "
                f"{me!r} only; cannot serve {others}"
            )
        if others and os.geteuid() != 0:
            raise RuntimeError(
                f"sshd running as non-root user {me!r} can only log in {me!r}; "
                f"serving {others} needs root"
            )
        if self.kind == "openssh" and os.geteuid() == 0:
            for name in self.users:
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    raise RuntimeError(
                        f"no local user {name!r}; create it with ensure_local_user({name!r})"
                    ) from None
                if _is_locked(_shadow_password(name)):
                    raise RuntimeError(
                        f"user {name!r} is locked (password field starts with '!') and "
                        f"sshd with UsePAM=no refuses it; unlock it with "
                        f"ensure_local_user({name!r})"
                    )

    def _write_client_files(self) -> None:
        """known_hosts and ssh_config for the chosen port (client key exists already)."""
        _write_text(
            self.known_hosts, f"[{self.host}]:{self.port} {self._host_public}\n", 0o644
        )
        blocks = []
        for user in self.users:
            blocks.append(
                f"Host remoteproc-{user}\n"
                f"    HostName {self.host}\n"
                f"    Port {self.port}\n"
                f"    User {user}\n"
                f"    IdentityFile {_quote(self.client_key)}\n"
                f"    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {_quote(self.known_hosts)}\n"
                f"    StrictHostKeyChecking yes\n"
                f"    BatchMode yes\n"
            )
        _write_text(self.ssh_config, "\n".join(blocks), 0o644)

    def _teardown(self) -> None:
        """Stop whatever runs and remove the workdir; safe to call repeatedly."""
        proc, self._proc = self._proc, None
        if proc is not None:
            sessions = _descendants(proc.pid)
            _stop_popen(proc, STOP_TIMEOUT)
            _reap_descendants(sessions, STOP_TIMEOUT)
            log.info(
                "stopped sshd pid %d (and %d child processes)",
                proc.pid,
                len(sessions),
            )
        fallback, self._fallback = self._fallback, None
        if fallback is not None:
            fallback.close()
        self.pid = None
        if self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- OpenSSH mode ------------------------------------------------------

    def _start_openssh(self) -> None:
        assert self._sshd is not None
        host_key = os.path.join(self.workdir, "ssh_host_key")
        self._generate_keypair(host_key)
        self._generate_keypair(self.client_key)
        self._host_public = _public_line(host_key + ".pub")
        client_public = _public_line(self.client_key + ".pub")

        keys_dir = os.path.join(self.workdir, "authorized_keys")
        os.mkdir(keys_dir)
        os.chmod(keys_dir, 0o755)
        for user in self.users:
            _write_text(os.path.join(keys_dir, user), client_public + "\n", 0o644)

        if os.geteuid() == 0:
            # sshd reads authorized_keys with the target user's uid, so other
            # users must be able to traverse the workdir (private keys stay 0600).
            os.chmod(self.workdir, 0o711)
            if not os.path.isdir(_PRIVSEP_DIR):
                os.makedirs(_PRIVSEP_DIR, mode=0o755, exist_ok=True)
                os.chmod(_PRIVSEP_DIR, 0o755)

        config = os.path.join(self.workdir, "sshd_config")
        self.log_file = os.path.join(self.workdir, "sshd.log")
        for attempt in range(1, BIND_ATTEMPTS + 1):
            port = _free_port()
            _write_text(config, self._sshd_config(port, host_key, keys_dir), 0o644)
            try:
                self._launch_sshd(config, port)
            except _PortInUse:
                log.debug("sshd could not bind port %d (attempt %d)", port, attempt)
                continue
            return
        raise RuntimeError(
            f"sshd could not bind a free port in {BIND_ATTEMPTS} attempts; "
            f"sshd log:\n{self._log_tail()}"
        )

    def _generate_keypair(self, path: str) -> None:
        """ed25519 via ssh-keygen; RSA via paramiko if ssh-keygen is missing."""
        keygen = shutil.which("ssh-keygen") or _find_tool("ssh-keygen")
        if keygen:
            _run_tool(
                [
                    keygen,
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    _KEY_COMMENT,
                    "-f",
                    path,
                ]
            )
            return
        import paramiko

        key = paramiko.RSAKey.generate(2048)
        _write_private_key(key, path)

    def _sshd_config(self, port: int, host_key: str, keys_dir: str) -> str:
        assert self._sshd is not None
        lines = [
            f"Port {port}",
            f"ListenAddress {HOST}",
            "AddressFamily inet",
            f"HostKey {_quote(host_key)}",
            f"PidFile {_quote(os.path.join(self.workdir, 'sshd.pid'))}",
            f"AuthorizedKeysFile {_quote(os.path.join(keys_dir, '%u'))}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            "UsePAM no",
            f"PermitRootLogin {'yes' if 'root' in self.users else 'no'}",
            f"AllowUsers {' '.join(self.users)}",
            "MaxSessions 200",
            "MaxStartups 200:30:300",
            "LoginGraceTime 60",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "PrintLastLog no",
            "PermitUserEnvironment no",
            "X11Forwarding no",
            "UseDNS no",
            "ClientAliveInterval 0",
        ]
        if _sshd_supports(self._sshd, "PerSourcePenalties"):
            # OpenSSH >= 9.8 would otherwise throttle 127.0.0.1 after probes/failures.
            lines.append("PerSourcePenalties no")
        return "\n".join(lines) + "\n"

    def _launch_sshd(self, config: str, port: int) -> None:
        """Start sshd on PORT and wait until it is ready; raise _PortInUse/RuntimeError."""
        assert self._sshd is not None
        pidfile = os.path.join(self.workdir, "sshd.pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        with open(self.log_file, "ab") as log_fh:
            proc = subprocess.Popen(
                [self._sshd, "-D", "-e", "-f", config],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
        started = time.monotonic()
        deadline = started + READY_TIMEOUT
        missing = "the process to start"
        while True:
            code = proc.poll()
            if code is not None:
                text = self._log_tail()
                if (
                    "Address already in use" in text
                    or "Cannot bind any address" in text
                ):
                    _truncate(self.log_file)
                    raise _PortInUse
                raise RuntimeError(
                    f"sshd ({self._sshd}) exited with status {code} before accepting "
                    f"connections on {HOST}:{port}; sshd log:\n{text}"
                )
            if not _pidfile_is(pidfile, proc.pid):
                missing = f"its pid file {pidfile}"
            else:
                banner = _ssh_banner(
                    port, timeout=max(0.1, deadline - time.monotonic())
                )
                if banner.startswith(b"SSH-"):
                    break
                missing = f"an SSH banner on {HOST}:{port} (got {banner[:80]!r})"
            if time.monotonic() >= deadline:
                _stop_popen(proc, STOP_TIMEOUT)
                raise RuntimeError(
                    f"sshd did not become ready within {READY_TIMEOUT:.0f} s "
                    f"(waiting for {missing}); sshd log:\n{self._log_tail()}"
                )
            time.sleep(0.01)
        self._proc = proc
        self.pid = proc.pid
        self.port = port
        log.debug(
            "sshd pid %d accepted connections on port %d after %.3f s",
            proc.pid,
            port,
            time.monotonic() - started,
        )

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            return "(no sshd log)"
        return text[-limit:].strip() or "(empty sshd log)"

    # -- paramiko fallback -------------------------------------------------

    def _start_paramiko(self) -> None:
        server_cls = _fallback_server_class()
        server = server_cls(user=current_user(), client_key_path=self.client_key)
        self._fallback = server
        self._host_public = server.host_public
        self.port = server.port
        self.pid = None


def _pidfile_is(path: str, pid: int) -> bool:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip() == str(pid)
    except (OSError, UnicodeDecodeError):
        return False


def _truncate(path: str) -> None:
    with contextlib.suppress(OSError):
        open(path, "wb").close()


def _write_private_key(key: Any, path: str) -> None:
    """Write a paramiko key pair as PATH (mode 0600) and PATH.pub."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        key.write_private_key(fh)
    os.chmod(path, 0o600)
    _write_text(
        path + ".pub", f"{key.get_name()} {key.get_base64()} {_KEY_COMMENT}\n", 0o644
    )


# --------------------------------------------------------------------------
# paramiko fallback server (paramiko is imported only here)
# --------------------------------------------------------------------------


@functools.cache
def _fallback_server_class() -> type:
    """Build the fallback server class; importing paramiko only when needed."""
    import paramiko
    from paramiko.common import cMSG_CHANNEL_FAILURE, cMSG_CHANNEL_SUCCESS

    replies = (cMSG_CHANNEL_SUCCESS, cMSG_CHANNEL_FAILURE)
    channel_errors = (OSError, EOFError, paramiko.SSHException)

    def _pump_out(pipe: IO[bytes], send: Callable[[bytes], None]) -> None:
        """Copy a process pipe to the channel until EOF (or the channel dies)."""
        fd = pipe.fileno()
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                send(data)
        except channel_errors as exc:  # channel closed under us: stop copying
            log.debug("output pump stopped: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    def _pump_in(chan: Any, pipe: IO[bytes]) -> None:
        """Copy channel data to the process's stdin; close it at channel EOF."""
        fd = pipe.fileno()
        broken = False
        try:
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                view = memoryview(data)
                while view and not broken:
                    try:
                        view = view[os.write(fd, view) :]
                    except OSError:  # the process closed its stdin: discard the rest
                        broken = True
        except channel_errors as exc:
            log.debug("input pump stopped: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    class _Transport(paramiko.Transport):
        """Transport that signals when an exec request has been answered.

        paramiko sends the reply to "exec" only after check_channel_exec_request
        returns; a fast command could otherwise close its channel before that
        reply, which paramiko clients report as "Channel closed".
        """

        def __init__(self, sock: socket.socket) -> None:
            super().__init__(sock)
            self.pending_replies: dict[int, threading.Event] = {}
            self.pending_lock = threading.Lock()

        def _send_user_message(self, data: Any) -> None:
            super()._send_user_message(data)
            raw = data.asbytes() if hasattr(data, "asbytes") else bytes(data)
            if raw[:1] in replies and len(raw) >= 5:
                chanid = int.from_bytes(raw[1:5], "big")
                with self.pending_lock:
                    event = self.pending_replies.pop(chanid, None)
                if event is not None:
                    event.set()

    class _Interface(paramiko.ServerInterface):
        """Public-key auth for one user and one key; exec requests only."""

        def __init__(self, owner: _FallbackServer, transport: _Transport) -> None:
            self.owner = owner
            self.transport = transport

        def get_allowed_auths(self, username: str) -> str:
            return "publickey"

        def check_auth_publickey(self, username: str, key: Any) -> int:
            if (
                username == self.owner.user
                and key.asbytes() == self.owner.client_public
            ):
                return paramiko.AUTH_SUCCESSFUL
            return paramiko.AUTH_FAILED

        def check_channel_request(self, kind: str, chanid: int) -> int:
            if kind == "session":
                return paramiko.OPEN_SUCCEEDED
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

        def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
            replied = threading.Event()
            with self.transport.pending_lock:
                self.transport.pending_replies[channel.remote_chanid] = replied
            self.owner.spawn(
                self.owner.run_exec, self.transport, channel, command, replied
            )
            return True

    class _FallbackServer:
        """In-process SSH server running exec requests with /bin/sh -c."""

        def __init__(self, user: str, client_key_path: str) -> None:
            self.user = user
            account = pwd.getpwnam(user)
            self.home = account.pw_dir if os.path.isdir(account.pw_dir) else "/"
            self.env = {
                "HOME": account.pw_dir,
                "USER": user,
                "LOGNAME": user,
                "SHELL": account.pw_shell or "/bin/sh",
                "PATH": os.environ.get("PATH") or os.defpath,
            }
            for name in ("LANG", "LC_ALL", "TZ", "TMPDIR"):
                if name in os.environ:
                    self.env[name] = os.environ[name]
            self.host_key = paramiko.ECDSAKey.generate()
            self.host_public = (
                f"{self.host_key.get_name()} {self.host_key.get_base64()}"
            )
            client_key = paramiko.ECDSAKey.generate()
            _write_private_key(client_key, client_key_path)
            self.client_public = client_key.asbytes()
            self.stopping = threading.Event()
            self.lock = threading.Lock()
            self.threads: list[threading.Thread] = []
            self.transports: list[_Transport] = []
            self.procs: set[subprocess.Popen[bytes]] = set()
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.listener.bind((HOST, 0))
                self.listener.listen(128)
                self.listener.settimeout(0.2)
            except OSError:
                self.listener.close()
                raise
            self.port = int(self.listener.getsockname()[1])
            self.spawn(self.accept_loop)

        def spawn(self, target: Callable[..., None], *args: Any) -> None:
            thread = threading.Thread(
                target=target,
                args=args,
                name=f"remoteproc-sshd-{target.__name__}",
                daemon=True,
            )
            with self.lock:
                self.threads = [t for t in self.threads if t.is_alive()]
                self.threads.append(thread)
            thread.start()

        def accept_loop(self) -> None:
            while not self.stopping.is_set():
                try:
                    sock, _ = self.listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.spawn(self.serve_connection, sock)

        def serve_connection(self, sock: socket.socket) -> None:
            transport = _Transport(sock)
            transport.add_server_key(self.host_key)
            with self.lock:
                self.transports.append(transport)
            try:
                transport.start_server(server=_Interface(self, transport))
                # Sessions are driven by exec requests; accept() only drains the
                # queue. Keep the channels referenced: paramiko closes a channel
                # when it is garbage-collected.
                channels: list[Any] = []
                while transport.is_active() and not self.stopping.is_set():
                    chan = transport.accept(timeout=0.5)
                    channels = [c for c in channels if not c.closed]
                    if chan is not None:
                        channels.append(chan)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                log.debug("fallback ssh connection ended: %s", exc)
            finally:
                transport.close()
                with self.lock, contextlib.suppress(ValueError):
                    self.transports.remove(transport)

        def run_exec(
            self,
            transport: _Transport,
            chan: Any,
            command: bytes,
            replied: threading.Event,
        ) -> None:
            """Run one exec request to completion and close its channel."""
            status: int | None = None
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", os.fsdecode(command)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self.home,
                    env=self.env,
                    start_new_session=True,
                    bufsize=0,
                )
            except OSError as exc:
                with contextlib.suppress(OSError, EOFError):
                    chan.sendall_stderr(f"cannot run /bin/sh: {exc}\n".encode())
                status = 127
            else:
                with self.lock:
                    self.procs.add(proc)
                try:
                    status = self.supervise(transport, chan, proc)
                finally:
                    with self.lock:
                        self.procs.discard(proc)
            if chan.closed:
                return
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                chan.shutdown_write()
                if status is not None:
                    chan.send_exit_status(status)
                replied.wait(2.0)
                chan.close()

        def supervise(
            self, transport: _Transport, chan: Any, proc: subprocess.Popen[bytes]
        ) -> int | None:
            """Pump data until PROC exits; kill it if the channel goes away first."""
            assert proc.stdin and proc.stdout and proc.stderr
            pumps = [
                threading.Thread(
                    target=_pump_out, args=(proc.stdout, chan.sendall), daemon=True
                ),
                threading.Thread(
                    target=_pump_out,
                    args=(proc.stderr, chan.sendall_stderr),
                    daemon=True,
                ),
            ]
            feeder = threading.Thread(
                target=_pump_in, args=(chan, proc.stdin), daemon=True
            )
            for thread in (*pumps, feeder):
                thread.start()
            while True:
                try:
                    proc.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if chan.closed or not transport.is_active() or self.stopping.is_set():
                    _kill_group(proc)
            for thread in pumps:
                thread.join(timeout=10.0)
            code = proc.returncode
            # a command killed by a signal gets no exit-status (as with OpenSSH's
            # exit-signal, paramiko clients then report -1)
            return code if code is not None and code >= 0 else None

        def close(self) -> None:
            self.stopping.set()
            with contextlib.suppress(OSError):
                self.listener.close()
            with self.lock:
                transports = list(self.transports)
                procs = list(self.procs)
                threads = list(self.threads)
            for transport in transports:
                with contextlib.suppress(Exception):
                    transport.close()
            for proc in procs:
                _kill_group(proc)
            deadline = time.monotonic() + STOP_TIMEOUT
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(timeout=max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:
                log.warning("fallback ssh server threads still running: %s", stuck)

    return _FallbackServer


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
