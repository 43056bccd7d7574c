"""transport="openssh": the advice in an error names what the user typed, as the paramiko transport's does.

Found by an audit (D4, D5):

- a ``ProxyJump`` that names a typo of an alias (``ProxyJump bastoin`` where ``Host bast`` exists)
  got no "did you mean 'bast'?": the hint was looked for with the target's name, not the jump host's;
- a ProxyCommand that ended before the banner was to be "run by hand" as written in the config
  (``ssh -W %h:%p gw``), ssh's tokens unexpanded: pasted into a shell, that fails; ssh expands
  them when it runs the command, from what ``ssh -G`` reports (host, port, user, the name given).

Against the suite's real OpenSSH sshd (conftest's ``sshd``); jump host and ProxyCommand fail
before they reach it, and a working alias beside them shows the config is right.
"""

from __future__ import annotations

import re
import sys

import pytest

from remoteproc import RemoteProcess
from remoteproc.errors import ConnectError
from remoteproc.ssh import openssh
from remoteproc.ssh.spec import parse_spec
from remoteproc.ssh.target import Target
from remoteproc.testing import current_user

pytestmark = pytest.mark.timeout(120)

#: what ssh says after a jump host's ``ssh -W`` (or a ProxyCommand) ended before the target's banner
ENDED = "kex_exchange_identification: Connection closed by remote host\nConnection closed by UNKNOWN port 65535"


def noop():
    pass


def _options(sshd):
    """The loopback server's key and known_hosts, under transport='openssh'; its port comes from the config."""
    options = {k: v for k, v in sshd.options(current_user()).items() if k not in ("port", "username")}
    return {**options, "transport": "openssh"}


def _config(tmp_path, sshd, text=""):
    """An ssh_config with the alias ``rpadv-bast`` for the loopback server, then ``text``."""
    config = tmp_path / "ssh_config"
    config.write_text("Host rpadv-bast\n    HostName 127.0.0.1\n    Port %d\n    User %s\n\n%s"
                      % (sshd.port, current_user(), text))
    return str(config)


def _start(host, config, sshd, **options):
    p = RemoteProcess(host, target=noop, ssh_config=config, **{**_options(sshd), **options})
    try:
        p.start()
    except ConnectError as exc:
        return exc
    p.join(30)
    pytest.fail("%s started (exit code %s)" % (host, p.exitcode))


# -- D4: a mistyped jump host --------------------------------------------------------------------------


def test_a_mistyped_jump_host_gets_the_did_you_mean_of_its_alias(sshd, tmp_path):
    """``ProxyJump rpadv-bastoin`` with ``Host rpadv-bast``: the name that did not resolve is the jump
    host's, and the hint names the alias it is a typo of (the target's name has no alias like it)."""
    config = _config(tmp_path, sshd, "Host target-behind\n    HostName 127.0.0.1\n    Port %d\n"
                                     "    ProxyJump rpadv-bastoin\n" % sshd.port)
    p = RemoteProcess("rpadv-bast", target=noop, ssh_config=config, **_options(sshd))
    p.start()                               # (the alias works: the config is right but for the typo)
    p.join(60)
    assert p.exitcode == 0
    error = _start("target-behind", config, sshd)
    message = str(error)
    assert type(error) is ConnectError, message
    assert "at the jump host (rpadv-bastoin): the host name does not resolve" in message, message
    # the paramiko transport's words (connect.py: typo_hint of the jump host's Target)
    assert "Fix: check the name (did you mean 'rpadv-bast'?), or its HostName in %s" % config in message, message
    # ... and a mistyped target still gets its own
    message = str(_start("rpadv-bats", config, sshd))
    assert "(did you mean 'rpadv-bast'?)" in message and "jump host" not in message, message


def _target(spec, ssh_config, proxy_jump=""):
    """What resolve() gives, without asking ssh -G."""
    user, host, port = parse_spec(spec)
    return Target(spec=spec, hostname=host, port=port or 22, username=user or "", original_host=host,
                  proxy_jump=proxy_jump.split(",") if proxy_jump else [], options={"ssh_config": ssh_config},
                  transport="openssh")


def test_the_hint_is_for_the_hop_ssh_names(tmp_path):
    """Through two jump hosts, the hop whose name did not resolve is the one the hint is about; a hop
    whose HostName did not resolve (another name than the one written) is no typo of an alias."""
    config = tmp_path / "ssh_config"
    config.write_text("Host bast gateway\n    User bob\nHost farhop\n    HostName gw.invalid\n")
    said = "ssh: Could not resolve hostname %s: Name or service not known\n" + ENDED
    error = str(openssh.failure(_target("alice@node1", str(config), "bob@gatewy,bastoin"), 255, said % "bastoin"))
    assert "at the jump host (bob@gatewy,bastoin)" in error and "(did you mean 'bast'?)" in error, error
    error = str(openssh.failure(_target("alice@node1", str(config), "bob@gatewy,bastoin"), 255, said % "gatewy"))
    assert "(did you mean 'gateway'?)" in error and "'bast'" not in error, error
    error = str(openssh.failure(_target("alice@node1", str(config), "farhop"), 255, said % "gw.invalid"))
    assert "did you mean" not in error, error


# -- D5: a ProxyCommand that fails ---------------------------------------------------------------------


@pytest.mark.parametrize("given", ["config", "option"])
def test_a_failed_proxy_command_is_to_be_run_by_hand_with_its_tokens_expanded(sshd, tmp_path, given):
    """"run it by hand (ssh -W %h:%p gw)" does not run in a shell: the command as ssh ran it does."""
    command = "ssh -F none -o BatchMode=yes -W %h:%p %r@rpadv-nosuch.invalid # %n %%"
    text = "Host rpadv-pc\n    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (sshd.port, current_user())
    if given == "config":
        text += "    ProxyCommand %s\n" % command
    config = _config(tmp_path, sshd, text)
    error = _start("rpadv-pc", config, sshd, **({"proxy_command": command} if given == "option" else {}))
    message = str(error)
    assert type(error) is ConnectError and not error.turned_away, message
    ran = "ssh -F none -o BatchMode=yes -W 127.0.0.1:%d %s@rpadv-nosuch.invalid # rpadv-pc %%" % (
        sshd.port, current_user())
    assert "the ProxyCommand ended before the server's SSH banner came through it. Fix: run it by hand " \
           "(%s): it must connect to 127.0.0.1:%d" % (ran, sshd.port) in message, message
    assert not re.search(r"%[hpnr]", message), message


def test_a_proxy_command_exiting_1_is_named_expanded(sshd, tmp_path):
    """A ProxyCommand that says why and exits 1: its words, and the command as ssh ran it."""
    script = "%s -c \"import sys; sys.exit('no way to ' + sys.argv[1])\"" % sys.executable
    config = _config(tmp_path, sshd, "Host rpadv-pc\n    HostName 127.0.0.1\n    Port %d\n"
                                     "    ProxyCommand %s %%h:%%p\n" % (sshd.port, script))
    message = str(_start("rpadv-pc", config, sshd))
    assert "no way to 127.0.0.1:%d" % sshd.port in message, message        # (its own words)
    assert "run it by hand (%s 127.0.0.1:%d)" % (script, sshd.port) in message, message
    assert "%h" not in message and "%p" not in message, message


def test_a_token_ssh_does_not_expand_there_leaves_the_command_as_written():
    """ssh expands %h %k %n %p %r %% in a ProxyCommand, nothing else: with another, the command as written."""
    target = _target("alice@node1:2222", False)
    target.proxy_command = "nc %h %p %d"
    error = str(openssh.failure(target, 255, "nc: oops\n" + ENDED))
    assert "run it by hand (nc %h %p %d)" in error, error
    target.proxy_command = "connect-via %r@%n:%p %k %%h"
    error = str(openssh.failure(target, 255, "connect-via: oops\n" + ENDED))
    assert "run it by hand (connect-via alice@node1:2222 node1 %h): it must connect to node1:2222" in error, error


def test_a_refused_configuration_file_s_check_command_reads_that_file(tmp_path):
    """Found by an audit: with ssh_config= naming a file that is not there, the fix said
    "`ssh -G HOST` shows the same", which reads another configuration (and shows no error)."""
    from remoteproc.errors import ConfigError

    missing = tmp_path / "no such dir" / "ssh_config"
    with pytest.raises(ConfigError) as info:
        openssh.resolve("somehost", {"ssh_config": str(missing), "transport": "openssh"})
    text = str(info.value)
    assert "`ssh -G -F '%s' somehost` shows the same" % missing in text, text
    with pytest.raises(ConfigError) as info:       # (the check it gives fails the same way)
        (tmp_path / "bad_config").write_text("Host somehost\n    NoSuchKeyword yes\n")
        openssh.resolve("somehost", {"ssh_config": str(tmp_path / "bad_config"), "transport": "openssh"})
    assert "`ssh -G -F %s somehost` shows the same" % (tmp_path / "bad_config") in str(info.value), info.value
