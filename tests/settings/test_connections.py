"""Engine hooks on real servers: connect failures without secrets, a bounded connect,
and a pre-ping paid only by connections that sat idle."""

from __future__ import annotations

import logging
import socket
import time
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from flask_unified_session.config import Settings
from flask_unified_session.connections import (
    install_idle_pre_ping,
    prepare_engine,
    scrub_exception,
)
from tests.conftest import server_url

PASSWORD = "S3cr3t€xyz-pw"
SERVERS = [
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


def reachable(value: object, needle: str, seen: set[int] | None = None, depth: int = 6) -> bool:
    """True if ``needle`` is in ``value``'s text, args, attributes or exception chain."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth < 0 or value is None:
        return False
    seen.add(id(value))
    if isinstance(value, (str, bytes)):
        return (needle if isinstance(value, str) else needle.encode()) in value
    if isinstance(value, (int, float, bool)):
        return False
    if isinstance(value, (tuple, list, set)):
        return any(reachable(v, needle, seen, depth - 1) for v in value)
    if isinstance(value, dict):
        return any(reachable(v, needle, seen, depth - 1) for v in value.values())
    try:
        if needle in str(value) or needle in repr(value):
            return True
    except Exception:
        pass
    items: list[Any] = list(getattr(value, "__dict__", {}).values())
    if isinstance(value, BaseException):
        items += [value.args, value.__cause__, value.__context__]
        items.append("".join(traceback.format_exception(value)))
    return any(reachable(v, needle, seen, depth - 1) for v in items)


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test makes, disposed at its end."""
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def guarded(made: list[Engine], url: str, **env: str) -> Engine:
    settings = Settings.from_env({"DATABASE_URL": url, **env})
    engine = sa.create_engine(settings.url, **settings.engine_options())
    prepare_engine(engine, settings)
    made.append(engine)
    return engine


def with_password(url: str, password: str, **query: str) -> str:
    parsed = make_url(url).set(password=password).update_query_dict(query)
    return parsed.render_as_string(hide_password=False)


@pytest.mark.parametrize("backend", SERVERS)
def test_failed_connect_reaches_no_secret(
    backend: str, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong or unencodable password: the caller's exception, its chain, its args, the
    DEBUG logs (echo on) and the warnings hold no password; the driver's type is kept."""
    caplog.set_level(logging.DEBUG)
    base = server_url(backend)
    user = "fus_no_such_user"
    url = with_password(make_url(base).set(username=user).render_as_string(False), PASSWORD)
    engine = guarded(engines, url, DB_ECHO="true")
    with _no_warnings():
        with pytest.raises(Exception) as info:
            with engine.connect():
                pass
    error = info.value
    if backend == "mariadb":
        # PyMySQL encodes the password as latin-1 and raised UnicodeEncodeError with it.
        assert type(error) is UnicodeEncodeError
        assert "connection secret, hidden" in str(error)
    else:
        assert isinstance(error, sa.exc.OperationalError)
        assert type(error.orig).__module__.startswith("psycopg")
        assert error.orig.pgconn is None  # type: ignore[union-attr]  # it held the password
    for needle in (PASSWORD, quote(PASSWORD)):
        assert not reachable(error, needle)
        assert needle not in caplog.text


class _no_warnings:
    """Fails if a warning is emitted inside (warnings are errors in this suite anyway)."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(None, None, None)
        assert not [str(w.message) for w in self._caught]


@pytest.mark.parametrize("backend", SERVERS)
def test_query_string_secret_is_scrubbed_from_connect_errors(
    backend: str, engines: list[Engine]
) -> None:
    """A secret-looking query value (sslpassword, here also a bad option) is not shown."""
    base = server_url(backend)
    option = "sslpassword" if backend == "postgresql" else "passwd"
    engine = guarded(
        engines,
        with_password(
            make_url(base).set(port=1).render_as_string(False), PASSWORD, **{option: PASSWORD + "q"}
        ),
    )
    with pytest.raises(Exception) as info:
        with engine.connect():
            pass
    assert not reachable(info.value, PASSWORD + "q")
    assert not reachable(info.value, PASSWORD)


def test_scrub_exception_keeps_type_and_drops_chain() -> None:
    class DriverError(Exception):
        def __init__(self, message: str, *, host: str = "") -> None:
            super().__init__(message)
            self.host = host

    try:
        try:
            raise KeyError("inner " + PASSWORD)
        except KeyError as inner:
            raise DriverError(f"auth failed for {PASSWORD}", host="h") from inner
    except DriverError as original:
        scrubbed = scrub_exception(original, [PASSWORD])
    assert type(scrubbed) is DriverError and scrubbed.args == ("auth failed for ***",)
    assert scrubbed.host == "h"  # type: ignore[attr-defined]
    assert scrubbed.__cause__ is None and scrubbed.__context__ is None
    assert scrubbed.__traceback__ is not None
    assert not reachable(scrubbed, PASSWORD)
    clean = ValueError("nothing secret")
    assert scrub_exception(clean, [PASSWORD]) is clean


class SilentServer:
    """Accepts TCP connections (the kernel's backlog) and never says a word."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("url", "timeout"),
    [
        ("postgresql+psycopg://u:pw@127.0.0.1:{port}/db", 2.0),  # libpq's minimum is 2 s
        ("mysql+pymysql://u:pw@127.0.0.1:{port}/db", 1.0),
    ],
)
def test_connect_to_silent_server_fails_within_connect_timeout(
    silent: SilentServer, engines: list[Engine], url: str, timeout: float
) -> None:
    engine = guarded(
        engines, url.format(port=silent.port), DB_CONNECT_TIMEOUT=str(timeout), DB_POOL_TIMEOUT="30"
    )
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError):
        with engine.connect():
            pass
    elapsed = time.monotonic() - started
    assert timeout * 0.8 <= elapsed < timeout + 1.5, elapsed


@pytest.mark.mariadb
def test_pymysql_handshake_timeout_is_lifted_once_connected(engines: list[Engine]) -> None:
    """The read timeout that bounds PyMySQL's handshake does not cut a long query."""
    engine = guarded(engines, server_url("mariadb"), DB_CONNECT_TIMEOUT="1")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT SLEEP(1.5)").scalar() == 0


# --- idle pre-ping -------------------------------------------------------------------


class PingCounter:
    """Wraps the dialect's do_ping: how many pings the pool really made."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        original = engine.dialect.do_ping

        def counted(dbapi_connection: Any) -> bool:
            self.count += 1
            return original(dbapi_connection)

        engine.dialect.do_ping = counted  # type: ignore[method-assign]


BACKEND_SQL = {
    "postgresql": ("SELECT pg_backend_pid()", "SELECT pg_terminate_backend(:pid)"),
    "mariadb": ("SELECT CONNECTION_ID()", "KILL :pid"),
}


@pytest.mark.parametrize("backend", SERVERS)
def test_connection_killed_while_idle_is_replaced(backend: str, engines: list[Engine]) -> None:
    """Killed from outside after idling past the threshold: the next unit succeeds on a new
    backend, after exactly one ping."""
    url = server_url(backend)
    engine = guarded(
        engines, url, DB_POOL_SIZE="1", DB_MAX_OVERFLOW="0", DB_POOL_PRE_PING_IDLE="0.2"
    )
    pings = PingCounter(engine)
    whoami, kill = BACKEND_SQL[backend]
    with engine.connect() as connection:
        first = connection.exec_driver_sql(whoami).scalar()
    time.sleep(0.3)
    observer = sa.create_engine(url, poolclass=NullPool)
    engines.append(observer)
    with observer.connect() as admin:
        admin.execute(sa.text(kill), {"pid": first})
    time.sleep(0.1)
    with engine.connect() as connection:
        second = connection.exec_driver_sql(whoami).scalar()
    assert second != first
    assert pings.count == 1


@pytest.mark.postgresql
def test_busy_pool_pays_no_ping(engines: list[Engine]) -> None:
    """Connections reused within the threshold are not pinged; the server saw one backend."""
    engine = guarded(engines, server_url("postgresql"), DB_POOL_SIZE="1", DB_MAX_OVERFLOW="0")
    pings = PingCounter(engine)
    pids = set()
    for _ in range(200):
        with engine.connect() as connection:
            pids.add(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar())
    assert pings.count == 0
    assert len(pids) == 1


def test_idle_pre_ping_threshold_zero_pings_every_reuse(
    engines: list[Engine], tmp_path: Any
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/p.db")
    engines.append(engine)
    install_idle_pre_ping(engine, 0)
    pings = PingCounter(engine)
    for _ in range(5):
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    assert pings.count == 4  # the first checkout is of a fresh connection


def test_failed_ping_is_a_disconnect_and_the_pool_reconnects(
    engines: list[Engine], tmp_path: Any
) -> None:
    """A fake clock makes every connection look idle; the first ping fails: replaced."""
    now = [0.0]
    engine = sa.create_engine(f"sqlite:///{tmp_path}/p.db", pool_size=1, max_overflow=0)
    engines.append(engine)
    install_idle_pre_ping(engine, 10, clock=lambda: now[0])
    failures = [1]
    original = engine.dialect.do_ping

    def flaky(dbapi_connection: Any) -> bool:
        if failures:
            failures.pop()
            raise sa.exc.OperationalError("ping", {}, RuntimeError("gone"))
        return original(dbapi_connection)

    engine.dialect.do_ping = flaky  # type: ignore[method-assign]
    with engine.connect() as connection:
        first = connection.connection.dbapi_connection
    now[0] = 11.0
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
        assert connection.connection.dbapi_connection is not first


def test_pre_ping_off_installs_no_ping(engines: list[Engine], tmp_path: Any) -> None:
    engine = guarded(engines, f"sqlite:///{tmp_path}/p.db", DB_POOL_PRE_PING="false")
    assert not engine.pool.dispatch.checkout
    assert engine.pool._pre_ping is False  # type: ignore[attr-defined]
