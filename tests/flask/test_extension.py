"""UnifiedSession / init_app: registration, engine adoption, configuration, several apps."""

from __future__ import annotations

import os
import threading

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

import flask_unified_session as fus
from flask_unified_session import ConfigurationError, UnifiedSession
from flask_unified_session.engines import known_engines
from tests.conftest import User
from tests.flask.conftest import engine_of, sqlite_only


@sqlite_only
def test_registers_state_and_both_managers(make_app):
    """State in app.extensions; the two managers on the app under their legacy names."""
    app = make_app()
    state = app.extensions["unified_session"]
    assert app.unified_session_manager is state.unified_session_manager
    assert app.request_session_manager is state.request_session_manager
    assert state.commit_mode == "manual"


@pytest.mark.parametrize("flavour_sa", [True, False], ids=["flask_sqlalchemy", "plain"])
@sqlite_only
def test_second_init_app_is_refused_and_leaves_one_engine(make_app, flavour_sa):
    """init_app twice on one app: a RuntimeError that says so; no second engine appears."""
    app = make_app(flask_sqlalchemy=flavour_sa)
    engines_before = [record.engine for record in known_engines()]
    assert len(engines_before) == 1
    with pytest.raises(RuntimeError, match="already registered"):
        UnifiedSession().init_app(app, db=app.extensions["test_db"])
    assert [record.engine for record in known_engines()] == engines_before


def test_flask_sqlalchemy_engines_are_adopted_not_duplicated(make_app, observer):
    """With db=, the managers use db's engine: no engine of our own, one pool for all."""
    app = make_app()
    db = app.extensions["test_db"]
    with app.app_context():
        assert engine_of(app) is db.engine
        with app.unified_session_manager.get_db_session() as session:
            session.add(User(name="adopted"))
            session.flush()
            assert session.get_bind(User) is db.engine
            assert db.engine.pool.checkedout() == 1
    records = known_engines()
    assert [r.engine for r in records] == [engine_of(app)]
    assert not records[0].owned
    assert observer.names() == ["adopted"]


@sqlite_only
def test_nothing_connects_at_init_app(make_app, flavour):
    """init_app makes no connection: the pool is untouched until first use."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    pool = engine_of(app).pool
    assert pool.checkedin() + pool.checkedout() == 0


def test_installing_the_extension_leaves_db_session_alone(db_url, tmp_path):
    """db.session keeps its class and options; units of work in an app context run on it."""
    db = SQLAlchemy()
    app = Flask("pristine")
    app.config["SQLALCHEMY_DATABASE_URI"] = db_url
    db.init_app(app)
    with app.app_context():
        before_class = type(db.session())
        before_options = dict(db.session.session_factory.kw)
        db.session.remove()
    UnifiedSession().init_app(app, db=db)
    with app.app_context():
        session = db.session()
        assert type(session) is before_class
        assert session.expire_on_commit is True
        assert dict(db.session.session_factory.kw) == before_options
        with app.unified_session_manager.get_db_session() as uow:
            assert uow is session
            assert uow.expire_on_commit is True
        db.session.remove()
        db.engine.dispose()


@sqlite_only
def test_db_given_to_the_constructor_is_used_by_init_app(db_url):
    """UnifiedSession(db=db) then init_app(app): the app's Flask-SQLAlchemy engine is adopted."""
    db = SQLAlchemy()
    unified = UnifiedSession(db=db)
    app = Flask("factory")
    app.config["SQLALCHEMY_DATABASE_URI"] = db_url
    db.init_app(app)
    unified.init_app(app)
    with app.app_context():
        assert engine_of(app) is db.engine
        assert app.extensions["unified_session"].db is db
        db.engine.dispose()


@sqlite_only
def test_init_app_before_db_init_app_says_the_order(db_url):
    """db.init_app(app) must come first; the error says so."""
    app = Flask("order")
    app.config["SQLALCHEMY_DATABASE_URI"] = db_url
    with pytest.raises(RuntimeError, match=r"db.init_app\(app\) before"):
        UnifiedSession().init_app(app, db=SQLAlchemy())


def _plain_app(**config):
    app = Flask("plain")
    app.config.update(config)
    UnifiedSession(app)
    return app


def test_url_precedence_without_flask_sqlalchemy(tmp_path, monkeypatch):
    """UNIFIED_SESSION_DATABASE_URL, then SQLALCHEMY_DATABASE_URI, then DATABASE_URL."""
    paths = {name: os.path.join(tmp_path, f"{name}.db") for name in ("u", "s", "d", "e")}
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{paths['e']}")
    cases = [
        ({"UNIFIED_SESSION_DATABASE_URL": "u", "SQLALCHEMY_DATABASE_URI": "s"}, "u"),
        ({"SQLALCHEMY_DATABASE_URI": "s", "DATABASE_URL": "d"}, "s"),
        ({"DATABASE_URL": "d"}, "d"),
        ({}, "e"),
    ]
    for config, expected in cases:
        app = _plain_app(**{key: f"sqlite:///{paths[value]}" for key, value in config.items()})
        assert engine_of(app).url.database == paths[expected]
        fus.dispose_engines()


def test_pool_settings_from_config(tmp_path):
    """UNIFIED_SESSION_POOL_SIZE and friends reach the engine the factory builds."""
    app = _plain_app(
        UNIFIED_SESSION_DATABASE_URL=f"sqlite:///{tmp_path}/pool.db",
        UNIFIED_SESSION_POOL_SIZE="3",
        UNIFIED_SESSION_MAX_OVERFLOW=2,
    )
    pool = engine_of(app).pool
    assert pool.size() == 3
    assert pool._max_overflow == 2


def test_missing_url_names_the_keys(monkeypatch):
    """No URL anywhere: a ConfigurationError naming where it is looked for."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="UNIFIED_SESSION_DATABASE_URL"):
        _plain_app()


@sqlite_only
def test_two_apps_keep_separate_engines(make_app, tmp_path, observer):
    """Two apps on two databases: each app's managers and create_session() use its own."""
    first = make_app()
    second = make_app(
        flask_sqlalchemy=False, UNIFIED_SESSION_DATABASE_URL=f"sqlite:///{tmp_path}/2.db"
    )
    assert engine_of(first) is not engine_of(second)
    for app in (first, second):
        with app.app_context():
            session = fus.create_session()
            try:
                assert session.get_bind(User) is engine_of(app)
            finally:
                session.close()
            with app.unified_session_manager.get_db_session() as uow:
                assert uow.get_bind(User) is engine_of(app)
    assert len(known_engines()) == 2


def test_package_functions_use_the_apps_engine_in_an_app_context(make_app, monkeypatch, observer):
    """create_session()/session_scope() in an app context: the app's pool, no second engine."""
    app = make_app()
    # Were the default factory used, it would build a second engine on the same database
    # and DuplicateEngineWarning (an error here) would fail the test.
    monkeypatch.setenv("DATABASE_URL", make_app.db_url)

    @app.post("/pkg")
    def pkg():
        with app.unified_session_manager.get_db_session() as outer, fus.session_scope() as inner:
            assert inner is outer
            inner.add(User(name="pkg"))
        session = fus.create_session()
        try:
            assert session.get_bind(User) is engine_of(app)
        finally:
            session.close()
        return "ok"

    assert app.test_client().post("/pkg").status_code == 200
    assert observer.names() == ["pkg"]
    assert [r.engine for r in known_engines()] == [engine_of(app)]


@sqlite_only
@pytest.mark.parametrize(("value", "expected"), [("false", False), ("1", True), (True, True)])
def test_expire_on_commit_setting_is_parsed_on_both_paths(make_app, flavour, value, expected):
    """UNIFIED_SESSION_EXPIRE_ON_COMMIT is read as a flag ("false" is off), with or without db.

    It applies to the sessions the library opens itself (here an independent unit); with
    Flask-SQLAlchemy the app context's session is db.session, with db.session's settings.
    """
    app = make_app(
        flask_sqlalchemy=flavour == "flask_sqlalchemy", UNIFIED_SESSION_EXPIRE_ON_COMMIT=value
    )
    manager = app.unified_session_manager
    with app.app_context(), manager.get_db_session(independent=True) as session:
        assert session.expire_on_commit is expected
    with manager.get_db_session() as outside_any_app_context:
        assert outside_any_app_context.expire_on_commit is expected


@sqlite_only
def test_bad_expire_on_commit_names_the_key(make_app):
    """A value that is no flag is refused, naming the config key."""
    with pytest.raises(ValueError, match="UNIFIED_SESSION_EXPIRE_ON_COMMIT"):
        make_app(UNIFIED_SESSION_EXPIRE_ON_COMMIT="sometimes")


def test_get_db_session_from_a_thread_without_app_context(make_app, flavour, observer):
    """A worker thread holding the app (no app context) runs units of work on its engine."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with app.unified_session_manager.get_db_session() as session:
                session.add(User(name="from-thread"))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == []
    assert observer.names() == ["from-thread"]
    assert engine_of(app).pool.checkedout() == 0
