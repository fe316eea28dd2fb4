"""Module-level functions: a default factory configured from the environment on first use."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import flask_unified_session as fus
from flask_unified_session import session_factory
from tests.conftest import Observer, User, lock_held_elsewhere


@pytest.fixture
def env_url(db_url: str, observer: Observer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", db_url)
    return db_url


def test_default_factory_reads_environment_on_first_use(env_url: str, observer: Observer) -> None:
    """session_scope() with only DATABASE_URL set commits through the default factory."""
    with fus.session_scope() as session:
        session.add(User(name="env"))
    assert observer.names() == ["env"]
    assert fus.get_engine() is fus.get_default_factory().engine


def test_default_factory_missing_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DATABASE_URL: the first use raises the error naming it."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ValueError, match="DATABASE_URL"):
        fus.session_scope()


def test_module_functions(env_url: str, observer: Observer) -> None:
    """create_session, get_session/close_session and the generator all use the default factory."""
    session = fus.create_session()
    session.add(User(name="a"))
    session.commit()
    session.close()
    legacy = session_factory.get_session()
    legacy.add(User(name="b"))
    legacy.commit()
    session_factory.close_session(legacy)
    generator = fus.get_session_generator()
    generated = next(generator)
    generated.add(User(name="c"))
    generated.commit()
    generator.close()
    assert observer.names() == ["a", "b", "c"]
    assert fus.get_engine().pool.checkedout() == 0  # type: ignore[attr-defined]


def test_no_bare_session_names_at_package_level() -> None:
    """The package exports neither 'session' nor 'get_session' (flask.session is different)."""
    assert "session" not in fus.__all__ and "get_session" not in fus.__all__
    assert not hasattr(fus, "get_session")


def test_asyncio_tasks_do_not_join_each_other(env_url: str) -> None:
    """A task started inside a unit of work gets its own session, not the parent's."""

    async def main() -> tuple[object, object]:
        with fus.session_scope() as outer:

            async def child() -> object:
                with fus.session_scope() as inner:
                    return inner

            inner = await asyncio.create_task(child())
            return outer, inner

    outer, inner = asyncio.run(main())
    assert outer is not inner


def test_script_with_only_database_url(db_url: str, observer: Observer, tmp_path: Path) -> None:
    """A plain script with only DATABASE_URL in its environment commits."""
    script = tmp_path / "script.py"
    script.write_text(
        "import sqlalchemy as sa\n"
        "from flask_unified_session import session_scope\n"
        "with session_scope() as s:\n"
        f'    s.execute(sa.text("INSERT INTO {User.__tablename__} (name, note) '
        "VALUES ('script', '')\"))\n"
    )
    subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        check=True,
        env={"DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"},
    )
    assert observer.names() == ["script"]


def test_set_default_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """set_default_factory() replaces the default; None reads the environment again."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    factory = fus.SessionFactory(f"sqlite:///{tmp_path}/a.db")
    fus.set_default_factory(factory)
    with fus.session_scope() as session:
        assert session.bind is factory.engine
        session.execute(sa.text("select 1"))
    fus.set_default_factory(None)
    with pytest.raises(ValueError, match="DATABASE_URL"):
        fus.create_session()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_child_forked_while_another_thread_holds_the_default_lock_makes_its_own(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default factories' lock is made again in a forked child (it was held at fork)."""
    from flask_unified_session import asyncio as fus_asyncio
    from flask_unified_session.asyncio import _factory as async_factory

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/forked.db")
    fus.set_default_factory(None)
    fus_asyncio.set_default_async_factory(None)
    default = session_factory._default if kind == "sync" else async_factory._default
    get = fus.get_default_factory if kind == "sync" else fus_asyncio.get_default_async_factory
    with lock_held_elsewhere(default._lock):
        pid = os.fork()
        if pid == 0:  # the child: the thread holding the lock does not exist here
            signal.alarm(10)  # a child that waits on the parent's lock dies of SIGALRM
            try:
                os._exit(0 if get() is not None else 2)
            except BaseException:
                os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    fus.set_default_factory(None)
    fus_asyncio.set_default_async_factory(None)
