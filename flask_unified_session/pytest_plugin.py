"""Version 1's plugin module, kept as a thin shim: see :mod:`flask_unified_session.testing`.

The pytest plugin is :mod:`flask_unified_session.testing.plugin` (the ``pytest11`` entry
point). An installation whose entry point still names this module gets the same fixtures
and markers from here; the names of version 1 (``RollbackIsolation``,
``rollback_isolation``) load on first use, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .testing.plugin import (
    _unified_strategy_marker,
    captured_on_commit,
    pytest_configure,
    pytest_unconfigure,
    unified_rollback,
    unified_rollback_targets,
    unified_truncate,
    unified_truncate_tables,
)

__all__ = [
    "RollbackIsolation",
    "UnifiedRollbackError",
    "captured_on_commit",
    "pytest_configure",
    "pytest_unconfigure",
    "rollback_isolation",
    "unified_rollback",
    "unified_rollback_targets",
    "unified_truncate",
    "unified_truncate_tables",
]

_LAZY = ("RollbackIsolation", "UnifiedRollbackError", "rollback_isolation")
_ = _unified_strategy_marker  # registered with the fixtures above

if TYPE_CHECKING:
    from .testing.rollback import RollbackIsolation, UnifiedRollbackError, rollback_isolation


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from .testing import rollback

        return getattr(rollback, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
