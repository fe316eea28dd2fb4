"""create_session(): the caller closes it; a leaked one says where it was created."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest

from flask_unified_session import SessionFactory


def test_unclosed_session_warns_with_creation_site(tmp_path: Path) -> None:
    """A session garbage-collected without close() emits a ResourceWarning naming its line."""
    factory = SessionFactory(f"sqlite:///{tmp_path}/a.db")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = factory.create_session()
        line = __import__("inspect").currentframe().f_lineno - 1
        del session
        gc.collect()
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(messages) == 1
    assert f"{__file__}:{line}" in messages[0]


def test_closed_session_does_not_warn(tmp_path: Path) -> None:
    """close(), or use as a context manager, silences the leak warning."""
    factory = SessionFactory(f"sqlite:///{tmp_path}/a.db")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session = factory.create_session()
        session.close()
        with factory.create_session():
            pass
        del session
        gc.collect()


def test_legacy_get_session_and_close_session(tmp_path: Path) -> None:
    """get_session()/close_session() stand in for a legacy db_manager."""
    factory = SessionFactory(f"sqlite:///{tmp_path}/a.db")
    session = factory.get_session()
    session.connection()
    assert factory.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    factory.close_session(session)
    assert factory.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_module_create_session_names_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the module function, the warning names the caller's line, not the library's."""
    import flask_unified_session as fus

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/a.db")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = fus.create_session()
        del session
        gc.collect()
    assert any(__file__ in str(w.message) for w in caught)
