"""W1 (unit of work), W2 (read-only) and W3 (a Flask route through the WSGI app).

All candidates share one engine per backend (the one Flask-SQLAlchemy creates for the
bench app, with the library's default pool options), so the figures compare the session
layers and nothing else:

* ``sqlalchemy``: ``sessionmaker.begin()``, the floor;
* ``flask_sqlalchemy``: ``db.session`` then ``commit()`` and ``remove()``, in an app context;
* ``session_scope()``: the package function outside Flask (the default factory, adopting
  the same engine);
* ``get_db_session()``: ``app.unified_session_manager.get_db_session()``, in an app context;
* ``request manager``: ``app.request_session_manager.session_scope()``, in an app context
  (the request's session: committed per block, closed at teardown, so W1/W2 leave it open);
* ``mixin``: ``SessionServiceMixin.db_session()``, in an app context.
"""

from __future__ import annotations

import gc
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import sessionmaker
from werkzeug.test import EnvironBuilder

from flask_unified_session import (
    SessionFactory,
    SessionServiceMixin,
    UnifiedSession,
    session_scope,
    set_default_factory,
)

from .common import ROWS, User, median

Batch = Callable[[list[int]], None]


@dataclass
class Result:
    name: str
    wall: list[float] = field(default_factory=list)  # seconds per op, one per round
    cpu: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def wall_us(self) -> float:
        return median(self.wall) * 1e6

    @property
    def cpu_us(self) -> float:
        return median(self.cpu) * 1e6


class Service(SessionServiceMixin):
    db_manager = None

    def touch(self, user_id: int) -> None:
        with self.db_session() as session:
            session.get(User, user_id).counter += 1  # type: ignore[union-attr]

    def read(self, user_id: int) -> None:
        with self.db_session() as session:
            session.get(User, user_id)


def engine_options(url: str, application_name: str | None = None) -> dict[str, Any]:
    """The library's defaults (pre-ping on, 5 + 10), for every candidate alike."""
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        options["connect_args"] = {"check_same_thread": False}
    else:
        options.update(pool_size=5, max_overflow=10, pool_timeout=30)
        if application_name and url.startswith("postgresql"):
            options["connect_args"] = {"application_name": application_name}
    return options


def _sqlite_no_sync(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=OFF")


def make_app(url: str, application_name: str | None = None) -> tuple[Flask, SQLAlchemy]:
    """A Flask app with Flask-SQLAlchemy and the extension adopting its engine."""
    app = Flask(f"bench_{application_name or 'app'}")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url, application_name)
    db = SQLAlchemy()
    db.init_app(app)
    UnifiedSession(app, db=db)
    service = Service()

    with app.app_context():
        Session = sessionmaker(db.engine)
        if url.startswith("sqlite"):
            # No fsync per commit: the disk's latency would drown the session layers' cost,
            # which is what is measured (every candidate shares this engine).
            sa.event.listen(db.engine, "connect", _sqlite_no_sync)

    # W3's routes: the same work (W1) through each entry point.
    @app.post("/sqlalchemy/<int:user_id>")
    def plain(user_id: int) -> str:
        with Session.begin() as session:
            session.get(User, user_id).counter += 1  # type: ignore[union-attr]
        return "ok"

    @app.post("/flask_sqlalchemy/<int:user_id>")
    def fsa(user_id: int) -> str:
        db.session.get(User, user_id).counter += 1  # type: ignore[union-attr]
        db.session.commit()
        return "ok"

    @app.post("/session_scope/<int:user_id>")
    def scope(user_id: int) -> str:
        with session_scope() as session:
            session.get(User, user_id).counter += 1  # type: ignore[union-attr]
        return "ok"

    @app.post("/get_db_session/<int:user_id>")
    def uow(user_id: int) -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.get(User, user_id).counter += 1
        return "ok"

    @app.post("/request_manager/<int:user_id>")
    def request_manager(user_id: int) -> str:
        with current_app.request_session_manager.session_scope() as session:  # type: ignore[attr-defined]
            session.get(User, user_id).counter += 1
        return "ok"

    @app.post("/mixin/<int:user_id>")
    def mixin(user_id: int) -> str:
        service.touch(user_id)
        return "ok"

    app.extensions["bench"] = {"Session": Session, "service": service}
    return app, db


# -- W1 / W2 ---------------------------------------------------------------------------


def unit_candidates(app: Flask, db: SQLAlchemy, *, write: bool) -> dict[str, Batch]:
    Session = app.extensions["bench"]["Session"]
    service: Service = app.extensions["bench"]["service"]
    with app.app_context():
        set_default_factory(SessionFactory(engine=db.engine))
    uow = app.unified_session_manager  # type: ignore[attr-defined]
    rsm = app.request_session_manager  # type: ignore[attr-defined]

    def plain(ids: list[int]) -> None:
        for i in ids:
            with Session.begin() as session:
                user = session.get(User, i)
                if write:
                    user.counter += 1

    def fsa(ids: list[int]) -> None:
        with app.app_context():
            for i in ids:
                user = db.session.get(User, i)
                if write:
                    user.counter += 1  # type: ignore[union-attr]
                    db.session.commit()
                db.session.remove()

    def scope(ids: list[int]) -> None:
        for i in ids:
            with session_scope() as session:
                user = session.get(User, i)
                if write:
                    user.counter += 1  # type: ignore[union-attr]

    def get_db_session(ids: list[int]) -> None:
        with app.app_context():
            for i in ids:
                with uow.get_db_session() as session:
                    user = session.get(User, i)
                    if write:
                        user.counter += 1

    def request_manager(ids: list[int]) -> None:
        with app.app_context():
            for i in ids:
                with rsm.session_scope() as session:
                    user = session.get(User, i)
                    if write:
                        user.counter += 1

    def mixin(ids: list[int]) -> None:
        with app.app_context():
            for i in ids:
                if write:
                    service.touch(i)
                else:
                    service.read(i)

    return {
        "sqlalchemy (floor)": plain,
        "flask_sqlalchemy db.session": fsa,
        "session_scope()": scope,
        "get_db_session()": get_db_session,
        "request manager session_scope()": request_manager,
        "mixin db_session()": mixin,
    }


# -- W3 --------------------------------------------------------------------------------

W3_ROUTES = {
    "sqlalchemy (floor)": "sqlalchemy",
    "flask_sqlalchemy db.session": "flask_sqlalchemy",
    "session_scope()": "session_scope",
    "get_db_session()": "get_db_session",
    "request manager session_scope()": "request_manager",
    "mixin db_session()": "mixin",
}


def route_candidates(app: Flask) -> dict[str, Batch]:
    """Each route called as a WSGI application with a prepared environ (no test client)."""
    base = EnvironBuilder(path="/", method="POST", base_url="http://bench.local/").get_environ()
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return None

    errors = {"count": 0}

    def make(prefix: str) -> Batch:
        def batch(ids: list[int]) -> None:
            for i in ids:
                environ = dict(base)
                environ["PATH_INFO"] = f"/{prefix}/{i}"
                environ["wsgi.input"] = io.BytesIO(b"")
                body = app(environ, start_response)
                for _ in body:
                    pass
                close = getattr(body, "close", None)
                if close is not None:
                    close()
                if status.pop() != "200 OK":
                    errors["count"] += 1

        return batch

    candidates = {name: make(prefix) for name, prefix in W3_ROUTES.items()}
    app.extensions["bench"]["w3_errors"] = errors
    return candidates


# -- the interleaved runner ------------------------------------------------------------


def run_interleaved(
    candidates: dict[str, Batch], *, ops: int, rounds: int, warmup: int
) -> dict[str, Result]:
    """Rounds of A B C ...: each candidate does ``ops`` operations per round."""
    ids = [(n * 7919) % ROWS + 1 for n in range(ops)]
    results = {name: Result(name) for name in candidates}
    for batch in candidates.values():
        batch(ids[:warmup])
    for r in range(rounds):
        # Rotate the order so that no candidate always runs right after the same one.
        names = list(candidates)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            gc.collect()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            candidates[name](ids)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            results[name].wall.append((wall1 - wall0) / ops)
            results[name].cpu.append((cpu1 - cpu0) / ops)
    return results


def check_rows(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.sum(User.counter))).scalar_one())


# -- paired differences ------------------------------------------------------------------


def run_paired(
    candidates: dict[str, Batch], reference: str, *, ops: int, pairs: int
) -> dict[str, tuple[float, float]]:
    """Median per-operation (CPU, wall) difference of each candidate from ``reference``.

    Each pair runs the reference and the candidate back to back on the same ``ops`` rows,
    in alternating order; the median of many such pairs cancels the slow drift of a shared
    machine that moves whole rounds, which is what dominates the interleaved tables.
    """
    ids = [(n * 7919) % ROWS + 1 for n in range(ops)]
    ref = candidates[reference]
    diffs: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in candidates if name != reference
    }
    for batch in candidates.values():
        batch(ids)
    gc.collect()
    for p in range(pairs):
        for name, (cpu_diffs, wall_diffs) in diffs.items():
            order = (ref, candidates[name]) if p % 2 == 0 else (candidates[name], ref)
            times = []
            for batch in order:
                wall0, cpu0 = time.perf_counter(), time.process_time()
                batch(ids)
                times.append((time.process_time() - cpu0, time.perf_counter() - wall0))
            ref_t, cand_t = (times[0], times[1]) if p % 2 == 0 else (times[1], times[0])
            cpu_diffs.append((cand_t[0] - ref_t[0]) / ops)
            wall_diffs.append((cand_t[1] - ref_t[1]) / ops)
    return {
        name: (statistics.median(cpu) * 1e6, statistics.median(wall) * 1e6)
        for name, (cpu, wall) in diffs.items()
    }
