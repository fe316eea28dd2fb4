"""flask unified-session doctor: URL without password, pool, a connection check, engines."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from flask_unified_session import DuplicateEngineWarning, SessionFactory, UnifiedSession
from flask_unified_session.asyncio import AsyncSessionFactory
from flask_unified_session.config import display_url
from tests.conftest import server_url
from tests.flask.conftest import sqlite_only

PASSWORD = "s3cretpw"


def plain_app(url):
    app = Flask("doctor")
    app.config["UNIFIED_SESSION_DATABASE_URL"] = url
    UnifiedSession(app)
    return app


def doctor(app):
    return app.test_cli_runner().invoke(args=["unified-session", "doctor"])


def test_healthy_app_exits_zero_and_describes_its_engines(make_app, flavour):
    """A reachable database: pool settings, connection ok, the engine list, exit 0."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    result = doctor(app)
    assert result.exit_code == 0, result.output
    assert "default: " in result.output
    assert "pool: QueuePool" in result.output
    assert "connection: ok (" in result.output
    assert "engines in this process:" in result.output
    assert "adopted at" in result.output or "created at" in result.output
    assert "commit mode: manual" in result.output


@pytest.mark.postgresql
def test_password_is_hidden():
    """The URL of a database with a password is shown with *** instead of it."""
    url = make_url(server_url("postgresql")).set(password=PASSWORD)  # trust auth ignores it
    app = plain_app(url.render_as_string(hide_password=False))
    result = doctor(app)
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert f"postgres:***@{url.host}" in result.output


def test_unreachable_database_exits_non_zero():
    """A database nobody listens on: FAILED, password still hidden, exit 1."""
    app = plain_app(f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:1/x")
    result = doctor(app)
    assert result.exit_code == 1
    assert "connection: FAILED" in result.output
    assert PASSWORD not in result.output


@sqlite_only
def test_duplicate_engine_exits_non_zero(make_app, db_url):
    """A second engine on the app's database is reported with both sites; exit 1."""
    app = make_app()
    with pytest.warns(DuplicateEngineWarning):
        stray = SessionFactory(engine=sa.create_engine(db_url))
    result = doctor(app)
    assert result.exit_code == 1
    assert "DUPLICATE: 2 engines reach" in result.output
    assert __file__ in result.output
    stray.engine.dispose()


def test_async_engines_are_listed_with_their_kind_and_their_duplicates_reported(make_app, db_url):
    """An async engine of a live event loop is listed as async, with its loop, beside the
    app's sync engine (not a duplicate of it); a second async engine of that loop on the
    database is a DUPLICATE naming both sites; exit 1."""
    app = make_app()
    factory = AsyncSessionFactory(db_url)

    async def ask():
        return factory.engine

    loop = asyncio.new_event_loop()
    try:
        engine = loop.run_until_complete(ask())
        result = doctor(app)
        assert result.exit_code == 0, result.output
        listed = f"  {display_url(engine.url)} (async, event loop {id(loop):#x}, created at "
        assert listed + __file__ in result.output
        assert "(sync, " in result.output
        with pytest.warns(DuplicateEngineWarning, match="two async engines"):
            stray = AsyncSessionFactory(engine=create_async_engine(engine.url))
        result = doctor(app)
        assert result.exit_code == 1
        assert f"DUPLICATE: 2 async engines reach {display_url(engine.url)}" in result.output
        assert "(async, adopted at " + __file__ in result.output
        del stray
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def test_command_is_declared_for_the_flask_cli():
    """The group is an entry point of flask.commands, so plain `flask` finds it."""
    names = {ep.name for ep in entry_points(group="flask.commands")}
    assert "unified-session" in names


@pytest.mark.postgresql
def test_query_string_password_is_hidden_in_doctor_and_signals():
    """?password= is a secret too: not in doctor's output, the factory repr or a signal."""
    from flask_unified_session import signals

    url = make_url(server_url("postgresql")).update_query_dict({"password": PASSWORD})
    app = plain_app(url.render_as_string(hide_password=False))
    heard: list[str] = []

    def receiver(sender, **kwargs):
        heard.append(repr(kwargs) + repr(sender))

    signals.session_committed.connect(receiver)
    try:
        with app.app_context(), app.unified_session_manager.get_db_session() as session:
            session.execute(sa.text("SELECT 1"))
    finally:
        signals.session_committed.disconnect(receiver)
    result = doctor(app)
    assert result.exit_code == 0, result.output
    factory = app.extensions["unified_session"].factory
    for text in (result.output, repr(factory), str(factory.engine.url), *heard):
        assert PASSWORD not in text, text


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:pa/S3cr3tpw@127.0.0.1:x/test",  # raw '/', bad port
        "postgresql+psycopg://u:S3cr3tpw@x@127.0.0.1/test",  # raw '@'
    ],
)
def test_bad_urls_never_show_the_password(url):
    """A URL that cannot be used: the error names the key, shows no part of the password."""
    app = Flask("bad_url")
    app.config["UNIFIED_SESSION_DATABASE_URL"] = url
    with pytest.raises(ValueError, match="UNIFIED_SESSION_DATABASE_URL") as info:
        UnifiedSession(app)
    for text in (str(info.value), repr(info.value.args), repr(info.value.__cause__)):
        assert "S3cr3t" not in text and "cr3tpw" not in text, text
