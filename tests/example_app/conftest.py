"""Fixtures for the example app: a seeded app on its own database, a client, an outsider.

* ``app`` (pytest-flask's name) is ``example_app.create_app()`` on a fresh database with
  the tables created and the demo data seeded. On SQLite it is a file under ``tmp_path``;
  tests parametrized with ``backend_name`` also run on PostgreSQL and MariaDB, in a
  database of this run's own (``fus_example_<pid>``: the example's table names are fixed,
  so the run never touches tables of the shared ``test`` database), dropped at the end.
* pytest-flask's autouse ``_push_request_context`` is replaced by a no-op: with it, every
  test-client request would reuse one app context and no teardown would run between
  requests, which hides exactly the per-request behaviour these tests check.
* ``outside`` is an independent connection (no pool, not the app's engine): it sees only
  what was committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from example_app import create_app, db, models
from example_app.models import Base
from example_app.seed import seed_demo
from example_app.settings import DEMO_PASSWORD, DEMO_USERNAME
from flask_unified_session import session_scope
from tests.conftest import RUN, Observer, server_url

ROOT = Path(__file__).resolve().parents[2]
_databases: dict[str, str] = {}


@pytest.fixture
def _push_request_context() -> None:
    """No context for the whole test: each request pushes and tears down its own."""


@pytest.fixture(autouse=True)
def _cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash new passwords with a cheap method: scrypt costs a third of a second a hash."""
    monkeypatch.setattr(models, "PASSWORD_HASH_METHOD", "pbkdf2:sha256:1000")


@pytest.fixture
def backend_name() -> str:
    """SQLite unless a test parametrizes ``backend_name`` with ``BACKENDS``."""
    return "sqlite"


def _server_database(backend: str) -> str:
    """A database of this run's own on the server of ``backend``, created on first ask."""
    if backend not in _databases:
        url = make_url(server_url(backend))
        name = f"fus_example_{RUN}"
        admin = sa.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            admin.dispose()
        _databases[backend] = url.set(database=name).render_as_string(hide_password=False)
    return _databases[backend]


@pytest.fixture(scope="session", autouse=True)
def _drop_server_databases() -> Iterator[None]:
    """Drop the databases this run created, once every test is done."""
    yield
    for backend, url in _databases.items():
        parsed = make_url(url)
        admin = sa.create_engine(
            make_url(server_url(backend)), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        force = " WITH (FORCE)" if backend == "postgresql" else ""
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {parsed.database}{force}")
        finally:
            admin.dispose()


@pytest.fixture
def example_url(backend_name: str, tmp_path: Path) -> Iterator[str]:
    """An empty database for one test; on a server, its tables are dropped afterwards."""
    if backend_name == "sqlite":
        yield f"sqlite:///{tmp_path / 'example.db'}"
        return
    url = _server_database(backend_name)
    cleaner = sa.create_engine(url, poolclass=NullPool)
    Base.metadata.drop_all(cleaner)
    try:
        yield url
    finally:
        Base.metadata.drop_all(cleaner)
        cleaner.dispose()


def build_app(url: str, *, seed: bool) -> Flask:
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "tests-only"})
    with app.app_context():
        db.create_all()
        if seed:
            with session_scope() as session:
                seed_demo(session)
    return app


def dispose_app(app: Flask) -> None:
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def app(example_url: str) -> Iterator[Flask]:
    """The example app on a fresh, seeded database."""
    application = build_app(example_url, seed=True)
    yield application
    dispose_app(application)


@pytest.fixture
def empty_app(example_url: str) -> Iterator[Flask]:
    """The example app on a database with the tables and no rows."""
    application = build_app(example_url, seed=False)
    yield application
    dispose_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A plain test client: each request tears its context down when it ends."""
    return app.test_client()


@pytest.fixture
def outside(example_url: str) -> Iterator[Observer]:
    """An independent connection to the app's database."""
    watcher = Observer(example_url)
    yield watcher
    watcher.dispose()


def login(client: FlaskClient, username: str = DEMO_USERNAME, password: str = DEMO_PASSWORD) -> Any:
    """Log ``client`` in through the form; returns the response."""
    return client.post("/login", data={"username": username, "password": password})


def engine_of(app: Flask) -> sa.Engine:
    """The app's one engine (Flask-SQLAlchemy's, adopted by the extension)."""
    engine: sa.Engine = app.extensions["unified_session"].engines[None]
    return engine


def run_module(module: str, *args: str, database_url: str, **kwargs: Any) -> Any:
    """Run ``python -m module`` from the repository root with ``DATABASE_URL`` set."""
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )
