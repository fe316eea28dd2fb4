"""``captured_on_commit`` and ``capture_on_commit``: the hooks of a test, held."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from flask_unified_session import SessionFactory, on_commit
from flask_unified_session.testing import RollbackIsolation
from flask_unified_session.testing.on_commit import CapturedHooks, capture_on_commit
from tests.conftest import Observer, User


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def unified_rollback_targets(factory: SessionFactory) -> list[object]:
    return [factory]


def test_under_rollback_isolation_the_hooks_are_held_until_run(
    factory: SessionFactory,
    observer: Observer,
    unified_rollback: RollbackIsolation,
    captured_on_commit: CapturedHooks,
) -> None:
    sent: list[str] = []
    with factory.session_scope() as session:
        session.add(User(name="ann"))
        on_commit(lambda: sent.append("welcome mail"))
    # The commit only released a SAVEPOINT of the test's connection: nothing ran.
    assert sent == []
    assert len(captured_on_commit) == 1
    with factory.session_scope() as session:
        assert session.scalars(sa.select(User.name)).all() == ["ann"]
    captured_on_commit.run()
    assert sent == ["welcome mail"]
    captured_on_commit.run()  # each hook runs once
    assert sent == ["welcome mail"]
    assert len(captured_on_commit) == 1
    assert captured_on_commit.pending == []


def test_rolled_back_work_captures_nothing(
    factory: SessionFactory, captured_on_commit: CapturedHooks
) -> None:
    with pytest.raises(ValueError), factory.session_scope():
        on_commit(lambda: None)
        raise ValueError
    with factory.session_scope():
        with pytest.raises(ValueError), factory.session_scope(nested=True):
            on_commit(lambda: None)
            raise ValueError
    assert list(captured_on_commit) == []


def test_capture_in_order_with_execute(factory: SessionFactory) -> None:
    calls: list[str] = []

    def first() -> None:
        calls.append("first")
        on_commit(lambda: calls.append("registered by the first"))

    with capture_on_commit(execute=True) as hooks:
        with factory.session_scope():
            on_commit(first)
            on_commit(lambda: calls.append("second"))
        on_commit(lambda: calls.append("no unit"))
        assert calls == []
        assert len(hooks) == 3
        assert hooks[0] is first
    # As after a real commit: a hook's own on_commit (no unit active) runs at once.
    assert calls == ["first", "registered by the first", "second", "no unit"]
    assert len(hooks) == 3


def test_a_failed_block_does_not_execute(factory: SessionFactory) -> None:
    calls: list[str] = []
    with pytest.raises(ValueError), capture_on_commit(execute=True):
        with factory.session_scope():
            on_commit(lambda: calls.append("held"))
        raise ValueError
    assert calls == []
    on_commit(lambda: calls.append("after the capture: at once"))
    assert calls == ["after the capture: at once"]


def test_run_is_robust_like_the_commit(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def fails() -> None:
        raise RuntimeError("broker down")

    with capture_on_commit() as hooks:
        on_commit(fails, robust=True)
        on_commit(lambda: calls.append("after robust"))
        on_commit(fails)
        on_commit(lambda: calls.append("after non-robust"))
        with caplog.at_level(logging.ERROR, "flask_unified_session"):
            with pytest.raises(RuntimeError):
                hooks.run()
        assert calls == ["after robust"]
        assert "on_commit hook failed" in caplog.text
        assert len(hooks.pending) == 1
        hooks.run()
    assert calls == ["after robust", "after non-robust"]


def test_nested_captures_take_their_own_hooks() -> None:
    with capture_on_commit() as outer:
        with capture_on_commit() as inner:
            on_commit(lambda: None)
        on_commit(lambda: None)
        on_commit(lambda: None)
    assert (len(outer), len(inner)) == (2, 1)
    hooks = CapturedHooks()
    assert repr(hooks) == "<CapturedHooks 0 run, 0 pending>"
    hooks.clear()
