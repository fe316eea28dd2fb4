"""The database goes away under load: clear, prompt errors; full recovery without a restart.

The app's connections are killed with ``pg_terminate_backend`` while the load runs, and
the PostgreSQL server itself is stopped and started again (1 s in ``make test``, 3 s in
``make soak``); it is always brought back, also when the test fails.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from flask import Flask, current_app

from flask_unified_session import UnifiedSession

from .conftest import PgAdmin, app_name, serve, size

pytestmark = [pytest.mark.reliability, pytest.mark.postgresql]

THREADS = 4
POOL_TIMEOUT = 2
CONNECT_TIMEOUT = 2
# A request may wait for the pool, then for a connection attempt: never much longer.
NO_HANG = POOL_TIMEOUT + CONNECT_TIMEOUT + 10


def make_app(url: str, name: str) -> Flask:
    app = Flask(__name__)
    app.config["UNIFIED_SESSION_DATABASE_URL"] = sa.make_url(url).update_query_dict(
        {"application_name": name, "connect_timeout": str(CONNECT_TIMEOUT)}
    )
    app.config["UNIFIED_SESSION_POOL_SIZE"] = THREADS
    app.config["UNIFIED_SESSION_MAX_OVERFLOW"] = 0
    app.config["UNIFIED_SESSION_POOL_TIMEOUT"] = POOL_TIMEOUT
    UnifiedSession(app)

    @app.errorhandler(sa.exc.OperationalError)
    def unavailable(exc: sa.exc.OperationalError) -> tuple[str, int]:
        # Reached only if the library re-raises the driver's error unchanged.
        return f"database unavailable: {type(exc.orig).__name__}", 503

    @app.get("/work")
    def work() -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            return str(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    return app


class Load:
    """Client threads calling /work until stopped; every answer and its latency recorded."""

    def __init__(self, port: int, clients: int = THREADS, path: str = "/work") -> None:
        self.port = port
        self.path = path
        self.results: list[tuple[float, int, str, float]] = []  # start, status, body, latency
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if nobody stops it
        while not self._stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                connection.request("GET", self.path)
                response = connection.getresponse()
                status, body = response.status, response.read().decode()
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, repr(exc)
            finally:
                connection.close()
            with self._lock:
                self.results.append((start, status, body, time.monotonic() - start))
            time.sleep(0.01)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def check_answers(results: list[tuple[float, int, str, float]]) -> None:
    """Every answer is a success or a clear 503, and none took longer than NO_HANG."""
    unclear = [(s, b) for _, s, b, _ in results if s != 200 and not (s == 503 and "database" in b)]
    assert unclear == []
    slowest = max(latency for *_, latency in results)
    assert slowest < NO_HANG, f"a request hung for {slowest:.1f} s"


def all_succeed(port: int, count: int) -> None:
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/work")
            response = connection.getresponse()
            assert (response.status, response.read()[:0]) == (200, b"")
        finally:
            connection.close()


def test_killed_connections_under_load_give_clear_errors_then_recover(
    pg_url: str, pg_admin: PgAdmin
) -> None:
    """Backends killed mid-load: answers are 200 or a prompt 503; then all succeed, no leak.

    Every request writes a row: each 200 is a committed row; a row without a 200 can only
    be a unit whose COMMIT was in flight when its backend was killed.
    """
    name = app_name("kill")
    table = f"fus_kill_{os.getpid()}"
    with pg_admin.engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        connection.execute(sa.text(f"CREATE TABLE {table} (id SERIAL PRIMARY KEY)"))
    app = make_app(pg_url, name)
    add_write_route(app, table)
    engine = app.extensions["unified_session"].factory.engine
    killed = 0
    try:
        with serve(app, threads=THREADS) as port:
            all_succeed(port, 5)
            with Load(port, path="/write") as load:
                for _ in range(5):
                    time.sleep(0.3)
                    killed += pg_admin.terminate(name)
                time.sleep(0.3)
            assert killed >= 1
            check_answers(load.results)
            all_succeed(port, 20)
            assert len(pg_admin.backends(name)) <= THREADS
        check_rows(pg_admin, table, load.results, in_flight=killed)
        assert engine.pool.checkedout() == 0
    finally:
        with pg_admin.engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def add_write_route(app: Flask, table: str) -> None:
    """``GET /write``: a unit that inserts a row and answers its id."""

    @app.get("/write")
    def write() -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            statement = sa.text(f"INSERT INTO {table} DEFAULT VALUES RETURNING id")
            return str(session.execute(statement).scalar_one())


def check_rows(
    pg_admin: PgAdmin, table: str, results: list[tuple[float, int, str, float]], in_flight: int
) -> None:
    """Every 200 is a committed row; at most ``in_flight`` rows have no 200 (COMMIT sent)."""
    with pg_admin.engine.connect() as connection:
        ids = connection.execute(sa.text(f"SELECT id FROM {table}")).scalars()
        rows = {int(row_id) for row_id in ids}
    committed = {int(body) for _, status, body, _ in results if status == 200}
    assert committed <= rows
    assert len(rows - committed) <= in_flight


def pg_cluster() -> tuple[str, str]:
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        pytest.skip("needs pg_ctlcluster and /etc/postgresql (a Debian PostgreSQL cluster)")
    return sorted(os.listdir("/etc/postgresql"))[0], "main"


def pg_ctl(action: str) -> None:
    version, cluster = pg_cluster()
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, action]
    if action == "stop":
        command += ["-m", "fast"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def wait_ready(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False)
        if done.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("PostgreSQL did not come back")


@contextmanager
def outage(seconds: float) -> Iterator[None]:
    """PostgreSQL stopped for ``seconds``; always started again and awaited."""
    pg_cluster()
    try:
        pg_ctl("stop")
        yield
        time.sleep(seconds)
    finally:
        try:
            pg_ctl("start")
        except subprocess.CalledProcessError:
            pass  # already running (the stop failed); pg_isready decides
        wait_ready()


def test_server_restart_under_load_fails_clearly_then_recovers(
    pg_url: str, pg_admin: PgAdmin
) -> None:
    """PostgreSQL stopped under load: prompt 503s while it is down, none once it is back.

    Every request writes a row: each 200 is a committed row, and a row without a 200 can
    only be a unit whose COMMIT was sent as the server went away (its outcome unknown).
    """
    name = app_name("restart")
    table = f"fus_restart_{os.getpid()}"
    with pg_admin.engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        connection.execute(sa.text(f"CREATE TABLE {table} (id SERIAL PRIMARY KEY)"))
    app = make_app(pg_url, name)
    add_write_route(app, table)

    engine = app.extensions["unified_session"].factory.engine
    try:
        with serve(app, threads=THREADS) as port:
            all_succeed(port, 5)
            with Load(port, path="/write") as load:
                time.sleep(0.5)
                with outage(size(1, 3)):
                    pass
                back = time.monotonic()
                time.sleep(1.5)
            statuses = {status for _, status, _, _ in load.results}
            assert 503 in statuses, "no request saw the outage"
            check_answers(load.results)
            after = [(s, b) for start, s, b, _ in load.results if start > back]
            assert after and all(s == 200 for s, _ in after), after[:5]
            all_succeed(port, 20)
        check_rows(pg_admin, table, load.results, in_flight=THREADS)
        assert engine.pool.checkedout() == 0
    finally:
        with pg_admin.engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
