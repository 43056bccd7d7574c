"""The docs' references to the code stay true: named tests exist, every module is in the map.

docs/reliability.md (and the other docs) hold each promise by naming the test that checks it,
as ``tests/test_x.py::test_name``, ``test_x.py::test_name`` or, later in the same table cell, a
bare ``test_other`` of the same file. A test renamed or moved leaves the promise pointing at
nothing; these checks make that a failure instead. docs/how-it-works.md's module map must list
every module of the package, so that a new module cannot go undescribed. Every relative link
between the docs (``[x](ssh.md#host-keys)``) must reach a file and, with an anchor, a heading of
it as GitHub names headings; so must a section named in quotes after a doc (``performance.md,
"Other rows"``).
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
#: ``[text](target)`` outside code; ``target`` without a scheme is a relative link
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: ``[x.md](x.md), "Section"`` or ``docs/x.md, "Section"``: a section of another doc named in prose
NAMED_SECTION = re.compile(r"([\w/-]+\.md)\)?,\s+\"([^\"]+)\"")


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


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (lines kept, so that line numbers still count)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)


def headings(text: str) -> tuple[list[str], set[str]]:
    """The headings' texts, and the anchors GitHub gives them (``## Host keys`` -> ``host-keys``;
    a repeated heading's second anchor ends in ``-1``)."""
    titles, anchors, seen = [], set(), {}
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose(text), re.M):
        title = match.group(1)
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        titles.append(title.replace("`", ""))
        anchors.add(slug if count == 0 else "%s-%d" % (slug, count))
    return titles, anchors


def broken_links(doc: Path, text: str) -> list[str]:
    """Each relative link of ``doc`` whose file or anchor does not exist, and each section
    named in quotes after a doc that has no heading of that name."""
    broken = []
    body = prose(text)
    for match in LINK.finditer(body):
        link = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", link):
            continue                                    # https:, mailto:
        number = body.count("\n", 0, match.start()) + 1
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists():
            broken.append("%s:%d: %s: no file %s" % (doc.name, number, link, path))
        elif anchor and target.suffix == ".md" and anchor not in headings(target.read_text())[1]:
            broken.append("%s:%d: %s: %s has no heading with the anchor #%s" % (
                doc.name, number, link, target.name, anchor))
    for match in NAMED_SECTION.finditer(body):
        number = body.count("\n", 0, match.start()) + 1
        target = (ROOT / "docs" / match.group(1).rsplit("/", 1)[-1])
        section = " ".join(match.group(2).split())
        if not target.is_file():
            broken.append("%s:%d: %s: no file" % (doc.name, number, match.group(1)))
        elif not any(title == section or title.startswith(section + " (")
                     for title in headings(target.read_text())[0]):
            broken.append('%s:%d: %s has no section "%s"' % (doc.name, number, target.name, section))
    return broken


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
    others = {str(p.relative_to(package)) for p in package.rglob("*")
              if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert others, "the package's other files (py.typed) were not found"
    assert sorted(name for name in others if "`%s`" % name not in section) == [], \
        "files of the package that docs/how-it-works.md's module section does not name"


def test_every_link_between_the_docs_resolves():
    broken = []
    count = 0
    for doc in DOCS:
        text = doc.read_text()
        count += len(LINK.findall(prose(text)))
        broken += broken_links(doc, text)
    assert count > 100, "the link pattern found almost nothing: %d links" % count
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_a_broken_link():
    doc = ROOT / "docs" / "api.md"
    text = "\n".join([
        "See [ssh](ssh.md#host-keys), [here](#remoteprocess) and [the web](https://example.org/x.md).",
        "```", "[not a link in code](nowhere.md)", "```",
        "Also [gone](gone.md), [a lost anchor](ssh.md#no-such-heading), [a local one](#nor-this).",
        'As [performance.md](performance.md), "Other rows" says, and docs/ssh.md, "No such section".',
    ])
    assert broken_links(doc, text) == [
        "api.md:5: gone.md: no file gone.md",
        "api.md:5: ssh.md#no-such-heading: ssh.md has no heading with the anchor #no-such-heading",
        "api.md:5: #nor-this: api.md has no heading with the anchor #nor-this",
        'api.md:6: ssh.md has no section "No such section"',
    ]
