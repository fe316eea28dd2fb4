"""request_session_manager.session_scope(): the request's one session, closed at teardown."""

from __future__ import annotations

import pytest
from flask import abort, current_app
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from tests.conftest import User
from tests.flask.conftest import connection_id, engine_of, sqlite_only


def _db(app):
    return app.extensions["test_db"]


def test_db_session_and_session_scope_share_one_connection(make_app, observer):
    """db.session and session_scope() in one request: one session, one connection."""
    app = make_app()
    db = _db(app)
    seen = {}

    @app.post("/both")
    def both():
        db.session.add(User(name="via-db-session"))
        db.session.flush()
        first = connection_id(db.session())
        manager = current_app.request_session_manager
        with manager.session_scope() as session:
            seen["same_session"] = session is db.session()
            seen["same_connection"] = connection_id(session) == first
            seen["checkedout"] = db.engine.pool.checkedout()
            # One transaction: the block sees db.session's uncommitted row, nobody else does.
            seen["sees_flushed"] = session.scalar(select(func.count()).select_from(User))
            seen["observer_sees"] = observer.count()
            session.add(User(name="via-scope"))
            with current_app.unified_session_manager.get_db_session() as inner:
                seen["uow_joins"] = inner is session
                seen["checkedout_inner"] = db.engine.pool.checkedout()
        return "ok"

    assert app.test_client().post("/both").status_code == 200
    assert seen == {
        "same_session": True,
        "same_connection": True,
        "checkedout": 1,
        "sees_flushed": 1,
        "observer_sees": 0,
        "uow_joins": True,
        "checkedout_inner": 1,
    }
    assert observer.names() == ["via-db-session", "via-scope"]
    assert engine_of(app).pool.checkedout() == 0


def test_every_scope_of_a_request_shares_the_session(make_app, flavour, observer):
    """Two session_scope() blocks in one request yield the same session object."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    seen = []

    @app.get("/two")
    def two():
        for name in ("a", "b"):
            with current_app.request_session_manager.session_scope() as session:
                session.add(User(name=name))
                seen.append(session)
        return "ok"

    assert app.test_client().get("/two").status_code == 200
    assert seen[0] is seen[1]
    assert observer.names() == ["a", "b"]


def test_success_persists_and_raising_routes_persist_nothing(make_app, flavour, observer):
    """A block that ends normally commits; an exception or abort(500) inside rolls back."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    manager = app.request_session_manager

    @app.post("/ok")
    def ok():
        with manager.session_scope() as session:
            session.add(User(name="kept"))
        return "ok"

    @app.post("/raise")
    def boom():
        with manager.session_scope() as session:
            session.add(User(name="raised"))
            session.flush()
            raise RuntimeError("boom")

    @app.post("/abort")
    def aborted():
        with manager.session_scope() as session:
            session.add(User(name="aborted"))
            session.flush()
            abort(500)

    client = app.test_client()
    assert client.post("/raise").status_code == 500
    assert client.post("/abort").status_code == 500
    assert client.post("/ok").status_code == 200
    assert observer.names() == ["kept"]
    assert engine_of(app).pool.checkedout() == 0


def test_objects_stay_attached_until_teardown(make_app, flavour, observer):
    """After the block the objects are still in the session; teardown detaches them."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    seen = {}

    @app.post("/attached")
    def attached():
        with app.request_session_manager.session_scope() as session:
            user = User(name="attached")
            session.add(user)
        seen["user"] = user
        seen["persistent_after_block"] = inspect(user).persistent
        seen["name"] = user.name  # readable (a refresh on the same session if expired)
        return "ok"

    assert app.test_client().post("/attached").status_code == 200
    assert seen["persistent_after_block"] is True
    assert seen["name"] == "attached"
    assert inspect(seen["user"]).detached


def test_teardown_closes_the_session_when_the_view_raised(make_app, flavour, observer):
    """A view that raises with the session in a transaction: teardown rolls back and closes."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    seen = {}

    @app.post("/fail")
    def fail():
        session = app.request_session_manager.current_session()
        seen["session"] = session
        session.add(User(name="never"))
        session.flush()
        seen["checkedout"] = engine_of(app).pool.checkedout()
        raise RuntimeError("view failed")

    assert app.test_client().post("/fail").status_code == 500
    assert seen["checkedout"] == 1
    session: Session = seen["session"]
    assert not session.in_transaction()
    assert engine_of(app).pool.checkedout() == 0
    assert observer.count() == 0


@sqlite_only
def test_a_request_that_does_not_touch_the_database_checks_out_nothing(make_app, flavour):
    """No session, no connection for a request that never uses the database."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    engine = engine_of(app)

    @app.get("/ping")
    def ping():
        return "pong"

    assert app.test_client().get("/ping").status_code == 200
    assert engine.pool.checkedin() + engine.pool.checkedout() == 0


@sqlite_only
def test_session_scope_outside_an_app_context_says_what_to_use(make_app):
    """Outside an app context: an error naming get_db_session() and create_session()."""
    app = make_app()
    with pytest.raises(RuntimeError, match=r"get_db_session\(\)") as info:
        app.request_session_manager.session_scope()
    assert "create_session()" in str(info.value)


@sqlite_only
def test_current_session_outside_its_app_context_says_so(make_app, flavour):
    """current_session() outside an app context, or in another app's: an error naming it."""
    with_db = flavour == "flask_sqlalchemy"
    app, other = make_app(flask_sqlalchemy=with_db), make_app(flask_sqlalchemy=with_db)
    with pytest.raises(RuntimeError, match=rf"application context of app {app.name!r}"):
        app.request_session_manager.current_session()
    with other.app_context(), pytest.raises(RuntimeError, match=r"current_session\(\)"):
        app.request_session_manager.current_session()
    with app.app_context():
        assert app.request_session_manager.current_session() is not None


def test_session_scope_in_an_app_context_without_a_request(make_app, flavour, observer):
    """In a CLI-style app context the request manager works and teardown closes."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    with app.app_context():
        with app.request_session_manager.session_scope() as session:
            session.add(User(name="cli"))
        assert session.scalars(select(User.name)).all() == ["cli"]
    assert observer.names() == ["cli"]
    assert engine_of(app).pool.checkedout() == 0


def test_a_failed_block_is_rolled_back_before_the_next_block(make_app, flavour, observer):
    """A block that raised leaves nothing behind for a later block of the same request."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")

    @app.post("/two-blocks")
    def two_blocks():
        manager = current_app.request_session_manager
        try:
            with manager.session_scope() as session:
                session.add(User(name="failed-block"))
                session.flush()
                raise LookupError("caught by the view")
        except LookupError:
            pass
        with manager.session_scope() as session:
            session.add(User(name="second-block"))
        return "ok"

    assert app.test_client().post("/two-blocks").status_code == 200
    assert observer.names() == ["second-block"]
