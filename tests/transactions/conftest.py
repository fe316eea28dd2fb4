"""Fixtures of the transaction tests: a factory on ``db_url``, and the capture fixture.

``captured_on_commit`` is imported from its module here, so that these tests do not
depend on how the pytest plugin re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flask_unified_session import SessionFactory
from flask_unified_session.testing.on_commit import captured_on_commit
from tests.conftest import Observer

__all__ = ["captured_on_commit"]


@pytest.fixture
def factory(db_url: str, observer: Observer) -> Iterator[SessionFactory]:
    """A factory on ``db_url``, where the ``User`` table exists."""
    made = SessionFactory(db_url)
    yield made
    made.dispose()
