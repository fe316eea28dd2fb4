"""One test per ``check`` rule, each with a case that must not be reported."""

from __future__ import annotations

import textwrap
from pathlib import Path

from flask_unified_session.tooling.checker import check_project
from flask_unified_session.tooling.config import Config, load_config
from flask_unified_session.tooling.findings import Finding
from flask_unified_session.tooling.project import iter_python_files

from .conftest import FIXTURES, WriteProject


def run_check(root: Path, config: Config | None = None) -> list[Finding]:
    """Check every file of the project at ``root``; findings carry paths relative to root."""
    config = config or load_config(root)
    files = iter_python_files(root, root, config.exclude)
    return check_project(
        [(f, f.relative_to(root).as_posix()) for f in files], root, config
    ).findings


def codes(findings: list[Finding]) -> list[tuple[str, str, int]]:
    """(path, code, line) of each finding."""
    return [(f.path, f.code, f.line) for f in findings]


def src(text: str) -> str:
    """Dedent a source snippet."""
    return textwrap.dedent(text).lstrip("\n")


def test_fus001_direct_get_session_on_manager(project: WriteProject) -> None:
    """FUS001 reports get_session() on manager names, not on other objects."""
    root = project(
        {
            "a.py": src(
                """
                def f(db_manager, cache):
                    s = db_manager.get_session()
                    try:
                        pass
                    finally:
                        s.close()
                    cache.get_session()
                """
            ),
            "b.py": src(
                """
                class S:
                    def g(self):
                        return self.database_manager.get_session()
                """
            ),
        }
    )
    assert codes(run_check(root)) == [("a.py", "FUS001", 2), ("b.py", "FUS001", 3)]


def test_fus001_manager_names_configurable(project: WriteProject) -> None:
    """FUS001 uses manager-names from pyproject.toml instead of the defaults."""
    root = project(
        {"a.py": "def f(db_manager, dbm):\n    dbm.get_session()\n    db_manager.get_session()\n"},
        pyproject='[tool.flask-unified-session]\nmanager-names = ["dbm"]\n',
    )
    assert codes(run_check(root)) == [("a.py", "FUS001", 2)]


def test_fus002_session_not_closed(project: WriteProject) -> None:
    """FUS002 reports factory sessions never closed or closed outside finally, not safe ones."""
    root = project(
        {
            "a.py": src(
                """
                from sqlalchemy.orm import Session
                from app.db import SessionLocal, engine

                def never():
                    s = SessionLocal()
                    s.query(1)

                def not_in_finally():
                    s = SessionLocal()
                    s.query(1)
                    s.close()

                def in_finally():
                    s = SessionLocal()
                    try:
                        s.query(1)
                    finally:
                        s.close()

                def returned():
                    s = Session(bind=engine)
                    return s

                def with_block():
                    s = SessionLocal()
                    with s:
                        s.query(1)

                def helper_closes(db_manager):
                    s = db_manager.get_session()
                    s.query(1)
                    db_manager.close_session(s)
                """
            ),
            "app/db.py": "SessionLocal = engine = None\n",
        }
    )
    found = [(f.code, f.line, f.message) for f in run_check(root) if f.code == "FUS002"]
    assert found == [
        ("FUS002", 5, "session 's' is never closed"),
        ("FUS002", 9, "session 's' is closed, but not in a finally: an exception leaks it"),
        ("FUS002", 30, "session 's' is closed, but not in a finally: an exception leaks it"),
    ]


def test_fus002_ignores_requests_session(project: WriteProject) -> None:
    """FUS002 does not treat requests.Session() as a database session."""
    files = {"a.py": "import requests\n\ndef f():\n    s = requests.Session()\n", "requests.py": ""}
    root = project(files)
    assert run_check(root) == []


def test_fus003_unknown_module(project: WriteProject) -> None:
    """FUS003 reports `from init import Session` but not project, stdlib or installed modules."""
    root = project(
        {
            "app/__init__.py": "",
            "app/models.py": "",
            "app/views.py": src(
                """
                import os.path
                import sqlalchemy.orm
                from init import Session
                from app.models import User
                from app.missing import Thing
                from . import models
                from .models import User as U
                from .nowhere import X
                import definitely_not_installed_pkg_xyz
                try:
                    import tomli
                except ImportError:
                    tomli = None
                """
            ),
        }
    )
    found = [(f.line, f.message) for f in run_check(root)]
    assert found == [
        (3, "module 'init' not found in project or environment"),
        (5, "module 'app.missing' not found in project or environment"),
        (8, "relative module '.nowhere' not found"),
        (9, "module 'definitely_not_installed_pkg_xyz' not found in project or environment"),
    ]


def test_fus003_fixture_from_init_import_session(tmp_path: Path) -> None:
    """The legacy fixture's `from init import Session` is reported by check."""
    root = tmp_path / "legacy"
    root.mkdir()
    (root / ".git").mkdir()
    (root / "views.py").write_text(
        (FIXTURES / "legacy_init_import.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    found = run_check(root)
    assert ("views.py", "FUS003", 3) in codes(found)


def test_fus004_engines_in_several_modules(project: WriteProject) -> None:
    """FUS004 reports engines spread over modules, not several engines in one module."""
    one = project(
        {
            "db.py": src(
                """
                from sqlalchemy import create_engine
                main = create_engine("sqlite://")
                audit = create_engine("sqlite://")
                """
            )
        }
    )
    assert run_check(one) == []
    (one / "jobs.py").write_text(
        "import sqlalchemy as sa\nengine = sa.create_engine('sqlite://')\n", encoding="utf-8"
    )
    assert codes(run_check(one)) == [
        ("db.py", "FUS004", 2),
        ("db.py", "FUS004", 3),
        ("jobs.py", "FUS004", 2),
    ]


def test_fus004_engine_modules_configured(project: WriteProject) -> None:
    """FUS004 with engine-modules reports only calls outside the allowed modules."""
    root = project(
        {
            "app/__init__.py": "",
            "app/db.py": "from sqlalchemy import create_engine\ne = create_engine('x')\n",
            "app/jobs.py": (
                "from sqlalchemy.ext.asyncio import create_async_engine\n"
                "e = create_async_engine('x')\n"
            ),
        },
        pyproject='[tool.flask-unified-session]\nengine-modules = ["app.db"]\n',
    )
    assert codes(run_check(root)) == [("app/jobs.py", "FUS004", 2)]


def test_fus005_session_without_bind(project: WriteProject) -> None:
    """FUS005 reports sqlalchemy.orm.Session() without bind, resolved through imports."""
    root = project(
        {
            "a.py": src(
                """
                import requests
                from sqlalchemy import orm
                from sqlalchemy.orm import Session as OrmSession
                from app.db import engine

                def f():
                    with OrmSession() as s:
                        pass
                    with orm.Session(autoflush=False) as s:
                        pass
                    with OrmSession(engine) as s:
                        pass
                    with orm.Session(bind=engine) as s:
                        pass
                    http = requests.Session()
                    return http
                """
            ),
            "app/db.py": "engine = None\n",
            "requests.py": "",  # a stand-in, so that the test does not depend on requests
        }
    )
    assert codes(run_check(root)) == [("a.py", "FUS005", 7), ("a.py", "FUS005", 9)]


def test_fus005_other_libraries_session(project: WriteProject) -> None:
    """FUS005 ignores a Session class that does not come from sqlalchemy.orm."""
    root = project(
        {"a.py": "from requests import Session\n\nhttp = Session()\n", "requests.py": ""}
    )
    assert run_check(root) == []


def test_fus006_get_session_as_context_manager(project: WriteProject) -> None:
    """FUS006 reports `with manager.get_session() as s`, and not the unit of work."""
    root = project(
        {
            "a.py": src(
                """
                def f(db_manager, current_app):
                    with db_manager.get_session() as s:
                        s.add(1)
                    with current_app.unified_session_manager.get_db_session() as s:
                        s.add(1)
                """
            )
        }
    )
    assert codes(run_check(root)) == [("a.py", "FUS006", 2)]


def test_fus900_syntax_error_is_a_finding(tmp_path: Path) -> None:
    """A file that does not parse is reported as FUS900 and the others are still checked."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "setup.cfg").write_text("", encoding="utf-8")
    (root / "broken.py").write_text(
        (FIXTURES / "broken" / "broken.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (root / "ok.py").write_text("def f(db_manager):\n    db_manager.get_session()\n")
    assert codes(run_check(root)) == [("broken.py", "FUS900", 1), ("ok.py", "FUS001", 2)]


def test_noqa_suppresses_findings(project: WriteProject) -> None:
    """`# noqa` silences every code on its line, `# noqa: CODE` only that code."""
    root = project(
        {
            "a.py": src(
                """
                from init import A  # noqa
                from init import B  # noqa: FUS001
                from init import C  # noqa: FUS003
                """
            )
        }
    )
    assert codes(run_check(root)) == [("a.py", "FUS003", 2)]


def test_ignore_in_config(project: WriteProject) -> None:
    """Codes listed in `ignore` of the configuration are not reported."""
    root = project(
        {"a.py": "from init import A\n"},
        pyproject='[tool.flask-unified-session]\nignore = ["FUS003"]\n',
    )
    assert run_check(root) == []
