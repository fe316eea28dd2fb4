"""One engine per database per process, one way to get a SQLAlchemy session.

Names are imported on first access: ``import flask_unified_session`` costs nothing (the
pytest plugin is loaded in every test run of a project that installs us), the factory
names never import Flask, and the Flask layer is only imported when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ConfigurationError, Settings
    from .engines import DuplicateEngineWarning, dispose_engines
    from .extension import UnifiedSession
    from .mixins import SessionServiceMixin
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
    from .transactions import on_commit, run_in_transaction, transactional

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ConfigurationError": ".config",
    "Settings": ".config",
    "DuplicateEngineWarning": ".engines",
    "dispose_engines": ".engines",
    "DoomedTransactionError": ".session_factory",
    "SessionFactory": ".session_factory",
    "UnitOfWork": ".session_factory",
    "create_session": ".session_factory",
    "get_default_factory": ".session_factory",
    "get_engine": ".session_factory",
    "get_session_generator": ".session_factory",
    "session_scope": ".session_factory",
    "set_default_factory": ".session_factory",
    "UnifiedSession": ".extension",
    "SessionServiceMixin": ".mixins",
    "on_commit": ".transactions",
    "run_in_transaction": ".transactions",
    "transactional": ".transactions",
}

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
    "on_commit",
    "run_in_transaction",
    "session_scope",
    "set_default_factory",
    "transactional",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
