"""PgBouncer in transaction mode: what server-side prepared statements do there, and the cure.

PgBouncer hands each transaction to whichever server connection is free. psycopg prepares
a query on the server once the connection has run it ``prepare_threshold`` times (5 by
default) and reuses the name (``_pg3_0``, ...) afterwards: the next transaction may run on a
server connection that never saw the name (``InvalidSqlStatementName``) or that already has
it from another client (``DuplicatePreparedStatement``). PgBouncer 1.21 and later can track
prepared statements (``max_prepared_statements``); ``scripts/servers.sh`` keeps that off,
and Debian 12's 1.18 has no such thing, so these tests see what transaction pooling does.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa

from flask_unified_session import SessionFactory
from flask_unified_session.config import Settings

THREADS = 4
QUERIES = 200  # per thread, each in a transaction of its own
# What psycopg raises when a prepared statement and a server connection disagree.
PREPARED_STATEMENT_ERRORS = {"DuplicatePreparedStatement", "InvalidSqlStatementName"}


def admin(pgbouncer_url: str, command: str) -> list[tuple[object, ...]]:
    """A command on PgBouncer's admin console (simple query protocol only)."""
    url = sa.make_url(pgbouncer_url)
    with psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        dbname="pgbouncer",
        autocommit=True,
        connect_timeout=3,
        cursor_factory=psycopg.ClientCursor,
    ) as connection:
        cursor = connection.execute(command)
        return list(cursor.fetchall()) if cursor.description is not None else []


@pytest.fixture
def pgbouncer(pgbouncer_url: str) -> Iterator[str]:
    """PgBouncer's URL, on fresh server connections: no names from an earlier test, none
    left to the next one, and none from before a restart of the primary."""
    admin(pgbouncer_url, "RECONNECT")
    yield pgbouncer_url
    admin(pgbouncer_url, "RECONNECT")


def hammer(factory: SessionFactory) -> tuple[Counter[str], int]:
    """THREADS threads x QUERIES parameterised queries, one unit of work each.

    Returns the errors by psycopg class name, and the number of queries that answered right.
    """
    # The pool starts with one client connection per thread, as a busy app's pool would
    # have; its queue hands them out in turn, so each one runs its share of the queries.
    # (Four clients that each prepare the same statement on two server connections: two
    # of them meet a server that already has the name, whatever the timing.)
    warm = [factory.engine.connect() for _ in range(THREADS)]
    for connection in warm:
        connection.exec_driver_sql("SELECT 1")
        connection.commit()
    for connection in warm:
        connection.close()
    errors: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    answered = 0
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)

    def work(worker: int) -> None:
        nonlocal answered
        barrier.wait()
        for i in range(QUERIES):
            n = worker * QUERIES + i
            try:
                with factory.session_scope() as session:
                    value = session.scalar(sa.text("SELECT CAST(:n AS integer) + 1"), {"n": n})
            except sa.exc.DBAPIError as exc:
                with lock:
                    errors[type(exc.orig).__name__] += 1
            except BaseException as exc:
                with lock:
                    unexpected.append(exc)
                return
            else:
                with lock:
                    answered += value == n + 1

    threads = [threading.Thread(target=work, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not unexpected, unexpected
    return errors, answered


def run(make_factory: Callable[[], SessionFactory]) -> tuple[Counter[str], int]:
    factory = make_factory()
    try:
        return hammer(factory)
    finally:
        factory.dispose()


def test_pgbouncer_pools_transactions_in_front_of_the_primary(pgbouncer: str) -> None:
    config = {str(row[0]): str(row[1]) for row in admin(pgbouncer, "SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert int(config["default_pool_size"]) < THREADS  # clients share server connections
    assert config.get("max_prepared_statements", "0") == "0"  # 1.21+: tracking kept off
    with SessionFactory(pgbouncer).session_scope() as session:
        assert session.scalar(sa.text("SELECT pg_is_in_recovery()")) is False
        assert session.scalar(sa.text("SELECT inet_server_port()")) == 5432


def test_control_psycopg_defaults_break_behind_transaction_pooling(pgbouncer: str) -> None:
    errors, answered = run(lambda: SessionFactory(pgbouncer))
    print(f"\npsycopg defaults: {sum(errors.values())} errors {dict(errors)}, {answered} right")
    assert sum(errors.values()) >= 1, "no prepared-statement error: the control shows nothing"
    assert set(errors) <= PREPARED_STATEMENT_ERRORS, errors
    assert answered + sum(errors.values()) == THREADS * QUERIES


def _has_pgbouncer_setting() -> bool:
    return "pgbouncer" in {f.name for f in dataclasses.fields(Settings)}


def _without_prepare(url: str) -> SessionFactory:
    engine = sa.create_engine(url, connect_args={"prepare_threshold": None})
    factory = SessionFactory(engine=engine)
    factory.dispose = engine.dispose  # type: ignore[method-assign]  # adopted: ours to close
    return factory


def _db_pgbouncer_transaction(url: str) -> SessionFactory:
    if not _has_pgbouncer_setting():
        pytest.skip("Settings has no pgbouncer field yet (DB_PGBOUNCER)")
    settings = Settings.from_env({"DATABASE_URL": url, "DB_PGBOUNCER": "transaction"})
    return SessionFactory(settings=settings)


@pytest.mark.parametrize(
    "make",
    [_without_prepare, _db_pgbouncer_transaction],
    ids=["prepare_threshold_none", "DB_PGBOUNCER"],
)
def test_without_server_side_prepared_statements_nothing_breaks(
    pgbouncer: str, make: Callable[[str], SessionFactory]
) -> None:
    errors, answered = run(lambda: make(pgbouncer))
    print(f"\nno prepared statements: {sum(errors.values())} errors {dict(errors)}")
    assert not errors
    assert answered == THREADS * QUERIES
