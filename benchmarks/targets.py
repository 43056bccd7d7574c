"""Child targets shared by remoteproc and local multiprocessing (standard library only).

remoteproc ships this module by value (``cloudpickle.register_pickle_by_value``): it is
not installed on the remote host.
"""

import os
import struct


def hello(conn):
    conn.send_bytes(b"x")


def noop():
    pass


def echo_once(conn):
    conn.send_bytes(conn.recv_bytes())


def serve(conn):
    """Serve commands: b'e...' echo the message; b'u' K,S sink K messages of S bytes then ack;
    b'd' K,S send K messages of S bytes; b'q' quit."""
    block = os.urandom(1 << 20)
    buffers = {}
    while True:
        try:
            msg = conn.recv_bytes()
        except EOFError:
            return
        op = msg[:1]
        if op == b"e":
            conn.send_bytes(msg)
        elif op == b"u":
            count, size = struct.unpack_from(">qq", msg, 1)
            buf = buffers.get(size)
            if buf is None:
                buf = buffers[size] = bytearray(size)
            for _ in range(count):
                conn.recv_bytes_into(buf)
            conn.send_bytes(b"k")
        elif op == b"d":
            count, size = struct.unpack_from(">qq", msg, 1)
            reps, rest = divmod(size, len(block))
            data = block * reps + block[:rest]
            for _ in range(count):
                conn.send_bytes(data)
        else:
            return


def command(op, count=0, size=0):
    return op + struct.pack(">qq", count, size)
