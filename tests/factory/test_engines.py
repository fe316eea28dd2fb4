"""The engine registry: one engine per URL and options, duplicates reported, lazy connect."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from flask_unified_session import DuplicateEngineWarning, SessionFactory, Settings
from flask_unified_session.engines import duplicate_groups, known_engines
from tests.conftest import Observer, User, collects_without_the_registry_lock


def test_same_url_same_engine(tmp_path: Path) -> None:
    """Two factories on the same URL and options share one engine (one pool)."""
    url = f"sqlite:///{tmp_path}/a.db"
    assert SessionFactory(url).engine is SessionFactory(url).engine


def test_different_options_warn_naming_both_sites(tmp_path: Path) -> None:
    """Two live engines on one database: a DuplicateEngineWarning naming both creation lines."""
    url = f"sqlite:///{tmp_path}/a.db"
    first = SessionFactory(url)
    with pytest.warns(DuplicateEngineWarning) as caught:
        second = SessionFactory(
            settings=Settings.from_mapping({"DATABASE_URL": url, "DB_POOL_SIZE": "2"})
        )
    assert first.engine is not second.engine
    message = str(caught[0].message)
    assert message.count(f"{__file__}:") == 2, message
    assert [len(group) for group in duplicate_groups()] == [2]


def test_duplicate_reported_once_per_pair(tmp_path: Path) -> None:
    """The same pair is reported once, not on every later factory."""
    url = f"sqlite:///{tmp_path}/a.db"
    first = SessionFactory(url)  # held: an engine nobody holds is gone, not a duplicate
    with pytest.warns(DuplicateEngineWarning):
        other = SessionFactory(
            settings=Settings.from_mapping({"DATABASE_URL": url, "DB_POOL_SIZE": "2"})
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SessionFactory(engine=other.engine)  # adopting a known engine again: no warning
    assert first.engine is not other.engine


def test_adopted_engine_duplicate_is_reported(tmp_path: Path) -> None:
    """An engine made elsewhere and adopted is compared with the ones the library made."""
    url = f"sqlite:///{tmp_path}/a.db"
    first = SessionFactory(url)
    foreign = sa.create_engine(url)
    try:
        with pytest.warns(DuplicateEngineWarning, match="same database"):
            SessionFactory(engine=foreign)
        assert first.engine is not foreign
    finally:
        foreign.dispose()


def test_adopted_engine_is_never_disposed(tmp_path: Path) -> None:
    """dispose() of a factory that adopted an engine leaves that engine's pool alone."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/a.db")
    try:
        factory = SessionFactory(engine=engine)
        with engine.connect():
            pass
        pool = engine.pool
        factory.dispose()
        assert engine.pool is pool and pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_in_memory_databases_are_distinct(tmp_path: Path) -> None:
    """Two in-memory SQLite engines are two databases, never reported as duplicates."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SessionFactory("sqlite://")
        SessionFactory(
            settings=Settings.from_mapping(
                {"DATABASE_URL": "sqlite://", "DB_ECHO": "0", "DB_POOL_SIZE": "1"}
            )
        )


def test_collected_engine_is_forgotten(tmp_path: Path) -> None:
    """A garbage-collected adopted engine leaves the registry."""
    import gc

    engine = sa.create_engine(f"sqlite:///{tmp_path}/a.db")
    SessionFactory(engine=engine)
    assert any(r.engine is engine for r in known_engines())
    engine.dispose()
    del engine
    gc.collect()
    assert known_engines() == []


def test_nothing_connects_before_first_use(db_url: str) -> None:
    """Building a factory and opening an unused scope checks out no connection."""
    factory = SessionFactory(db_url)
    connects: list[object] = []
    event.listen(factory.engine, "connect", lambda *args: connects.append(args))
    with factory.session_scope():
        pass
    session = factory.create_session()
    session.close()
    assert connects == []
    with factory.session_scope() as used:
        used.execute(sa.text("select 1"))
    assert len(connects) == 1


def test_factory_import_does_not_import_flask() -> None:
    """The settings and factory layers import no Flask (checked in a fresh interpreter)."""
    code = (
        "import sys, flask_unified_session, flask_unified_session.session_factory;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'werkzeug', 'flask_sqlalchemy', 'libcst', 'click')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runtime_never_imports_tooling() -> None:
    """Importing the Flask layer does not import the tooling or libcst."""
    code = (
        "import sys, flask_unified_session as f; f.UnifiedSession; f.SessionServiceMixin;"
        "import flask_unified_session.cli;"
        "print([m for m in sys.modules"
        "       if m.startswith(('libcst', 'flask_unified_session.tooling'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sqlite_savepoint_fix(tmp_path: Path) -> None:
    """On SQLite, a failed savepoint is rolled back alone, as on PostgreSQL."""
    url = f"sqlite:///{tmp_path}/a.db"
    observer = Observer(url)
    User.metadata.create_all(observer.engine)
    try:
        factory = SessionFactory(url)
        with factory.session_scope() as session:
            session.add(User(name="kept"))
            savepoint = session.begin_nested()
            session.add(User(name="undone"))
            session.flush()
            savepoint.rollback()
        assert observer.names() == ["kept"]
    finally:
        observer.dispose()


def _backend_pid(connection: sa.Connection) -> int:
    if connection.dialect.name == "postgresql":
        return int(connection.exec_driver_sql("select pg_backend_pid()").scalar_one())
    return int(connection.exec_driver_sql("select connection_id()").scalar_one())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_fork_child_never_uses_parent_connection(db_url: str, observer: Observer) -> None:
    """After a real os.fork(), child and parent both query, on different server connections."""
    factory = SessionFactory(db_url)
    with factory.session_scope() as session:
        parent_pid = _backend_pid(session.connection())
    assert factory.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            with factory.session_scope() as session:
                child_pid = _backend_pid(session.connection())
                session.add(User(name="from-child"))
            os.write(write, str(child_pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(child, 0)
    child_backend = int(os.read(read, 64).decode() or 0)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    with factory.session_scope() as session:
        after_pid = _backend_pid(session.connection())
        session.add(User(name="from-parent"))
    assert child_backend not in (0, parent_pid)
    assert after_pid == parent_pid  # the parent's pooled connection survived the child
    assert observer.names() == ["from-child", "from-parent"]


def test_package_import_is_lazy() -> None:
    """import flask_unified_session imports no SQLAlchemy (the pytest plugin loads it always)."""
    code = (
        "import sys, flask_unified_session as f;"
        "assert sorted(f.__all__) == sorted(f._EXPORTS), 'exports out of sync';"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'flask')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_engine_nobody_holds_is_gone_and_no_duplicate(tmp_path: Path) -> None:
    """The registry keeps no engine alive: a dropped factory's engine is disposed, forgotten."""
    import gc

    url = f"sqlite:///{tmp_path}/a.db"
    dropped = SessionFactory(url)
    with dropped.session_scope() as session:
        session.execute(sa.text("SELECT 1"))
    del dropped, session
    gc.collect()
    assert known_engines() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = SessionFactory(settings=Settings.from_mapping({"DATABASE_URL": url, "DB_ECHO": "1"}))
    assert [r.engine for r in known_engines()] == [kept.engine]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_fork_while_a_thread_hammers_the_registry_never_hangs(tmp_path: Path) -> None:
    """20 forks while another thread creates and drops engines: every child exits at once.

    Version 1 hung here (issue 11), and so did version 2 about 1 run in 6 until the
    registry's garbage-collector callback stopped taking the lock: CPython's own at-fork
    hook collects garbage in the child before ours run.

    One factory is made first: a fork during another thread's first import of a module
    can hang on CPython's per-module import lock, which is no lock of ours.
    """
    SessionFactory(f"sqlite:///{tmp_path}/warm.db")
    stop = threading.Event()

    def hammer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            SessionFactory(f"sqlite:///{tmp_path}/h{i % 50}.db")

    thread = threading.Thread(target=hammer)
    thread.start()
    hung = 0
    try:
        for _ in range(20):
            time.sleep(0.01)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    SessionFactory(f"sqlite:///{tmp_path}/child.db")
                    code = 0
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 5
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    break
                if time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
    finally:
        stop.set()
        thread.join()
    assert hung == 0


def test_a_dropped_engine_is_forgotten_while_another_thread_holds_the_registry_lock(
    tmp_path: Path,
) -> None:
    """The collector's callback takes no lock: in a forked child a lock held at fork by a
    thread that does not exist there would block it for ever (the issue 11 hang)."""
    SessionFactory(f"sqlite:///{tmp_path}/dropped.db")  # dropped at once: a cycle-free engine
    assert collects_without_the_registry_lock(), "gc.collect() waited on the registry's lock"
    assert known_engines() == []


@pytest.mark.postgresql
def test_the_finalizer_never_closes_a_connection_another_process_opened() -> None:
    """A dropped engine closes only its own process's connections: in a forked child the
    collector may finalize an engine before the at-fork hook forgets the parent's, and
    closing one would end the parent's session on the server."""
    from tests.conftest import server_url

    url = server_url("postgresql")
    watcher = Observer(url)
    factory = SessionFactory(url)
    with factory.session_scope() as session:
        backend_pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    opened = factory.engine._fus_open_connections  # type: ignore[attr-defined]
    assert len(opened) == 1
    (raw,) = opened
    opened[raw] = os.getpid() + 1  # as if a parent process had opened it
    del factory, session, opened
    gc.collect()
    alive = watcher.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = :p", p=backend_pid)
    raw.close()
    watcher.dispose()
    assert alive == 1


def test_the_library_adds_no_connection_event_listener(db_url: str) -> None:
    """Any connection event listener makes SQLAlchemy dispatch through joined listener
    collections on every statement: pysqlite's BEGIN goes through the dialect instead
    (about 12 µs a unit on SQLite, measured in benchmarks/units.py)."""
    engine = SessionFactory(db_url).engine
    assert engine._has_events is False
    with SessionFactory(db_url).session_scope() as session:
        session.execute(sa.text("SELECT 1"))
    assert engine._has_events is False
