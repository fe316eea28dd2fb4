"""``on_commit``: after the outermost commit, with the connection back in the pool."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_unified_session import (
    SessionFactory,
    UnifiedSession,
    on_commit,
    session_scope,
)
from tests.conftest import Observer, User

COUNT_BY_NAME = f"SELECT count(*) FROM {User.__tablename__} WHERE name = :n"


def recorder() -> tuple[list[str], Callable[[str], Callable[[], None]]]:
    calls: list[str] = []

    def hook(name: str) -> Callable[[], None]:
        return lambda: calls.append(name)

    return calls, hook


def test_hooks_run_after_the_commit_in_order_with_no_connection_out(
    factory: SessionFactory, observer: Observer
) -> None:
    seen: list[tuple[str, int, list[str]]] = []

    def hook(name: str) -> Callable[[], None]:
        def run() -> None:
            seen.append((name, factory.engine.pool.checkedout(), observer.names()))

        return run

    with factory.session_scope() as session:
        session.add(User(name="ann"))
        on_commit(hook("first"))
        session.flush()
        on_commit(hook("second"))
        assert seen == []
    assert seen == [("first", 0, ["ann"]), ("second", 0, ["ann"])]


def test_savepoints_drop_or_hand_up_their_hooks(
    factory: SessionFactory, observer: Observer
) -> None:
    calls, hook = recorder()
    with factory.session_scope() as session:
        on_commit(hook("outer"))
        with pytest.raises(ValueError), factory.session_scope(nested=True) as inner:
            inner.add(User(name="rolled-back"))
            on_commit(hook("rolled-back savepoint"))
            raise ValueError
        with factory.session_scope(nested=True) as inner:
            inner.add(User(name="released"))
            on_commit(hook("released savepoint"))
            with factory.session_scope(nested=True):
                on_commit(hook("released inside released"))
        assert calls == []  # a RELEASE SAVEPOINT runs nothing
        with factory.session_scope():
            on_commit(hook("joined"))
        assert calls == []
        session.add(User(name="outer"))
    assert calls == ["outer", "released savepoint", "released inside released", "joined"]
    assert observer.names() == ["outer", "released"]


def test_a_non_robust_failure_stops_the_rest_after_the_data_is_committed(
    factory: SessionFactory, observer: Observer
) -> None:
    calls, hook = recorder()

    def fails() -> None:
        raise RuntimeError("the broker is down")

    with pytest.raises(RuntimeError, match="broker"), factory.session_scope() as session:
        session.add(User(name="ann"))
        on_commit(hook("before"))
        on_commit(fails)
        on_commit(hook("after"))
    assert calls == ["before"]
    assert observer.names() == ["ann"]
    assert factory.engine.pool.checkedout() == 0


# -- a worker started by a hook sees the row ------------------------------------------------


@pytest.fixture
def reader(db_url: str, observer: Observer) -> Iterator[Callable[[str], bool]]:
    """Whether a row is committed, from a pool of its own (a worker's connections)."""
    engine = sa.create_engine(db_url)

    def committed(name: str) -> bool:
        with engine.connect() as connection:
            return connection.execute(sa.text(COUNT_BY_NAME), {"n": name}).scalar() == 1

    yield committed
    engine.dispose()


def test_a_worker_started_by_a_hook_sees_the_row(
    factory: SessionFactory, reader: Callable[[str], bool]
) -> None:
    runs = 100
    found: list[bool] = []
    workers: list[threading.Thread] = []

    def worker(name: str) -> None:
        found.append(reader(name))

    for index in range(runs):
        name = f"hooked-{index}"
        with factory.session_scope() as session:
            session.add(User(name=name))

            def start(name: str = name) -> None:
                thread = threading.Thread(target=worker, args=(name,))
                workers.append(thread)
                thread.start()

            on_commit(start)
        for thread in workers:
            thread.join()
        workers.clear()
    assert found.count(True) == runs

    # Control: the worker is enqueued before the commit and reads once the row is flushed.
    control: list[bool] = []
    for index in range(10):
        name = f"early-{index}"
        flushed = threading.Barrier(2, timeout=10)

        def early(name: str = name, flushed: threading.Barrier = flushed) -> None:
            flushed.wait()
            control.append(reader(name))

        with factory.session_scope() as session:
            thread = threading.Thread(target=early)
            thread.start()
            session.add(User(name=name))
            session.flush()
            flushed.wait()
            thread.join()  # the worker read before the commit
    assert control.count(True) == 0


# -- Flask: the app context's session ------------------------------------------------------


@pytest.fixture(params=["plain", "flask_sqlalchemy"])
def app(request: pytest.FixtureRequest, db_url: str, observer: Observer) -> Iterator[Flask]:
    app = Flask(f"fus_on_commit_{request.param}")
    db: SQLAlchemy | None = None
    if request.param == "plain":
        app.config["UNIFIED_SESSION_DATABASE_URL"] = db_url
        UnifiedSession(app)
    else:
        app.config["SQLALCHEMY_DATABASE_URI"] = db_url
        db = SQLAlchemy()
        db.init_app(app)
        UnifiedSession(app, db=db)
    yield app
    if db is not None:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


def test_in_an_app_context_hooks_run_after_the_app_session_released_its_connection(
    app: Flask, observer: Observer
) -> None:
    engine = app.extensions["unified_session"].factory.engine
    seen: list[tuple[int, list[str]]] = []
    calls, hook = recorder()

    def check() -> None:
        seen.append((engine.pool.checkedout(), observer.names()))

    with app.app_context():
        manager = app.unified_session_manager  # type: ignore[attr-defined]
        with manager.get_db_session() as session:
            session.add(User(name="ann"))
            on_commit(check)
            with session_scope():  # the module function: the app's unit, joined
                on_commit(hook("joined through session_scope()"))
            assert seen == []
        assert seen == [(0, ["ann"])]
        assert calls == ["joined through session_scope()"]
        on_commit(hook("no unit in the app context: at once"))
        assert calls[-1] == "no unit in the app context: at once"
