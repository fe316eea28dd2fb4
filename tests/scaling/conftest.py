"""The servers past the primary: a streaming replica and PgBouncer (``scripts/servers.sh``).

``TEST_REPLICA_URL`` points at a PostgreSQL streaming replica of the primary
(``TEST_POSTGRESQL_URL``), ``TEST_PGBOUNCER_URL`` at a PgBouncer in transaction mode in
front of it. Without a variable, or with its server down, the tests skip and say how to
start it; under ``CI`` that is a failure, never a skip.

Every look here goes through connections of its own (``NullPool``), never the library's.
A test that changes a server (an apply delay, a stopped replica) puts it back, even when
it fails, and holds a session advisory lock on the primary meanwhile: test runs that
share these servers (a developer's and CI's) change the replica one at a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.conftest import server_url

RUN = os.getpid()
START = "start them with scripts/servers.sh start (as root)"

SCALING_SERVERS = {
    "replica": ("TEST_REPLICA_URL", "postgresql+psycopg://postgres@127.0.0.1:5433/test"),
    "pgbouncer": ("TEST_PGBOUNCER_URL", "postgresql+psycopg://postgres@127.0.0.1:6432/test"),
}


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: the scaling tests must run)")
    pytest.skip(message)


def scaling_url(server: str) -> str:
    """The URL of the replica or PgBouncer, or skip (fail under CI) saying how to get it."""
    variable, example = SCALING_SERVERS[server]
    url = os.environ.get(variable)
    if not url:
        _skip_or_fail(f"{server} tests need {variable}, for example {variable}={example}; {START}")
        raise AssertionError("unreachable")
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        _skip_or_fail(f"{server} at {variable} is unreachable ({exc.orig}); {START}")
    finally:
        engine.dispose()
    return url


class Server:
    """An independent connection to one PostgreSQL server: autocommit, no pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 3},
        )

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params).scalar()

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text(sql), params)

    def dispose(self) -> None:
        self.engine.dispose()


class Primary(Server):
    def wal_lsn(self) -> str:
        """Where the primary's WAL is now: everything committed so far is before it."""
        return str(self.scalar("SELECT pg_current_wal_lsn()::text"))


# pg_advisory_lock key of a change to the replica ("fus" "replica").
REPLICA_CHANGE_LOCK = 0x66757372_65706C


class Replica(Server):
    """The streaming replica, with the means to lag it and to stop it, and to put it back."""

    def __init__(self, url: str, primary_url: str | None = None) -> None:
        super().__init__(url)
        self.primary_url = primary_url

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """One change of the replica at a time across the test runs on these servers."""
        if self.primary_url is None:
            yield
            return
        engine = sa.create_engine(
            self.primary_url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 3},
        )
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SET lock_timeout = '120s'"))
                connection.execute(
                    sa.text("SELECT pg_advisory_lock(:key)"), {"key": REPLICA_CHANGE_LOCK}
                )
                try:
                    yield
                finally:
                    # A connection lost meanwhile (a fault test restarted the primary) took
                    # the lock with it.
                    with suppress(sa.exc.DBAPIError):
                        connection.execute(
                            sa.text("SELECT pg_advisory_unlock(:key)"),
                            {"key": REPLICA_CHANGE_LOCK},
                        )
        finally:
            engine.dispose()

    def replayed(self, lsn: str) -> bool:
        return bool(self.scalar("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)", lsn=lsn))

    def wait_for_replay(self, lsn: str, timeout: float = 15.0) -> float:
        """Wait until the replica has replayed up to ``lsn``; the seconds it took."""
        started = time.monotonic()
        while not self.replayed(lsn):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"the replica did not replay up to {lsn} in {timeout} s")
            time.sleep(0.02)
        return time.monotonic() - started

    def streaming(self) -> bool:
        try:
            return (
                self.scalar("SELECT status FROM pg_stat_wal_receiver") == "streaming"
                and self.scalar("SELECT pg_is_in_recovery()") is True
            )
        except sa.exc.OperationalError:
            return False

    def wait_streaming(self, timeout: float = 30.0) -> None:
        started = time.monotonic()
        while not self.streaming():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"the replica is not streaming after {timeout} s")
            time.sleep(0.1)

    def _set_apply_delay(self, value: str | None) -> None:
        if value is None:
            self.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        else:
            # ALTER SYSTEM takes no bind parameters; the value is ours, not a user's.
            self.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{value}'")
        self.execute("SELECT pg_reload_conf()")

    def _wait_setting(self, expected: str, timeout: float = 5.0) -> None:
        started = time.monotonic()
        while (shown := self.scalar("SHOW recovery_min_apply_delay")) != expected:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"recovery_min_apply_delay is {shown!r}, not {expected!r}")
            time.sleep(0.02)

    @contextmanager
    def apply_delay(self, value: str) -> Iterator[None]:
        """Replay each commit ``value`` after it happened; then undo.

        ``value`` as ``SHOW`` spells it (``'1500ms'``, ``'2s'``): the block starts once the
        replica shows it.
        """
        with self._changing():
            before = self.scalar("SHOW recovery_min_apply_delay")
            self._set_apply_delay(value)
            try:
                self._wait_setting(value)
                yield
            finally:
                self._set_apply_delay(None if before == "0" else str(before))
                self._wait_setting(str(before))

    def cluster(self) -> tuple[str, str]:
        """``('15', 'replica')``: Debian's version and name of the cluster."""
        version, name = str(self.scalar("SHOW cluster_name")).split("/", 1)
        return version, name

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The replica's server stopped for the block, then started and streaming again."""
        if shutil.which("pg_ctlcluster") is None or os.geteuid() not in (0, _postgres_uid()):
            _skip_or_fail("stopping the replica needs pg_ctlcluster, as root or postgres")
        version, name = self.cluster()
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name]
        with self._changing():
            subprocess.run([*command, "stop", "-m", "fast"], check=True, timeout=60)
            try:
                yield
            finally:
                subprocess.run([*command, "start"], check=True, timeout=60)
                self.wait_streaming()


def _postgres_uid() -> int:
    try:
        import pwd

        return pwd.getpwnam("postgres").pw_uid
    except (ImportError, KeyError):
        return -1


@pytest.fixture(scope="session")
def primary_url() -> str:
    return server_url("postgresql")


@pytest.fixture(scope="session")
def replica_url() -> str:
    return scaling_url("replica")


@pytest.fixture(scope="session")
def pgbouncer_url() -> str:
    return scaling_url("pgbouncer")


@pytest.fixture
def primary(primary_url: str) -> Iterator[Primary]:
    server = Primary(primary_url)
    yield server
    server.dispose()


@pytest.fixture
def replica(replica_url: str, primary_url: str) -> Iterator[Replica]:
    """The replica, checked to be one and to stream from the primary.

    A replica whose primary was just restarted (the long fault tests do that) reconnects
    within a few seconds: it gets them before it counts as absent.
    """
    server = Replica(replica_url, primary_url)
    try:
        server.wait_streaming(timeout=15)
    except AssertionError:
        _skip_or_fail(f"the server at TEST_REPLICA_URL is not a streaming replica; {START}")
    yield server
    server.dispose()


@pytest.fixture
def replicated_table(primary: Primary, replica: Replica) -> Iterator[str]:
    """A table of this run on the primary, already replayed on the replica; dropped after."""
    name = f"fus_scaling_{RUN}"
    primary.execute(f"DROP TABLE IF EXISTS {name}")
    primary.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, note text NOT NULL)")
    replica.wait_for_replay(primary.wal_lsn())
    yield name
    primary.execute(f"DROP TABLE IF EXISTS {name}")
