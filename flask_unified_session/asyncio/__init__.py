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

Engines: one per database, options and event loop, in the process's one registry
(:mod:`flask_unified_session.engines`, which lists and reports them beside the sync
ones). An engine is never used from another loop; it is disposed inside its loop when the
loop shuts down (``asyncio.run()`` does so), and ``asyncio.run()`` called again gets a new
one.

The modules: ``_unit`` (the unit of work, the lazy-load guard, shielded cleanup),
``_replicas`` (readonly units on read replicas), ``_factory`` (the factory, the default
factory and the module-level functions). Import from this package: the split is private.
"""

from __future__ import annotations

try:
    import greenlet  # noqa: F401  (SQLAlchemy's async layer needs it)
except ImportError as _missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "flask_unified_session.asyncio needs greenlet: pip install 'sqlalchemy[asyncio]' "
        "(or 'flask-unified-session[asyncio]')"
    ) from _missing

from ..engines import async_engine_for, dispose_async_engines
from ..engines import register_async_engine as register_async_engine
from ..transactions import async_run_in_transaction as run_in_transaction
from ..transactions import on_commit
from ..unit_of_work import DoomedTransactionError
from ._factory import (
    AsyncSessionFactory,
    async_session_scope,
    create_async_session,
    get_async_engine,
    get_async_session_generator,
    get_default_async_factory,
    known_async_engines,
    set_default_async_factory,
)
from ._replicas import AsyncPrimaryUnit as AsyncPrimaryUnit
from ._replicas import AsyncReadonlyUnit as AsyncReadonlyUnit
from ._unit import AsyncLazyLoadError, AsyncUnitOfWork

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
