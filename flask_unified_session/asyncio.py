"""Async sessions from the same settings, on the same protocol and nesting rule.

Every async unit of work is the library's one
:class:`~flask_unified_session.unit_of_work.UnitOfWork`, run on the
:class:`~sqlalchemy.ext.asyncio.AsyncSession`'s ``sync_session`` inside SQLAlchemy's
``greenlet_spawn``, exactly as ``AsyncSession`` runs its own methods: commit at the
outermost exit, roll back on any exception and re-raise it unchanged, always close;
joined scopes doom their level, ``nested=True`` is a SAVEPOINT, ``independent=True`` has
its own session. The owner a unit joins on is the asyncio task, so a child task
(``gather``, ``TaskGroup``) never joins its parent's session even though it inherits
the parent's context variables.

Engines: one per database, options and event loop. An engine is never used from another
loop; it is disposed inside its loop when the loop shuts down (``asyncio.run()`` does so),
and ``asyncio.run()`` called again gets a new one.

Read replicas (``DB_REPLICA_URLS``): ``session_scope(readonly=True)`` follows the rules of
:mod:`flask_unified_session.replicas`, with an async engine per replica and loop. The
replica is chosen by the factory's :class:`~flask_unified_session.replicas.ReplicaSet` in
a worker thread (its checks are blocking); an outermost unit that committed awaits the
primary's ``pg_current_wal_lsn()`` and records it for its owner (the app context, else
the task), so that the owner's next readonly unit reads its writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

try:
    import greenlet  # noqa: F401  (SQLAlchemy's async layer needs it)
except ImportError as _missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "flask_unified_session.asyncio needs greenlet: pip install 'sqlalchemy[asyncio]' "
        "(or 'flask-unified-session[asyncio]')"
    ) from _missing

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.ext.asyncio import async_session as _async_session_of
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.concurrency import in_greenlet

from .config import ConfigurationError, Settings, display_url, factory_settings
from .connections import prepare_engine
from .engines import (
    DuplicateEngineWarning,
    _fix_pysqlite_savepoints,
    creation_site,
    database_identity,
    engine_for,
)
from .replicas import PRIMARY, ReplicaSet, _begin_read_only, routing_to_primary
from .session_factory import existing_default_factory
from .unit_of_work import (
    DoomedTransactionError,
    UnitOfWork,
    _live,
    _open,
    _quietly,
    current_owner,
    task_owner,
)

__all__ = [
    "AsyncLazyLoadError",
    "AsyncSessionFactory",
    "AsyncUnitOfWork",
    "DoomedTransactionError",
    "async_engine_for",
    "async_session_scope",
    "create_async_session",
    "dispose_async_engines",
    "get_async_engine",
    "get_async_session_generator",
    "get_default_async_factory",
    "known_async_engines",
    "on_commit",
    "run_in_transaction",
    "set_default_async_factory",
]

log = logging.getLogger("flask_unified_session")

T = TypeVar("T")


class AsyncLazyLoadError(MissingGreenlet):
    """A lazy load (an unloaded relationship or column) was attempted by plain attribute
    access on an object of an open ``AsyncSession``, which cannot do I/O there."""


# -- the lazy-load guard -----------------------------------------------------------------


def _refuse_sync_lazy_load(state: ORMExecuteState) -> None:
    if (state.is_relationship_load or state.is_column_load) and not in_greenlet():
        what = "relationship" if state.is_relationship_load else "column"
        raise AsyncLazyLoadError(
            f"a lazy load of an unloaded {what} was attempted by attribute access on an "
            "object of an AsyncSession; async code cannot do I/O there. Load it first: "
            "'await session.refresh(obj, [\"attr\"])', a 'selectinload(...)' option on "
            "the query, or 'await obj.awaitable_attrs.attr' (sqlalchemy.ext.asyncio.AsyncAttrs)"
        )


@functools.cache
def _guarded_sync_class(base: type[Session]) -> type[Session]:
    cls = type(f"LazyGuarded{base.__name__}", (base,), {})
    event.listen(cls, "do_orm_execute", _refuse_sync_lazy_load)
    return cls


# -- engines: one per (URL, options, event loop) -----------------------------------------


@dataclass
class _AsyncRecord:
    engine: AsyncEngine
    database: tuple[str, ...] | None
    site: str
    loop: weakref.ref[asyncio.AbstractEventLoop]
    # the async generator whose finalization (loop.shutdown_asyncgens) disposes the engine
    finalizer: Any = None


_lock = threading.RLock()
# Engines the library created, by (URL, options, id(loop)): held until their loop shuts
# down (then disposed in it), or until a later ask finds their loop closed.
_by_key: dict[tuple[str, str, int], _AsyncRecord] = {}
# Async engines created elsewhere and given to a factory, by id: weakly, with their site.
_adopted: dict[int, tuple[weakref.ref[AsyncEngine], str]] = {}
_warned_pairs: set[frozenset[int]] = set()


def _running_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} needs a running event loop: an async engine belongs to one loop, so "
            "ask for it inside a coroutine (async def), not at import time"
        ) from None


def _settings_key(settings: Settings) -> tuple[str, str]:
    url = settings.async_url
    options = settings.engine_options(url)
    pre_ping = (settings.pool_pre_ping, settings.pool_pre_ping_idle)
    return url.render_as_string(hide_password=False), repr((sorted(options.items()), pre_ping))


def async_engine_for(settings: Settings, *, _key: tuple[str, str] | None = None) -> AsyncEngine:
    """The process's async engine for ``settings`` in the running event loop.

    Created on first ask in each loop (it does not connect), prepared like the sync one
    (connect guard, idle pre-ping, the SQLite SAVEPOINT fix), and disposed inside that
    loop when the loop shuts down its async generators (``asyncio.run()`` does).
    """
    loop = _running_loop("an async engine")
    url_key, options_key = _settings_key(settings) if _key is None else _key
    key = (url_key, options_key, id(loop))
    with _lock:
        record = _by_key.get(key)
        if record is not None and record.loop() is loop:
            return record.engine
        _prune_dead_loops()
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
        record = _AsyncRecord(engine, database_identity(url), creation_site(), weakref.ref(loop))
        record.finalizer = _dispose_at_loop_shutdown(key, record)
        _by_key[key] = record
    _report_duplicate(engine, record.database, record.site, loop)
    return engine


def register_async_engine(engine: AsyncEngine) -> None:
    """Record an async engine created elsewhere (adopted): reported if it duplicates one."""
    engine_id = id(engine)
    with _lock:
        if engine_id in _adopted:
            return
        site = creation_site()
        _adopted[engine_id] = (
            weakref.ref(engine, lambda ref: _forget_adopted(engine_id, ref)),
            site,
        )
    _report_duplicate(engine, database_identity(engine.url), site, None)


def known_async_engines() -> list[tuple[AsyncEngine, str, bool]]:
    """``(engine, creation site, owned)`` of every live async engine recorded."""
    found = [(record.engine, record.site, True) for record in list(_by_key.values())]
    for ref, site in list(_adopted.values()):
        engine = ref()
        if engine is not None:
            found.append((engine, site, False))
    return found


async def dispose_async_engines() -> None:
    """Dispose the library's async engines of the running loop (new ones on next ask)."""
    loop = asyncio.get_running_loop()
    with _lock:
        mine = [(key, r) for key, r in _by_key.items() if r.loop() is loop]
        for key, _ in mine:
            del _by_key[key]
    for _, record in mine:
        await record.engine.dispose()


def _forget_adopted(engine_id: int, ref: weakref.ref[AsyncEngine]) -> None:
    # Called by the garbage collector, possibly in a forked child before any at-fork hook:
    # no lock (see engines._forget_id).
    recorded = _adopted.get(engine_id)
    if recorded is not None and recorded[0] is ref:
        _adopted.pop(engine_id, None)
    for pair in [p for p in list(_warned_pairs) if engine_id in p]:
        _warned_pairs.discard(pair)


def _prune_dead_loops() -> None:
    # A loop closed without shutting down its async generators: its engine's connections
    # cannot be closed cleanly from here; drop them from the pool without closing.
    for key, record in list(_by_key.items()):
        loop = record.loop()
        if loop is None or loop.is_closed():
            del _by_key[key]
            with contextlib.suppress(Exception):
                record.engine.sync_engine.dispose(close=False)


def _dispose_at_loop_shutdown(key: tuple[str, str, int], record: _AsyncRecord) -> Any:
    # An async generator started in the loop is registered with the loop's asyncgen hooks;
    # loop.shutdown_asyncgens() (run by asyncio.run() before it closes the loop) closes it,
    # which runs the finally clause below inside the loop: the pool closes cleanly there.
    async def finalizer() -> AsyncIterator[None]:
        try:
            yield
        finally:
            with _lock:
                if _by_key.get(key) is record:
                    del _by_key[key]
            try:
                await record.engine.dispose()
            except Exception:
                log.warning("disposing an async engine at loop shutdown failed", exc_info=True)

    generator = finalizer()
    step: Any = generator.__anext__()  # calls the loop's firstiter hook: now the loop tracks it
    with contextlib.suppress(StopIteration):
        step.send(None)  # run to the yield (no await before it)
    return generator


def _report_duplicate(
    engine: AsyncEngine,
    database: tuple[str, ...] | None,
    site: str,
    loop: asyncio.AbstractEventLoop | None,
) -> None:
    # Engines of different event loops are not duplicates: each loop needs its own.
    if database is None:
        return
    candidates = [(r.engine, r.site, r.loop()) for r in list(_by_key.values())]
    candidates += [(e, s, None) for e, s, owned in known_async_engines() if not owned]
    for other, other_site, other_loop in candidates:
        if other is engine or database_identity(other.url) != database:
            continue
        if loop is not None and other_loop is not None and other_loop is not loop:
            continue
        pair = frozenset((id(engine), id(other)))
        with _lock:
            if pair in _warned_pairs:
                continue
            _warned_pairs.add(pair)
        warnings.warn(
            f"two async engines reach the same database {display_url(engine.url)}: one "
            f"created at {other_site}, another at {site}. Each engine has its own "
            "connection pool; share one (flask_unified_session.asyncio.get_async_engine() "
            "or AsyncSessionFactory(engine=...)) instead",
            DuplicateEngineWarning,
            stacklevel=3,
        )


# -- cleanup shielded from cancellation ---------------------------------------------------


async def _shielded(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a greenlet, in a task of its own that no cancellation reaches.

    A cancellation of the caller while it runs (a second cancel, or anyio's cancel scope
    that cancels every await again) waits for it to finish, then propagates.
    """
    task = asyncio.ensure_future(greenlet_spawn(call, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue
            except BaseException:
                break
        if not task.cancelled() and task.exception() is not None:
            log.warning("the cleanup of a cancelled unit of work failed", exc_info=task.exception())
        raise


# -- the unit of work --------------------------------------------------------------------


class AsyncUnitOfWork:
    """An async unit of work (``async with``) yielding an :class:`AsyncSession`.

    It is the library's :class:`~flask_unified_session.unit_of_work.UnitOfWork` on the
    session's ``sync_session``: the same decisions, only awaited. The object may be
    entered again once it has exited, never while it is active.
    """

    __slots__ = ("_factory", "_session", "_unit")

    def __init__(
        self, factory: AsyncSessionFactory, *, nested: bool = False, independent: bool = False
    ) -> None:
        self._factory = factory
        self._session: AsyncSession | None = None
        self._unit = UnitOfWork(
            factory,
            self._open_session,
            nested=nested,
            independent=independent,
            sender=factory.signal_sender,
            context=factory.context_provider,
            owner_of=task_owner,
        )

    @property
    def nested(self) -> bool:
        return self._unit.nested

    @property
    def independent(self) -> bool:
        return self._unit.independent

    def _open_session(self) -> Session:
        session = self._factory._new_session()
        self._session = session  # the sync session's AsyncSession proxy lives while we do
        return session.sync_session

    async def __aenter__(self) -> AsyncSession:
        unit = self._unit
        if unit.nested:
            # a SAVEPOINT is I/O
            sync_session = await greenlet_spawn(unit.__enter__)
        else:
            sync_session = unit.__enter__()
        session = self._session
        if session is None or session.sync_session is not sync_session:
            session = _async_session_of(sync_session)
            if session is None:  # pragma: no cover - the opening unit holds it
                raise RuntimeError("the unit's AsyncSession is gone")
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        unit = self._unit
        try:
            if unit._joined and not unit.nested:
                unit.__exit__(exc_type, exc, tb)  # no I/O: join or doom
            else:
                await _shielded(unit.__exit__, exc_type, exc, tb)
        finally:
            self._session = None


# -- readonly units: read replicas --------------------------------------------------------

_PRIMARY_LSN = text("SELECT pg_current_wal_lsn()::text")
# Sessions of factories with replicas that committed: their outermost unit reads the
# primary's WAL position at its end.
_committed: weakref.WeakSet[Session] = weakref.WeakSet()


@functools.cache
def _readonly_sync_class(base: type[Session]) -> type[Session]:
    # For factories without replicas: ``base`` is a cached guarded class, shared.
    cls = type(f"ReadOnly{base.__name__}", (base,), {})
    event.listen(cls, "after_begin", _begin_read_only)
    return cls


# Async driver -> the sync driver the replica checks use for the same server.
_SYNC_TWIN = {
    "psycopg_async": "psycopg",
    "asyncpg": "psycopg",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
    "aiosqlite": "pysqlite",
}


def _sync_url(url: URL, what: str) -> URL:
    if not url.get_dialect().is_async:
        return url
    driver = _SYNC_TWIN.get(url.get_driver_name())
    try:
        if driver is None:
            raise ImportError(url.get_driver_name())
        synced = url.set(drivername=f"{url.get_backend_name()}+{driver}")
        synced.get_dialect().import_dbapi()
    except ImportError:
        raise ConfigurationError(
            f"{what} uses the async driver {url.drivername!r}: replicas are checked with a "
            "sync driver, and none is known or installed for it. Give the sync URL there "
            "(psycopg serves both: 'postgresql+psycopg://…') and the async one in "
            "DATABASE_ASYNC_URL"
        ) from None
    return synced


def _for_checks(settings: Settings) -> Settings:
    """``settings`` with sync drivers in the primary's and the replicas' URLs."""
    url = _sync_url(settings.url, settings.source)
    replica_urls = tuple(
        _sync_url(replica, f"DB_REPLICA_URLS (URL {position} of {len(settings.replica_urls)})")
        for position, replica in enumerate(settings.replica_urls, start=1)
    )
    if url is settings.url and replica_urls == settings.replica_urls:
        return settings
    return dataclasses.replace(
        settings, url=url, replica_urls=replica_urls, database_async_url=settings.async_url
    )


def _install_replicas(factory: AsyncSessionFactory, settings: Settings) -> None:
    # The ReplicaSet checks replicas and reads the primary's position with sync engines
    # (in a worker thread); the units themselves run on async engines of the loop.
    checks = _for_checks(settings)
    primary, _owned = engine_for(checks)
    replicas = ReplicaSet.from_settings(checks, primary)
    assert replicas is not None
    factory.replicas = replicas
    factory._replica_engines = _AsyncReplicaEngines(replicas, settings)
    base = factory.session_options["sync_session_class"]
    # Classes of this factory only (never cached: they hold its replicas, and so engines).
    readonly = type(f"ReadOnly{base.__name__}", (base,), {})
    event.listen(readonly, "after_begin", _begin_read_only)
    factory._readonly_class = readonly
    tracked = type(f"Replicated{base.__name__}", (base,), {})

    def note_commit(session: Session) -> None:
        # No SQL here (SQLAlchemy forbids it in after_commit). A commit outside a unit
        # (a session of create_async_session() or of the generator) makes the position
        # unknown for its owner: readonly units use the primary for a while. A unit's
        # own commit is recorded with its position at the unit's end.
        if "readonly" not in session.info and not routing_to_primary():
            _committed.add(session)
            replicas.record_lsn(current_owner(), None)

    event.listen(tracked, "after_commit", note_commit)
    factory.session_options["sync_session_class"] = tracked


class _AsyncReplicaEngines:
    """An async engine per replica and event loop, from the replica's URL with the async
    driver of the primary's async URL and the primary's pool settings."""

    def __init__(self, replicas: ReplicaSet, settings: Settings) -> None:
        driver = settings.async_url.drivername
        self._settings: dict[str, tuple[Settings, tuple[str, str]]] = {}
        for replica in replicas.replicas:
            replica_settings = dataclasses.replace(
                settings,
                url=replica.url,
                database_async_url=replica.url.set(drivername=driver),
                replica_urls=(),
                source="a replica URL",
            )
            self._settings[replica.label] = (replica_settings, _settings_key(replica_settings))

    def engine(self, label: str) -> AsyncEngine:
        replica_settings, key = self._settings[label]
        return async_engine_for(replica_settings, _key=key)

    async def dispose(self) -> None:
        loop = asyncio.get_running_loop()
        for _settings, key in self._settings.values():
            record = _by_key.get((key[0], key[1], id(loop)))
            if record is not None:
                await record.engine.dispose()


async def _begun(factory: AsyncSessionFactory, engine: AsyncEngine, label: str) -> AsyncSession:
    options = dict(factory.session_options)
    options["sync_session_class"] = factory._readonly_class or _readonly_sync_class(
        options["sync_session_class"]
    )
    session = factory.session_class(bind=engine, **options)
    session.sync_session.info.update(server=label, readonly=True)
    try:
        # Connect and begin now: a replica that is gone is skipped here, not in the block.
        await session.connection()
    except BaseException:
        await _shielded(_quietly, session.sync_session.close, "closing the session")
        raise
    return session


async def _open_readonly(factory: AsyncSessionFactory) -> AsyncSession:
    if routing_to_primary():
        session = factory._new_session()
        session.sync_session.info.update(server=PRIMARY, readonly=True)
        return session
    replicas, engines = factory.replicas, factory._replica_engines
    if replicas is None or engines is None:
        return await _begun(factory, factory.get_engine(), PRIMARY)
    owner = current_owner()
    for _attempt in replicas.replicas:
        ready = replicas.choose_nowait(owner)
        if ready is None:
            # Blocking checks (or the wait for the owner's last commit): in a worker thread.
            _engine, label = await asyncio.to_thread(replicas.choose, owner)
        else:
            label = ready
        replica = replicas.replica_for(label)
        if replica is None:  # the primary: its failure is the unit's error
            break
        try:
            return await _begun(factory, engines.engine(label), label)
        except Exception as exc:
            replicas.fail(replica, exc)
    return await _begun(factory, factory.get_engine(), PRIMARY)


class AsyncReadonlyUnit(AsyncUnitOfWork):
    """``session_scope(readonly=True)``: its own read-only session on a replica (or the
    primary); joins an open primary unit of the same factory and owner instead, and a
    readonly unit inside a readonly unit joins it (see :mod:`flask_unified_session.replicas`).
    """

    __slots__ = ("_prepared",)

    def __init__(
        self, factory: AsyncSessionFactory, *, nested: bool = False, independent: bool = False
    ) -> None:
        super().__init__(factory, nested=nested, independent=independent)
        self._unit.key = ("readonly", factory)
        self._unit.open_session = self._take_prepared
        self._prepared: AsyncSession | None = None

    def _take_prepared(self) -> Session:
        session, self._prepared = self._prepared, None
        assert session is not None
        self._session = session
        return session.sync_session

    async def __aenter__(self) -> AsyncSession:
        unit = self._unit
        if unit._transaction is not None:
            return await super().__aenter__()  # refused: already active
        if not unit.independent:
            units = _open.get(unit.owner_of())
            if units:
                if _live(units.get(unit.key)) is not None:
                    return await super().__aenter__()  # joins the readonly unit
                primary = _live(units.get(self._factory))
                if primary is not None:
                    return await self._join_primary(primary)
        prepared = self._prepared = await _open_readonly(self._factory)
        try:
            # In a greenlet: the session holds a connection already, and if the unit
            # fails to open (a context provider raises) its close is I/O.
            sync_session = await greenlet_spawn(unit.__enter__)
        except BaseException:
            self._prepared = None
            await _shielded(_quietly, prepared.sync_session.close, "closing the session")
            raise
        if sync_session is not prepared.sync_session:  # pragma: no cover - it opens here
            session = _async_session_of(sync_session)
            if session is None:
                raise RuntimeError("the unit's AsyncSession is gone")
            return session
        return prepared

    async def _join_primary(self, primary: Any) -> AsyncSession:
        unit = self._unit
        if unit.nested:
            sync_session = await greenlet_spawn(unit._join, primary)  # a SAVEPOINT is I/O
        else:
            sync_session = unit._join(primary)
        session = _async_session_of(sync_session)
        if session is None:  # pragma: no cover - the opening unit holds it
            raise RuntimeError("the unit's AsyncSession is gone")
        return session


class AsyncPrimaryUnit(AsyncUnitOfWork):
    """A default unit of a factory with replicas: says ``server="primary"`` and, at the
    end of an outermost unit that committed, records the primary's WAL position for its
    owner (read-your-writes)."""

    __slots__ = ()

    def __init__(
        self, factory: AsyncSessionFactory, *, nested: bool = False, independent: bool = False
    ) -> None:
        super().__init__(factory, nested=nested, independent=independent)
        self._unit._context = functools.partial(_primary_context, factory.context_provider)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = None if self._unit._joined else self._session
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            if session is not None and session.sync_session in _committed:
                _committed.discard(session.sync_session)
                await _record_position(self._factory, current_owner())


def _primary_context(provider: Callable[[], Mapping[str, Any]] | None) -> Mapping[str, Any]:
    if provider is None:
        return {"server": PRIMARY}
    return {"server": PRIMARY, **provider()}


async def _record_position(factory: AsyncSessionFactory, owner: object) -> None:
    replicas = factory.replicas
    assert replicas is not None
    # Unknown until read: a read that fails or is cancelled errs towards the primary.
    replicas.record_lsn(owner, None)
    if not replicas.primary_postgresql:
        return
    try:
        async with factory.get_engine().connect() as connection:
            lsn = (await connection.execute(_PRIMARY_LSN)).scalar()
    except Exception:
        log.warning("reading the primary's WAL position failed", exc_info=True)
        return
    replicas.record_lsn(owner, lsn)


# -- the factory -------------------------------------------------------------------------


class AsyncSessionFactory:
    """Async sessions for one database, on one engine per event loop shared by the process.

    Give at most one of ``url``, ``engine`` (adopted: never disposed by the factory) or
    ``settings``; with none, the settings are read from ``DATABASE_URL`` (the async URL
    derived from it) and ``DB_*``. ``url`` may be the sync URL (its async twin is used)
    or an async one. Other keyword arguments go to :class:`AsyncSession`;
    ``expire_on_commit`` defaults to ``False``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: AsyncEngine | None = None,
        settings: Settings | None = None,
        **session_options: Any,
    ) -> None:
        settings = factory_settings(url, engine, settings)
        self._engine = engine
        self._key: tuple[str, str] | None = None
        if engine is not None:
            register_async_engine(engine)
            self.owns_engine = False
        else:
            assert settings is not None
            self._key = _settings_key(settings)  # also: a URL with no async twin fails here
            self.owns_engine = True
        self.settings = settings
        session_options.setdefault("expire_on_commit", False)
        self.session_class: type[AsyncSession] = session_options.pop("class_", AsyncSession)
        sync_class = session_options.pop("sync_session_class", Session)
        session_options["sync_session_class"] = _guarded_sync_class(sync_class)
        self.session_options = session_options
        # the engine of the loop asked last, so that a unit costs no registry lookup
        self._cached: tuple[weakref.ref[asyncio.AbstractEventLoop], AsyncEngine] | None = None
        #: the sender of lifecycle signals
        self.signal_sender: object = self
        #: called when a unit of work opens or joins; its mapping goes into ``session.info``
        self.context_provider: Callable[[], Mapping[str, Any]] | None = None
        #: the read replicas (``settings.replica_urls``) for ``readonly=True`` units, or None
        self.replicas: ReplicaSet | None = None
        self._replica_engines: _AsyncReplicaEngines | None = None
        self._readonly_class: type[Session] | None = None
        if settings is not None and settings.replica_urls:
            _install_replicas(self, settings)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **session_options: Any
    ) -> AsyncSessionFactory:
        """A factory configured from ``DATABASE_URL`` / ``DATABASE_ASYNC_URL`` and ``DB_*``."""
        return cls(settings=Settings.from_env(environ), **session_options)

    def __repr__(self) -> str:
        if self._engine is not None:
            return f"<AsyncSessionFactory {display_url(self._engine.url)}>"
        assert self.settings is not None
        return f"<AsyncSessionFactory {display_url(self.settings.async_url)}>"

    @property
    def engine(self) -> AsyncEngine:
        """The engine of the running event loop (see :meth:`get_engine`)."""
        return self.get_engine()

    def get_engine(self) -> AsyncEngine:
        """The async engine behind this factory's sessions in the running event loop."""
        if self._engine is not None:
            return self._engine
        loop = _running_loop("an async engine")
        cached, key = self._cached, self._key
        assert self.settings is not None and key is not None
        if cached is not None and cached[0]() is loop:
            record = _by_key.get((key[0], key[1], id(loop)))
            if record is not None and record.engine is cached[1]:
                return record.engine
        engine = async_engine_for(self.settings, _key=key)
        self._cached = (weakref.ref(loop), engine)
        return engine

    def _new_session(self) -> AsyncSession:
        return self.session_class(bind=self.get_engine(), **self.session_options)

    def create_async_session(self) -> AsyncSession:
        """A new session the caller must close (``await session.close()``)."""
        return self._new_session()

    def async_session_scope(
        self, nested: bool = False, independent: bool = False, readonly: bool = False
    ) -> AsyncUnitOfWork:
        """An async unit of work: commit on success, roll back on error, always close.

        ``readonly=True``: its own session on a replica (or the primary) in a read-only
        transaction; see :mod:`flask_unified_session.replicas`.
        """
        if readonly:
            return AsyncReadonlyUnit(self, nested=nested, independent=independent)
        if self.replicas is not None:
            return AsyncPrimaryUnit(self, nested=nested, independent=independent)
        return AsyncUnitOfWork(self, nested=nested, independent=independent)

    session_scope = async_session_scope

    async def get_async_session_generator(self) -> AsyncIterator[AsyncSession]:
        """Yield one session for dependency injection; the consumer commits.

        Rolls back if the consumer raises and always closes (shielded from cancellation);
        never commits by itself.
        """
        session = self._new_session()
        try:
            yield session
        except BaseException:
            await _shielded(_quietly, session.sync_session.rollback, "rolling back")
            raise
        finally:
            await _shielded(session.sync_session.close)

    async def dispose(self) -> None:
        """Close the pooled connections of this loop's owned engine (it reconnects on use)."""
        if self.owns_engine:
            await self.get_engine().dispose()
        if self._replica_engines is not None:
            await self._replica_engines.dispose()
        if self.replicas is not None:
            self.replicas.dispose()


# -- the default factory and the module-level functions ---------------------------------

_default: AsyncSessionFactory | None = None
_default_lock = threading.Lock()


def get_default_async_factory() -> AsyncSessionFactory:
    """The process's default async factory: the default sync factory's settings if it has
    some, else ``DATABASE_URL`` / ``DATABASE_ASYNC_URL`` from the environment."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                sync = existing_default_factory()
                settings = getattr(sync, "settings", None) if sync is not None else None
                _default = (
                    AsyncSessionFactory(settings=settings)
                    if settings is not None
                    else AsyncSessionFactory.from_env()
                )
    return _default


def set_default_async_factory(factory: AsyncSessionFactory | None) -> None:
    """Replace the default async factory (``None``: configure again on next use)."""
    global _default
    with _default_lock:
        _default = factory


def async_session_scope(
    nested: bool = False, independent: bool = False, readonly: bool = False
) -> AsyncUnitOfWork:
    """An async unit of work on the default async factory (``readonly=True``: on a
    replica, see :meth:`AsyncSessionFactory.async_session_scope`)."""
    return get_default_async_factory().async_session_scope(
        nested=nested, independent=independent, readonly=readonly
    )


def create_async_session() -> AsyncSession:
    """A new async session on the default async factory; the caller closes it."""
    return get_default_async_factory().create_async_session()


async def get_async_session_generator() -> AsyncIterator[AsyncSession]:
    """Yield one async session for FastAPI ``Depends``; the consumer commits.

    Rolls back if the consumer raises and always closes; never commits by itself.
    """
    session = get_default_async_factory()._new_session()
    try:
        yield session
    except BaseException:
        await _shielded(_quietly, session.sync_session.rollback, "rolling back")
        raise
    finally:
        await _shielded(session.sync_session.close)


def get_async_engine() -> AsyncEngine:
    """The default async factory's engine in the running event loop."""
    return get_default_async_factory().get_engine()


from .transactions import async_run_in_transaction as run_in_transaction  # noqa: E402
from .transactions import on_commit  # noqa: E402
