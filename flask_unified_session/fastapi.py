"""FastAPI dependencies whose unit of work commits before the response starts.

FastAPI (since 0.118) runs the exit code of a ``yield`` dependency *after* the response
was sent, so a dependency that commits there turns a failed commit into a 200 whose data
was lost. These dependencies are plain functions instead: they enter the library's unit
of work and push its exit on FastAPI's per-call exit stack, the one FastAPI closes right
after the endpoint returned and *before* it sends the response (the stack behind
``Depends(..., scope="function")``, FastAPI ≥ 0.121). A commit that fails is therefore an
exception before the first byte: a 500, with nothing committed. An exception from the
endpoint (an ``HTTPException`` too) rolls the unit back.

* :func:`session_dependency` (sync): entered in Starlette's thread pool, exited in
  another worker thread (the unit of work allows it); the commit never blocks the loop.
* :func:`async_session_dependency`: an async unit of work of the default async factory.
* :data:`SessionDep`, :data:`AsyncSessionDep`: the ``Annotated`` aliases.
* :func:`lifespan`: disposes the engines at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from .asyncio import dispose_async_engines, get_default_async_factory
from .session_factory import current_factory, existing_default_factory
from .unit_of_work import UnitOfWork

__all__ = [
    "AsyncSessionDep",
    "SessionDep",
    "async_session_dependency",
    "lifespan",
    "session_dependency",
]

_FUNCTION_STACK = "fastapi_function_astack"


def _function_stack(connection: HTTPConnection) -> AsyncExitStack:
    stack = connection.scope.get(_FUNCTION_STACK)
    if not isinstance(stack, AsyncExitStack):
        raise RuntimeError(
            "flask_unified_session.fastapi needs FastAPI >= 0.121, whose per-call exit "
            "stack closes before the response starts; with an older FastAPI a commit "
            "could only happen after the response was sent"
        )
    return stack


class _ExitInThreadPool:
    """The exit of a sync unit of work, run in a worker thread (it commits: I/O)."""

    __slots__ = ("unit",)

    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    async def __call__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        # anyio runs the thread to its end even if this task is cancelled meanwhile.
        await run_in_threadpool(self.unit.__exit__, exc_type, exc, tb)
        return False  # never swallow the endpoint's exception


def session_dependency(connection: HTTPConnection) -> Session:
    """A unit of work on the current factory for one request (FastAPI ``Depends``).

    Commits when the endpoint returns and before the response starts; rolls back if the
    endpoint raises; always closes. Declared ``def``: FastAPI calls it in its thread pool.
    """
    stack = _function_stack(connection)
    unit = current_factory().session_scope()
    session = unit.__enter__()
    stack.push_async_exit(_ExitInThreadPool(unit))
    return session


async def async_session_dependency(connection: HTTPConnection) -> AsyncSession:
    """An async unit of work on the default async factory for one request.

    Commits when the endpoint returns and before the response starts; rolls back if the
    endpoint raises; always closes, shielded from cancellation.
    """
    stack = _function_stack(connection)
    return await stack.enter_async_context(get_default_async_factory().async_session_scope())


#: ``def endpoint(session: SessionDep)``: a sync unit of work per request
SessionDep = Annotated[Session, Depends(session_dependency)]
#: ``async def endpoint(session: AsyncSessionDep)``: an async unit of work per request
AsyncSessionDep = Annotated[AsyncSession, Depends(async_session_dependency)]


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """``FastAPI(lifespan=lifespan)``: at shutdown, dispose the library's async engines of
    the serving loop and close the default factory's pooled connections."""
    try:
        yield
    finally:
        await dispose_async_engines()
        factory = existing_default_factory()
        if factory is not None:
            await run_in_threadpool(factory.dispose)
