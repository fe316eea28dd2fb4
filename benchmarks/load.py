"""W4: a logged-in Flask-Login app under waitress (8 threads) against PostgreSQL.

The app is the same for every candidate: Flask-SQLAlchemy, ``UnifiedSession(app, db=db)``
and Flask-Login, whose user loader reads the member through ``db.session``. Every request
is a logged-in ``POST`` (``@login_required``) that updates one row of the users table and
the logged-in member's ``hits`` (``current_user``, an object of the request's session);
only the route's way of writing differs:

* ``flask_sqlalchemy db.session``: the work on ``db.session``, then ``db.session.commit()``
  (the reference);
* ``get_db_session()``: ``with current_app.unified_session_manager.get_db_session() as s:``;
* ``request manager session_scope()``: ``with current_app.request_session_manager.session_scope()``.

One app instance (and so one engine, one pool, one ``application_name``) per candidate,
each served by waitress on 127.0.0.1 with ``threads`` threads and loaded from a second
process (``benchmarks.loadgen``: each client thread logs in as its own member first, then
sends keep-alive requests with the session cookie). The server's connections of that
``application_name`` are counted by polling ``pg_stat_activity`` on a connection of its
own while the load runs: more than one connection per request would show as more than
``threads``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.pool import NullPool
from waitress.server import create_server

from flask_unified_session import UnifiedSession

from .common import PID, ROWS, Base, User, median

CANDIDATES = {
    "flask_sqlalchemy db.session": "flask_sqlalchemy",
    "get_db_session()": "get_db_session",
    "request manager session_scope()": "request_manager",
}
REFERENCE = "flask_sqlalchemy db.session"
MEMBERS = 64


class Member(Base, UserMixin):
    """The logged-in accounts (Flask-Login's users)."""

    __tablename__ = f"bench_members_{PID}"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    hits: Mapped[int] = mapped_column(default=0)


def create_members(engine: sa.Engine) -> None:
    """``MEMBERS`` accounts (the table is made by :func:`common.create_schema`)."""
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Member),
            [{"id": i, "name": f"member{i}", "hits": 0} for i in range(1, MEMBERS + 1)],
        )


def make_login_app(url: str, application_name: str) -> tuple[Flask, SQLAlchemy]:
    """The logged-in app: Flask-SQLAlchemy's defaults (pool 5 + 10), the extension, Login."""
    app = Flask(f"bench_login_{application_name}")
    app.config["SECRET_KEY"] = "bench-only-not-a-secret"
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "connect_args": {"application_name": application_name}
    }
    db = SQLAlchemy()
    db.init_app(app)
    UnifiedSession(app, db=db)
    login = LoginManager(app)

    @login.user_loader
    def load_member(member_id: str) -> Member | None:
        return db.session.get(Member, int(member_id))

    @app.post("/login/<int:member_id>")
    def log_in(member_id: int) -> str:
        member = db.session.get(Member, member_id)
        if member is None:
            return "no such member", 404  # type: ignore[return-value]
        login_user(member)
        return "ok"

    @app.post("/flask_sqlalchemy/<int:user_id>")
    @login_required
    def fsa(user_id: int) -> str:
        db.session.get(User, user_id).counter += 1  # type: ignore[union-attr]
        current_user.hits += 1
        db.session.commit()
        return "ok"

    @app.post("/get_db_session/<int:user_id>")
    @login_required
    def uow(user_id: int) -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.get(User, user_id).counter += 1
            current_user.hits += 1
        return "ok"

    @app.post("/request_manager/<int:user_id>")
    @login_required
    def request_manager(user_id: int) -> str:
        with current_app.request_session_manager.session_scope() as session:  # type: ignore[attr-defined]
            session.get(User, user_id).counter += 1
            current_user.hits += 1
        return "ok"

    return app, db


@dataclass
class LoadResult:
    name: str
    application_name: str
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    error_kinds: set[str] = field(default_factory=set)
    max_server_connections: int = 0
    max_checked_out: int = 0


# "Task queue depth is N" is waitress saying the load exceeds its threads: meant here.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class Server:
    def __init__(self, app: Flask, threads: int) -> None:
        self.server: Any = create_server(app, host="127.0.0.1", port=0, threads=threads)
        self.port: int = self.server.effective_port
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        # The loop stops before its sockets close: closing one under its select() raises
        # EBADF in the server thread (tests/reliability/conftest.py does the same).
        channels = list(self.server._map.values())
        self.server._map.clear()
        self.server.trigger.pull_trigger()
        self.thread.join(timeout=5)
        self.server.task_dispatcher.shutdown(timeout=5)
        for channel in channels:
            channel.close()


class Poller:
    """Counts the server connections of one application_name, every few milliseconds."""

    def __init__(self, url: str, application_name: str, engine: sa.Engine) -> None:
        self.observer = sa.create_engine(url, poolclass=NullPool)
        self.application_name = application_name
        self.engine = engine
        self.max_server = 0
        self.max_checked_out = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n")
        with self.observer.connect() as connection:
            while not self._stop.is_set():
                count = connection.execute(query, {"n": self.application_name}).scalar_one()
                connection.rollback()
                self.max_server = max(self.max_server, int(count))
                self.max_checked_out = max(self.max_checked_out, self.engine.pool.checkedout())
                self._stop.wait(0.02)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.observer.dispose()


def run_load(
    url: str, *, rounds: int, requests: int, seconds: float, threads: int, concurrency: int
) -> tuple[dict[str, LoadResult], dict[str, int]]:
    """Rounds of every candidate in turn (the order rotates), one load run each."""
    apps: dict[str, tuple[Flask, SQLAlchemy, Server]] = {}
    results: dict[str, LoadResult] = {}
    try:
        for name, prefix in CANDIDATES.items():
            application_name = f"fus_bench_{PID}_{prefix}"[:63]
            app, db = make_login_app(url, application_name)
            apps[name] = (app, db, Server(app, threads))
            results[name] = LoadResult(name, application_name)
        first_app, first_db, _ = apps[REFERENCE]
        with first_app.app_context():
            pool: Any = first_db.engine.pool
            limits = {
                "threads": threads,
                "concurrency": concurrency,
                "pool_size": pool.size(),
                "max_overflow": pool._max_overflow,
            }
        for name in CANDIDATES:  # warm up: connect, fill caches
            _generate(apps[name][2].port, CANDIDATES[name], 400, seconds, concurrency)
        for r in range(rounds):
            names = list(CANDIDATES)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                app, db, server = apps[name]
                result = results[name]
                with app.app_context():
                    engine = db.engine
                with Poller(url, result.application_name, engine) as poller:
                    out = _generate(server.port, CANDIDATES[name], requests, seconds, concurrency)
                result.rps.append(out["rps"])
                result.p50.append(out["p50"])
                result.p99.append(out["p99"])
                result.ok += out["ok"]
                result.errors += out["errors"]
                result.error_kinds.update(out["error_kinds"])
                result.max_server_connections = max(
                    result.max_server_connections, poller.max_server
                )
                result.max_checked_out = max(result.max_checked_out, poller.max_checked_out)
    finally:
        for app, db, server in apps.values():
            server.close()
            with app.app_context():
                db.engine.dispose()
    return results, limits


def _generate(port: int, prefix: str, requests: int, seconds: float, concurrency: int) -> Any:
    command = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--port",
        str(port),
        "--path",
        f"/{prefix}/",
        "--login",
        "/login/",
        "--accounts",
        str(MEMBERS),
        "--requests",
        str(requests),
        "--seconds",
        str(seconds),
        "--concurrency",
        str(concurrency),
        "--rows",
        str(ROWS),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(results: dict[str, LoadResult]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "rps": median(r.rps),
            "p50_ms": median(r.p50) * 1e3,
            "p99_ms": median(r.p99) * 1e3,
        }
        for name, r in results.items()
    }


def expired_user_cost(url: str, *, number: int = 300) -> dict[str, float]:
    """An empty ``get_db_session()`` in a logged-in request whose session has committed.

    After a commit, ``db.session`` (``expire_on_commit=True``, Flask-SQLAlchemy's default)
    has expired ``current_user``; the unit's user context reads its id. Returns the
    statements one such unit sends and its time, and the time of the same unit in an
    anonymous request (µs, best of several runs).
    """
    import timeit

    app, db = make_login_app(url, f"fus_bench_{PID}_user_context")
    with app.app_context():
        engine = db.engine
    statements: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    manager = app.unified_session_manager  # type: ignore[attr-defined]

    def empty_unit() -> None:
        with manager.get_db_session():
            pass

    try:
        with app.test_request_context("/get_db_session/1", method="POST"):
            login_user(db.session.get(Member, 1))
            db.session.commit()
            sa.event.listen(engine, "before_cursor_execute", count)
            empty_unit()
            sa.event.remove(engine, "before_cursor_execute", count)
            sent = len(statements)
            logged_in = min(timeit.repeat(empty_unit, number=number, repeat=5)) / number * 1e6
        with app.test_request_context("/get_db_session/1", method="POST"):
            db.session.get(Member, 1)
            db.session.commit()
            anonymous = min(timeit.repeat(empty_unit, number=number, repeat=5)) / number * 1e6
    finally:
        engine.dispose()
    return {"statements": sent, "logged_in_us": logged_in, "anonymous_us": anonymous}
