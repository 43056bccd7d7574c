"""The open-files limit: raised in the agent and the relay, restored in each child.

Every bridged stream is a file descriptor, so the processes that bridge many of
them lift their soft limit to the hard one; a remote child gets the limit back that
its agent started with, as a local child would have it.
"""


def raise_fd_limit():
    """Lift the soft limit on open files to the hard one: every stream is an fd, and a
    remote process costs the agent about six, the relay about four.  Returns the limits
    to restore in children, or None."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return soft, hard
    except (ImportError, ValueError, OSError):
        pass
    return None
