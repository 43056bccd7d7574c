"""The docs' references to the code stay true: named tests exist, every module is in the map.

docs/reliability.md (and the other docs) hold each promise by naming the test that checks it,
as ``tests/test_x.py::test_name``, ``test_x.py::test_name`` or, later in the same table cell, a
bare ``test_other`` of the same file. A test renamed or moved leaves the promise pointing at
nothing; these checks make that a failure instead. docs/how-it-works.md's module map must list
every module of the package, so that a new module cannot go undescribed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
#: ``tests/test_x.py``, ``test_x.py::test_y``, ``tests/sub/test_x.py::Class::test_y[param]``
TEST_REF = re.compile(r"(?:tests/)?((?:\w+/)*\w+\.py)(?:::(\w+)(?:::(\w+))?(?:\[[^\]]*\])?)?")
BARE_TEST = re.compile(r"(test_\w+)(?:\[[^\]]*\])?")
#: names the docs give as what a test was called before (history, not a reference)
HISTORY = re.compile(r"then named|was named|formerly")


def defines(path: Path, name: str) -> bool:
    return re.search(r"^\s*(?:async\s+)?(?:def|class)\s+%s\b" % re.escape(name), path.read_text(), re.M) is not None


def find_test_references(text: str) -> list[tuple[int, str, Path, list[str]]]:
    """(line, reference, test file, names it must define) for each test reference in ``text``."""
    refs = []
    for number, line in enumerate(text.splitlines(), 1):
        if HISTORY.search(line):
            continue
        for cell in line.split(" | "):
            current = None
            for quoted in re.finditer(r"`([^`]+)`", cell):
                token = quoted.group(1)
                ref = TEST_REF.fullmatch(token)
                if ref and (token.startswith("tests/") or ref.group(1).rsplit("/", 1)[-1].startswith("test_")):
                    current = ROOT / "tests" / ref.group(1)
                    refs.append((number, token, current, [n for n in ref.group(2, 3) if n]))
                elif current is not None and BARE_TEST.fullmatch(token):
                    refs.append((number, token, current, [BARE_TEST.fullmatch(token).group(1)]))
    return refs




def test_every_test_the_docs_name_exists():
    missing = []
    count = 0
    for doc in DOCS:
        for number, token, path, names in find_test_references(doc.read_text()):
            count += 1
            if not path.is_file():
                missing.append("%s:%d: %s: no file %s" % (doc.name, number, token, path.relative_to(ROOT)))
                continue
            missing += ["%s:%d: %s: %s defines no %s" % (doc.name, number, token, path.name, name)
                        for name in names if not defines(path, name)]
    assert count > 50, "the reference pattern found almost nothing: %d references" % count
    assert not missing, "\n".join(missing)


def test_the_checker_sees_a_renamed_test():
    text = "| fault | `tests/test_faults.py::test_remote_agent_killed`, `test_no_such_test_here` |"
    refs = find_test_references(text)
    assert [(token, names) for _, token, _, names in refs] == [
        ("tests/test_faults.py::test_remote_agent_killed", ["test_remote_agent_killed"]),
        ("test_no_such_test_here", ["test_no_such_test_here"])]
    assert defines(refs[0][2], "test_remote_agent_killed") and not defines(refs[1][2], "test_no_such_test_here")


def test_the_module_map_lists_every_module():
    package = ROOT / "remoteproc"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    text = (ROOT / "docs" / "how-it-works.md").read_text()
    section = text[text.index("## Modules, one job each"):text.index("## Start-up")]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, re.M))
    assert sorted(modules - listed) == [], "modules missing from docs/how-it-works.md's module map"
    assert sorted(listed - modules) == [], "docs/how-it-works.md's module map names modules that do not exist"
