"""The nesting model: no restorable snapshot, any exit order, any context, forks, re-entry.

Each test is one measured failure of version 1 (issue "Core v2", points 5-11), checked
from outside: an independent connection for what was committed, ``checkedout()`` for
connections held, ``pg_backend_pid()`` / ``CONNECTION_ID()`` for connection identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator
from typing import Any

import greenlet
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from flask_unified_session import DoomedTransactionError, SessionFactory, signals
from tests.conftest import Observer, User


class Boom(Exception):
    pass


APPLICATION = f"fus_nesting_{os.getpid()}"


@pytest.fixture
def factory(db_url: str, observer: Observer) -> SessionFactory:
    if db_url.startswith("postgresql"):  # named, so the server's view can be filtered
        return SessionFactory(
            sa.make_url(db_url)
            .update_query_dict({"application_name": APPLICATION})
            .render_as_string(hide_password=False)
        )
    return SessionFactory(db_url)


def checked_out(factory: SessionFactory) -> int:
    return int(factory.engine.pool.checkedout())  # type: ignore[attr-defined]


def backend_id(session: Session) -> int:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    if dialect in ("mysql", "mariadb"):
        return int(session.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())
    return id(session.connection().connection.dbapi_connection)


def idle_in_transaction(observer: Observer, db_url: str) -> int:
    if not db_url.startswith("postgresql"):
        return 0
    return int(
        observer.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
            "AND application_name = :name",
            name=APPLICATION,
        )  # type: ignore[arg-type]
    )


def three_units_commit(factory: SessionFactory, observer: Observer, prefix: str) -> None:
    """Later units in this thread are outermost units again: each commits its row."""
    for i in range(3):
        with factory.session_scope() as session:
            session.add(User(name=f"{prefix}{i}"))
    assert sorted(n for n in observer.names() if n.startswith(prefix)) == [
        f"{prefix}0",
        f"{prefix}1",
        f"{prefix}2",
    ]
    assert checked_out(factory) == 0


# -- point 5: exits out of order -------------------------------------------------------


def test_zipped_generators_leave_no_dead_unit(
    factory: SessionFactory, observer: Observer, db_url: str, tmp_path: Any
) -> None:
    """Two generator helpers zipped (the second closed later): later units still commit."""
    other = SessionFactory(f"sqlite:///{tmp_path}/other.db")

    def rows(f: SessionFactory) -> Iterator[Any]:
        with f.session_scope() as session:
            yield from session.execute(sa.text("SELECT 1 UNION ALL SELECT 2")).all()

    second = rows(other)
    assert len(list(zip(rows(factory), second, strict=False))) == 2
    three_units_commit(factory, observer, "zip")
    second.close()
    three_units_commit(factory, observer, "after")
    assert idle_in_transaction(observer, db_url) == 0
    assert checked_out(other) == 0


def test_outer_unit_closed_while_an_independent_one_is_open(
    factory: SessionFactory, observer: Observer, db_url: str
) -> None:
    """A generator's unit exits while an independent unit is open: nothing comes back."""

    def helper() -> Iterator[Session]:
        with factory.session_scope() as session:
            yield session

    outer = helper()
    outer_session = next(outer)
    with factory.session_scope(independent=True) as independent:
        assert independent is not outer_session
        outer.close()  # the outer unit exits first
        independent.add(User(name="independent"))
    with factory.session_scope() as session:
        assert session is not outer_session
        assert session is not independent
    three_units_commit(factory, observer, "later")
    assert "independent" in observer.names()
    assert idle_in_transaction(observer, db_url) == 0


def test_inner_unit_exits_after_its_outer_one(factory: SessionFactory, observer: Observer) -> None:
    """A joined scope exited after the outermost: the outermost committed; nothing rejoins."""
    outer = factory.session_scope()
    inner = factory.session_scope()
    session = outer.__enter__()
    assert inner.__enter__() is session
    session.add(User(name="kept"))
    outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    assert observer.names() == ["kept"]
    three_units_commit(factory, observer, "next")


# -- point 6: a scope object entered twice ----------------------------------------------


def test_entering_an_active_scope_object_again_is_refused(
    factory: SessionFactory, observer: Observer
) -> None:
    """Entering one scope object while it is active raises; the outer one still commits."""
    scope = factory.session_scope()
    with scope as session:
        session.add(User(name="outer"))
        with pytest.raises(RuntimeError, match="already active"), scope:
            pass
    assert observer.names() == ["outer"]
    three_units_commit(factory, observer, "then")


def test_a_scope_object_can_be_entered_again_after_it_exits(
    factory: SessionFactory, observer: Observer
) -> None:
    """Used as a joined scope, then as an outermost one: both times it does its job."""
    reused = factory.session_scope()
    with factory.session_scope() as outer:
        with reused as joined:
            assert joined is outer
            joined.add(User(name="joined"))
    with reused as session:
        assert session is not outer
        session.add(User(name="outermost"))
    assert observer.names() == ["joined", "outermost"]
    three_units_commit(factory, observer, "after")


# -- point 7: exit in another context or thread ----------------------------------------


def test_unit_entered_and_exited_in_different_contexts(
    factory: SessionFactory, observer: Observer, db_url: str
) -> None:
    """What Starlette does with a sync generator dependency: each step in a thread pool."""

    def dependency() -> Iterator[Session]:
        with factory.session_scope() as session:
            yield session

    async def endpoint() -> None:
        scope = contextlib.contextmanager(dependency)()
        session = await asyncio.to_thread(scope.__enter__)
        await asyncio.to_thread(session.add, User(name="across"))
        await asyncio.to_thread(scope.__exit__, None, None, None)

    asyncio.run(endpoint())
    assert observer.names() == ["across"]
    assert checked_out(factory) == 0
    assert idle_in_transaction(observer, db_url) == 0


def test_unit_exited_by_another_thread_rolls_back_the_original_error(
    factory: SessionFactory, observer: Observer
) -> None:
    """Exited in a second thread with an exception: rolled back there, nothing joins it."""
    scope = factory.session_scope()
    session = scope.__enter__()
    session.add(User(name="lost"))
    session.flush()
    raised: list[BaseException] = []

    def finish() -> None:
        try:
            scope.__exit__(Boom, Boom("x"), None)
        except BaseException as exc:  # pragma: no cover - the test fails on it
            raised.append(exc)

    thread = threading.Thread(target=finish)
    thread.start()
    thread.join()
    assert raised == []
    assert observer.count() == 0
    three_units_commit(factory, observer, "here")


def test_other_threads_greenlets_and_tasks_never_join(
    factory: SessionFactory, observer: Observer
) -> None:
    """Inside an open unit, a thread, a greenlet and a child task each get their own."""
    seen: dict[str, Session] = {}
    with factory.session_scope() as outer:

        def in_thread() -> None:
            with factory.session_scope() as session:
                seen["thread"] = session

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()

        def in_greenlet() -> None:
            with factory.session_scope() as session:
                seen["greenlet"] = session

        greenlet.greenlet(in_greenlet).switch()

        async def child(name: str) -> None:
            with factory.session_scope() as session:
                seen[name] = session

        async def parent() -> None:
            await asyncio.gather(child("task1"), child("task2"))

        asyncio.run(parent())
    assert len({id(s) for s in (outer, *seen.values())}) == 5
    assert checked_out(factory) == 0


# -- point 8: fork inside an open unit --------------------------------------------------


def _child_writes(factory: SessionFactory, name: str, parent_backend: int) -> int:
    with factory.session_scope() as session:
        if backend_id(session) == parent_backend:
            return 2
        session.add(User(name=name))
    return 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_child_forked_inside_a_unit_has_its_own(
    factory: SessionFactory, observer: Observer, backend: str
) -> None:
    """The child's unit: its own connection, its own commit; the parent's rollback is its own."""
    with pytest.raises(Boom), factory.session_scope() as session:
        parent_backend = backend_id(session)
        if backend != "sqlite":  # a SQLite writer would lock the child out
            session.add(User(name="parent"))
            session.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            status = 1
            try:
                status = _child_writes(factory, "child", parent_backend)
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's connection still works: the child never used it.
        assert backend_id(session) == parent_backend
        raise Boom
    assert observer.names() == ["child"]
    assert checked_out(factory) == 0


def _pool_task(args: tuple[str, int]) -> str:
    _url, i = args
    from flask_unified_session import session_scope  # the child's default factory

    with session_scope() as session:
        session.add(User(name=f"task{i:02d}"))
    return "ok"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_fork_pool_created_inside_a_unit(
    db_url: str, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multiprocessing fork Pool made inside a unit: every task commits on its own."""
    from flask_unified_session import get_default_factory, session_scope

    monkeypatch.setenv("DATABASE_URL", db_url)
    context = multiprocessing.get_context("fork")
    with session_scope() as session:
        session.add(User(name="parent"))
        with context.Pool(2) as pool:
            results = pool.map_async(_pool_task, [(db_url, i) for i in range(8)]).get(60)
    assert results == ["ok"] * 8
    assert observer.names() == ["parent", *[f"task{i:02d}" for i in range(8)]]
    assert get_default_factory().engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# -- point 9: nested=True contains every failure ---------------------------------------


def test_joined_failure_inside_a_savepoint_is_contained(
    factory: SessionFactory, observer: Observer
) -> None:
    """A joined scope raising inside nested=True: the savepoint rolls back, the outer commits."""
    with factory.session_scope() as session:
        session.add(User(name="outer"))
        with contextlib.suppress(Boom):
            with factory.session_scope(nested=True) as inner:
                inner.add(User(name="in-savepoint"))
                with factory.session_scope():
                    raise Boom
        session.add(User(name="after"))
    assert observer.names() == ["after", "outer"]


def test_failure_caught_inside_a_savepoint_dooms_only_the_savepoint(
    factory: SessionFactory, observer: Observer
) -> None:
    """Caught inside the savepoint: the savepoint's end rolls it back and says so."""
    with factory.session_scope() as session:
        session.add(User(name="outer"))
        with pytest.raises(DoomedTransactionError), factory.session_scope(nested=True) as inner:
            inner.add(User(name="in-savepoint"))
            with contextlib.suppress(Boom), factory.session_scope():
                raise Boom
        with factory.session_scope() as joined:  # the outer level is not doomed
            joined.add(User(name="after"))
    assert observer.names() == ["after", "outer"]


# -- point 10: a doomed unit cannot commit ---------------------------------------------


def test_manual_commit_inside_a_doomed_unit_persists_nothing(
    factory: SessionFactory, observer: Observer
) -> None:
    with pytest.raises(DoomedTransactionError), factory.session_scope() as session:
        session.add(User(name="before-doom"))
        with contextlib.suppress(Boom), factory.session_scope():
            raise Boom
        session.add(User(name="after-doom"))
        with pytest.raises(DoomedTransactionError):
            session.commit()
    assert observer.count() == 0
    three_units_commit(factory, observer, "later")


# -- point 11: receivers never hide an error -------------------------------------------


@pytest.mark.parametrize("signal_name", ["session_rolled_back", "session_closed"])
def test_a_raising_receiver_never_replaces_the_callers_exception(
    factory: SessionFactory, observer: Observer, signal_name: str, caplog: Any
) -> None:
    signal = getattr(signals, signal_name)

    def receiver(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver failed")

    signal.connect(receiver)
    try:
        error = Boom("original")
        with caplog.at_level(logging.ERROR, "flask_unified_session"):
            with pytest.raises(Boom) as info, factory.session_scope() as session:
                session.add(User(name="lost"))
                raise error
        assert info.value is error
        assert "receiver" in caplog.text
    finally:
        signal.disconnect(receiver)
    assert observer.count() == 0
    assert checked_out(factory) == 0


def test_a_raising_opened_receiver_does_not_stop_the_unit(
    factory: SessionFactory, observer: Observer
) -> None:
    def receiver(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver failed")

    signals.session_opened.connect(receiver)
    try:
        with factory.session_scope() as session:
            session.add(User(name="kept"))
    finally:
        signals.session_opened.disconnect(receiver)
    assert observer.names() == ["kept"]


def test_a_transaction_sets_every_slot_of_its_outermost_level():
    """Transaction initialises Level's slots itself (no super().__init__): none is missed."""
    from flask_unified_session.unit_of_work import Level, Transaction

    session = Session(sa.create_engine("sqlite://"))
    try:
        transaction = Transaction("key", session, None, True)
        level = Level(None, None)
        for name in Level.__slots__:
            assert getattr(transaction, name) == getattr(level, name), name
    finally:
        session.close()
