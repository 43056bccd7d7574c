"""A stand-in for ``pip install -e`` of a setuptools project: the package sits on no sys.path
entry and is found through a finder on sys.meta_path whose module holds a MAPPING of
name -> directory, as setuptools' ``__editable___<name>_finder`` modules do."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def install_editable(monkeypatch: pytest.MonkeyPatch, name: str, root: Path) -> None:
    """Make package ``name`` at ``root`` importable as an editable install (undone by monkeypatch)."""
    finder_module = types.ModuleType("__editable___%s_0_1_finder" % name)
    finder_module.MAPPING = {name: str(root)}     # type: ignore[attr-defined]

    class EditableFinder:
        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if fullname != name:
                return None
            return importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                          submodule_search_locations=[str(root)])

    EditableFinder.__module__ = finder_module.__name__
    monkeypatch.setitem(sys.modules, finder_module.__name__, finder_module)
    monkeypatch.setattr(sys, "meta_path", sys.meta_path + [EditableFinder])
