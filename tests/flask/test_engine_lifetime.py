"""Engines live as long as their users; adopted engines serve other factories (points 12-13).

Checked from outside: the process's open file descriptors, the registry's live engines,
warnings (errors in this test run), and a real FastAPI app through its TestClient.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

from flask_unified_session import (
    DuplicateEngineWarning,
    SessionFactory,
    UnifiedSession,
    get_default_factory,
    get_session_generator,
)
from flask_unified_session.engines import duplicate_groups, known_engines
from tests.conftest import Observer, User


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_dropped_apps_leave_no_engine_and_no_open_file(tmp_path: Any) -> None:
    """200 apps on distinct SQLite files, used and dropped: no engine, no file left."""
    gc.collect()
    engines_before, files_before = len(known_engines()), open_files()
    for i in range(200):
        app = Flask(f"app{i}")
        app.config["UNIFIED_SESSION_DATABASE_URL"] = f"sqlite:///{tmp_path}/db{i}.db"
        UnifiedSession(app)
        with app.app_context(), app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.execute(sa.text("SELECT 1"))
        del app, session
    gc.collect()
    assert len(known_engines()) == engines_before
    assert open_files() <= files_before + 2  # a little slack for the interpreter's own


@pytest.mark.postgresql
def test_an_app_per_test_suite_gets_no_duplicate_warning(observer: Observer, db_url: str) -> None:
    """Apps built one after another with db= on one database: no warning, no duplicate."""
    for i in range(20):
        db = SQLAlchemy()
        app = Flask(f"per_test_{i}")
        app.config["SQLALCHEMY_DATABASE_URI"] = db_url
        db.init_app(app)
        UnifiedSession().init_app(app, db=db)  # warnings are errors in this run
        with app.app_context(), app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.add(User(name=f"u{i}"))
        assert duplicate_groups() == []
        with app.app_context():
            db.engine.dispose()
        del app, db, session
    assert observer.count() == 20


def _create_app(name: str, db_url: str) -> tuple[Flask, SQLAlchemy]:
    # An app factory, as in Flask's tutorial: each call builds its engine on this line.
    db = SQLAlchemy()
    app = Flask(name)
    app.config["SQLALCHEMY_DATABASE_URI"] = db_url
    db.init_app(app)
    UnifiedSession().init_app(app, db=db)
    return app, db


def test_apps_a_test_runner_still_holds_get_no_duplicate_warning(
    observer: Observer, db_url: str
) -> None:
    """An app per test whose earlier apps are still alive (a TestCase's self.app, a fixture):
    their engines were made on one line, by one factory. No warning (errors here)."""
    kept = [_create_app(f"kept_{i}", db_url) for i in range(3)]
    try:
        for i, (app, _db) in enumerate(kept):
            with app.app_context(), app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
                session.add(User(name=f"kept {i}"))
        assert observer.count() == 3
        # Two ways to reach the database are still told apart.
        with pytest.warns(DuplicateEngineWarning, match="two engines reach the same database"):
            other = _other_app(db_url)
    finally:
        for app, db in kept:
            with app.app_context():
                db.engine.dispose()
    with other.app_context():
        other.extensions["sqlalchemy"].engine.dispose()


def _other_app(db_url: str) -> Flask:
    db = SQLAlchemy()
    app = Flask("elsewhere")
    app.config["SQLALCHEMY_DATABASE_URI"] = db_url
    db.init_app(app)
    UnifiedSession().init_app(app, db=db)  # another line than _create_app's
    return app


@pytest.fixture
def flask_app(db_url: str, observer: Observer) -> Iterator[tuple[Flask, SQLAlchemy]]:
    db = SQLAlchemy()
    app = Flask("beside_fastapi")
    app.config["SQLALCHEMY_DATABASE_URI"] = db_url
    db.init_app(app)
    UnifiedSession().init_app(app, db=db)
    yield app, db
    with app.app_context():
        db.engine.dispose()


def test_a_factory_for_the_same_database_shares_the_adopted_engine(
    flask_app: tuple[Flask, SQLAlchemy], db_url: str
) -> None:
    """SessionFactory.from_env() beside a Flask-SQLAlchemy app: the app's engine, one pool."""
    app, db = flask_app
    with app.app_context():
        engine = db.engine
    factory = SessionFactory.from_env({"DATABASE_URL": db_url})
    assert factory.engine is engine
    assert not factory.owns_engine
    assert [r.engine for r in known_engines()] == [engine]


def test_fastapi_beside_flask_uses_the_flask_apps_engine(
    flask_app: tuple[Flask, SQLAlchemy],
    db_url: str,
    observer: Observer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Point 13: a FastAPI endpoint on Depends(get_session_generator): no second pool."""
    app, db = flask_app
    monkeypatch.setenv("DATABASE_URL", db_url)
    with app.app_context():
        engine = db.engine
    api = FastAPI()

    @api.post("/users/{name}")
    def create(
        name: str, session: Annotated[Session, Depends(get_session_generator)]
    ) -> dict[str, str]:
        session.add(User(name=name))
        session.commit()
        return {"name": name}

    async def call() -> int:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return (await client.post("/users/from-fastapi")).status_code

    assert asyncio.run(call()) == 200
    assert observer.names() == ["from-fastapi"]
    assert get_default_factory().engine is engine
    assert [r.engine for r in known_engines()] == [engine]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
