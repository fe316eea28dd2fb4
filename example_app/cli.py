"""Flask CLI commands: ``flask --app example_app seed | stats | create-user``.

Commands run inside an app context, so ``session_scope()`` and the services use the app's
engine (the one Flask-SQLAlchemy made): the same pool as the web process.
"""

from __future__ import annotations

import json

import click
from flask import Flask

from flask_unified_session import session_scope

from .seed import seed_demo
from .services import ModerationService, UserService


def create_tables(app: Flask) -> None:
    from . import db

    with app.app_context():
        db.create_all()


def register(app: Flask) -> None:
    @app.cli.command("seed")
    def seed() -> None:
        """Create the tables and add the demo data (once)."""
        create_tables(app)
        with session_scope() as session:  # the app's factory: inside an app context
            added = seed_demo(session)
        click.echo("demo data added" if added else "demo data already present")

    @app.cli.command("stats")
    def stats() -> None:
        """Print counts of users, images, captions by status and audit entries (JSON)."""
        click.echo(json.dumps(ModerationService().stats(), sort_keys=True))

    @app.cli.command("create-user")
    @click.argument("username")
    @click.password_option()
    @click.option("--admin", is_flag=True, help="may use the admin pages")
    def create_user(username: str, password: str, admin: bool) -> None:
        """Add a user."""
        user = UserService().create_user(username, password, is_admin=admin)
        click.echo(f"created user {user.username} (id {user.id})")
