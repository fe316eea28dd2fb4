"""``flask unified-session doctor``: what this app's database set-up really is."""

from __future__ import annotations

import time

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from .config import Settings, display_url, redact_url
from .engines import EngineRecord, duplicate_groups, known_engines
from .state import get_state

__all__ = ["unified_session_group"]

unified_session_group = AppGroup("unified-session", help="flask-unified-session tools.")


@unified_session_group.command("doctor")
def doctor() -> None:
    """Show URL, pool, a connection check and every engine; exit 1 on a problem."""
    state = get_state(current_app)
    problems = 0
    for bind_key, engine in state.engines.items():
        name = "default" if bind_key is None else f"bind {bind_key!r}"
        click.echo(f"{name}: {display_url(engine.url)}")
        own = state.factory.owns_engine and engine is state.factory.engine
        settings = state.factory.settings if own else None
        click.echo(f"  pool: {_describe_pool(engine, settings)}")
        if not own:
            click.echo(
                "  (options from SQLALCHEMY_ENGINE_OPTIONS: the engine is Flask-SQLAlchemy's)"
            )
        started = time.perf_counter()
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                pooler_warning = _behind_a_pooler(connection)
        except Exception as exc:
            problems += 1
            click.echo(f"  connection: FAILED: {redact_url(exc)}")
        else:
            click.echo(f"  connection: ok ({(time.perf_counter() - started) * 1000:.1f} ms)")
            if pooler_warning:
                click.echo(f"  WARNING: {pooler_warning}")
    replicas = getattr(state.factory, "replicas", None)
    if replicas is not None:  # each replica checked now, with its lag
        lines, down = replicas.describe()
        problems += down
        for line in lines:
            click.echo(line)
    click.echo("engines in this process:")
    for record in known_engines():
        click.echo(f"  {display_url(record.engine.url)} ({_describe_record(record)})")
    for group in duplicate_groups():
        problems += 1
        sites = ", ".join(record.site for record in group)
        what = "async engines" if group[0].kind == "async" else "engines"
        click.echo(
            f"DUPLICATE: {len(group)} {what} reach {display_url(group[0].engine.url)}: {sites}"
        )
    click.echo(f"commit mode: {state.commit_mode}")
    if problems:
        raise SystemExit(1)


def _describe_record(record: EngineRecord) -> str:
    """Kind, event loop (async engines belong to one) and where the engine came from."""
    origin = "created" if record.owned else "adopted"
    if record.kind == "sync":
        return f"sync, {origin} at {record.site}"
    # A loop is named by its id: enough to tell the engines of two loops apart.
    loop = "" if record.loop is None else f"event loop {id(record.loop):#x}, "
    return f"async, {loop}{origin} at {record.site}"


def _behind_a_pooler(connection: Connection) -> str | None:
    """Why this PostgreSQL connection would break behind PgBouncer in transaction mode.

    A pooler shows as a server port other than the URL's; psycopg's server-side prepared
    statements (``prepare_threshold`` not None) then fail as soon as two transactions
    land on different server connections.
    """
    if connection.dialect.name != "postgresql":
        return None
    url_port = connection.engine.url.port or 5432
    server_port = connection.execute(text("SELECT inet_server_port()")).scalar()
    if server_port is None or int(server_port) == url_port:
        return None
    threshold = getattr(connection.connection.driver_connection, "prepare_threshold", None)
    if threshold is None:
        return None
    return (
        f"connections go through a pooler (URL port {url_port}, server port {server_port}) "
        f"and psycopg prepares statements on the server (prepare_threshold={threshold}): "
        "behind PgBouncer in transaction mode they fail (DuplicatePreparedStatement); set "
        "DB_PGBOUNCER=transaction (UNIFIED_SESSION_PGBOUNCER), or with Flask-SQLAlchemy "
        "SQLALCHEMY_ENGINE_OPTIONS={'connect_args': {'prepare_threshold': None}}"
    )


def _describe_pool(engine: Engine, settings: Settings | None) -> str:
    pool = engine.pool
    parts = [type(pool).__name__]
    for attribute, label in (
        ("size", "size"),
        ("_max_overflow", "max_overflow"),
        ("timeout", "timeout"),
    ):
        value = getattr(pool, attribute, None)
        if callable(value):
            value = value()
        if value is not None:
            parts.append(f"{label}={value}")
    if settings is None:
        parts.append(f"pre_ping={'every checkout' if pool._pre_ping else 'off'}")
    elif settings.pool_pre_ping:
        parts.append(f"pre_ping=after {settings.pool_pre_ping_idle:g} s idle")
    else:
        parts.append("pre_ping=off")
    parts.append(f"recycle={pool._recycle}")
    return " ".join(parts)
