"""Replicas for apps that give ``db=`` (Flask-SQLAlchemy owns the primary's engine).

``UNIFIED_SESSION_REPLICA_URLS`` and the ``UNIFIED_SESSION_REPLICA_*`` bounds are read
beside ``db=`` (they are not engine options of the primary), and a commit through
``db.session`` counts for read-your-writes like one of a unit of work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

from flask_unified_session import ConfigurationError, UnifiedSession
from flask_unified_session.state import get_state

from .conftest import Primary, Replica

WHERE = sa.text("SELECT inet_server_port(), pg_is_in_recovery()")


def notes(session: Any, table: str) -> list[str]:
    return list(session.execute(sa.text(f"SELECT note FROM {table} ORDER BY id")).scalars())


def port(session: Session) -> int:
    return int(session.execute(sa.text("SELECT inet_server_port()")).scalar_one())


def db_app(primary_url: str, **config: Any) -> tuple[Flask, SQLAlchemy]:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=primary_url, **config)
    db = SQLAlchemy()
    db.init_app(app)
    UnifiedSession(app, db=db)
    return app, db


@pytest.fixture
def app_db(primary_url: str, replica_url: str) -> Iterator[tuple[Flask, SQLAlchemy]]:
    app, db = db_app(
        primary_url,
        UNIFIED_SESSION_REPLICA_URLS=replica_url,
        UNIFIED_SESSION_REPLICA_RETRY_AFTER="0.3",
    )
    yield app, db
    get_state(app).factory.dispose()
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


def test_replica_settings_are_read_beside_db(app_db: tuple[Flask, SQLAlchemy]) -> None:
    app, _db = app_db
    factory = get_state(app).factory
    assert factory.settings is None  # the primary's engine is Flask-SQLAlchemy's
    assert factory.replicas is not None
    assert [r.label for r in factory.replicas.replicas] == ["replica 127.0.0.1:5433"]
    assert factory.replicas.retry_after == 0.3
    assert factory.replicas.wait == 2.0  # the default
    assert factory.replicas.primary is factory.engine


def test_a_bad_replica_setting_beside_db_names_its_key(primary_url: str) -> None:
    with pytest.raises(ConfigurationError, match="UNIFIED_SESSION_REPLICA_WAIT"):
        db_app(
            primary_url,
            UNIFIED_SESSION_REPLICA_URLS=primary_url,
            UNIFIED_SESSION_REPLICA_WAIT="-1",
        )
    with pytest.raises(ConfigurationError, match=r"UNIFIED_SESSION_REPLICA_URLS \(URL 1 of 1\)"):
        db_app(primary_url, UNIFIED_SESSION_REPLICA_URLS="sqlite:///other.db")


def test_without_replica_urls_a_db_app_has_no_replicas(primary_url: str) -> None:
    app, db = db_app(primary_url)
    try:
        assert get_state(app).factory.replicas is None
    finally:
        with app.app_context():
            db.engine.dispose()


def test_a_readonly_unit_of_a_db_app_runs_on_the_replica(
    app_db: tuple[Flask, SQLAlchemy], replica_url: str, primary_url: str
) -> None:
    app, db = app_db
    manager = app.unified_session_manager  # type: ignore[attr-defined]
    with app.app_context():
        with manager.get_db_session(readonly=True) as session:
            assert tuple(session.execute(WHERE).one()) == (sa.make_url(replica_url).port, True)
            assert session.info["server"] == "replica 127.0.0.1:5433"
            assert session is not db.session()
        with manager.get_db_session() as session:
            assert session is db.session()
            assert tuple(session.execute(WHERE).one()) == (sa.make_url(primary_url).port, False)
            assert session.info["server"] == "primary"


def test_a_request_of_a_db_app_reads_its_own_write_after_the_replica_replays_it(
    app_db: tuple[Flask, SQLAlchemy], primary: Primary, replica: Replica, replicated_table: str
) -> None:
    app, db = app_db
    manager = app.unified_session_manager  # type: ignore[attr-defined]
    timings: dict[str, float] = {}

    @app.post("/unit")
    def through_a_unit() -> Any:
        with manager.get_db_session() as session:
            session.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('unit')"))
        started = time.monotonic()
        with manager.get_db_session(readonly=True) as session:
            timings["unit"] = time.monotonic() - started
            return {"notes": notes(session, replicated_table), "port": port(session)}

    @app.post("/db-session")
    def through_db_session() -> Any:
        # A commit outside any unit, on Flask-SQLAlchemy's own session.
        db.session.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('db')"))
        db.session.commit()
        started = time.monotonic()
        with manager.get_db_session(readonly=True) as session:
            timings["db"] = time.monotonic() - started
            return {"notes": notes(session, replicated_table), "port": port(session)}

    @app.get("/read")
    def read() -> Any:
        with manager.get_db_session(readonly=True) as session:
            return {"notes": notes(session, replicated_table), "port": port(session)}

    client = app.test_client()
    with replica.apply_delay("1500ms"):
        assert client.post("/unit").get_json() == {"notes": ["unit"], "port": 5433}
        assert client.post("/db-session").get_json() == {"notes": ["unit", "db"], "port": 5433}
        # Control: a request that wrote nothing does not wait for the others' writes.
        primary.execute(f"INSERT INTO {replicated_table} (note) VALUES ('other')")
        started = time.monotonic()
        assert client.get("/read").get_json() == {"notes": ["unit", "db"], "port": 5433}
        assert time.monotonic() - started < 0.5
    assert 1.0 < timings["unit"] < 2.0, timings
    assert 1.0 < timings["db"] < 2.0, timings
