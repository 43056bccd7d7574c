"""``Pipe()``: multiprocessing's own, with send buffers sized for a reader on another host.

A ``send()`` of a big message sleeps in the kernel until the reader has taken all of it
but the socket's send buffer (about 200 KiB by default).  A local child reads at memory
speed, so the sleep is short; the relay of a remote child reads at the link's speed.  In a
program with a busy Python thread the sleep costs more than itself: the sender gives up
the GIL for it and gets it back one switch interval (5 ms) later, so every message paid
the transfer and the interval one after the other.  With a buffer that holds the message
whole, ``send()`` returns as soon as the kernel has copied it, and the relay drains it
while the program goes on.  The ends stay the standard library's ``Connection`` objects.
"""

from __future__ import annotations

from multiprocessing import connection
from multiprocessing.connection import Connection

from .agent.mux import widen_send_buffer


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """``multiprocessing.Pipe(duplex)``, each socket's send buffer widened to hold 4 MiB.

    The kernel gives at most ``net.core.wmem_max`` (Linux), and less is harmless: the ends
    work as before.  A ``duplex=False`` pair is an OS pipe and keeps its size: enlarging it
    counts against a per-user total (``fs.pipe-user-pages-soft``) that every pipe of the
    account shares."""
    a, b = connection.Pipe(duplex)
    if duplex:
        widen_send_buffer(a.fileno())
        widen_send_buffer(b.fileno())
    return a, b
