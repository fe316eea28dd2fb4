"""``async_run_in_transaction`` and ``on_commit`` in async units of work."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from flask_unified_session import on_commit
from flask_unified_session.asyncio import AsyncSessionFactory, set_default_async_factory
from flask_unified_session.asyncio import run_in_transaction as async_run
from flask_unified_session.transactions import async_run_in_transaction
from tests.conftest import Observer, User

FAST = (0.001, 0.01)


@pytest.fixture
def backend() -> str:
    return "postgresql"  # psycopg's async driver; the classification is the sync one


@pytest.fixture
def afactory(db_url: str, observer: Observer) -> Iterator[AsyncSessionFactory]:
    yield AsyncSessionFactory(db_url)
    set_default_async_factory(None)


def test_the_asyncio_module_re_exports_the_twin() -> None:
    assert async_run is async_run_in_transaction


@pytest.mark.postgresql
def test_a_disconnect_before_commit_is_retried_and_only_the_last_hook_runs(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    calls = 0
    hooks: list[tuple[int, int]] = []

    async def add(session: AsyncSession, name: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            pid = (await session.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            observer.scalar("SELECT pg_terminate_backend(:pid, 5000)", pid=pid)
        session.add(User(name=f"{name}-{calls}"))
        await session.flush()
        engine = afactory.engine
        on_commit(lambda: hooks.append((calls, engine.pool.checkedout())))  # type: ignore[attr-defined]
        return name

    async def main() -> str:
        result = await async_run_in_transaction(add, "ann", factory=afactory, backoff=FAST)
        async with afactory.async_session_scope():
            with pytest.raises(RuntimeError, match="active unit"):
                await async_run_in_transaction(add, "bob", factory=afactory)
        return result

    assert asyncio.run(main()) == "ann"
    assert calls == 2
    assert hooks == [(2, 0)]
    assert observer.names() == ["ann-2"]


@pytest.mark.postgresql
def test_a_unique_violation_runs_once(afactory: AsyncSessionFactory, observer: Observer) -> None:
    calls = 0

    async def add(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        session.add(User(name="taken"))

    async def main() -> None:
        await async_run_in_transaction(add, factory=afactory)
        with pytest.raises(sa.exc.IntegrityError):
            await async_run_in_transaction(add, factory=afactory, backoff=FAST)

    asyncio.run(main())
    assert calls == 2
