"""A distribution's ``Requires-Python`` (PEP 440 specifiers) against a host's Python version.

``packaging`` is not ours to depend on, and only the part of PEP 440 that ``Requires-Python``
uses is needed: comparison clauses (``>=3.8``, ``!=3.0.*``, ``~=3.9``, ``===``), joined by
commas, against a final release (the host's major.minor.micro).  The ordering of versions is
``packaging``'s: a release's dev releases < its pre-releases < the release < its post-releases.
"""

from __future__ import annotations

import re

_SPEC = re.compile(r"^(~=|===|==|!=|<=|>=|<|>)\s*(\S+)$")
_VERSION = re.compile(r"^v?(?P<release>\d+(?:\.\d+)*)"
                      r"(?:[-_.]?(?P<pre>a|alpha|b|beta|c|rc|pre|preview)[-_.]?(?P<pre_n>\d*))?"
                      r"(?:-(?P<post_n1>\d+)|[-_.]?(?P<post>post|rev|r)[-_.]?(?P<post_n2>\d*))?"
                      r"(?:[-_.]?(?P<dev>dev)[-_.]?(?P<dev_n>\d*))?$", re.IGNORECASE)
_PHASE = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}
_INF = float("inf")


def _strip(release: tuple[int, ...]) -> tuple[int, ...]:
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    return release


def _key(text: str) -> tuple | None:
    """A PEP 440 version as a sort key, as ``packaging`` orders them (a release's dev
    releases < its pre-releases < the release < its post-releases); None if it is not one."""
    m = _VERSION.match(text)
    if m is None:
        return None
    release = _strip(tuple(int(x) for x in m.group("release").split(".")))
    pre: tuple[float, int] | None = None
    if m.group("pre"):
        pre = (_PHASE[m.group("pre").lower()], int(m.group("pre_n") or 0))
    if m.group("post_n1") is not None:
        post: float = int(m.group("post_n1"))
    else:
        post = int(m.group("post_n2") or 0) if m.group("post") else -_INF
    dev = int(m.group("dev_n") or 0) if m.group("dev") else _INF
    if pre is None:
        pre = (-_INF, 0) if dev != _INF and post == -_INF else (_INF, 0)
    return release, pre, post, dev


def _one(op: str, text: str, have: tuple[int, ...]) -> bool | None:
    """Does the final release ``have`` satisfy the clause ``op text``? None: unparseable."""
    if op == "===":
        return text.lower() == ".".join(map(str, have))
    if text.endswith(".*"):
        if op not in ("==", "!="):
            return None
        m = re.match(r"^v?(\d+(?:\.\d+)*)\.\*$", text)
        if m is None:
            return None
        prefix = tuple(int(x) for x in m.group(1).split("."))
        padded = have + (0,) * max(0, len(prefix) - len(have))
        return (padded[:len(prefix)] == prefix) == (op == "==")
    want = _key(text)
    if want is None:
        return None
    mine = (_strip(have), (_INF, 0), -_INF, _INF)
    if op == "~=":
        m = _VERSION.match(text)
        assert m is not None    # (_key parsed it)
        release = tuple(int(x) for x in m.group("release").split("."))
        if len(release) < 2:
            return None
        prefix = release[:-1]
        padded = have + (0,) * max(0, len(prefix) - len(have))
        return mine >= want and padded[:len(prefix)] == prefix
    return {"==": mine == want, "!=": mine != want, "<=": mine <= want, ">=": mine >= want,
            "<": mine < want, ">": mine > want}[op]


def allows(spec: str, version: tuple[int, ...]) -> bool | None:
    """Does Python ``version`` (major, minor, micro) satisfy the Requires-Python ``spec``
    (PEP 440: ``>=3.8``, ``>=2.7,!=3.0.*,<4``, ``~=3.9``)?  None when the specifier cannot be
    parsed: the caller then lets the module go (a metadata typo must not block an import)."""
    clauses = [c.strip() for c in spec.split(",")]
    if not any(clauses):
        return True
    have = tuple(int(v) for v in version)
    verdict = True
    for clause in clauses:
        m = _SPEC.match(clause.replace(" ", ""))
        if m is None:
            return None
        ok = _one(m.group(1), m.group(2), have)
        if ok is None:
            return None
        verdict = verdict and ok
    return verdict
