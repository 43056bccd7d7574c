"""The suite's own scheduling (tests/conftest.py): the longest files are handed out first."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import pytest
from conftest import LONG_FILES, pytest_xdist_make_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_long_file_exists():
    """A renamed or removed file would silently lose its place (README: the longest start first)."""
    missing = [name for name in LONG_FILES if not os.path.isfile(os.path.join(ROOT, name))]
    assert missing == []


class _Config:
    """What xdist's LoadFileScheduling reads of the config: two workers, --dist loadfile."""

    def getvalue(self, name: str) -> Any:
        return {"dist": "loadfile", "tx": ["2*popen"], "numprocesses": None}.get(name)


def test_the_long_files_go_first_longest_first_and_the_rest_keep_xdists_order(monkeypatch):
    scheduling = pytest.importorskip("xdist.scheduler")
    longest, second = sorted(LONG_FILES, key=lambda name: -LONG_FILES[name])[:2]
    popped: list[list[str]] = []
    monkeypatch.setattr(scheduling.LoadFileScheduling, "_assign_work_unit",
                        lambda self, node: popped.append(list(self.workqueue)))
    scheduler = pytest_xdist_make_scheduler(_Config(), None)
    scheduler.workqueue = OrderedDict((name, {}) for name in ["tests/b_short.py", second, "tests/a_short.py",
                                                              longest])
    scheduler._assign_work_unit(None)
    scheduler._assign_work_unit(None)       # (reordered once: the queue is complete by the first call)
    assert popped[0] == [longest, second, "tests/b_short.py", "tests/a_short.py"]
    assert popped[1] == popped[0]


def test_other_distributions_keep_xdists_scheduler():
    class Load(_Config):
        def getvalue(self, name: str) -> Any:
            return "load" if name == "dist" else super().getvalue(name)

    assert pytest_xdist_make_scheduler(Load(), None) is None
