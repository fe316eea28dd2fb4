"""``check`` and ``migrate`` over whole projects: dependencies, links, encodings, the cache."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from flask_unified_session.tooling import migration
from flask_unified_session.tooling.cache import DIRECTORY_NAME, FORMAT, ResultCache
from flask_unified_session.tooling.cli import main
from flask_unified_session.tooling.config import Config, load_config
from flask_unified_session.tooling.dependencies import import_names
from flask_unified_session.tooling.migration import migrate_project
from flask_unified_session.tooling.project import iter_python_files

from .conftest import FIXTURES, WriteProject
from .test_tooling_check import codes, run_check

SITE = textwrap.dedent(
    """
    def rename(db_manager, user_id, name):
        session = db_manager.get_session()
        try:
            session.get(User, user_id).name = name
            session.commit()
        finally:
            session.close()
    """
)


def run_migrate(
    root: Path, config: Config | None = None, write: bool = True
) -> migration.ProjectRun:
    """migrate every file of ``root`` (no cache), paths relative to the root."""
    config = config or load_config(root)
    files = [(f, f.relative_to(root).as_posix()) for f in iter_python_files(root, root)]
    return migrate_project(files, root, config, write)


# -- check: dependencies, engines, links, syntax errors -------------------------------------
def test_declared_dependencies_are_not_missing_modules(project: WriteProject) -> None:
    """A third-party import declared in requirements, pyproject or setup.cfg is no finding."""
    root = project(
        {
            "app.py": "import telegram\nimport yaml\nimport bs4\nimport jose\nimport aiogram\n"
            "from init import Session\nimport notdeclared_pkg\nimport werkzeug\n",
            "requirements.txt": "python-telegram-bot==21.0  # the bot\n-r other.txt\nFlask>=3\n",
            "requirements-dev.txt": "PyYAML\n",
            "setup.cfg": "[options]\ninstall_requires =\n    beautifulsoup4\n",
        },
        pyproject='[project]\nname = "x"\ndependencies = ["python-jose[cryptography]"]\n'
        '[tool.poetry.dependencies]\naiogram = "^3"\n',
    )
    assert codes(run_check(root)) == [("app.py", "FUS003", 6), ("app.py", "FUS003", 7)]


def test_utf16_req_txt_is_read(project: WriteProject) -> None:
    """`pip freeze > req.txt` in PowerShell writes UTF-16: still a declaration."""
    root = project({"app.py": "import pandas\nimport akshare\n"})
    (root / "req.txt").write_bytes("pandas>=2\r\nakshare==1.0\r\n".encode("utf-16"))
    assert run_check(root) == []


def test_import_names_of_distributions() -> None:
    """Distribution names map to the import names they provide."""
    assert {"telegram", "httpx"} <= import_names("python-telegram-bot")
    assert "flask_login" in import_names("Flask-Login")
    assert "PIL" in import_names("Pillow")
    assert "werkzeug" in import_names("flask")


def test_async_engines_and_session_factories_across_modules(project: WriteProject) -> None:
    """create_async_engine counts for FUS004; async_sessionmaker in two modules is FUS007."""
    make = (
        "from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine\n"
        "engine = create_async_engine(URL)\n"
        "Session = async_sessionmaker(engine)\n"
    )
    root = project({"db.py": make, "worker.py": make})
    found = codes(run_check(root))
    assert [c for c in found if c[1] in ("FUS004", "FUS007")] == [
        ("db.py", "FUS004", 2),
        ("db.py", "FUS007", 3),
        ("worker.py", "FUS004", 2),
        ("worker.py", "FUS007", 3),
    ]


def test_one_module_with_engine_and_factory_is_fine(project: WriteProject) -> None:
    """The negative twin: one module owning its engine and sessionmaker reports nothing."""
    root = project(
        {
            "db.py": "from sqlalchemy import create_engine\n"
            "from sqlalchemy.orm import sessionmaker\n"
            "engine = create_engine(URL)\nSessionLocal = sessionmaker(engine)\n"
        }
    )
    assert run_check(root) == []


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_symlink_loop_and_dangling_link_are_findings(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link loop and a dangling link are FUS900 findings; the other files are checked."""
    root = project({"views.py": "from init import Session\n"})
    (root / "loop.py").symlink_to("loop.py")
    (root / "gone.py").symlink_to("missing.py")
    monkeypatch.chdir(root)
    assert main(["check", "."]) == 1
    out = capsys.readouterr().out
    assert "loop.py:1:1: FUS900 cannot read: loop.py is a symbolic link loop" in out
    assert (
        "gone.py:1:1: FUS900 cannot read: gone.py is a link to missing.py, which does not exist"
        in out
    )
    assert "views.py:1:1: FUS003" in out
    assert main(["migrate", "."]) == 1
    err = capsys.readouterr().err
    assert "error: loop.py: cannot read: loop.py is a symbolic link loop" in err


def test_syntax_errors_at_their_line(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check and migrate report a syntax error at the line Python reports, not line 1."""
    root = project(
        {"bad.py": 'x = 1\ny = """never closed\n\nz = 2\n', "worse.py": "a = 1\n\ndef f(:\n"}
    )
    monkeypatch.chdir(root)
    assert main(["check", "."]) == 1
    out = capsys.readouterr().out
    assert "bad.py:2:5: FUS900" in out
    assert "worse.py:3:7: FUS900" in out
    assert main(["migrate", "."]) == 1
    err = capsys.readouterr().err
    assert "error: bad.py: does not parse: unterminated triple-quoted string literal" in err
    assert "(line 2)" in err
    assert "error: worse.py: does not parse: invalid syntax (line 3)" in err


# -- migrate: encodings, targets per project, cross-file boundaries -------------------------
def test_latin1_source_is_migrated_in_its_encoding(project: WriteProject) -> None:
    """A PEP 263 latin-1 file is read, rewritten and written back in latin-1."""
    root = project()
    source = "# -*- coding: latin-1 -*-\n# Gérer les comptes\n" + SITE
    (root / "accounts.py").write_bytes(source.encode("latin-1"))
    run = run_migrate(root)
    assert [o.error for o in run.outcomes] == [None]
    data = (root / "accounts.py").read_bytes()
    assert b"G\xe9rer" in data  # still latin-1, not UTF-8
    assert "with session_scope() as session:" in data.decode("latin-1")


def test_project_without_flask_gets_no_flask_import(project: WriteProject) -> None:
    """A project that neither imports nor declares Flask: framework-free targets only."""
    service = (
        "class Users:\n    def __init__(self, db_manager):\n        self.db_manager = db_manager\n"
    )
    service += textwrap.indent(SITE.replace("(db_manager, ", "(self, "), "    ").replace(
        "db_manager.get_session", "self.db_manager.get_session"
    )
    root = project({"jobs.py": SITE, "users.py": service, "requirements.txt": "sqlalchemy\n"})
    run_migrate(root)
    for name in ("jobs.py", "users.py"):
        text = (root / name).read_text(encoding="utf-8")
        assert "with session_scope() as session:" in text
        assert "flask import" not in text
        assert "SessionServiceMixin" not in text


def test_project_declaring_flask_gets_the_mixin(project: WriteProject) -> None:
    """The twin: the same service in a project that declares Flask gets SessionServiceMixin."""
    service = (
        "class Users:\n    def __init__(self, db_manager):\n        self.db_manager = db_manager\n"
    )
    service += textwrap.indent(SITE.replace("(db_manager, ", "(self, "), "    ").replace(
        "db_manager.get_session", "self.db_manager.get_session"
    )
    root = project({"users.py": service, "requirements.txt": "Flask\n"})
    run_migrate(root)
    assert "class Users(SessionServiceMixin):" in (root / "users.py").read_text(encoding="utf-8")


def test_helpers_called_from_other_files_keep_their_boundaries(project: WriteProject) -> None:
    """A helper with a mid-block commit, called from a unit in another file, is independent."""
    store = textwrap.dedent(
        """
        def save_with_audit(db_manager, note):
            session = db_manager.get_session()
            try:
                session.add(note)
                session.commit()
                session.add(Audit(note))
                session.commit()
            finally:
                session.close()


        def rename(db_manager, note, title):
            session = db_manager.get_session()
            try:
                session.merge(note).title = title
                session.commit()
            finally:
                session.close()
        """
    )
    routes = textwrap.dedent(
        """
        from flask import request
        from store import rename, save_with_audit


        def create(db_manager):
            session = db_manager.get_session()
            try:
                note = Note(request.form["title"])
                save_with_audit(db_manager, note)
                rename(db_manager, note, note.title.strip())
                session.commit()
            finally:
                session.close()
        """
    )
    root = project({"store.py": store, "routes.py": routes})
    run = run_migrate(root)
    written = (root / "store.py").read_text(encoding="utf-8")
    assert "with session_scope(independent=True) as session:\n        session.add(note)" in written
    assert "with session_scope() as session:\n        session.merge(note)" in written
    targets = {t for o in run.outcomes for t in o.targets}
    assert any("own transaction: called inside another unit of work" in t for t in targets)


def test_accessor_names_are_configurable(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_main_session is migrated through pyproject's accessors or --accessor, not by default."""
    source = SITE.replace("get_session()", "get_main_session()")
    root = project({"jobs.py": source})
    monkeypatch.chdir(root)
    assert main(["migrate", "jobs.py"]) == 0
    assert capsys.readouterr().out == ""  # the default knows only get_session
    assert main(["migrate", "--accessor", "get_main_session", "jobs.py"]) == 0
    assert "+    with session_scope() as session:" in capsys.readouterr().out
    (root / "pyproject.toml").write_text(
        '[tool.flask-unified-session]\naccessors = ["get_session", "get_main_session"]\n',
        encoding="utf-8",
    )
    assert main(["migrate", "jobs.py"]) == 0
    assert "+    with session_scope() as session:" in capsys.readouterr().out


def test_bare_accessor_rewrites_a_factory_call(project: WriteProject) -> None:
    """An accessor other than get_session also matches a plain call such as SessionLocal()."""
    source = SITE.replace("db_manager.get_session()", "SessionLocal()")
    root = project({"jobs.py": source})
    config = Config(accessors=("get_session", "SessionLocal"))
    run_migrate(root, config)
    assert "with session_scope() as session:" in (root / "jobs.py").read_text(encoding="utf-8")
    (root / "other.py").write_text(
        SITE.replace("db_manager.get_session()", "get_session()"), encoding="utf-8"
    )
    run_migrate(root, config)
    assert "session = get_session()" in (root / "other.py").read_text(encoding="utf-8")


# -- the cache --------------------------------------------------------------------------------
def test_second_run_reads_the_cache_and_parses_nothing(
    project: WriteProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After --write, a second run answers from the cache: libcst is not run again."""
    escapes = (FIXTURES / "escapes" / "before.py").read_text(encoding="utf-8")
    root = project({"jobs.py": SITE, "escapes.py": escapes})
    files = [(f, f.relative_to(root).as_posix()) for f in iter_python_files(root, root)]
    cache_dir = root / DIRECTORY_NAME
    first = migrate_project(files, root, Config(), True, ResultCache(cache_dir))
    assert sum(o.rewritten for o in first.outcomes) == 1
    assert (cache_dir / ".gitignore").read_text(encoding="utf-8") == "*\n"
    assert (cache_dir / "CACHEDIR.TAG").is_file()

    def no_codemod(*args: object, **kwargs: object) -> None:
        raise AssertionError("the codemod ran on an unchanged file")

    monkeypatch.setattr(migration, "migrate_source", no_codemod)
    second = migrate_project(files, root, Config(), True, ResultCache(cache_dir))
    assert [o.rewritten for o in second.outcomes] == [0, 0]
    left = {(s.path, s.line, s.reason) for o in second.outcomes for s in o.left}
    assert left == {(s.path, s.line, s.reason) for o in first.outcomes for s in o.left}


def test_damaged_or_absent_cache_is_ignored(project: WriteProject, tmp_path: Path) -> None:
    """A cache file that is not JSON is ignored and rewritten; --no-cache writes nothing."""
    root = project({"jobs.py": SITE})
    cache_dir = root / DIRECTORY_NAME
    cache_dir.mkdir()
    (cache_dir / f"{FORMAT}.json").write_text("{not json", encoding="utf-8")
    files = [(root / "jobs.py", "jobs.py")]
    run = migrate_project(files, root, Config(), False, ResultCache(cache_dir))
    assert run.outcomes[0].rewritten == 1
    assert isinstance(json.loads((cache_dir / f"{FORMAT}.json").read_text(encoding="utf-8")), dict)
    other = tmp_path / "other"
    other.mkdir()
    (other / "more.py").write_text(SITE, encoding="utf-8")
    migrate_project([(other / "more.py", "more.py")], other, Config(), False, ResultCache(None))
    assert not (other / DIRECTORY_NAME).exists()


def test_cache_never_holds_rewritten_code(project: WriteProject) -> None:
    """Only derived facts are stored: the cache cannot write code into a source file."""
    root = project({"jobs.py": SITE})
    cache_dir = root / DIRECTORY_NAME
    migrate_project([(root / "jobs.py", "jobs.py")], root, Config(), False, ResultCache(cache_dir))
    assert "session_scope" not in (cache_dir / f"{FORMAT}.json").read_text(encoding="utf-8")


def test_worker_processes_give_the_same_result(
    project: WriteProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files spread over worker processes come out as they do in one process."""
    escapes = (FIXTURES / "escapes" / "before.py").read_text(encoding="utf-8")
    root = project({"a.py": SITE, "b.py": escapes, "c.py": SITE.replace("rename", "retitle")})
    files = [(f, f.relative_to(root).as_posix()) for f in iter_python_files(root, root)]
    serial = migrate_project(files, root, Config(), False)
    monkeypatch.setattr(migration, "PARALLEL_FROM_BYTES", 0)
    parallel = migrate_project(files, root, Config(), False, workers=2)

    def summary(run: migration.ProjectRun) -> list[tuple[str, str, int, list[int]]]:
        return [(o.path, o.new, o.rewritten, [s.line for s in o.left]) for o in run.outcomes]

    assert summary(parallel) == summary(serial)
