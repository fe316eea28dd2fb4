"""``rollback_isolation()`` and the ``unified_rollback`` fixture, in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from flask_unified_session import SessionFactory
from flask_unified_session.pytest_plugin import RollbackIsolation, rollback_isolation
from tests.conftest import Observer, User


@pytest.fixture
def factory(db_url: str) -> SessionFactory:
    return SessionFactory(db_url)


@pytest.fixture
def unified_rollback_targets(factory: SessionFactory) -> list[object]:
    """The plugin's hook, overridden: isolate this module's factory."""
    return [factory]


@pytest.fixture
def adopted(db_url: str) -> Iterator[sa.Engine]:
    """An engine made outside the library (SQLite without the SAVEPOINT fix)."""
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


def names_in(factory: SessionFactory) -> list[str]:
    with factory.session_scope() as session:
        return list(session.scalars(sa.select(User.name).order_by(User.name)))


def test_rollback_in_code_under_test_keeps_the_test_consistent(
    observer: Observer, unified_rollback: RollbackIsolation, factory: SessionFactory
) -> None:
    """A unit of work that fails inside the test undoes only its own work."""
    with factory.session_scope() as session:
        session.add(User(name="before"))
    with pytest.raises(ValueError), factory.session_scope() as session:
        session.add(User(name="failed"))
        session.flush()
        raise ValueError("the code under test fails")
    assert names_in(factory) == ["before"]
    with factory.session_scope() as outer:
        outer.add(User(name="outer"))
        with pytest.raises(ValueError), factory.session_scope(nested=True) as inner:
            inner.add(User(name="savepoint"))
            inner.flush()
            raise ValueError("inside a SAVEPOINT")
    with factory.session_scope() as session:
        session.add(User(name="after"))
    assert names_in(factory) == ["after", "before", "outer"]
    assert observer.count() == 0
    assert factory.sessionmaker.kw["join_transaction_mode"] == "create_savepoint"


def test_commit_as_you_go_on_a_direct_connection(observer: Observer, adopted: sa.Engine) -> None:
    """commit()/rollback() on engine.connect() act back to the last commit, never for real."""
    with rollback_isolation(adopted):
        with adopted.connect() as connection:
            connection.execute(sa.insert(User).values(name="committed"))
            connection.commit()
            connection.execute(sa.insert(User).values(name="rolled-back"))
            connection.rollback()
        with adopted.begin() as connection:
            connection.execute(sa.insert(User).values(name="begin"))
        with Session(adopted) as session:
            assert list(session.scalars(sa.select(User.name).order_by(User.name))) == [
                "begin",
                "committed",
            ]
        assert observer.count() == 0
    assert observer.count() == 0


def test_session_of_an_unknown_sessionmaker_joins_with_a_savepoint(
    observer: Observer, adopted: sa.Engine
) -> None:
    """A plain Session(engine) commits and rolls back inside the test's transaction."""
    with rollback_isolation(adopted):
        with Session(adopted) as session:
            session.add(User(name="kept"))
            session.commit()
        with Session(adopted) as session:
            session.add(User(name="undone"))
            session.flush()
            session.rollback()
            assert list(session.scalars(sa.select(User.name))) == ["kept"]
    assert observer.count() == 0


def test_everything_is_restored_afterwards(
    observer: Observer, adopted: sa.Engine, factory: SessionFactory
) -> None:
    """Engines, connections, sessions and sessionmakers are as before once it ends."""
    kw_before = dict(factory.sessionmaker.kw)
    begin_listeners = len(adopted.dispatch.begin)
    get_bind = Session.__dict__["get_bind"]
    with adopted.connect() as connection:
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        isolation_level = getattr(dbapi, "isolation_level", None)
    with pytest.raises(ZeroDivisionError), rollback_isolation(adopted, factory):
        with factory.session_scope() as session:
            session.add(User(name="rolled-back"))
        assert "connect" in vars(adopted)
        assert Session.__dict__["get_bind"] is not get_bind
        1 / 0  # noqa: B018 - the test fails
    assert observer.count() == 0
    assert "connect" not in vars(adopted) and "connect" not in vars(factory.engine)
    assert Session.__dict__["get_bind"] is get_bind
    assert factory.sessionmaker.kw == kw_before
    assert len(adopted.dispatch.begin) == begin_listeners
    assert adopted.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert factory.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with adopted.connect() as connection:
        dbapi = connection.connection.dbapi_connection
        assert getattr(dbapi, "isolation_level", None) == isolation_level
        connection.execute(sa.insert(User).values(name="real"))
        connection.commit()
    assert observer.names() == ["real"]


def test_a_thread_of_the_test_shares_its_transaction(
    observer: Observer, backend: str, unified_rollback: RollbackIsolation, factory: SessionFactory
) -> None:
    """Work done in another thread of the test (one at a time) is rolled back too."""
    if backend == "sqlite":
        pytest.skip("pysqlite connections refuse other threads (check_same_thread)")

    def work() -> None:
        with factory.session_scope() as session:
            session.add(User(name="thread"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert names_in(factory) == ["thread"]
    assert observer.count() == 0


def test_bind_refuses_what_it_cannot_isolate() -> None:
    """An object that is no app, factory, sessionmaker or engine is an error that says so."""
    with pytest.raises(TypeError, match="cannot isolate"), rollback_isolation(object()):
        pass
