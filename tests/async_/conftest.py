"""Async fixtures: an async factory on each backend's async twin of ``db_url``."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from flask_unified_session.asyncio import AsyncSessionFactory, set_default_async_factory
from tests.conftest import Observer

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """One event loop per call, as asyncio.run() gives (its engines die with it)."""
    return asyncio.run(coro)


@pytest.fixture
def afactory(db_url: str, observer: Observer) -> Iterator[AsyncSessionFactory]:
    yield AsyncSessionFactory(db_url)
    set_default_async_factory(None)


def checked_out(factory: AsyncSessionFactory) -> int:
    """Inside a coroutine: connections of the loop's engine checked out now."""
    return int(factory.engine.pool.checkedout())  # type: ignore[attr-defined]
