"""Shared fixtures: the three real databases, a schema, and an independent observer.

Every test that takes ``db_url`` runs on SQLite (a file, so a second connection can look),
PostgreSQL (``TEST_POSTGRESQL_URL``) and MariaDB (``TEST_MARIADB_URL``). Without a URL the
server tests skip and say which variable to set; under ``CI`` a missing or unreachable
server is a failure, never a skip.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from flask_unified_session import dispose_engines, engines, set_default_factory
from flask_unified_session.asyncio import set_default_async_factory

# Tables carry the pid so that two test runs sharing a server never collide.
RUN = os.getpid()

SERVERS = {
    "postgresql": ("TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": ("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = f"fus_user_{RUN}"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80), unique=True)
    note: Mapped[str] = mapped_column(sa.String(200), default="")


def server_url(backend: str) -> str:
    """The URL of a real server, or skip (fail under CI) with the variable to set."""
    variable, example = SERVERS[backend]
    url = os.environ.get(variable)
    if not url:
        message = f"{backend} tests need {variable}, for example {variable}={example}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: server tests must run)")
        pytest.skip(message)
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        message = f"{backend} at {variable} is unreachable: {exc.orig}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: os.PathLike[str]) -> str:
    """A database URL on each backend; SQLite is a file so a second connection sees it."""
    if backend == "sqlite":
        return f"sqlite:///{os.path.join(tmp_path, 'test.db')}"
    return server_url(backend)


class Observer:
    """A connection of its own (no pool, not the library's): sees only what was committed."""

    def __init__(self, url: str) -> None:
        # A lock timeout, so that a test that leaks a transaction fails instead of hanging.
        connect_args: dict[str, object] = {}
        if url.startswith("postgresql"):
            connect_args = {"options": "-c lock_timeout=10000"}
        elif url.startswith("mysql"):
            connect_args = {"init_command": "SET SESSION lock_wait_timeout=10"}
        self.engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params).scalar()

    def names(self) -> list[str]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(User.name).order_by(User.name))
            return [row[0] for row in rows]

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(User)).scalar_one()
            )

    def dispose(self) -> None:
        self.engine.dispose()


@pytest.fixture
def observer(db_url: str) -> Iterator[Observer]:
    """The ``User`` table created on ``db_url``, and an independent connection to it."""
    watcher = Observer(db_url)
    Base.metadata.drop_all(watcher.engine)
    Base.metadata.create_all(watcher.engine)
    yield watcher
    dispose_engines()
    Base.metadata.drop_all(watcher.engine)
    watcher.dispose()


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    """Every test starts with no engine in the registry and no default factory."""
    yield
    set_default_factory(None)
    set_default_async_factory(None)
    dispose_engines()
    gc.collect()


@contextmanager
def registry_lock_held_elsewhere() -> Iterator[None]:
    """Another thread holds the engine registry's lock for the block (as one may at fork)."""
    with lock_held_elsewhere(engines._lock):
        yield


@contextmanager
def lock_held_elsewhere(lock: AbstractContextManager[object]) -> Iterator[None]:
    """Another thread holds ``lock`` for the block."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5), "the holder thread never took the lock"
        yield
    finally:
        release.set()
        holder.join()


def collects_without_the_registry_lock() -> bool:
    """True if a gc.collect() ends within 5 s while another thread holds the lock."""
    with registry_lock_held_elsewhere():
        collector = threading.Thread(target=gc.collect)
        collector.start()
        collector.join(5)
        finished = not collector.is_alive()
    collector.join()
    return finished
