"""Import paramiko for the relay process, without the imports it does not need.

paramiko's package ``__init__`` pulls in ``invoke`` and ``importlib.metadata``; the
relay needs neither, and together they cost it a good part of its cold start.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types


def preload() -> None:
    """Import paramiko while the user's process is still busy elsewhere.

    paramiko imports ``invoke`` (about 100 ms) only for its own ``Match exec`` support,
    which remoteproc does not use (remoteproc.ssh evaluates the config itself).
    """
    if "invoke" not in sys.modules:
        sys.modules["invoke"] = None    # type: ignore[assignment]
    if "paramiko" in sys.modules or "importlib.metadata" in sys.modules:
        import paramiko  # noqa: F401
        return
    # paramiko's __init__ asks importlib.metadata for its own version: importing that
    # (email, zipfile, ...) and scanning sys.path costs 40-55 ms of every cold start.
    # Answer that one question from the dist-info directory next to the package.
    shim = types.ModuleType("importlib.metadata")
    shim.version = dist_version    # type: ignore[attr-defined]
    sys.modules["importlib.metadata"] = shim
    try:
        import paramiko  # noqa: F401
    finally:
        if sys.modules.get("importlib.metadata") is shim:
            del sys.modules["importlib.metadata"]
        if getattr(importlib, "metadata", None) is shim:
            del importlib.metadata


def dist_version(name: str) -> str:
    """``importlib.metadata.version(name)`` for an installed package, usually without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin:
        top = os.path.dirname(spec.origin) if spec.submodule_search_locations is not None else spec.origin
        prefix = name.lower().replace("-", "_") + "-"
        try:
            found = [e for e in os.listdir(os.path.dirname(top))
                     if e.lower().startswith(prefix) and e.endswith(".dist-info")]
        except OSError:
            found = []
        if len(found) == 1:
            return found[0][len(prefix):-len(".dist-info")]
    if getattr(sys.modules.get("importlib.metadata"), "version", None) is dist_version:
        del sys.modules["importlib.metadata"]     # not unique or not beside the package: ask properly
    from importlib import metadata

    return metadata.version(name)
