"""FastAPI fixtures: a Flask app and a FastAPI app on the same database, one process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from flask_unified_session.asyncio import set_default_async_factory

T = TypeVar("T")

#: PostgreSQL backends of this run carry it, so pg_stat_activity counts only ours
APP_NAME = f"fus_fastapi_{os.getpid()}"


def tagged(db_url: str) -> str:
    """``db_url`` with an application_name on PostgreSQL (other backends: unchanged)."""
    url = sa.make_url(db_url)
    if url.get_backend_name() != "postgresql":
        return db_url
    return url.update_query_dict({"application_name": APP_NAME}).render_as_string(
        hide_password=False
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def client(app: FastAPI) -> httpx.AsyncClient:
    """An ASGI client that returns the 500 the server would send instead of raising."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture
def env_url(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """DATABASE_URL set to ``db_url`` (tagged) for the default factories."""
    url = tagged(db_url)
    monkeypatch.setenv("DATABASE_URL", url)
    set_default_async_factory(None)
    yield url
    set_default_async_factory(None)


class DeferredObserver:
    """An observer of a PostgreSQL table whose UNIQUE constraint is checked at COMMIT."""

    def __init__(self, url: str) -> None:
        from tests.conftest import Observer

        self.observer = Observer(url)
        self.deferred_table = f"fus_deferred_{os.getpid()}"
        with self.observer.engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {self.deferred_table}"))
            connection.execute(
                sa.text(
                    f"CREATE TABLE {self.deferred_table} "
                    "(x integer UNIQUE DEFERRABLE INITIALLY DEFERRED)"
                )
            )

    def scalar(self, sql: str) -> object:
        return self.observer.scalar(sql)

    def dispose(self) -> None:
        with self.observer.engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {self.deferred_table}"))
        self.observer.dispose()


@pytest.fixture
def observer_pg(monkeypatch: pytest.MonkeyPatch) -> Iterator[DeferredObserver]:
    """PostgreSQL as DATABASE_URL, and a table with a deferred unique constraint."""
    from tests.conftest import server_url

    url = server_url("postgresql")
    monkeypatch.setenv("DATABASE_URL", tagged(url))
    set_default_async_factory(None)
    watcher = DeferredObserver(url)
    yield watcher
    set_default_async_factory(None)
    watcher.dispose()
