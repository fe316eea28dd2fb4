"""Runs inner pytest sessions in a subprocess, as a project that installed us would.

The plugin is loaded there through its ``pytest11`` entry point, exactly as in a user's
test run; the inner tests reach the outer test's database and table through
``FUS_TEST_URL`` and ``FUS_TEST_TABLE``, so the outer test can look from outside once the
inner session has ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from tests.conftest import User

# Shared by every inner session: the same table as the outer ``User``, and an observer.
INNER_CONFTEST = '''
import os

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

URL = os.environ["FUS_TEST_URL"]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = os.environ["FUS_TEST_TABLE"]

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80), unique=True)
    note: Mapped[str] = mapped_column(sa.String(200), default="")


@pytest.fixture
def committed():
    """Names that are committed, seen from a connection of its own."""
    engine = sa.create_engine(URL, poolclass=NullPool)

    def names():
        with engine.connect() as connection:
            return sorted(connection.scalars(sa.select(User.name)))

    yield names
    engine.dispose()
'''

INNER_INI = """
[pytest]
addopts = -p no:cacheprovider
filterwarnings = error
"""


@dataclass
class InnerRun:
    """The outcome of an inner pytest session."""

    returncode: int
    output: str
    outcomes: dict[str, str] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(1 for value in self.outcomes.values() if value == outcome)

    def assert_outcomes(self, passed: int = 0, failed: int = 0) -> None:
        summary = {"passed": self.count("passed"), "failed": self.count("failed")}
        errors = self.count("error") + self.count("skipped")
        assert (summary, errors) == ({"passed": passed, "failed": failed}, 0), self.output


class RunInner(Protocol):
    def __call__(
        self, test_source: str, files: dict[str, str] | None = None, **env: str
    ) -> InnerRun: ...


@pytest.fixture
def run_inner(tmp_path: Path, db_url: str) -> RunInner:
    """Run one inner test module on ``db_url`` in a fresh ``pytest`` process."""

    def run(test_source: str, files: dict[str, str] | None = None, **env: str) -> InnerRun:
        project = tmp_path / "inner"
        project.mkdir(exist_ok=True)
        written = {"pytest.ini": INNER_INI, "conftest.py": INNER_CONFTEST, **(files or {})}
        written["test_inner.py"] = textwrap.dedent(test_source)
        for name, text in written.items():
            (project / name).write_text(text)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        environ.pop("DATABASE_URL", None)
        environ.update(FUS_TEST_URL=db_url, FUS_TEST_TABLE=User.__tablename__, **env)
        report = tmp_path / "report.xml"
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", f"--junitxml={report}", "test_inner.py"],
            cwd=project,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = completed.stdout + completed.stderr
        outcomes: dict[str, str] = {}
        if report.exists():
            for case in ET.parse(report).iter("testcase"):
                kinds = [child.tag for child in case] or ["passed"]
                kind = next((k for k in ("error", "failure", "skipped") if k in kinds), "passed")
                outcomes[case.get("name", "")] = {"failure": "failed"}.get(kind, kind)
        return InnerRun(completed.returncode, output, outcomes)

    return run
