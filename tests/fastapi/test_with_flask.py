"""A Flask app and a FastAPI app in one process: the same engines, bounded connections."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from flask_unified_session import SessionFactory, UnifiedSession, get_default_factory
from flask_unified_session.asyncio import get_async_engine, known_async_engines
from flask_unified_session.fastapi import AsyncSessionDep, SessionDep
from tests.conftest import Observer, User
from tests.fastapi.conftest import APP_NAME, DeferredObserver, client, tagged

REQUESTS = 25


def make_flask(url: str) -> tuple[Flask, SQLAlchemy]:
    app = Flask("fus_fastapi_beside")
    app.config.update(TESTING=True, PROPAGATE_EXCEPTIONS=False, SQLALCHEMY_DATABASE_URI=url)
    db = SQLAlchemy()
    db.init_app(app)
    UnifiedSession(app, db=db)
    return app, db


@pytest.fixture
def pg_url() -> str:
    from tests.conftest import server_url

    return tagged(server_url("postgresql"))


@pytest.mark.postgresql
def test_25_flask_and_25_fastapi_requests_share_two_pools(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    from flask_unified_session.asyncio import set_default_async_factory

    set_default_async_factory(None)
    observer = Observer(pg_url.split("?")[0])
    from tests.conftest import Base

    Base.metadata.create_all(observer.engine)
    app, db = make_flask(pg_url)

    @app.post("/flask/<name>")
    def flask_add(name: str) -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.execute(sa.text("SELECT pg_sleep(0.05)"))
            session.add(User(name=name))
        return "ok"

    api = FastAPI()

    @api.post("/async/{name}")
    async def async_add(name: str, session: AsyncSessionDep) -> str:
        await session.execute(sa.text("SELECT pg_sleep(0.05)"))
        session.add(User(name=name))
        return "ok"

    @api.post("/sync/{name}")
    def sync_add(name: str, session: SessionDep) -> str:
        session.execute(sa.text("SELECT pg_sleep(0.05)"))
        session.add(User(name=name))
        return "ok"

    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            count = observer.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app",
                app=APP_NAME,
            )
            peak[0] = max(peak[0], int(count))  # type: ignore[call-overload]
            done.wait(0.02)

    flask_codes: list[int] = []

    def flask_request(i: int) -> None:
        flask_codes.append(app.test_client().post(f"/flask/f{i}").status_code)

    async def fastapi_requests() -> list[int]:
        async with client(api) as http:
            responses = await asyncio.gather(
                *(http.post(f"/async/a{i}" if i % 2 else f"/sync/s{i}") for i in range(REQUESTS))
            )
            engines = [e for e, _site, _owned in known_async_engines()]
            assert engines == [get_async_engine()]
            return [r.status_code for r in responses]

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=flask_request, args=(i,)) for i in range(REQUESTS)]
    try:
        for thread in threads:
            thread.start()
        fastapi_codes = asyncio.run(fastapi_requests())
        for thread in threads:
            thread.join()
    finally:
        done.set()
        sampler.join()
    try:
        assert flask_codes == [200] * REQUESTS
        assert fastapi_codes == [200] * REQUESTS
        assert observer.count() == 2 * REQUESTS
        with app.app_context():
            # one sync engine: the FastAPI side's default factory adopted Flask-SQLAlchemy's
            assert get_default_factory().engine is db.engine
            assert SessionFactory.from_env().engine is db.engine
        settings = get_default_factory().settings
        assert settings is not None
        assert 0 < peak[0] <= 2 * (settings.pool_size + settings.max_overflow)
    finally:
        with app.app_context():
            db.engine.dispose()
        Base.metadata.drop_all(observer.engine)
        observer.dispose()


@pytest.mark.postgresql
def test_deferred_constraint_failing_at_commit_is_a_500_on_flask(
    observer_pg: DeferredObserver,
) -> None:
    from tests.conftest import server_url

    app, db = make_flask(tagged(server_url("postgresql")))
    table = observer_pg.deferred_table

    @app.post("/flask")
    def flask_add() -> str:
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.execute(sa.text(f"INSERT INTO {table} VALUES (1), (1)"))
        return "ok"

    try:
        assert app.test_client().post("/flask").status_code == 500
        assert observer_pg.scalar(f"SELECT count(*) FROM {table}") == 0
    finally:
        with app.app_context():
            db.engine.dispose()


def test_fastapi_sync_dependency_uses_the_flask_apps_engine(
    db_url: str, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On every backend: FastAPI's SessionDep beside a Flask app runs on db.engine's pool."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    app, db = make_flask(db_url)
    api = FastAPI()
    binds: list[Any] = []

    @api.post("/{name}")
    def add(name: str, session: SessionDep) -> None:
        binds.append(session.get_bind())
        session.add(User(name=name))

    async def main() -> int:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return (await http.post("/shared")).status_code

    with app.app_context():
        engine = db.engine
        assert asyncio.run(main()) == 200
    assert binds == [engine]
    assert observer.names() == ["shared"]
