"""The rules of ``on_commit`` that need no server: SQLite only."""

from __future__ import annotations

import logging
import threading

import pytest
import sqlalchemy as sa

from flask_unified_session import (
    DoomedTransactionError,
    SessionFactory,
    on_commit,
    session_scope,
    set_default_factory,
)
from tests.conftest import Observer, User
from tests.transactions.test_on_commit import recorder


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_rollback_runs_nothing(factory: SessionFactory, observer: Observer) -> None:
    calls, hook = recorder()
    with pytest.raises(ValueError), factory.session_scope() as session:
        session.add(User(name="ann"))
        on_commit(hook("dropped"))
        raise ValueError("rolled back")
    with factory.session_scope():
        pass  # a later unit does not run the dropped hook
    assert calls == []
    assert observer.count() == 0


def test_a_failed_commit_runs_nothing(factory: SessionFactory, observer: Observer) -> None:
    calls, hook = recorder()
    with factory.session_scope() as session:
        session.add(User(name="ann"))
    with pytest.raises(sa.exc.IntegrityError), factory.session_scope() as session:
        session.add(User(name="ann"))  # the unique violation surfaces at the commit
        on_commit(hook("dropped"))
    assert calls == []


def test_a_hook_of_a_doomed_level_is_dropped(factory: SessionFactory, observer: Observer) -> None:
    calls, hook = recorder()
    with factory.session_scope():
        with pytest.raises(DoomedTransactionError), factory.session_scope(nested=True):
            try:
                with factory.session_scope():
                    raise ValueError("dooms the savepoint")
            except ValueError:
                pass
            on_commit(hook("inside the doomed savepoint"))  # accepted, dropped at its end
        on_commit(hook("outer"))
    assert calls == ["outer"]

    with pytest.raises(DoomedTransactionError), factory.session_scope():
        try:
            with factory.session_scope():
                raise ValueError("dooms the unit")
        except ValueError:
            pass
        on_commit(hook("inside the doomed unit"))
    assert calls == ["outer"]


def test_without_a_unit_the_hook_runs_at_once(factory: SessionFactory) -> None:
    calls, hook = recorder()
    on_commit(hook("now"))
    assert calls == ["now"]
    with factory.session_scope():
        pass
    on_commit(hook("after a unit"))
    assert calls == ["now", "after a unit"]


def test_hooks_run_once_and_a_hook_may_open_a_unit(
    factory: SessionFactory, observer: Observer
) -> None:
    calls, hook = recorder()

    def follow_up() -> None:
        with factory.session_scope() as session:
            session.add(User(name="from the hook"))
            on_commit(hook("registered by a hook"))
        on_commit(hook("no unit in the hook"))

    with factory.session_scope() as session:
        session.add(User(name="ann"))
        on_commit(follow_up)
    assert calls == ["registered by a hook", "no unit in the hook"]
    assert observer.names() == ["ann", "from the hook"]
    with factory.session_scope():
        pass
    assert len(calls) == 2


def test_robust_hooks_log_and_others_run(
    factory: SessionFactory, observer: Observer, caplog: pytest.LogCaptureFixture
) -> None:
    calls, hook = recorder()

    def fails() -> None:
        raise RuntimeError("the mail server is down")

    with caplog.at_level(logging.ERROR, "flask_unified_session"):
        with factory.session_scope() as session:
            session.add(User(name="ann"))
            on_commit(fails, robust=True)
            on_commit(hook("after the robust failure"))
    assert calls == ["after the robust failure"]
    assert "on_commit hook failed" in caplog.text
    on_commit(fails, robust=True)  # no unit: runs at once, and is robust too


def test_the_latest_unit_or_the_named_factory(
    factory: SessionFactory, observer: Observer, db_url: str
) -> None:
    calls, hook = recorder()
    other = SessionFactory(db_url)  # another key (on the same engine, shared)
    try:
        with factory.session_scope():
            with pytest.raises(ValueError), other.session_scope():
                on_commit(hook("latest: the other factory's failed unit"))
                on_commit(hook("named: the outer"), factory=factory)
                raise ValueError
        assert calls == ["named: the outer"]
    finally:
        other.dispose()


def test_a_thread_does_not_register_on_its_parents_unit(factory: SessionFactory) -> None:
    calls, hook = recorder()
    with factory.session_scope():
        thread = threading.Thread(target=lambda: on_commit(hook("thread: at once")))
        thread.start()
        thread.join()
        assert calls == ["thread: at once"]


def test_the_default_factory_outside_an_app_context(
    db_url: str, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, hook = recorder()
    monkeypatch.setenv("DATABASE_URL", db_url)
    set_default_factory(None)
    with session_scope() as session:
        session.add(User(name="ann"))
        on_commit(hook("default"))
    assert calls == ["default"]
