"""One session per app context: every entry point of a request runs on ``db.session``'s.

Each test is a failure measured on version 1 in a real Flask-Login app (issue "Core v2",
points 1-4), checked from outside: the pool's ``checkedout()``, the server's connection
id, an independent connection for what was committed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, current_app, g
from flask_login import LoginManager, UserMixin, current_user
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event

from flask_unified_session import SessionServiceMixin, UnifiedSession, session_scope
from tests.conftest import Observer, User

from .conftest import connection_id


class Account(UserMixin):
    """Flask-Login's user: the ``User`` row, loaded through ``db.session``."""

    def __init__(self, row: User) -> None:
        self.row = row
        self.id = str(row.id)


@pytest.fixture
def login_app(db_url: str, observer: Observer) -> Iterator[tuple[Flask, SQLAlchemy]]:
    """Flask-SQLAlchemy on a pool of ONE connection, Flask-Login loading through db.session."""
    with observer.engine.begin() as connection:
        connection.execute(sa.insert(User), [{"name": "ada"}, {"name": "bob"}])
    app = Flask("one_session")
    app.config.update(
        TESTING=True,
        PROPAGATE_EXCEPTIONS=True,
        SECRET_KEY="test",
        SQLALCHEMY_DATABASE_URI=db_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 2},
    )
    db = SQLAlchemy()
    db.init_app(app)
    UnifiedSession().init_app(app, db=db)
    login = LoginManager(app)

    @login.request_loader
    def load(request: Any) -> Account | None:
        name = request.headers.get("X-User")
        if not name:
            return None
        row = db.session.execute(sa.select(User).where(User.name == name)).scalar_one()
        return Account(row)

    yield app, db
    with app.app_context():
        db.engine.dispose()


def pool_of(app: Flask) -> Any:
    return app.extensions["unified_session"].factory.engine.pool


def test_a_logged_in_write_holds_one_connection(login_app: tuple[Flask, SQLAlchemy]) -> None:
    """Point 1: the user loader's db.session and get_db_session() share one connection."""
    app, db = login_app

    @app.post("/note")
    def note() -> str:
        assert current_user.is_authenticated
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            assert session is db.session()
            assert pool_of(app).checkedout() == 1
            session.execute(sa.update(User).where(User.name == "ada").values(note="written"))
        return "ok"

    client = app.test_client()
    for _ in range(5):
        assert client.post("/note", headers={"X-User": "ada"}).status_code == 200
    assert pool_of(app).checkedout() == 0
    with app.app_context():
        assert db.session.scalar(sa.select(User.note).where(User.name == "ada")) == "written"


def test_every_entry_point_in_a_request_is_the_one_session(
    login_app: tuple[Flask, SQLAlchemy],
) -> None:
    """get_db_session(), the request scope, the mixin and session_scope(): one session."""
    app, db = login_app

    class Service(SessionServiceMixin):
        db_manager = None

        def touch(self) -> Any:
            with self.db_session() as session:
                return session

    @app.post("/all")
    def all_entry_points() -> str:
        sessions = []
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            sessions.append(session)
        with current_app.request_session_manager.session_scope() as session:  # type: ignore[attr-defined]
            sessions.append(session)
        with session_scope() as session:
            sessions.append(session)
        sessions.append(Service().touch())
        assert {id(s) for s in sessions} == {id(db.session())}
        g.connection = connection_id(db.session())
        return "ok"

    assert app.test_client().post("/all", headers={"X-User": "bob"}).status_code == 200


def test_db_session_listeners_fire_for_units_of_work(
    login_app: tuple[Flask, SQLAlchemy], observer: Observer
) -> None:
    """Point 2: an after_commit listener on db.session hears get_db_session()'s commit."""
    app, db = login_app
    heard: list[str] = []

    def after_commit(session: Any) -> None:
        heard.append("commit")

    event.listen(db.session, "after_commit", after_commit)
    try:

        @app.post("/add")
        def add() -> str:
            with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
                session.add(User(name="indexed"))
            return "ok"

        assert app.test_client().post("/add").status_code == 200
    finally:
        event.remove(db.session, "after_commit", after_commit)
    assert heard == ["commit"]
    assert "indexed" in observer.names()


def test_current_user_can_be_changed_inside_a_unit(
    login_app: tuple[Flask, SQLAlchemy], observer: Observer
) -> None:
    """Point 3: current_user (loaded by db.session) belongs to the unit's session."""
    app, _db = login_app

    @app.post("/rename")
    def rename() -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            other = session.execute(sa.select(User).where(User.name == "bob")).scalar_one()
            session.add(current_user.row)  # v1: "already attached to session 'x'"
            current_user.row.note = f"follows {other.id}"
        return current_user.row.note  # still attached and readable after the block

    response = app.test_client().post("/rename", headers={"X-User": "ada"})
    assert response.status_code == 200
    assert response.text.startswith("follows ")
    assert observer.scalar(f"SELECT note FROM {User.__tablename__} WHERE name = 'ada'") == (
        response.text
    )


def test_db_session_then_a_unit_update_the_same_row_without_waiting(
    login_app: tuple[Flask, SQLAlchemy], observer: Observer
) -> None:
    """Point 4: db.session's flushed UPDATE, then a unit's UPDATE of that row: no self-lock."""
    app, db = login_app

    @app.post("/twice")
    def twice() -> str:
        db.session.execute(sa.update(User).where(User.name == "bob").values(note="first"))
        db.session.flush()
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.execute(sa.update(User).where(User.name == "bob").values(note="second"))
        return "ok"

    assert app.test_client().post("/twice").status_code == 200
    assert observer.scalar(f"SELECT note FROM {User.__tablename__} WHERE name = 'bob'") == "second"
    assert pool_of(app).checkedout() == 0


def test_objects_stay_attached_until_teardown_which_never_commits(
    login_app: tuple[Flask, SQLAlchemy], observer: Observer
) -> None:
    """The unit commits at its end; later changes outside a unit die with the request."""
    app, db = login_app

    @app.post("/keep")
    def keep() -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            row = User(name="attached")
            session.add(row)
        assert row in db.session
        row.note = "never committed"
        return row.name

    assert app.test_client().post("/keep").status_code == 200
    assert observer.scalar(f"SELECT note FROM {User.__tablename__} WHERE name = 'attached'") == ""
    assert pool_of(app).checkedout() == 0


def test_a_leaked_unit_of_one_request_never_reaches_the_next(
    login_app: tuple[Flask, SQLAlchemy], observer: Observer
) -> None:
    """Point 5 through Flask: a request leaves a generator's unit open; the next is clean."""
    app, _db = login_app
    leaked: list[Any] = []

    def helper() -> Iterator[Any]:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            yield session

    @app.post("/leak")
    def leak() -> str:
        generator = helper()
        next(generator).add(User(name="uncommitted"))
        leaked.append(generator)  # never closed during the request
        return "ok"

    @app.post("/write/<name>")
    def write(name: str) -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.add(User(name=name))
            seen = session.execute(sa.select(User.name).where(User.name == "uncommitted")).all()
        return str(len(seen))

    client = app.test_client()
    assert client.post("/leak").status_code == 200
    assert [client.post(f"/write/w{i}").text for i in range(3)] == ["0", "0", "0"]
    with contextlib.suppress(Exception):
        leaked[0].close()
    assert sorted(n for n in observer.names() if n.startswith("w")) == ["w0", "w1", "w2"]
    assert "uncommitted" not in observer.names()


def test_the_user_id_is_read_once_per_request(
    login_app: tuple[Flask, SQLAlchemy], observer: Observer
) -> None:
    """After a commit the user is expired: later units do not reload it for session.info."""
    app, db = login_app
    statements: list[str] = []

    class OrmAccount(Account):
        def get_id(self) -> str:
            return str(self.row.id)  # an attribute of the (expired) row

    app.login_manager._request_callback = lambda request: OrmAccount(  # type: ignore[attr-defined]
        db.session.execute(sa.select(User).where(User.name == "ada")).scalar_one()
    )

    @app.post("/units")
    def units() -> str:
        manager = current_app.unified_session_manager  # type: ignore[attr-defined]
        with manager.get_db_session() as session:
            session.execute(sa.update(User).where(User.name == "bob").values(note="x"))
        with app.app_context():
            engine = db.engine

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", record)
        try:
            with manager.get_db_session() as session:
                user_id = session.info["user_id"]
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return str(user_id)

    response = app.test_client().post("/units", headers={"X-User": "ada"})
    assert response.status_code == 200
    assert statements == []
    assert response.text == str(
        observer.scalar(f"SELECT id FROM {User.__tablename__} WHERE name = 'ada'")
    )
