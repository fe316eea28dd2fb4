"""Async W1 (a unit that updates one row), W2 (read-only unit) and W5 (a FastAPI route).

All candidates of a backend share one async engine (the library's, with its default pool
options), so the figures compare the session layers and nothing else:

* ``async_sessionmaker.begin()``: plain SQLAlchemy, the floor;
* ``async_session_scope()``: ``AsyncSessionFactory.async_session_scope()``.

W5 sends the same request through ``httpx.ASGITransport`` to FastAPI apps that differ only
in how the route gets its session; the floor there is a hand-written dependency that
yields an ``async_sessionmaker`` session and commits in the endpoint:

* ``AsyncSessionDep``: this library's dependency (commits before the response);
* ``advanced-alchemy``: its FastAPI plugin, ``commit_mode="autocommit"``;
* ``fastapi-async-sqlalchemy``: its ``SQLAlchemyMiddleware(commit_on_exit=True)``.

Peers that are not installed (``pip install -e '.[bench]'`` installs them) are skipped.
"""

import asyncio
import gc
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flask_unified_session.asyncio import AsyncSessionFactory

from .common import ROWS, User, create_schema, drop_schema, median, table, verdict

ABatch = Callable[[list[int]], Awaitable[None]]

FLOOR = "async_sessionmaker.begin() (floor)"
OURS = "async_session_scope()"
ROUTE_FLOOR = "hand-written Depends (floor)"
ROUTE_OURS = "AsyncSessionDep"
MIN_RATIO = 0.95


def unit_candidates(factory: AsyncSessionFactory, *, write: bool) -> dict[str, ABatch]:
    plain = async_sessionmaker(factory.engine, expire_on_commit=False)

    async def floor(ids: list[int]) -> None:
        for i in ids:
            async with plain.begin() as session:
                user = await session.get(User, i)
                if write:
                    user.counter += 1  # type: ignore[union-attr]

    async def ours(ids: list[int]) -> None:
        for i in ids:
            async with factory.async_session_scope() as session:
                user = await session.get(User, i)
                if write:
                    user.counter += 1  # type: ignore[union-attr]

    return {FLOOR: floor, OURS: ours}


def route_candidates(factory: AsyncSessionFactory) -> tuple[dict[str, ABatch], list[Any]]:
    """One FastAPI app per candidate, each with ``POST /users/{id}`` incrementing a row."""
    import httpx
    from fastapi import Depends, FastAPI

    from flask_unified_session.asyncio import set_default_async_factory
    from flask_unified_session.fastapi import AsyncSessionDep

    engine = factory.engine
    set_default_async_factory(factory)
    apps: dict[str, Any] = {}
    plain = async_sessionmaker(engine, expire_on_commit=False)

    async def plain_session() -> AsyncIterator[AsyncSession]:
        async with plain() as session:
            yield session

    floor = FastAPI()

    @floor.post("/users/{user_id}")
    async def floor_route(
        user_id: int, session: Annotated[AsyncSession, Depends(plain_session)]
    ) -> int:
        user = await session.get(User, user_id)
        user.counter += 1  # type: ignore[union-attr]
        await session.commit()
        return user_id

    apps[ROUTE_FLOOR] = floor

    ours = FastAPI()

    @ours.post("/users/{user_id}")
    async def ours_route(user_id: int, session: AsyncSessionDep) -> int:
        user = await session.get(User, user_id)
        user.counter += 1  # type: ignore[union-attr]
        return user_id

    apps[ROUTE_OURS] = ours

    try:
        from advanced_alchemy.extensions.fastapi import AdvancedAlchemy, SQLAlchemyAsyncConfig
    except ImportError:
        print("> advanced-alchemy not installed: skipped\n")
    else:
        aa_app = FastAPI()
        alchemy = AdvancedAlchemy(
            SQLAlchemyAsyncConfig(engine_instance=engine, commit_mode="autocommit"), app=aa_app
        )
        provide = alchemy.provide_async_session()

        @aa_app.post("/users/{user_id}")
        async def aa_route(user_id: int, session: Annotated[AsyncSession, Depends(provide)]) -> int:
            user = await session.get(User, user_id)
            user.counter += 1  # type: ignore[union-attr]
            return user_id

        apps["advanced-alchemy"] = aa_app

    try:
        from fastapi_async_sqlalchemy import SQLAlchemyMiddleware, db
    except ImportError:
        print("> fastapi-async-sqlalchemy not installed: skipped\n")
    else:
        fas_app = FastAPI()
        fas_app.add_middleware(
            SQLAlchemyMiddleware,
            custom_engine=engine,
            commit_on_exit=True,
        )

        @fas_app.post("/users/{user_id}")
        async def fas_route(user_id: int) -> int:
            user = await db.session.get(User, user_id)
            user.counter += 1
            return user_id

        apps["fastapi-async-sqlalchemy"] = fas_app

    clients = []
    candidates: dict[str, ABatch] = {}
    for name, app in apps.items():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")
        clients.append(http)

        def batch(http: httpx.AsyncClient = http) -> ABatch:
            async def run(ids: list[int]) -> None:
                for i in ids:
                    response = await http.post(f"/users/{i}")
                    if response.status_code != 200:
                        raise RuntimeError(f"{response.status_code}: {response.text}")

            return run

        candidates[name] = batch()
    return candidates, clients


async def _interleaved(candidates: dict[str, ABatch], ops: int, rounds: int) -> dict[str, float]:
    ids = [(n * 7919) % ROWS + 1 for n in range(ops)]
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    for batch in candidates.values():
        await batch(ids)
    for r in range(rounds):
        names = list(candidates)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            gc.collect()
            start = time.perf_counter()
            await candidates[name](ids)
            wall[name].append((time.perf_counter() - start) / ops)
    return {name: median(values) * 1e6 for name, values in wall.items()}


async def _paired(
    candidates: dict[str, ABatch], reference: str, ops: int, pairs: int
) -> dict[str, float]:
    """Median per-operation wall-time ratio reference/candidate over back-to-back pairs."""
    ids = [(n * 7919) % ROWS + 1 for n in range(ops)]
    ratios: dict[str, list[float]] = {n: [] for n in candidates if n != reference}
    gc.collect()
    for p in range(pairs):
        for name in ratios:
            order = [reference, name] if p % 2 == 0 else [name, reference]
            took: dict[str, float] = {}
            for which in order:
                start = time.perf_counter()
                await candidates[which](ids)
                took[which] = time.perf_counter() - start
            ratios[name].append(took[reference] / took[name])
    return {name: statistics.median(values) for name, values in ratios.items()}


def run(backends: dict[str, str], size: dict[str, int]) -> list[tuple[str, str, str]]:
    """Print the async tables; return the targets (name, measured, PASS/FAIL)."""
    targets: list[tuple[str, str, str]] = []
    for backend, url in backends.items():
        engine = sa.create_engine(url)
        create_schema(engine)
        try:
            targets += asyncio.run(_backend(backend, url, size))
        finally:
            drop_schema(engine)
            engine.dispose()
    return targets


async def _backend(backend: str, url: str, size: dict[str, int]) -> list[tuple[str, str, str]]:
    factory = AsyncSessionFactory(url)
    ops = size[f"ops_{backend}"]
    targets = []
    sections: list[tuple[str, dict[str, ABatch], str, str]] = [
        ("W1 async unit of work", unit_candidates(factory, write=True), FLOOR, OURS),
        ("W2 async read-only", unit_candidates(factory, write=False), FLOOR, OURS),
    ]
    routes, clients = route_candidates(factory)
    sections.append(("W5 FastAPI route", routes, ROUTE_FLOOR, ROUTE_OURS))
    try:
        for workload, candidates, floor, ours in sections:
            # (fewer pairs than the sync tables: an async op costs more, and W5 has four)
            wall = await _interleaved(candidates, ops, size["rounds"])
            paired = await _paired(candidates, floor, size["pair_ops"], min(size["pairs"], 61))
            rows = []
            for name, us in wall.items():
                ratio = 1.0 if name == floor else paired[name]
                rows.append([name, f"{us:,.1f}", f"{1e6 / us:,.0f}", f"{ratio:.3f}"])
            print(f"## {workload}, {backend} ({ops} ops x {size['rounds']} rounds)\n")
            print(table(["candidate", "µs/op", "ops/s", "paired ratio to floor"], rows))
            print()
            ok = paired[ours] >= MIN_RATIO
            targets.append(
                (
                    f"{workload.split()[0]} {backend}: {ours} >= {MIN_RATIO}x the floor",
                    f"ratio {paired[ours]:.3f}",
                    verdict(ok),
                )
            )
            peers = [n for n in candidates if n not in (floor, ours)]
            if peers:
                best = max(paired[n] for n in peers)
                targets.append(
                    (
                        f"{workload.split()[0]} {backend}: {ours} ahead of the peers",
                        f"{paired[ours]:.3f} vs best peer {best:.3f}",
                        verdict(paired[ours] > best),
                    )
                )
    finally:
        for http in clients:
            await http.aclose()
    return targets
