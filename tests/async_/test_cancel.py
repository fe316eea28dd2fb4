"""Cancellation inside a unit of work: cleanup still runs, nothing is left behind."""

from __future__ import annotations

import asyncio
import os

import pytest
import sqlalchemy as sa

from flask_unified_session.asyncio import AsyncSessionFactory
from tests.async_.conftest import run
from tests.conftest import Observer, server_url

APP = f"fus_cancel_{os.getpid()}"


@pytest.mark.postgresql
def test_cancel_during_pg_sleep_leaves_nothing_behind() -> None:
    url = sa.make_url(server_url("postgresql")).update_query_dict({"application_name": APP})
    factory = AsyncSessionFactory(url.render_as_string(hide_password=False))
    observer = Observer(server_url("postgresql"))
    started = asyncio.Event()

    async def sleeper() -> None:
        async with factory.async_session_scope() as session:
            await session.execute(sa.text("SELECT 1"))
            started.set()
            await session.execute(sa.text("SELECT pg_sleep(5)"))

    def idle_in_transaction() -> object:
        return observer.scalar(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = :app AND state LIKE 'idle in transaction%'",
            app=APP,
        )

    async def main() -> None:
        task = asyncio.create_task(sleeper())
        await started.wait()
        await asyncio.sleep(0.2)
        assert idle_in_transaction() == 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        # cancelled again and again while it cleans up (what anyio's cancel scopes do)
        while not task.done():
            task.cancel()
            await asyncio.sleep(0.001)
        with pytest.raises(asyncio.CancelledError):
            await task
        while loop.time() < deadline and factory.engine.pool.checkedout():  # type: ignore[attr-defined]
            await asyncio.sleep(0.02)
        assert factory.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await asyncio.to_thread(idle_in_transaction) == 0
        assert loop.time() < deadline

    try:
        run(main())
    finally:
        observer.dispose()


def test_cancel_on_every_backend_rolls_back(db_url: str, observer: Observer) -> None:
    """A task cancelled after a flush: rolled back, connection returned."""
    from tests.conftest import User

    factory = AsyncSessionFactory(db_url)

    async def main() -> int:
        flushed = asyncio.Event()

        async def writer() -> None:
            async with factory.async_session_scope() as session:
                session.add(User(name="cancelled"))
                await session.flush()
                flushed.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(writer())
        await flushed.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while not task.done() and loop.time() < deadline:  # cancelled again and again
            task.cancel()
            await asyncio.sleep(0)
        assert task.done(), "the cleanup of a cancelled unit did not finish"
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(factory.engine.pool.checkedout())  # type: ignore[attr-defined]

    assert run(main()) == 0
    assert observer.count() == 0
