"""The ``unified_rollback`` fixture in real pytest sessions, checked from outside."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Observer

from .conftest import RunInner

# The app of a project that uses Flask-SQLAlchemy; scripts share its engine.
FSA_APP = """
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_unified_session import SessionFactory, UnifiedSession, set_default_factory

from conftest import URL, Base, User

db = SQLAlchemy(model_class=Base)


@pytest.fixture(scope="module")
def app():
    app = Flask(__name__)
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI=URL)
    db.init_app(app)
    UnifiedSession(app, db=db)
    engine = app.extensions["unified_session"].factory.engine
    set_default_factory(SessionFactory(engine=engine))
    yield app
    set_default_factory(None)
    engine.dispose()
"""

# The app of a project without Flask-SQLAlchemy: DATABASE_URL for the app and scripts.
PLAIN_APP = """
import pytest
import sqlalchemy as sa
from flask import Flask

from flask_unified_session import UnifiedSession, dispose_engines, set_default_factory

from conftest import URL, Base, User


@pytest.fixture
def app():
    app = Flask(__name__)
    app.config.update(TESTING=True)
    UnifiedSession(app)
    yield app
    set_default_factory(None)
    dispose_engines()
"""

EVERY_ENTRY_POINT = """
from flask import current_app

import flask_unified_session as fus
from flask_unified_session import SessionServiceMixin


class Service(SessionServiceMixin):
    db_manager = None

    def add(self, name):
        with self.db_session() as session:
            session.add(User(name=name))


def count_in_test():
    with fus.session_scope() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(User))


def test_commits_through_every_entry_point(unified_rollback, app, committed):
    names = []
    with app.app_context():
        with current_app.unified_session_manager.get_db_session() as session:
            session.add(User(name="get_db_session"))
        with current_app.request_session_manager.session_scope() as session:
            session.add(User(name="request_session_scope"))
        session = fus.create_session()
        session.add(User(name="create_session_in_app"))
        session.commit()
        session.close()
        with fus.session_scope() as session:
            session.add(User(name="session_scope_in_app"))
        Service().add("mixin_in_app")
        names += ["get_db_session", "request_session_scope", "create_session_in_app"]
        names += ["session_scope_in_app", "mixin_in_app"]
        if DB is not None:
            DB.session.add(User(name="db_session_commit"))
            DB.session.commit()
            names.append("db_session_commit")
    session = fus.create_session()
    session.add(User(name="create_session"))
    session.commit()
    session.close()
    with fus.session_scope() as session:
        session.add(User(name="session_scope"))
    Service().add("mixin")
    generator = fus.get_session_generator()
    session = next(generator)
    session.add(User(name="session_generator"))
    session.commit()
    generator.close()
    with fus.get_engine().begin() as connection:
        connection.execute(sa.insert(User).values(name="engine_begin"))
    names += ["create_session", "session_scope", "mixin", "session_generator"]
    names += ["engine_begin"]
    assert count_in_test() == len(names)
    assert committed() == []


def test_nothing_is_left_for_the_next_test(unified_rollback, app, committed):
    assert committed() == []
    assert count_in_test() == 0
"""


@pytest.mark.parametrize("app_source", [FSA_APP, PLAIN_APP], ids=["flask_sqlalchemy", "plain"])
def test_commits_through_every_entry_point_are_rolled_back(
    run_inner: RunInner, observer: Observer, db_url: str, app_source: str
) -> None:
    """Commits made through every entry point inside the test are undone after it."""
    db_line = "DB = db" if "SQLAlchemy(" in app_source else "DB = None"
    env = {} if "SQLAlchemy(" in app_source else {"DATABASE_URL": db_url}
    result = run_inner(app_source + db_line + EVERY_ENTRY_POINT, **env)
    result.assert_outcomes(passed=2)
    assert observer.count() == 0


PYTEST_FLASK = """
from flask import current_app, request

from flask_unified_session import SessionServiceMixin


class Service(SessionServiceMixin):
    pass


@pytest.fixture(scope="module")
def app():
    app = Flask(__name__)
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI=URL)
    db.init_app(app)
    UnifiedSession(app, db=db)

    @app.post("/users")
    def add_user():
        with current_app.unified_session_manager.get_db_session() as session:
            session.add(User(name=request.form["name"]))
        db.session.add(User(name=request.form["name"] + "-db"))
        db.session.commit()
        with Service().db_session() as session:
            session.add(User(name=request.form["name"] + "-mixin"))
        return "", 201

    @app.get("/users")
    def count_users():
        return str(db.session.scalar(sa.select(sa.func.count()).select_from(User)))

    yield app
    with app.app_context():
        db.engine.dispose()


pytestmark = pytest.mark.usefixtures("unified_rollback")


def test_requests_in_pytest_flask_context(client, committed):
    assert client.post("/users", data={"name": "ann"}).status_code == 201
    assert client.post("/users", data={"name": "bob"}).status_code == 201
    assert client.get("/users").text == "6"
    assert committed() == []


class TestWithoutPushedContext:
    @pytest.fixture(autouse=True)
    def _push_request_context(self):
        # pytest-flask's documented override: every request gets its own app context.
        pass

    def test_requests_each_in_their_own_context(self, client, committed):
        assert client.post("/users", data={"name": "cyd"}).status_code == 201
        assert client.get("/users").text == "3"
        assert committed() == []
"""


def test_pytest_flask_client_requests_are_rolled_back(
    run_inner: RunInner, observer: Observer
) -> None:
    """Requests made with pytest-flask's ``client`` commit inside the test only."""
    head = FSA_APP[: FSA_APP.index("@pytest.fixture")]
    result = run_inner(head + PYTEST_FLASK)
    result.assert_outcomes(passed=2)
    assert observer.count() == 0


FAILING_THEN_ORDINARY = """
import flask_unified_session as fus


def test_fails_after_committing(unified_rollback, app):
    with fus.session_scope() as session:
        session.add(User(name="rolled-back"))
    assert False, "the test fails"


def test_ordinary_test_after_a_failure(app, committed):
    engine = fus.get_engine()
    assert "connect" not in vars(engine)
    with fus.session_scope() as session:
        session.add(User(name="kept"))
    assert committed() == ["kept"]
"""


def test_failed_test_is_rolled_back_and_unpatched(
    run_inner: RunInner, observer: Observer, db_url: str
) -> None:
    """A failing test is rolled back too, and the next test runs on untouched engines."""
    result = run_inner(PLAIN_APP + FAILING_THEN_ORDINARY, DATABASE_URL=db_url)
    result.assert_outcomes(passed=1, failed=1)
    assert observer.names() == ["kept"]


ORDINARY = """
import flask_unified_session as fus


def test_plugin_is_loaded_but_idle(request, app):
    assert request.config.pluginmanager.has_plugin("flask_unified_session")
    assert "unified_rollback" not in request.fixturenames
    with app.app_context():
        with app.unified_session_manager.get_db_session() as session:
            session.add(User(name="app"))
    with fus.session_scope() as session:
        session.add(User(name="script"))
"""


def test_without_the_fixture_commits_are_real(
    run_inner: RunInner, observer: Observer, db_url: str
) -> None:
    """Installed but not asked for, the plugin changes nothing: commits are real."""
    result = run_inner(PLAIN_APP + ORDINARY, DATABASE_URL=db_url)
    result.assert_outcomes(passed=1)
    assert observer.names() == ["app", "script"]


def test_importing_the_plugin_imports_neither_flask_nor_flask_sqlalchemy() -> None:
    """pytest imports the plugin in every run: it must not pull Flask in."""
    code = (
        "import sys, flask_unified_session.pytest_plugin; "
        "print(sorted(m for m in ('flask', 'flask_sqlalchemy', 'flask_login') "
        "if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "[]"


def docs_example_files() -> dict[str, str]:
    """The files of the complete example in docs/testing.md, by the name on line one."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "testing.md").read_text()
    files = {}
    for block in re.findall(r"^```text\n(# (\w+\.py)\n.*?)^```$", text, re.M | re.S):
        files.setdefault(block[1], block[0])  # the first one: the complete example
    return files


def test_the_documented_example_passes(
    run_inner: RunInner, observer: Observer, db_url: str
) -> None:
    """The complete example of docs/testing.md runs green, and leaves nothing behind."""
    files = docs_example_files()
    assert sorted(files) == ["conftest.py", "myapp.py", "test_users.py"]
    table = f"fus_docs_{os.getpid()}"
    files["myapp.py"] = files["myapp.py"].replace('"users"', repr(table))
    test_users = files.pop("test_users.py")
    result = run_inner(test_users, files, DATABASE_URL=db_url)
    result.assert_outcomes(passed=3)
    assert (
        observer.scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = :t"
            if not db_url.startswith("sqlite")
            else "SELECT count(*) FROM sqlite_master WHERE name = :t",
            t=table,
        )
        == 0
    )
