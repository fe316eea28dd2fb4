"""W1 (a unit that updates one row), W2 (a read-only unit) and W3 (a Flask route).

Every candidate runs **in a Flask app context**, on **its own engine with its own
defaults**, the way an application would use it:

* ``sqlalchemy (floor)``: a Flask app without any extension and its own
  ``create_engine(url)`` (SQLAlchemy's defaults: pool 5 + 10, no pre-ping); a unit is
  ``with Session.begin() as session:`` (a ``sessionmaker``), which opens, commits and
  closes a session;
* ``flask_sqlalchemy db.session``: an app with ``SQLAlchemy()`` only (its defaults); a unit
  is the work on ``db.session`` then ``db.session.commit()`` (W2 commits too, as every other
  candidate's unit does); ``db.session`` is removed at app-context teardown;
* the library on a Flask-SQLAlchemy app (``UnifiedSession(app, db=db)``, Flask-SQLAlchemy's
  engine and defaults): ``get_db_session()``, ``request_session_manager.session_scope()``,
  the mixin's ``db_session()`` and the package's ``session_scope()``, each a ``with`` block
  on the app context's one session (``db.session``'s), committed at the block's exit and
  closed at teardown;
* ``get_db_session() [own engine]``: ``UnifiedSession(app)`` without Flask-SQLAlchemy, on
  the library's own engine and defaults (idle pre-ping, connect timeout, pool 5 + 10);
* ``session_scope() outside Flask`` (informational): the same factory's ``session_scope()``
  with no app context (a session opened and closed per unit).

A "request" is one app context pushed and popped around ``per_context`` units (default 1:
the common request that does one unit of work); its push, pop and teardown are part of the
measured time of every candidate, each with its own app's teardown.
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
)
from flask_unified_session.extension import get_state

from .common import ROWS, User, median

Batch = Callable[[list[int]], None]

FLOOR = "sqlalchemy (floor)"
FSA = "flask_sqlalchemy db.session"
UOW = "get_db_session()"
UOW_OWN = "get_db_session() [own engine]"
RSM = "request manager session_scope()"
MIXIN = "mixin db_session()"
SCOPE = "session_scope() in app context"
SCOPE_OUT = "session_scope() outside Flask"


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


def service_class(mixin: type[Any]) -> type[Any]:
    """A service on ``mixin`` (a version's ``SessionServiceMixin``): W1's and W2's work."""

    class Service(mixin):  # type: ignore[misc, valid-type]
        db_manager = None

        def touch(self, user_id: int) -> None:
            with self.db_session() as session:
                session.get(User, user_id).counter += 1

        def read(self, user_id: int) -> None:
            with self.db_session() as session:
                session.get(User, user_id)

    return Service


Service = service_class(SessionServiceMixin)


def _sqlite_no_sync(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=OFF")


def no_fsync(engine: sa.Engine) -> None:
    """SQLite only: no fsync per commit, on every candidate's engine alike.

    The disk's latency (about 1 ms and very uneven here) would drown what is measured.
    """
    if engine.url.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_no_sync)


@dataclass
class Bench:
    """The candidates' apps and engines for one database URL."""

    url: str
    floor_app: Flask
    floor_engine: sa.Engine
    Session: sessionmaker[Any]
    fsa_app: Flask
    fsa_db: SQLAlchemy
    app: Flask  # Flask-SQLAlchemy + UnifiedSession(db=db)
    db: SQLAlchemy
    own_app: Flask  # UnifiedSession(app), the library's own engine
    own_engine: sa.Engine
    factory: SessionFactory  # own_app's factory, used outside Flask too
    service: Service
    w3_errors: dict[str, int] = field(default_factory=lambda: {"count": 0})

    def engines(self) -> list[sa.Engine]:
        with self.fsa_app.app_context():
            fsa_engine = self.fsa_db.engine
        with self.app.app_context():
            engine = self.db.engine
        return [self.floor_engine, fsa_engine, engine, self.own_engine]

    def dispose(self) -> None:
        for engine in self.engines():
            engine.dispose()


def _routes(app: Flask, **views: Callable[[int], str]) -> None:
    for prefix, view in views.items():
        app.add_url_rule(f"/{prefix}/<int:user_id>", prefix, view, methods=["POST"])


def build(url: str) -> Bench:
    """Every candidate's app, each on its own engine (none connects yet)."""
    # The library's engine first: a factory made later would adopt (share) the
    # Flask-SQLAlchemy engine of the same database, by design.
    own_app = Flask("bench_own_engine")
    own_app.config["UNIFIED_SESSION_DATABASE_URL"] = url
    UnifiedSession(own_app)
    # The same factory outside an app context (one engine per database per process).
    factory: SessionFactory = get_state(own_app).factory
    own_engine = factory.engine

    floor_app = Flask("bench_floor")
    floor_engine = sa.create_engine(url)
    Session = sessionmaker(floor_engine)

    fsa_app = Flask("bench_fsa")
    fsa_app.config["SQLALCHEMY_DATABASE_URI"] = url
    fsa_db = SQLAlchemy()
    fsa_db.init_app(fsa_app)

    app = Flask("bench_fsa_unified")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy()
    db.init_app(app)
    UnifiedSession(app, db=db)

    bench = Bench(
        url=url,
        floor_app=floor_app,
        floor_engine=floor_engine,
        Session=Session,
        fsa_app=fsa_app,
        fsa_db=fsa_db,
        app=app,
        db=db,
        own_app=own_app,
        own_engine=own_engine,
        factory=factory,
        service=Service(),
    )
    engines = bench.engines()
    assert len({id(e) for e in engines}) == len(engines), "candidates must not share an engine"
    for engine in engines:
        no_fsync(engine)
    _add_w3_routes(bench)
    return bench


def library_views(
    scope_function: Callable[[], Any], service: Any
) -> dict[str, Callable[[int], str]]:
    """The W3 views of the library's four entry points, by URL prefix.

    ``scope_function`` and ``service`` come from one version of the library (its
    ``session_scope`` and a :func:`service_class` instance): ``benchmarks.against`` builds
    them for two versions.
    """

    def uow(user_id: int) -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.get(User, user_id).counter += 1
        return "ok"

    def request_manager(user_id: int) -> str:
        with current_app.request_session_manager.session_scope() as session:  # type: ignore[attr-defined]
            session.get(User, user_id).counter += 1
        return "ok"

    def scope(user_id: int) -> str:
        with scope_function() as session:
            session.get(User, user_id).counter += 1
        return "ok"

    def mixin(user_id: int) -> str:
        service.touch(user_id)
        return "ok"

    return {
        "get_db_session": uow,
        "request_manager": request_manager,
        "session_scope": scope,
        "mixin": mixin,
    }


def _add_w3_routes(bench: Bench) -> None:
    Session, fsa_db = bench.Session, bench.fsa_db

    def plain(user_id: int) -> str:
        with Session.begin() as session:
            session.get(User, user_id).counter += 1
        return "ok"

    def fsa(user_id: int) -> str:
        fsa_db.session.get(User, user_id).counter += 1  # type: ignore[union-attr]
        fsa_db.session.commit()
        return "ok"

    views = library_views(session_scope, bench.service)
    _routes(bench.floor_app, sqlalchemy=plain)
    _routes(bench.fsa_app, flask_sqlalchemy=fsa)
    _routes(bench.app, **views)
    _routes(bench.own_app, get_db_session=views["get_db_session"])


def engine_options(url: str, application_name: str | None = None) -> dict[str, Any]:
    """Engine options for :func:`make_app`: thread-shared SQLite, an application_name."""
    options: dict[str, Any] = {}
    if url.startswith("sqlite"):
        options["connect_args"] = {"check_same_thread": False}
    elif application_name and url.startswith("postgresql"):
        options["connect_args"] = {"application_name": application_name}
    return options


def make_app(url: str, application_name: str | None = None) -> tuple[Flask, SQLAlchemy]:
    """A Flask-SQLAlchemy app with the extension adopting its engine (memory.py)."""
    app = Flask(f"bench_{application_name or 'app'}")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url, application_name)
    db = SQLAlchemy()
    db.init_app(app)
    UnifiedSession(app, db=db)
    with app.app_context():
        no_fsync(db.engine)
    return app, db


# -- W1 / W2 ---------------------------------------------------------------------------


def _in_contexts(app: Flask, per_context: int, unit: Callable[[int], None]) -> Batch:
    """A batch: ``per_context`` units per app context (a "request"), contexts in a row."""

    def batch(ids: list[int]) -> None:
        for start in range(0, len(ids), per_context):
            with app.app_context():
                for i in ids[start : start + per_context]:
                    unit(i)

    return batch


def unit_candidates(bench: Bench, *, write: bool, per_context: int = 1) -> dict[str, Batch]:
    Session, fsa_db, service, factory = bench.Session, bench.fsa_db, bench.service, bench.factory
    uow = bench.app.unified_session_manager  # type: ignore[attr-defined]
    rsm = bench.app.request_session_manager  # type: ignore[attr-defined]
    own = bench.own_app.unified_session_manager  # type: ignore[attr-defined]

    def plain(i: int) -> None:
        with Session.begin() as session:
            user = session.get(User, i)
            if write:
                user.counter += 1

    def fsa(i: int) -> None:
        user = fsa_db.session.get(User, i)
        if write:
            user.counter += 1  # type: ignore[union-attr]
        fsa_db.session.commit()

    def get_db_session(i: int) -> None:
        with uow.get_db_session() as session:
            user = session.get(User, i)
            if write:
                user.counter += 1

    def own_get_db_session(i: int) -> None:
        with own.get_db_session() as session:
            user = session.get(User, i)
            if write:
                user.counter += 1

    def request_manager(i: int) -> None:
        with rsm.session_scope() as session:
            user = session.get(User, i)
            if write:
                user.counter += 1

    def mixin(i: int) -> None:
        if write:
            service.touch(i)
        else:
            service.read(i)

    def scope(i: int) -> None:
        with session_scope() as session:
            user = session.get(User, i)
            if write:
                user.counter += 1  # type: ignore[union-attr]

    def scope_outside(ids: list[int]) -> None:
        for i in ids:
            with factory.session_scope() as session:
                user = session.get(User, i)
                if write:
                    user.counter += 1  # type: ignore[union-attr]

    return {
        FLOOR: _in_contexts(bench.floor_app, per_context, plain),
        FSA: _in_contexts(bench.fsa_app, per_context, fsa),
        UOW: _in_contexts(bench.app, per_context, get_db_session),
        UOW_OWN: _in_contexts(bench.own_app, per_context, own_get_db_session),
        RSM: _in_contexts(bench.app, per_context, request_manager),
        MIXIN: _in_contexts(bench.app, per_context, mixin),
        SCOPE: _in_contexts(bench.app, per_context, scope),
        SCOPE_OUT: scope_outside,
    }


# -- W3 --------------------------------------------------------------------------------


def wsgi_batch(app: Flask, prefix: str, errors: dict[str, int]) -> Batch:
    """A batch calling ``POST /<prefix>/<id>`` of ``app`` as a WSGI application per id.

    The environ is prepared once (no test client); a non-200 answer counts in ``errors``.
    """
    base = EnvironBuilder(path="/", method="POST", base_url="http://bench.local/").get_environ()
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return None

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


def route_candidates(bench: Bench) -> dict[str, Batch]:
    """Each route called as a WSGI application with a prepared environ (no test client)."""
    errors = bench.w3_errors
    return {
        FLOOR: wsgi_batch(bench.floor_app, "sqlalchemy", errors),
        FSA: wsgi_batch(bench.fsa_app, "flask_sqlalchemy", errors),
        UOW: wsgi_batch(bench.app, "get_db_session", errors),
        UOW_OWN: wsgi_batch(bench.own_app, "get_db_session", errors),
        RSM: wsgi_batch(bench.app, "request_manager", errors),
        MIXIN: wsgi_batch(bench.app, "mixin", errors),
        "session_scope()": wsgi_batch(bench.app, "session_scope", errors),
    }


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


# -- where the overhead goes ------------------------------------------------------------


def _best_of(
    variants: dict[str, Callable[[], object]], number: int, repeat: int = 9
) -> dict[str, float]:
    """µs per call of each variant: the minimum over ``repeat`` interleaved timings."""
    import timeit

    best = {name: float("inf") for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeat):
        for name, fn in variants.items():
            best[name] = min(best[name], timeit.timeit(fn, number=number) / number * 1e6)
    return best


def breakdown(bench: Bench) -> list[tuple[str, float]]:
    """The parts of a unit's cost, each measured alone (no statement unless stated)."""
    from sqlalchemy.orm import Session

    from flask_unified_session.session_factory import _tracked_class

    uow = bench.app.unified_session_manager  # type: ignore[attr-defined]
    factory = get_state(bench.app).factory

    def empty_unit() -> None:
        with uow.get_db_session():
            pass

    def in_context(app: Flask, fn: Callable[[], object] | None = None) -> Callable[[], None]:
        def run() -> None:
            with app.app_context():
                if fn is not None:
                    fn()

        return run

    with bench.app.app_context():
        bench.db.session()
        inner = _best_of(
            {
                "protocol": empty_unit,
                "context": factory.context_provider,  # type: ignore[dict-item]
                "lookup": factory.context_session,  # type: ignore[dict-item]
            },
            20_000,
        )
    plain = sessionmaker(bench.own_engine, expire_on_commit=False)
    tracked = sessionmaker(bench.own_engine, expire_on_commit=False, class_=_tracked_class(Session))
    reader_commit, reader_rollback = bench.Session(), bench.Session()

    def read_commit() -> None:
        reader_commit.get(User, 5)
        reader_commit.commit()

    def read_rollback() -> None:
        reader_rollback.get(User, 5)
        reader_rollback.rollback()

    outer = _best_of(
        {
            "fsa ctx": in_context(bench.fsa_app),
            "fsa+u ctx": in_context(bench.app),
            "fsa+u session": in_context(bench.app, bench.db.session),
            "fsa+u first unit": in_context(bench.app, empty_unit),
            "floor checkout": lambda: bench.floor_engine.connect().close(),
            "own checkout": lambda: bench.own_engine.connect().close(),
            "plain session": lambda: plain().close(),
            "tracked session": lambda: tracked().close(),
            "guarded session": lambda: bench.factory.create_session().close(),
        },
        3_000,
    )
    reads = _best_of({"commit": read_commit, "rollback": read_rollback}, 500)
    reader_commit.close()
    reader_rollback.close()
    return [
        (
            "unit protocol, app context's session already open (enter + exit, no statement)",
            inner["protocol"],
        ),
        ("of which the user context (session.info) in an app context", inner["context"]),
        ("of which finding the app context's session (db.session)", inner["lookup"]),
        (
            "first unit in a fresh app context, over creating db.session there",
            outer["fsa+u first unit"] - outer["fsa+u session"],
        ),
        (
            "the extension's teardown function (push + pop, over Flask-SQLAlchemy alone)",
            outer["fsa+u ctx"] - outer["fsa ctx"],
        ),
        (
            "idle pre-ping listeners, per checkout + checkin (library engine over plain)",
            outer["own checkout"] - outer["floor checkout"],
        ),
        (
            "TrackedSession (leak-guard class) create + close, over Session",
            outer["tracked session"] - outer["plain session"],
        ),
        (
            "create_session()'s leak guard (weakref.finalize), over TrackedSession",
            outer["guarded session"] - outer["tracked session"],
        ),
        (
            "read-only unit ending in COMMIT, over ROLLBACK (get by primary key, then end)",
            reads["commit"] - reads["rollback"],
        ),
    ]
