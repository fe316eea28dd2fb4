"""Test support: the ``unified_rollback`` and ``unified_truncate`` strategies, on_commit capture.

The pytest plugin is :mod:`flask_unified_session.testing.plugin`. Importing this package
is cheap (no Flask, no SQLAlchemy): the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "RollbackIsolation",
    "TruncateIsolation",
    "TruncateWarning",
    "UnifiedRollbackError",
    "UnifiedRollbackMixin",
    "UnifiedRollbackWarning",
    "UnifiedTruncateMixin",
    "capture_on_commit",
    "rollback_isolation",
    "truncate_isolation",
]

_WHERE = {
    "RollbackIsolation": "rollback",
    "UnifiedRollbackError": "rollback",
    "UnifiedRollbackWarning": "rollback",
    "rollback_isolation": "rollback",
    "TruncateIsolation": "truncate",
    "TruncateWarning": "truncate",
    "truncate_isolation": "truncate",
    "UnifiedRollbackMixin": "plugin",
    "UnifiedTruncateMixin": "plugin",
    "capture_on_commit": "on_commit",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
