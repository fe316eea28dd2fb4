"""Runs the inner project (tests/plugin/project) in a pytest subprocess, once per backend.

The plugin is loaded there through its ``pytest11`` entry point, exactly as in a user's
test run. Every scenario of issue 12 is a test of that one project, so that a backend
costs one interpreter start; the outer tests read the outcome of each inner test and
what the inner run left in the database, seen from a connection of their own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.conftest import BACKENDS, server_url

collect_ignore = ["project"]

PROJECT = Path(__file__).parent / "project"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


@dataclass
class InnerRun:
    """The outcome of the inner pytest session, and what it left behind."""

    backend: str
    returncode: int
    output: str
    outcomes: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    rows_left: dict[str, int] = field(default_factory=dict)
    tables_left: list[str] = field(default_factory=list)

    def outcome(self, test: str) -> str:
        wanted = _dotted(test)
        found = [v for k, v in self.outcomes.items() if k == wanted or k.endswith("." + wanted)]
        assert found, f"no inner test {test!r}:\n{self.output[-3000:]}"
        return found[0]

    def assert_passed(self, *tests: str) -> None:
        failed = {t: self.outcome(t) for t in tests if self.outcome(t) != "passed"}
        assert not failed, f"{failed}\n{self.output[-6000:]}"

    def matching(self, prefix: str) -> dict[str, str]:
        """The inner tests whose name starts with ``prefix`` (``module.py``, ``…::test``)."""
        start = _dotted(prefix.replace(".py", ".py::") if prefix.endswith(".py") else prefix)
        return {k: v for k, v in self.outcomes.items() if k.startswith(start)}

    def message(self, test: str) -> str:
        wanted = _dotted(test)
        return next(v for k, v in self.messages.items() if k.endswith(wanted))


def _dotted(test: str) -> str:
    """``module.py::Class::test`` as junit names it: ``module.Class.test``."""
    return test.replace(".py::", ".").replace("::", ".")


def docs_example_files() -> dict[str, str]:
    """The files of the complete example in docs/testing.md, by the name on line one."""
    files: dict[str, str] = {}
    for block in re.findall(r"^```text\n(# (\w+\.py)\n.*?)^```$", DOCS.read_text(), re.M | re.S):
        files.setdefault(block[1], block[0])  # the first one: the complete example
    return files


@pytest.fixture(scope="module", params=BACKENDS)
def project_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InnerRun]:
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"project-{backend}")
    url = f"sqlite:///{tmp / 'test.db'}" if backend == "sqlite" else server_url(backend)
    project = tmp / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
    suffix = f"{os.getpid()}_{backend}"
    docs_table = f"fus_docs_{suffix}"
    example = project / "docs_example"
    example.mkdir()
    for name, text in docs_example_files().items():
        (example / name).write_text(text.replace('"users"', repr(docs_table)))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environ.update(FUS_TEST_URL=url, DATABASE_URL=url, FUS_TEST_SUFFIX=suffix)
    report = tmp / "report.xml"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", f"--junitxml={report}"],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    run = InnerRun(backend, completed.returncode, completed.stdout + completed.stderr)
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            name = f"{case.get('classname', '')}.{case.get('name', '')}"
            kinds = {child.tag: child for child in case}
            kind = next((k for k in ("error", "failure", "skipped") if k in kinds), "passed")
            run.outcomes[name] = {"failure": "failed"}.get(kind, kind)
            if kind != "passed":
                run.messages[name] = kinds[kind].get("message", "") + (kinds[kind].text or "")
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            tables = [t for t in sa.inspect(connection).get_table_names() if suffix in t]
            for table in tables:
                rows = connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
                run.rows_left[table] = int(rows or 0)
        run.tables_left = sorted(tables)
        with engine.begin() as connection:
            for table in tables:
                connection.execute(sa.text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()
    yield run


@pytest.fixture(autouse=True)
def _no_connection_kept() -> Iterator[None]:
    """The connections kept for the tests' transactions are closed after each test here,
    so that no other test of this suite counts them."""
    yield
    from flask_unified_session.testing.rollback import dispose_pools

    dispose_pools()
