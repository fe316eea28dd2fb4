"""SessionServiceMixin.db_session(): the app's unit of work in Flask, the db_manager elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from flask_unified_session import SessionFactory, SessionServiceMixin
from tests.conftest import User
from tests.flask.conftest import engine_of


class UserService(SessionServiceMixin):
    def __init__(self, db_manager=None):
        self.db_manager = db_manager

    def add(self, name, fail=False):
        with self.db_session() as session:
            session.add(User(name=name))
            session.flush()
            if fail:
                raise ValueError(name)
            return session


class LegacyManager:
    """A home-made db_manager: get_session() hands out sessions the caller must close."""

    def __init__(self, engine):
        self.engine = engine
        self.sessions = []

    def get_session(self):
        session = Session(self.engine)
        self.sessions.append(session)
        return session


class NoManagerService(SessionServiceMixin):
    """A service that never had a db_manager attribute."""

    def add(self, name):
        with self.db_session() as session:
            session.add(User(name=name))


def _run_in_thread(target):
    errors = []

    def run():
        try:
            target()
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return errors


def test_inside_a_request_it_is_the_apps_unit_of_work(make_app, observer):
    """In a request the mixin ignores db_manager: it joins the route's get_db_session()."""
    app = make_app(login=True)
    legacy = LegacyManager(engine=None)  # would fail if it were used
    seen = {}

    @app.post("/svc")
    def svc():
        with app.unified_session_manager.get_db_session() as outer:
            inner = UserService(legacy).add("from-route")
            seen["same"] = inner is outer
            seen["user_id"] = inner.info.get("user_id")
            seen["checkedout"] = engine_of(app).pool.checkedout()
        return "ok"

    assert app.test_client().post("/svc", headers={"X-User": "3"}).status_code == 200
    assert seen == {"same": True, "user_id": "3", "checkedout": 1}
    assert legacy.sessions == []
    assert observer.names() == ["from-route"]


def test_in_a_thread_without_app_context_it_uses_the_legacy_manager(db_url, observer):
    """No app context: db_manager.get_session() under the protocol, closed after."""
    engine = create_engine(db_url)
    legacy = LegacyManager(engine)
    try:
        assert _run_in_thread(lambda: UserService(legacy).add("thread")) == []
        errors = _run_in_thread(lambda: UserService(legacy).add("thread-fail", fail=True))
        assert [type(e) for e in errors] == [ValueError]
        assert len(legacy.sessions) == 2
        assert all(not s.in_transaction() for s in legacy.sessions)
        assert engine.pool.checkedout() == 0
    finally:
        for session in legacy.sessions:
            session.close()
        engine.dispose()
    assert observer.names() == ["thread"]


def test_in_a_thread_a_session_factory_serves_as_db_manager(make_app, observer):
    """A SessionFactory on the app's engine as db_manager, from a thread: one pool."""
    app = make_app()
    factory = SessionFactory(engine=engine_of(app))
    assert _run_in_thread(lambda: UserService(factory).add("factory-thread")) == []
    assert observer.names() == ["factory-thread"]
    assert engine_of(app).pool.checkedout() == 0


@pytest.mark.parametrize("service", [NoManagerService, UserService], ids=["absent", "none"])
def test_without_db_manager_it_uses_the_default_factory(db_url, observer, monkeypatch, service):
    """No db_manager (absent or None), no app context: the default factory (DATABASE_URL)."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert _run_in_thread(lambda: service().add("default")) == []
    assert observer.names() == ["default"]


SCRIPT = textwrap.dedent(
    """
    import sys
    from sqlalchemy import text
    from flask_unified_session import SessionServiceMixin

    class Importer(SessionServiceMixin):
        def run(self, table):
            with self.db_session() as session:
                session.execute(text(f"INSERT INTO {table} (name, note) VALUES ('script', '')"))

    Importer().run(sys.argv[1])
    """
)


def test_from_a_script_with_only_database_url(db_url, observer, tmp_path):
    """A plain script (no Flask app) with only DATABASE_URL set commits through the mixin."""
    script = tmp_path / "importer.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "FLASK_"))}
    env["DATABASE_URL"] = db_url
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script), User.__tablename__],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert observer.names() == ["script"]
