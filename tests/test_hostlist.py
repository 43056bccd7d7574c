"""remoteproc.hostlist: Slurm host lists, task counts, PBS node files, MPI hostfiles, and Pool taking them.

The expected expansions are what ``scontrol show hostnames`` (Slurm 22.05) printed for each list.
"""

from __future__ import annotations

import pickle
import re
import tracemalloc

import pytest

from remoteproc import ConfigError, Pool, hostlist
from remoteproc.hostlist import Host, HostlistError, expand

SCONTROL = [
    # the examples of Slurm's documentation
    ("node[01-03,07],gpu[1-2],login", "node01 node02 node03 node07 gpu1 gpu2 login"),
    ("tux[0-5,12,20-25]", "tux0 tux1 tux2 tux3 tux4 tux5 tux12 tux20 tux21 tux22 tux23 tux24 tux25"),
    ("linux[1-3,6]", "linux1 linux2 linux3 linux6"),
    ("node1,node[2-5,12]", "node1 node2 node3 node4 node5 node12"),
    # zero padding: the width of the lower bound
    ("node[09-11]", "node09 node10 node11"),
    ("node[9-11]", "node9 node10 node11"),
    ("node[1-010]", "node1 node2 node3 node4 node5 node6 node7 node8 node9 node10"),
    ("node[001-3]", "node001 node002 node003"),
    ("n[010-12]", "n010 n011 n012"),
    ("n[00-02]", "n00 n01 n02"),
    ("n[01-2,5]", "n01 n02 n5"),
    # several bracket groups: the last innermost, of the others the last-but-one outermost
    ("rack[1-2]node[1-3]", "rack1node1 rack1node2 rack1node3 rack2node1 rack2node2 rack2node3"),
    ("a[1-2][3-4]", "a13 a14 a23 a24"),
    ("[1-2][3-4]", "13 14 23 24"),
    ("n[1-3]a[1-2]b[4]", "n1a1b4 n2a1b4 n3a1b4 n1a2b4 n2a2b4 n3a2b4"),
    ("a[1-2]b[3-4]c[5-6]", "a1b3c5 a1b3c6 a2b3c5 a2b3c6 a1b4c5 a1b4c6 a2b4c5 a2b4c6"),
    ("w[1-2]x[3-4]y[5-6]z[7-8]", "w1x3y5z7 w1x3y5z8 w2x3y5z7 w2x3y5z8 w1x4y5z7 w1x4y5z8 w2x4y5z7 w2x4y5z8 "
                                 "w1x3y6z7 w1x3y6z8 w2x3y6z7 w2x3y6z8 w1x4y6z7 w1x4y6z8 w2x4y6z7 w2x4y6z8"),
    ("n[1-2,4-5]m[01-02]", "n1m01 n1m02 n2m01 n2m02 n4m01 n4m02 n5m01 n5m02"),
    ("n[1-2]y[3-4],z", "n1y3 n1y4 n2y3 n2y4 z"),
    ("n[1-2],[3-4]x[1]", "n1 n2 3x1 4x1"),
    ("n[1-2]-x[3]", "n1-x3 n2-x3"),
    # separators, empty entries, duplicates, other characters
    ("a,,b", "a b"),
    ("a b", "a b"),
    ("a\tb", "a b"),
    (",a,", "a"),
    ("node[1-3]  ,  gpu", "node1 node2 node3 gpu"),
    ("", ""),
    ("n[1,1]", "n1 n1"),
    ("[1-3]", "1 2 3"),
    ("a.b.c[1-2]", "a.b.c1 a.b.c2"),
    ("user@n[1-2]", "user@n1 user@n2"),
    ("a-[1-2]", "a-1 a-2"),
    ("a;b", "a;b"),
    ("n[4294967295-4294967296]", "n4294967295 n4294967296"),
]


@pytest.mark.parametrize("text,expected", SCONTROL)
def test_expand_as_scontrol_show_hostnames(text, expected):
    assert expand(text) == expected.split()


def test_a_whole_range_of_65536_names_is_allowed():
    names = expand("n[0-65535]")
    assert len(names) == 65536 and names[0] == "n0" and names[-1] == "n65535"


MALFORMED = [
    # Slurm refuses these too ("Invalid hostlist")
    ("node[3-1]", 5, "goes down"),
    ("node[a-b]", 5, "not a number"),
    ("n[1-3,]", 6, "not a number"),
    ("n[,1]", 2, "not a number"),
    ("n[]", 2, "not a number"),
    ("n[-1]", 2, "not a number"),
    ("n[1--2]", 2, "not a number"),
    ("n[1-2]]", 6, "without '['"),
    ("n[[1-2]]", 2, "inside brackets"),
    ("m[1-2],n[[1-2]]", 9, "inside brackets"),
    ("a[1-2[3]]", 5, "inside brackets"),
    ("x[1-2]y", 6, "after the last"),
    ("a[0-1]x", 6, "after the last"),
    ("x[1-2]y[3]z", 10, "after the last"),
    ("node[1-2]-ib", 9, "after the last"),
    ("n[1-70000]", 2, "65536"),
    ("n[123x456]", 2, "not a number"),
    ("n[0x1]", 2, "not a number"),
    ("n[1-2 ]", 2, "not a number"),
    ("a b[1-2 3]", 4, "not a number"),
    # Slurm takes these by accident (node[ -> "node]", n[1-] -> n1, n[ 1-2] -> n01 n02): refused here
    ("node[", 4, "never closed"),
    ("node[1-2", 4, "never closed"),
    ("node]", 4, "without '['"),
    ("n[1-]", 2, "not a number"),
    ("n[ 1-2]", 2, "not a number"),
    ("n[+1]", 2, "not a number"),
]


@pytest.mark.parametrize("text,position,words", MALFORMED)
def test_a_malformed_list_is_a_value_error_naming_the_position(text, position, words):
    with pytest.raises(ValueError) as info:
        expand(text)
    err = info.value
    assert isinstance(err, HostlistError) and isinstance(err, ConfigError)
    assert err.position == position
    assert words in str(err)
    assert "position %d" % (position + 1) in str(err)
    assert str(err).splitlines()[-1] == "  " + " " * position + "^"


def test_the_documented_example_position_from_0_message_from_1():
    """docs/integrations.md: ``position`` is 0-based, the message counts from 1."""
    with pytest.raises(HostlistError) as info:
        expand("node[")
    assert info.value.position == 4
    assert str(info.value) == "'[' is never closed at position 5 of 'node['\n  node[\n      ^"


def test_the_error_crosses_processes_whole():
    """Raised in a remote target or a Pool task, it reaches the caller pickled: same type, message,
    text, position, and the fault alone (``reason``, which ``slurm()`` prefixes with a variable's name)."""
    with pytest.raises(HostlistError) as info:
        expand("node[1-")
    err = info.value
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is HostlistError and str(copy) == str(err)
    assert (copy.text, copy.position, copy.reason) == ("node[1-", 4, "'[' is never closed")


@pytest.mark.parametrize("text", [
    "a[0-65535]b[0-65535]",                             # groups multiplied
    "n[%s]" % ",".join(["0-65535"] * 100),              # one group of many ranges, each within Slurm's limit
    ",".join("x%d[0-65535]b[0-14]" % i for i in range(100)),    # many entries just under the limit each
])
def test_a_list_of_more_than_a_million_names_is_refused_before_any_is_built(text):
    """Found by a new user's audit: a group of many ranges was built whole (465 MB for 100 ranges)
    before its size was looked at."""
    tracemalloc.start()
    try:
        with pytest.raises(HostlistError, match="more than 1000000 names in the list"):
            expand(text)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, "%d MB allocated before the refusal" % (peak >> 20)


def test_a_million_names_is_the_limit_not_over_it():
    names = expand("a[0-9999]b[0-49],c[0-9999]b[0-49]")
    assert len(names) == 1_000_000
    assert (names[0], names[-1]) == ("a0b0", "c9999b49")


def test_every_reader_of_the_docs_table_is_exported():
    namespace: dict = {}
    exec("from remoteproc.hostlist import *", namespace)
    for name in ("expand", "slurm", "pbs", "hostfile", "tasks_per_node", "Host", "HostlistError"):
        assert name in namespace, name


def test_tasks_per_node():
    assert hostlist.tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert hostlist.tasks_per_node("4") == [4]
    assert hostlist.tasks_per_node("1(x2),3(x1),8") == [1, 1, 3, 8]
    for bad in ("2(x)", "x3", "2(3)", "", "1,,2", "-1"):
        with pytest.raises(HostlistError):
            hostlist.tasks_per_node(bad)


def test_slurm_from_the_allocation_environment():
    env = {"SLURM_JOB_NODELIST": "node[01-03],gpu7", "SLURM_TASKS_PER_NODE": "2(x3),1"}
    assert hostlist.slurm(env) == [Host("node01", {}, 2), Host("node02", {}, 2), Host("node03", {}, 2),
                                   Host("gpu7", {}, 1)]
    assert hostlist.slurm({"SLURM_NODELIST": "a[1-2]"}) == [Host("a1", {}, None), Host("a2", {}, None)]
    with pytest.raises(ConfigError, match="gives 1 counts for the 2 hosts"):
        hostlist.slurm({"SLURM_JOB_NODELIST": "a[1-2]", "SLURM_TASKS_PER_NODE": "3"})
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST is not set"):
        hostlist.slurm({})


def test_slurm_inside_an_srun_step_counts_the_jobs_cpus():
    """srun overwrites SLURM_TASKS_PER_NODE with its step's layout and keeps the job's SLURM_JOB_NODELIST
    (Slurm's env_array_for_step): a program started with "srun -N1 -n1" in a 4-node job, or a shell of
    "srun --pty bash", saw 1 count for 4 hosts (a ConfigError), or 1 task where the job has 8."""
    step = {"SLURM_JOB_NODELIST": "node[1-4]", "SLURM_NODELIST": "node[1-4]", "SLURM_JOB_CPUS_PER_NODE": "8,4(x3)",
            "SLURM_TASKS_PER_NODE": "1", "SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_STEP_NODELIST": "node1"}
    assert hostlist.slurm(step) == [Host("node1", {}, 8), Host("node2", {}, 4), Host("node3", {}, 4),
                                    Host("node4", {}, 4)]
    one_node = {"SLURM_JOB_NODELIST": "n7", "SLURM_JOB_CPUS_PER_NODE": "8", "SLURM_TASKS_PER_NODE": "1",
                "SLURM_STEP_TASKS_PER_NODE": "1"}
    assert hostlist.slurm(one_node) == [Host("n7", {}, 8)]
    with pytest.raises(hostlist.HostlistError, match="^SLURM_JOB_CPUS_PER_NODE: "):
        hostlist.slurm(dict(step, SLURM_JOB_CPUS_PER_NODE="4(x"))
    # the batch script itself (no step variables): the job's tasks, as before
    batch = {"SLURM_JOB_NODELIST": "node[1-2]", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_CPUS_PER_NODE": "8(x2)"}
    assert hostlist.slurm(batch) == [Host("node1", {}, 2), Host("node2", {}, 2)]


def test_slurm_with_cpus_per_task_counts_tasks_inside_and_outside_a_step():
    """sbatch -N2 --ntasks-per-node=2 -c 4: the batch script saw 2 workers per node, and the same
    program under "srun -n1 python3 main.py" saw the job's 8 CPUs, so 8."""
    job = {"SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_CPUS_PER_NODE": "8(x2)", "SLURM_CPUS_PER_TASK": "4"}
    batch = dict(job, SLURM_TASKS_PER_NODE="2(x2)")
    step = dict(job, SLURM_TASKS_PER_NODE="1,0", SLURM_STEP_TASKS_PER_NODE="1", SLURM_STEP_NODELIST="node1")
    assert hostlist.slurm(batch) == hostlist.slurm(step) == [Host("node1", {}, 2), Host("node2", {}, 2)]
    # a node with fewer CPUs than a task asks for still gets one worker
    assert hostlist.slurm(dict(step, SLURM_JOB_CPUS_PER_NODE="8,2")) == [Host("node1", {}, 2), Host("node2", {}, 1)]
    with pytest.raises(ConfigError, match="SLURM_CPUS_PER_TASK='0' is not a positive"):
        hostlist.slurm(dict(step, SLURM_CPUS_PER_TASK="0"))


@pytest.mark.parametrize("nodelist", [" ", ",", " , "])
def test_a_slurm_nodelist_of_no_host_is_refused_naming_the_variable(nodelist):
    """As an empty PBS_NODEFILE: refused here, not later as "a pool needs at least one host"."""
    with pytest.raises(ConfigError, match=r"SLURM_JOB_NODELIST=%r lists no host" % nodelist):
        hostlist.slurm({"SLURM_JOB_NODELIST": nodelist})


@pytest.mark.parametrize("counts", ["0(x2)", "0,0"])
def test_tasks_of_0_on_every_host_are_refused_naming_the_variable(counts):
    """A host of 0 tasks is left out; with every host so, slurm() gave [] silently, and the pool
    said only "a pool needs at least one host", naming neither variable."""
    said = r"^SLURM_TASKS_PER_NODE='%s' gives every host of SLURM_JOB_NODELIST='n\[1-2\]' 0 tasks" % re.escape(counts)
    with pytest.raises(ConfigError, match=said):
        hostlist.slurm({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": counts})
    assert hostlist.slurm({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "0,3"}) == [Host("n2", {}, 3)]


@pytest.mark.parametrize("text,position", [("2(x0)", 0), ("0(x0)", 0), ("2(x2),1(x0)", 6)])
def test_tasks_per_node_refuses_a_repeat_of_0(text, position):
    """"2(x0)" stands for no host: it was read as none, a list shorter than the text, silently."""
    with pytest.raises(HostlistError, match="repeats its count 0 times") as err:
        hostlist.tasks_per_node(text)
    assert err.value.position == position
    with pytest.raises(ConfigError, match="^SLURM_TASKS_PER_NODE: "):
        hostlist.slurm({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "1,%s" % text})


def test_slurm_reads_os_environ(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "c[1-2]")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "3(x2)")
    assert hostlist.slurm() == [Host("c1", {}, 3), Host("c2", {}, 3)]


def test_pbs_nodefile_counts_each_host_once_per_slot(tmp_path, monkeypatch):
    path = tmp_path / "nodes"
    path.write_text("n1\nn1\nn2\n\nn1\nn3\n")
    monkeypatch.setenv("PBS_NODEFILE", str(path))
    assert hostlist.pbs() == [Host("n1", {}, 3), Host("n2", {}, 1), Host("n3", {}, 1)]
    with pytest.raises(ConfigError, match="PBS_NODEFILE is not set"):
        hostlist.pbs({})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="lists no host"):
        hostlist.pbs({"PBS_NODEFILE": str(empty)})
    with pytest.raises(ConfigError, match=r"PBS_NODEFILE .*/gone cannot be read \(No such file or directory\)"):
        hostlist.pbs({"PBS_NODEFILE": str(tmp_path / "gone")})


def test_mpi_hostfile(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("# the cluster\n"
                    "node1 slots=4\n"
                    "node2 slots=2 max_slots=8   # comment\n"
                    "node3\n"
                    "node4:6\n"
                    "alice@node5:2222\n"
                    "node1 slots=1\n")
    assert hostlist.hostfile(path) == [Host("node1", {}, 5), Host("node2", {}, 2), Host("node3", {}, None),
                                       Host("node4", {}, 6), Host("alice@node5:2222", {}, None)]
    for bad, words in (("node1 slots=x\n", "line 1"), ("node1 cores=2\n", "cores=2"),
                       ("a\nnode1 slots=0\n", "line 2: node1 has 0 slots")):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=words):
            hostlist.hostfile(path)
    # (found by an audit: a raw FileNotFoundError, where pbs() names its file)
    with pytest.raises(ConfigError, match="hostfile .*nowhere cannot be read .No such file or directory.. Fix"):
        hostlist.hostfile(tmp_path / "nowhere")


def test_host_files_saved_by_a_windows_editor_read_as_written(tmp_path, monkeypatch):
    """Found by an audit (E1): a byte-order mark and CRLF line ends (Notepad's UTF-8) made the first host
    '\ufeffnode1', which Pool refused as a host name."""
    path = tmp_path / "hostfile"
    path.write_bytes(b"\xef\xbb\xbfnode1 slots=1\r\nnode2 slots=2\r\n")
    assert hostlist.hostfile(path) == [Host("node1", {}, 1), Host("node2", {}, 2)]
    monkeypatch.setenv("PBS_NODEFILE", str(path.with_name("nodes")))
    path.with_name("nodes").write_bytes(b"\xef\xbb\xbfnode1\r\nnode1\r\n")
    assert hostlist.pbs() == [Host("node1", {}, 2)]


def test_pool_rejects_a_bad_worker_count():
    for entry in (("h", {}, 0), ("h", {}, "2"), ("h", {}, True), ("h", {}, 1, 2)):
        with pytest.raises(ConfigError, match="workers"):
            Pool([entry])


def test_pool_takes_a_hostfile_with_slots_as_workers(host, ssh_options, tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("%s slots=3\n" % host)
    with Pool(hostlist.hostfile(path), processes_per_host=1, **ssh_options) as pool:
        assert len(pool.workers()) == 3
        assert len({pid for _, pid in pool.workers()}) == 3
        assert pool.hosts == [host]
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
