"""The loopback SSH server of remoteproc.testing (OpenSSH and the paramiko fallback), via plain paramiko.

These go through real SSH connections but not through remoteproc's own API,
so a failure here points at the rig (sshd setup, keys, accounts), not at the
library under test; only the last test runs a RemoteProcess, through the paramiko
fallback (the demo's server where no sshd exists).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
import paramiko
import pytest
from proctable import gone, running

from remoteproc import Pipe, RemoteProcess
from remoteproc.testing import LoopbackSSHServer, current_user, ensure_local_user

# The target of the last test is shipped by value: this module is not installed on the remote side.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(60), pytest.mark.loopback_only]

IO_TIMEOUT = 30.0


# -- helpers -----------------------------------------------------------------


def connect(
    options: dict[str, Any],
    *,
    known_hosts: str | None = None,
    pkey: paramiko.PKey | None = None,
) -> paramiko.SSHClient:
    """A paramiko client that trusts only the given known_hosts file."""
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts or options["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            "127.0.0.1",
            port=options["port"],
            username=options["username"],
            key_filename=None if pkey else options["key_filename"],
            pkey=pkey,
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
            channel_timeout=10,
        )
    except BaseException:
        client.close()
        raise
    return client


def open_exec(client: paramiko.SSHClient, command: str) -> paramiko.Channel:
    transport = client.get_transport()
    assert transport is not None
    chan = transport.open_session(timeout=IO_TIMEOUT)
    chan.settimeout(IO_TIMEOUT)
    chan.exec_command(command)
    return chan


def finish(chan: paramiko.Channel) -> tuple[int, bytes, bytes]:
    """Read stdout then stderr to EOF and return (exit status, stdout, stderr)."""
    out = bytearray()
    while chunk := chan.recv(65536):
        out += chunk
    err = bytearray()
    while chunk := chan.recv_stderr(65536):
        err += chunk
    assert chan.status_event.wait(IO_TIMEOUT), "no exit status within timeout"
    status = chan.recv_exit_status()
    chan.close()
    return status, bytes(out), bytes(err)


def run(
    client: paramiko.SSHClient, command: str, stdin: bytes = b""
) -> tuple[int, bytes, bytes]:
    """Run COMMAND, feed STDIN then EOF, return (exit status, stdout, stderr)."""
    chan = open_exec(client, command)
    if stdin:
        chan.sendall(stdin)
    chan.shutdown_write()
    return finish(chan)


def read_line(chan: paramiko.Channel) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = chan.recv(1)
        if not chunk:
            break
        line += chunk
    return line


# -- OpenSSH server ----------------------------------------------------------


def test_echo_over_openssh(
    sshd: LoopbackSSHServer, ssh_options: dict[str, Any]
) -> None:
    assert sshd.kind == "openssh"
    with connect(ssh_options) as client:
        assert run(client, "echo hi") == (0, b"hi\n", b"")
        assert run(client, "echo oops >&2; exit 3") == (3, b"", b"oops\n")


def test_options_and_spec(sshd: LoopbackSSHServer, host: str) -> None:
    me = current_user()
    assert sshd.host == "127.0.0.1"
    assert host == f"{me}@127.0.0.1:{sshd.port}"
    assert sshd.options() == {
        "port": sshd.port,
        "username": me,
        "key_filename": sshd.client_key,
        "known_hosts": sshd.known_hosts,
    }
    assert os.stat(sshd.client_key).st_mode & 0o077 == 0
    assert Path(sshd.known_hosts).read_text().startswith(f"[127.0.0.1]:{sshd.port} ")
    assert sshd.pid is not None and running(sshd.pid)
    with pytest.raises(ValueError, match="not served"):
        sshd.options("no-such-user-here")


def test_plain_user_identity(plain_user_options: dict[str, Any]) -> None:
    with connect(plain_user_options) as client:
        status, out, _ = run(client, "id -un; pwd")
    home = pwd.getpwnam("rpuser").pw_dir
    assert (status, out) == (0, f"rpuser\n{home}\n".encode())


def test_plain_user_has_only_system_python(plain_user_options: dict[str, Any]) -> None:
    with connect(plain_user_options) as client:
        status, out, err = run(client, 'python3 -c "import sys; print(sys.executable)"')
        assert (status, out) == (0, b"/usr/bin/python3\n"), err
        status, _, err = run(client, 'python3 -c "import cloudpickle"')
    assert status != 0
    assert b"cloudpickle" in err


def test_ensure_local_user_is_idempotent(plain_user_options: dict[str, Any]) -> None:
    before = pwd.getpwnam("rpuser")
    assert ensure_local_user("rpuser") == before.pw_dir
    assert pwd.getpwnam("rpuser") == before
    shadow = Path("/etc/shadow").read_text().splitlines()
    field = next(line.split(":")[1] for line in shadow if line.startswith("rpuser:"))
    assert not field.startswith("!")


def test_many_concurrent_sessions(ssh_options: dict[str, Any]) -> None:
    with connect(ssh_options) as client:
        chans = [open_exec(client, f"echo {i}") for i in range(30)]
        for chan in chans:
            chan.shutdown_write()
        results = [finish(chan)[:2] for chan in chans]
    # (stderr is not compared: root's .bashrc here runs `pyenv rehash`, which complains
    # when 30 shells start at once; that is the account's shell, not the server)
    assert results == [(0, f"{i}\n".encode()) for i in range(30)]


def test_unknown_host_key_is_refused(
    ssh_options: dict[str, Any], tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(ssh_options, known_hosts=str(empty))


def test_wrong_host_key_is_refused(
    sshd: LoopbackSSHServer, ssh_options: dict[str, Any], tmp_path: Path
) -> None:
    # same key type as the host key (ed25519), different key: the client's own
    other = Path(sshd.client_key + ".pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        connect(ssh_options, known_hosts=str(wrong))


def test_ssh_config_parses(sshd: LoopbackSSHServer) -> None:
    config = paramiko.SSHConfig.from_path(sshd.ssh_config)
    for user in sshd.users:
        entry = config.lookup(f"remoteproc-{user}")
        assert entry["hostname"] == "127.0.0.1"
        assert entry["port"] == str(sshd.port)
        assert entry["user"] == user
        assert entry["identityfile"] == [sshd.client_key]
        assert entry["identitiesonly"] == "yes"
        assert entry["userknownhostsfile"] == sshd.known_hosts
        assert entry["stricthostkeychecking"] == "yes"


def test_ssh_config_works_with_openssh_client(sshd: LoopbackSSHServer) -> None:
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("no OpenSSH client (ssh) installed")
    for user in sshd.users:
        result = subprocess.run(
            [ssh, "-F", sshd.ssh_config, f"remoteproc-{user}", "id -un"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=IO_TIMEOUT,
            check=False,
        )
        assert (result.returncode, result.stdout) == (0, f"{user}\n".encode()), (
            result.stderr
        )


def test_stop_ends_sshd_and_sessions_and_removes_workdir(
    sshd: LoopbackSSHServer,  # only to fail/skip like the rest when sshd is missing
) -> None:
    server = LoopbackSSHServer().start()
    try:
        assert server.kind == "openssh"
        pid, workdir = server.pid, server.workdir
        assert pid is not None and os.path.isdir(workdir)
        with connect(server.options()) as client:
            chan = open_exec(client, "echo $$; exec sleep 60")
            session_pid = int(read_line(chan))
            assert running(session_pid)
            server.stop()
            assert not os.path.exists(f"/proc/{pid}")
            assert not os.path.exists(workdir)
            assert gone(session_pid)
        assert server.pid is None
        server.stop()  # idempotent
    finally:
        server.stop()


# -- paramiko fallback server ------------------------------------------------


@pytest.fixture(scope="module")
def fallback() -> Iterator[LoopbackSSHServer]:
    server = LoopbackSSHServer(prefer_openssh=False)
    with server:
        yield server


def test_fallback_basics(fallback: LoopbackSSHServer) -> None:
    assert fallback.kind == "paramiko"
    assert fallback.pid is None
    assert fallback.users == [current_user()]
    with connect(fallback.options()) as client:
        assert run(client, "echo hi") == (0, b"hi\n", b"")
        assert run(client, "sh -c 'exit 3'") == (3, b"", b"")
        assert run(client, "echo oops >&2; exit 4") == (4, b"", b"oops\n")
        assert run(client, "pwd")[1] == f"{os.path.expanduser('~')}\n".encode()


def test_fallback_stdin(fallback: LoopbackSSHServer) -> None:
    payload = os.urandom(1 << 20)
    with connect(fallback.options()) as client:
        assert run(client, "cat", stdin=b"hello\nworld\n") == (
            0,
            b"hello\nworld\n",
            b"",
        )
        assert run(client, "cat", stdin=payload) == (0, payload, b"")
        assert run(client, "wc -c") == (0, b"0\n", b"")


def test_fallback_concurrent_channels_and_transports(
    fallback: LoopbackSSHServer,
) -> None:
    clients = [connect(fallback.options()) for _ in range(3)]
    try:
        with ThreadPoolExecutor(max_workers=30) as pool:
            futures = {
                (c, i): pool.submit(run, client, f"echo {c}-{i}; exit {i}")
                for c, client in enumerate(clients)
                for i in range(10)
            }
            results = {key: f.result(IO_TIMEOUT) for key, f in futures.items()}
    finally:
        for client in clients:
            client.close()
    assert results == {
        (c, i): (i, f"{c}-{i}\n".encode(), b"") for c in range(3) for i in range(10)
    }


def test_fallback_kills_command_when_channel_closes(
    fallback: LoopbackSSHServer,
) -> None:
    with connect(fallback.options()) as client:
        chan = open_exec(client, "echo $$; exec sleep 60")
        pid = int(read_line(chan))
        assert running(pid)
        chan.close()
        assert gone(pid)
        assert run(client, "echo still-fine") == (0, b"still-fine\n", b"")


def test_fallback_rejects_other_keys(fallback: LoopbackSSHServer) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        connect(fallback.options(), pkey=paramiko.ECDSAKey.generate())


def test_fallback_serves_only_the_current_user() -> None:
    server = LoopbackSSHServer(
        users=[current_user(), "rp-nobody"], prefer_openssh=False
    )
    with pytest.raises(RuntimeError, match="current user"):
        server.start()
    server.stop()


def test_fallback_stop_closes_everything() -> None:
    server = LoopbackSSHServer(prefer_openssh=False).start()
    port, workdir = server.port, server.workdir
    client = connect(server.options())
    try:
        chan = open_exec(client, "echo $$; exec sleep 60")
        pid = int(read_line(chan))
        server.stop()
        assert gone(pid)
        assert not os.path.exists(workdir)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 5):
            pass
    finally:
        client.close()
        server.stop()


def double(conn: Any, n: int) -> None:
    conn.send(n * 2)
    conn.close()


def test_round_trip_through_the_paramiko_fallback_server() -> None:
    """The demo's server where no sshd binary exists: a real SSH server built on paramiko."""
    with LoopbackSSHServer(prefer_openssh=False) as server:
        assert server.kind == "paramiko"
        parent, child = Pipe()
        p = RemoteProcess(server.spec(), target=double, args=(child, 4), **server.options())
        p.start()
        child.close()
        assert parent.recv() == 8
        p.join(30)
        assert p.exitcode == 0
