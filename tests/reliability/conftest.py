"""Helpers for the fault tests: sizes (short or FUS_SOAK=1), servers, an admin connection.

Everything here is checked from outside the code under test: ``pg_stat_activity`` through a
connection of its own, the pool's ``checkedout()``, HTTP through a real socket.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from waitress.server import create_server

from tests.conftest import server_url

SOAK = os.environ.get("FUS_SOAK", "").lower() in ("1", "true", "yes", "on")


def size(short: int, soak: int) -> int:
    """``short`` in ``make test``, ``soak`` under FUS_SOAK=1 (``make soak``)."""
    return soak if SOAK else short


def app_name(tag: str) -> str:
    """A PostgreSQL application_name unique to this run and test (max 63 bytes)."""
    return f"fus_rel_{os.getpid()}_{tag}"[:63]


def pg_engine_options(name: str, **extra: Any) -> dict[str, Any]:
    """Engine options naming the app's connections, so they can be found and killed."""
    return {"connect_args": {"application_name": name, "connect_timeout": 2}, **extra}


class PgAdmin:
    """An independent connection (NullPool) to look at and terminate the app's backends."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=NullPool)

    def backends(self, name: str) -> list[int]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :n"),
                {"n": name},
            )
            return sorted(int(r[0]) for r in rows)

    def terminate(self, name: str) -> int:
        """Kill every backend of ``name``; the number killed."""
        with self.engine.connect() as c:
            rows = c.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            return sum(1 for r in rows if r[0])

    def dispose(self) -> None:
        self.engine.dispose()


@pytest.fixture
def pg_url() -> str:
    return server_url("postgresql")


@pytest.fixture
def mariadb_url() -> str:
    return server_url("mariadb")


@pytest.fixture
def pg_admin(pg_url: str) -> Iterator[PgAdmin]:
    admin = PgAdmin(pg_url)
    yield admin
    admin.dispose()


@contextmanager
def serve(app: Any, threads: int) -> Iterator[int]:
    """``app`` under waitress on 127.0.0.1 (a free port) with ``threads``; yields the port.

    Stopped and its threads joined on exit, so nothing outlives the test.
    """
    server: Any = create_server(app, host="127.0.0.1", port=0, threads=threads)
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    try:
        yield int(server.effective_port)
    finally:
        # Stop the loop before closing its sockets: closing a socket that the loop's
        # select() is waiting on raises EBADF in the server thread (seen in CI). The loop
        # runs while its map is not empty; emptying it and waking it ends the loop.
        channels = list(server._map.values())
        server._map.clear()
        server.trigger.pull_trigger()
        runner.join(timeout=10)
        server.task_dispatcher.shutdown(timeout=10)
        for channel in channels:
            channel.close()
