"""The relay: a local process that owns the SSH connections of one user process.

``client`` runs in the user's process (starts the relay, hands it work), ``ipc`` is
the codec between the two, ``process`` is the relay process's main, and ``link`` is
its loop for one host connection.  Importing this package imports none of them.
"""
