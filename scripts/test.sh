#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, lint (ruff, with C901), type-check (mypy), then pytest with coverage.
# This is the README's second quick-start command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Python that runs everything: python3 on PATH (pyenv, uv, conda, a virtualenv, the official
# images), or, where that is a distribution's own Python whose pip is missing or refuses to install
# outside a virtualenv (PEP 668: Debian 12, Ubuntu 23.04+), a virtualenv of this checkout (.venv).
PY=python3
use_venv=
if [ -n "${VIRTUAL_ENV:-}" ]; then
    :
elif ! python3 -m pip --version >/dev/null 2>&1 ||
        python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    use_venv=1
fi

need_apt=()
if [ -n "$use_venv" ] && ! python3 -m ensurepip --version >/dev/null 2>&1; then   # (Debian: python3-venv)
    need_apt+=("python3-venv")
fi
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# tests/test_impaired_links.py: packet loss and black holes inside a namespace host
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
# tests/test_packages.py builds a C extension: a compiler and Python's headers
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need_apt+=(python3-dev)
# CPython's own multiprocessing tests (tests/test_cpython_multiprocessing.py): Debian ships them apart,
# for its own Python's version only (a python3 of another version, as in the official images, which
# strip the test package, has none: asking apt for it would stop every other install)
maybe_apt=()    # installed when apt has them (looked up after apt-get update)
python3 -c "import test._test_multiprocessing" >/dev/null 2>&1 ||
    maybe_apt+=("libpython$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')-testsuite")
for sh in fish tcsh zsh ksh; do command -v $sh >/dev/null 2>&1 || need_apt+=($sh); done   # login shells: tests/test_remote_accounts.py
command -v pypy3 >/dev/null 2>&1 || need_apt+=(pypy3)     # a second Python (3.9): spawn-mode tests
# tests/test_host_environments.py: an account whose only python3 is a venv of the system Python
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1; then
    [[ " ${need_apt[*]} " == *" python3-venv "* ]] || need_apt+=(python3-venv)
fi
if [ "$((${#need_apt[@]} + ${#maybe_apt[@]}))" -gt 0 ]; then
    # as root a failure stops here; otherwise (no password-less sudo) the tests say what is missing
    as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@" || return 0; fi; }
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq </dev/null
    for pkg in ${maybe_apt[@]+"${maybe_apt[@]}"}; do
        if apt-cache show "$pkg" >/dev/null 2>&1; then
            need_apt+=("$pkg")
        else
            echo "scripts/test.sh: apt has no $pkg (its tests will say what is missing)" >&2
        fi
    done
    [ "${#need_apt[@]}" -eq 0 ] ||
        as_root apt-get install -y -qq --no-install-recommends "${need_apt[@]}" </dev/null
fi

if [ -n "$use_venv" ]; then
    [ -x .venv/bin/python3 ] || python3 -m venv .venv </dev/null
    PY="$PWD/.venv/bin/python3"
fi
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]" </dev/null

"$PY" -m ruff check .
if "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    "$PY" -m mypy         # configured in pyproject.toml: the remoteproc package
else                      # (mypy 1.20 runs on 3.10+ only: the test extra installs none on 3.9)
    echo "scripts/test.sh: mypy skipped: it needs Python 3.10+ to run (this is $("$PY" -V 2>&1))" >&2
fi
export COVERAGE_PROCESS_START="$PWD/pyproject.toml"
# Two workers (REMOTEPROC_TEST_WORKERS; 0: none), each taking whole test files: most of a test's time
# is waiting on sshds, agents and children, so two share the 2 CPUs of CI well.  Every worker has its
# own sshd, namespace hosts and relay; accounts and the machine are shared, as by two runs at once.
# (tests/conftest.py hands out the longest files first: LONG_FILES.)
workers="${REMOTEPROC_TEST_WORKERS:-2}"
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile)
"$PY" -m pytest -p no:cacheprovider "${parallel[@]}" --cov=remoteproc --cov-branch --cov-report=term-missing \
    --durations=25 "$@" </dev/null
