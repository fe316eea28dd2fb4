"""The example app's FastAPI service, on the example's own models and SQLite file."""

from __future__ import annotations

import asyncio
import os

import pytest
import sqlalchemy as sa

from example_app.api import api
from example_app.models import Base, Caption, Image
from tests.fastapi.conftest import client


def test_example_api(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{os.path.join(tmp_path, 'example.db')}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(sa.insert(Image), [{"id": 1, "title": "sunset"}])
        connection.execute(sa.insert(Caption), [{"id": 1, "image_id": 1, "text": "red sky"}])
    engine.dispose()

    async def main() -> None:
        async with api.router.lifespan_context(api), client(api) as http:
            captions = (await http.get("/api/images/1/captions")).json()
            assert captions == [{"id": 1, "text": "red sky", "status": "pending"}]
            assert (await http.get("/api/images/2/captions")).status_code == 404
            approved = await http.post("/api/captions/1/approve")
            assert approved.json() == {"id": 1, "status": "approved"}
            assert (await http.post("/api/captions/1/approve")).status_code == 409
            audit = (await http.get("/api/audit")).json()
            assert audit == [{"action": "approve", "target": "caption:1", "endpoint": "api"}]
            stats = (await http.get("/api/stats")).json()
            assert stats["captions_approved"] == 1 and stats["audit_entries"] == 1

    asyncio.run(main())
