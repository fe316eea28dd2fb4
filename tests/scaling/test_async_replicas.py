"""Async ``readonly=True`` on the real streaming replica: routing, read-only, read your
writes, a replica that is gone.

Each test runs its coroutine in a loop of its own (``asyncio.run``), on a factory of its
own (primary ``TEST_POSTGRESQL_URL``, replica ``TEST_REPLICA_URL``).
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from flask_unified_session import ConfigurationError, Settings, signals
from flask_unified_session.asyncio import AsyncSessionFactory
from flask_unified_session.replicas import ReplicaUnavailableWarning, route_to_primary

from .conftest import Primary, Replica

T = TypeVar("T")
WHERE = sa.text("SELECT inet_server_port(), pg_is_in_recovery()")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def port(session: AsyncSession) -> int:
    return int((await session.execute(sa.text("SELECT inet_server_port()"))).scalar_one())


async def notes(session: AsyncSession, table: str) -> list[str]:
    result = await session.execute(sa.text(f"SELECT note FROM {table} ORDER BY id"))
    return list(result.scalars())


async def insert(factory: AsyncSessionFactory, table: str, note: str) -> None:
    async with factory.session_scope() as session:
        await session.execute(sa.text(f"INSERT INTO {table} (note) VALUES (:n)"), {"n": note})


@pytest.fixture
def afactory(primary_url: str, replica_url: str) -> Iterator[AsyncSessionFactory]:
    settings = Settings(
        url=sa.make_url(primary_url),
        replica_urls=(sa.make_url(replica_url),),
        replica_retry_after=0.3,
    )
    made = AsyncSessionFactory(settings=settings)
    assert made.replicas is not None
    yield made
    made.replicas.dispose()


def test_an_async_readonly_unit_runs_on_the_replica_and_a_default_one_on_the_primary(
    afactory: AsyncSessionFactory,
) -> None:
    async def main() -> list[Any]:
        seen = []
        async with afactory.session_scope(readonly=True) as session:
            seen.append(tuple((await session.execute(WHERE)).one()))
            seen.append((session.info["server"], session.info["readonly"]))
        async with afactory.session_scope() as session:
            seen.append(tuple((await session.execute(WHERE)).one()))
            seen.append(session.info["server"])
        return seen

    assert run(main()) == [
        (5433, True),
        ("replica 127.0.0.1:5433", True),
        (5432, False),
        "primary",
    ]


def test_a_replica_checked_recently_is_chosen_without_a_worker_thread(
    afactory: AsyncSessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[Any] = []
    to_thread = asyncio.to_thread

    async def counted(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        threads.append(func)
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)

    async def main() -> list[str]:
        servers = []
        for _ in range(5):
            async with afactory.session_scope(readonly=True) as session:
                servers.append(session.info["server"])
        return servers

    assert run(main()) == ["replica 127.0.0.1:5433"] * 5
    assert len(threads) == 1  # the first unit's check; then within the check interval


def test_async_driver_urls_are_checked_with_their_sync_twin(
    primary_url: str, replica_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        url=sa.make_url(primary_url).set(drivername="postgresql+psycopg_async"),
        replica_urls=(sa.make_url(replica_url).set(drivername="postgresql+psycopg_async"),),
    )
    made = AsyncSessionFactory(settings=settings)
    assert made.replicas is not None
    assert [r.url.drivername for r in made.replicas.replicas] == ["postgresql+psycopg"]

    async def main() -> tuple[str, int]:
        async with made.session_scope(readonly=True) as session:
            return session.info["server"], await port(session)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert run(main()) == ("replica 127.0.0.1:5433", 5433)
    finally:
        made.replicas.dispose()
    # An async driver with no sync twin known is refused at once, naming where it is.
    monkeypatch.setattr("flask_unified_session.asyncio._replicas._SYNC_TWIN", {})
    with pytest.raises(ConfigurationError, match="'postgresql\\+psycopg_async': replicas are"):
        AsyncSessionFactory(settings=settings)


def test_a_context_provider_that_raises_gives_the_replica_connection_back(
    afactory: AsyncSessionFactory,
) -> None:
    def broken() -> dict[str, Any]:
        raise LookupError("no tenant")

    afactory.context_provider = broken

    async def main() -> int:
        with pytest.raises(LookupError):
            async with afactory.session_scope(readonly=True):
                pass
        assert afactory._replica_engines is not None
        pool: Any = afactory._replica_engines.engine("replica 127.0.0.1:5433").pool
        return int(pool.checkedout())

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(main()) == 0


def test_a_factory_with_replicas_that_is_gone_keeps_no_engine_alive(
    primary_url: str, replica_url: str
) -> None:
    settings = Settings(
        url=sa.make_url(primary_url),
        replica_urls=(sa.make_url(replica_url),),
        pool_size=3,  # engines of this test only
    )
    made: AsyncSessionFactory | None = AsyncSessionFactory(settings=settings)

    async def main(factory: AsyncSessionFactory) -> None:
        await insert_nothing(factory)
        async with factory.session_scope(readonly=True) as session:
            await session.execute(sa.text("SELECT 1"))

    assert made is not None and made.replicas is not None
    run(main(made))
    engines = [weakref.ref(made.replicas.primary)]
    engines += [weakref.ref(replica.engine) for replica in made.replicas.replicas]
    made = None
    for _ in range(3):  # the session classes' cycles go in more than one collection
        gc.collect()
    assert [ref() for ref in engines] == [None, None]


async def insert_nothing(factory: AsyncSessionFactory) -> None:
    async with factory.session_scope() as session:  # a commit: the position is read
        await session.execute(sa.text("SELECT 1"))


def test_an_insert_in_an_async_readonly_unit_raises(
    afactory: AsyncSessionFactory, replicated_table: str
) -> None:
    async def main() -> None:
        async with afactory.session_scope(readonly=True) as session:
            await session.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('x')"))

    with pytest.raises(sa.exc.InternalError) as raised:
        run(main())
    assert raised.value.orig.sqlstate == "25006"  # type: ignore[union-attr]


def test_without_replicas_an_async_readonly_unit_runs_on_the_primary_read_only(
    primary_url: str, primary: Primary, replicated_table: str
) -> None:
    plain = AsyncSessionFactory(primary_url)
    assert plain.replicas is None

    async def main() -> tuple[int, str]:
        async with plain.session_scope(readonly=True) as session:
            where = (await port(session), session.info["server"])
            with pytest.raises(sa.exc.InternalError) as raised:
                await session.execute(
                    sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('x')")
                )
            assert raised.value.orig.sqlstate == "25006"  # type: ignore[union-attr]
            await session.rollback()
        await insert(plain, replicated_table, "written")  # the pooled connection writes again
        return where

    assert run(main()) == (5432, "primary")
    assert primary.scalar(f"SELECT count(*) FROM {replicated_table}") == 1


def test_an_async_readonly_unit_inside_a_primary_unit_joins_it(
    afactory: AsyncSessionFactory, replicated_table: str
) -> None:
    async def main() -> None:
        async with afactory.session_scope() as outer:
            await outer.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('mine')"))
            async with afactory.session_scope(readonly=True) as inner:
                assert inner is outer
                assert await notes(inner, replicated_table) == ["mine"]
        async with afactory.session_scope(readonly=True) as session:
            async with afactory.session_scope(readonly=True) as nested:
                assert nested is session
            async with afactory.session_scope() as writer:
                assert writer is not session
                assert await port(writer) == 5432

    run(main())


def test_the_async_signals_context_names_the_server(afactory: AsyncSessionFactory) -> None:
    seen: list[str] = []

    def opened(_sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs["context"]["server"])

    async def main() -> None:
        async with afactory.session_scope(readonly=True):
            pass
        async with afactory.session_scope() as session:
            await session.execute(sa.text("SELECT 1"))

    signals.session_opened.connect(opened)
    try:
        run(main())
    finally:
        signals.session_opened.disconnect(opened)
    assert seen == ["replica 127.0.0.1:5433", "primary"]


def test_the_same_task_reads_its_write_after_waiting_and_another_task_does_not_wait(
    afactory: AsyncSessionFactory, replica: Replica, replicated_table: str
) -> None:
    async def other() -> tuple[float, int, list[str]]:
        started = time.monotonic()
        async with afactory.session_scope(readonly=True) as session:
            return (
                time.monotonic() - started,
                await port(session),
                await notes(session, replicated_table),
            )

    async def main() -> dict[str, Any]:
        await insert(afactory, replicated_table, "fresh")
        started = time.monotonic()
        async with afactory.session_scope(readonly=True) as session:
            waited = time.monotonic() - started
            mine = (await port(session), await notes(session, replicated_table))
        await insert(afactory, replicated_table, "second")
        # Control: a task of its own is another owner; it neither waits nor sees "second".
        theirs = await asyncio.create_task(other())
        return {"waited": waited, "mine": mine, "theirs": theirs}

    with replica.apply_delay("1500ms"):
        found = run(main())
    assert found["mine"] == (5433, ["fresh"])
    assert 1.0 < found["waited"] < 2.0, found
    other_waited, other_port, other_notes = found["theirs"]
    assert (other_port, other_notes) == (5433, ["fresh"])
    assert other_waited < 0.5, found


def test_a_short_wait_bound_reads_the_async_write_on_the_primary(
    afactory: AsyncSessionFactory, replica: Replica, replicated_table: str
) -> None:
    assert afactory.replicas is not None
    afactory.replicas.wait = 0.3

    async def main() -> tuple[float, str, list[str]]:
        await insert(afactory, replicated_table, "fresh")
        started = time.monotonic()
        async with afactory.session_scope(readonly=True) as session:
            return (
                time.monotonic() - started,
                session.info["server"],
                await notes(session, replicated_table),
            )

    with replica.apply_delay("1500ms"):
        waited, server, seen = run(main())
    assert (server, seen) == ("primary", ["fresh"])
    assert 0.25 < waited < 1.0, waited


def test_a_commit_outside_a_unit_sends_the_tasks_readonly_units_to_the_primary(
    afactory: AsyncSessionFactory, replica: Replica, replicated_table: str
) -> None:
    async def main() -> tuple[str, list[str]]:
        session = afactory.create_async_session()
        try:
            await session.execute(
                sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('manual')")
            )
            await session.commit()
        finally:
            await session.close()
        async with afactory.session_scope(readonly=True) as readonly:
            return readonly.info["server"], await notes(readonly, replicated_table)

    with replica.apply_delay("1500ms"):
        assert run(main()) == ("primary", ["manual"])


def test_a_stopped_replica_falls_back_with_one_warning_then_returns(
    afactory: AsyncSessionFactory, replica: Replica
) -> None:
    async def read() -> tuple[str, int]:
        async with afactory.session_scope(readonly=True) as session:
            return session.info["server"], await port(session)

    async def reads(count: int) -> Counter[tuple[str, int]]:
        found: Counter[tuple[str, int]] = Counter()
        for _ in range(count):
            found[await read()] += 1
            await asyncio.sleep(0.05)  # past the retry interval a few times
        return found

    async def main() -> dict[str, Any]:
        first = await read()  # a pooled replica connection in this loop's async engine
        with replica.stopped():
            with pytest.warns(ReplicaUnavailableWarning) as caught:
                during = await reads(20)
        await asyncio.sleep(0.35)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            after = await read()
        return {"first": first, "during": during, "caught": caught, "after": after}

    found = run(main())
    assert found["first"] == ("replica 127.0.0.1:5433", 5433)
    assert found["during"] == {("primary", 5432): 20}
    messages = [str(w.message) for w in found["caught"]]
    assert len(messages) == 1, messages
    assert "replica 127.0.0.1:5433 is down" in messages[0]
    assert found["after"] == ("replica 127.0.0.1:5433", 5433)


def test_inside_route_to_primary_async_readonly_units_read_the_primary(
    afactory: AsyncSessionFactory, replica: Replica, replicated_table: str
) -> None:
    async def main() -> list[Any]:
        with route_to_primary():
            await insert(afactory, replicated_table, "test's")
            async with afactory.session_scope(readonly=True) as session:
                inside = (await port(session), await notes(session, replicated_table))
        async with afactory.session_scope(readonly=True) as session:
            outside = await port(session)
        return [inside, outside]

    with replica.apply_delay("1500ms"):
        assert run(main()) == [(5432, ["test's"]), 5433]
