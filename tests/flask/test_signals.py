"""Lifecycle signals: opened, committed, rolled back, closed, with session, duration, context."""

from __future__ import annotations

import pytest

from flask_unified_session import signals
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
