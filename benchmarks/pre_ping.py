"""Issue 11: what the library's idle pre-ping costs, against SQLAlchemy's own pre-ping.

W1 (get one row by primary key, update it, commit) on PostgreSQL, outside Flask, one unit
after another in one thread (a busy pool), each candidate on its own engine:

* ``sessionmaker, no pre-ping (floor)``: ``create_engine(url)``, ``Session.begin()``;
* ``sessionmaker, pool_pre_ping=True``: the same with SQLAlchemy's ping on every checkout
  (one extra round trip per unit);
* ``session_scope() (library defaults)``: ``SessionFactory(url).session_scope()`` with the
  library's defaults (idle pre-ping: a connection idle in the pool for longer than
  ``DB_POOL_PRE_PING_IDLE``, default 1 s, is pinged at checkout; connect timeout; 5 + 10);
* ``sessionmaker on the library's engine`` (informational): ``Session.begin()`` on that
  factory's engine, so the engine's hooks are separated from the unit-of-work protocol.

The pings each candidate sent are counted (a wrapper around its dialect's ``do_ping``).
The target is judged on paired wall-time differences (the ping is a round trip: wall time
is what it costs), as ``(floor + difference) / floor``.

``python -m benchmarks.pre_ping [--pairs N]`` runs this section alone.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from flask_unified_session import DuplicateEngineWarning, SessionFactory, dispose_engines

from .common import User, create_schema, drop_schema, postgresql_url, reachable, table
from .common import verdict as _verdict
from .units import Batch, run_interleaved, run_paired

FLOOR = "sessionmaker, no pre-ping (floor)"
SA_PING = "sessionmaker, pool_pre_ping=True"
LIBRARY = "session_scope() (library defaults)"
LIBRARY_ENGINE = "sessionmaker on the library's engine"
MAX_RATIO = 1.03


def _count_pings(engine: sa.Engine) -> list[int]:
    """Count ``do_ping`` calls on this engine's dialect (both pre-pings go through it)."""
    counter = [0]
    dialect = engine.dialect
    do_ping = dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        counter[0] += 1
        return bool(do_ping(dbapi_connection))

    dialect.do_ping = counting  # type: ignore[method-assign]
    return counter


def _plain(Session: sessionmaker[Any]) -> Batch:
    def batch(ids: list[int]) -> None:
        for i in ids:
            with Session.begin() as session:
                session.get(User, i).counter += 1

    return batch


def _library(factory: SessionFactory) -> Batch:
    def batch(ids: list[int]) -> None:
        for i in ids:
            with factory.session_scope() as session:
                session.get(User, i).counter += 1  # type: ignore[union-attr]

    return batch


def run(url: str, size: dict[str, int]) -> list[tuple[str, str, str]]:
    """The section: tables printed, targets returned."""
    warnings.simplefilter("ignore", DuplicateEngineWarning)
    floor_engine = sa.create_engine(url)
    ping_engine = sa.create_engine(url, pool_pre_ping=True)
    factory = SessionFactory(url)
    engines = {
        FLOOR: floor_engine,
        SA_PING: ping_engine,
        LIBRARY: factory.engine,
    }
    create_schema(floor_engine)
    try:
        pings = {name: _count_pings(engine) for name, engine in engines.items()}
        pings[LIBRARY_ENGINE] = pings[LIBRARY]  # one engine: counted together
        candidates: dict[str, Batch] = {
            FLOOR: _plain(sessionmaker(floor_engine)),
            SA_PING: _plain(sessionmaker(ping_engine)),
            LIBRARY: _library(factory),
            LIBRARY_ENGINE: _plain(sessionmaker(factory.engine)),
        }
        ops, rounds = size["ops_postgresql"], size["rounds"]
        units_run = {name: 0 for name in candidates}
        pings_seen = {name: 0 for name in candidates}

        def counting(name: str, batch: Batch) -> Batch:
            def run_batch(ids: list[int]) -> None:
                before = pings[name][0]
                batch(ids)
                units_run[name] += len(ids)
                pings_seen[name] += pings[name][0] - before

            return run_batch

        counted: dict[str, Batch] = {
            name: counting(name, batch) for name, batch in candidates.items()
        }
        results = run_interleaved(counted, ops=ops, rounds=rounds, warmup=ops)
        paired = run_paired(counted, FLOOR, ops=size["pair_ops"], pairs=size["pairs"])
        # A quiet period: every connection idle for longer than the threshold, then one
        # unit each; the library's pre-ping must ping (and SQLAlchemy's always does).
        idle = factory.settings.pool_pre_ping_idle
        time.sleep(idle + 0.2)
        quiet = {}
        for name in (FLOOR, SA_PING, LIBRARY):
            before = pings[name][0]
            candidates[name]([1])
            quiet[name] = pings[name][0] - before
        rows_check = _sum(floor_engine)
    finally:
        drop_schema(floor_engine)
        floor_engine.dispose()
        ping_engine.dispose()
        factory.dispose()
        dispose_engines()

    floor = results[FLOOR]
    rows = []
    targets = []
    for name, r in results.items():
        cpu_diff, wall_diff = paired.get(name, (0.0, 0.0))
        ratio = (floor.wall_us + wall_diff) / floor.wall_us
        mark = ""
        if name == LIBRARY:
            mark = _verdict(ratio <= MAX_RATIO)
            targets.append(
                (
                    f"pre-ping postgresql: {name} <= {MAX_RATIO}x the no-pre-ping floor (wall)",
                    f"{wall_diff:+.1f} µs paired, {ratio:.3f}x",
                    mark,
                )
            )
        per_k = 1000 * pings_seen[name] / units_run[name] if units_run[name] else 0.0
        rows.append(
            [
                name,
                f"{r.wall_us:,.1f}",
                f"{r.cpu_us:,.1f}",
                f"{wall_diff:+.1f}",
                f"{cpu_diff:+.1f}",
                f"{ratio:.3f}",
                f"{per_k:,.0f}",
                str(quiet.get(name, "")),
                mark,
            ]
        )
    print(
        f"## Pre-ping — W1 on postgresql ({ops} ops x {rounds} rounds, medians; paired: "
        f"{size['pairs']} pairs of {size['pair_ops']} ops; idle threshold {idle:g} s)\n"
    )
    print(
        table(
            [
                "candidate",
                "wall µs/op",
                "CPU µs/op",
                "wall vs floor µs (paired)",
                "CPU vs floor µs (paired)",
                "time ratio (wall, paired)",
                "pings per 1,000 units",
                "pings after a quiet period",
                "target",
            ],
            rows,
        )
    )
    print(f"\nrows updated: {rows_check:,}\n")
    return targets


def _sum(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.sum(User.counter))).scalar_one())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pre_ping")
    parser.add_argument("--pairs", type=int, default=201)
    parser.add_argument("--rounds", type=int, default=61)
    args = parser.parse_args(argv)
    url = postgresql_url()
    why = reachable(url)
    if why is not None:
        print(f"PostgreSQL unreachable: {why}")
        return 1
    size = {"ops_postgresql": 30, "rounds": args.rounds, "pair_ops": 10, "pairs": args.pairs}
    targets = run(url, size)
    print(table(["target", "measured", "result"], targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
