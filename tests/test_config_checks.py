"""A pool's misuse is a ConfigError (still a ValueError) that says the fix: processes_per_host=0
was a plain ValueError, a host triple with 0 workers got the generic shape message, and a dict
of hosts was taken as its keys with its counts ignored.  Each is refused before any connection,
so no host is needed (the specs below are never resolved)."""

from __future__ import annotations

import pytest

from remoteproc import ConfigError, Executor, Pool, RemoteProcessError

pytestmark = pytest.mark.timeout(60)

KINDS = [Pool, Executor]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("count", [0, -1, 1.5, True, "2"])
def test_processes_per_host_below_1_or_not_an_int_is_a_config_error_with_the_fix(kind, count):
    with pytest.raises(ConfigError) as err:
        kind(["no-such-host.invalid"], processes_per_host=count)
    assert isinstance(err.value, ValueError) and isinstance(err.value, RemoteProcessError)
    message = str(err.value)
    assert "processes_per_host must be an int of at least 1" in message and "not %r" % (count,) in message
    assert "Fix: pass processes_per_host=1 or more" in message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("workers", [0, -1, 1.5, False, "3"])
def test_a_host_triple_with_workers_below_1_says_workers_must_be_an_int_of_at_least_1(kind, workers):
    with pytest.raises(ConfigError) as err:
        kind([("no-such-host.invalid", {}, workers)])
    message = str(err.value)
    assert message.startswith("pool host 'no-such-host.invalid': its workers must be an int of at least 1"), message
    assert "not %r" % (workers,) in message and "a pool host is" not in message
    assert err.value.host == "no-such-host.invalid"


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_host_entry_still_gets_the_shape_message(kind):
    for entry in [("h", {}, 1, 2), ("h", "opts"), 42]:
        with pytest.raises(ConfigError, match="a pool host is 'user@host"):
            kind([entry])


@pytest.mark.parametrize("kind", KINDS)
def test_a_dict_of_hosts_is_refused_with_the_list_to_pass(kind):
    """{"h0": 1} was taken as ["h0"]: the host got processes_per_host workers, the 1 unread."""
    with pytest.raises(ConfigError) as err:
        kind({"no-such-host.invalid": 1})
    message = str(err.value)
    assert "a list, not a dict" in message
    assert "[('no-such-host.invalid', {}, 1)]" in message, message


def test_the_joblib_backend_refuses_the_same_misuses_as_config_errors():
    joblib = pytest.importorskip("joblib")
    import remoteproc.joblib

    remoteproc.joblib.register()
    for config, said in [({"hosts": ["no-such-host.invalid"], "processes_per_host": 0}, "processes_per_host must"),
                         ({"hosts": [("no-such-host.invalid", {}, 0)]}, "its workers must be an int"),
                         ({"hosts": {"no-such-host.invalid": 1}}, "a list, not a dict")]:
        with pytest.raises(ConfigError, match=said):
            with joblib.parallel_config(backend="remoteproc", **config):
                joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(i) for i in range(2))


@pytest.mark.parametrize("value,kind,said", [(0, ValueError, "max_tasks_per_child must be >= 1"),
                                             (-1, ValueError, "max_tasks_per_child must be >= 1"),
                                             ("2", TypeError, "max_tasks_per_child must be an integer")])
def test_executor_checks_max_tasks_per_child_as_process_pool_executor_does(value, kind, said):
    """The Executor said the Pool's words (``maxtasksperchild must be a positive int or None``),
    and a ValueError for "2", where ProcessPoolExecutor raises these."""
    import concurrent.futures
    import multiprocessing

    with pytest.raises(kind, match="^%s$" % said):
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                               max_tasks_per_child=value)
    with pytest.raises(kind, match="^%s$" % said):
        Executor(["no-such-host.invalid"], 1, max_tasks_per_child=value)
