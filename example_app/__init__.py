"""A small Flask app that uses flask-unified-session the way its design describes.

* models: plain SQLAlchemy (:mod:`example_app.models`), given to Flask-SQLAlchemy;
* pages read with ``current_app.request_session_manager.session_scope()`` (the request's
  session, the one behind ``db.session``);
* actions write with ``current_app.unified_session_manager.get_db_session()`` (a unit of
  work that records who acted);
* the admin pages, the CLI (``flask --app example_app seed|stats|create-user``) and the
  report script (``python -m example_app.report``) share services built on
  :class:`~flask_unified_session.SessionServiceMixin`.

``python -m example_app`` (``make run``) creates the tables, seeds the demo data and serves
the app on http://127.0.0.1:5000.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_login import LoginManager
from flask_sqlalchemy import SQLAlchemy

from flask_unified_session import UnifiedSession

from .models import Base, User
from .settings import INSTANCE_PATH, database_url

__all__ = ["create_app", "db", "login_manager", "unified"]

db = SQLAlchemy(model_class=Base)
unified = UnifiedSession()
login_manager = LoginManager()
login_manager.login_view = "auth.login"


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    # The request's session (db.session is the session request_session_manager yields),
    # read without a unit of work: Flask-Login may call this while a unit of work is
    # opening, to record who acted.
    return db.session.get(User, int(user_id))


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` overrides everything; then ``FLASK_*`` variables apply.

    The database is ``SQLALCHEMY_DATABASE_URI`` if given, else ``DATABASE_URL`` from the
    environment, else ``instance/example.db`` (SQLite).
    """
    app = Flask(__name__, instance_path=str(INSTANCE_PATH))
    # A fixed key is fine for a local demo only; set FLASK_SECRET_KEY anywhere else.
    app.config["SECRET_KEY"] = "example-app-dev-only-key"
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = database_url()

    db.init_app(app)
    unified.init_app(app, db=db)  # adopts db's engine: one pool for everything
    login_manager.init_app(app)

    from . import admin, cli, views

    app.register_blueprint(views.main)
    app.register_blueprint(views.auth)
    app.register_blueprint(admin.bp)
    cli.register(app)
    return app
