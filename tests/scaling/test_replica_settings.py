"""The replica settings: ``DB_REPLICA_*`` / ``UNIFIED_SESSION_REPLICA_*``, read and
checked like the other settings, and what a ``ReplicaSet`` takes from them.

No server is needed: nothing here connects.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_unified_session import ConfigurationError, SessionFactory, Settings, UnifiedSession
from flask_unified_session.config import read_replica_settings
from flask_unified_session.replicas import (
    DEFAULT_MAX_LAG,
    DEFAULT_RETRY_AFTER,
    DEFAULT_WAIT,
    ReplicaSet,
)
from flask_unified_session.state import get_state

PRIMARY = "postgresql+psycopg://app:s3cret@db.internal/app"
REPLICA = "postgresql+psycopg://app:s3cret@replica.internal/app"


def test_the_defaults() -> None:
    settings = Settings.from_env({"DATABASE_URL": PRIMARY})
    assert (settings.replica_wait, settings.replica_max_lag, settings.replica_retry_after) == (
        2.0,
        30.0,
        5.0,
    )
    assert (DEFAULT_WAIT, DEFAULT_MAX_LAG, DEFAULT_RETRY_AFTER) == (2.0, 30.0, 5.0)


def test_the_environment_names() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": PRIMARY,
            "DB_REPLICA_URLS": REPLICA,
            "DB_REPLICA_WAIT": "0",
            "DB_REPLICA_MAX_LAG": " 7.5 ",
            "DB_REPLICA_RETRY_AFTER": "1",
        }
    )
    assert (settings.replica_wait, settings.replica_max_lag, settings.replica_retry_after) == (
        0.0,
        7.5,
        1.0,
    )
    factory = SessionFactory(settings=settings)
    try:
        replicas = factory.replicas
        assert replicas is not None
        assert (replicas.wait, replicas.max_lag, replicas.retry_after) == (0.0, 7.5, 1.0)
    finally:
        factory.dispose()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("DB_REPLICA_WAIT", "soon", "DB_REPLICA_WAIT must be a number of seconds, got 'soon'"),
        ("DB_REPLICA_WAIT", "-1", "DB_REPLICA_WAIT must be a number of seconds, 0 or more"),
        ("DB_REPLICA_WAIT", "inf", "DB_REPLICA_WAIT must be a number of seconds"),
        ("DB_REPLICA_MAX_LAG", "0", "DB_REPLICA_MAX_LAG must be a number of seconds, more than 0"),
        ("DB_REPLICA_MAX_LAG", "nan", "DB_REPLICA_MAX_LAG must be a number of seconds"),
        ("DB_REPLICA_RETRY_AFTER", "0", "DB_REPLICA_RETRY_AFTER must be a number of seconds"),
        ("DB_REPLICA_RETRY_AFTER", "86401", "at most 86400 (one day)"),
        ("DB_REPLICA_RETRY_AFTER", "true", "DB_REPLICA_RETRY_AFTER must be a number"),
    ],
)
def test_a_value_that_cannot_work_names_the_variable(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env({"DATABASE_URL": PRIMARY, key: value})


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigurationError, match="replica_max_lag must be a number of seconds"):
        Settings(url=sa.make_url(PRIMARY), replica_max_lag=-3)
    with pytest.raises(ConfigurationError, match="replica_wait"):
        Settings(url=sa.make_url(PRIMARY), replica_wait=True)  # type: ignore[arg-type]


def test_read_replica_settings_reads_only_what_is_set() -> None:
    primary = sa.make_url(PRIMARY)
    assert read_replica_settings({}, primary) == {}
    assert read_replica_settings({"DB_REPLICA_URLS": "", "DB_REPLICA_WAIT": ""}, primary) == {}
    found = read_replica_settings(
        {"UNIFIED_SESSION_REPLICA_URLS": [REPLICA], "UNIFIED_SESSION_REPLICA_MAX_LAG": 3},
        primary,
        prefix="UNIFIED_SESSION_",
    )
    assert found == {"replica_urls": (sa.make_url(REPLICA),), "replica_max_lag": 3.0}
    with pytest.raises(ConfigurationError, match=r"DB_REPLICA_URLS \(URL 1 of 1\) is a 'sqlite'"):
        read_replica_settings({"DB_REPLICA_URLS": "sqlite:///x.db"}, primary)


def test_the_flask_names_without_db() -> None:
    app = Flask(__name__)
    app.config.update(
        UNIFIED_SESSION_DATABASE_URL=PRIMARY,
        UNIFIED_SESSION_REPLICA_URLS=REPLICA,
        UNIFIED_SESSION_REPLICA_WAIT=0.25,
        UNIFIED_SESSION_REPLICA_RETRY_AFTER="9",
    )
    UnifiedSession(app)
    factory = get_state(app).factory
    try:
        assert factory.replicas is not None
        assert (factory.replicas.wait, factory.replicas.retry_after) == (0.25, 9.0)
    finally:
        factory.dispose()
    broken = Flask(__name__)
    broken.config.update(UNIFIED_SESSION_DATABASE_URL=PRIMARY, UNIFIED_SESSION_REPLICA_MAX_LAG="-1")
    with pytest.raises(ConfigurationError, match="UNIFIED_SESSION_REPLICA_MAX_LAG"):
        UnifiedSession(broken)


def _db_app(**config: Any) -> tuple[Flask, SQLAlchemy]:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=PRIMARY, **config)
    db = SQLAlchemy()
    db.init_app(app)
    return app, db


def test_beside_db_the_replica_keys_are_allowed_and_engine_keys_are_not() -> None:
    app, db = _db_app(
        UNIFIED_SESSION_REPLICA_URLS=REPLICA,
        UNIFIED_SESSION_REPLICA_WAIT="0.5",
        UNIFIED_SESSION_REPLICA_MAX_LAG="4",
        UNIFIED_SESSION_REPLICA_RETRY_AFTER="6",
    )
    UnifiedSession(app, db=db)
    factory = get_state(app).factory
    try:
        replicas = factory.replicas
        assert isinstance(replicas, ReplicaSet)
        assert (replicas.wait, replicas.max_lag, replicas.retry_after) == (0.5, 4.0, 6.0)
        assert "s3cret" not in repr(replicas)
    finally:
        factory.dispose()
        with app.app_context():
            db.engine.dispose()
    refused, refused_db = _db_app(
        UNIFIED_SESSION_REPLICA_URLS=REPLICA, UNIFIED_SESSION_POOL_SIZE=20
    )
    with pytest.raises(ConfigurationError, match="UNIFIED_SESSION_POOL_SIZE is set, but"):
        UnifiedSession(refused, db=refused_db)
    with refused.app_context():
        refused_db.engine.dispose()
