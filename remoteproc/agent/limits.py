"""The account's limits on processes and memory, named in the errors that reaching them causes.

A host account may run under a low ``ulimit -u`` (processes and threads of the account)
or ``ulimit -v`` (address space of each process), set in its startup files, in
/etc/security/limits.conf or by a batch system.  Reaching one shows up as a failed
fork (EAGAIN), a thread that cannot start, or a MemoryError: words that name neither
the limit nor its fix, so the agent adds them (docs/reliability.md).
"""

import errno

_WORDS = ("can't start new thread", "Resource temporarily unavailable", "Cannot allocate memory")


def reached(exc):
    """True if ``exc`` is what a process or memory limit causes."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.EAGAIN, errno.ENOMEM)
    return isinstance(exc, RuntimeError) and any(w in str(exc) for w in _WORDS)


def current():
    """The limits that are set, as a user reads them: ``ulimit -u 30, ulimit -v 409600 KiB``
    (or ``no ulimit -u or -v is set`` when neither is)."""
    out = []
    try:
        import resource

        for flag, name, scale, unit in (("RLIMIT_NPROC", "-u", 1, ""), ("RLIMIT_AS", "-v", 1024, " KiB")):
            soft = resource.getrlimit(getattr(resource, flag))[0]
            if soft != resource.RLIM_INFINITY:
                out.append("ulimit %s %d%s" % (name, soft // scale, unit))
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    return ", ".join(out) or "no ulimit -u or -v is set"


def hint():
    """The cause and the fix, for a message about what a limit stopped."""
    return ("the account's limit on processes and threads or on memory is reached here (%s). Fix: raise it "
            "where it is set (the account's shell startup files, /etc/security/limits.conf, a batch system's "
            "job limits), or run fewer processes on this host" % current())
