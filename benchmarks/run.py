"""``python -m benchmarks``: every workload, every candidate, one process, one report."""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import sqlalchemy as sa

from flask_unified_session import DuplicateEngineWarning, dispose_engines

from . import async_units, load, pre_ping, startup, units
from .common import (
    User,
    create_schema,
    drop_schema,
    machine,
    postgresql_url,
    reachable,
    table,
    verdict,
)
from .units import FLOOR, FSA

# W1/W2: every library entry point in an app context (the outside-Flask row is shown only).
W12_TARGETED = (units.UOW, units.UOW_OWN, units.RSM, units.MIXIN, units.SCOPE)
W3_TARGETED = (units.UOW, units.UOW_OWN, units.RSM, units.MIXIN, "session_scope()")
W4_TARGETED = ("get_db_session()",)
MAX_CPU_OVER_US = 25.0
MIN_RATIO_W3 = 0.97
MIN_RATIO_W4 = 0.95
W4_THREADS = 8
W4_CLIENTS = 16
MAX_IMPORT_MS = 30.0
MAX_MEMORY_MB = 2.0

SIZES = {
    # section: (full, quick)
    # many short rounds: the median then shrugs off a burst of another process's work
    # (the load test too: with 3 rounds of 8 s its ratio moved by 5% from run to run)
    "ops_sqlite": (50, 30),
    "ops_postgresql": (30, 15),
    "rounds": (61, 15),
    "pairs": (201, 41),
    "pair_ops": (10, 10),
    "load_rounds": (7, 1),
    "load_requests": (5000, 1000),
    "load_seconds": (5.0, 4.0),
    "import_runs": (15, 5),
    "memory_units": (100_000, 20_000),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer operations and rounds")
    parser.add_argument(
        "--only",
        default="units,routes,pre_ping,async,load,import,memory",
        help="comma-separated sections: units (W1, W2), routes (W3), pre_ping (W1 on "
        "PostgreSQL against SQLAlchemy's pre-ping), async (async W1, W2, FastAPI W5), load "
        "(W4, logged in), import, memory",
    )
    parser.add_argument(
        "--per-context",
        type=int,
        default=1,
        metavar="N",
        help="W1/W2: units per app context (a 'request'; default 1)",
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--profile",
        metavar="CANDIDATE",
        help="cProfile one W1 and W2 candidate on each backend (e.g. 'get_db_session()')",
    )
    args = parser.parse_args(argv)
    size = {k: v[1] if args.quick else v[0] for k, v in SIZES.items()}
    sections = set(args.only.split(","))
    warnings.simplefilter("ignore", DuplicateEngineWarning)
    started = time.perf_counter()

    print("# flask-unified-session benchmarks" + (" (--quick)" if args.quick else ""))
    print()
    print(table(["machine", ""], machine()))
    print()
    report: dict[str, Any] = {"machine": dict(machine()), "targets": []}
    targets: list[tuple[str, str, bool]] = []

    tmp = tempfile.mkdtemp(
        prefix="fus-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    backends: dict[str, str] = {}
    for backend in args.backends.split(","):
        if backend == "sqlite":
            backends["sqlite"] = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        elif backend == "postgresql":
            url = postgresql_url()
            why = reachable(url)
            if why is None:
                backends["postgresql"] = url
            else:
                print(f"> PostgreSQL skipped: {why} (set TEST_POSTGRESQL_URL)\n")
    try:
        for backend, url in backends.items():
            ops = size[f"ops_{backend}"]
            if sections & {"units", "routes"} or args.profile:
                bench = units.build(url)
                create_schema(bench.floor_engine)
                try:
                    if args.profile:
                        _profile(bench, args.profile, backend, ops, args.per_context)
                    if "units" in sections:
                        for workload, write in (("W1 unit of work", True), ("W2 read-only", False)):
                            candidates = units.unit_candidates(
                                bench, write=write, per_context=args.per_context
                            )
                            results = units.run_interleaved(
                                candidates, ops=ops, rounds=size["rounds"], warmup=ops
                            )
                            paired = units.run_paired(
                                candidates, FLOOR, ops=size["pair_ops"], pairs=size["pairs"]
                            )
                            targets += _print_units(
                                workload,
                                backend,
                                ops,
                                size,
                                results,
                                paired,
                                report,
                                args.per_context,
                            )
                    if "units" in sections:
                        _breakdown(bench, backend, report)
                    if "routes" in sections:
                        candidates = units.route_candidates(bench)
                        results = units.run_interleaved(
                            candidates, ops=ops, rounds=size["rounds"], warmup=ops
                        )
                        paired = units.run_paired(
                            candidates, FSA, ops=size["pair_ops"], pairs=size["pairs"]
                        )
                        errors = bench.w3_errors["count"]
                        targets += _print_routes(
                            backend, ops, size, results, paired, errors, report
                        )
                finally:
                    drop_schema(bench.floor_engine)
                    bench.dispose()
                    dispose_engines()
        if "pre_ping" in sections:
            if "postgresql" in backends:
                targets += pre_ping.run(backends["postgresql"], size)
            else:
                print("> pre-ping skipped: it runs on PostgreSQL only\n")
        if "async" in sections:
            targets += async_units.run(backends, size)
        if "load" in sections:
            if "postgresql" in backends:
                targets += _load(backends["postgresql"], size, report)
            else:
                print("> W4 skipped: it runs on PostgreSQL only\n")
        if "import" in sections:
            targets += _imports(size["import_runs"], report)
        if "memory" in sections:
            targets += _memory(size["memory_units"], report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("## Targets\n")
    print(table(["target", "measured", "result"], targets))
    print()
    failed = [t for t in targets if t[2] != "PASS"]
    print(
        f"{len(targets) - len(failed)} of {len(targets)} targets met; "
        f"total time {time.perf_counter() - started:.0f} s"
    )
    report["targets"] = [{"target": t, "measured": m, "result": r} for t, m, r in targets]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def _print_units(  # type: ignore[no-untyped-def]
    workload, backend, ops, size, results, paired, report, per_context
) -> list[tuple[str, str, str]]:
    floor = results[FLOOR]
    rows = []
    targets = []
    for name, r in results.items():
        over = r.cpu_us - floor.cpu_us
        paired_over = paired.get(name, (0.0, 0.0))[0]
        ratio_cpu = floor.cpu_us / (floor.cpu_us + paired_over)
        mark = ""
        if name in W12_TARGETED:
            mark = verdict(paired_over <= MAX_CPU_OVER_US)
            targets.append(
                (
                    f"{workload.split()[0]} {backend}: {name} <= {MAX_CPU_OVER_US:.0f} µs CPU "
                    "over SQLAlchemy (app context)",
                    f"{paired_over:+.1f} µs paired, ratio {ratio_cpu:.3f}",
                    mark,
                )
            )
        rows.append(
            [
                name,
                _fmt(r.wall_us),
                _fmt(1e6 / r.wall_us, 0),
                _fmt(r.cpu_us),
                f"{over:+.1f}",
                f"{paired_over:+.1f}",
                f"{ratio_cpu:.3f}",
                mark,
            ]
        )
    print(
        f"## {workload} — {backend}, in an app context, {per_context} unit(s) per context "
        f"({ops} ops x {size['rounds']} rounds, medians; paired: {size['pairs']} pairs of "
        f"{size['pair_ops']} ops)\n"
    )
    print(
        table(
            [
                "candidate",
                "wall µs/op",
                "ops/s",
                "CPU µs/op",
                "CPU over floor µs (rounds)",
                "CPU over floor µs (paired)",
                "ratio (CPU, paired)",
                "target",
            ],
            rows,
        )
    )
    print()
    report[f"{workload} {backend}"] = {
        n: {
            "wall_us": r.wall_us,
            "cpu_us": r.cpu_us,
            "paired_cpu_over_floor_us": paired.get(n, (0.0, 0.0))[0],
        }
        for n, r in results.items()
    }
    return targets


def _print_routes(  # type: ignore[no-untyped-def]
    backend, ops, size, results, paired, errors, report
) -> list[tuple[str, str, str]]:
    floor = results[FLOOR]
    fsa = results[FSA]
    rows = []
    targets = []
    for name, r in results.items():
        paired_diff = paired.get(name, (0.0, 0.0))[0]
        ratio_cpu = fsa.cpu_us / (fsa.cpu_us + paired_diff)
        mark = ""
        if name in W3_TARGETED:
            mark = verdict(ratio_cpu >= MIN_RATIO_W3)
            targets.append(
                (
                    f"W3 {backend}: {name} route >= {MIN_RATIO_W3}x Flask-SQLAlchemy route (CPU)",
                    f"{paired_diff:+.1f} µs paired, ratio {ratio_cpu:.3f}",
                    mark,
                )
            )
        rows.append(
            [
                name,
                _fmt(r.wall_us),
                _fmt(1e6 / r.wall_us, 0),
                _fmt(r.cpu_us),
                f"{r.cpu_us - floor.cpu_us:+.1f}",
                f"{paired_diff:+.1f}",
                f"{ratio_cpu:.3f}",
                mark,
            ]
        )
    print(
        f"## W3 request loop — {backend} ({ops} requests x {size['rounds']} rounds, medians; "
        f"paired: {size['pairs']} pairs of {size['pair_ops']} requests)\n"
    )
    print(
        table(
            [
                "candidate",
                "wall µs/req",
                "req/s",
                "CPU µs/req",
                "CPU over floor µs (rounds)",
                "CPU vs FSA µs (paired)",
                "ratio vs FSA (CPU, paired)",
                "target",
            ],
            rows,
        )
    )
    print(f"\nnon-200 responses: {errors}\n")
    targets.append((f"W3 {backend}: no failed request", str(errors), verdict(errors == 0)))
    report[f"W3 {backend}"] = {
        n: {
            "wall_us": r.wall_us,
            "cpu_us": r.cpu_us,
            "paired_cpu_vs_fsa_us": paired.get(n, (0.0, 0.0))[0],
        }
        for n, r in results.items()
    }
    return targets


def _load(url: str, size: dict[str, Any], report: dict[str, Any]) -> list[tuple[str, str, str]]:
    threads, concurrency = W4_THREADS, W4_CLIENTS
    schema_engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    create_schema(schema_engine)
    load.create_members(schema_engine)
    try:
        expired = load.expired_user_cost(url)
        results, limits = load.run_load(
            url,
            rounds=size["load_rounds"],
            requests=size["load_requests"],
            seconds=size["load_seconds"],
            threads=threads,
            concurrency=concurrency,
        )
        # Every answered request wrote both rows in one commit (warm-ups included).
        with schema_engine.connect() as connection:
            written = connection.execute(
                sa.select(
                    sa.select(sa.func.sum(User.counter)).scalar_subquery(),
                    sa.select(sa.func.sum(load.Member.hits)).scalar_subquery(),
                )
            ).one()
    finally:
        drop_schema(schema_engine)
        schema_engine.dispose()
        dispose_engines()
    summary = load.summarize(results)
    ref = results[load.REFERENCE]
    fsa_rps = summary[load.REFERENCE]["rps"]
    rows = []
    targets = []
    for name, r in results.items():
        s = summary[name]
        # Per round, each candidate against the reference's run of the same round.
        round_ratio = statistics.median(c / f for c, f in zip(r.rps, ref.rps, strict=True))
        s["round_ratio"] = round_ratio
        rows.append(
            [
                name,
                _fmt(s["rps"], 0),
                f"{s['rps'] / fsa_rps:.3f}",
                f"{round_ratio:.3f}",
                _fmt(s["p50_ms"], 2),
                _fmt(s["p99_ms"], 2),
                r.ok,
                r.errors,
                r.max_server_connections,
                r.max_checked_out,
            ]
        )
        if name in W4_TARGETED:
            ok = (
                round_ratio >= MIN_RATIO_W4
                and r.errors == 0
                and r.max_server_connections <= threads
            )
            targets.append(
                (
                    f"W4 logged in: {name} throughput >= {MIN_RATIO_W4}x db.session, 0 errors, "
                    f"server connections <= {threads} threads",
                    f"{round_ratio:.3f}x, {r.errors} errors, "
                    f"{r.max_server_connections} connections",
                    verdict(ok),
                )
            )
    print(
        f"## W4 logged-in load — postgresql, Flask-Login (user loader on db.session), "
        f"waitress {threads} threads, {concurrency} client threads in a second process, "
        f"{size['load_requests']} requests or {size['load_seconds']:.0f} s per run x "
        f"{size['load_rounds']} rounds (medians), pool {limits['pool_size']} + "
        f"{limits['max_overflow']}\n"
    )
    print(
        table(
            [
                "candidate",
                "req/s",
                "ratio vs db.session (medians)",
                "ratio vs db.session (per round, median)",
                "p50 ms",
                "p99 ms",
                "ok",
                "errors",
                "max server connections",
                "max checked out",
            ],
            rows,
        )
    )
    kinds = {n: sorted(r.error_kinds) for n, r in results.items() if r.error_kinds}
    if kinds:
        print(f"\nerror kinds: {kinds}")
    print(
        f"\nrows updated (all runs and warm-ups): users {written[0]:,}, members' hits "
        f"{written[1]:,}\n"
    )
    print(
        "An empty `get_db_session()` in a logged-in request after a commit (current_user "
        f"expired): {expired['statements']:.0f} statement(s), {expired['logged_in_us']:,.1f} "
        f"µs; in an anonymous request: {expired['anonymous_us']:,.1f} µs\n"
    )
    report["user context after a commit"] = expired
    targets.append(
        (
            "W4 logged in: every request's two writes committed together",
            f"{written[0]:,} / {written[1]:,}",
            verdict(written[0] == written[1]),
        )
    )
    report["W4"] = {"summary": summary, "limits": limits}
    return targets


def _breakdown(bench: units.Bench, backend: str, report: dict[str, Any]) -> None:
    parts = units.breakdown(bench)
    print(
        f"## Where a unit's time goes — {backend} (each part alone, best of 9 interleaved "
        "timings)\n"
    )
    print(table(["part", "µs"], [(name, f"{us:+.1f}") for name, us in parts]))
    print()
    report[f"breakdown {backend}"] = dict(parts)


def _imports(runs: int, report: dict[str, Any]) -> list[tuple[str, str, str]]:
    walls = startup.wall_times(runs)
    own = startup.own_import_time(runs)
    base = walls["python (nothing)"]
    rows = [
        [name, _fmt((t - base) * 1e3)] for name, t in walls.items() if name != "python (nothing)"
    ]
    print(
        f"## Import cost ({runs} fresh interpreters each, interleaved, medians, minus bare python "
        f"{base * 1e3:.1f} ms)\n"
    )
    print(table(["import", "ms"], rows))
    targets = []
    for lib, deps in startup.PAIRS:
        extra = (walls[lib] - walls[deps]) * 1e3
        targets.append(
            (
                f"import: {lib} < {MAX_IMPORT_MS:.0f} ms over {deps.split(' (')[0]}",
                f"{extra:+.1f} ms",
                verdict(extra < MAX_IMPORT_MS),
            )
        )
    print(
        f"\n`-X importtime`: the package's own modules take {own / 1e3:.1f} ms "
        "(self time, median)\n"
    )
    report["import"] = {"wall_s": walls, "own_us": own}
    return targets


def _memory(count: int, report: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    targets = []
    for candidate in ("sqlalchemy", "session_scope", "get_db_session"):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", candidate, str(count)],
            check=True,
            capture_output=True,
            text=True,
        )
        out = json.loads(done.stdout.strip().splitlines()[-1])
        growth = (out["after"] - out["before"]) / 2**20
        rows.append(
            [candidate, _fmt(out["before"] / 2**20), _fmt(out["after"] / 2**20), f"{growth:+.2f}"]
        )
        if candidate != "sqlalchemy":
            targets.append(
                (
                    f"memory: {candidate} < {MAX_MEMORY_MB:.0f} MB over {count:,} units",
                    f"{growth:+.2f} MB",
                    verdict(growth < MAX_MEMORY_MB),
                )
            )
        report.setdefault("memory", {})[candidate] = out
    print(f"## Memory — resident set over {count:,} units of work (SQLite in memory, W1)\n")
    print(table(["candidate", "RSS before MB", "RSS after MB", "growth MB"], rows))
    print()
    return targets


def _profile(bench: units.Bench, name: str, backend: str, ops: int, per_context: int) -> None:
    for workload, write in (("W1", True), ("W2", False)):
        candidates = units.unit_candidates(bench, write=write, per_context=per_context)
        for who in (FLOOR, name):
            batch = candidates[who]
            ids = [(n * 7919) % 1000 + 1 for n in range(ops)]
            batch(ids[:200])
            profiler = cProfile.Profile()
            profiler.enable()
            batch(ids)
            profiler.disable()
            print(
                f"## cProfile — {workload} {who} on {backend}, {ops} ops "
                "(times are per run, not per op)\n"
            )
            print("```text")
            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(25)
            print("```\n")
