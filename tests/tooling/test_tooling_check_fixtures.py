"""``check`` on the files of ``fixtures/check``: each line marked ``# expect: CODE`` is found.

A fixture's first line names the rules it is about (``# check: FUS002 FUS005``); findings of
other rules (an unresolvable ``app.db`` import, say) are not its concern. Unmarked lines are
the negative twins: reporting them is noise.
"""

from __future__ import annotations

import re
import shutil

import pytest

from flask_unified_session.tooling.checker import check_project
from flask_unified_session.tooling.config import Config

from .conftest import FIXTURES, WriteProject

CHECK_FIXTURES = sorted(p.name for p in (FIXTURES / "check").glob("*.py"))
EXPECT = re.compile(r"#\s*expect:\s*(?P<codes>FUS\d{3}(?:\s*,\s*FUS\d{3})*)")


def expected(text: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(rules under test, [(line, code)] marked in the fixture)."""
    first = text.splitlines()[0]
    assert first.startswith("# check:"), "a check fixture names its rules on line 1"
    rules = set(first.removeprefix("# check:").split())
    marks = [
        (number, code.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if (match := EXPECT.search(line))
        for code in match.group("codes").split(",")
    ]
    return rules, marks


@pytest.mark.parametrize("name", CHECK_FIXTURES)
def test_check_fixture(name: str, project: WriteProject) -> None:
    """Exactly the marked lines are reported, for the rules the fixture is about."""
    root = project()
    shutil.copy(FIXTURES / "check" / name, root / name)
    text = (root / name).read_text(encoding="utf-8")
    rules, marks = expected(text)
    found = check_project([(root / name, name)], root, Config()).findings
    assert sorted((f.line, f.code) for f in found if f.code in rules) == sorted(marks)


def test_every_rule_fixed_in_issue_13_has_a_fixture() -> None:
    """The misses and the noise of version 1 each have their fixture."""
    assert len(CHECK_FIXTURES) >= 7


def test_branch_and_plain_close_messages(project: WriteProject) -> None:
    """A finally in one branch and a close outside any finally each say what is wrong."""
    root = project()
    shutil.copy(FIXTURES / "check" / "closed_in_one_branch.py", root / "a.py")
    (root / "b.py").write_text(
        "from app.db import SessionLocal\n\n\ndef f():\n    s = SessionLocal()\n"
        "    s.query(1)\n    s.close()\n    s = SessionLocal()\n    try:\n        s.query(2)\n"
        "    finally:\n        s.close()\n",
        encoding="utf-8",
    )
    files = [(root / "a.py", "a.py"), (root / "b.py", "b.py")]
    found = [
        (f.path, f.line, f.message)
        for f in check_project(files, root, Config()).findings
        if f.code == "FUS002"
    ]
    assert found == [
        (
            "a.py",
            6,
            "session 'session' is closed in a finally on some paths only: the others leak it",
        ),
        ("b.py", 5, "session 's' is closed, but not in a finally: an exception leaks it"),
    ]
