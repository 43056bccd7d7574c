"""A raw paramiko exec channel: the SSH transport's limit for one connection.

Same cipher (aes128-gcm@openssh.com), window (8 MiB, 128 KiB packets) and TCP_NODELAY as
remoteproc's connection; round trips through ``cat``; throughput through a tiny python
helper (``common.HELPER``) that sinks or sources bytes in 1 MiB pieces.  It runs in this
process with paramiko's own transport thread, as a user of paramiko would.
"""

from __future__ import annotations

import socket
import sys
import time

from .common import (
    HELLO_PY,
    MIB,
    cold_main,
    cold_sample,
    cpu_load,
    echo_round_trip,
    helper_command,
    measure_streams,
    payload,
    peer_main,
    random_block,
    stream_throughput,
)

NAME = "paramiko"
WINDOW = 8 << 20
MAX_PACKET = 128 << 10
CIPHER = "aes128-gcm@openssh.com"
SEND_PIECE = 1 << 20


def connect(host):
    import paramiko

    def factory(sock, **kwargs):
        t = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET, **kwargs)
        t.get_security_options().ciphers = (CIPHER,)
        return t

    sock = socket.create_connection((host["hostname"], host["port"]), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = paramiko.SSHClient()
    for path in host.get("known_hosts_files", []):
        client.load_system_host_keys(path)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host["hostname"], port=host["port"], username=host["user"], sock=sock,
                   key_filename=host.get("key") or None, allow_agent=not host.get("key"),
                   look_for_keys=not host.get("key"), timeout=30, transport_factory=factory)
    return client


def _exec(client, command: str):
    chan = client.get_transport().open_session()
    chan.exec_command(command)
    return chan


def _recv_exact(chan, n: int) -> int:
    got = 0
    while got < n:
        data = chan.recv(min(n - got, 1 << 20))
        if not data:
            raise EOFError("the channel closed after %d of %d bytes" % (got, n))
        got += len(data)
    return got


def _send_all(chan, data) -> None:
    view = memoryview(data)
    while view:
        n = chan.send(view[:SEND_PIECE])    # sendall(bytes) is quadratic in paramiko: send memoryview pieces
        view = view[n:]


def first_byte(client, python: str) -> float:
    """Exec a new remote python that writes one byte: the per-process cost without a resident agent."""
    t0 = time.perf_counter()
    chan = _exec(client, "%s -c %s" % (python, _q(HELLO_PY)))
    _recv_exact(chan, 1)
    elapsed = time.perf_counter() - t0
    chan.close()
    return elapsed


def exec_join(client, python: str) -> float:
    t0 = time.perf_counter()
    chan = _exec(client, "%s -c pass" % python)
    chan.recv_exit_status()
    elapsed = time.perf_counter() - t0
    chan.close()
    return elapsed


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def cold_once(cfg) -> float:
    import paramiko  # noqa: F401

    host = cfg["host"]
    t0 = time.perf_counter()
    client = connect(host)
    chan = _exec(client, "%s -c %s" % (host["python"], _q(HELLO_PY)))
    _recv_exact(chan, 1)
    elapsed = time.perf_counter() - t0
    client.close()
    return elapsed


def run(cfg, rec) -> None:
    p = cfg["plan"]
    host = cfg["host"]
    peer = cfg.get("peer_label", NAME)
    runs = p["runs"]
    if rec.wanted("cold_start"):
        rec.measure(peer, "cold_start", lambda: cold_sample("benchmarks.peer_paramiko", cfg), p["cold_runs"])
    client = connect(host)
    try:
        rec.note(peer, "warm_start", "exec of a new remote python3 to its first byte")
        rec.measure(peer, "warm_start", lambda: first_byte(client, host["python"]), p["start_runs"], warmup=1)
        rec.note(peer, "warm_start_join", "exec of `python3 -c pass` to its exit status")
        rec.measure(peer, "warm_start_join", lambda: exec_join(client, host["python"]), p["start_runs"], warmup=1)

        if not any(rec.wanted(m) for m in ("rt100", "up_1m", "down_1m", "up_64m", "down_64m")):
            return
        cat = _exec(client, "cat")
        rt = echo_round_trip(cat.sendall, lambda n: _recv_exact(cat, n))
        rt(20)
        rec.note(peer, "rt100", "100 bytes through remote `cat`")
        rec.measure(peer, "rt100", lambda: rt(p["rt_batch"]), runs, warmup=1)
        cat.close()

        helper = _exec(client, helper_command(host["python"]))
        block = random_block()
        data_64m = payload(64 * MIB, block)
        up, down = stream_throughput(lambda data: _send_all(helper, data), lambda n: _recv_exact(helper, n))
        measure_streams(rec, peer, p, up, down, block, data_64m)
        data_64m = b""
        rec.note(peer, "up_1m_load", "in-process paramiko: its transport thread shares the GIL with the load")
        with cpu_load():    # paramiko's transport thread shares this process's GIL with the load
            rec.measure(peer, "up_1m_load", lambda: up(p["k_1m"], block), runs, warmup=1)
        helper.close()
        cat = _exec(client, "cat")
        rt = echo_round_trip(cat.sendall, lambda n: _recv_exact(cat, n))
        rt(20)
        with cpu_load():
            rec.measure(peer, "rt100_load", lambda: rt(p["load_batch"]), runs, warmup=1)
        cat.close()
    finally:
        client.close()


if __name__ == "__main__":
    if sys.argv[1] == "--cold":
        cold_main(cold_once)
    else:
        peer_main(run)
