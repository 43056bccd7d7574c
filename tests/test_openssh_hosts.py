"""transport="openssh" as users have hosts: jump hosts, config aliases, many hosts at once,
one ``ssh`` process per connection, and the idle close, against the namespace hosts' sshds.

The namespace hosts (``netns``, tests/netns.py) log in PLAIN_USER with ``netns.client_key``.
A test that must see a fresh connection uses settings of its own (a port, a known_hosts
copy), because processes with equal settings share one ``ssh`` process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

import cloudpickle
import pytest
from hostjobs import jump_alias_config, report_and_wait, run_where, write_config
from proctable import children_of, cmdline, eventually, gone
from remote_call import start

import remoteproc
from remoteproc import Pipe, RemoteProcess
from remoteproc.relay import client as relay_client
from remoteproc.ssh import openssh

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)

PLAIN_USER = "rpuser"
OPENSSH = {"transport": "openssh"}






def server_address(_item=None):
    time.sleep(0.2)
    return os.environ["SSH_CONNECTION"].split()[2]




def ssh_processes():
    """pid -> command line of the relay's ssh children."""
    relay = relay_client.current()
    if relay is None:
        return {}
    found = {}
    for pid in children_of(relay.proc.pid):
        try:
            if os.path.basename(os.readlink("/proc/%d/exe" % pid)) == "ssh":
                found[pid] = cmdline(pid)
        except OSError:
            pass
    return found


def ssh_processes_to(address):
    return [pid for pid, line in ssh_processes().items() if address in line]


@pytest.fixture
def ns_options(netns):
    """Options that reach the namespace hosts as PLAIN_USER through ssh, without any ssh_config."""
    return netns.options(ssh_config="none", **OPENSSH)




# -- jump hosts and aliases ----------------------------------------------------------------------

def test_proxy_jump_option_goes_through_the_jump_host(netns, ns_options):
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    connection, user = run_where(h2.spec(PLAIN_USER), proxy_jump=h1.spec(PLAIN_USER), **ns_options)
    client, _port, server, _sport = connection.split()
    assert (client, server) == (h1.address, h2.address), "host 2 must see host 1 as its client"
    assert user == PLAIN_USER


def test_proxy_jump_chain_from_options(netns, ns_options):
    h1, h2, h3 = (netns.hosts[n] for n in ("h1", "h2", "h3"))
    chain = "%s,%s" % (h1.spec(PLAIN_USER), h2.spec(PLAIN_USER))
    connection, _user = run_where(h3.spec(PLAIN_USER), proxy_jump=chain, **ns_options)
    client, _port, server, _sport = connection.split()
    assert (client, server) == (h2.address, h3.address), "the last hop is the client of host 3"


def test_proxy_jump_from_an_alias_file(netns, tmp_path):
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    config = jump_alias_config(tmp_path, netns, PLAIN_USER)
    target = openssh.resolve("target2", {"ssh_config": config, **OPENSSH})
    assert (target.hostname, target.username, target.proxy_jump) == (h2.address, PLAIN_USER, ["jump1"])
    assert target.display == "target2 (%s@%s via jump1)" % (PLAIN_USER, h2.address)
    connection, user = run_where("target2", ssh_config=config, allow_agent=False, **OPENSSH)
    client, _port, server, _sport = connection.split()
    assert (client, server) == (h1.address, h2.address)
    assert user == PLAIN_USER


def test_alias_with_another_host_name_user_and_port_from_the_config(netns, tmp_path):
    h1 = netns.hosts["h1"]
    config = write_config(tmp_path, f"""\
        Host rp-alias
            HostName {h1.address}
            Port 2222
            User {PLAIN_USER}
            IdentityFile {netns.client_key}
            IdentitiesOnly yes
            UserKnownHostsFile {netns.known_hosts}
        """)
    target = openssh.resolve("rp-alias", {"ssh_config": config, **OPENSSH})
    assert (target.hostname, target.port, target.username) == (h1.address, 2222, PLAIN_USER)
    assert target.original_host == "rp-alias"
    connection, user = run_where("rp-alias", ssh_config=config, allow_agent=False, idle_timeout=1, **OPENSSH)
    assert connection.split()[2:] == [h1.address, "2222"]
    assert user == PLAIN_USER


def test_match_exec_in_the_config_is_run_by_ssh(netns, tmp_path):
    """``Match exec`` decides with ssh's own evaluation (here: only when a marker file exists)."""
    h1 = netns.hosts["h1"]
    marker = tmp_path / "marker"
    config = write_config(tmp_path, f"""\
        Match host matched exec "test -e {marker}"
            HostName {h1.address}
        Host matched
            HostName 10.255.255.1
        Host *
            User {PLAIN_USER}
            IdentityFile {netns.client_key}
            IdentitiesOnly yes
            UserKnownHostsFile {netns.known_hosts}
        """)
    assert openssh.resolve("matched", {"ssh_config": config, **OPENSSH}).hostname == "10.255.255.1"
    marker.write_text("")
    assert openssh.resolve("matched", {"ssh_config": config, **OPENSSH}).hostname == h1.address
    connection, _user = run_where("matched", ssh_config=config, allow_agent=False, **OPENSSH)
    assert connection.split()[2] == h1.address


# -- many hosts at once --------------------------------------------------------------------------

def test_pool_over_every_namespace_host(netns, ns_options):
    specs = [h.spec(PLAIN_USER) for h in netns.hosts.values()]
    addresses = {h.address for h in netns.hosts.values()}
    with remoteproc.Pool(specs, processes_per_host=1, **ns_options) as pool:
        assert eventually(lambda: all(ssh_processes_to(a) for a in addresses), 60), \
            "not every host has its ssh process: %s" % ssh_processes()
        got = pool.map(server_address, range(16), chunksize=1)
    assert set(got) <= addresses and len(got) == 16


def test_executor_over_every_namespace_host(netns, ns_options):
    specs = [h.spec(PLAIN_USER) for h in netns.hosts.values()]
    addresses = {h.address for h in netns.hosts.values()}
    with remoteproc.Executor(specs, processes_per_host=1, **ns_options) as ex:
        got = list(ex.map(server_address, range(8)))
        assert eventually(lambda: all(ssh_processes_to(a) for a in addresses), 60), \
            "not every host has its ssh process: %s" % ssh_processes()
    assert set(got) <= addresses and len(got) == 8


def test_script_mode_through_ssh(netns, ns_options, scripts):
    h1 = netns.hosts["h1"]
    path = scripts("where.py", """
        import os
        from multiprocessing.connection import Connection
        Connection(int(os.environ["REMOTEPROC_FD"])).send(os.environ["SSH_CONNECTION"])
    """)
    script = remoteproc.run(h1.spec(PLAIN_USER), path, **ns_options)
    assert script.conn.poll(60)
    assert script.conn.recv().split()[2] == h1.address
    script.join(30)
    assert script.exitcode == 0


# -- one ssh process per connection --------------------------------------------------------------

def test_processes_with_equal_options_share_one_ssh_process(netns, ns_options, tmp_path):
    h4 = netns.hosts["h4"]
    known = str(tmp_path / "known_hosts")
    shutil.copy(netns.known_hosts, known)           # settings of this test only: a fresh connection
    options = dict(ns_options, known_hosts=known)
    other = dict(options, keepalive_interval=7)     # another option: another ssh process
    pairs = [Pipe() for _ in range(4)]
    procs = [RemoteProcess(h4.spec(PLAIN_USER), target=report_and_wait, args=(child,),
                           **(options if i < 3 else other)) for i, (_parent, child) in enumerate(pairs)]
    try:
        for p in procs:
            p.start()
        for _parent, child in pairs:
            child.close()
        assert all(parent.poll(60) for parent, _child in pairs)
        mine = [pid for pid, line in ssh_processes().items() if known in line]
        assert len(mine) == 2, "three processes share one ssh, the fourth has its own: %s" % ssh_processes()
        assert len(h4.established()) >= 2
    finally:
        for parent, _child in pairs:
            parent.close()
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4


def test_idle_connection_ends_its_ssh_process(netns, ns_options, tmp_path):
    h3 = netns.hosts["h3"]
    known = str(tmp_path / "known_hosts")
    shutil.copy(netns.known_hosts, known)           # settings of this test only: a fresh connection
    options = dict(ns_options, idle_timeout=1, known_hosts=known)
    p, parent, _first = start(h3.spec(PLAIN_USER), options, report_and_wait)
    pids = [pid for pid, line in ssh_processes().items() if known in line]
    assert len(pids) == 1, "not one ssh process for this connection: %s" % ssh_processes()
    parent.close()
    p.join(30)
    assert p.exitcode == 0
    assert gone(pids[0], 20), "the idle connection's ssh process did not end"


# -- the command line ----------------------------------------------------------------------------

def test_cli_run_with_transport_openssh(netns, scripts):
    h2 = netns.hosts["h2"]
    path = scripts("hello.py", """
        import os
        from multiprocessing.connection import Connection
        print("on", os.environ["SSH_CONNECTION"].split()[2], flush=True)
        Connection(int(os.environ["REMOTEPROC_FD"])).send("hello")
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "remoteproc", "run", "--transport", "openssh", "-F", "none",
                          "-i", netns.client_key, "--known-hosts", netns.known_hosts, h2.spec(PLAIN_USER), path],
                         capture_output=True, text=True, timeout=90, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "on %s" % h2.address in out.stdout.splitlines()
    assert '"hello"' in out.stdout


def test_ending_while_hosts_behind_a_silent_jump_host_connect_is_prompt_and_leaves_no_ssh(sshd, fresh):
    """The program ends (Ctrl-C, or its exit) while four hosts behind a jump host that takes the TCP
    connection but never says a word are still connecting: each ``ssh``'s close waited its own grace,
    one after another (a Pool of eight through a black-holed bastion exited 9.7 s after Ctrl-C), and the
    ``ssh -W`` each ran for the jump host stayed after the program, until its 30 s connect timeout."""
    import socket
    import threading

    me = sshd.users[0]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    jump = "%s@127.0.0.1:%d" % (me, silent.getsockname()[1])
    targets = ["%s@127.0.0.%d" % (me, i) for i in range(2, 6)]
    options = dict(sshd.options(), port=None, proxy_jump=jump, transport="openssh", ssh_config=False)

    def start_one(spec):
        with contextlib.suppress(remoteproc.RemoteProcessError):
            RemoteProcess(spec, target=os.getpid, **options).start()

    def forwarders():
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            line = cmdline(int(pid))
            if " -W " in line and any("127.0.0.%d]:22" % i in line or " 127.0.0.%d:22" % i in line
                                      for i in range(2, 6)):
                found.append(int(pid))
        return found

    threads = [threading.Thread(target=start_one, args=(spec,), daemon=True) for spec in targets]
    try:
        for t in threads:
            t.start()
        assert eventually(lambda: len(forwarders()) == len(targets), 15), forwarders()
        t0 = time.monotonic()
        relay_client.shutdown()
        took = time.monotonic() - t0
        for t in threads:
            t.join(15)
        assert took < 3.0, "the relay took %.1fs to end" % took
        assert eventually(lambda: not forwarders(), 3), "ssh -W left: %s" % forwarders()
    finally:
        silent.close()


def test_a_jump_host_that_never_answers_is_named_not_the_host_behind_it(sshd):
    """ssh's own connect timeout runs out first, waiting for a banner through the jump host's
    ``ssh -W`` (``Connection to UNKNOWN port 65535 timed out``): that read ``the connection timed
    out. Fix: check that the host is up``, naming neither the jump host nor a command to check it."""
    import socket

    me = sshd.users[0]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        jump = "%s@127.0.0.1:%d" % (me, silent.getsockname()[1])
        p = RemoteProcess("%s@127.0.0.2" % me, target=os.getpid, **dict(
            sshd.options(), port=None, proxy_jump=jump, transport="openssh", ssh_config=False, connect_timeout=2))
        with pytest.raises(remoteproc.ConnectError) as info:
            p.start()
    finally:
        silent.close()
    message = str(info.value)
    assert "no SSH banner came through the jump host" in message, message
    assert "@127.0.0.1` logs in" in message, message
