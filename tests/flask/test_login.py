"""Flask-Login (optional): the acting user's id in session.info, and life without it."""

from __future__ import annotations

import sys

import sqlalchemy as sa
from flask import Flask
from flask_login import LoginManager, UserMixin, current_user
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_unified_session import UnifiedSession
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


class _Base(DeclarativeBase):
    pass


class Member(UserMixin, _Base):
    """A Flask-Login user that is itself a mapped row (the Flask-Login tutorial's model)."""

    __tablename__ = "members"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)


def test_reading_the_user_id_never_flushes_the_requests_pending_objects(tmp_path):
    """current_user expired by a commit reloads when the unit records who acted: with the
    request's pending objects left unflushed until the unit's own work needs them."""
    app = Flask("mapped_user")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/members.db", TESTING=True)
    db = SQLAlchemy()
    db.init_app(app)
    UnifiedSession(app, db=db)
    login = LoginManager(app)

    @login.request_loader
    def load(request):
        return db.session.get(Member, 1) if request.headers.get("X-Member") else None

    with app.app_context():
        _Base.metadata.create_all(db.engine)
        db.session.add(Member(id=1, name="ada"))
        db.session.commit()
        inserts = []

        @sa.event.listens_for(db.engine, "before_cursor_execute")
        def record(conn, cursor, statement, *args):
            if statement.startswith("INSERT"):
                inserts.append(statement)

    @app.post("/post")
    def post():
        assert current_user.name == "ada"
        db.session.commit()  # as a before_request commit would: current_user is expired
        db.session.add(Member(name="pending"))
        inserts.clear()
        with app.unified_session_manager.get_db_session() as session:
            flushed_on_entry = list(inserts)
            user_id = session.info["user_id"]
        return {"flushed_on_entry": flushed_on_entry, "user_id": user_id}

    response = app.test_client().post("/post", headers={"X-Member": "1"})
    assert response.status_code == 200, response.text
    assert response.json == {"flushed_on_entry": [], "user_id": "1"}
    with app.app_context():
        assert db.session.scalars(sa.select(Member.name).order_by(Member.id)).all() == [
            "ada",
            "pending",
        ]
        db.engine.dispose()
