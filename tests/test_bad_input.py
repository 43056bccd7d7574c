"""Bad input to the API and to the local side: typed errors, nothing left behind."""

from __future__ import annotations

import os
import stat
import sys
import threading
import time

import cloudpickle
import pytest
from conftest import _unavailable
from proctable import threads

import remoteproc
from remoteproc import Pipe, RemoteProcess
from remoteproc.relay import client as relay_client
from remoteproc.testing import LoopbackSSHServer, ensure_local_user

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("host", [123, None, b"host", "", "user@", "host:99999", "a b", "user@host:port", "@host"])
def test_bad_host_specs(host):
    with pytest.raises(remoteproc.ConfigError) as info:
        RemoteProcess(host, target=print)
    assert isinstance(info.value, ValueError)
    assert "host" in str(info.value)


@pytest.mark.parametrize("options,words", [
    ({"bogus": 1}, "unknown option 'bogus'"),
    ({"port": "22"}, "port='22'"),
    ({"port": 0}, "out of range"),
    ({"connect_timeout": -1}, "positive"),
    ({"host_key_policy": "yolo"}, "accept-new"),
    ({"python": 3}, "python=3"),
])
def test_bad_options(options, words):
    with pytest.raises(remoteproc.ConfigError) as info:
        RemoteProcess("someone@example.invalid", target=print, **options)
    assert words in str(info.value)
    assert "example.invalid" in str(info.value)


@pytest.mark.parametrize("make", [remoteproc.Pool, remoteproc.Executor])
@pytest.mark.parametrize("args,kwargs,words", [
    ((4,), {}, "not 4: multiprocessing's number of processes is processes_per_host= here"),
    ((None,), {}, "not None: multiprocessing's number of processes is processes_per_host= here"),
    (("someone@example.invalid",), {"processes": 4}, "Fix: Pool(hosts, processes_per_host=N)"),
    (("someone@example.invalid",), {"max_workers": 4}, "Fix: Executor(hosts, processes_per_host=N)"),
    (("someone@example.invalid",), {"mp_context": None}, "Fix: drop it: remote processes have no start method"),
])
def test_a_pool_written_as_multiprocessing_s_says_what_to_write_instead(make, args, kwargs, words):
    """``Pool(4)``, ``Pool(hosts, processes=4)``, ``Executor(hosts, max_workers=4, mp_context=...)``:
    what code written for multiprocessing passes is refused at once, naming remoteproc's way (it was
    "'int' object is not iterable", or an unknown SSH option with the list of SSH options)."""
    with pytest.raises(remoteproc.ConfigError) as info:
        make(*args, **kwargs)
    assert words in str(info.value), str(info.value)


def test_unpicklable_target_and_closed_connection():
    lock = threading.Lock()
    with pytest.raises(remoteproc.PicklingError) as info:
        RemoteProcess("u@host.invalid", target=lambda: lock).start()
    assert "host.invalid" in str(info.value)
    a, b = Pipe()
    b.close()
    with pytest.raises(remoteproc.PicklingError) as info:
        RemoteProcess("u@host.invalid", target=print, args=(b,)).start()
    assert "closed Connection" in str(info.value)


def test_multiprocessing_primitives_name_the_alternative():
    import multiprocessing

    for obj, alternative in ((multiprocessing.Queue(), "remoteproc.Queue"),
                             (multiprocessing.Event(), "remoteproc.Event"),
                             (multiprocessing.Lock(), "remoteproc.Lock"),
                             (multiprocessing.Value("i", 1), "remoteproc.Value")):
        with pytest.raises(remoteproc.PicklingError) as info:
            RemoteProcess("u@host.invalid", target=print, args=(obj,)).start()
        assert alternative in str(info.value)


def test_huge_argument_arrives_intact(host, ssh_options):
    import hashlib

    def digest(conn, data):
        conn.send(hashlib.sha256(data).hexdigest())

    data = os.urandom(100 << 20)
    parent, child = Pipe()
    p = RemoteProcess(host, target=digest, args=(child, data), **ssh_options)
    p.start()
    child.close()
    assert parent.recv() == hashlib.sha256(data).hexdigest()
    p.join(60)
    assert p.exitcode == 0


def test_use_after_close_and_start_twice(host, ssh_options):
    p = RemoteProcess(host, target=print, **ssh_options)
    p.start()
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    p.join(30)
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.is_alive()


FAKE_AGENT = """\
#!{python}
import json, os, struct, sys, time
mode = {mode!r}
if mode == "noise":
    os.write(1, b"Welcome to the machine!\\n" * 4)
    time.sleep(0.5)                       # (a pause: the noise is read before the end, as from a wrapper)
    sys.exit(0)
os.write(1, b"remoteproc:stub\\n")   # (bootstrap.STUB_STARTED: what the real stub says first)
hello = json.dumps({{"op": "hello", "version": 1, "python": list(sys.version_info[:3]), "pid": os.getpid()}})
body = struct.pack(">I", len(hello)) + hello.encode()
os.write(1, struct.pack(">BII", 5, 0, len(body)) + body)
os.read(0, 1 << 16)                       # the stub's blob (or the start request)
os.write(1, bytes(range(256)) * 4)        # garbage instead of frames
time.sleep(5)
"""


@pytest.mark.loopback_only
@pytest.mark.parametrize("mode,error", [("noise", remoteproc.BootstrapError),
                                        ("garbage", remoteproc.ProtocolError)])
def test_garbage_from_a_fake_agent_is_a_typed_error(host, ssh_options, tmp_path, mode, error):
    fake = tmp_path / ("fake-" + mode)
    fake.write_text(FAKE_AGENT.format(python=sys.executable, mode=mode))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IRUSR)
    relay = relay_client.get().proc.pid
    before = (threading.active_count(), threads(relay))
    p = RemoteProcess(host, target=print, python=str(fake), **ssh_options)
    with pytest.raises(error) as info:
        p.start()
    assert "127.0.0.1" in str(info.value)
    if mode == "noise":
        # (the wrapper ran and ended: a failed command, whose SSH connection stays for the next start,
        # as after a python= that does not exist; garbage from an agent ends the connection)
        assert "python='%s' ended with status 0 before remoteproc's agent started" % fake in str(info.value)
        assert "Welcome to the machine!" in str(info.value)
        before = (before[0], before[1] + 1)
    # Nothing left behind: no thread here, and the relay's link (and, for garbage, the connection) is gone.
    def left() -> tuple:
        return threading.active_count(), threads(relay)

    deadline = time.monotonic() + 10
    while any(n > b for n, b in zip(left(), before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(n <= b for n, b in zip(left(), before)), (left(), before)
    # The interpreter is intact and the host still works with the real agent.
    parent, child = Pipe()
    q = RemoteProcess(host, target=lambda c: c.send("fine"), args=(child,), **ssh_options)
    q.start()
    child.close()
    assert parent.recv() == "fine"
    q.join(30)
    assert q.exitcode == 0


@pytest.mark.loopback_only
def test_python_that_does_not_exist(host, ssh_options):
    p = RemoteProcess(host, target=print, python="/nonexistent/python3", **ssh_options)
    with pytest.raises(remoteproc.BootstrapError) as info:
        p.start()
    text = str(info.value)
    assert "/nonexistent/python3" in text and "127.0.0.1" in text and "python=" in text


QUIET_USER = "rpquiet"
"""An account that only the test below logs in as: the suite's other tests (in this process or
another worker) write files as rpuser meanwhile (package caches, scripts)."""


@pytest.fixture
def quiet_account():
    """(host, options) of QUIET_USER on a loopback sshd of its own."""
    if os.geteuid() != 0:
        _unavailable("the %r account needs the tests to run as root" % QUIET_USER)
    try:
        ensure_local_user(QUIET_USER)
    except RuntimeError as exc:
        _unavailable("cannot set up local user %r: %s" % (QUIET_USER, exc))
    server = LoopbackSSHServer(users=[QUIET_USER])
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        _unavailable("cannot start a loopback sshd: %s" % exc)
    try:
        yield server.spec(QUIET_USER), server.options(QUIET_USER)
    finally:
        server.stop()


def test_agent_source_is_written_nowhere(quiet_account):
    """Nothing is installed or cached on the remote host: its home and /tmp gain no files."""
    import pwd

    plain_user_host, plain_user_options = quiet_account
    home = pwd.getpwnam(plain_user_options["username"]).pw_dir

    def snapshot():
        found = set()
        for root in (home, "/tmp", "/var/tmp"):
            for dirpath, _dirs, files in os.walk(root):
                for f in files:
                    path = os.path.join(dirpath, f)
                    try:
                        if os.stat(path).st_uid == pwd.getpwnam(plain_user_options["username"]).pw_uid:
                            found.add(path)
                    except OSError:
                        pass
        return found

    before = snapshot()
    parent, child = Pipe()
    p = RemoteProcess(plain_user_host, target=lambda c: c.send(1), args=(child,), **plain_user_options)
    p.start()
    child.close()
    assert parent.recv() == 1
    p.join(30)
    assert snapshot() - before == set()

