"""The process's engines: one per (URL, options), duplicates reported, safe across fork.

Every engine the library creates or adopts is recorded here, weakly: an engine lives as
long as a factory, an app or user code holds it, and once nobody does its pooled
connections are closed. A factory asked for a database that an adopted engine (Flask-
SQLAlchemy's) already reaches shares that engine. Two live engines that reach the same
database are the bug this library exists to end (two pools where one was meant), so the
pair is reported once as a :class:`DuplicateEngineWarning` naming where each was created.
After ``os.fork()`` every recorded engine drops the parent's pooled connections without
closing them, as SQLAlchemy recommends, so a child never talks over a socket its parent
also uses; the hook takes no lock.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine

from .config import ConfigurationError, Settings, display_url, is_sqlite_memory
from .connections import prepare_engine

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
# Engines the library created, by (URL, options): weakly, so that an engine lives exactly as
# long as the factories, apps and user code that hold it; reused for equal asks.
_by_key: dict[tuple[str, str], weakref.ref[Engine]] = {}
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
    "werkzeug",
    "asyncio",
    "concurrent.",
    "anyio",
    "starlette",
    "fastapi",
)


def engine_for(settings: Settings) -> tuple[Engine, bool]:
    """The process's engine for ``settings`` and whether the library owns it.

    An engine the library made for equal settings is reused; else a live adopted engine
    (Flask-SQLAlchemy's) that reaches the same database with the same driver and query is
    shared (not owned: its pool settings are its creator's); else a new one is created,
    owned, and disposed once nothing holds it. Creating an engine does not connect.
    """
    options = settings.engine_options()
    # The pre-ping is installed by prepare_engine, not passed as an option: part of the key.
    pre_ping = (settings.pool_pre_ping, settings.pool_pre_ping_idle)
    key = (
        settings.url.render_as_string(hide_password=False),
        repr((sorted(options.items()), pre_ping)),
    )
    with _lock:
        ref = _by_key.get(key)
        engine = ref() if ref is not None else None
        if engine is not None:
            return engine, True
        adopted = _adopted_for(settings.url)
        if adopted is not None:
            return adopted, False
        try:
            engine = create_engine(settings.url, **options)
        except ImportError as exc:
            raise ConfigurationError(
                f"{settings.source}: the driver for {settings.url.drivername!r} is not "
                f"installed ({exc.name or exc}); install it, for example "
                f"'pip install psycopg[binary]' or 'pip install PyMySQL'"
            ) from None
        prepare_engine(engine, settings)
        if settings.is_sqlite and settings.url.get_driver_name() == "pysqlite":
            _fix_pysqlite_savepoints(engine)
        _dispose_when_unreferenced(engine)
        for dead in [k for k, r in _by_key.items() if r() is None]:
            del _by_key[dead]
        _by_key[key] = weakref.ref(engine)
        pair = _record(engine, owned=True)
    _report_duplicate(engine, pair)
    return engine, True


def register_engine(engine: Engine) -> None:
    """Record an engine created elsewhere (adopted): reported if it duplicates another.

    Once nobody holds it, its pooled connections are closed too (a factory that shared it
    may have opened them): a dropped engine never leaves an open socket to be collected.
    """
    with _lock:
        if id(engine) in _records:
            return
        pair = _record(engine, owned=False)
        _dispose_when_unreferenced(engine)
    _report_duplicate(engine, pair)


def known_engines() -> list[EngineRecord]:
    """Every live engine the library created or adopted, oldest first."""
    records = []
    # No lock: a plain copy is consistent under the GIL, and the at-fork hook must not
    # wait on a lock that a thread which does not exist in the child holds.
    for ref, database, site, owned in list(_records.values()):
        engine = ref()
        if engine is not None:
            records.append(EngineRecord(engine, database, site, owned))
    return records


def duplicate_groups() -> list[list[EngineRecord]]:
    """Groups of two or more live engines that reach the same database."""
    gc.collect()  # engines of apps that are gone (reference cycles) do not count
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
        owned = [engine for ref in _by_key.values() if (engine := ref()) is not None]
        _by_key.clear()
        _records.clear()
        _warned_pairs.clear()
    for engine in owned:
        engine.dispose()


def forget_engine(engine: Engine) -> None:
    """Stop tracking ``engine`` (without disposing it)."""
    with _lock:
        _records.pop(id(engine), None)
        for key, ref in list(_by_key.items()):
            if ref() is engine:
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


def _adopted_for(url: URL) -> Engine | None:
    database = database_identity(url)
    if database is None:
        return None
    for record in known_engines():
        engine = record.engine
        if (
            not record.owned
            and record.database == database
            and engine.url.drivername == url.drivername
            # what the URL asks for, the adopted engine has (Flask-SQLAlchemy adds
            # charset=utf8mb4 to MySQL URLs, for example)
            and all(engine.url.query.get(k) == v for k, v in url.query.items())
        ):
            return engine
    return None


def _record(engine: Engine, *, owned: bool) -> tuple[int, str]:
    engine_id = id(engine)
    site = creation_site()
    _records[engine_id] = (
        weakref.ref(engine, lambda ref: _forget_id(engine_id, ref)),
        database_identity(engine.url),
        site,
        owned,
    )
    return engine_id, site


def _report_duplicate(engine: Engine, recorded: tuple[int, str]) -> None:
    engine_id, site = recorded
    database = database_identity(engine.url)
    if database is None:
        return
    others = [r for r in known_engines() if r.database == database and r.engine is not engine]
    if not others:
        return
    # An engine of an app that is gone may only wait for the cycle collector: collect
    # before calling it a duplicate (this runs only when a duplicate is suspected).
    del others
    gc.collect()
    for record in known_engines():
        if record.database != database or record.engine is engine:
            continue
        pair = frozenset((engine_id, id(record.engine)))
        with _lock:
            if pair in _warned_pairs:
                continue
            _warned_pairs.add(pair)
        warnings.warn(
            f"two engines reach the same database {display_url(engine.url)}: one created at "
            f"{record.site}, another at {site}. Each engine has its own connection pool; "
            f"share one (pass engine= or db= to flask_unified_session) instead",
            DuplicateEngineWarning,
            stacklevel=3,
        )


def _forget_id(engine_id: int, ref: weakref.ref[Engine]) -> None:
    # Called by the garbage collector: at any moment, in any thread, and in a forked child
    # before any at-fork hook of ours has run (CPython's own threading hook collects). So
    # it takes no lock: a lock that another thread held at fork is held for ever in the
    # child. Single dict and set operations are atomic under the GIL; dead entries of
    # _by_key are pruned by engine_for, under the lock.
    recorded = _records.get(engine_id)
    if recorded is not None and recorded[0] is ref:
        _records.pop(engine_id, None)
    for pair in [p for p in list(_warned_pairs) if engine_id in p]:
        _warned_pairs.discard(pair)


def _dispose_when_unreferenced(engine: Engine) -> None:
    # A recorded engine closes its pooled connections (and SQLite files) as soon as
    # nothing holds it. The finalizer may reference neither the engine nor its pool (the
    # pool's listeners reference the engine, and a finalizer's arguments are held for
    # ever): it keeps the raw DBAPI connections the pool has open, which reference neither,
    # each with the process that opened it.
    open_connections: dict[Any, int] = {}

    @event.listens_for(engine, "connect")
    def _opened(dbapi_connection: Any, _record: Any) -> None:
        open_connections[dbapi_connection] = os.getpid()

    @event.listens_for(engine, "close")
    def _closed(dbapi_connection: Any, _record: Any) -> None:
        open_connections.pop(dbapi_connection, None)

    @event.listens_for(engine, "close_detached")
    def _closed_detached(dbapi_connection: Any) -> None:
        open_connections.pop(dbapi_connection, None)

    engine._fus_open_connections = open_connections  # type: ignore[attr-defined]
    weakref.finalize(engine, _close_all, open_connections)


def _close_all(open_connections: dict[Any, int]) -> None:
    # Only this process's connections: in a forked child the collector can run this before
    # the at-fork hook has forgotten the parent's, and closing one would end the parent's
    # session on the server.
    pid = os.getpid()
    while open_connections:
        connection, opened_by = open_connections.popitem()
        if opened_by == pid:
            with contextlib.suppress(Exception):  # a finalizer must not raise
                connection.close()


def _fix_pysqlite_savepoints(engine: Engine) -> None:
    # pysqlite begins transactions on its own and breaks SAVEPOINT; let SQLAlchemy emit
    # BEGIN itself, as SQLAlchemy's documentation recommends for pysqlite.
    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _emit_begin(connection: Any) -> None:
        # Through SQLAlchemy, not the driver's connection: the async engines' aiosqlite
        # driver connection would return a coroutine here.
        connection.exec_driver_sql("BEGIN")


def _after_fork_in_child() -> None:
    # The child must not use, nor close, the parent's sockets: drop them from the pool.
    # No lock is taken (a thread that held one does not exist in the child), and the
    # registry gets fresh locks for the child's own threads.
    global _lock
    _lock = threading.RLock()
    for record in known_engines():
        record.engine.dispose(close=False)
        # Those are the parent's connections: the child's finalizer must not close them.
        getattr(record.engine, "_fus_open_connections", {}).clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
