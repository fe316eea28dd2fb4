"""UNIFIED_SESSION_COMMIT_MODE: committing the request's session when the status is known."""

from __future__ import annotations

import pytest
from flask import abort, redirect

from flask_unified_session import ConfigurationError
from tests.conftest import User
from tests.flask.conftest import engine_of, sqlite_only

EXPECTED = {
    "manual": set(),
    "autocommit": {"200"},
    "autocommit_include_redirect": {"200", "302"},
}


def _writing_app(make_app, mode, flavour="flask_sqlalchemy"):
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy", UNIFIED_SESSION_COMMIT_MODE=mode)
    manager = app.request_session_manager

    @app.post("/write/<name>/<int:status>")
    def write(name, status):
        # Written through the request's session (db.session with Flask-SQLAlchemy), no block.
        manager.current_session().add(User(name=name))
        if status == 302:
            return redirect("/elsewhere")
        if status == 500:
            abort(500)
        if status == 501:
            raise RuntimeError("unhandled")
        return "written", status

    return app


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_each_mode_commits_only_for_its_statuses(make_app, observer, mode):
    """manual never commits; autocommit on 2xx; autocommit_include_redirect on 2xx and 3xx."""
    app = _writing_app(make_app, mode)
    client = app.test_client()
    for status in (200, 302, 400, 500):
        response = client.post(f"/write/{status}/{status}")
        assert response.status_code == status
    assert client.post("/write/raised/501").status_code == 500
    assert set(observer.names()) == EXPECTED[mode]
    assert engine_of(app).pool.checkedout() == 0


def test_commit_mode_without_flask_sqlalchemy(make_app, observer):
    """With the extension's own engine the request's session is committed the same way."""
    app = _writing_app(make_app, "autocommit", flavour="plain")
    client = app.test_client()
    assert client.post("/write/200/200").status_code == 200
    assert client.post("/write/400/400").status_code == 400
    assert observer.names() == ["200"]


def test_failed_commit_becomes_a_500_and_persists_nothing(make_app, observer):
    """A unique violation at the status-time commit answers 500, never a silent 200."""
    app = make_app(UNIFIED_SESSION_COMMIT_MODE="autocommit")
    db = app.extensions["test_db"]

    @app.post("/dup")
    def dup():
        db.session.add(User(name="fresh"))
        db.session.add(User(name="taken"))
        return "looks fine"

    with app.app_context():
        db.session.add(User(name="taken"))
        db.session.commit()

    response = app.test_client().post("/dup")
    assert response.status_code == 500
    assert observer.names() == ["taken"]
    assert engine_of(app).pool.checkedout() == 0


@sqlite_only
def test_failed_commit_uses_the_apps_500_handler(make_app, observer):
    """The 500 answered for a failed commit goes through the app's error handler."""
    app = make_app(UNIFIED_SESSION_COMMIT_MODE="autocommit_include_redirect")
    db = app.extensions["test_db"]

    @app.errorhandler(500)
    def server_error(error):
        return f"custom 500: {type(error.original_exception).__name__}", 500

    @app.post("/dup")
    def dup():
        db.session.add(User(name="x"))
        db.session.add(User(name="x"))
        return redirect("/next")

    response = app.test_client().post("/dup")
    assert response.status_code == 500
    assert response.get_data(as_text=True) == "custom 500: IntegrityError"
    assert observer.count() == 0


@sqlite_only
def test_autocommit_request_without_database_use_checks_out_nothing(make_app):
    """The status-time commit creates no session for a request that used none."""
    app = make_app(UNIFIED_SESSION_COMMIT_MODE="autocommit")

    @app.get("/static-like")
    def static_like():
        return "ok"

    assert app.test_client().get("/static-like").status_code == 200
    pool = engine_of(app).pool
    assert pool.checkedin() + pool.checkedout() == 0


@sqlite_only
def test_unknown_commit_mode_is_refused(make_app):
    """A misspelt mode is a ConfigurationError naming the accepted values."""
    with pytest.raises(ConfigurationError, match="autocommit_include_redirect"):
        make_app(UNIFIED_SESSION_COMMIT_MODE="always")
