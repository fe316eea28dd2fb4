"""Fixtures of the transaction tests: a factory on ``db_url``.

``captured_on_commit`` comes from the plugin (the ``pytest11`` entry point).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flask_unified_session import SessionFactory
from tests.conftest import Observer


@pytest.fixture
def factory(db_url: str, observer: Observer) -> Iterator[SessionFactory]:
    """A factory on ``db_url``, where the ``User`` table exists."""
    made = SessionFactory(db_url)
    yield made
    made.dispose()
