"""Readonly async units on read replicas (``DB_REPLICA_URLS``).

``session_scope(readonly=True)`` follows the rules of :mod:`flask_unified_session.replicas`,
with an async engine per replica and loop. The replica is chosen by the factory's
:class:`~flask_unified_session.replicas.ReplicaSet` in a worker thread (its checks are
blocking); an outermost unit that committed awaits the primary's
``pg_current_wal_lsn()`` and records it for its owner (the app context, else the task), so
that the owner's next readonly unit reads its writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.ext.asyncio import async_session as _async_session_of
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from ..config import ConfigurationError, Settings
from ..engines import _async_by_key, async_engine_for, async_engine_key, engine_for
from ..replicas import PRIMARY, ReplicaSet, _begin_read_only, routing_to_primary
from ..unit_of_work import _live, _quietly, current_owner, open_units
from ._unit import AsyncUnitOfWork, _shielded

if TYPE_CHECKING:
    from ._factory import AsyncSessionFactory

__all__ = ["AsyncPrimaryUnit", "AsyncReadonlyUnit"]

log = logging.getLogger("flask_unified_session")

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
            self._settings[replica.label] = (replica_settings, async_engine_key(replica_settings))

    def engine(self, label: str) -> AsyncEngine:
        replica_settings, key = self._settings[label]
        return async_engine_for(replica_settings, _key=key)

    async def dispose(self) -> None:
        loop = asyncio.get_running_loop()
        for _settings, key in self._settings.values():
            slot = _async_by_key.get((key[0], key[1], id(loop)))
            if slot is not None:
                await slot.engine.dispose()


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
            units = open_units(unit.owner_of())
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
