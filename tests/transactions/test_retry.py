"""``run_in_transaction``: retried only when the server rolled back, or before COMMIT."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from flask_unified_session import (
    SessionFactory,
    on_commit,
    run_in_transaction,
    session_scope,
    transactional,
)
from flask_unified_session.transactions import retryable
from tests.conftest import Observer, User, server_url

TABLE = User.__tablename__
FAST = (0.001, 0.01)  # backoff of the tests: jittered, and short


@pytest.fixture
def backend() -> str:
    """The rules that need no server run on SQLite only (``db_url``, ``observer``)."""
    return "sqlite"


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgresql)])
def pg(request: pytest.FixtureRequest) -> str:
    return server_url(str(request.param))


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def server(request: pytest.FixtureRequest) -> str:
    return server_url(str(request.param))


@pytest.fixture
def server_factory(server: str) -> Iterator[tuple[SessionFactory, Observer]]:
    yield from _factory_and_observer(server)


@pytest.fixture
def pg_factory(pg: str) -> Iterator[tuple[SessionFactory, Observer]]:
    yield from _factory_and_observer(pg)


def _factory_and_observer(url: str) -> Iterator[tuple[SessionFactory, Observer]]:
    from tests.conftest import Base

    observer = Observer(url)
    Base.metadata.drop_all(observer.engine)
    Base.metadata.create_all(observer.engine)
    factory = SessionFactory(url)
    try:
        yield factory, observer
    finally:
        factory.dispose()
        Base.metadata.drop_all(observer.engine)
        observer.dispose()


def seed(factory: SessionFactory, *names: str, note: str = "") -> None:
    with factory.session_scope() as session:
        session.add_all(User(name=name, note=note) for name in names)


def serializable(session: Session) -> None:
    session.execute(sa.text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))


def backend_pid(session: Session) -> int:
    if session.get_bind().dialect.name == "postgresql":
        return int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    return int(session.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())


def kill(observer: Observer, pid: int) -> None:
    if observer.engine.dialect.name == "postgresql":
        assert observer.scalar("SELECT pg_terminate_backend(:pid, 5000)", pid=pid) is True
    else:
        with observer.engine.connect() as connection:
            connection.exec_driver_sql(f"KILL {int(pid)}")


def in_threads(*targets: Callable[[], object]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


# -- retried -------------------------------------------------------------------------------


def test_write_skew_under_serializable_is_retried(
    pg_factory: tuple[SessionFactory, Observer], caplog: pytest.LogCaptureFixture
) -> None:
    """Two doctors go off call at once: one gets 40001, is retried, and stays on call."""
    factory, observer = pg_factory
    seed(factory, "alice", "bob", note="on call")
    read = threading.Barrier(2, timeout=10)
    calls: Counter[str] = Counter()
    hooks: list[str] = []

    def go_off_call(session: Session, name: str) -> None:
        calls[name] += 1
        serializable(session)
        on_call = session.scalar(
            sa.select(sa.func.count()).select_from(User).where(User.note == "on call")
        )
        if calls[name] == 1:
            read.wait()  # both have read before either writes
        if on_call and on_call >= 2:
            session.execute(sa.update(User).where(User.name == name).values(note="off"))
        on_commit(lambda: hooks.append(f"{name} attempt {calls[name]}"))

    with caplog.at_level(logging.WARNING, "flask_unified_session"):
        errors = in_threads(
            *(
                (
                    lambda name=name: run_in_transaction(
                        go_off_call, name, factory=factory, backoff=FAST
                    )
                )
                for name in ("alice", "bob")
            )
        )
    assert errors == []
    assert sorted(calls.values()) == [1, 2]
    assert observer.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = 'on call'") == 1
    retried = next(name for name, count in calls.items() if count == 2)
    assert sorted(hooks) == sorted(
        [f"{retried} attempt 2", f"{(set(calls) - {retried}).pop()} attempt 1"]
    )
    assert "attempt 1 of 3 failed with SQLSTATE 40001" in caplog.text


def test_opposite_order_locks_deadlock_and_are_retried(
    server_factory: tuple[SessionFactory, Observer], caplog: pytest.LogCaptureFixture
) -> None:
    factory, observer = server_factory
    seed(factory, "a", "b")
    locked = threading.Barrier(2, timeout=10)
    calls: Counter[str] = Counter()
    postgresql = factory.engine.dialect.name == "postgresql"

    def lock_both(session: Session, first: str, second: str) -> None:
        calls[first] += 1
        if postgresql:
            session.execute(sa.text("SET LOCAL deadlock_timeout = '100ms'"))
        lock = sa.select(User).where(User.name == first).with_for_update()
        session.execute(lock)
        if calls[first] == 1:
            locked.wait()
        session.execute(sa.select(User).where(User.name == second).with_for_update())
        session.execute(sa.update(User).where(User.name == first).values(note=f"by {first}"))

    with caplog.at_level(logging.WARNING, "flask_unified_session"):
        errors = in_threads(
            lambda: run_in_transaction(lock_both, "a", "b", factory=factory, backoff=FAST),
            lambda: run_in_transaction(lock_both, "b", "a", factory=factory, backoff=FAST),
        )
    assert errors == []
    assert sorted(calls.values()) == [1, 2]
    code = "SQLSTATE 40P01" if postgresql else "error 1213"
    assert f"attempt 1 of 3 failed with {code}" in caplog.text
    assert observer.scalar(f"SELECT count(*) FROM {TABLE} WHERE note LIKE 'by %'") == 2


def test_a_serialization_failure_reported_by_commit_is_retried(
    pg_factory: tuple[SessionFactory, Observer], caplog: pytest.LogCaptureFixture
) -> None:
    """Read-then-insert twice: the other transaction commits first, ours fails at COMMIT."""
    factory, observer = pg_factory
    count = sa.text(f"SELECT count(*) FROM {TABLE} WHERE note = 'k'")
    insert = sa.text(f"INSERT INTO {TABLE} (name, note) VALUES (:name, 'k')")
    calls = 0
    failures_at_commit: list[str] = []

    def add(session: Session) -> None:
        nonlocal calls
        calls += 1
        serializable(session)
        session.execute(count)
        session.execute(insert, {"name": f"ours-{calls}"})
        if calls == 1:
            with observer.engine.connect() as other:
                other.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                other.execute(count)
                other.execute(insert, {"name": "theirs"})
                other.commit()  # first committer wins

        @event.listens_for(session.connection(), "commit")
        def at_commit(_connection: sa.Connection) -> None:
            failures_at_commit.append(f"commit of attempt {calls}")

    with caplog.at_level(logging.WARNING, "flask_unified_session"):
        run_in_transaction(add, factory=factory, backoff=FAST)
    assert calls == 2
    assert failures_at_commit == ["commit of attempt 1", "commit of attempt 2"]
    assert "attempt 1 of 3 failed with SQLSTATE 40001 (OperationalError) at COMMIT" in caplog.text
    assert observer.names() == ["ours-2", "theirs"]


def test_a_disconnect_before_commit_is_retried(
    server_factory: tuple[SessionFactory, Observer],
) -> None:
    factory, observer = server_factory
    calls = 0
    hooks: list[int] = []

    def add(session: Session) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            kill(observer, backend_pid(session))  # the connection is out; nothing written
        session.add(User(name=f"attempt-{calls}"))
        session.flush()
        on_commit(lambda: hooks.append(calls))
        return "done"

    assert run_in_transaction(add, factory=factory, backoff=FAST) == "done"
    assert calls == 2
    assert hooks == [2]  # the failed attempt's hook never ran
    assert observer.names() == ["attempt-2"]


# -- never retried -------------------------------------------------------------------------


def test_a_disconnect_during_commit_is_raised_unchanged(
    server_factory: tuple[SessionFactory, Observer],
) -> None:
    """COMMIT was handed to the driver on a connection that is gone: the outcome is unknown."""
    factory, observer = server_factory
    calls = 0
    hooks: list[int] = []

    def add(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.add(User(name="unknown"))
        session.flush()
        pid = backend_pid(session)
        on_commit(lambda: hooks.append(calls))

        @event.listens_for(session.connection(), "commit")
        def lose_the_connection(_connection: sa.Connection) -> None:
            kill(observer, pid)  # then the driver sends COMMIT

    with pytest.raises(sa.exc.OperationalError) as raised:
        run_in_transaction(add, factory=factory, backoff=FAST)
    assert raised.value.connection_invalidated
    assert calls == 1
    assert hooks == []
    assert observer.count() == 0  # here the server had not committed; a client cannot know


def test_a_unique_violation_runs_once_and_is_raised(
    server_factory: tuple[SessionFactory, Observer],
) -> None:
    factory, _observer = server_factory
    seed(factory, "taken")
    calls = 0

    def add(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.add(User(name="taken"))

    with pytest.raises(sa.exc.IntegrityError):
        run_in_transaction(add, factory=factory, backoff=FAST)
    assert calls == 1


def test_the_last_attempt_raises_the_error(
    server_factory: tuple[SessionFactory, Observer], caplog: pytest.LogCaptureFixture
) -> None:
    factory, observer = server_factory
    calls = 0

    def always_killed(session: Session) -> None:
        nonlocal calls
        calls += 1
        kill(observer, backend_pid(session))
        session.execute(sa.text("SELECT 1"))

    with caplog.at_level(logging.WARNING, "flask_unified_session"):
        with pytest.raises(sa.exc.DBAPIError) as raised:
            run_in_transaction(always_killed, attempts=2, factory=factory, backoff=FAST)
    assert raised.value.connection_invalidated
    assert calls == 2
    assert "attempt 1 of 2 failed" in caplog.text
    assert "attempt 2" not in caplog.text


# -- the rules, on SQLite -------------------------------------------------------------------


def test_refused_inside_an_active_unit(db_url: str, observer: Observer) -> None:
    factory = SessionFactory(db_url)
    try:
        with factory.session_scope():
            with pytest.raises(RuntimeError, match="inside an active unit of work"):
                run_in_transaction(lambda session: None, factory=factory)
        with factory.session_scope(), pytest.raises(RuntimeError, match="active unit"):
            run_in_transaction(lambda session: None)  # any unit of this owner
    finally:
        factory.dispose()


def test_an_ordinary_error_runs_once(db_url: str, observer: Observer) -> None:
    calls = 0

    def fails(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.add(User(name="rolled back"))
        raise ValueError("not a database error")

    factory = SessionFactory(db_url)
    try:
        with pytest.raises(ValueError):
            run_in_transaction(fails, factory=factory)
    finally:
        factory.dispose()
    assert calls == 1
    assert observer.count() == 0


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="attempts"):
        run_in_transaction(lambda session: None, attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        run_in_transaction(lambda session: None, backoff=(-1.0, 1.0))


def _dbapi_error(
    orig: BaseException,
    *,
    cls: type[sa.exc.DBAPIError] = sa.exc.OperationalError,
    invalidated: bool = False,
) -> sa.exc.DBAPIError:
    return cls("SELECT secret", {"password": "hunter2"}, orig, connection_invalidated=invalidated)


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__("boom")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "commit_sent", "expected"),
    [
        (_dbapi_error(_PgError("40001")), False, True),
        (_dbapi_error(_PgError("40001")), True, True),
        (_dbapi_error(_PgError("40P01")), True, True),
        (_dbapi_error(Exception(1213, "Deadlock found")), True, True),
        (_dbapi_error(Exception(1205, "Lock wait timeout")), False, False),
        (_dbapi_error(_PgError("23505"), cls=sa.exc.IntegrityError), False, False),
        (_dbapi_error(_PgError("40001"), cls=sa.exc.IntegrityError), False, False),
        (_dbapi_error(_PgError("57P01"), invalidated=True), False, True),
        (_dbapi_error(_PgError("57P01"), invalidated=True), True, False),
        (_dbapi_error(_PgError("55P03")), False, False),
        (ValueError("not from the database"), False, False),
    ],
)
def test_what_is_retryable(error: BaseException, commit_sent: bool, expected: bool) -> None:
    assert retryable(error, commit_sent=commit_sent) is expected


def test_the_log_names_the_code_never_the_parameters(
    db_url: str, observer: Observer, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def fails_once(session: Session) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise _dbapi_error(_PgError("40001"))

    factory = SessionFactory(db_url)
    try:
        with caplog.at_level(logging.DEBUG, "flask_unified_session"):
            run_in_transaction(fails_once, factory=factory, backoff=FAST)
    finally:
        factory.dispose()
    assert calls == 2
    assert "SQLSTATE 40001" in caplog.text
    assert "hunter2" not in caplog.text and "secret" not in caplog.text


def test_the_decorator(db_url: str, observer: Observer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    calls: list[tuple[Any, ...]] = []

    class Signup:
        @transactional(attempts=2, backoff=FAST)
        def register(self, name: str, *, note: str = "") -> str:
            calls.append((name, note))
            with session_scope() as session:  # joins the attempt's unit
                session.add(User(name=name, note=note))
                if len(calls) == 1:
                    raise _dbapi_error(_PgError("40P01"))
            return name

    @transactional
    def plain(name: str) -> None:
        with session_scope() as session:
            session.add(User(name=name))

    assert Signup().register("ann", note="x") == "ann"
    plain("bob")
    assert Signup.register.__name__ == "register"
    assert calls == [("ann", "x"), ("ann", "x")]
    assert observer.names() == ["ann", "bob"]
    with session_scope(), pytest.raises(RuntimeError, match="active unit"):
        plain("carol")
