"""Flask-Login (optional): the acting user's id in session.info, and life without it."""

from __future__ import annotations

import sys

from tests.conftest import User
from tests.flask.conftest import LoginUser, add_login, sqlite_only


def _info_app(make_app=None, app=None, **kwargs):
    app = app if app is not None else make_app(**kwargs)

    @app.get("/whoami")
    def whoami():
        with app.unified_session_manager.get_db_session() as uow:
            uow_info = dict(uow.info)
        with app.request_session_manager.session_scope() as req:
            req_info = dict(req.info)
        return {"uow": uow_info, "request": req_info}

    return app


def test_authenticated_user_id_lands_in_session_info(app, client, observer):
    """Both managers record the logged-in user's id (pytest-flask's app and client)."""
    _info_app(app=app)
    body = client.get("/whoami", headers={"X-User": "42"}).json
    assert body["uow"]["user_id"] == "42"
    assert body["request"]["user_id"] == "42"


def test_anonymous_user_records_no_user_id(app, client, observer):
    """Anonymous: no user_id key, the endpoint is still recorded."""
    _info_app(app=app)
    body = client.get("/whoami").json
    assert "user_id" not in body["uow"]
    assert body["uow"]["endpoint"] == "whoami"


@sqlite_only
def test_app_without_a_login_manager_works(make_app, observer):
    """An app that never set up Flask-Login: sessions work, no user id."""
    app = _info_app(make_app)
    body = app.test_client().get("/whoami").json
    assert "user_id" not in body["uow"]
    assert body["request"]["endpoint"] == "whoami"


@sqlite_only
def test_without_flask_login_installed_nothing_breaks(make_app, observer, monkeypatch):
    """With flask_login not importable at all, the managers still work."""
    monkeypatch.setitem(sys.modules, "flask_login", None)
    app = _info_app(make_app)
    assert app.test_client().get("/whoami").status_code == 200


def test_user_loader_that_opens_a_unit_of_work_does_not_recurse(make_app, observer):
    """A user loader using get_db_session() itself: no infinite recursion, id recorded."""
    app = make_app()

    def load(user_id):
        with app.unified_session_manager.get_db_session() as session:
            session.get(User, 1)
        return LoginUser(user_id)

    add_login(app, loader=load)

    @app.post("/act")
    def act():
        with app.unified_session_manager.get_db_session() as session:
            session.add(User(name="acted"))
            return {"user_id": session.info.get("user_id")}

    assert app.test_client().post("/act", headers={"X-User": "5"}).json == {"user_id": "5"}
    assert observer.names() == ["acted"]
