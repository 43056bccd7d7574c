"""This process's open-files limit: every object passed to a running remote process costs it an fd
or two, every running remote process about three (a local child: none or one): running out is a
RemoteProcessError that says the limit and the fix, not a bare OSError (Pool) or a PicklingError
about pickling (found by an audit: a Pool of 3 x 120 workers, or 300 Values to each of 6
children, failed at ``ulimit -n 1024`` where multiprocessing works)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent('''\
    import json, os, resource, sys
    import remoteproc

    def nothing(*args):
        pass

    if __name__ == "__main__":
        spec, options, soft, hard, case = json.loads(sys.argv[1])
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        held = []
        if case == "start":             # (this process at its limit before the first start)
            try:
                while True:
                    held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            for fd in held[-2:]:
                os.close(fd)
            values = ()
        else:
            values = [remoteproc.Value("i", i) for i in range(200)]
        p = remoteproc.RemoteProcess(spec, target=nothing, args=(values,), **options)
        try:
            p.start()
        except remoteproc.RemoteProcessError as exc:
            print(type(exc).__name__, exc)
        else:
            p.join(60)
            print("started")
''')


def _run(tmp_path, host, ssh_options, soft, hard, case):
    program = tmp_path / "files.py"
    program.write_text(PROGRAM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, str(program), json.dumps([host, ssh_options, soft, hard, case])],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("case", ["arguments", "start"])
def test_out_of_open_files_says_the_limit_and_the_fix(tmp_path, host, ssh_options, case):
    """200 Values to one process under a hard limit of 160 (each costs this process an fd while
    the child runs); or this process at its limit when it starts one."""
    run = _run(tmp_path, host, ssh_options, 160, 160, case)
    said = run.stdout.strip()
    assert said.startswith("RemoteProcessError %s: cannot start a remote process: this process is out of open "
                           "files (limit 160, the hard limit too)" % host), said + run.stderr
    assert "Fix: raise the limit (`ulimit -n`" in said, said
