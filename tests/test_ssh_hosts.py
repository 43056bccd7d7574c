"""SSH as users have it, end to end against real OpenSSH servers.

Most tests run against hosts of their own: network namespaces with an sshd each
(the ``netns`` fixture, tests/netns.py).  The host-facing ones (``host`` and
``ssh_options``) also run against every ``--remote-host``.

Processes share a connection when their connection settings are equal, so a
test that must see a fresh connection either uses a host and port no other test
uses (h2:2222, h3:2222, h4) or settings of its own (a known_hosts file of its own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest
from hostjobs import jump_alias_config, report_and_wait, run_where, where, write_config
from proctable import cmdline, descendants, eventually, gone, threads

import remoteproc
from remoteproc import Pipe, RemoteProcess, ssh
from remoteproc.relay import client as relay_client
from remoteproc.ssh.connect import connect

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

PLAIN_USER = "rpuser"


# -- targets (shipped by value) -------------------------------------------------------





def sleeper(conn):
    conn.send(os.getpid())
    time.sleep(60)


# -- helpers ---------------------------------------------------------------------------



def relay_pid() -> int:
    return relay_client.get().proc.pid


def relay_threads() -> int:
    return threads(relay_pid())


def relay_connections(address: str, port: int) -> int:
    """The relay process's established TCP connections to address:port."""
    done = subprocess.run(["ss", "-Htnp", "state", "established", "( dport = :%d )" % port],
                          capture_output=True, text=True, timeout=10, check=True)
    mark = "pid=%d," % relay_pid()
    return sum(1 for line in done.stdout.splitlines() if mark in line and " %s:%d " % (address, port) in line + " ")


def keygen(path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
                   check=True, timeout=30)
    return str(path)


def ssh_fingerprint(public_line: str, tmp_path) -> str:
    """The SHA256 fingerprint as OpenSSH's ssh-keygen computes it."""
    path = tmp_path / "fp.pub"
    path.write_text(public_line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


@pytest.fixture
def ns_options(netns):
    """Options that reach the namespace hosts as PLAIN_USER, without any ssh_config."""
    return netns.options()




# -- config ---------------------------------------------------------------------------

def test_config_alias_with_user_port_and_identity_file(netns, tmp_path):
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
    connection, user = run_where("rp-alias", ssh_config=config, allow_agent=False)
    assert connection.split()[2:] == [h1.address, "2222"]
    assert user == PLAIN_USER


def test_proxy_jump_goes_through_the_jump_host(netns, tmp_path):
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    config = jump_alias_config(tmp_path, netns, PLAIN_USER)
    connection, _user = run_where("target2", ssh_config=config, allow_agent=False)
    client, _port, server, _sport = connection.split()
    assert (client, server) == (h1.address, h2.address), "host 2 must see host 1 as its client"


def test_proxy_command_runs_with_the_shell(netns, tmp_path):
    """ProxyCommand with %h/%p, run by the shell (as ssh does): here OpenSSH's own ``ssh -W`` through h1."""
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    proxy = ("ssh -F none -i %s -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes "
             "-W %%h:%%p %s 2>/dev/null" % (netns.client_key, netns.known_hosts, h1.spec(PLAIN_USER)))
    config = write_config(tmp_path, f"""\
        Host via-command
            HostName {h2.address}
            User {PLAIN_USER}
            ProxyCommand {proxy}
            IdentityFile {netns.client_key}
            UserKnownHostsFile {netns.known_hosts}
        """)
    connection, _user = run_where("via-command", ssh_config=config, allow_agent=False)
    client, _port, server, _sport = connection.split()
    assert (client, server) == (h1.address, h2.address)


NC_LIKE = """\
import os, select, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)
reading = [0, s]
while True:
    ready = select.select(reading, [], [], 30)[0]
    if not ready:
        sys.exit(1)
    for r in ready:
        data = os.read(0, 65536) if r == 0 else s.recv(65536)
        if r == 0 and not data:
            reading.remove(0)          # as nc without -N or -q: the end of its input does not end it
        elif not data:
            sys.exit(0)
        elif r == 0:
            s.sendall(data)
        else:
            os.write(1, data)
"""


def test_a_proxy_command_whose_nc_outlives_its_input_leaves_nothing_behind(sshd, alias, scripts, tmp_path):
    """``ProxyCommand ssh bastion nc %h %p``: ``nc`` does not end when its input does, so the target
    learns of our leaving only from SSH_MSG_DISCONNECT, as ``ssh`` sends it; without it the target's
    sshd session and the bastion's ``nc`` stayed for as long as the target lived (with sshd's default
    ``ClientAliveInterval 0``, as the loopback sshd, both bastion and target here, runs)."""
    config_file, bastion = alias
    nc = scripts("nc_like.py", NC_LIKE)
    proxy = "ssh -F %s %s /usr/bin/python3 %s %%h %%p" % (config_file, bastion, nc)
    config = write_config(tmp_path, f"""\
        Host via-nc
            HostName {sshd.host}
            Port {sshd.port}
            ProxyCommand {proxy}
        """)

    def bastion_nc():
        return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if nc in cmdline(pid)]

    options = dict(sshd.options(), ssh_config=config, allow_agent=False, idle_timeout=1, keepalive_interval=1)
    connection, _user = run_where("via-nc", **options)
    assert connection.split()[2] == sshd.host
    assert bastion_nc(), "the nc on the bastion should carry the connection"
    # the connection closes when idle (1 s): the target then ends its session, and so the nc ends
    # (without the disconnect it stays for good; 10 s was missed once in a loaded full run)
    assert eventually(lambda: not bastion_nc(), 30), "the bastion's nc (and the target's session) stayed"


def test_proxy_jump_chain_from_options(netns, ns_options):
    h1, h2, h3 = (netns.hosts[n] for n in ("h1", "h2", "h3"))
    chain = "%s,%s" % (h1.spec(PLAIN_USER), h2.spec(PLAIN_USER))
    connection, _user = run_where(h3.spec(PLAIN_USER), proxy_jump=chain, **ns_options)
    client, _port, server, _sport = connection.split()
    assert (client, server) == (h2.address, h3.address), "the last hop is the client of host 3"


def test_the_cli_reaches_a_host_through_the_jump_hosts_of_its_j_option(netns, scripts):
    """``remoteproc run -J JUMP HOST SCRIPT``, as ``ssh -J``: host 3 sees host 2 as its client."""
    h1, h2, h3 = (netns.hosts[n] for n in ("h1", "h2", "h3"))
    script = scripts("where.py", "import os\nprint(os.environ['SSH_CONNECTION'])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("SSH_AUTH_SOCK", None)
    out = subprocess.run([sys.executable, "-m", "remoteproc", "run", "-J", "%s,%s" % (h1.spec(PLAIN_USER),
                          h2.spec(PLAIN_USER)), "-i", netns.client_key, "--known-hosts", netns.known_hosts,
                          h3.spec(PLAIN_USER), script], capture_output=True, text=True, timeout=60, env=env,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    client, _port, server, _sport = out.stdout.split()
    assert (client, server) == (h2.address, h3.address)


def test_default_config_include_match_default_key_and_hashed_known_hosts(netns, tmp_path):
    """A user's own ~/.ssh as ssh reads it (HOME points at a directory of ours, in a subprocess)."""
    h1 = netns.hosts["h1"]
    home = tmp_path / "home"
    dot = home / ".ssh"
    (dot / "config.d").mkdir(parents=True)
    (dot / "config").write_text(textwrap.dedent(f"""\
        Include config.d/*.conf
        Match host {h1.address.rsplit('.', 1)[0]}.* user {PLAIN_USER}
            Port 2222
        """))
    (dot / "config.d" / "10-hosts.conf").write_text(f"Host inc-h1\n    HostName {h1.address}\n    User {PLAIN_USER}\n")
    shutil.copy(netns.client_key, dot / "id_ed25519")
    os.chmod(dot / "id_ed25519", 0o600)
    (dot / "known_hosts").write_text(h1.known_hosts_line(2222))
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(dot / "known_hosts")], check=True, timeout=30,
                   capture_output=True)
    assert (dot / "known_hosts").read_text().startswith("|1|")
    script = textwrap.dedent("""\
        import os, sys
        from remoteproc import Pipe, RemoteProcess

        def where(conn):
            conn.send(os.environ.get("SSH_CONNECTION", ""))

        parent, child = Pipe()
        p = RemoteProcess("inc-h1", target=where, args=(child,))
        p.start()
        child.close()
        print("SSH_CONNECTION=" + parent.recv(), flush=True)
        p.join(30)
        sys.exit(p.exitcode)
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "COVERAGE_PROCESS_START")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(remoteproc.__file__))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=45)
    assert done.returncode == 0, done.stderr
    line = [x for x in done.stdout.splitlines() if x.startswith("SSH_CONNECTION=")][0]
    assert line.split()[2:] == [h1.address, "2222"]


def test_keys_from_ssh_agent(netns, tmp_path):
    """IdentityAgent names the agent; an IdentityFile whose private half only the agent holds is used."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert eventually(sock.exists, 10)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", netns.client_key], env=env, check=True, timeout=30, capture_output=True)
        public_only = tmp_path / "agent_key.pub"
        shutil.copy(netns.client_key + ".pub", public_only)
        h1 = netns.hosts["h1"]
        config = write_config(tmp_path, f"""\
            Host agent-h1
                HostName {h1.address}
                User {PLAIN_USER}
                IdentityAgent {sock}
                IdentityFile {public_only}
                IdentitiesOnly yes
                UserKnownHostsFile {netns.known_hosts}
            """)
        connection, user = run_where("agent-h1", ssh_config=config, look_for_keys=False)
        assert connection.split()[2] == h1.address and user == PLAIN_USER
    finally:
        agent.terminate()
        agent.wait(10)


# -- host keys ---------------------------------------------------------------------------

def test_unknown_host_key_is_refused_with_fingerprint_and_fix(netns, ns_options, tmp_path):
    h1 = netns.hosts["h1"]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    p = RemoteProcess(h1.spec(PLAIN_USER), target=where, args=(None,), **dict(ns_options, known_hosts=str(empty)))
    with pytest.raises(remoteproc.HostKeyError) as info:
        p.start()
    text = str(info.value)
    assert h1.address in text and "ssh-ed25519" in text
    assert ssh_fingerprint(h1.host_public, tmp_path) in text
    assert "accept-new" in text and "ssh-keyscan" in text
    assert empty.read_text() == "", "a refused key must not be recorded"


@pytest.mark.parametrize("policy", ["reject", "accept-new"])
def test_changed_host_key_is_always_refused(netns, ns_options, tmp_path, policy):
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    wrong = tmp_path / "known_hosts"
    wrong.write_text("%s %s\n" % (h1.address, h2.host_public))     # h2's key under h1's name
    options = dict(ns_options, known_hosts=str(wrong), host_key_policy=policy)
    p = RemoteProcess(h1.spec(PLAIN_USER), target=where, args=(None,), **options)
    with pytest.raises(remoteproc.HostKeyError) as info:
        p.start()
    text = str(info.value)
    assert "CHANGED" in text and h1.address in text and "ssh-keygen -R" in text
    assert wrong.read_text() == "%s %s\n" % (h1.address, h2.host_public)


def test_accept_new_records_the_key_hashed_as_ssh_does(netns, ns_options, tmp_path):
    h1 = netns.hosts["h1"]
    known = tmp_path / "known_hosts"
    config = write_config(tmp_path, "Host *\n    HashKnownHosts yes\n")
    options = dict(ns_options, known_hosts=str(known), host_key_policy="accept-new", ssh_config=config)
    connection, _user = run_where(h1.spec(PLAIN_USER), **options)
    assert connection.split()[2] == h1.address
    lines = known.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("|1|")
    assert lines[0].split()[1:] == h1.host_public.split()
    found = subprocess.run(["ssh-keygen", "-F", h1.address, "-f", str(known)], capture_output=True, text=True,
                           timeout=30)
    assert found.returncode == 0 and h1.host_public.split()[1] in found.stdout, "OpenSSH must find the entry"
    # and the recorded key is now trusted under the strict policy
    target = ssh.resolve(h1.spec(PLAIN_USER), dict(ns_options, known_hosts=str(known)))
    conn = connect(target)
    conn.close()


# -- authentication and reachability ------------------------------------------------------

def test_keys_are_offered_in_turn_and_each_refusal_is_reported(sshd, tmp_path):
    options = dict(sshd.options(), ssh_config=False, allow_agent=False, look_for_keys=False)
    wrong = keygen(tmp_path / "wrong_key")
    missing = str(tmp_path / "no_such_key")
    with pytest.raises(remoteproc.AuthenticationError) as info:
        connect(ssh.resolve(sshd.spec(), dict(options, key_filename=[missing, wrong])))
    text = str(info.value)
    assert "the server accepts publickey" in text
    assert "tried: %s (no such file); %s (refused)." % (missing, wrong) in text
    assert "Fix: check key_filename: %s does not exist" % missing in text      # (a mistyped path, likeliest)
    # the wrong key is refused, then the right one is accepted
    conn = connect(ssh.resolve(sshd.spec(), dict(options, key_filename=[wrong, sshd.client_key])))
    try:
        assert conn.active and conn.transport.is_authenticated()
    finally:
        conn.close()


def test_an_encrypted_key_opens_with_its_passphrase_and_says_so_without(sshd, tmp_path):
    options = dict(sshd.options(), ssh_config=False, allow_agent=False, look_for_keys=False)
    locked = str(tmp_path / "locked_key")
    shutil.copyfile(sshd.client_key, locked)
    os.chmod(locked, 0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "sesame", "-f", locked], check=True, timeout=30,
                   capture_output=True)
    for passphrase, says in [(None, "(encrypted: pass passphrase= or add it to ssh-agent)"),
                             ("wrong-one", "(encrypted, and the passphrase given is not its passphrase")]:
        with pytest.raises(remoteproc.AuthenticationError) as info:
            connect(ssh.resolve(sshd.spec(), dict(options, key_filename=locked, passphrase=passphrase)))
        assert "tried: %s %s" % (locked, says) in str(info.value)
    # the passphrase opens it; an unencrypted key given with it still loads (it is not asked for one)
    for key in (locked, sshd.client_key):
        conn = connect(ssh.resolve(sshd.spec(), dict(options, key_filename=key, passphrase="sesame")))
        try:
            assert conn.transport.is_authenticated()
        finally:
            conn.close()


def test_wrong_key_is_refused(netns, ns_options, tmp_path):
    h1 = netns.hosts["h1"]
    wrong = keygen(tmp_path / "wrong_key")
    p = RemoteProcess(h1.spec(PLAIN_USER), target=where, args=(None,), **dict(ns_options, key_filename=wrong))
    with pytest.raises(remoteproc.AuthenticationError) as info:
        p.start()
    text = str(info.value)
    assert h1.address in text and wrong in text and "authorized_keys" in text


def test_address_without_sshd_fails_within_the_connect_timeout(netns, ns_options):
    spec = "%s@%s" % (PLAIN_USER, netns.unused_address)
    p = RemoteProcess(spec, target=where, args=(None,), **dict(ns_options, connect_timeout=2))
    started = time.monotonic()
    with pytest.raises(remoteproc.ConnectError) as info:
        p.start()
    elapsed = time.monotonic() - started
    assert netns.unused_address in str(info.value)
    assert elapsed < 15, "took %.1fs with connect_timeout=2" % elapsed


def test_closed_port_is_refused_at_once(netns, ns_options):
    h1 = netns.hosts["h1"]
    p = RemoteProcess(h1.spec(PLAIN_USER, 23), target=where, args=(None,), **ns_options)
    with pytest.raises(remoteproc.ConnectError) as info:
        p.start()
    assert "refused" in str(info.value).lower() and ":23" in str(info.value)


def test_jump_host_that_cannot_reach_the_target(netns, ns_options):
    """A failure after the jump connection was opened releases (and closes) the jump connection."""
    h1 = netns.hosts["h1"]
    spec = "%s@%s" % (PLAIN_USER, netns.unused_address)
    target = ssh.resolve(spec, dict(ns_options, proxy_jump=h1.spec(PLAIN_USER), connect_timeout=2))
    pool = ssh.ConnectionPool()
    with pytest.raises(remoteproc.ConnectError) as info:
        pool.acquire(target)
    assert "jump host" in str(info.value) and netns.unused_address in str(info.value)
    assert pool.count() == 0 and pool._entries == {}


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_jump_host_that_may_not_forward_says_so_and_names_its_sshd_rules(sshd, tmp_path, transport):
    """A jump host whose sshd refuses to forward (here a ``restrict`` key in its authorized_keys; as
    well ``AllowTcpForwarding no`` or ``PermitOpen``) is no matter of the target's address or sshd,
    which the message used to send the user to check; with openssh its words were ``ssh failed``, or
    for a refused connection ``nothing listens on that port``, read as the jump host's own port."""
    me = sshd.users[0]
    key = keygen(tmp_path / "restricted")
    keys = os.path.join(sshd.workdir, "authorized_keys", me)
    with open(keys) as f:
        before = f.read()
    with open(key + ".pub") as f:
        restricted = "restrict " + f.read()
    try:
        with open(keys, "w") as f:
            f.write(restricted + before)
        target = "%s@127.0.0.9:2299" % me           # never reached: the jump host refuses first
        p = RemoteProcess(target, target=os.getpid, proxy_jump=sshd.spec(), key_filename=key, ssh_config=False,
                          known_hosts=sshd.known_hosts, allow_agent=False, look_for_keys=False, transport=transport)
        with pytest.raises(remoteproc.ConnectError) as info:
            p.start()
    finally:
        with open(keys, "w") as f:
            f.write(before)
    message = str(info.value)
    assert message.startswith(target), message
    assert "refused to forward to 127.0.0.9:2299" in message and "AllowTcpForwarding" in message, message
    assert "sshd runs there" not in message and "nothing listens" not in message, message


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_lost_jump_host_is_named_as_the_cause(netns, ns_options, fresh, transport):
    """The jump host's sshd gone: the process behind it ends with an error that names the jump
    host as what to check; it said ``the SSH connection closed`` (paramiko) or ssh's last words,
    ``client_loop: send disconnect: Broken pipe`` (openssh), as if the target had gone."""
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    parent, child = Pipe()
    p = RemoteProcess(h2.spec(PLAIN_USER, 2222), target=sleeper, args=(child,), proxy_jump=h1.spec(PLAIN_USER),
                      transport=transport, **ns_options)
    p.start()
    assert parent.poll(20)
    parent.recv()
    for pid in descendants(h1.proc.pid):        # the jump host's sessions (a fresh relay: only ours)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    p.join(20)
    assert p.exitcode == remoteproc.CONNECTION_LOST
    message = str(p.connection_error)
    assert message.startswith(h2.spec(PLAIN_USER, 2222)), message
    assert "the connection to the jump host" in message and "Check the jump host" in message, message
    assert h1.address in message or "(%s)" % h1.spec(PLAIN_USER) in message, message


def test_hosts_behind_a_jump_host_that_does_not_answer_fail_together(netns, ns_options):
    """Eight hosts behind one unreachable jump host, started at once: each waited for the shared jump
    connection being tried, then tried it again itself, so the last failed after 8 x the connect
    timeout (24.7 s for a Pool of eight through a bastion whose link was down, 3 s each); those
    waiting now take that attempt's error."""
    import threading

    jump = "%s@%s" % (PLAIN_USER, netns.unused_address)
    targets = [h.spec(PLAIN_USER, port) for h in netns.hosts.values() for port in (22, 2222)]
    errors: dict[str, BaseException] = {}

    def start(spec):
        p = RemoteProcess(spec, target=os.getpid, **dict(ns_options, proxy_jump=jump, connect_timeout=1))
        try:
            p.start()
        except remoteproc.RemoteProcessError as exc:
            errors[spec] = exc

    t0 = time.monotonic()
    threads = [threading.Thread(target=start, args=(spec,)) for spec in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.monotonic() - t0
    assert sorted(errors) == sorted(targets)
    for spec, exc in errors.items():
        assert isinstance(exc, remoteproc.ConnectError), exc
        assert str(exc).startswith(spec) and "at the jump host" in str(exc) and netns.unused_address in str(exc), exc
    assert took < 0.5 * len(targets), "%d hosts behind the jump host failed in %.1fs" % (len(targets), took)


def test_a_failure_at_the_jump_host_says_so_and_names_the_target(netns, ns_options):
    """The jump's own message names only the jump: the error says where it happened and for
    which host, whether the jump comes from the pool or from a direct connect()."""
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    target = ssh.resolve(h2.spec(PLAIN_USER), dict(ns_options, proxy_jump=h1.spec("nosuchuser")))
    pool = ssh.ConnectionPool()
    for opener in (pool.acquire, connect):
        with pytest.raises(remoteproc.AuthenticationError) as info:
            opener(target)
        text = str(info.value)
        assert text.startswith(target.display + ": at the jump host: nosuchuser@"), text
        assert info.value.host == target.display
    assert pool.count() == 0 and pool._entries == {}


def test_pool_shares_and_closes_connections(netns, ns_options):
    h1, h2 = netns.hosts["h1"], netns.hosts["h2"]
    pool = ssh.ConnectionPool()
    via = ssh.resolve(h2.spec(PLAIN_USER), dict(ns_options, proxy_jump=h1.spec(PLAIN_USER)))
    direct = ssh.resolve(h1.spec(PLAIN_USER), ns_options)
    a = pool.acquire(via)
    b = pool.acquire(via)
    c = pool.acquire(direct)
    assert a is b and c is a.jump, "the jump connection is the pooled connection to h1"
    assert pool.count() == 2
    pool.release(a)
    pool.release(c)
    assert a.active and c.active
    pool.release(b)
    assert not a.active and not c.active and pool.count() == 0


# -- remote interpreter ---------------------------------------------------------------------

def test_python_pointing_nowhere(host, ssh_options):
    p = RemoteProcess(host, target=where, args=(None,), python="/nonexistent/python3", **ssh_options)
    with pytest.raises(remoteproc.BootstrapError) as info:
        p.start()
    text = str(info.value)
    assert "/nonexistent/python3" in text and "127" in text and "python=" in text


def _other_minor_python():
    """(path, "3.N") of a Python 3 of another minor version than this one, or None."""
    import glob
    import re

    mine = "%d.%d" % sys.version_info[:2]
    for path in sorted(glob.glob("/usr/bin/python3.*") + glob.glob("/root/.pyenv/versions/3.*/bin/python3.*")):
        m = re.fullmatch(r"python(3\.\d+)", os.path.basename(path))
        if m and m.group(1) != mine and os.access(path, os.X_OK):
            return path, m.group(1)
    return None


def test_python_of_another_minor_version_runs_in_spawn_mode(sshd):
    import spawn_targets

    found = _other_minor_python()
    if found is None:
        pytest.skip("no Python 3.x of another minor version on this machine (tests/test_python_versions.py "
                    "covers spawn mode with pypy3)")
    path, version = found
    me = sshd.users[0]
    parent, child = remoteproc.Pipe()
    p = RemoteProcess(sshd.spec(me), target=spawn_targets.where, args=(child,), python=path, **sshd.options(me))
    p.start()
    child.close()
    got = parent.recv()
    p.join(30)
    assert p.exitcode == 0 and p._popen.mode == "spawn" and got[3] == path


def test_python_too_old(netns, ns_options):
    """A wrapper that makes the host's python3 report 3.6: the stub refuses it with its own words."""
    fake = os.path.join(netns.workdir, "oldpython")
    with open(fake, "w") as f:
        f.write("#!/usr/bin/python3\nimport sys\nsys.version_info = (3, 6, 15, 'final', 0)\nstub = sys.argv[2]\n"
                "sys.argv = ['-c'] + sys.argv[3:]\nexec(stub)\n")
    os.chmod(fake, 0o755)
    h1 = netns.hosts["h1"]
    p = RemoteProcess(h1.spec(PLAIN_USER), target=where, args=(None,), python=fake, **ns_options)
    with pytest.raises(remoteproc.BootstrapError) as info:
        p.start()
    text = str(info.value)
    assert "is cpython Python 3.6.15" in text and "too old" in text and "3.8" in text
    # python= turned the search off: the fix is another python=, not an install
    assert "was found" not in text and "Fix: pass python= with the path of a Python 3.8+" in text


# -- typed errors leave nothing behind ------------------------------------------------------

@pytest.mark.timeout(90)
def test_failures_leave_nothing_behind(host, ssh_options, is_loopback, sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    wrong = keygen(tmp_path / "wrong_key")
    cases = [
        (remoteproc.HostKeyError, dict(ssh_options, known_hosts=str(empty))),
        # a user the host does not have (a wrong key alone would not do: like ``ssh -i``, key_filename
        # is tried first, and a --remote-host's own IdentityFile after it)
        (remoteproc.AuthenticationError, dict(ssh_options, username="rpnosuchuser", key_filename=wrong,
                                             allow_agent=False, look_for_keys=False)),
        (remoteproc.BootstrapError, dict(ssh_options, python="/nonexistent/python3")),
    ]
    RemoteProcess(host, target=where, args=(None,), **ssh_options)     # the relay runs from here on
    target = ssh.resolve(host, ssh_options)
    threads = relay_threads()
    tcp = relay_connections(target.hostname, target.port)
    sessions = len(descendants(sshd.pid)) if is_loopback else None
    for error, options in cases:
        p = RemoteProcess(host, target=where, args=(None,), **options)
        with pytest.raises(error) as info:
            p.start()
        assert "@" in str(info.value) and info.value.host
        assert eventually(lambda: relay_threads() <= threads, 10), "a thread was left in the relay"
        assert eventually(lambda: relay_connections(target.hostname, target.port) <= tcp, 10), \
            "a connection was left open"
        if is_loopback:
            assert eventually(lambda: len(descendants(sshd.pid)) <= sessions, 10), "a remote process was left"


# -- one connection, idle close, cipher -------------------------------------------------------

@pytest.mark.timeout(90)
def test_fifty_processes_share_one_tcp_connection(netns, ns_options):
    h2 = netns.hosts["h2"]
    spec = h2.spec(PLAIN_USER, 2222)        # this host and port are used by this test only
    pairs = [Pipe() for _ in range(50)]
    procs = [RemoteProcess(spec, target=report_and_wait, args=(child,), **ns_options) for _parent, child in pairs]
    started = time.monotonic()
    try:
        for p in procs:
            p.start()
        for _parent, child in pairs:
            child.close()
        pids = [parent.recv() for parent, _child in pairs if parent.poll(30)]
        print("50 processes started and answered in %.2f s" % (time.monotonic() - started))
        assert len(set(pids)) == 50 and all(p.is_alive() for p in procs)
        assert len(h2.established(2222)) == 1, "the server must see one TCP connection"
        assert relay_connections(h2.address, 2222) == 1
    finally:
        for parent, _child in pairs:
            parent.close()
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0] * 50


def test_idle_connection_is_closed(netns, ns_options):
    h3 = netns.hosts["h3"]
    spec = h3.spec(PLAIN_USER, 2222)        # used by this test only
    connection, _user = run_where(spec, idle_timeout=1, keepalive_interval=1, **ns_options)
    assert connection.split()[2:] == [h3.address, "2222"]
    assert eventually(lambda: not h3.established(2222), 15), "the idle connection was not closed"
    assert relay_connections(h3.address, 2222) == 0


def test_negotiated_cipher_is_aes_gcm(host, ssh_options):
    target = ssh.resolve(host, ssh_options)
    started = time.perf_counter()
    conn = connect(target)
    elapsed = time.perf_counter() - started
    try:
        transport = conn.transport
        offered = transport.get_security_options().ciphers
        assert offered[:2] == ssh.PREFERRED_CIPHERS
        assert transport.remote_cipher in ssh.PREFERRED_CIPHERS
        assert transport.local_cipher == transport.remote_cipher
        print("connect+auth %.0f ms, cipher %s, host key %s" % (elapsed * 1e3, transport.remote_cipher,
                                                               transport.host_key_type))
    finally:
        conn.close()
    assert not conn.active and not conn.transport.is_alive()


# -- a host that vanishes ------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_link_cut_fails_the_processes_within_the_keepalive_bound(netns, ns_options):
    h4 = netns.hosts["h4"]                  # used by this test only
    parent, child = Pipe()
    p = RemoteProcess(h4.spec(PLAIN_USER), target=sleeper, args=(child,), keepalive_interval=1, keepalive_count=2,
                      **ns_options)
    p.start()
    child.close()
    assert parent.poll(30)
    pid = parent.recv()
    try:
        h4.set_link(False)
        cut = time.monotonic()
        p.join(30)
        detected = time.monotonic() - cut
        assert p.exitcode == remoteproc.CONNECTION_LOST, "join() did not return within 30 s"
        assert isinstance(p.connection_error, remoteproc.ConnectionLostError)
        assert h4.address in str(p.connection_error)
        print("link cut noticed after %.1f s (bound 1 s * (2 + 1))" % detected)
        assert detected < 30
        assert parent.poll(10)
        with pytest.raises(EOFError):
            parent.recv()
    finally:
        h4.set_link(True)
    # once the link is back, sshd learns that its client is gone, and the agent kills its child
    assert gone(pid, 30), "the remote child outlived its connection"

