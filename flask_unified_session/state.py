"""What the extension keeps for one app, in ``app.extensions["unified_session"]``.

Its own module so that the CLI and the extension both read it without importing each
other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask
from sqlalchemy.engine import Engine

from .managers import RequestSessionManager, UnitOfWorkManager
from .session_factory import SessionFactory

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    from .extension import UnifiedSession

__all__ = ["EXTENSION_KEY", "UnifiedSessionState", "get_state"]

EXTENSION_KEY = "unified_session"


@dataclass
class UnifiedSessionState:
    """What the extension keeps for one app, in ``app.extensions["unified_session"]``."""

    extension: UnifiedSession
    factory: SessionFactory
    engines: dict[str | None, Engine]
    db: SQLAlchemy | None
    commit_mode: str
    unified_session_manager: UnitOfWorkManager = field(init=False)
    request_session_manager: RequestSessionManager = field(init=False)


def get_state(app: Flask) -> UnifiedSessionState:
    """The extension's state for ``app``, or an error saying how to install it."""
    try:
        state: UnifiedSessionState = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError(
            f"flask_unified_session is not installed on app {app.name!r}: "
            "call UnifiedSession(app) or unified.init_app(app, db=db)"
        ) from None
    return state
