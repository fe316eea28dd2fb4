"""Async engines: one per database, options and event loop; duplicates reported."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from flask_unified_session import DuplicateEngineWarning, SessionFactory, set_default_factory
from flask_unified_session.asyncio import (
    AsyncSessionFactory,
    async_session_scope,
    get_async_engine,
    set_default_async_factory,
)
from tests.async_.conftest import run
from tests.conftest import Observer, User


def test_three_modules_asking_get_one_engine(
    db_url: str, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seeds' get_async_session(), get_async_db(), get_database_session(): one engine."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    set_default_async_factory(None)

    async def main() -> None:
        first = get_async_engine()
        assert get_async_engine() is first
        assert AsyncSessionFactory(db_url).engine is first
        assert AsyncSessionFactory.from_env().get_engine() is first
        async with async_session_scope() as session:
            assert session.bind is first
            session.add(User(name="env"))

    run(main())
    assert observer.names() == ["env"]


def test_default_async_factory_follows_the_default_factory(db_url: str, observer: Observer) -> None:
    """Same database as the sync default factory: psycopg kept, pymysql→aiomysql, →aiosqlite."""
    set_default_factory(SessionFactory(db_url))
    set_default_async_factory(None)

    async def main() -> str:
        async with async_session_scope() as session:
            session.add(User(name="same"))
        return get_async_engine().url.drivername

    driver = run(main())
    expected = {"sqlite": "aiosqlite", "postgresql": "psycopg", "mysql": "aiomysql"}
    assert driver.endswith(expected[sa.make_url(db_url).get_backend_name()])
    assert observer.names() == ["same"]


def test_a_second_engine_on_the_database_is_reported_once(db_url: str, observer: Observer) -> None:
    factory = AsyncSessionFactory(db_url)

    async def main() -> None:
        ours = factory.engine
        raw = create_async_engine(factory.settings.async_url)  # type: ignore[union-attr]
        try:
            with pytest.warns(DuplicateEngineWarning, match="two async engines") as caught:
                AsyncSessionFactory(engine=raw)
                AsyncSessionFactory(engine=raw)
            assert len(caught) == 1
            assert ours is not raw
        finally:
            await raw.dispose()

    run(main())


def test_two_successive_asyncio_runs(db_url: str, observer: Observer) -> None:
    """An engine belongs to its loop: the second run gets a new one; both runs work."""
    factory = AsyncSessionFactory(db_url)
    engines: list[AsyncEngine] = []

    async def main(name: str) -> None:
        async with factory.async_session_scope() as session:
            session.add(User(name=name))
        engines.append(factory.engine)
        assert factory.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    asyncio.run(main("first"))
    asyncio.run(main("second"))
    assert engines[0] is not engines[1]
    assert observer.names() == ["first", "second"]


def test_engine_outside_a_loop_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="running event loop"):
        _ = AsyncSessionFactory("sqlite:///never-created.db").engine
