"""A pre-forking server: children never share a connection with each other or the parent."""

from __future__ import annotations

import json
import os
import select
import time
import warnings

import pytest
import sqlalchemy as sa
from flask import Flask, current_app

from flask_unified_session import UnifiedSession

from .conftest import PgAdmin, app_name, size

pytestmark = [pytest.mark.reliability, pytest.mark.postgresql]

WORKERS = 2


def make_app(url: str, name: str) -> Flask:
    app = Flask(__name__)
    app.config["UNIFIED_SESSION_DATABASE_URL"] = sa.make_url(url).update_query_dict(
        {"application_name": name}
    )
    UnifiedSession(app)

    @app.get("/pid")
    def backend_pid() -> dict[str, int]:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            return {"pid": int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())}

    return app


def child(app: Flask, requests: int, write_fd: int) -> None:
    """A worker: serve ``requests`` requests, report the backend pids seen, then _exit."""
    status = 1
    try:
        report: dict[str, object] = {"worker": os.getpid(), "pids": [], "failures": []}
        client = app.test_client()
        for _ in range(requests):
            response = client.get("/pid")
            if response.status_code == 200:
                report["pids"].append(response.get_json()["pid"])  # type: ignore[union-attr]
            else:
                report["failures"].append(response.status_code)  # type: ignore[union-attr]
        engine = app.extensions["unified_session"].factory.engine
        report["checkedout"] = engine.pool.checkedout()
        os.write(write_fd, json.dumps(report).encode() + b"\n")
        status = 0
    finally:
        os._exit(status)


def test_forked_workers_use_their_own_connections(pg_url: str, pg_admin: PgAdmin) -> None:
    """After the parent used the pool, 2 forked workers get distinct backends; all succeed."""
    name = app_name("fork")
    app = make_app(pg_url, name)
    client = app.test_client()
    parent_pid = client.get("/pid").get_json()["pid"]  # the parent's pool holds a connection
    assert pg_admin.backends(name) == [parent_pid]
    requests = size(50, 1000)
    children: dict[int, int] = {}
    for _ in range(WORKERS):
        read_fd, write_fd = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads; none run here.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            child(app, requests, write_fd)
        os.close(write_fd)
        children[pid] = read_fd
    reports = []
    deadline = time.monotonic() + 120
    try:
        for pid, read_fd in children.items():
            chunks = []
            while time.monotonic() < deadline:
                ready, _, _ = select.select([read_fd], [], [], 1.0)
                if ready:
                    chunk = os.read(read_fd, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            os.close(read_fd)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, f"worker {pid} failed"
            reports.append(json.loads(b"".join(chunks)))
    finally:
        for pid in children:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            except ProcessLookupError:
                pass
    assert len(reports) == WORKERS
    seen = [set(r["pids"]) for r in reports]
    for report in reports:
        assert report["failures"] == []
        assert len(report["pids"]) == requests
        assert report["checkedout"] == 0
    assert not seen[0] & seen[1], "two workers used the same server connection"
    assert parent_pid not in seen[0] | seen[1], "a worker reused the parent's connection"
    # The parent's own connection still works after its children exited.
    assert client.get("/pid").get_json()["pid"] == parent_pid
