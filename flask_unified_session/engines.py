"""The process's engines: one per (URL, options), duplicates reported, safe across fork.

Every engine the library creates or adopts is recorded here. Two live engines that reach
the same database are the bug this library exists to end (two pools where one was
meant), so the pair is reported once as a :class:`DuplicateEngineWarning` naming where
each was created. After ``os.fork()`` every recorded engine drops the parent's pooled
connections without closing them, as SQLAlchemy recommends, so a child never talks over
a socket its parent also uses.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine

from .config import ConfigurationError, Settings, is_sqlite_memory

__all__ = [
    "DuplicateEngineWarning",
    "EngineRecord",
    "dispose_engines",
    "engine_for",
    "known_engines",
    "register_engine",
]


class DuplicateEngineWarning(UserWarning):
    """Two live engines reach the same database: two connection pools where one was meant."""


@dataclass(frozen=True)
class EngineRecord:
    """What is known of one live engine."""

    engine: Engine
    database: tuple[str, ...] | None
    site: str
    owned: bool


_lock = threading.RLock()
# Engines the library created, by (URL, options): held strongly, reused for equal asks.
_by_key: dict[tuple[str, str], Engine] = {}
# Every live engine the library created or adopted, by id(engine).
_records: dict[int, tuple[weakref.ref[Engine], tuple[str, ...] | None, str, bool]] = {}
_warned_pairs: set[frozenset[int]] = set()

# Frames of these modules are not a "creation site": the user's line is further up.
_NOT_USER_CODE = (
    "flask_unified_session",
    "sqlalchemy",
    "flask_sqlalchemy",
    "contextlib",
    "threading",
    "weakref",
    "flask.",
    "click",
)


def engine_for(settings: Settings) -> Engine:
    """Return the process's engine for ``settings``, creating it on first ask.

    Creating an engine does not connect: the first connection is made on first use.
    """
    options = settings.engine_options()
    key = (settings.url.render_as_string(hide_password=False), repr(sorted(options.items())))
    with _lock:
        engine = _by_key.get(key)
        if engine is not None:
            return engine
        try:
            engine = create_engine(settings.url, **options)
        except ImportError as exc:
            raise ConfigurationError(
                f"{settings.source}: the driver for {settings.url.drivername!r} is not "
                f"installed ({exc.name or exc}); install it, for example "
                f"'pip install psycopg[binary]' or 'pip install PyMySQL'"
            ) from None
        if settings.is_sqlite and settings.url.get_driver_name() == "pysqlite":
            _fix_pysqlite_savepoints(engine)
        _by_key[key] = engine
        _record(engine, owned=True)
        return engine


def register_engine(engine: Engine) -> None:
    """Record an engine created elsewhere (adopted): reported if it duplicates another."""
    with _lock:
        if id(engine) not in _records:
            _record(engine, owned=False)


def known_engines() -> list[EngineRecord]:
    """Every live engine the library created or adopted, oldest first."""
    with _lock:
        records = []
        for ref, database, site, owned in list(_records.values()):
            engine = ref()
            if engine is not None:
                records.append(EngineRecord(engine, database, site, owned))
        return records


def duplicate_groups() -> list[list[EngineRecord]]:
    """Groups of two or more live engines that reach the same database."""
    groups: dict[tuple[str, ...], list[EngineRecord]] = {}
    for record in known_engines():
        if record.database is not None:
            groups.setdefault(record.database, []).append(record)
    return [group for group in groups.values() if len(group) > 1]


def dispose_engines() -> None:
    """Dispose and forget every engine the library created; forget adopted ones.

    For test suites and shutdown hooks: engines asked for afterwards are new.
    """
    with _lock:
        owned = list(_by_key.values())
        _by_key.clear()
        _records.clear()
        _warned_pairs.clear()
    for engine in owned:
        engine.dispose()


def forget_engine(engine: Engine) -> None:
    """Stop tracking ``engine`` (without disposing it)."""
    with _lock:
        _records.pop(id(engine), None)
        for key, known in list(_by_key.items()):
            if known is engine:
                del _by_key[key]


def database_identity(url: URL) -> tuple[str, ...] | None:
    """What makes two URLs the same database; ``None`` for a private in-memory SQLite."""
    if is_sqlite_memory(url):
        return None
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        path = database[5:].split("?", 1)[0] if database.startswith("file:") else database
        return (backend, os.path.realpath(path))
    return (backend, url.host or "", str(url.port or ""), url.database or "", url.username or "")


def creation_site() -> str:
    """``file:line`` of the nearest caller outside this library and SQLAlchemy."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(_NOT_USER_CODE):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>"


def _record(engine: Engine, *, owned: bool) -> None:
    database = database_identity(engine.url)
    site = creation_site()
    engine_id = id(engine)
    _records[engine_id] = (
        weakref.ref(engine, lambda _: _forget_id(engine_id)),
        database,
        site,
        owned,
    )
    if database is None:
        return
    for other_id, (ref, other_db, other_site, _) in list(_records.items()):
        pair = frozenset((engine_id, other_id))
        if other_id == engine_id or other_db != database or pair in _warned_pairs:
            continue
        if ref() is None:
            continue
        _warned_pairs.add(pair)
        warnings.warn(
            f"two engines reach the same database {engine.url!s}: one created at "
            f"{other_site}, another at {site}. Each engine has its own connection pool; "
            f"share one (pass engine= or db= to flask_unified_session) instead",
            DuplicateEngineWarning,
            stacklevel=2,
        )


def _forget_id(engine_id: int) -> None:
    with _lock:
        _records.pop(engine_id, None)
        for pair in [p for p in _warned_pairs if engine_id in p]:
            _warned_pairs.discard(pair)


def _fix_pysqlite_savepoints(engine: Engine) -> None:
    # pysqlite begins transactions on its own and breaks SAVEPOINT; let SQLAlchemy emit
    # BEGIN itself, as SQLAlchemy's documentation recommends for pysqlite.
    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _emit_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def _after_fork_in_child() -> None:
    # The child must not use, nor close, the parent's sockets: drop them from the pool.
    for record in known_engines():
        record.engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
