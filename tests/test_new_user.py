"""What a new user meets first: the package as pip installs it, and the first mistakes.

Each mistake must end as local ``multiprocessing`` ends it (the same exception, or a documented
subclass of it and of ``RemoteProcessError``), naming the host and the fix, on every host alike.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

import remoteproc
from remoteproc import RemoteProcess

pytestmark = pytest.mark.timeout(180)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def show(obj: Any) -> None:
    print("got %s" % type(obj).__name__)


def open_files(tmp_path: Any) -> Iterator[tuple[str, Any]]:
    """One file object of each kind a user may pass: (label, file)."""
    path = tmp_path / "data.txt"
    path.write_text("line one\nline two\n")
    closed = open(path)
    closed.close()
    with open(path) as text, open(path, "rb") as binary, open(tmp_path / "out.txt", "w") as written:
        yield from [("text, read", text), ("binary, read", binary), ("text, written", written), ("closed", closed)]


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_an_open_file_argument_is_refused_by_name_as_multiprocessing_spawn_refuses_it(sshd, tmp_path, transport):
    """An open file cannot cross hosts (its fd is of this one).  cloudpickle sent a text file opened
    for reading as a StringIO copy of what was left in it, read whole here (so the child wrote to a
    copy, or read a stale one), yet refused the same file opened in binary mode or for writing, and
    so did a host of another Python: the same program did three different things."""
    for label, f in open_files(tmp_path):
        with pytest.raises(TypeError) as local:
            multiprocessing.get_context("spawn").Process(target=show, args=(f,)).start()
        p = RemoteProcess(sshd.spec(), target=show, args=(f,), transport=transport, **sshd.options())
        with pytest.raises(remoteproc.PicklingError) as remote:
            p.start()
        assert isinstance(remote.value, TypeError), label
        message = str(remote.value)
        assert sshd.spec() in message and "open file" in message and "path" in message, (label, message, local)
        assert p.pid is None and not p.is_alive()


def test_an_open_file_inside_a_task_or_a_queue_item_is_refused(sshd, tmp_path):
    with open(tmp_path / "data.txt", "w+") as f:
        q = remoteproc.Queue()
        try:
            with pytest.raises(TypeError, match="open file"):
                q.put(f)
        finally:
            q.close()
        with remoteproc.Pool([sshd.spec()], processes_per_host=1, **sshd.options()) as pool:
            with pytest.raises(TypeError, match="open file"):
                pool.apply(show, (f,))
            assert pool.apply(len, ("still works",)) == len("still works")


STREAMS = """
import sys
from remoteproc import RemoteProcess

def to_stream(stream):
    print("written to the child's own", stream.name, file=stream, flush=True)

if __name__ == "__main__":
    for stream in (sys.stdout, sys.stderr):
        p = RemoteProcess(sys.argv[1], target=to_stream, args=(stream,), **eval(sys.argv[2]))
        p.start()
        p.join(60)
        print("exitcode", p.exitcode)
"""


def test_the_interpreters_own_streams_still_arrive_as_the_childs(sshd, tmp_path):
    """sys.stdout as an argument (``print(..., file=stream)``) is not an open file of ours to refuse:
    it arrives as the child's own stdout, which comes back here."""
    program = tmp_path / "streams.py"
    program.write_text(STREAMS)
    done = subprocess.run([sys.executable, str(program), sshd.spec(), repr(sshd.options())], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.count("exitcode 0") == 2, (done.stdout, done.stderr[-3000:])
    assert "written to the child's own <stdout>" in done.stdout
    assert "written to the child's own <stderr>" in done.stderr


# -- the package as pip builds it -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An sdist of the checkout (its tracked files, as a fresh clone has them), and a wheel built from
    that sdist, as pip builds one from PyPI's."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("needs a git checkout")
    work = tmp_path_factory.mktemp("build")
    tree = work / "tree"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(os.path.dirname(tree / name), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), tree / name)
    build = ("import sys; from setuptools import build_meta as b; "
             "print(getattr(b, sys.argv[1])(sys.argv[2]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = work / "dist"
    done = subprocess.run([sys.executable, "-c", build, "build_sdist", str(out)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    sdist = out / done.stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked")
    top = next((work / "unpacked").iterdir())
    # (pip's own isolated build, as ``pip install remoteproc`` makes it: it fetches setuptools)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(top)],
                          env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "No matching distribution" in done.stderr:
        pytest.skip("pip cannot fetch setuptools for an isolated build: %s" % done.stderr[-500:])
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next(out.glob("remoteproc-*.whl"))
    return {"sdist": str(sdist), "wheel": str(wheel), "files": "\0".join(files)}


def test_the_sdist_holds_the_docs_the_readme_links_and_the_tests(built):
    """The sdist had only the package, README.md and the build files: every docs/ link of the README
    (PyPI's page of it included) led nowhere, and a packager could not run the tests."""
    with tarfile.open(built["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    with open(os.path.join(REPO, "README.md")) as f:
        linked = {m.split("#")[0] for m in re.findall(r"\]\(([^)#:]+(?:#[^)]*)?)\)", f.read())}
    assert linked and "docs/api.md" in linked
    assert sorted(linked - names) == []
    tracked = set(filter(None, built["files"].split("\0")))
    for part in ("docs/", "tests/", "scripts/"):
        wanted = {n for n in tracked if n.startswith(part)}
        assert wanted and sorted(wanted - names) == [], part
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_wheel_built_from_the_sdist_holds_every_file_of_the_package(built):
    """Everything the library reads from its own directory at run time (the agent's sources, shipped
    to hosts; py.typed) and the entry points of the console script and the pytest plugin."""
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = whl.read(info).decode()
    package = {n for n in built["files"].split("\0") if n.startswith("remoteproc/")}
    assert "remoteproc/agent/boot.py" in package and "remoteproc/py.typed" in package
    assert sorted(package - names) == []
    assert "remoteproc = remoteproc.cli:main" in entry_points
    assert re.search(r"\[pytest11\]\s*\nremoteproc.pytest_plugin = remoteproc.pytest_plugin", entry_points)


# -- a typo in a host alias -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_typo_of_a_config_alias_names_the_alias(sshd, tmp_path, transport):
    """A name that does not resolve said "check the name": a typo of an alias of the user's config
    (``lba`` for ``lab``) now names that alias, on both transports; another name names none."""
    config = tmp_path / "ssh_config"
    config.write_text("Host rpnewuser-lab\n    HostName 127.0.0.1\n    Port %d\n\nHost *\n"
                      "    ServerAliveInterval 30\n" % sshd.port)
    options = {k: v for k, v in sshd.options().items() if k != "port"}
    works = RemoteProcess("rpnewuser-lab", target=show, args=(1,), ssh_config=str(config),
                          transport=transport, **options)
    works.start()
    works.join(60)
    assert works.exitcode == 0
    for name, hint in [("rpnewuser-lba", "did you mean 'rpnewuser-lab'?"),
                       ("elsewhere.invalid", None)]:
        p = RemoteProcess(name, target=show, ssh_config=str(config), transport=transport, **options)
        started = time.monotonic()
        with pytest.raises(remoteproc.ConnectError) as raised:
            p.start()
        assert time.monotonic() - started < 20
        message = str(raised.value)
        assert name in message and str(config) in message, message
        if hint:
            assert hint in message, message
        else:
            assert "did you mean" not in message, message


# -- the user's own ~/.ssh, as an account of its own -----------------------------------------------------

ACCOUNT = "rpnewuser"
"""The account whose ~/.ssh these tests write (created if missing and kept, like rpuser)."""


@pytest.fixture(scope="module")
def account() -> Iterator[dict[str, Any]]:
    from test_ssh_user_setups import client_account

    with client_account(ACCOUNT) as found:
        yield found


@pytest.fixture
def user(account: dict[str, Any]) -> Iterator[Any]:
    """ACCOUNT with an empty ~/.ssh, removed at the end."""
    from test_ssh_user_setups import User

    u = User(account)
    u.reset()
    try:
        yield u
    finally:
        shutil.rmtree(u.dot, ignore_errors=True)


def test_a_key_file_the_user_cannot_read_is_named_with_its_fix(user, sshd):
    """A private key the account cannot read (left owned by root by a `sudo cp`, or mode 0000): the
    paramiko transport said "unusable: [Errno 13] ...", ssh's failure only the generic advice of a
    refused login; both now name the key and the commands that make it the user's."""
    from conftest import PLAIN_USER
    from test_ssh_user_setups import loopback_line

    key = user.copy(sshd.client_key, "id_ed25519", mode=0o000)
    user.put("known_hosts", loopback_line(sshd) + "\n")
    user.put("config", "Host lo\n    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (sshd.port, PLAIN_USER))
    fix = "chown %s %s; chmod 600 %s" % (ACCOUNT, key, key)
    for transport in ("paramiko", "openssh"):
        said = user.fails("lo", transport, "AuthenticationError")
        assert said.startswith("lo (%s@127.0.0.1:%d)" % (PLAIN_USER, sshd.port)) and fix in said, said
        assert ("unreadable: permission denied" if transport == "paramiko" else "could not read the private key") \
            in said, said
    os.chmod(key, 0o600)
    for transport in ("paramiko", "openssh"):
        assert user.works("lo", transport)["user"] == PLAIN_USER, transport


@pytest.mark.parametrize("hashed", [True, False], ids=["ssh-keyscan -H", "[127.0.0.1]:PORT"])
def test_a_host_key_that_ssh_keyscan_wrote_to_another_file_is_named(user, sshd, hashed):
    """``ssh-keyscan -H -p PORT 127.0.0.1 > ~/.ssh/lab_keys``: ssh reads only its known_hosts files, so
    the key is unknown; the error said where it looked, not that the key was right beside it."""
    from conftest import PLAIN_USER

    if shutil.which("ssh-keyscan") is None:
        pytest.skip("no ssh-keyscan")
    user.copy(sshd.client_key, "id_ed25519")
    user.put("config", "Host lab\n    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (sshd.port, PLAIN_USER))
    scanned = subprocess.run(["ssh-keyscan", *(["-H"] if hashed else []), "-p", str(sshd.port), "127.0.0.1"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert scanned.startswith("|1|" if hashed else "[127.0.0.1]:%d " % sshd.port), scanned
    stray = user.put("lab_keys", scanned)
    for transport in ("paramiko", "openssh"):
        said = user.fails("lab", transport, "HostKeyError")
        assert said.startswith("lab (%s@127.0.0.1:%d)" % (PLAIN_USER, sshd.port)), said
        assert "a key for this host is in %s" % stray in said and "known_hosts=%r" % stray in said, said
    user.put("known_hosts", scanned)        # (the fix it names: cat lab_keys >> ~/.ssh/known_hosts)
    for transport in ("paramiko", "openssh"):
        assert user.works("lab", transport)["user"] == PLAIN_USER, transport


@pytest.mark.parametrize("form", ["openssh", "PEM"])
def test_a_wrong_passphrase_is_said_as_such(sshd, tmp_path, form):
    """``passphrase=`` that does not open the key: paramiko's error was that of the last key class it
    tried ("Valid PEM but no BEGIN/END delimiters for a private key found. Are you sure this is a
    private key?"), which sent the user looking at the key file instead of the passphrase."""
    key = str(tmp_path / "id_work")
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "right", "-f", key,
                    *(["-m", "PEM"] if form == "PEM" else [])], check=True, timeout=60, capture_output=True)
    options = dict(sshd.options(), key_filename=key, passphrase="wrong", allow_agent=False, look_for_keys=False)
    p = RemoteProcess(sshd.spec(), target=show, args=(1,), **options)
    with pytest.raises(remoteproc.AuthenticationError) as raised:
        p.start()
    message = str(raised.value)
    assert "%s (encrypted, and the passphrase given is not its passphrase: check passphrase=" % key in message, \
        message
    assert "BEGIN/END" not in message


def test_a_wrong_passphrase_that_passes_a_pem_keys_padding_check_is_said_as_such(tmp_path):
    """Found by a CI run (1 in about 256): a legacy PEM key decrypted with a wrong passphrase can
    pass its padding check; its garbage then fails to parse ("Could not deserialize key data"),
    and the message said that, not that the passphrase was wrong."""
    from cryptography.hazmat.primitives import serialization

    from remoteproc.ssh import auth

    key = str(tmp_path / "id_pem")
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "right", "-f", key, "-m", "PEM"],
                   check=True, timeout=60, capture_output=True)
    data = open(key, "rb").read()
    parsed_garbage = None
    for i in range(4000):       # (each passphrase fails its padding check with 255 in 256)
        try:
            serialization.load_pem_private_key(data, b"wrong%d" % i)
        except ValueError as exc:
            if "deserialize" in str(exc):
                parsed_garbage = "wrong%d" % i
                break
    assert parsed_garbage is not None
    assert auth._wrong_passphrase(key, parsed_garbage)
    assert not auth._wrong_passphrase(key, "right")


@pytest.mark.parametrize("named_by", ["config", "option"])
@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_host_key_beside_a_known_hosts_file_outside_dot_ssh_is_named(sshd, tmp_path, named_by, transport):
    """A lab's own known_hosts (``UserKnownHostsFile`` of the config, or ``known_hosts=``) with the
    scanned key in a file beside it: paramiko pointed at that file; with ``ssh`` (found by an audit)
    only files of ~/.ssh were looked at, as the target did not know which files ssh reads."""
    from conftest import PLAIN_USER

    lab = tmp_path / "lab"
    lab.mkdir()
    stray = lab / "lab_keys"
    stray.write_text(open(sshd.known_hosts).read())
    known = lab / "known_hosts"
    known.write_text("")
    config = tmp_path / "config"
    own_file = "    UserKnownHostsFile %s\n" % known if named_by == "config" else ""
    config.write_text("Host lab\n    HostName 127.0.0.1\n    Port %d\n    User %s\n" % (sshd.port, PLAIN_USER)
                      + "    GlobalKnownHostsFile /dev/null\n" + own_file)
    options = dict(key_filename=sshd.client_key, ssh_config=str(config), transport=transport)
    if named_by == "option":
        options["known_hosts"] = str(known)
    with pytest.raises(remoteproc.HostKeyError) as info:
        remoteproc.RemoteProcess("lab", target=os.getpid, **options).start()
    assert "a key for this host is in %s" % stray in str(info.value), str(info.value)
