"""Replica routing on the real streaming replica: ``readonly=True`` and read-your-writes.

Every test builds its own factory (primary ``TEST_POSTGRESQL_URL``, replica
``TEST_REPLICA_URL``) and disposes it; the servers are changed (lag, a stop) only through
the fixtures of ``conftest.py``, which put them back.
"""

from __future__ import annotations

import os
import random
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from flask_unified_session import SessionFactory, Settings, UnifiedSession, signals
from flask_unified_session.replicas import ReplicaUnavailableWarning, route_to_primary
from flask_unified_session.state import get_state

from .conftest import Primary, Replica

WHERE = sa.text("SELECT inet_server_port(), pg_is_in_recovery()")


def port(session: Session) -> int:
    return int(session.execute(sa.text("SELECT inet_server_port()")).scalar_one())


@pytest.fixture
def factory(primary_url: str, replica_url: str) -> Iterator[SessionFactory]:
    settings = Settings(url=sa.make_url(primary_url), replica_urls=(sa.make_url(replica_url),))
    made = SessionFactory(settings=settings)
    assert made.replicas is not None
    made.replicas.retry_after = 0.3
    yield made
    made.dispose()


def insert(factory: SessionFactory, table: str, note: str) -> None:
    with factory.session_scope() as session:
        session.execute(sa.text(f"INSERT INTO {table} (note) VALUES (:n)"), {"n": note})


def notes(session: Session, table: str) -> list[str]:
    return list(session.execute(sa.text(f"SELECT note FROM {table} ORDER BY id")).scalars())


# -- routing -----------------------------------------------------------------------------


def test_a_readonly_unit_runs_on_the_replica_and_a_default_one_on_the_primary(
    factory: SessionFactory, replica_url: str, primary_url: str
) -> None:
    with factory.session_scope(readonly=True) as session:
        assert tuple(session.execute(WHERE).one()) == (sa.make_url(replica_url).port, True)
        assert session.info["server"] == "replica 127.0.0.1:5433"
        assert session.info["readonly"] is True
    with factory.session_scope() as session:
        assert tuple(session.execute(WHERE).one()) == (sa.make_url(primary_url).port, False)
        assert session.info["server"] == "primary"


def test_an_insert_in_a_readonly_unit_raises(
    factory: SessionFactory, replicated_table: str
) -> None:
    with pytest.raises(sa.exc.InternalError) as raised:
        with factory.session_scope(readonly=True) as session:
            session.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('x')"))
    assert raised.value.orig.sqlstate == "25006"  # type: ignore[union-attr]


def test_without_replicas_a_readonly_unit_runs_on_the_primary_and_still_refuses_writes(
    primary_url: str, primary: Primary, replicated_table: str
) -> None:
    plain = SessionFactory(primary_url)
    try:
        assert plain.replicas is None
        with plain.session_scope(readonly=True) as session:
            assert port(session) == sa.make_url(primary_url).port
            assert session.info["server"] == "primary"
            with pytest.raises(sa.exc.InternalError) as raised:
                session.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('x')"))
            assert raised.value.orig.sqlstate == "25006"  # type: ignore[union-attr]
            session.rollback()
        # The read-only transaction does not outlive the unit on the pooled connection.
        insert(plain, replicated_table, "written")
        assert primary.scalar(f"SELECT count(*) FROM {replicated_table}") == 1
    finally:
        plain.dispose()


def test_a_readonly_unit_inside_a_primary_unit_joins_it_and_reads_its_uncommitted_write(
    factory: SessionFactory, replicated_table: str
) -> None:
    with factory.session_scope() as outer:
        outer.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('mine')"))
        with factory.session_scope(readonly=True) as inner:
            assert inner is outer
            assert notes(inner, replicated_table) == ["mine"]
    with factory.session_scope(readonly=True) as session:
        with factory.session_scope(readonly=True) as nested:
            assert nested is session  # readonly inside readonly joins it
        with factory.session_scope() as writer:
            assert writer is not session  # a default unit is the primary's own
            assert writer.info["server"] == "primary"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_in_a_forked_child_a_readonly_unit_joins_the_childs_open_unit(
    factory: SessionFactory, replicated_table: str
) -> None:
    """The registry is replaced in a forked child: replica routing must read the new one
    (it held the parent's object once, and a child's readonly unit then missed its own
    open unit and read the replica instead of its uncommitted write)."""
    with factory.session_scope(readonly=True) as warm:  # the parent has used both engines
        notes(warm, replicated_table)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            with factory.session_scope() as outer:
                outer.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('c')"))
                with factory.session_scope(readonly=True) as inner:
                    joined = inner is outer and notes(inner, replicated_table) == ["c"]
                outer.rollback()
            code = 0 if joined else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_signals_context_names_the_server(factory: SessionFactory) -> None:
    seen: list[str] = []

    def opened(_sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs["context"]["server"])

    signals.session_opened.connect(opened)
    try:
        with factory.session_scope(readonly=True):
            pass
        with factory.session_scope() as session:
            session.execute(sa.text("SELECT 1"))
    finally:
        signals.session_opened.disconnect(opened)
    assert seen == ["replica 127.0.0.1:5433", "primary"]
    assert all("@" not in server and "postgres" not in server for server in seen)


# -- read your writes --------------------------------------------------------------------


def test_the_same_thread_reads_its_write_after_waiting_for_the_replica(
    factory: SessionFactory, replica: Replica, replicated_table: str
) -> None:
    with replica.apply_delay("1500ms"):
        insert(factory, replicated_table, "fresh")
        started = time.monotonic()
        with factory.session_scope(readonly=True) as session:
            waited = time.monotonic() - started
            assert port(session) == 5433
            assert notes(session, replicated_table) == ["fresh"]
        # Control: another owner (a thread) does not wait, and does not see it yet.
        seen: list[Any] = []

        def other() -> None:
            with factory.session_scope(readonly=True) as session:
                seen.append((port(session), notes(session, replicated_table)))

        thread = threading.Thread(target=other)
        insert(factory, replicated_table, "second")
        thread.start()
        thread.join()
        assert seen == [(5433, ["fresh"])]
    assert 1.0 < waited < 2.0, waited


def test_a_short_wait_bound_reads_the_write_on_the_primary(
    factory: SessionFactory, replica: Replica, replicated_table: str
) -> None:
    assert factory.replicas is not None
    factory.replicas.wait = 0.3
    with replica.apply_delay("1500ms"):
        insert(factory, replicated_table, "fresh")
        started = time.monotonic()
        with factory.session_scope(readonly=True) as session:
            waited = time.monotonic() - started
            assert session.info["server"] == "primary"
            assert notes(session, replicated_table) == ["fresh"]
            with pytest.raises(sa.exc.InternalError):  # still read-only on the primary
                session.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('x')"))
    assert 0.25 < waited < 1.0, waited
    assert factory.replicas.stats["primary: behind"] == 1


def flask_app(primary_url: str, replica_url: str) -> Flask:
    app = Flask(__name__)
    app.config.update(
        UNIFIED_SESSION_DATABASE_URL=primary_url,
        UNIFIED_SESSION_REPLICA_URLS=replica_url,
    )
    UnifiedSession(app)
    return app


def test_a_request_reads_its_own_write_and_another_request_does_not(
    primary_url: str,
    replica_url: str,
    primary: Primary,
    replica: Replica,
    replicated_table: str,
) -> None:
    app = flask_app(primary_url, replica_url)
    manager = app.unified_session_manager  # type: ignore[attr-defined]

    @app.post("/write")
    def write() -> Any:
        with manager.get_db_session() as session:
            session.execute(sa.text(f"INSERT INTO {replicated_table} (note) VALUES ('req')"))
        with manager.get_db_session(readonly=True) as session:
            return {
                "notes": notes(session, replicated_table),
                "server": session.info["server"],
                "endpoint": session.info["endpoint"],
            }

    @app.get("/read")
    def read() -> Any:
        with manager.get_db_session(readonly=True) as session:
            request_session = app.request_session_manager.current_session()  # type: ignore[attr-defined]
            assert session is not request_session  # its own session, not the request's
            return {"notes": notes(session, replicated_table), "server": session.info["server"]}

    try:
        with replica.apply_delay("1500ms"):
            client = app.test_client()
            written = client.post("/write").get_json()
            assert written == {
                "notes": ["req"],
                "server": "replica 127.0.0.1:5433",
                "endpoint": "write",
            }
            # Control: a request that did not write is another owner. It does not wait for
            # a commit of someone else, which the lagging replica lacks.
            insert_again = client.post("/write").get_json()
            assert insert_again["notes"] == ["req", "req"]
            primary.execute(f"INSERT INTO {replicated_table} (note) VALUES ('other')")
            started = time.monotonic()
            assert client.get("/read").get_json() == {
                "notes": ["req", "req"],
                "server": "replica 127.0.0.1:5433",
            }
            assert time.monotonic() - started < 0.5
    finally:
        get_state(app).factory.dispose()


# -- a replica that is gone ----------------------------------------------------------------


def test_a_stopped_replica_falls_back_to_the_primary_with_one_warning_then_returns(
    primary_url: str, replica_url: str, replica: Replica, replicated_table: str
) -> None:
    app = flask_app(primary_url, replica_url)
    factory = get_state(app).factory
    factory.replicas.retry_after = 0.3
    manager = app.unified_session_manager  # type: ignore[attr-defined]

    @app.get("/read")
    def read() -> Any:
        with manager.get_db_session(readonly=True) as session:
            return {"server": session.info["server"], "port": port(session)}

    client = app.test_client()
    try:
        assert client.get("/read").get_json()["port"] == 5433  # a pooled replica connection
        statuses: Counter[int] = Counter()
        servers: Counter[str] = Counter()
        with replica.stopped():
            with pytest.warns(ReplicaUnavailableWarning) as caught:
                for _ in range(20):
                    response = client.get("/read")
                    statuses[response.status_code] += 1
                    servers[response.get_json()["server"]] += 1
                    time.sleep(0.05)  # past the retry interval a few times
            assert len(caught) == 1, [str(w.message) for w in caught]
            assert "replica 127.0.0.1:5433 is down" in str(caught[0].message)
            assert "postgres@" not in str(caught[0].message)
        assert statuses == {200: 20}
        assert servers == {"primary": 20}
        # Back: within the retry interval readonly units use the replica again.
        time.sleep(0.35)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert client.get("/read").get_json() == {
                "server": "replica 127.0.0.1:5433",
                "port": 5433,
            }
    finally:
        factory.dispose()


def test_a_replica_lagging_past_the_bound_is_skipped_with_one_warning_then_used_again(
    primary_url: str, replica_url: str, primary: Primary, replica: Replica, replicated_table: str
) -> None:
    settings = Settings(
        url=sa.make_url(primary_url),
        replica_urls=(sa.make_url(replica_url),),
        replica_max_lag=0.5,
        replica_retry_after=0.3,
    )
    lagging = SessionFactory(settings=settings)
    assert lagging.replicas is not None
    assert (lagging.replicas.max_lag, lagging.replicas.retry_after) == (0.5, 0.3)
    lagging.replicas.check_interval = 0.05

    def server() -> str:
        with lagging.session_scope(readonly=True) as session:
            session.execute(sa.text("SELECT 1"))
            return str(session.info["server"])

    label = "replica 127.0.0.1:5433"

    def until_on_the_replica(timeout: float) -> float:
        # Other runs on these servers may lag the replica too: give them time to end.
        started = time.monotonic()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            while server() != label:
                assert time.monotonic() - started < timeout, "the replica was not used again"
                time.sleep(0.05)
        return time.monotonic() - started

    try:
        until_on_the_replica(15)
        servers: list[str] = []
        with replica.apply_delay("2s"):
            # Another owner's write: nobody here waits for it, but the replica falls behind.
            primary.execute(f"INSERT INTO {replicated_table} (note) VALUES ('late')")
            lsn = primary.wal_lsn()
            time.sleep(0.6)  # past the 0.5 s bound
            with pytest.warns(ReplicaUnavailableWarning) as caught:
                for _ in range(10):
                    servers.append(server())
                    time.sleep(0.05)
            still_behind = not replica.replayed(lsn)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1, messages
        assert f"{label} is lagging" in messages[0] and "(over 0.5 s)" in messages[0]
        assert still_behind  # the whole run fell within the 2 s delay
        # One check over the bound is a strike; the second in a row skips the replica (the
        # first unit may already be skipped if the check before the delay saw a lag too).
        assert servers[1:] == ["primary"] * 9 and servers[0] in (label, "primary"), servers
        assert lagging.replicas.stats["primary: no replica"] >= 9
        # Caught up (the delay is gone): a probe after retry_after uses it again.
        replica.wait_for_replay(lsn)
        time.sleep(0.35)
        assert until_on_the_replica(15) < 15
        assert lagging.replicas.replicas[0].state == "ok"
    finally:
        lagging.dispose()


# -- a load run ------------------------------------------------------------------------------


def test_a_mixed_load_splits_reads_to_the_replica_and_reads_every_write_back(
    primary_url: str, replica_url: str, replica: Replica, replicated_table: str
) -> None:
    app = flask_app(primary_url, replica_url)
    factory = get_state(app).factory
    manager = app.unified_session_manager  # type: ignore[attr-defined]

    @app.post("/note/<note>")
    def write(note: str) -> Any:
        with manager.get_db_session() as session:
            session.execute(
                sa.text(f"INSERT INTO {replicated_table} (note) VALUES (:n)"), {"n": note}
            )
        with manager.get_db_session(readonly=True) as session:
            found = session.execute(
                sa.text(f"SELECT count(*) FROM {replicated_table} WHERE note = :n"), {"n": note}
            ).scalar_one()
            return {"found": found, "port": port(session)}

    @app.get("/count")
    def count() -> Any:
        with manager.get_db_session(readonly=True) as session:
            session.execute(sa.text(f"SELECT count(*) FROM {replicated_table}")).scalar_one()
            return {"port": port(session)}

    errors: list[BaseException] = []
    ports: Counter[int] = Counter()
    write_ports: Counter[int] = Counter()
    lost: list[str] = []
    lock = threading.Lock()

    def worker(number: int) -> None:
        client = app.test_client()
        rng = random.Random(number)
        try:
            for i in range(40):
                if rng.random() < 0.8:
                    response = client.get("/count")
                    body = response.get_json()
                    with lock:
                        ports[body["port"]] += 1
                else:
                    note = f"w{number}-{i}"
                    response = client.post(f"/note/{note}")
                    body = response.get_json()
                    with lock:
                        write_ports[body["port"]] += 1
                        if body["found"] != 1:
                            lost.append(note)
                assert response.status_code == 200
        except BaseException as exc:
            errors.append(exc)

    try:
        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        assert errors == []
        assert lost == []
        assert ports[5433] == sum(ports.values()) > 200  # every plain read on the replica
        assert sum(write_ports.values()) > 30
        print(
            f"load: {elapsed:.2f} s, reads {dict(ports)}, read-backs {dict(write_ports)}, "
            f"stats {dict(factory.replicas.stats)}"
        )
    finally:
        factory.dispose()


# -- tests under isolation -------------------------------------------------------------------


def test_inside_route_to_primary_readonly_units_read_the_primary(
    factory: SessionFactory, replica: Replica, replicated_table: str
) -> None:
    with replica.apply_delay("1500ms"), route_to_primary():
        insert(factory, replicated_table, "test's")
        with factory.session_scope(readonly=True) as session:
            assert port(session) == 5432
            assert notes(session, replicated_table) == ["test's"]
    with factory.session_scope(readonly=True) as session:
        assert port(session) == 5433


# -- the doctor ------------------------------------------------------------------------------


def test_doctor_shows_each_replica_with_its_lag(primary_url: str, replica_url: str) -> None:
    gone = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    app = flask_app(primary_url, f"{replica_url},{gone}")
    try:
        result = app.test_cli_runner().invoke(args=["unified-session", "doctor"])
    finally:
        get_state(app).factory.dispose()
    lines = result.output.splitlines()
    ok = next(line for line in lines if line.startswith("replica 127.0.0.1:5433:"))
    assert ": ok, lag " in ok and ok.endswith(" s"), ok
    down = next(line for line in lines if line.startswith("replica 127.0.0.1:1:"))
    assert ": DOWN: OperationalError" in down, down
    assert result.exit_code == 1  # a replica that is down is a problem
