"""Per-test overhead of the test strategies, against a suite's own create_all/drop_all.

``python -m benchmarks.plugin_overhead [--rounds N] [--backends postgresql,mariadb,sqlite]``

Every "test" runs the same body: three units of work that commit four rows into two of
a ten-table schema (foreign keys included). Each strategy wraps that body:

* ``bare``: the body alone (real commits, nothing removed): the reference;
* ``create_all/drop_all``: what suites without a plugin do, the schema made and dropped
  around every test;
* ``unified_rollback``: :class:`~flask_unified_session.testing.RollbackIsolation`;
* ``unified_truncate`` (DELETE) and (TRUNCATE): the snapshot and cleanup, emptying the
  tables that were empty before with ``DELETE`` or with one ``TRUNCATE``.

The figure is the median time per test, and the overhead over ``bare``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_unified_session import SessionFactory, dispose_engines
from flask_unified_session.testing.rollback import RollbackIsolation, dispose_pools
from flask_unified_session.testing.truncate import TruncateIsolation

PID = os.getpid()
TABLES = 10
PREFIX = f"bench_plugin_{PID}_"
URLS = {
    "postgresql": ("TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": ("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "sqlite": ("", f"sqlite:////tmp/fus_bench_plugin_{PID}.db"),
}


class Base(DeclarativeBase):
    pass


def _table(index: int) -> type[Base]:
    attributes: dict[str, object] = {
        "__tablename__": f"bench_plugin_{PID}_{index}",
        "id": mapped_column(sa.Integer, primary_key=True),
        "name": mapped_column(sa.String(80), default=""),
        "__annotations__": {"id": Mapped[int], "name": Mapped[str]},
    }
    if index:
        parent = f"bench_plugin_{PID}_{index - 1}.id"
        attributes["parent_id"] = mapped_column(sa.ForeignKey(parent), nullable=True)
        attributes["__annotations__"]["parent_id"] = Mapped[int | None]  # type: ignore[index]
    return type(f"Table{index}", (Base,), attributes)


MODELS = [_table(i) for i in range(TABLES)]


def body(factory: SessionFactory) -> None:
    """What one test does: three units of work, four rows in two tables."""
    first, second = MODELS[0], MODELS[1]
    with factory.session_scope() as session:
        parent = first(name="parent")
        session.add(parent)
        session.flush()
        session.add(second(name="child", parent_id=parent.id))
    with factory.session_scope() as session:
        session.add(first(name="another"))
    with factory.session_scope() as session:
        session.add(second(name="orphan"))


def measure(run: Callable[[], None], rounds: int) -> float:
    run()  # warm up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def bench(backend: str, url: str, rounds: int) -> list[tuple[str, float, float, float]]:
    factory = SessionFactory(url)
    engine = factory.engine
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)

    def bare(work: Callable[[], None]) -> None:
        work()

    def create_drop(work: Callable[[], None]) -> None:
        Base.metadata.create_all(engine)
        work()
        Base.metadata.drop_all(engine)

    def rollback(work: Callable[[], None]) -> None:
        with RollbackIsolation():
            work()

    def truncate(statement: str) -> Callable[[Callable[[], None]], None]:
        def run(work: Callable[[], None]) -> None:
            isolation = TruncateIsolation([engine], lambda name: name.startswith(PREFIX))
            if statement == "TRUNCATE":
                isolation.truncate_backends = frozenset({engine.dialect.name})
            with isolation:
                work()

        return run

    def read() -> None:
        with factory.session_scope() as session:
            session.execute(sa.select(MODELS[0].id).limit(1))

    def both(strategy: Callable[[Callable[[], None]], None], n: int) -> tuple[float, float, float]:
        return (
            measure(lambda: strategy(lambda: body(factory)), n),
            measure(lambda: strategy(read), n),
            measure(lambda: strategy(lambda: None), n),
        )

    results = [("bare (reference)", *both(bare, rounds))]
    with engine.begin() as connection:  # the bare rounds' rows: an empty schema again
        for model in reversed(MODELS):
            connection.execute(sa.delete(model))
    Base.metadata.drop_all(engine)
    results.append(("create_all/drop_all per test", *both(create_drop, max(5, rounds // 4))))
    Base.metadata.create_all(engine)
    results.append(("unified_rollback", *both(rollback, rounds)))
    results.append(("unified_truncate (DELETE)", *both(truncate("DELETE"), rounds)))
    if backend != "sqlite":  # SQLite has no TRUNCATE
        results.append(("unified_truncate (TRUNCATE)", *both(truncate("TRUNCATE"), rounds)))
    Base.metadata.drop_all(engine)
    dispose_pools()
    dispose_engines()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plugin_overhead")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--backends", default="postgresql,mariadb,sqlite")
    args = parser.parse_args(argv)
    print(f"per-test time in ms, median of {args.rounds} rounds, {TABLES} tables")
    print("writes: a test of 3 commits (4 rows); reads: a test of one SELECT; empty: no body;")
    print("overhead: over the same test without a strategy (bare)")
    for backend in args.backends.split(","):
        variable, default = URLS[backend]
        url = (os.environ.get(variable) if variable else None) or default
        try:
            results = bench(backend, url, args.rounds)
        except sa.exc.OperationalError as exc:
            print(f"{backend}: skipped ({str(exc.orig).splitlines()[0]})")
            continue
        reference, reading = results[0][1], results[0][2]
        print(f"\n{backend:30} {'writes':>8} {'over':>9} {'reads':>7} {'over':>9} {'empty':>6}")
        for name, ms, read_ms, empty in results:
            bare = name.startswith("bare")
            extra = "" if bare else f"{ms - reference:+9.1f}"
            extra_read = "" if bare else f"{read_ms - reading:+9.1f}"
            print(f"  {name:28} {ms:8.1f} {extra:>9} {read_ms:7.1f} {extra_read:>9} {empty:6.1f}")
    if os.path.exists(URLS["sqlite"][1][10:]):
        os.remove(URLS["sqlite"][1][10:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
