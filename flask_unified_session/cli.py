"""``flask unified-session doctor``: what this app's database set-up really is."""

from __future__ import annotations

import time

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import text
from sqlalchemy.engine import Engine

from .config import Settings, display_url, redact_url
from .engines import duplicate_groups, known_engines
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
        except Exception as exc:
            problems += 1
            click.echo(f"  connection: FAILED: {redact_url(exc)}")
        else:
            click.echo(f"  connection: ok ({(time.perf_counter() - started) * 1000:.1f} ms)")
    replicas = getattr(state.factory, "replicas", None)
    if replicas is not None:  # each replica checked now, with its lag
        lines, down = replicas.describe()
        problems += down
        for line in lines:
            click.echo(line)
    click.echo("engines in this process:")
    for record in known_engines():
        origin = "created" if record.owned else "adopted"
        click.echo(f"  {display_url(record.engine.url)} ({origin} at {record.site})")
    for group in duplicate_groups():
        problems += 1
        sites = ", ".join(record.site for record in group)
        click.echo(
            f"DUPLICATE: {len(group)} engines reach {display_url(group[0].engine.url)}: {sites}"
        )
    click.echo(f"commit mode: {state.commit_mode}")
    if problems:
        raise SystemExit(1)


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
