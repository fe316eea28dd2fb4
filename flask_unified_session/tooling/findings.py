"""Rule catalogue and the :class:`Finding` record shared by ``check`` and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """A rule of ``check``: its code, what it detects and how to fix it."""

    code: str
    summary: str
    fix: str


RULES: dict[str, Rule] = {
    rule.code: rule
    for rule in (
        Rule(
            "FUS001",
            "direct get_session() call on a db manager",
            "use `with self.db_session() as session:` (SessionServiceMixin) or "
            "`with current_app.unified_session_manager.get_db_session() as session:`",
        ),
        Rule(
            "FUS002",
            "session from a factory is not closed on every path",
            "open it with `with ... as session:` or close it in a `finally:` block",
        ),
        Rule(
            "FUS003",
            "import of a module that exists neither in the project nor in the environment",
            "import the module by its real path (e.g. `from myapp.db import Session`)",
        ),
        Rule(
            "FUS004",
            "engine created outside the modules allowed to create engines",
            "create engines in one module (set `engine-modules`) and share them",
        ),
        Rule(
            "FUS005",
            "sqlalchemy.orm.Session() instantiated without a bind",
            "pass `bind=engine`, or use the manager's unit of work",
        ),
        Rule(
            "FUS006",
            "get_session() used as a context manager: it closes but never commits",
            "use the unit of work `get_db_session()` / `self.db_session()` which commits on exit",
        ),
        Rule(
            "FUS007",
            "session factory (sessionmaker / async_sessionmaker) created in more than one module",
            "create the session factory once, next to the engine, and import it",
        ),
        Rule(
            "FUS900",
            "file does not parse",
            "fix the syntax error (the file was not checked)",
        ),
    )
}


@dataclass(frozen=True, order=True)
class Finding:
    """One problem found at ``path:line:col`` (line and column are 1-based)."""

    path: str
    line: int
    col: int
    code: str
    message: str

    @property
    def fix(self) -> str:
        """The one-line fix explanation of the finding's rule."""
        return RULES[self.code].fix

    def to_text(self) -> str:
        """Render as ``path:line:col: CODE message``."""
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"

    def to_dict(self) -> dict[str, object]:
        """Render as a JSON-compatible mapping."""
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
        }


def render_json(findings: list[Finding]) -> str:
    """Render findings as a JSON array (one object per finding)."""
    return json.dumps([f.to_dict() for f in findings], indent=2)
