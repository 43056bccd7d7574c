"""The rig's accounts: several of the suite's processes create the same new account at once, as
its two workers do on a fresh machine (``rpuser`` and the others), and each gets one account
whose home it owns.  ``useradd`` takes no lock on /etc/passwd in this container: three at once
each wrote the file from their own reading, the last won, and the home kept the uid of a loser
(the packages cache then fell back to /tmp, and sshd would refuse a key in that home)."""

from __future__ import annotations

import multiprocessing
import os
import pwd
import shutil
import subprocess
import uuid

import pytest
from conftest import _unavailable

from remoteproc.testing import ensure_local_user

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def names():
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        _unavailable("creating accounts needs root and useradd")
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["userdel", "-r", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        shutil.rmtree(os.path.join("/home", name), ignore_errors=True)   # (a loser's home, when a race is lost)


def _create(name: str) -> str:
    return ensure_local_user(name)


def test_accounts_created_at_once_by_several_processes_each_own_their_home(names):
    ctx = multiprocessing.get_context("fork")
    for _ in range(3):
        name = "rprace" + uuid.uuid4().hex[:6]
        names.append(name)
        with ctx.Pool(3) as pool:
            homes = pool.map(_create, [name] * 3)
        entry = pwd.getpwnam(name)
        assert set(homes) == {entry.pw_dir}
        assert os.stat(entry.pw_dir).st_uid == entry.pw_uid, name
        assert os.stat(os.path.join(entry.pw_dir, ".bashrc")).st_uid == entry.pw_uid
        with open("/etc/passwd") as f:
            assert sum(line.startswith(name + ":") for line in f) == 1


def test_a_home_left_to_a_uid_no_account_has_is_given_back(names, tmp_path):
    name = "rporph" + uuid.uuid4().hex[:6]
    names.append(name)
    home = ensure_local_user(name)
    orphan = max(e.pw_uid for e in pwd.getpwall() if e.pw_uid < 60000) + 17
    os.makedirs(os.path.join(home, ".ssh"), exist_ok=True)
    for path in (home, os.path.join(home, ".ssh"), os.path.join(home, ".bashrc")):
        os.lchown(path, orphan, orphan)
    assert ensure_local_user(name) == home
    entry = pwd.getpwnam(name)
    assert {os.stat(p).st_uid for p in (home, os.path.join(home, ".ssh"), os.path.join(home, ".bashrc"))} == {
        entry.pw_uid}


def test_a_home_owned_by_another_account_is_not_taken(names):
    from remoteproc.testing.accounts import _own_orphaned_home

    name = "rpkeep" + uuid.uuid4().hex[:6]
    names.append(name)
    home = ensure_local_user(name)
    entry = pwd.getpwnam(name)
    os.lchown(home, 0, 0)
    try:
        _own_orphaned_home(entry)
        assert os.stat(home).st_uid == 0
    finally:
        os.lchown(home, entry.pw_uid, entry.pw_gid)
