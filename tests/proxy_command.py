"""A ProxyCommand for tests: ``proxy_command.py SAID HOST PORT`` writes its arguments to SAID, then
carries stdin to a TCP connection to HOST:PORT and the connection's bytes to stdout."""
import os
import socket
import sys
import threading

with open(sys.argv[1], "w") as f:
    f.write(" ".join(sys.argv[2:]))
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), 10)


def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)


threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
