"""The async session factory, the default one, and the module-level functions.

Engines: one per database, options and event loop, kept by
:mod:`flask_unified_session.engines` beside the sync ones. An engine is never used from
another loop; it is disposed inside its loop when the loop shuts down (``asyncio.run()``
does so), and ``asyncio.run()`` called again gets a new one.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from ..config import Settings, display_url, factory_settings
from ..engines import (
    _async_by_key,
    _running_loop,
    async_engine_for,
    async_engine_key,
    known_engines,
    register_async_engine,
)
from ..process_default import ProcessDefault
from ..replicas import ReplicaSet
from ..session_factory import existing_default_factory
from ..unit_of_work import _quietly
from ._replicas import AsyncPrimaryUnit, AsyncReadonlyUnit, _AsyncReplicaEngines, _install_replicas
from ._unit import AsyncUnitOfWork, _guarded_sync_class, _shielded

__all__ = [
    "AsyncSessionFactory",
    "async_session_scope",
    "create_async_session",
    "get_async_engine",
    "get_async_session_generator",
    "get_default_async_factory",
    "known_async_engines",
    "set_default_async_factory",
]


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
            self._key = async_engine_key(settings)  # also: a URL with no async twin fails here
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
            slot = _async_by_key.get((key[0], key[1], id(loop)))
            if slot is not None and slot.engine is cached[1]:
                return slot.engine
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


def _make_default() -> AsyncSessionFactory:
    # The default sync factory's settings if it has some, else the environment's.
    sync = existing_default_factory()
    settings = getattr(sync, "settings", None) if sync is not None else None
    if settings is not None:
        return AsyncSessionFactory(settings=settings)
    return AsyncSessionFactory.from_env()


_default: ProcessDefault[AsyncSessionFactory] = ProcessDefault(_make_default)


def get_default_async_factory() -> AsyncSessionFactory:
    """The process's default async factory: the default sync factory's settings if it has
    some, else ``DATABASE_URL`` / ``DATABASE_ASYNC_URL`` from the environment."""
    return _default.get()


def set_default_async_factory(factory: AsyncSessionFactory | None) -> None:
    """Replace the default async factory (``None``: configure again on next use)."""
    _default.set(factory)


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


def known_async_engines() -> list[tuple[AsyncEngine, str, bool]]:
    """``(engine, creation site, owned)`` of every live async engine recorded.

    Kept from the first async release: :func:`flask_unified_session.engines.known_engines`
    lists them, with the sync ones, as records of kind ``"async"``.
    """
    return [
        (record.async_engine, record.site, record.owned)
        for record in known_engines()
        if record.async_engine is not None
    ]
