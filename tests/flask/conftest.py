"""App fixtures for the Flask layer: Flask-SQLAlchemy apps, plain apps, logins, observers.

pytest-flask's autouse ``_push_request_context`` is replaced by a no-op here: it would keep
one request context (and so one app context) open for the whole test, and every test-client
request would reuse it, so teardown would never run between requests. Tests that need a
context push one themselves. ``client`` is a plain ``app.test_client()`` for the same reason
(``with client:`` defers each request's teardown to the next request).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, request
from flask_login import LoginManager, UserMixin
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

from flask_unified_session import UnifiedSession


@pytest.fixture
def _push_request_context() -> None:
    """No request context for the whole test: each request gets its own, torn down after."""


@pytest.fixture
def client(app: Flask) -> Any:
    """A test client whose requests tear their context down when they end."""
    return app.test_client()


class LoginUser(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def add_login(app: Flask, loader: Callable[[str], Any] | None = None) -> LoginManager:
    """Flask-Login where the ``X-User`` header names the logged-in user (none: anonymous)."""
    manager = LoginManager(app)

    @manager.request_loader
    def load_from_header(req: Any) -> Any:
        user_id = req.headers.get("X-User")
        if not user_id:
            return None
        return loader(user_id) if loader is not None else LoginUser(user_id)

    return manager


class AppMaker:
    """Builds apps and disposes of their engines when the test ends."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.apps: list[tuple[Flask, SQLAlchemy | None]] = []

    def __call__(
        self,
        *,
        flask_sqlalchemy: bool = True,
        login: bool = False,
        extension: UnifiedSession | None = None,
        **config: Any,
    ) -> Flask:
        app = Flask(f"fus_test_{len(self.apps)}")
        app.config.update(TESTING=True, PROPAGATE_EXCEPTIONS=False, SECRET_KEY="test")
        key = "SQLALCHEMY_DATABASE_URI" if flask_sqlalchemy else "UNIFIED_SESSION_DATABASE_URL"
        app.config.setdefault(key, self.db_url)
        app.config.update(config)
        unified = extension if extension is not None else UnifiedSession()
        db: SQLAlchemy | None = None
        if flask_sqlalchemy:
            db = SQLAlchemy()
            db.init_app(app)
            self.apps.append((app, db))
            unified.init_app(app, db=db)
        else:
            self.apps.append((app, None))
            unified.init_app(app)
        app.extensions["test_db"] = db
        if login:
            add_login(app)
        return app

    def close(self) -> None:
        for app, db in self.apps:
            if db is not None:
                with app.app_context():
                    for engine in db.engines.values():
                        engine.dispose()


@pytest.fixture
def make_app(db_url: str, observer: Any) -> Iterator[AppMaker]:
    """Build apps on ``db_url`` (the ``User`` table exists there); engines disposed after."""
    maker = AppMaker(db_url)
    yield maker
    maker.close()


@pytest.fixture(params=["flask_sqlalchemy", "plain"])
def flavour(request: pytest.FixtureRequest) -> str:
    """With Flask-SQLAlchemy adopted, and with the extension's own engine."""
    return str(request.param)


@pytest.fixture
def app(make_app: AppMaker) -> Flask:
    """A Flask-SQLAlchemy app with the extension installed, Flask-Login on ``X-User``."""
    return make_app(login=True)


def engine_of(app: Flask) -> sa.Engine:
    """The app's default engine (Flask-SQLAlchemy's, or the extension's own)."""
    return app.extensions["unified_session"].factory.engine


def connection_id(session: Session) -> object:
    """What identifies the database connection behind ``session`` on the server."""
    connection = session.connection()
    name = connection.dialect.name
    if name == "postgresql":
        return connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    if name in ("mysql", "mariadb"):
        return connection.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
    return id(connection.connection.dbapi_connection)


def user_id_header(user: str | None) -> dict[str, str]:
    return {"X-User": user} if user else {}


__all__ = ["AppMaker", "LoginUser", "add_login", "connection_id", "engine_of", "request"]


#: For Flask-layer logic that does not depend on the database server: run on SQLite only
#: (direct parametrization overrides the ``backend`` fixture of tests/conftest.py).
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])
