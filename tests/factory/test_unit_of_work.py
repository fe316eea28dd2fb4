"""The unit-of-work protocol, checked from an independent connection on every backend."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, PendingRollbackError
from sqlalchemy.orm import Session

from flask_unified_session import DoomedTransactionError, SessionFactory
from tests.conftest import Observer, User


class Boom(Exception):
    pass


@pytest.fixture
def factory(db_url: str, observer: Observer) -> SessionFactory:
    return SessionFactory(db_url)


def checked_out(factory: SessionFactory) -> int:
    return int(factory.engine.pool.checkedout())  # type: ignore[attr-defined]


def test_commit_on_normal_exit(factory: SessionFactory, observer: Observer) -> None:
    """A block that ends normally commits, and its connection goes back to the pool."""
    with factory.session_scope() as session:
        session.add(User(name="ada"))
    assert observer.names() == ["ada"]
    assert checked_out(factory) == 0


def test_commit_includes_bulk_and_raw_sql(factory: SessionFactory, observer: Observer) -> None:
    """Bulk update()/delete() and raw SQL commit too: never 'commit only if dirty'."""
    with factory.session_scope() as session:
        session.add_all([User(name="a"), User(name="b"), User(name="c")])
    with factory.session_scope() as session:
        session.execute(sa.update(User).where(User.name == "a").values(name="a2"))
    with factory.session_scope() as session:
        session.execute(sa.delete(User).where(User.name == "b"))
    with factory.session_scope() as session:
        session.execute(sa.text(f"UPDATE {User.__tablename__} SET name = 'c2' WHERE name = 'c'"))
    assert observer.names() == ["a2", "c2"]


def test_rollback_and_original_exception(factory: SessionFactory, observer: Observer) -> None:
    """An exception rolls back flushed work and reaches the caller unchanged."""
    error = Boom("original")
    with pytest.raises(Boom) as info, factory.session_scope() as session:
        session.add(User(name="lost"))
        session.flush()
        raise error
    assert info.value is error
    assert observer.count() == 0
    assert checked_out(factory) == 0


def test_base_exception_rolls_back(factory: SessionFactory, observer: Observer) -> None:
    """KeyboardInterrupt (a BaseException) rolls back and closes too."""
    with pytest.raises(KeyboardInterrupt), factory.session_scope() as session:
        session.add(User(name="lost"))
        session.flush()
        raise KeyboardInterrupt
    assert observer.count() == 0
    assert checked_out(factory) == 0


def test_commit_failure_closes_and_next_unit_works(
    factory: SessionFactory, observer: Observer
) -> None:
    """A unique violation at commit: raised, connection returned, next unit on the thread works."""
    with factory.session_scope() as session:
        session.add(User(name="dup"))
    with pytest.raises(IntegrityError), factory.session_scope() as session:
        session.add(User(name="dup"))  # flushed only by the commit
    assert checked_out(factory) == 0
    with factory.session_scope() as session:  # no PendingRollbackError
        session.add(User(name="next"))
    assert observer.names() == ["dup", "next"]


def test_failing_rollback_does_not_hide_original(
    factory: SessionFactory, observer: Observer, caplog: pytest.LogCaptureFixture
) -> None:
    """When rollback itself fails, the caller still gets the original exception."""

    def broken_rollback(session: Session, transaction: Any) -> None:
        raise RuntimeError("rollback is broken")

    with pytest.raises(Boom), factory.session_scope() as session:
        session.add(User(name="x"))
        session.flush()
        event.listen(session, "after_soft_rollback", broken_rollback)
        raise Boom
    assert "rolling back" in caplog.text
    assert observer.count() == 0
    assert checked_out(factory) == 0


def test_failing_close_does_not_hide_original(
    factory: SessionFactory, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When close() fails after an error, the original error still reaches the caller."""
    with pytest.raises(Boom), factory.session_scope() as session:
        session.add(User(name="x"))
        session.flush()
        real_close = session.close

        def broken_close() -> None:
            real_close()
            raise RuntimeError("close is broken")

        monkeypatch.setattr(session, "close", broken_close)
        raise Boom
    assert observer.count() == 0


def test_objects_readable_after_the_block(factory: SessionFactory, observer: Observer) -> None:
    """expire_on_commit is off: attributes loaded in the block are readable after it."""
    with factory.session_scope() as session:
        user = User(name="kept")
        session.add(user)
    assert user.name == "kept" and user.id is not None


def test_joined_scope_shares_session_and_commits_once(
    factory: SessionFactory, observer: Observer
) -> None:
    """An inner scope joins the outer one; nothing is committed before the outermost ends."""
    with factory.session_scope() as outer:
        outer.add(User(name="outer"))
        with factory.session_scope() as inner:
            assert inner is outer
            inner.add(User(name="inner"))
        assert observer.count() == 0
    assert observer.names() == ["inner", "outer"]


def test_escaping_exception_dooms_the_unit(factory: SessionFactory, observer: Observer) -> None:
    """An exception escaping a joined scope, caught by the caller, still rolls back the unit."""
    with pytest.raises(DoomedTransactionError, match="escaped an inner scope") as info:
        with factory.session_scope() as outer:
            outer.add(User(name="outer"))
            try:
                with factory.session_scope() as inner:
                    inner.add(User(name="inner"))
                    raise Boom("inner failure")
            except Boom:
                pass
    assert isinstance(info.value.__cause__, Boom)
    assert observer.count() == 0
    assert checked_out(factory) == 0


def test_doomed_unit_refuses_more_inner_scopes(factory: SessionFactory) -> None:
    """After an inner failure, entering another inner scope raises at once."""
    with pytest.raises(DoomedTransactionError), factory.session_scope():
        with pytest.raises(Boom), factory.session_scope():
            raise Boom
        with factory.session_scope():
            pytest.fail("a doomed unit must not be joined")


def test_nested_is_a_savepoint(factory: SessionFactory, observer: Observer) -> None:
    """nested=True: the inner failure rolls back only the savepoint; the outer commits."""
    with factory.session_scope() as outer:
        outer.add(User(name="kept"))
        with pytest.raises(Boom), factory.session_scope(nested=True) as inner:
            assert inner is outer
            inner.add(User(name="undone"))
            inner.flush()
            raise Boom
        outer.add(User(name="after"))
    assert observer.names() == ["after", "kept"]


def test_nested_success_is_kept(factory: SessionFactory, observer: Observer) -> None:
    """A savepoint that succeeds is released and committed with the outer unit."""
    with factory.session_scope() as outer:
        with factory.session_scope(nested=True) as inner:
            inner.add(User(name="in-savepoint"))
        outer.add(User(name="outer"))
    assert observer.names() == ["in-savepoint", "outer"]


def test_independent_survives_outer_rollback(factory: SessionFactory, observer: Observer) -> None:
    """independent=True commits on its own session, even when the outer unit rolls back."""
    with pytest.raises(Boom), factory.session_scope() as outer:
        outer.add(User(name="rolled-back"))
        # (flushed after the audit: SQLite lets one writer hold the database at a time)
        with factory.session_scope(independent=True) as audit:
            assert audit is not outer
            audit.add(User(name="audit"))
        outer.flush()
        raise Boom
    assert observer.names() == ["audit"]
    assert checked_out(factory) == 0


def test_scopes_inside_independent_join_it(factory: SessionFactory) -> None:
    """Inside an independent unit, a plain scope joins the independent one, not the outer."""
    with factory.session_scope() as outer, factory.session_scope(independent=True) as audit:
        with factory.session_scope() as inner:
            assert inner is audit and inner is not outer


def test_nesting_with_one_connection_does_not_deadlock(db_url: str, observer: Observer) -> None:
    """pool_size=1, max_overflow=0: joined and savepoint scopes reuse the one connection."""
    from flask_unified_session import Settings

    settings = Settings.from_mapping(
        {
            "DATABASE_URL": db_url,
            "DB_POOL_SIZE": "1",
            "DB_MAX_OVERFLOW": "0",
            "DB_POOL_TIMEOUT": "3",
        }
    )
    factory = SessionFactory(settings=settings)
    with factory.session_scope() as outer:
        outer.add(User(name="a"))
        with factory.session_scope() as joined:
            joined.add(User(name="b"))
            with factory.session_scope(nested=True) as savepoint:
                savepoint.add(User(name="c"))
    assert observer.names() == ["a", "b", "c"]


def test_different_factories_do_not_join(db_url: str, observer: Observer, tmp_path: Any) -> None:
    """Scopes of two factories are separate units with separate sessions."""
    first = SessionFactory(db_url)
    second = SessionFactory(f"sqlite:///{tmp_path}/other.db")
    with first.session_scope() as a, second.session_scope() as b:
        assert a is not b


def test_session_generator_does_not_commit(factory: SessionFactory, observer: Observer) -> None:
    """The DI generator hands out a session, closes it, and commits only if the consumer does."""
    generator = factory.get_session_generator()
    session = next(generator)
    session.add(User(name="uncommitted"))
    session.flush()
    with pytest.raises(StopIteration):
        next(generator)
    assert observer.count() == 0
    assert checked_out(factory) == 0

    generator = factory.get_session_generator()
    session = next(generator)
    session.add(User(name="committed"))
    session.commit()
    generator.close()
    assert observer.names() == ["committed"]


def test_session_generator_rolls_back_when_consumer_raises(
    factory: SessionFactory, observer: Observer
) -> None:
    """An exception thrown into the generator rolls back, closes, and propagates."""
    generator = factory.get_session_generator()
    session = next(generator)
    session.add(User(name="x"))
    session.flush()
    with pytest.raises(Boom):
        generator.throw(Boom())
    assert observer.count() == 0
    assert checked_out(factory) == 0


def test_pending_rollback_never_leaks_to_next_unit(
    factory: SessionFactory, observer: Observer, caplog: pytest.LogCaptureFixture
) -> None:
    """A flush error inside a block, caught in the block, still ends in a clean rollback."""
    caplog.set_level(logging.WARNING)
    with factory.session_scope() as session:
        session.add(User(name="dup"))
    with pytest.raises(PendingRollbackError), factory.session_scope() as session:
        session.add(User(name="dup"))
        try:
            session.flush()
        except IntegrityError:
            pass
        session.add(User(name="more"))
        session.flush()
    with factory.session_scope() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 1


def test_failing_context_provider_leaves_no_dead_unit(
    factory: SessionFactory, observer: Observer
) -> None:
    """A context provider that raises on entry: the next unit of work is a unit of its own."""

    def broken() -> dict[str, object]:
        raise LookupError("no tenant")

    factory.context_provider = broken
    with pytest.raises(LookupError):
        with factory.session_scope():
            pytest.fail("the block must not run")
    factory.context_provider = None
    with factory.session_scope() as session:
        session.add(User(name="after"))
    assert observer.names() == ["after"]
    assert checked_out(factory) == 0
