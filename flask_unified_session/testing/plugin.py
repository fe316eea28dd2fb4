"""The pytest plugin (``pytest11`` entry point): ``unified_rollback``, ``unified_truncate``,
``captured_on_commit``, and the markers that ask for them.

pytest loads this module in every run of every project that installs
flask-unified-session, so it imports neither Flask nor SQLAlchemy: the fixtures import
what they need when a test uses them. A test that asks for none of them is untouched
(one marker lookup per test).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .on_commit import CapturedHooks
    from .rollback import RollbackIsolation
    from .truncate import TruncateIsolation

__all__ = [
    "captured_on_commit",
    "unified_rollback",
    "unified_rollback_targets",
    "unified_truncate",
    "unified_truncate_tables",
]

MARKERS = {
    "unified_rollback": "run the test (or TestCase) under the unified_rollback fixture",
    "unified_truncate": "run the test (or TestCase) under the unified_truncate fixture",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_unconfigure(config: pytest.Config) -> None:
    rollback = sys.modules.get(f"{__package__}.rollback")
    if rollback is not None:  # only if a test used unified_rollback
        rollback.dispose_pools()


@pytest.fixture
def unified_rollback_targets() -> list[Any]:
    """Kept from version 1: every engine is isolated now; ``unified_truncate`` watches these."""
    return []


@pytest.fixture
def unified_rollback(request: pytest.FixtureRequest) -> Iterator[RollbackIsolation]:
    """Every commit of the test, through any engine, rolled back when it ends.

    From this fixture's setup to its teardown, every engine (made before the test or
    during it, by the library, Flask-SQLAlchemy or the user's ``create_engine``) reaches
    its database through one connection per database, held in a transaction rolled back
    at the end. What cannot behave as in production fails the test, pointing to
    ``unified_truncate``.
    """
    from .rollback import RollbackIsolation

    targets = request.getfixturevalue("unified_rollback_targets")
    isolation = RollbackIsolation()
    isolation.bind(*targets)
    isolation.start()
    try:
        yield isolation
    finally:
        isolation.close()
    if isolation.problems:
        pytest.fail(
            "unified_rollback: the test did what one shared connection cannot reproduce:\n- "
            + "\n- ".join(isolation.problems),
            pytrace=False,
        )


@pytest.fixture
def unified_truncate_tables() -> Callable[[str], bool] | None:
    """Which tables ``unified_truncate`` looks after: ``None`` for every table of the schema.

    Override it (a predicate on the table name) when other processes share the database,
    so that their tables are never emptied or dropped.
    """
    return None


@pytest.fixture
def unified_truncate(request: pytest.FixtureRequest) -> Iterator[TruncateIsolation]:
    """Real commits; afterwards the rows the test wrote are deleted, its new tables dropped.

    Covers every database an engine reached when the test starts (the library's and
    Flask-SQLAlchemy's engines, the default factory or ``DATABASE_URL``, the ``app``
    fixture, ``unified_rollback_targets``) or reaches in this process during it.
    """
    from .truncate import TruncateIsolation

    only = request.getfixturevalue("unified_truncate_tables")
    isolation = TruncateIsolation(_engines(request), only)
    isolation.start()
    try:
        yield isolation
    finally:
        isolation.close()
    if isolation.problems:
        pytest.fail("unified_truncate:\n- " + "\n- ".join(isolation.problems), pytrace=False)


@pytest.fixture
def captured_on_commit() -> Iterator[CapturedHooks]:
    """The test's ``on_commit`` hooks, held: inspect them, or ``.run()`` them.

    Hooks left pending when the test ends are dropped.
    """
    from .on_commit import capture_on_commit

    with capture_on_commit() as captured:
        yield captured


@pytest.fixture(autouse=True)
def _unified_strategy_marker(request: pytest.FixtureRequest) -> None:
    """``@pytest.mark.unified_rollback`` / ``unified_truncate`` (also on TestCase classes)."""
    node = request.node
    for name in MARKERS:
        if node.get_closest_marker(name) is not None:
            request.getfixturevalue(name)


class UnifiedRollbackMixin:
    """For ``unittest.TestCase`` classes run by pytest: every test under ``unified_rollback``."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.unified_rollback]


class UnifiedTruncateMixin:
    """For ``unittest.TestCase`` classes run by pytest: every test under ``unified_truncate``."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.unified_truncate]


def _engines(request: pytest.FixtureRequest) -> list[Engine]:
    """The engines that reach a database when the test starts."""
    from ..engines import known_engines

    engines: list[Any] = [record.engine for record in known_engines()]
    targets: list[Any] = list(request.getfixturevalue("unified_rollback_targets"))
    if "app" in request.fixturenames:
        targets.append(request.getfixturevalue("app"))
    from .. import session_factory
    from ..config import ConfigurationError

    default = session_factory.existing_default_factory()
    if default is None and os.environ.get("DATABASE_URL"):
        try:
            default = session_factory.get_default_factory()
        except ConfigurationError:
            default = None  # the code under test will say so if it uses it
    if default is not None:
        engines.append(default.engine)
    for target in targets:
        engines.extend(_target_engines(target))
    return engines


def _target_engines(target: Any) -> list[Any]:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import scoped_session, sessionmaker

    if isinstance(target, Engine):
        return [target]
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        binds = [target.kw.get("bind"), *(target.kw.get("binds") or {}).values()]
        return [b for b in binds if isinstance(b, Engine)]
    extensions = getattr(target, "extensions", None)
    if isinstance(extensions, dict):
        found: list[Any] = []
        state = extensions.get("unified_session")
        if state is not None:
            found += _target_engines(state.factory)
            found += list(state.engines.values())
        db = extensions.get("sqlalchemy")
        if db is not None and hasattr(type(db), "engines"):
            with target.app_context():
                found += list(db.engines.values())
        return found
    engine = getattr(target, "engine", None)
    return [engine] if isinstance(engine, Engine) else []
