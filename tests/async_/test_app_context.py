"""Async units inside a Flask app context nest per task, and on_commit finds them."""

from __future__ import annotations

import asyncio

from flask import Flask
from sqlalchemy.ext.asyncio import AsyncSession

from flask_unified_session import UnifiedSession, on_commit
from flask_unified_session.asyncio import AsyncSessionFactory
from tests.conftest import Observer, User

from .conftest import checked_out, run


def test_child_tasks_of_one_app_context_never_share_a_session(
    afactory: AsyncSessionFactory, observer: Observer, db_url: str
) -> None:
    """gather() in an app context (an async view): each child its own AsyncSession."""
    app = Flask("async_in_app_context")
    app.config["UNIFIED_SESSION_DATABASE_URL"] = db_url
    UnifiedSession(app)
    seen: dict[str, AsyncSession] = {}
    ran: list[str] = []

    async def child(name: str) -> None:
        async with afactory.session_scope() as session:
            seen[name] = session
            session.add(User(name=name))
            on_commit(lambda: ran.append(name))  # the task's unit, not the app context's
            await asyncio.sleep(0)

    async def view() -> None:
        async with afactory.session_scope() as parent:
            seen["parent"] = parent
            await asyncio.gather(child("one"), child("two"))
        assert checked_out(afactory) == 0

    with app.app_context():
        run(view())
    assert len({id(s) for s in seen.values()}) == 3
    assert sorted(ran) == ["one", "two"]
    assert observer.names() == ["one", "two"]
