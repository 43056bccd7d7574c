"""Host lists as clusters write them: Slurm's ``node[01-03,07]``, PBS node files, MPI hostfiles.

Each reader returns a list of ``Host(spec, options, workers)`` entries, which
``remoteproc.Pool`` and ``remoteproc.Executor`` take as their ``hosts``: the
allocation's slots become each host's number of workers::

    with Pool(hostlist.slurm()) as pool:
        ...

``expand()`` follows ``scontrol show hostnames``: comma (or blank) separated
entries, each with any number of bracket groups of numbers and ranges, zero
padding taken from the lower bound (``[01-10]`` gives ``01`` ... ``10``,
``[1-010]`` gives ``1`` ... ``10``), at most 65536 names per range.  Where Slurm
accepts a mistake by accident (an unclosed ``[``, a stray ``]``, ``[1-]``, blanks
or a sign inside a range) this refuses it: a ``HostlistError`` (a ``ValueError``)
names the position.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional

from .errors import ConfigError

__all__ = ["Host", "HostlistError", "expand", "hostfile", "pbs", "slurm", "tasks_per_node"]

MAX_RANGE = 65536           # names in one range, as Slurm's limit
MAX_NAMES = 1_000_000       # names from one list (groups multiply): a typo, not a cluster
_SEPARATORS = ", \t\n"


class Host(NamedTuple):
    """One host of an allocation: its spec, its own ssh options, and its worker count (None: the pool's)."""

    spec: str
    options: Dict[str, Any]
    workers: Optional[int]


class HostlistError(ConfigError):
    """A host list, task count or host file that cannot be read; ``position`` is the 0-based offset."""

    def __init__(self, message: str, text: str = "", position: int = -1) -> None:
        self.reason = message           # the fault alone, without the position and the pointer
        if position >= 0:
            message = "%s at position %d of %r\n  %s\n  %s^" % (message, position + 1, text, text, " " * position)
        super().__init__(message)
        self.text = text
        self.position = position

    def __reduce__(self):
        return (_rebuild_error, (str(self), self.text, self.position, self.reason))


def _rebuild_error(message: str, text: str, position: int, reason: Optional[str] = None) -> HostlistError:
    err = HostlistError(message)
    err.text, err.position = text, position
    if reason is not None:      # (None: pickled by an older version)
        err.reason = reason
    return err


def _in_variable(name: str, exc: HostlistError) -> HostlistError:
    """``exc`` saying which environment variable held the text (the caller read it, not wrote it)."""
    return HostlistError("%s: %s" % (name, exc.reason), exc.text, exc.position)


# -- expand -------------------------------------------------------------------------------------------

def expand(hostlist: str) -> list[str]:
    """The host names of a Slurm host list, in ``scontrol show hostnames`` order (duplicates kept)."""
    if not isinstance(hostlist, str):
        raise TypeError("a host list is a str, not %s" % type(hostlist).__name__)
    entries = [_parse_entry(hostlist, start, entry) for start, entry in _entries(hostlist)]
    # counted before any name is built: several large groups multiplied, one group of many ranges
    # (n[0-65535,0-65535,...]) and many large entries are all typos, not a cluster
    total = 0
    for start, _literals, groups in entries:
        total += _count(groups)
        if total > MAX_NAMES:
            raise HostlistError("more than %d names in the list" % MAX_NAMES, hostlist, start)
    names: list[str] = []
    for _start, literals, groups in entries:
        names.extend(_names(literals, groups))
    return names


def _entries(text: str) -> Iterable[tuple[int, str]]:
    """``(offset, entry)`` for each entry, split at separators outside brackets."""
    start, open_at = 0, -1
    for i, ch in enumerate(text):
        if ch == "[":
            if open_at >= 0:
                raise HostlistError("'[' inside brackets (Slurm does not nest them)", text, i)
            open_at = i
        elif ch == "]":
            if open_at < 0:
                raise HostlistError("']' without '['", text, i)
            open_at = -1
        elif ch in _SEPARATORS and open_at < 0:
            if i > start:
                yield start, text[start:i]
            start = i + 1
    if open_at >= 0:
        raise HostlistError("'[' is never closed", text, open_at)
    if len(text) > start:
        yield start, text[start:]


def _parse_entry(text: str, offset: int, entry: str) -> tuple[int, list[str], list[list[tuple[int, int, int]]]]:
    """One entry as ``(offset, literals, groups)``: the literal parts, and each bracket group's ranges
    (an entry without brackets is one literal and no group)."""
    literals: list[str] = []
    groups: list[list[tuple[int, int, int]]] = []
    pos = 0
    while True:
        left = entry.find("[", pos)
        if left < 0:
            break
        right = entry.index("]", left)
        literals.append(entry[pos:left])
        groups.append(_group(text, offset + left + 1, entry[left + 1:right]))
        pos = right + 1
    if not groups:
        return offset, [entry], []
    if pos < len(entry):
        raise HostlistError("text after the last ']' (Slurm allows none)", text, offset + pos)
    return offset, literals, groups


def _count(groups: list[list[tuple[int, int, int]]]) -> int:
    total = 1
    for g in groups:
        total *= sum(hi - lo + 1 for lo, hi, _width in g)
    return total


def _names(literals: list[str], groups: list[list[tuple[int, int, int]]]) -> list[str]:
    """An entry's names, in Slurm's order of iteration."""
    if not groups:
        return literals
    numbers = [["%0*d" % (width, n) for lo, hi, width in g for n in range(lo, hi + 1)] for g in groups]
    # Slurm expands the last group innermost and, of the others, the last-but-one outermost:
    # a[1-2]b[3-4] gives a1b3 a1b4 a2b3 a2b4; n[1-3]a[1-2]b[4] gives n1a1b4 n2a1b4 n3a1b4 n1a2b4 ...
    order = list(range(len(groups) - 2, -1, -1)) + [len(groups) - 1]
    names = []
    for combo in itertools.product(*(numbers[k] for k in order)):
        value = dict(zip(order, combo))
        names.append("".join(lit + value[k] for k, lit in enumerate(literals)))
    return names


_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?\Z")


def _group(text: str, offset: int, body: str) -> list[tuple[int, int, int]]:
    """The ranges of one bracket group (``01-03,07``) as (low, high, width): each number is
    zero-padded to its lower bound's width."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    for part in body.split(","):
        m = _RANGE.match(part)
        if m is None:
            raise HostlistError("%r is not a number or a range lo-hi" % part, text, offset + pos)
        lo_text, hi_text = m.group(1), m.group(2)
        lo = int(lo_text)
        hi = lo if hi_text is None else int(hi_text)
        if hi < lo:
            raise HostlistError("range %r goes down" % part, text, offset + pos)
        if hi - lo + 1 > MAX_RANGE:
            raise HostlistError("range %r has more than %d names (Slurm's limit)" % (part, MAX_RANGE),
                                text, offset + pos)
        out.append((lo, hi, len(lo_text)))
        pos += len(part) + 1
    return out


# -- allocations ----------------------------------------------------------------------------------------

def slurm(environ: Optional[Mapping[str, str]] = None) -> list[Host]:
    """The hosts of the current Slurm allocation, ``SLURM_TASKS_PER_NODE`` tasks each as workers.

    Reads ``SLURM_JOB_NODELIST`` (or the older ``SLURM_NODELIST``); without a task count
    (``SLURM_TASKS_PER_NODE``), each host gets the pool's ``processes_per_host``.  Inside an
    ``srun`` step (``srun python3 main.py``, ``srun --pty bash``) srun has replaced
    ``SLURM_TASKS_PER_NODE`` with the step's layout (one task on one node, say) while the node
    list stays the job's: each host then gets the job's CPUs on it, ``SLURM_JOB_CPUS_PER_NODE``,
    divided by ``SLURM_CPUS_PER_TASK`` (``-c``), so that ``sbatch -c 2`` gives the same workers
    inside a step as in the batch script.
    """
    env = os.environ if environ is None else environ
    variable = "SLURM_JOB_NODELIST" if env.get("SLURM_JOB_NODELIST") else "SLURM_NODELIST"
    nodelist = env.get(variable)
    if not nodelist:
        raise ConfigError("SLURM_JOB_NODELIST is not set: hostlist.slurm() reads the allocation of the Slurm "
                          "job it runs in (inside sbatch, salloc or srun)")
    try:
        hosts = expand(nodelist)
    except HostlistError as exc:
        raise _in_variable(variable, exc) from None
    if not hosts:       # (blank, or only commas: as an empty PBS_NODEFILE, not a pool of no host later)
        raise ConfigError("%s=%r lists no host" % (variable, nodelist))
    counts_variable = "SLURM_TASKS_PER_NODE"
    if env.get("SLURM_STEP_TASKS_PER_NODE") and env.get("SLURM_JOB_CPUS_PER_NODE"):
        counts_variable = "SLURM_JOB_CPUS_PER_NODE"     # (the step's tasks are not the job's)
    tasks = env.get(counts_variable)
    if not tasks:
        return [Host(h, {}, None) for h in hosts]
    try:
        counts = tasks_per_node(tasks)
    except HostlistError as exc:
        raise _in_variable(counts_variable, exc) from None
    if len(counts) != len(hosts):
        raise ConfigError("%s=%r gives %d counts for the %d hosts of %s=%r"
                          % (counts_variable, tasks, len(counts), len(hosts), variable, nodelist))
    if counts_variable == "SLURM_JOB_CPUS_PER_NODE":
        per_task = _cpus_per_task(env)
        counts = [max(1, n // per_task) if n else 0 for n in counts]
    if not any(counts):     # (a host of no task is left out, as Slurm runs none there; none left is no pool)
        raise ConfigError("%s=%r gives every host of %s=%r 0 tasks: no host to run on (a pool needs one with "
                          "at least 1)" % (counts_variable, tasks, variable, nodelist))
    return [Host(h, {}, n) for h, n in zip(hosts, counts) if n > 0]


def _cpus_per_task(env: Mapping[str, str]) -> int:
    """``SLURM_CPUS_PER_TASK`` (set by ``-c``/``--cpus-per-task``), 1 when unset."""
    text = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise ConfigError("SLURM_CPUS_PER_TASK=%r is not a positive whole number" % text)
    return int(text)


_TASKS = re.compile(r"([0-9]+)(?:\(x([0-9]+)\))?\Z")


def tasks_per_node(text: str) -> list[int]:
    """Slurm's compressed count list, one number per host: ``2(x3),1`` is ``[2, 2, 2, 1]``.

    A repeat of 0 (``2(x0)``) is refused: it stands for no host, and taken as it reads it gave a
    list shorter than the text says, silently.  A count of 0 is a host with no task (``slurm()``
    leaves it out, and refuses a list of only those).
    """
    counts: list[int] = []
    pos = 0
    for part in text.split(","):
        m = _TASKS.match(part.strip())
        if m is None:
            raise HostlistError("%r is not a count N or N(xM)" % part, text, pos)
        count, repeat = int(m.group(1)), int(m.group(2) or 1)
        if repeat < 1:
            raise HostlistError("%r repeats its count 0 times; a count is for at least 1 host" % part, text, pos)
        counts.extend([count] * repeat)
        pos += len(part) + 1
    return counts


def pbs(environ: Optional[Mapping[str, str]] = None) -> list[Host]:
    """The hosts of the current PBS/Torque job: ``PBS_NODEFILE`` lists a host once per slot."""
    env = os.environ if environ is None else environ
    path = env.get("PBS_NODEFILE")
    if not path:
        raise ConfigError("PBS_NODEFILE is not set: hostlist.pbs() reads the node file of the PBS job it runs in "
                          "(inside qsub)")
    counts: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                name = line.strip()
                if name and not name.startswith("#"):
                    counts[name] = counts.get(name, 0) + 1
    except OSError as exc:
        raise ConfigError("PBS_NODEFILE %s cannot be read (%s): hostlist.pbs() reads the node file of the PBS "
                          "job it runs in, on the job's first node" % (path, exc.strerror or exc)) from None
    if not counts:
        raise ConfigError("PBS_NODEFILE %s lists no host" % path)
    return [Host(h, {}, n) for h, n in counts.items()]


_SLOT_KEYS = {"slots": True, "count": True, "cpu": True, "max_slots": False, "max-slots": False}


def hostfile(path: str | os.PathLike) -> list[Host]:
    """An MPI hostfile: one host a line, ``host slots=N`` (Open MPI) or ``host:N`` (MPICH); ``#`` comments.

    A host without a count gets the pool's ``processes_per_host``; a host listed
    twice gets the sum of the counts its lines give (a line without one adds none).
    """
    order: dict[str, Optional[int]] = {}
    try:
        f = open(path, encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError("hostfile %s cannot be read (%s). Fix: give the path of an MPI hostfile (one host a "
                          "line, host slots=N or host:N)" % (path, exc.strerror or exc)) from None
    with f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            host, slots = _hostfile_line(str(path), lineno, line)
            if host in order and order[host] is not None and slots is not None:
                order[host] = order[host] + slots       # type: ignore[operator]
            elif host not in order or slots is not None:
                order[host] = slots
    if not order:
        raise ConfigError("hostfile %s lists no host" % path)
    return [Host(h, {}, n) for h, n in order.items()]


def _hostfile_line(path: str, lineno: int, line: str) -> tuple[str, Optional[int]]:
    fields = line.split()
    host, slots = fields[0], None
    if len(fields) == 1 and "@" not in host and host.count(":") == 1 and host.rsplit(":", 1)[1].isdigit():
        host, count = host.rsplit(":", 1)          # MPICH's host:N (a spec with a user keeps its :port)
        slots = int(count)
    for field in fields[1:]:
        key, sep, value = field.partition("=")
        if not sep or key not in _SLOT_KEYS or not value.isdigit():
            raise ConfigError("%s line %d: %r is not slots=N (nor max_slots=N)" % (path, lineno, field))
        if _SLOT_KEYS[key]:
            slots = int(value)
    if slots is not None and slots < 1:
        raise ConfigError("%s line %d: %s has %d slots; a host needs at least 1" % (path, lineno, host, slots))
    return host, slots
