"""The command line's own words: an option's unquoted value in a message becomes ``FLAG VALUE``
(a path was glued to the flag: ``--python/usr/bin/python2``, ``-i KEY/tmp/k``), and an unknown
option after the command is refused with that command's usage, not the top level's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from remoteproc import bootstrap, cli

pytestmark = pytest.mark.timeout(90)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def remoteproc_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remoteproc", *args], capture_output=True, text=True,
                          timeout=60, env=ENV, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("said,typed", [
    ("key_filename=/tmp/k is unreadable", "-i /tmp/k is unreadable"),
    ("ssh_config=./cfg missing", "-F ./cfg missing"),
    ("python=~/venv/bin/python3 too old", "--python ~/venv/bin/python3 too old"),
    ("h0: python=/usr/bin/python2 is cpython Python 2.7.18 (x): too old",
     "h0: --python /usr/bin/python2 is cpython Python 2.7.18 (x): too old"),
    ("as given (python=/opt/py/bin/python3)", "as given (--python /opt/py/bin/python3)"),
    ("it is python=/opt/py/bin/python3.", "it is --python /opt/py/bin/python3."),
    ("python=/a/b: not found; or", "--python /a/b: not found; or"),
    ("connect_timeout=-1 is negative", "--connect-timeout -1 is negative"),
    ("known_hosts=/k, ssh_config=/c", "--known-hosts /k, -F /c"),
    ("transport=openssh or", "--transport openssh or"),
    ("host_key_policy=accept-new", "--accept-new"),
    # (found by an audit, G9: "pass allow_prompt=True" stayed, and check had no flag for it)
    ("pass allow_prompt=True for a login that asks", "pass --allow-prompt for a login that asks"),
    # bare options, as before: the punctuation after them is no value
    ("pass python=, or", "pass --python, or"),
    ("pass python=.", "pass --python."),
    ("(ssh_config=)", "(-F FILE)"),
    # no flag says these: left as they are
    ("ssh_config=PosixPath('/c')", "ssh_config=PosixPath('/c')"),
    ("python=None", "python=None"),
    ("python=('a', 'b')", "python=('a', 'b')"),
    ("key_filename=['/a']", "key_filename=['/a']"),
])
def test_an_unquoted_value_is_the_flags_value_not_part_of_its_name(said, typed):
    assert cli.in_cli_terms(said) == typed


def test_a_too_old_python_given_by_path_is_said_as_the_python_flag_and_its_value():
    """The agent's error for ``--python /root/.pyenv/versions/2.7.18/bin/python`` (the stub labels
    it ``python=PATH``, unquoted): the report said ``--python/root/...``."""
    path = "/root/.pyenv/versions/2.7.18/bin/python"
    said = "remoteproc: python=%s is cpython Python 2.7.18 at %s\n" % (path, path)
    message = str(bootstrap._old_python_error("h0", bootstrap._too_old(said)))
    assert "python=%s is cpython" % path in message
    typed = cli.in_cli_terms(message)
    assert "--python %s is cpython Python 2.7.18" % path in typed, typed
    assert "--python/" not in typed


def test_allow_prompt_is_a_flag_of_the_commands_that_connect():
    parser = cli.build_parser()
    args = parser.parse_args(["check", "--allow-prompt", "--transport", "openssh", "h0"])
    assert cli.ssh_options(args) == {"allow_prompt": True, "transport": "openssh"}
    assert "allow_prompt" not in cli.ssh_options(parser.parse_args(["check", "h0"]))


@pytest.mark.parametrize("argv,command", [
    (["run", "--bogus", "h0", "x.py"], "run"),
    (["check", "--bogus", "h0"], "check"),
    (["check", "h0", "--bogus"], "check"),
    (["cache", "--bogus=3", "h0"], "cache"),
    (["demo", "--bogus"], "demo"),
])
def test_an_unknown_option_is_refused_with_its_commands_usage(argv, command):
    out = remoteproc_cmd(*argv)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("usage: remoteproc %s " % command), out.stderr
    assert "usage: remoteproc [-h] [--version] COMMAND" not in out.stderr
    bogus = next(token for token in argv if token.startswith("--bogus"))
    assert out.stderr.rstrip().endswith("remoteproc %s: error: unrecognized arguments: %s" % (command, bogus))


def test_an_unknown_option_before_the_command_is_the_top_levels():
    out = remoteproc_cmd("--bogus", "check", "h0")
    assert out.returncode == 2
    assert out.stderr.startswith("usage: remoteproc [-h] [--version] COMMAND"), out.stderr
    assert out.stderr.rstrip().endswith("remoteproc: error: unrecognized arguments: --bogus")
