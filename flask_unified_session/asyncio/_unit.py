"""The async unit of work: the library's one protocol, awaited, on a task's session.

:class:`AsyncUnitOfWork` is the :class:`~flask_unified_session.unit_of_work.UnitOfWork`
run on the :class:`~sqlalchemy.ext.asyncio.AsyncSession`'s ``sync_session`` inside
SQLAlchemy's ``greenlet_spawn``, as ``AsyncSession`` runs its own methods. Its owner is
the asyncio task, so a child task never joins its parent's session. Cleanup runs in a
task of its own that no cancellation reaches (``_shielded``), and a lazy load by plain
attribute access raises :class:`AsyncLazyLoadError` instead of ``MissingGreenlet``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import async_session as _async_session_of
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.concurrency import in_greenlet

from ..unit_of_work import UnitOfWork, task_owner

if TYPE_CHECKING:
    from ._factory import AsyncSessionFactory

__all__ = ["AsyncLazyLoadError", "AsyncUnitOfWork"]

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
