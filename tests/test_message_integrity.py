"""Messages over bridged Connections arrive whole and in order: empty to 16 MiB, ten thousand
in a row, one-way pipes, several connections per process, connections nested in arguments;
24 connections at once with a slow reader on each side.

And under load: over 1 GiB of messages, 0 B to 64 MiB, both directions, several connections
per process, several processes on one host, several local threads sending at once; every
message's SHA-256 and order are checked on arrival.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
from multiprocessing.connection import wait

import cloudpickle
import pytest

from remoteproc import Pipe, RemoteProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(300)

BIG = 64 << 20


def echo(conn):
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


# -- whole and in order ------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 16 << 20])
def test_big_messages_each_way(host, ssh_options, size):
    parent, child = Pipe()
    p = RemoteProcess(host, target=echo, args=(child,), **ssh_options)
    p.start()
    child.close()
    data = os.urandom(size)
    parent.send_bytes(data)
    assert parent.recv_bytes() == data
    parent.close()
    p.join(30)
    assert p.exitcode == 0


def test_ten_thousand_messages_in_order(host, ssh_options):
    def count(conn, n):
        for i in range(n):
            conn.send(i)
        got = [conn.recv() for _ in range(n)]
        conn.send(got == list(range(n)))

    parent, child = Pipe()
    p = RemoteProcess(host, target=count, args=(child, 10_000), **ssh_options)
    p.start()
    child.close()
    sender = threading.Thread(target=lambda: [parent.send(i) for i in range(10_000)])
    sender.start()
    received = [parent.recv() for _ in range(10_000)]
    sender.join(60)
    assert received == list(range(10_000))
    assert parent.recv() is True
    p.join(30)
    assert p.exitcode == 0


def test_one_way_pipes_both_directions(host, ssh_options):
    def relay(reader, writer):
        writer.send(reader.recv() + "!")

    down_r, down_w = Pipe(duplex=False)     # parent -> child
    up_r, up_w = Pipe(duplex=False)         # child -> parent
    p = RemoteProcess(host, target=relay, args=(down_r, up_w), **ssh_options)
    p.start()
    down_r.close()
    up_w.close()
    down_w.send("one way")
    assert up_r.recv() == "one way!"
    p.join(30)
    assert p.exitcode == 0
    with pytest.raises(EOFError):
        up_r.recv()


def data_then_notice(data, notice, ack, rounds):
    for i in range(rounds):
        data.send_bytes(b"y" * ((i % 7) * 1000))
        notice.send(i)
        ack.recv()


def test_a_message_sent_before_another_on_a_one_way_pipe_is_there_when_the_other_arrives(host, ssh_options):
    """Found by an audit (F2): a child sends on a one-way Pipe, then on a duplex one; once the parent
    has the second message, the first must be readable (poll(0)), as each local send is in the kernel
    before the next begins. The relay wrote the pipe only at its next wake-up, after the socket."""
    rounds = 200
    (data_r, data_w), (notice_a, notice_b), (ack_a, ack_b) = Pipe(duplex=False), Pipe(), Pipe()
    p = RemoteProcess(host, target=data_then_notice, args=(data_w, notice_b, ack_b, rounds), **ssh_options)
    p.start()
    for end in (data_w, notice_b, ack_b):
        end.close()
    late = 0
    for i in range(rounds):
        assert notice_a.poll(60), "no notice %d" % i
        assert notice_a.recv() == i
        late += not data_r.poll(0)
        assert data_r.recv_bytes() == b"y" * ((i % 7) * 1000)
        ack_a.send(None)
    p.join(30)
    assert p.exitcode == 0
    assert late == 0, "%d of %d first messages were not there when the second came" % (late, rounds)


def paced_writer(w, n, size):
    import time
    for i in range(n):
        w.send_bytes(bytes([i % 256]) * size)
        time.sleep(0.002)


def test_a_full_one_way_pipe_blocks_nothing_else(host, ssh_options):
    """Found by a regression audit: the relay wrote a shared pipe when free bytes (pipe size less what
    waits) seemed enough, but a Linux pipe holds pages, and 2100-byte messages take one each: the
    write blocked the relay, and every other process's messages with it, until the parent read."""
    count, size = 300, 2100
    (r, w), (a, b) = Pipe(duplex=False), Pipe()
    echoer = RemoteProcess(host, target=echo, args=(b,), **ssh_options)
    echoer.start()
    b.close()
    writer = RemoteProcess(host, target=paced_writer, args=(w, count, size), **ssh_options)
    writer.start()
    w.close()
    for i in range(150):        # (the one-way pipe is full after about 30 messages, 60 ms)
        a.send_bytes(b"%d" % i)
        assert a.poll(30), "round trip %d got no answer while the one-way pipe was full" % i
        assert a.recv_bytes() == b"%d" % i
    for i in range(count):
        assert r.poll(30) and r.recv_bytes() == bytes([i % 256]) * size, i
    a.close()
    for p in (echoer, writer):
        p.join(30)
        assert p.exitcode == 0


def test_three_connections_to_one_process(host, ssh_options):
    def fan(a, b, c):
        for conn, tag in ((a, "a"), (b, "b"), (c, "c")):
            conn.send(tag + str(conn.recv()))

    pairs = [Pipe() for _ in range(3)]
    p = RemoteProcess(host, target=fan, kwargs=dict(zip("abc", [c for _, c in pairs])), **ssh_options)
    p.start()
    for i, (parent, child) in enumerate(pairs):
        child.close()
        parent.send(i)
    assert [parent.recv() for parent, _ in pairs] == ["a0", "b1", "c2"]
    p.join(30)
    assert p.exitcode == 0


def test_connections_nested_in_arguments(host, ssh_options):
    def nested(box):
        box["conns"][1].send(box["conns"][0].recv() * 3)

    a_parent, a_child = Pipe()
    b_parent, b_child = Pipe()
    p = RemoteProcess(host, target=nested, args=({"conns": [a_child, b_child]},), **ssh_options)
    p.start()
    a_parent.send(7)
    assert b_parent.recv() == 21
    p.join(30)
    assert p.exitcode == 0


# -- under load --------------------------------------------------------------------------



def plan(seed: int) -> list[int]:
    """Message sizes for one connection and direction: about 140 MiB, 0 B to 64 MiB."""
    rng = random.Random(seed)
    sizes = [0, 1, BIG, 16 << 20, 8 << 20]
    while sum(sizes) < 140 << 20:
        sizes.append(rng.choice([0, 3, 100, 4096, 65535, 65536, 1 << 20, (1 << 20) + 7, rng.randrange(1, 8 << 20)]))
    rng.shuffle(sizes)
    return sizes


def body_source(seed: int) -> bytes:
    return random.Random(seed).randbytes(BIG)


def send_all(conn, sizes, base):
    view = memoryview(base)
    for seq, size in enumerate(sizes):
        body = view[:size]
        head = seq.to_bytes(8, "big") + hashlib.sha256(body).digest()
        conn.send_bytes(head)
        conn.send_bytes(body)


def check_all(conn, sizes, errors, timeout=120, pause=0.0):
    """Receive the messages ``sizes`` says, in order, each checked; ``pause`` seconds before each one
    (a reader that falls behind).  Returns the bytes expected."""
    import time

    for seq, size in enumerate(sizes):
        time.sleep(pause)
        if not wait([conn], timeout):
            errors.append("message %d: nothing within %ss" % (seq, timeout))
            return 0
        head = conn.recv_bytes()
        body = conn.recv_bytes()
        if int.from_bytes(head[:8], "big") != seq:
            errors.append("message %d arrived as %d" % (seq, int.from_bytes(head[:8], "big")))
        if len(body) != size or hashlib.sha256(body).digest() != head[8:]:
            errors.append("message %d (%d bytes) corrupted" % (seq, size))
    return sum(sizes)


def run_threads(threads, bound=None):
    """Start every thread, then join each (within ``bound`` seconds); True if all ended."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(bound)
    return not any(t.is_alive() for t in threads)


def remote_side(conns, seeds):
    """In the remote child: for each connection, send one plan and check the other."""
    import threading as th

    errors = []
    base = body_source(0)
    threads = []
    for conn, seed in zip(conns, seeds):
        threads.append(th.Thread(target=send_all, args=(conn, plan(seed + 1), base)))
        threads.append(th.Thread(target=check_all, args=(conn, plan(seed), errors)))
    run_threads(threads)
    conns[0].send(errors)


def start_processes(host, ssh_options, count, per, target, args_of, first_seed=0):
    """``count`` remote processes of ``per`` connections each, ``target(their ends, *args_of(n, seeds))``;
    (processes, our ends, the seed of each end)."""
    procs, conns, seeds = [], [], []
    for n in range(count):
        pairs = [Pipe() for _ in range(per)]
        mine = [first_seed + 100 * n + 10 * i for i in range(per)]
        p = RemoteProcess(host, target=target, args=([c for _, c in pairs], *args_of(n, mine)), **ssh_options)
        p.start()
        for _, child in pairs:
            child.close()
        procs.append(p)
        conns += [parent for parent, _ in pairs]
        seeds += mine
    return procs, conns, seeds


def remote_checks_and_exits(procs, first_conns):
    """Each remote process found nothing wrong in what it received, and exited with 0."""
    for conn in first_conns:
        assert wait([conn], 120)
        assert conn.recv() == []                          # the remote side's own checks
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_a_gigabyte_both_ways_checked(host, ssh_options):
    base = body_source(0)
    # two processes on one host, two connections each
    procs, all_conns, seeds_of = start_processes(host, ssh_options, 2, 2, remote_side, lambda n, seeds: (seeds,))
    errors: list[str] = []
    totals = []
    threads = []
    for conn, seed in zip(all_conns, seeds_of):
        threads.append(threading.Thread(target=send_all, args=(conn, plan(seed), base)))
        threads.append(threading.Thread(target=lambda c=conn, s=seed: totals.append(check_all(c, plan(s + 1), errors))))
    assert run_threads(threads, 280), "a sender or checker hung"
    assert errors == []
    sent = sum(sum(plan(s)) for s in seeds_of)
    received = sum(totals)
    assert sent + received >= 1 << 30
    remote_checks_and_exits(procs, all_conns[::2])


def small_plan(seed: int, count: int) -> list[int]:
    """``count`` message sizes, 0 B to 8 MiB, most of them small."""
    rng = random.Random(seed)
    return [rng.choice([0, rng.randrange(1, 1000), rng.randrange(1000, 1 << 20), rng.randrange(1 << 20, 8 << 20)])
            for _ in range(count)]


def many_side(conns, seeds, count, pause):
    import threading as th

    errors = []
    base = body_source(0)
    threads = []
    for conn, seed in zip(conns, seeds):
        threads.append(th.Thread(target=send_all, args=(conn, small_plan(seed + 1, count), base)))
        threads.append(th.Thread(target=check_all, args=(conn, small_plan(seed, count), errors, 120, pause)))
    run_threads(threads)
    conns[0].send(errors)


def test_many_connections_at_once_with_slow_readers_on_both_sides(host, ssh_options):
    """24 connections (8 processes, 3 each) streaming both ways at once, 0 B to 8 MiB a message;
    one process reads slowly on the host, the parent reads another's slowly here: the others'
    streams are not held up past the bound, and nothing is lost, reordered or corrupted."""
    base = body_source(0)
    count = 12
    procs, conns, seeds = start_processes(host, ssh_options, 8, 3, many_side,
                                          lambda n, mine: (mine, count, 0.1 if n == 0 else 0), first_seed=1000)
    pauses = [0.1 if i // 3 == 1 else 0 for i in range(len(conns))]
    errors: list[str] = []
    threads = []
    for conn, seed, pause in zip(conns, seeds, pauses):
        threads.append(threading.Thread(target=send_all, args=(conn, small_plan(seed, count), base)))
        threads.append(threading.Thread(target=check_all, args=(conn, small_plan(seed + 1, count), errors, 120, pause)))
    assert run_threads(threads, 240), "a sender or checker hung"
    assert errors == []
    remote_checks_and_exits(procs, conns[::3])
