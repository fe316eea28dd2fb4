"""Shared helpers for the tooling tests; ``fixtures/`` holds data files, never tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

collect_ignore_glob = ["fixtures/*"]

FIXTURES = Path(__file__).parent / "fixtures"

WriteProject = Callable[..., Path]


@pytest.fixture
def project(tmp_path: Path) -> WriteProject:
    """Return a function writing files (name -> source) into a fresh project folder."""

    def write(files: dict[str, str] | None = None, pyproject: str = "") -> Path:
        root = tmp_path / "proj"
        root.mkdir(exist_ok=True)
        (root / "pyproject.toml").write_text(pyproject, encoding="utf-8")
        for name, text in (files or {}).items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return root

    return write
