"""Lifecycle signals: opened, committed, rolled back, closed, with session, duration, context."""

from __future__ import annotations

import gc
import weakref

import pytest
import sqlalchemy as sa
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from flask_unified_session import UnifiedSession, signals
from tests.conftest import User
from tests.flask.conftest import sqlite_only

ALL = {
    "opened": signals.session_opened,
    "committed": signals.session_committed,
    "rolled_back": signals.session_rolled_back,
    "closed": signals.session_closed,
}


@pytest.fixture
def events():
    """Every lifecycle signal recorded as (name, sender, session, duration, context copy)."""
    recorded = []
    receivers = []
    for name, signal in ALL.items():

        def receiver(sender, *, session, duration, context, _name=name):
            recorded.append((_name, sender, session, duration, dict(context)))

        signal.connect(receiver)
        receivers.append((signal, receiver))
    yield recorded
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def test_unit_of_work_signals_carry_session_duration_and_user(make_app, observer, events):
    """A committed unit: opened, committed, then closed at teardown; sender the app."""
    app = make_app(login=True)
    sessions = []

    @app.post("/ok")
    def ok():
        with app.unified_session_manager.get_db_session() as session:
            session.add(User(name="signalled"))
            sessions.append(session)
        return "ok"

    assert app.test_client().post("/ok", headers={"X-User": "7"}).status_code == 200
    assert [e[0] for e in events] == ["opened", "committed", "closed"]
    for _name, sender, session, duration, context in events:
        assert sender is app
        assert session is sessions[0]
        assert isinstance(duration, float) and duration >= 0
        assert context["user_id"] == "7"
        assert context["endpoint"] == "ok"


def test_rollback_is_signalled(make_app, observer, events):
    """A failing unit: opened, rolled_back, then closed at teardown."""
    app = make_app()

    @app.post("/fail")
    def fail():
        with app.unified_session_manager.get_db_session():
            raise ValueError("x")

    assert app.test_client().post("/fail").status_code == 500
    assert [e[0] for e in events] == ["opened", "rolled_back", "closed"]


def test_request_session_is_signalled_closed_at_teardown(make_app, flavour, observer, events):
    """The request's session: each block opens and commits; teardown sends closed once."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy", login=True)

    @app.post("/req")
    def req():
        for name in ("one", "two"):
            with app.request_session_manager.session_scope() as session:
                session.add(User(name=name))
        return "ok"

    assert app.test_client().post("/req", headers={"X-User": "u9"}).status_code == 200
    names = [e[0] for e in events]
    assert names == ["opened", "committed", "opened", "committed", "closed"]
    assert len({id(e[2]) for e in events}) == 1
    assert events[-1][4]["user_id"] == "u9"
    assert events[-1][1] is app


@sqlite_only
def test_signals_are_sent_by_the_app_they_belong_to(make_app, tmp_path, observer):
    """A receiver connected for one app hears none of another app's sessions."""
    first = make_app()
    second = make_app(
        flask_sqlalchemy=False, UNIFIED_SESSION_DATABASE_URL=f"sqlite:///{tmp_path}/other.db"
    )
    heard = []

    def receiver(sender, **kwargs):
        heard.append(sender)

    signals.session_opened.connect(receiver, sender=first)
    try:
        for app in (first, second):
            with app.app_context(), app.unified_session_manager.get_db_session():
                pass
    finally:
        signals.session_opened.disconnect(receiver, sender=first)
    assert heard == [first]


@sqlite_only
def test_nothing_is_sent_when_nobody_listens(make_app, observer, monkeypatch):
    """With no receiver, no signal is sent at all (sending would raise here)."""

    def must_not_send(*args, **kwargs):
        raise AssertionError("a signal was sent with nobody listening")

    for signal in ALL.values():
        assert not signal.receivers
        monkeypatch.setattr(signal, "send", must_not_send)
    app = make_app()

    @app.post("/quiet")
    def quiet():
        with app.request_session_manager.session_scope() as session:
            session.add(User(name="quiet"))
        with app.unified_session_manager.get_db_session() as session:
            session.add(User(name="quieter"))
        return "ok"

    assert app.test_client().post("/quiet").status_code == 200
    assert observer.count() == 2


@sqlite_only
def test_with_flask_sqlalchemy_no_teardown_function_of_ours_runs(make_app):
    """db.session is Flask-SQLAlchemy's to close: the extension adds no teardown function."""
    plain = Flask("plain")
    plain.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    SQLAlchemy(plain)
    app = make_app()
    assert len(app.teardown_appcontext_funcs) == len(plain.teardown_appcontext_funcs)
    own = make_app(flask_sqlalchemy=False)
    assert len(own.teardown_appcontext_funcs) == 1  # ours: it closes the library's session


def test_closed_is_sent_after_flask_sqlalchemy_closed_the_session(make_app, observer, events):
    """With db=, closed comes once db.session.remove() ran: the connection is back."""
    app = make_app()
    db = app.extensions["test_db"]
    seen = []

    def at_close(sender, *, session, **kwargs):
        with app.app_context():
            engine = db.engine
        seen.append((session.in_transaction(), engine.pool.checkedout()))

    signals.session_closed.connect(at_close)
    try:

        @app.post("/write")
        def write():
            with app.unified_session_manager.get_db_session() as session:
                session.add(User(name="timed"))
            db.session.execute(sa.select(1))  # begins again: only teardown ends it
            return "ok"

        assert app.test_client().post("/write").status_code == 200
    finally:
        signals.session_closed.disconnect(at_close)
    assert seen == [(False, 0)]
    assert [e[0] for e in events] == ["opened", "committed", "closed"]
    assert observer.count() == 1


@sqlite_only
def test_a_receiver_connected_after_requests_were_served_hears_closed(make_app, observer):
    """Receivers may come later (a test, a debug toolbar): the next request is timed."""
    app = make_app()
    names = iter(range(3))

    @app.post("/unit")
    def unit():
        with app.unified_session_manager.get_db_session() as session:
            session.add(User(name=f"later {next(names)}"))
        return "ok"

    client = app.test_client()
    assert client.post("/unit").status_code == 200
    heard = []

    def receiver(sender, *, duration, **kwargs):
        heard.append((sender, duration))

    signals.session_closed.connect(receiver)
    try:
        assert client.post("/unit").status_code == 200
        assert client.post("/unit").status_code == 200
    finally:
        signals.session_closed.disconnect(receiver)
    assert [sender for sender, _ in heard] == [app, app]
    assert all(duration >= 0 for _, duration in heard)
    assert observer.count() == 3


def test_timing_sessions_keeps_no_app_alive(tmp_path):
    """The teardown receiver is weak: an app dropped after timed requests is collected."""
    closed = []

    def receiver(sender, **kwargs):
        closed.append(sender.name)  # not the app itself: the test must not keep it

    signals.session_closed.connect(receiver)
    try:
        app = Flask("dropped")
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/dropped.db"
        db = SQLAlchemy(app)
        UnifiedSession(app, db=db)

        @app.post("/empty")
        def empty():
            with current_app.unified_session_manager.get_db_session() as session:
                session.execute(sa.select(1))
            return "ok"

        assert app.test_client().post("/empty").status_code == 200
        assert closed == ["dropped"]
        with app.app_context():
            db.engine.dispose()
        gone = weakref.ref(app)
        del app, db, empty
        gc.collect()
        assert gone() is None
    finally:
        signals.session_closed.disconnect(receiver)
