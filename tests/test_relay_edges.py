"""The relay's edges, end to end: what the user sees when the relay, its link or the ``ssh``
process meets something other than the happy path.

Behaviours covered here:

* an agent that misbehaves (a fake one, run as ``python=``): a malformed hello, frames glued to
  the hello, an exit for a process it never started, an unknown operation, an import request
  without a name, a pid that is not a number, an exit right after a start (with words on its
  stderr, which the relay logs), an output closed while the command goes on (``ssh`` lingers and
  is ended): each is a typed error from ``start()`` naming the host, and the host stays usable;
* Ctrl-C (SIGINT to the relay, as the terminal sends it) reaches the remote children as
  ``KeyboardInterrupt``;
* the relay asked to shut down with a process running: the process ends with
  ``CONNECTION_LOST``, its remote child is gone, and the next start gets a new relay;
* a relay that does not stop when asked (here: stopped) is killed after the shutdown's bound;
* a message larger than every buffer on the way reaches a remote child that reads slowly
  (the channel is full, the link waits for it to drain), under both transports;
* ``transport="openssh"``: the ``ssh`` process killed while the link is writing to it is a lost
  connection, with nothing left behind;
* a parent whose stdout and stderr are closed (a daemon) still starts remote processes;
* ``is_alive()`` while another thread joins, two threads joining one process, ``terminate()``
  on a process that has already ended;
* a process with more Connections than one sendmsg can carry fds for (300).
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
import threading
import time
from multiprocessing.connection import wait

import cloudpickle
import pytest
from proctable import children_of, eventually, gone, running
from remote_call import start

import remoteproc
from remoteproc import Pipe, RemoteProcess
from remoteproc.agent import PROTOCOL_VERSION
from remoteproc.relay import client as relay_client

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(120), pytest.mark.loopback_only]     # reads this machine's /proc


# -- remote targets ------------------------------------------------------------------------------

def echo(conn):
    conn.send(os.getpid())
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


def sleeper(conn):
    conn.send(os.getpid())
    time.sleep(60)


def waits_for_ctrl_c(conn):
    try:    # (from before the first message: the Ctrl-C may come as soon as the parent has it)
        conn.send(os.getpid())
        time.sleep(60)
    except KeyboardInterrupt:
        conn.send("KeyboardInterrupt")


def slow_reader(conn):
    """Reads one big message only after a while (everything on the way fills up meanwhile)."""
    import hashlib

    conn.send(os.getpid())
    time.sleep(1.0)
    data = conn.recv_bytes()
    conn.send((len(data), hashlib.sha256(data).hexdigest()))


def reads_forever(conn):
    conn.send(os.getpid())
    while True:
        conn.recv_bytes()
        time.sleep(0.01)


def prints(conn, text):
    print(text, flush=True)
    print(text, file=sys.stderr, flush=True)
    conn.send(os.getpid())


def nothing():
    pass


def count_connections(*conns):
    conns[0].send(len(conns))


def _host_still_works(host, options):
    p, conn, _pid = start(host, options, echo)
    conn.send("still here")
    assert conn.recv() == "still here"
    conn.close()
    p.join(30)
    assert p.exitcode == 0


# -- a fake agent: the stub's protocol, then one misbehaviour -----------------------------------------

FAKE_AGENT = r"""#!{python}
import json, os, re, struct, sys, time

mode = sys.argv[1]


def read(k):
    got = b""
    while len(got) < k:
        more = os.read(0, k - len(got))
        if not more:
            sys.exit(0)            # the relay closed the channel: nothing more to do
        got += more
    return got


def control(msg):
    head = json.dumps(msg).encode()
    body = struct.pack(">I", len(head)) + head
    return struct.pack(">BII", 5, 0, len(body)) + body


os.write(1, b"remoteproc:stub\n")   # (bootstrap.STUB_STARTED: what the real stub says before it reads)
first = read(1)
while first == b"\n":              # the newlines sent before the blob, for a startup file's read
    first = read(1)
read(int(re.search(r"b=r\((\d+)", os.environ["REMOTEPROC_STUB"]).group(1)) - 1)    # the compiled agent
if mode == "last-words":
    # as an agent that ran out of memory right after its hello (a low ulimit -v): its last words
    # reach the relay no later than the hello (here: surely before it)
    os.write(2, b"remoteproc: the agent ran out of memory: (ulimit -v 20000 KiB). Fix: raise it\n")
    time.sleep(0.5)
hello = {{"op": "hello", "version": {version}, "python": list(sys.version_info[:3]),
         "implementation": sys.implementation.name, "pid": os.getpid()}}
if mode == "bad-hello":
    hello["python"] = 5
out = control(hello)
if mode == "glued":
    out += bytes(range(256))       # garbage in the same write as the hello
os.write(1, out)
if mode == "exit":
    os.write(2, b"fake agent: the disk is full\n")
if mode == "last-words":
    sys.exit(1)
while True:
    ftype, sid, length = struct.unpack(">BII", read(9))
    payload = read(length) if ftype in (1, 5) else b""
    if ftype != 5:
        continue
    (n,) = struct.unpack(">I", payload[:4])
    msg = json.loads(payload[4:4 + n])
    if msg["op"] == "ping":
        os.write(1, control({{"op": "pong", "t": msg.get("t")}}))
    elif msg["op"] == "start":
        break
cid = msg["id"]
if mode == "unknown-id":
    os.write(1, control({{"op": "started", "id": cid + 1000, "pid": os.getpid()}}))
elif mode == "unknown-op":
    os.write(1, control({{"op": "teleport", "id": cid}}))
elif mode == "import-without-name":
    os.write(1, control({{"op": "import", "id": cid}}))
elif mode == "bad-pid":
    os.write(1, control({{"op": "started", "id": cid, "pid": "not a pid"}}))
elif mode == "exit":
    sys.exit(3)
elif mode == "close-output":
    os.close(1)
    os.close(2)                    # (sshd says EOF once both are closed)
    time.sleep(4)                  # ssh lingers while the command runs (and reads nothing)
    sys.exit(0)
while os.read(0, 65536):
    pass
"""

#: mode -> (error class, words the message holds)
FAKE_MODES = {
    "bad-hello": (remoteproc.RemoteProcessError, "could not start"),
    "glued": (remoteproc.ProtocolError, "broke the protocol"),
    "unknown-id": (remoteproc.ProtocolError, "started for unknown process"),
    "unknown-op": (remoteproc.ProtocolError, "unknown control operation 'teleport'"),
    "import-without-name": (remoteproc.ProtocolError, "import request without a module name"),
    "bad-pid": (remoteproc.ConnectionLostError, "the relay failed"),
    "exit": (remoteproc.ConnectionLostError, "connection lost"),
    "close-output": (remoteproc.ConnectionLostError, "connection lost"),
    "last-words": (remoteproc.ConnectionLostError, "the remote agent exited with status 1; before it went, the "
                   "agent said: the agent ran out of memory: (ulimit -v 20000 KiB). Fix: raise it"),
}


@pytest.mark.parametrize("mode", list(FAKE_MODES))
def test_a_misbehaving_agent_is_a_typed_error_and_the_host_stays_usable(host, ssh_options, tmp_path, mode,
                                                                        caplog):
    caplog.set_level(logging.WARNING, logger="remoteproc")
    fake = tmp_path / "fake-agent"
    fake.write_text(FAKE_AGENT.format(python=sys.executable, version=PROTOCOL_VERSION))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IRUSR)
    parent, child = Pipe()
    p = RemoteProcess(host, target=echo, args=(child,), python="%s %s" % (fake, mode),
                      **dict(ssh_options, idle_timeout=1))
    error, words = FAKE_MODES[mode]
    with pytest.raises(error) as info:
        p.start()
    child.close()
    assert "127.0.0.1" in str(info.value) and words in str(info.value)
    assert info.value.host == host
    if mode == "close-output" and ssh_options.get("transport") == "openssh":
        assert "ssh closed the agent's output but did not exit" in str(info.value)
    if mode == "exit":      # (paramiko sees the channel's EOF before the status: it waits for that too)
        assert "the remote agent exited with status 3" in str(info.value)
    if mode == "exit":       # what the agent said on its stderr is in the log, with the host
        assert eventually(lambda: any("the disk is full" in r.getMessage() for r in caplog.records), 10)
    if mode == "bad-hello":  # an unforeseen failure is logged with its traceback
        assert eventually(lambda: any("Traceback" in r.getMessage() for r in caplog.records), 10)
    with pytest.raises(EOFError):
        parent.recv()
    _host_still_works(host, ssh_options)


# -- Ctrl-C ------------------------------------------------------------------------------------------

def test_ctrl_c_reaches_the_remote_children(host, ssh_options):
    """The terminal sends SIGINT to the whole foreground group, the relay included: it passes it on."""
    p, conn, _pid = start(host, ssh_options, waits_for_ctrl_c)
    os.kill(relay_client.get().proc.pid, signal.SIGINT)
    assert wait([conn], 30), "the remote child never saw the Ctrl-C"
    assert conn.recv() == "KeyboardInterrupt"
    p.join(30)
    assert p.exitcode == 0
    _host_still_works(host, ssh_options)        # the relay itself goes on


# -- the relay's own end ---------------------------------------------------------------------------------

def test_relay_shutdown_with_a_process_running_ends_it_and_the_next_start_gets_a_new_relay(host, ssh_options):
    p, conn, pid = start(host, ssh_options, sleeper)
    old = relay_client.get()
    relay_client.shutdown()
    p.join(30)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    assert isinstance(p.connection_error, remoteproc.ConnectionLostError)
    with pytest.raises(EOFError):
        conn.recv()
    assert old.proc.poll() == 0, "the relay did not exit by itself"
    assert gone(pid, 30), "the remote child outlived the relay's shutdown"
    _host_still_works(host, ssh_options)
    assert relay_client.get() is not old


def test_a_relay_that_does_not_stop_is_killed_at_shutdown(host, ssh_options):
    p, conn, pid = start(host, ssh_options, sleeper)
    relay = relay_client.get()
    os.kill(relay.proc.pid, signal.SIGSTOP)
    try:
        relay_client.shutdown(timeout=1.0)
        assert relay.proc.returncode == -signal.SIGKILL
    finally:
        if relay.proc.poll() is None:
            relay.proc.kill()
            relay.proc.wait(10)
    p.join(30)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    assert gone(pid, 30), "the remote child outlived its relay"
    conn.close()
    _host_still_works(host, ssh_options)


def test_a_sync_with_the_relay_is_answered_and_bounded():
    """``RelayHandle.sync`` (the command line's wait for the relay's last warnings) returns True
    once the relay answered, False after its timeout when the relay does not, and False at once
    when the relay is gone."""
    relay = relay_client.get()
    assert relay.sync(10.0) is True
    os.kill(relay.proc.pid, signal.SIGSTOP)
    try:
        assert relay.sync(0.3) is False
    finally:
        os.kill(relay.proc.pid, signal.SIGCONT)
    assert relay.sync(10.0) is True        # (the stopped one's late answer counts for nothing more)
    relay_client.shutdown()
    assert relay.sync(10.0) is False


# -- a full channel ----------------------------------------------------------------------------------

def test_a_message_bigger_than_every_buffer_reaches_a_slow_reader(host, ssh_options):
    import hashlib

    data = os.urandom(24 << 20)
    p, conn, _pid = start(host, ssh_options, slow_reader)
    conn.send_bytes(data)
    assert wait([conn], 60)
    assert conn.recv() == (len(data), hashlib.sha256(data).hexdigest())
    p.join(30)
    assert p.exitcode == 0


def _ssh_processes_of_relay():
    relay = relay_client.current()
    assert relay is not None
    return [pid for pid in children_of(relay.proc.pid)
            if os.path.basename(os.readlink("/proc/%d/exe" % pid)) == "ssh"]


def test_the_ssh_process_killed_while_the_link_writes_to_it(host, ssh_options):
    if ssh_options.get("transport") != "openssh":
        pytest.skip("the ssh process is transport='openssh''s")
    options = dict(ssh_options, keepalive_interval=60)
    p, conn, pid = start(host, options, reads_forever)
    block = b"x" * (4 << 20)
    stop = threading.Event()

    def pump():
        try:
            while not stop.is_set():
                conn.send_bytes(block)
        except OSError:
            pass

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    try:
        time.sleep(0.3)        # the upload is under way
        ssh = _ssh_processes_of_relay()
        assert ssh, "the relay runs no ssh process"
        for each in ssh:
            os.kill(each, signal.SIGKILL)
        p.join(30)
        assert p.exitcode == remoteproc.CONNECTION_LOST
        assert "ssh" in str(p.connection_error)
    finally:
        stop.set()
        pumper.join(30)         # (the relay let go of the Connection: a send fails)
        conn.close()
    assert gone(pid, 30), "the remote child outlived its ssh connection"
    _host_still_works(host, ssh_options)


# -- the user's side: Popen ---------------------------------------------------------------------------

def test_a_parent_without_stdout_and_stderr_still_starts_processes(host, ssh_options):
    """A daemon has no fds 1 and 2: its remote children's output goes to /dev/null."""
    parent, child = Pipe()
    p = RemoteProcess(host, target=prints, args=(child, "into the void"), **ssh_options)
    relay_client.prestart()         # (its socket must not take fd 1 or 2 either)
    saved = os.dup(1), os.dup(2)
    try:
        os.close(1)
        os.close(2)
        p.start()
        child.close()
        got = parent.recv() if wait([parent], 60) else None
        p.join(30)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    assert got is not None and p.exitcode == 0


def test_is_alive_and_join_from_several_threads(host, ssh_options):
    p, conn, _pid = start(host, ssh_options, echo)
    codes = []

    def join():
        p.join()            # (no timeout: it waits in the status socket, holding the Popen's lock)
        codes.append(p.exitcode)

    joiners = [threading.Thread(target=join, daemon=True) for _ in range(2)]
    for t in joiners:
        t.start()
    assert eventually(lambda: p._popen._lock.locked(), 10), "no thread is waiting for the process"
    assert p.is_alive(), "is_alive() must not wait for the joining thread"
    conn.close()            # the process ends
    for t in joiners:
        t.join(60)
    assert codes == [0, 0] and p.exitcode == 0 and not p.is_alive()


def test_terminate_after_the_process_ended_is_harmless(host, ssh_options):
    parent, child = Pipe()
    p = RemoteProcess(host, target=count_connections, args=(child,), **ssh_options)
    p.start()
    child.close()
    assert parent.recv() == 1
    assert wait([p.sentinel], 30)       # ended; the relay has reported it and let go
    eventually(lambda: False, 0.3)      # (the relay closes its end right after the report)
    p.terminate()
    p.kill()
    p.join(30)
    assert p.exitcode == 0


# -- many Connections ------------------------------------------------------------------------------

def test_a_process_with_three_hundred_connections(host, ssh_options):
    """More Connections than one sendmsg can carry fds for (SCM_MAX_FD, 253): each reaches the
    child, and the relay and the host go on."""
    pairs = [Pipe() for _ in range(300)]
    try:
        p = RemoteProcess(host, target=count_connections, args=tuple(c for _, c in pairs), **ssh_options)
        p.start()
        for _, c in pairs:
            c.close()
        assert pairs[0][0].poll(60) and pairs[0][0].recv() == 300
        p.join(30)
        assert p.exitcode == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    relay = relay_client.current()
    assert relay is not None and running(relay.proc.pid)
    _host_still_works(host, ssh_options)



@pytest.mark.one_transport      # (this program's side of the relay: alike on both transports)
def test_a_logging_filter_of_the_program_that_raises_does_not_stop_the_relay_s_reader(host, ssh_options, capfd):
    """Found by an audit: the thread that logs the relay's records here died of a filter's exception; the
    relay's next records then filled the socket and its threads blocked on it: every start hung."""
    class Raises(logging.Filter):
        def filter(self, record):
            raise RuntimeError("the program's own filter fails")

    relay_log, failing = logging.getLogger("remoteproc.relay"), Raises()
    relay_log.addFilter(failing)
    try:
        for i in range(2):      # (a setup= line on stderr is a WARNING of the relay's)
            p = RemoteProcess(host, target=os.getpid, setup=["echo said-%d-%d >&2" % (os.getpid(), i)], **ssh_options)
            p.start()
            p.join(60)
            assert p.exitcode == 0
        relay_client.get(host).sync(10)      # (the records are in before the sync's answer)
        readers = [t for t in threading.enumerate() if t.name == "remoteproc-relay-reader"]
        assert readers and all(t.is_alive() for t in readers)
    finally:
        relay_log.removeFilter(failing)
    assert "the program's own filter fails" in capfd.readouterr().err
