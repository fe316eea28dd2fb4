"""A small FastAPI service over the example app's database (no Flask involved).

Same models, same ``DATABASE_URL`` (else the same SQLite file in ``instance/``), one engine
per database: the sync routes use the default factory's engine, the async ones the async
twin of the same URL. Run it beside the Flask app::

    uvicorn example_app.api:api --port 8000      # or: python -m example_app.api

* ``GET /api/stats``: the moderation counts (sync, through the service the Flask admin
  pages and the CLI use);
* ``GET /api/audit``: the latest audit entries (sync, ``SessionDep``);
* ``GET /api/images/{id}/captions``: an image's captions (async, ``selectinload``);
* ``POST /api/captions/{id}/approve``: approve a pending caption and audit it in one unit
  of work (async), committed before the response: a failure is a 500, never a 200.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from flask_unified_session.fastapi import AsyncSessionDep, SessionDep, lifespan

from .models import AuditEntry, Caption, CaptionStateError, Image
from .services import ModerationService
from .settings import database_url

__all__ = ["api"]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The same database as the Flask app: DATABASE_URL, else its SQLite file.
    os.environ.setdefault("DATABASE_URL", database_url())
    async with lifespan(app):
        yield


api = FastAPI(title="example_app API", lifespan=_lifespan)


@api.get("/api/stats")
def stats() -> dict[str, int]:
    # The service the Flask admin pages and the CLI use; outside Flask its db_session()
    # is a unit of work of the default factory (the same engine for the same URL).
    return ModerationService().stats()


@api.get("/api/audit")
def recent_audit(session: SessionDep, limit: int = 20) -> list[dict[str, Any]]:
    entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
    return [{"action": e.action, "target": e.target, "endpoint": e.endpoint} for e in entries]


@api.get("/api/images/{image_id}/captions")
async def image_captions(image_id: int, session: AsyncSessionDep) -> list[dict[str, Any]]:
    image = await session.scalar(
        select(Image).where(Image.id == image_id).options(selectinload(Image.captions))
    )
    if image is None:
        raise HTTPException(404, f"no image {image_id}")
    return [{"id": c.id, "text": c.text, "status": c.status} for c in image.captions]


@api.post("/api/captions/{caption_id}/approve")
async def approve(caption_id: int, session: AsyncSessionDep) -> dict[str, Any]:
    caption = await session.get(Caption, caption_id)
    if caption is None:
        raise HTTPException(404, f"no caption {caption_id}")
    try:
        caption.approve(reviewer_id=None)
    except CaptionStateError as error:
        raise HTTPException(409, str(error)) from None
    session.add(AuditEntry(action="approve", target=f"caption:{caption_id}", endpoint="api"))
    return {"id": caption.id, "status": caption.status}


if __name__ == "__main__":  # pragma: no cover - a manual entry point
    import uvicorn

    uvicorn.run(api, port=8000)
