"""One engine per database per process, one way to get a SQLAlchemy session.

The factory names import without Flask; the Flask layer (``UnifiedSession``,
``SessionServiceMixin``) is imported on first access, so a script or a FastAPI process
that only needs ``session_scope()`` never pays for Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ConfigurationError, Settings
from .engines import DuplicateEngineWarning, dispose_engines
from .session_factory import (
    DoomedTransactionError,
    SessionFactory,
    UnitOfWork,
    create_session,
    get_default_factory,
    get_engine,
    get_session_generator,
    session_scope,
    set_default_factory,
)

if TYPE_CHECKING:
    from .extension import UnifiedSession
    from .mixins import SessionServiceMixin

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DoomedTransactionError",
    "DuplicateEngineWarning",
    "SessionFactory",
    "SessionServiceMixin",
    "Settings",
    "UnifiedSession",
    "UnitOfWork",
    "create_session",
    "dispose_engines",
    "get_default_factory",
    "get_engine",
    "get_session_generator",
    "session_scope",
    "set_default_factory",
]

_LAZY = {"UnifiedSession": ".extension", "SessionServiceMixin": ".mixins"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
