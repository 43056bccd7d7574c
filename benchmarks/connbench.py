"""Measurements over ``multiprocessing.connection.Connection`` ends: remoteproc and local multiprocessing
run the very same code, so their figures differ only by what carries the bytes."""

from __future__ import annotations

import time
from multiprocessing import Pipe
from multiprocessing.connection import wait
from typing import Any, Callable

from . import targets
from .common import MB, cpu_load

JOIN_TIMEOUT = 60.0


def _joined(p) -> None:
    p.join(JOIN_TIMEOUT)
    if p.exitcode != 0:
        raise RuntimeError("%r ended with exit code %r" % (p, p.exitcode))


def warm_start(make: Callable[..., Any]) -> float:
    """Process object to the first message back (the child sends one byte)."""
    t0 = time.perf_counter()
    a, b = Pipe()
    p = make(target=targets.hello, args=(b,))
    p.start()
    b.close()
    a.recv_bytes()
    elapsed = time.perf_counter() - t0
    _joined(p)
    a.close()
    return elapsed


def warm_start_join(make: Callable[..., Any]) -> float:
    """start() and join() of a target that does nothing."""
    t0 = time.perf_counter()
    p = make(target=targets.noop)
    p.start()
    _joined(p)
    return time.perf_counter() - t0


def hundred(make: Callable[..., Any], concurrent: bool, n: int = 100) -> float:
    """n processes, each gets one 100-byte message and echoes it; all joined."""
    msg = b"m" * 100
    t0 = time.perf_counter()
    if concurrent:
        pairs = [Pipe() for _ in range(n)]
        procs = [make(target=targets.echo_once, args=(b,)) for _a, b in pairs]
        for p in procs:
            p.start()
        for a, b in pairs:
            b.close()
            a.send_bytes(msg)
        pending = [a for a, _b in pairs]
        deadline = time.monotonic() + JOIN_TIMEOUT
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError("%d of %d echoes never came back" % (len(pending), n))
            for a in wait(pending, 5.0):
                if a.recv_bytes() != msg:
                    raise RuntimeError("wrong echo")
                pending.remove(a)
        for p in procs:
            _joined(p)
        for a, _b in pairs:
            a.close()
    else:
        for _ in range(n):
            a, b = Pipe()
            p = make(target=targets.echo_once, args=(b,))
            p.start()
            b.close()
            a.send_bytes(msg)
            if a.recv_bytes() != msg:
                raise RuntimeError("wrong echo")
            _joined(p)
            a.close()
    return time.perf_counter() - t0


class Server:
    """A running ``targets.serve`` child and the parent's Connection to it."""

    def __init__(self, make: Callable[..., Any]) -> None:
        self.conn, child = Pipe()
        self.proc = make(target=targets.serve, args=(child,))
        self.proc.start()
        child.close()
        self.rt_msg = b"e" + bytes(range(99))
        self.buffers: dict[int, bytearray] = {}

    def rt(self, batch: int) -> float:
        conn, msg = self.conn, self.rt_msg
        t0 = time.perf_counter()
        for _ in range(batch):
            conn.send_bytes(msg)
            if len(conn.recv_bytes()) != 100:
                raise RuntimeError("short echo")
        return (time.perf_counter() - t0) / batch

    def up(self, count: int, data: bytes) -> float:
        conn = self.conn
        t0 = time.perf_counter()
        conn.send_bytes(targets.command(b"u", count, len(data)))
        for _ in range(count):
            conn.send_bytes(data)
        if conn.recv_bytes() != b"k":
            raise RuntimeError("no acknowledgement")
        return count * len(data) / (time.perf_counter() - t0) / MB

    def down(self, count: int, size: int) -> float:
        conn = self.conn
        buf = self.buffers.get(size)
        if buf is None:
            buf = self.buffers[size] = bytearray(size)
        t0 = time.perf_counter()
        conn.send_bytes(targets.command(b"d", count, size))
        for _ in range(count):
            if conn.recv_bytes_into(buf) != size:
                raise RuntimeError("short message")
        return count * size / (time.perf_counter() - t0) / MB

    def close(self) -> None:
        try:
            self.conn.send_bytes(b"q")
        except OSError:
            pass
        self.conn.close()
        _joined(self.proc)


def measure_all(rec, peer: str, cfg: dict[str, Any], make: Callable[..., Any], local: Callable[..., Any] | None = None,
                local_peer: str = "mp-fork", load: bool = True, pair: tuple[str, dict[str, Any]] | None = None) -> None:
    """Round trip, throughput (idle and loaded), 100 at once vs 100 in a row, over Connections.

    With ``local`` (a local Process factory), the busy-thread figures are measured run by run
    alternately for this peer and for a local Pipe, so that both see the same load.  With
    ``pair`` (a baseline's name and its ``rt``, ``up`` and ``down`` functions), the round trip
    and the 1 MiB figures are measured once more, alternately with that baseline (``*_pair``)."""
    from .common import MIB, payload, random_block

    p = cfg["plan"]
    runs = p["runs"]
    if not any(rec.wanted(m) for m in ("rt100", "up_1m", "down_1m", "up_64m", "down_64m", "rt100_load",
                                       "up_1m_load", "conc100", "seq100", "rt100_pair", "up_1m_pair",
                                       "down_1m_pair", "rt100_msgpair", "up_1m_msgpair",
                                       "down_1m_msgpair")):
        return
    block = random_block()
    data_1m = block
    data_64m = payload(64 * MIB, block)
    server = Server(make)
    try:
        server.rt(20)
        rec.measure(peer, "rt100", lambda: server.rt(p["rt_batch"]), runs, warmup=1)
        rec.measure(peer, "up_1m", lambda: server.up(p["k_1m"], data_1m), runs, warmup=1)
        rec.measure(peer, "down_1m", lambda: server.down(p["k_1m"], MIB), runs, warmup=1)
        rec.measure(peer, "up_64m", lambda: server.up(p["k_64m"], data_64m), p["runs_64m"], warmup=1)
        rec.measure(peer, "down_64m", lambda: server.down(p["k_64m"], 64 * MIB), p["runs_64m"], warmup=1)
        if pair is not None:
            base, fns = pair
            rec.measure_interleaved("rt100_pair", [(peer, lambda: server.rt(p["rt_batch"])),
                                                   (base, lambda: fns["rt"](p["rt_batch"]))], runs, warmup=1)
            rec.measure_interleaved("up_1m_pair", [(peer, lambda: server.up(p["k_1m"], data_1m)),
                                                   (base, lambda: fns["up"](p["k_1m"], data_1m))], runs, warmup=1)
            rec.measure_interleaved("down_1m_pair", [(peer, lambda: server.down(p["k_1m"], MIB)),
                                                     (base, lambda: fns["down"](p["k_1m"], MIB))], runs, warmup=1)
            if "down_msg" in fns:
                rec.measure_interleaved("rt100_msgpair", [(peer, lambda: server.rt(p["rt_batch"])),
                                                          (base, lambda: fns["rt_msg"](p["rt_batch"]))],
                                        runs, warmup=1)
                rec.measure_interleaved("up_1m_msgpair", [(peer, lambda: server.up(p["k_1m"], data_1m)),
                                                          (base, lambda: fns["up_msg"](p["k_1m"], data_1m))],
                                        runs, warmup=1)
                rec.measure_interleaved("down_1m_msgpair", [(peer, lambda: server.down(p["k_1m"], MIB)),
                                                            (base, lambda: fns["down_msg"](p["k_1m"], MIB))],
                                        runs, warmup=1)
        if not load:
            pass
        elif local is not None and (rec.wanted("rt100_load") or rec.wanted("up_1m_load")):
            baseline = Server(local)
            try:
                baseline.rt(20)
                with cpu_load():
                    rec.measure_interleaved("rt100_load", [(peer, lambda: server.rt(p["load_batch"])),
                                                           (local_peer, lambda: baseline.rt(p["load_batch"]))],
                                            runs, warmup=1)
                    rec.measure_interleaved("up_1m_load", [(peer, lambda: server.up(p["k_1m"], data_1m)),
                                                           (local_peer, lambda: baseline.up(p["k_1m"], data_1m))],
                                            runs, warmup=1)
            finally:
                baseline.close()
        elif local is None:
            with cpu_load():
                rec.measure(peer, "rt100_load", lambda: server.rt(p["load_batch"]), runs, warmup=1)
                rec.measure(peer, "up_1m_load", lambda: server.up(p["k_1m"], data_1m), runs, warmup=1)
    finally:
        server.close()
    data_64m = b""  # free it before the 100-process runs
    rec.measure(peer, "conc100", lambda: hundred(make, True), p["hundred_runs"], warmup=1)
    rec.measure(peer, "seq100", lambda: hundred(make, False), p["hundred_runs"])
