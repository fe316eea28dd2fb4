"""W4: the bench apps under waitress (threads) on 127.0.0.1, loaded from a second process.

One app (and so one engine, one pool, one ``application_name``) per candidate; the
server's connections are counted by polling ``pg_stat_activity`` on a connection of its
own while the load runs.
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
from flask import Flask
from sqlalchemy.pool import NullPool
from waitress.server import create_server

from .common import PID, ROWS, median
from .units import make_app

CANDIDATES = {
    "sqlalchemy (floor)": "sqlalchemy",
    "flask_sqlalchemy db.session": "flask_sqlalchemy",
    "get_db_session()": "get_db_session",
    "request manager session_scope()": "request_manager",
}


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
        self.server.close()
        self.server.task_dispatcher.shutdown(timeout=5)
        for channel in list(self.server._map.values()):
            channel.close()
        self.thread.join(timeout=5)


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
    apps: dict[str, tuple[Flask, Any, Server]] = {}
    results: dict[str, LoadResult] = {}
    try:
        for name, prefix in CANDIDATES.items():
            application_name = f"fus_bench_{PID}_{prefix}"[:63]
            app, db = make_app(url, application_name)
            apps[name] = (app, db, Server(app, threads))
            results[name] = LoadResult(name, application_name)
        with apps[next(iter(apps))][0].app_context():
            pool = apps[next(iter(apps))][1].engine.pool
            limits = {
                "threads": threads,
                "pool_size": pool.size(),
                "max_overflow": pool._max_overflow,
            }
        for name in CANDIDATES:  # warm up: connect, fill caches
            _generate(apps[name][2].port, CANDIDATES[name], 200, seconds, concurrency)
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
