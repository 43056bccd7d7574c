"""The remote agent: standard library only, shipped over the SSH channel (compiled locally, see bootstrap.py).

Every module in this package must import nothing outside the standard library and
this package, because the remote host has nothing but ``python3``.  The local side
imports the same modules (the frame codec and the stream multiplexer), so there is
exactly one copy of the wire format.
"""

PROTOCOL_VERSION = 1
