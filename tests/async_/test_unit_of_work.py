"""The async unit of work: the sync protocol and nesting rule, per task, on every backend."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from flask_unified_session import DoomedTransactionError
from flask_unified_session.asyncio import AsyncLazyLoadError, AsyncSessionFactory, on_commit
from tests.async_.conftest import checked_out, run
from tests.conftest import Observer, User


class Boom(Exception):
    pass


def test_commit_on_exit_and_connection_returned(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    async def main() -> int:
        async with afactory.async_session_scope() as session:
            session.add(User(name="ada"))
        return checked_out(afactory)

    assert run(main()) == 0
    assert observer.names() == ["ada"]


def test_rollback_reraises_the_original(afactory: AsyncSessionFactory, observer: Observer) -> None:
    error = Boom("original")

    async def main() -> int:
        with pytest.raises(Boom) as info:
            async with afactory.async_session_scope() as session:
                session.add(User(name="lost"))
                await session.flush()
                raise error
        assert info.value is error
        return checked_out(afactory)

    assert run(main()) == 0
    assert observer.count() == 0


def test_commit_failure_is_raised_and_next_unit_works(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    async def main() -> int:
        async with afactory.async_session_scope() as session:
            session.add(User(name="dup"))
        with pytest.raises(IntegrityError):
            async with afactory.async_session_scope() as session:
                session.add(User(name="dup"))
        async with afactory.async_session_scope() as session:
            session.add(User(name="next"))
        return checked_out(afactory)

    assert run(main()) == 0
    assert observer.names() == ["dup", "next"]


def test_objects_readable_after_the_block(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    async def main() -> User:
        async with afactory.async_session_scope() as session:
            user = User(name="kept")
            session.add(user)
        return user

    user = run(main())
    assert user.name == "kept" and user.id is not None


def test_lazy_load_in_the_block_is_a_clear_error(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    """Attribute access that would load (here an expired column) names the async ways."""

    async def main() -> None:
        async with afactory.async_session_scope() as session:
            user = User(name="lazy")
            session.add(user)
            await session.flush()
            session.expire(user, ["note"])
            with pytest.raises(AsyncLazyLoadError, match=r"session\.refresh.*selectinload"):
                _ = user.note
            await session.refresh(user, ["note"])
            assert user.note == ""

    run(main())


def test_joined_scope_shares_session_and_commits_once(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    async def main() -> None:
        async with afactory.async_session_scope() as outer:
            outer.add(User(name="outer"))
            async with afactory.async_session_scope() as inner:
                assert inner is outer
                inner.add(User(name="inner"))
            await outer.flush()
            assert observer.count() == 0 or observer.engine.dialect.name == "sqlite"

    run(main())
    assert observer.names() == ["inner", "outer"]


def test_escaping_exception_dooms_the_unit(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    async def main() -> int:
        with pytest.raises(DoomedTransactionError) as info:
            async with afactory.async_session_scope() as outer:
                outer.add(User(name="outer"))
                try:
                    async with afactory.async_session_scope() as inner:
                        inner.add(User(name="inner"))
                        raise Boom
                except Boom:
                    pass
                with pytest.raises(DoomedTransactionError):
                    await outer.commit()  # nothing can commit a doomed unit
                with pytest.raises(DoomedTransactionError):
                    async with afactory.async_session_scope():
                        pass
        assert isinstance(info.value.__cause__, Boom)
        return checked_out(afactory)

    assert run(main()) == 0
    assert observer.count() == 0


def test_nested_is_a_savepoint(afactory: AsyncSessionFactory, observer: Observer) -> None:
    async def main() -> None:
        async with afactory.async_session_scope() as outer:
            outer.add(User(name="kept"))
            with pytest.raises(Boom):
                async with afactory.async_session_scope(nested=True) as inner:
                    assert inner is outer
                    inner.add(User(name="undone"))
                    await inner.flush()
                    # a joined scope's failure inside the savepoint dooms only the savepoint
                    async with afactory.async_session_scope():
                        raise Boom
            async with afactory.async_session_scope(nested=True) as inner:
                inner.add(User(name="released"))
            outer.add(User(name="after"))

    run(main())
    assert observer.names() == ["after", "kept", "released"]


def test_independent_survives_outer_rollback(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    async def main() -> int:
        with pytest.raises(Boom):
            async with afactory.async_session_scope() as outer:
                outer.add(User(name="rolled-back"))
                async with afactory.async_session_scope(independent=True) as audit:
                    assert audit is not outer
                    audit.add(User(name="audit"))
                    async with afactory.async_session_scope() as inner:
                        assert inner is audit
                await outer.flush()
                raise Boom
        return checked_out(afactory)

    assert run(main()) == 0
    assert observer.names() == ["audit"]


def test_active_scope_cannot_be_entered_again(afactory: AsyncSessionFactory) -> None:
    async def main() -> None:
        scope = afactory.async_session_scope()
        async with scope:
            with pytest.raises(RuntimeError, match="already active"):
                async with scope:
                    pass
        async with scope as session:  # once exited, it may be entered again
            await session.execute(sa.text("SELECT 1"))

    run(main())


def test_exit_in_another_task(afactory: AsyncSessionFactory, observer: Observer) -> None:
    """Entered in one task, exited in another: commits, closes, and is never joined again."""

    async def main() -> int:
        scope = afactory.async_session_scope()
        session = await scope.__aenter__()
        session.add(User(name="moved"))
        await asyncio.create_task(scope.__aexit__(None, None, None))
        async with afactory.async_session_scope() as later:
            assert later is not session
        return checked_out(afactory)

    assert run(main()) == 0
    assert observer.names() == ["moved"]


def test_gather_children_get_their_own_sessions(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    """Children inherit the context but not the unit: no IllegalStateChangeError."""

    async def main() -> int:
        async with afactory.async_session_scope() as outer:
            await outer.execute(sa.text("SELECT 1"))

            async def child() -> object:
                async with afactory.async_session_scope() as session:
                    assert session is not outer
                    await session.execute(sa.text("SELECT 1"))
                    await asyncio.sleep(0)
                    await session.execute(sa.text("SELECT 1"))
                    return session

            first, second = await asyncio.gather(child(), child())
            assert first is not second
        return checked_out(afactory)

    assert run(main()) == 0


def test_on_commit_runs_after_commit_and_never_after_rollback(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    ran: list[str] = []

    async def main() -> None:
        async with afactory.async_session_scope() as session:
            session.add(User(name="hooked"))
            on_commit(lambda: ran.append(f"committed {observer.count()}"))
        with pytest.raises(Boom):
            async with afactory.async_session_scope():
                on_commit(lambda: ran.append("rolled back"))
                raise Boom

    run(main())
    assert ran == ["committed 1"]


def test_generator_does_not_commit_and_rolls_back(
    afactory: AsyncSessionFactory, observer: Observer
) -> None:
    async def main() -> int:
        generator = afactory.get_async_session_generator()
        session = await generator.__anext__()
        session.add(User(name="uncommitted"))
        await session.flush()
        await generator.aclose()
        generator = afactory.get_async_session_generator()
        session = await generator.__anext__()
        session.add(User(name="committed"))
        await session.commit()
        with pytest.raises(Boom):
            await generator.athrow(Boom())
        return checked_out(afactory)

    assert run(main()) == 0
    assert observer.names() == ["committed"]
