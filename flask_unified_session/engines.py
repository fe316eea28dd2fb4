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

Async engines are recorded here too, beside the sync ones: one per (URL, options, event
loop), since an async engine's connections belong to the loop that opened them. The
library's own are held until their loop shuts down (then disposed inside it); a sync and
an async engine on one database are expected (one pool each), two async engines of one
loop on one database are a duplicate like two sync ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine

from .config import ConfigurationError, Settings, display_url, is_sqlite_memory
from .connections import prepare_engine

if TYPE_CHECKING:
    # Imported where used: the sync registry must not need greenlet.
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "DuplicateEngineWarning",
    "EngineRecord",
    "async_engine_for",
    "dispose_async_engines",
    "dispose_engines",
    "duplicate_groups",
    "engine_for",
    "known_engines",
    "register_async_engine",
    "register_engine",
]


class DuplicateEngineWarning(UserWarning):
    """Two live engines reach the same database: two connection pools where one was meant."""


@dataclass(frozen=True)
class EngineRecord:
    """What is known of one live engine.

    ``kind`` is ``"sync"`` or ``"async"``. For an async engine ``engine`` is its
    ``sync_engine`` (its pool, URL and events: what code that inspects engines needs),
    ``async_engine`` the :class:`~sqlalchemy.ext.asyncio.AsyncEngine` itself, and ``loop``
    the event loop it belongs to (``None`` for an adopted one: only its creator knows).
    """

    engine: Engine
    database: tuple[str, ...] | None
    site: str
    owned: bool
    kind: Literal["sync", "async"] = "sync"
    async_engine: AsyncEngine | None = None
    loop: asyncio.AbstractEventLoop | None = None


class _Entry(NamedTuple):
    # The Engine, or the AsyncEngine (what its users hold: its sync_engine outlives it).
    ref: weakref.ref[Any]
    database: tuple[str, ...] | None
    site: str
    owned: bool
    is_async: bool
    # The loop of an async engine the library created; None for the others.
    loop: weakref.ref[asyncio.AbstractEventLoop] | None


@dataclass
class _AsyncSlot:
    engine: AsyncEngine
    loop: weakref.ref[asyncio.AbstractEventLoop]
    # the async generator whose finalization (loop.shutdown_asyncgens) disposes the engine
    finalizer: Any = None


log = logging.getLogger("flask_unified_session")

# One lock for the sync and the async registry; replaced in a forked child.
_lock = threading.RLock()
# Engines the library created, by (URL, options): weakly, so that an engine lives exactly as
# long as the factories, apps and user code that hold it; reused for equal asks.
_by_key: dict[tuple[str, str], weakref.ref[Engine]] = {}
# Async engines the library created, by (URL, options, id(loop)): held until their loop
# shuts down (then disposed in it), or until a later ask finds their loop closed.
_async_by_key: dict[tuple[str, str, int], _AsyncSlot] = {}
# Every live engine, sync and async, the library created or adopted, by id(engine).
_records: dict[int, _Entry] = {}
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
        record = _record(engine, owned=True)
    _report_duplicate(record)
    return engine, True


def register_engine(engine: Engine) -> None:
    """Record an engine created elsewhere (adopted): reported if it duplicates another.

    Once nobody holds it, its pooled connections are closed too (a factory that shared it
    may have opened them): a dropped engine never leaves an open socket to be collected.
    """
    with _lock:
        if _is_recorded(engine):
            return
        record = _record(engine, owned=False)
        _dispose_when_unreferenced(engine)
    _report_duplicate(record)


def known_engines() -> list[EngineRecord]:
    """Every live engine, sync and async, the library created or adopted, oldest first.

    An async engine whose event loop is closed is not listed: it cannot be used again.
    """
    records = []
    # No lock: a plain copy is consistent under the GIL, and the at-fork hook must not
    # wait on a lock that a thread which does not exist in the child holds.
    for entry in list(_records.values()):
        record = _live(entry)
        if record is not None:
            records.append(record)
    return records


def duplicate_groups() -> list[list[EngineRecord]]:
    """Groups of two or more live engines that are one pool too many, oldest first.

    Grouped by database, kind and event loop: a sync and an async engine on one database
    are expected, and so are async engines of different loops (each loop needs its own).
    An adopted async engine's loop is unknown: it joins each loop's group of its database.
    """
    gc.collect()  # engines of apps that are gone (reference cycles) do not count
    records = [record for record in known_engines() if record.database is not None]
    groups: dict[tuple[Any, ...], list[EngineRecord]] = {}
    unbound: dict[tuple[str, ...] | None, list[EngineRecord]] = {}
    for record in records:
        if record.kind == "async" and record.loop is None:
            unbound.setdefault(record.database, []).append(record)
        else:
            groups.setdefault((record.database, record.kind, id(record.loop)), []).append(record)
    for database, free in unbound.items():
        bound = [key for key in groups if key[0] == database and key[1] == "async"]
        for key in bound:
            groups[key] = groups[key] + free
        if not bound:
            groups[(database, "async", None)] = free
    age = {id(record): position for position, record in enumerate(records)}
    return [
        sorted(group, key=lambda record: age[id(record)])
        for group in groups.values()
        if len(group) > 1
    ]


def dispose_engines() -> None:
    """Dispose and forget every sync engine the library created; forget adopted ones.

    For test suites and shutdown hooks: engines asked for afterwards are new. The library's
    async engines of a live event loop stay: they can only be disposed inside their loop,
    at its shutdown or by ``await dispose_async_engines()``; those of closed loops are
    dropped.
    """
    with _lock:
        owned = [engine for ref in _by_key.values() if (engine := ref()) is not None]
        _by_key.clear()
        _prune_dead_loops()
        kept = {id(slot.engine) for slot in _async_by_key.values()}
        for engine_id in [i for i in _records if i not in kept]:
            del _records[engine_id]
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


# -- async engines: one per (URL, options, event loop) ----------------------------------


def async_engine_key(settings: Settings) -> tuple[str, str]:
    """What makes two asks for an async engine the same ask (the loop aside)."""
    url = settings.async_url
    options = settings.engine_options(url)
    pre_ping = (settings.pool_pre_ping, settings.pool_pre_ping_idle)
    return url.render_as_string(hide_password=False), repr((sorted(options.items()), pre_ping))


def async_engine_for(settings: Settings, *, _key: tuple[str, str] | None = None) -> AsyncEngine:
    """The process's async engine for ``settings`` in the running event loop.

    Created on first ask in each loop (it does not connect), prepared like the sync one
    (connect guard, idle pre-ping, the SQLite SAVEPOINT fix), recorded beside the sync
    engines, and disposed inside that loop when the loop shuts down its async generators
    (``asyncio.run()`` does). ``_key`` is :func:`async_engine_key` of ``settings``, when
    the caller keeps it.
    """
    loop = _running_loop("an async engine")
    url_key, options_key = async_engine_key(settings) if _key is None else _key
    key = (url_key, options_key, id(loop))
    with _lock:
        slot = _async_by_key.get(key)
        if slot is not None and slot.loop() is loop:
            return slot.engine
        _prune_dead_loops()
        from sqlalchemy.ext.asyncio import create_async_engine

        url = settings.async_url
        try:
            engine = create_async_engine(url, **settings.engine_options(url))
        except ImportError as exc:
            raise ConfigurationError(
                f"{settings.source}: the async driver for {url.drivername!r} is not installed "
                f"({exc.name or exc}); install it, for example 'pip install psycopg[binary]', "
                "'pip install aiomysql' or 'pip install aiosqlite'"
            ) from None
        prepare_engine(engine, settings)
        if url.get_backend_name() == "sqlite":
            _fix_pysqlite_savepoints(engine.sync_engine)
        slot = _AsyncSlot(engine, weakref.ref(loop))
        slot.finalizer = _dispose_at_loop_shutdown(key, slot)
        _async_by_key[key] = slot
        record = _record(engine, owned=True, is_async=True, loop=loop)
    _report_duplicate(record)
    return engine


def register_async_engine(engine: AsyncEngine) -> None:
    """Record an async engine created elsewhere (adopted), weakly: reported if it
    duplicates another async engine on its database."""
    with _lock:
        if _is_recorded(engine):
            return
        record = _record(engine, owned=False, is_async=True)
    _report_duplicate(record)


async def dispose_async_engines() -> None:
    """Dispose the library's async engines of the running loop (new ones on next ask)."""
    loop = asyncio.get_running_loop()
    with _lock:
        mine = [(key, slot) for key, slot in _async_by_key.items() if slot.loop() is loop]
        for key, slot in mine:
            del _async_by_key[key]
            _forget_async(slot)
    for _, slot in mine:
        await slot.engine.dispose()


def _running_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} needs a running event loop: an async engine belongs to one loop, so "
            "ask for it inside a coroutine (async def), not at import time"
        ) from None


def _forget_async(slot: _AsyncSlot) -> None:
    # Its loop is done with it: a factory that still caches the engine must not make it
    # look like a live duplicate of the next one (called under the lock).
    entry = _records.get(id(slot.engine))
    if entry is not None and entry.ref() is slot.engine:
        del _records[id(slot.engine)]


def _prune_dead_loops() -> None:
    # A loop closed without shutting down its async generators: its engine's connections
    # cannot be closed cleanly from here; drop them from the pool without closing.
    for key, slot in list(_async_by_key.items()):
        loop = slot.loop()
        if loop is None or loop.is_closed():
            del _async_by_key[key]
            _forget_async(slot)
            with contextlib.suppress(Exception):
                slot.engine.sync_engine.dispose(close=False)


def _dispose_at_loop_shutdown(key: tuple[str, str, int], slot: _AsyncSlot) -> Any:
    # An async generator started in the loop is registered with the loop's asyncgen hooks;
    # loop.shutdown_asyncgens() (run by asyncio.run() before it closes the loop) closes it,
    # which runs the finally clause below inside the loop: the pool closes cleanly there.
    # (Never from the garbage collector: asyncio's finalizer hook only schedules aclose().)
    async def finalizer() -> Any:
        try:
            yield
        finally:
            with _lock:
                if _async_by_key.get(key) is slot:
                    del _async_by_key[key]
                _forget_async(slot)
            try:
                await slot.engine.dispose()
            except Exception:
                log.warning("disposing an async engine at loop shutdown failed", exc_info=True)

    generator = finalizer()
    step: Any = generator.__anext__()  # calls the loop's firstiter hook: now the loop tracks it
    with contextlib.suppress(StopIteration):
        step.send(None)  # run to the yield (no await before it)
    return generator


# -- what makes an engine's database, and where it was created ---------------------------


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
            record.kind == "sync"
            and not record.owned
            and record.database == database
            and engine.url.drivername == url.drivername
            # what the URL asks for, the adopted engine has (Flask-SQLAlchemy adds
            # charset=utf8mb4 to MySQL URLs, for example)
            and all(engine.url.query.get(k) == v for k, v in url.query.items())
        ):
            return engine
    return None


def _record(
    engine: Engine | AsyncEngine,
    *,
    owned: bool,
    is_async: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> EngineRecord:
    engine_id = id(engine)
    entry = _Entry(
        weakref.ref(engine, lambda ref: _forget_id(engine_id, ref)),
        database_identity(engine.url),
        creation_site(),
        owned,
        is_async,
        weakref.ref(loop) if loop is not None else None,
    )
    _records[engine_id] = entry
    record = _live(entry)
    assert record is not None  # the caller holds the engine, and its loop runs
    return record


def _is_recorded(engine: object) -> bool:
    entry = _records.get(id(engine))
    return entry is not None and entry.ref() is engine


def _live(entry: _Entry) -> EngineRecord | None:
    held = entry.ref()
    if held is None:
        return None
    if not entry.is_async:
        return EngineRecord(held, entry.database, entry.site, entry.owned)
    loop = None
    if entry.loop is not None:
        loop = entry.loop()
        if loop is None or loop.is_closed():
            return None
    return EngineRecord(
        held.sync_engine, entry.database, entry.site, entry.owned, "async", held, loop
    )


def _held(record: EngineRecord) -> object:
    """The object the registry keys ``record`` by: the AsyncEngine of an async engine."""
    return record.async_engine if record.async_engine is not None else record.engine


def _competes(record: EngineRecord, other: EngineRecord) -> bool:
    """Whether ``other`` is a second pool where ``record``'s was meant.

    The same database and kind (a sync and an async engine are one pool each by design);
    for async engines also the same loop, as each loop needs its own engine (an adopted
    one's loop is unknown: it competes with every loop's).
    """
    if other.database != record.database or other.kind != record.kind:
        return False
    if _held(other) is _held(record):
        return False
    if other.site == record.site:
        # The same line made both: an app factory called again (one app per test, whose
        # previous app a test runner still holds), not a second way to reach the database.
        return False
    return record.loop is None or other.loop is None or record.loop is other.loop


def _report_duplicate(record: EngineRecord) -> None:
    if record.database is None:
        return
    if not any(_competes(record, other) for other in known_engines()):
        return
    # An engine of an app that is gone may only wait for the cycle collector: collect
    # before calling it a duplicate (this runs only when a duplicate is suspected).
    gc.collect()
    engine_id = id(_held(record))
    for other in known_engines():
        if not _competes(record, other):
            continue
        pair = frozenset((engine_id, id(_held(other))))
        with _lock:
            if pair in _warned_pairs:
                continue
            _warned_pairs.add(pair)
        if record.kind == "async":
            message = (
                f"two async engines reach the same database {display_url(record.engine.url)}"
                f": one created at {other.site}, another at {record.site}. Each engine has "
                "its own connection pool; share one (flask_unified_session.asyncio."
                "get_async_engine() or AsyncSessionFactory(engine=...)) instead"
            )
        else:
            message = (
                f"two engines reach the same database {display_url(record.engine.url)}: one "
                f"created at {other.site}, another at {record.site}. Each engine has its own "
                "connection pool; share one (pass engine= or db= to flask_unified_session) "
                "instead"
            )
        warnings.warn(message, DuplicateEngineWarning, stacklevel=3)


def _forget_id(engine_id: int, ref: weakref.ref[Any]) -> None:
    # Called by the garbage collector: at any moment, in any thread, and in a forked child
    # before any at-fork hook of ours has run (CPython's own threading hook collects). So
    # it takes no lock: a lock that another thread held at fork is held for ever in the
    # child. Single dict and set operations are atomic under the GIL; dead entries of
    # _by_key are pruned by engine_for, under the lock. The same for async engines.
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

    # The dialect's do_begin (a no-op by default), not the recipe's "begin" event: any
    # connection event listener makes SQLAlchemy dispatch through joined listener
    # collections on every statement of every connection (about 10 µs a unit here).
    engine.dialect.do_begin = _begin_on_a_cursor  # type: ignore[method-assign]


def _begin_on_a_cursor(dbapi_connection: Any) -> None:
    # The pool's DBAPI connection: for aiosqlite that is SQLAlchemy's adapter, whose cursor
    # runs synchronously here (the driver's own connection would return coroutines).
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("BEGIN")
    finally:
        cursor.close()


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
