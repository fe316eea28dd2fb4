"""Pooled connections killed by the server: the next unit of work reconnects (pre-ping)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from flask_unified_session import SessionFactory, Settings
from flask_unified_session.engines import forget_engine

from .conftest import PgAdmin, app_name

pytestmark = pytest.mark.reliability


def backend_pid(factory: SessionFactory, sql: str) -> int:
    with factory.session_scope() as session:
        return int(session.execute(sa.text(sql)).scalar_one())


@pytest.mark.postgresql
def test_unit_after_pg_terminate_backend_succeeds_on_a_new_connection(
    pg_url: str, pg_admin: PgAdmin
) -> None:
    """pg_terminate_backend on the app's pooled connections: the next unit still succeeds."""
    name = app_name("preping")
    engine = sa.create_engine(pg_url, pool_pre_ping=True, connect_args={"application_name": name})
    factory = SessionFactory(engine=engine)
    try:
        before = backend_pid(factory, "SELECT pg_backend_pid()")
        assert pg_admin.backends(name) == [before]  # idle in the pool, held by the app
        assert pg_admin.terminate(name) == 1
        deadline = time.monotonic() + 10
        while pg_admin.backends(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        after = backend_pid(factory, "SELECT pg_backend_pid()")
        assert after != before
        assert pg_admin.backends(name) == [after]
        assert engine.pool.checkedout() == 0
    finally:
        forget_engine(engine)
        engine.dispose()


@pytest.mark.postgresql
def test_owned_engine_pre_pings_by_default(pg_url: str, pg_admin: PgAdmin) -> None:
    """The factory's own engine (default settings) survives connections killed while idle.

    The default pre-ping pings a connection idle for longer than ``pool_pre_ping_idle``
    (1 s): a busy pool pays nothing, a connection killed in a quiet period is replaced.
    """
    name = app_name("preping_default")
    url = sa.make_url(pg_url).update_query_dict({"application_name": name})
    factory = SessionFactory(settings=Settings(url=url, source="test"))
    first = backend_pid(factory, "SELECT pg_backend_pid()")
    assert pg_admin.terminate(name) == 1
    time.sleep(factory.settings.pool_pre_ping_idle + 0.2)
    assert backend_pid(factory, "SELECT pg_backend_pid()") != first
    assert factory.engine.pool.checkedout() == 0


@pytest.mark.mariadb
def test_unit_after_mariadb_drops_idle_connection_succeeds(mariadb_url: str) -> None:
    """The server drops an idle pooled connection (wait_timeout): the next unit succeeds."""
    admin = sa.create_engine(mariadb_url, poolclass=sa.pool.NullPool)
    factory = SessionFactory(mariadb_url)
    try:
        with admin.connect() as c:
            previous = int(c.execute(sa.text("SELECT @@GLOBAL.wait_timeout")).scalar_one())
            try:
                # A new session copies the global value: the pool's connection gets 2 s.
                # Restored at once so that other clients of this server keep theirs.
                c.execute(sa.text("SET GLOBAL wait_timeout = 2"))
                first = backend_pid(factory, "SELECT CONNECTION_ID()")
            finally:
                c.execute(sa.text(f"SET GLOBAL wait_timeout = {previous}"))
            assert int(c.execute(sa.text("SELECT @@GLOBAL.wait_timeout")).scalar_one()) == previous
            time.sleep(3.5)  # the server closes the idle connection after 2 s
            gone = c.execute(
                sa.text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = :i"),
                {"i": first},
            ).scalar_one()
        assert gone == 0, "the server did not drop the idle connection"
        second = backend_pid(factory, "SELECT CONNECTION_ID()")
        assert second != first
        assert factory.engine.pool.checkedout() == 0
    finally:
        admin.dispose()
