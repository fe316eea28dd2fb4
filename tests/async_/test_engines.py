"""Async engines: one per database, options and event loop; duplicates reported."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import warnings

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
from flask_unified_session.engines import EngineRecord, duplicate_groups, known_engines
from tests.async_.conftest import run
from tests.conftest import (
    Observer,
    User,
    collects_without_the_registry_lock,
    registry_lock_held_elsewhere,
)


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


def _async_records() -> list[EngineRecord]:
    return [record for record in known_engines() if record.kind == "async"]


def _line() -> int:
    """The caller's line number: where the next statement creates an engine."""
    return sys._getframe(1).f_lineno + 1


def test_the_async_engine_is_one_record_of_the_one_registry(
    db_url: str, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three modules asking for "the" async engine: one engine, listed by known_engines()
    as async, of the running loop; once the loop has shut down it is no longer listed."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    set_default_async_factory(None)

    async def main() -> None:
        first = get_async_engine()  # module one: the default factory
        assert AsyncSessionFactory(db_url).engine is first  # module two
        assert AsyncSessionFactory.from_env().engine is first  # module three
        (record,) = _async_records()
        assert record.async_engine is first
        assert record.engine is first.sync_engine
        assert record.loop is asyncio.get_running_loop()
        assert record.owned
        assert record.site.startswith(f"{__file__}:")
        assert duplicate_groups() == []

    run(main())
    assert _async_records() == []


def test_two_async_engines_of_one_loop_are_one_duplicate(db_url: str, observer: Observer) -> None:
    """Two async engines on one database in one loop: one DuplicateEngineWarning naming
    both creation lines, however often they are asked for, and one duplicate group."""
    factory = AsyncSessionFactory(db_url)
    assert factory.settings is not None

    async def main() -> None:
        raw = create_async_engine(factory.settings.async_url)  # type: ignore[union-attr]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ours_line = _line()
                ours = factory.engine
                raw_line = _line()
                AsyncSessionFactory(engine=raw)
                assert factory.engine is ours
                AsyncSessionFactory(engine=raw)
            duplicates = [w for w in caught if issubclass(w.category, DuplicateEngineWarning)]
            assert len(duplicates) == 1, [str(w.message) for w in caught]
            message = str(duplicates[0].message)
            assert "two async engines" in message
            assert f"{__file__}:{ours_line}" in message
            assert f"{__file__}:{raw_line}" in message
            (group,) = duplicate_groups()
            assert [record.async_engine for record in group] == [ours, raw]
            assert {record.kind for record in group} == {"async"}
        finally:
            await raw.dispose()

    run(main())


def test_async_engines_of_two_loops_are_not_duplicates(db_url: str, observer: Observer) -> None:
    """Each event loop needs its own engine: two live loops, two engines, no report."""
    factory = AsyncSessionFactory(db_url)

    async def ask() -> AsyncEngine:
        return factory.engine

    other_loop = asyncio.new_event_loop()
    try:
        theirs = other_loop.run_until_complete(ask())

        async def main() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                ours = factory.engine
            assert ours is not theirs
            loops = {id(record.loop): record.async_engine for record in _async_records()}
            assert loops == {id(other_loop): theirs, id(asyncio.get_running_loop()): ours}
            assert duplicate_groups() == []

        run(main())
    finally:
        other_loop.run_until_complete(other_loop.shutdown_asyncgens())
        other_loop.close()
    assert _async_records() == []


def test_a_sync_and_an_async_engine_on_one_database_are_not_duplicates(
    db_url: str, observer: Observer
) -> None:
    """One sync and one async engine per database is the design (sync with sync, async with
    async): both listed with their kinds, never reported. A sync factory never adopts an
    async engine, although psycopg's async URL is its sync URL."""
    async_url = AsyncSessionFactory(db_url).settings.async_url  # type: ignore[union-attr]

    async def main() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            adopted = create_async_engine(async_url)
            async_factory = AsyncSessionFactory(engine=adopted)
            sync_factory = SessionFactory(db_url)
            assert duplicate_groups() == []
        try:
            assert not sync_factory.engine.dialect.is_async
            kinds = {(record.kind, record.owned) for record in known_engines()}
            assert kinds == {("async", False), ("sync", True)}
            async with async_factory.async_session_scope() as session:
                session.add(User(name="async"))
            with sync_factory.session_scope() as session:
                session.add(User(name="sync"))
        finally:
            await adopted.dispose()

    run(main())
    assert observer.names() == ["async", "sync"]


def test_an_adopted_async_engine_is_held_weakly_and_forgotten_without_the_lock(
    db_url: str, observer: Observer
) -> None:
    """Listed while its user holds it; once dropped, the collector forgets it without
    taking the registry's lock (a lock held at fork by another thread would hang a
    forked child's collection for ever)."""
    adopted = create_async_engine(AsyncSessionFactory(db_url).settings.async_url)  # type: ignore[union-attr]
    AsyncSessionFactory(engine=adopted)
    assert [record.async_engine for record in _async_records()] == [adopted]
    del adopted
    assert collects_without_the_registry_lock(), "gc.collect() waited on the registry's lock"
    assert _async_records() == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_forked_child_drops_the_parents_async_connections_and_gets_its_own_engine(
    db_url: str, observer: Observer
) -> None:
    """At fork another thread holds the registry's lock and a live loop's async engine
    has a pooled connection: the child's copy of that engine holds none of the parent's
    connections, and the child's own asyncio.run() gets an engine (the lock is new)."""
    factory = AsyncSessionFactory(db_url)

    async def use() -> AsyncEngine:
        async with factory.async_session_scope() as session:
            session.add(User(name="parent"))
        return factory.engine

    loop = asyncio.new_event_loop()
    try:
        parents = loop.run_until_complete(use())
        assert parents.pool.checkedin() == 1  # type: ignore[attr-defined]
        with registry_lock_held_elsewhere():
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                (record,) = _async_records()
                assert record.async_engine is parents
                assert record.engine.pool.checkedin() == 0  # type: ignore[attr-defined]

                async def child() -> None:
                    async with factory.async_session_scope() as session:
                        session.add(User(name="child"))
                    assert factory.engine is not parents

                asyncio.run(child())
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while not (done := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert observer.names() == ["child", "parent"]
