"""The streaming replica itself: it is one, it follows the primary, and it can be lagged.

These pin the server that the readonly units run on, before any routing: if one of them
fails, the routing tests would prove nothing.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from .conftest import Primary, Replica


def test_the_replica_is_in_recovery_and_the_primary_is_not(
    primary: Primary, replica: Replica, primary_url: str, replica_url: str
) -> None:
    assert replica.scalar("SELECT pg_is_in_recovery()") is True
    assert primary.scalar("SELECT pg_is_in_recovery()") is False
    assert replica.scalar("SELECT inet_server_port()") == sa.make_url(replica_url).port
    assert primary.scalar("SELECT inet_server_port()") == sa.make_url(primary_url).port
    # The same cluster: the replica was made from the primary's base backup.
    identity = "SELECT system_identifier FROM pg_control_system()"
    assert replica.scalar(identity) == primary.scalar(identity)


def test_the_replica_streams_from_the_primary(primary: Primary, replica: Replica) -> None:
    assert replica.scalar("SELECT status FROM pg_stat_wal_receiver") == "streaming"
    senders = primary.scalar("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
    assert senders >= 1


def test_a_committed_row_becomes_visible_on_the_replica(
    primary: Primary, replica: Replica, replicated_table: str
) -> None:
    primary.execute(f"INSERT INTO {replicated_table} (note) VALUES ('from the primary')")
    replica.wait_for_replay(primary.wal_lsn())
    assert replica.scalar(f"SELECT note FROM {replicated_table}") == "from the primary"


def test_a_write_on_the_replica_raises(replica: Replica, replicated_table: str) -> None:
    with pytest.raises(sa.exc.InternalError) as raised:
        replica.execute(f"INSERT INTO {replicated_table} (note) VALUES ('nope')")
    assert getattr(raised.value.orig, "sqlstate", None) == "25006"  # read_only_sql_transaction


def test_an_apply_delay_holds_a_commit_back_then_releases_it(
    primary: Primary, replica: Replica, replicated_table: str
) -> None:
    count = f"SELECT count(*) FROM {replicated_table}"
    with replica.apply_delay("1500ms"):
        assert replica.scalar("SHOW recovery_min_apply_delay") == "1500ms"
        committed = time.monotonic()
        primary.execute(f"INSERT INTO {replicated_table} (note) VALUES ('late')")
        assert primary.scalar(count) == 1
        assert replica.scalar(count) == 0  # right after the commit
        time.sleep(0.7)
        assert replica.scalar(count) == 0  # still held back, well inside the delay
        started = time.monotonic()
        while replica.scalar(count) == 0:
            assert time.monotonic() - started < 15, "the delayed commit never arrived"
            time.sleep(0.02)
        lag = time.monotonic() - committed
    assert 1.4 <= lag < 10, f"the row arrived {lag:.2f} s after its commit"
    assert replica.scalar("SHOW recovery_min_apply_delay") == "0"  # put back
    # Put back for real: the next commit arrives at once.
    primary.execute(f"INSERT INTO {replicated_table} (note) VALUES ('prompt')")
    assert replica.wait_for_replay(primary.wal_lsn()) < 1.0


def test_a_stopped_replica_refuses_connections_and_catches_up_when_started(
    primary: Primary, replica: Replica, replicated_table: str
) -> None:
    with replica.stopped():
        with pytest.raises(sa.exc.OperationalError):
            replica.scalar("SELECT 1")
        primary.execute(f"INSERT INTO {replicated_table} (note) VALUES ('while it was down')")
    assert replica.streaming()
    replica.wait_for_replay(primary.wal_lsn())
    assert replica.scalar(f"SELECT note FROM {replicated_table}") == "while it was down"
