"""``rollback_isolation()`` and ``truncate_isolation()`` in this process: the edge cases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from flask_unified_session import SessionFactory
from flask_unified_session.testing import (
    TruncateWarning,
    UnifiedRollbackError,
    UnifiedRollbackWarning,
    rollback_isolation,
    truncate_isolation,
)
from tests.conftest import RUN, Observer, User


@pytest.fixture
def factory(db_url: str, observer: Observer) -> SessionFactory:
    return SessionFactory(db_url)


def names(factory: SessionFactory) -> list[str]:
    with factory.session_scope() as session:
        return sorted(session.scalars(sa.select(User.name)))


def test_savepoints_of_one_connection_behave_as_in_production(
    factory: SessionFactory, observer: Observer
) -> None:
    with rollback_isolation():
        with factory.session_scope() as session:
            session.add(User(name="outer"))
            with pytest.raises(ValueError), factory.session_scope(nested=True) as inner:
                inner.add(User(name="savepoint"))
                inner.flush()
                raise ValueError
            with factory.session_scope(nested=True) as inner:
                inner.add(User(name="released"))
        with pytest.raises(ValueError), factory.session_scope() as session:
            session.add(User(name="failed"))
            session.flush()
            raise ValueError
        assert names(factory) == ["outer", "released"]
    assert observer.count() == 0


def test_a_rollback_below_an_open_transaction_sets_its_savepoint_again(
    factory: SessionFactory, observer: Observer
) -> None:
    with rollback_isolation():
        lower = factory.create_session()
        lower.add(User(name="lower"))
        lower.flush()
        upper = factory.create_session()
        upper.execute(sa.text("SELECT 1"))  # opened above, has written nothing
        lower.rollback()
        upper.add(User(name="upper"))
        upper.commit()
        lower.close()
        upper.close()
        assert names(factory) == ["upper"]
    assert observer.count() == 0


def test_undoing_open_work_of_another_transaction_fails_when_it_commits(
    factory: SessionFactory, observer: Observer
) -> None:
    with pytest.raises(UnifiedRollbackError, match="unified_truncate"):
        with rollback_isolation():
            first = factory.create_session()
            first.add(User(name="first"))
            first.flush()
            second = factory.create_session()
            second.add(User(name="second"))
            second.flush()  # written after first's SAVEPOINT
            first.rollback()  # production keeps second's work; one connection cannot
            second.commit()
            first.close()
            second.close()
    assert observer.count() == 0


def test_an_error_inside_a_unit_leaves_the_connection_usable(
    factory: SessionFactory, observer: Observer
) -> None:
    with rollback_isolation():
        with factory.session_scope() as session:
            session.add(User(name="ann"))
        with pytest.raises(sa.exc.IntegrityError), factory.session_scope() as session:
            session.add(User(name="ann"))
        with factory.session_scope() as session:
            session.add(User(name="bob"))
        assert names(factory) == ["ann", "bob"]
    assert observer.count() == 0


def test_an_engine_can_opt_out(db_url: str, factory: SessionFactory, observer: Observer) -> None:
    outside = sa.create_engine(db_url, execution_options={"unified_rollback": False})
    with rollback_isolation():
        with factory.session_scope() as session:
            session.add(User(name="inside"))
        with Session(outside) as session:
            assert session.scalars(sa.select(User.name)).all() == []
    outside.dispose()


def test_a_session_kept_after_the_isolation_raises(
    factory: SessionFactory, observer: Observer
) -> None:
    with rollback_isolation():
        session = factory.create_session()
        session.add(User(name="kept-open"))
        session.flush()
    try:
        with pytest.raises(sa.exc.StatementError, match="test that has ended"):
            session.execute(sa.text("SELECT 1"))
    finally:
        session.close()
    assert observer.count() == 0


def test_everything_is_restored_and_strategies_do_not_nest(
    factory: SessionFactory, observer: Observer
) -> None:
    engine_type = type(factory.engine)
    patched = (
        engine_type.connect,
        engine_type.raw_connection,
        DefaultDialect._set_connection_characteristics,
    )
    with pytest.raises(ZeroDivisionError), rollback_isolation():
        with factory.session_scope() as session:
            session.add(User(name="rolled-back"))
        with pytest.raises(RuntimeError, match="cannot be combined"):
            with truncate_isolation():
                pass
        1 / 0  # noqa: B018 - the block fails
    assert (
        engine_type.connect,
        engine_type.raw_connection,
        DefaultDialect._set_connection_characteristics,
    ) == patched
    assert factory.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert observer.count() == 0
    with factory.session_scope() as session:
        session.add(User(name="real"))
    assert observer.names() == ["real"]


# -- unified_truncate ----------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = f"fus_parent_{RUN}"

    id: Mapped[int] = mapped_column(primary_key=True)


class Child(Base):
    __tablename__ = f"fus_child_{RUN}"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey(Parent.id))


class Tag(Base):  # no integer key: rows are told apart by a copy
    __tablename__ = f"fus_tag_{RUN}"

    name: Mapped[str] = mapped_column(sa.String(20), primary_key=True)


@pytest.fixture
def schema(factory: SessionFactory) -> Iterator[sa.Engine]:
    Base.metadata.drop_all(factory.engine)
    Base.metadata.create_all(factory.engine)
    yield factory.engine
    Base.metadata.drop_all(factory.engine)


def test_truncate_keeps_what_was_there_and_removes_what_the_test_wrote(
    factory: SessionFactory, observer: Observer, schema: sa.Engine
) -> None:
    with factory.session_scope() as session:
        session.add_all([User(name="before"), Tag(name="old")])
    created = f"fus_created_{RUN}"
    with truncate_isolation(factory.engine):
        with factory.session_scope() as session:
            session.add_all([User(name="during"), Tag(name="new"), Parent(id=1)])
            session.flush()
            session.add(Child(parent_id=1))
        with schema.begin() as connection:
            connection.execute(sa.text(f"CREATE TABLE {created} (id INTEGER PRIMARY KEY)"))
        assert observer.names() == ["before", "during"]
    assert observer.names() == ["before"]
    with factory.session_scope() as session:
        assert session.scalars(sa.select(Tag.name)).all() == ["old"]
        assert session.scalar(sa.select(sa.func.count()).select_from(Parent)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Child)) == 0
    with schema.connect() as connection:
        assert created not in sa.inspect(connection).get_table_names()


def test_truncate_warns_about_rows_it_cannot_restore(
    factory: SessionFactory, observer: Observer
) -> None:
    with factory.session_scope() as session:
        session.add(User(name="deleted"))
    with pytest.warns(TruncateWarning, match="does not restore"):
        with truncate_isolation(factory.engine):
            with factory.session_scope() as session:
                session.execute(sa.delete(User))
    assert observer.count() == 0


def test_sqlite_in_memory_is_isolated_on_its_own_connection() -> None:
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    User.__table__.create(engine)
    with rollback_isolation():
        with Session(engine) as session:
            session.add(User(name="memory"))
            session.commit()
        with engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(User)) == 1
    with engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(User)) == 0
    engine.dispose()


def test_a_connection_opened_before_the_isolation_is_reported(
    factory: SessionFactory, observer: Observer
) -> None:
    early = factory.create_session()
    try:
        early.execute(sa.text("SELECT 1"))  # holds a connection of the factory's engine
        with pytest.warns(UnifiedRollbackWarning, match="not isolated"):
            with rollback_isolation():
                pass
    finally:
        early.close()
