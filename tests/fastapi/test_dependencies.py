"""FastAPI dependencies: the commit happens before the response starts."""

from __future__ import annotations

import asyncio
import threading
from contextlib import AsyncExitStack
from typing import Annotated, Any

import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from flask_unified_session import get_default_factory, signals
from flask_unified_session.asyncio import get_async_engine, get_async_session_generator
from flask_unified_session.fastapi import (
    AsyncSessionDep,
    SessionDep,
    lifespan,
    session_dependency,
)
from tests.conftest import Observer, User
from tests.fastapi.conftest import DeferredObserver, client, run


def make_api() -> FastAPI:
    api = FastAPI(lifespan=lifespan)

    @api.post("/sync/{name}")
    def add_sync(name: str, session: SessionDep) -> dict[str, str]:
        session.add(User(name=name))
        return {"added": name}

    @api.post("/async/{name}")
    async def add_async(name: str, session: AsyncSessionDep) -> dict[str, str]:
        session.add(User(name=name))
        return {"added": name}

    @api.post("/sync-refused/{name}")
    def refused_sync(name: str, session: SessionDep) -> None:
        session.add(User(name=name))
        session.flush()
        raise HTTPException(409, "refused")

    @api.post("/async-refused/{name}")
    async def refused_async(name: str, session: AsyncSessionDep) -> None:
        session.add(User(name=name))
        await session.flush()
        raise HTTPException(409, "refused")

    @api.post("/generator/{name}")
    async def generator(
        name: str, session: Annotated[AsyncSession, Depends(get_async_session_generator)]
    ) -> None:
        session.add(User(name=name))
        if name == "kept":
            await session.commit()

    return api


def test_units_commit_before_the_response(env_url: str, observer: Observer) -> None:
    api = make_api()
    seen: list[list[str]] = []

    async def main() -> None:
        async with lifespan(api), client(api) as http:
            for path in ("/sync/a", "/async/b"):
                response = await http.post(path)
                # committed by the time the client has the response
                seen.append(await asyncio.to_thread(observer.names))
                assert response.status_code == 200, response.text

    run(main())
    assert seen == [["a"], ["a", "b"]]


def test_commit_failure_is_a_500_and_nothing_is_committed(env_url: str, observer: Observer) -> None:
    """A unique violation at commit (the flush in commit): 500, never 200."""
    api = make_api()

    async def main() -> list[int]:
        async with client(api) as http:
            codes = [(await http.post("/sync/dup")).status_code]
            codes.append((await http.post("/sync/dup")).status_code)
            codes.append((await http.post("/async/dup")).status_code)
            return codes

    assert run(main()) == [200, 500, 500]
    assert observer.names() == ["dup"]


def test_endpoint_error_rolls_back(env_url: str, observer: Observer) -> None:
    api = make_api()

    async def main() -> list[int]:
        async with client(api) as http:
            return [
                (await http.post("/sync-refused/x")).status_code,
                (await http.post("/async-refused/y")).status_code,
            ]

    assert run(main()) == [409, 409]
    assert observer.count() == 0


def test_generator_dependency_commits_only_when_the_consumer_does(
    env_url: str, observer: Observer
) -> None:
    api = make_api()

    async def main() -> None:
        async with client(api) as http:
            await http.post("/generator/dropped")
            await http.post("/generator/kept")
            assert get_async_engine().pool.checkedout() == 0  # type: ignore[attr-defined]

    run(main())
    assert observer.names() == ["kept"]


def test_sync_dependency_entered_and_exited_in_different_threads(
    env_url: str, observer: Observer
) -> None:
    """What Starlette's thread pool does: enter in one worker thread, exit in another."""
    threads: dict[str, threading.Thread] = {}

    def on_opened(_sender: Any, **_kw: Any) -> None:
        threads["opened"] = threading.current_thread()

    def on_committed(_sender: Any, **_kw: Any) -> None:
        threads["committed"] = threading.current_thread()

    signals.session_opened.connect(on_opened)
    signals.session_committed.connect(on_committed)

    async def main() -> None:
        stack = AsyncExitStack()
        connection = HTTPConnection({"type": "http", "fastapi_function_astack": stack})
        entered: list[Any] = []
        worker = threading.Thread(target=lambda: entered.append(session_dependency(connection)))
        worker.start()
        worker.join()
        session = entered[0]
        await asyncio.to_thread(session.add, User(name="threads"))
        await stack.aclose()  # the exit runs in an anyio worker thread

    try:
        run(main())
    finally:
        signals.session_opened.disconnect(on_opened)
        signals.session_committed.disconnect(on_committed)
    assert threads["opened"] is not threads["committed"]
    assert observer.names() == ["threads"]
    assert get_default_factory().engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_without_the_per_call_stack_the_dependency_refuses(env_url: str) -> None:
    with pytest.raises(RuntimeError, match=r"FastAPI >= 0\.121"):
        session_dependency(HTTPConnection({"type": "http"}))


def test_lifespan_disposes_the_engines(env_url: str, observer: Observer) -> None:
    api = make_api()

    async def main() -> None:
        async with lifespan(api), client(api) as http:
            await http.post("/async/a")
            engine = get_async_engine()
            assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        assert engine.pool.checkedin() == 0  # type: ignore[attr-defined]
        assert get_async_engine() is not engine

    run(main())


@pytest.mark.postgresql
def test_deferred_constraint_failing_at_commit_is_a_500(observer_pg: DeferredObserver) -> None:
    """UNIQUE ... DEFERRABLE INITIALLY DEFERRED: the INSERTs succeed, COMMIT fails."""
    api = FastAPI()
    table = observer_pg.deferred_table

    @api.post("/sync")
    def sync_route(session: SessionDep) -> dict[str, bool]:
        session.execute(sa.text(f"INSERT INTO {table} VALUES (1), (1)"))
        return {"ok": True}

    @api.post("/async")
    async def async_route(session: AsyncSessionDep) -> dict[str, bool]:
        await session.execute(sa.text(f"INSERT INTO {table} VALUES (2), (2)"))
        return {"ok": True}

    async def main() -> list[int]:
        async with client(api) as http:
            return [(await http.post("/sync")).status_code, (await http.post("/async")).status_code]

    assert run(main()) == [500, 500]
    assert observer_pg.scalar(f"SELECT count(*) FROM {table}") == 0
