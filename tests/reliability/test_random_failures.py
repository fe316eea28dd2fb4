"""Many units of work, a tenth of them failing at random points: nothing leaks, nothing lost."""

from __future__ import annotations

import gc
import random
import warnings

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from flask_unified_session import SessionFactory
from tests.conftest import Observer, User

from .conftest import size

pytestmark = pytest.mark.reliability

SEED = 20240607


class Planned(Exception):
    """The failure a unit of work was told to raise."""


def test_units_failing_at_random_points_leave_exactly_the_successful_rows(
    backend: str, db_url: str, observer: Observer
) -> None:
    """10% of units fail before flush, after flush or at commit: no leak, only winners' rows."""
    # The short form does its thousand on PostgreSQL, a smaller sample elsewhere.
    units = size(1000 if backend == "postgresql" else 200, 10_000)
    rng = random.Random(SEED)
    factory = SessionFactory(db_url)

    @event.listens_for(factory.sessionmaker, "before_commit")
    def fail_on_request(session: Session) -> None:
        if session.info.get("fail_at_commit"):
            raise Planned("commit_listener")

    with factory.session_scope() as session:
        session.add(User(name="taken"))  # the target of the unique violations
    expected = {"taken"}
    outcomes: dict[str, int] = {}
    failing = set(rng.sample(range(units), units // 10))  # exactly 10%, at random places
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(units):
            name = f"u{n}"
            fault = "none"
            if n in failing:
                fault = rng.choice(["before_flush", "after_flush", "commit_listener", "unique"])
            try:
                with factory.session_scope() as session:
                    session.add(User(name=name, note=fault))
                    if fault == "before_flush":
                        raise Planned(fault)
                    session.flush()
                    if fault == "after_flush":
                        raise Planned(fault)
                    if fault == "commit_listener":
                        session.info["fail_at_commit"] = True
                    if fault == "unique":
                        session.add(User(name="taken"))  # violates at the commit's flush
            except Planned as exc:
                assert str(exc) == fault  # the original exception, unchanged
            except sa.exc.IntegrityError:
                assert fault == "unique"
            else:
                assert fault == "none"
                expected.add(name)
            outcomes[fault] = outcomes.get(fault, 0) + 1
            assert factory.engine.pool.checkedout() == 0
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert factory.engine.pool.checkedout() == 0
    assert set(outcomes) == {"none", "before_flush", "after_flush", "commit_listener", "unique"}
    assert units - outcomes["none"] == units // 10
    assert set(observer.names()) == expected
    assert observer.count() == len(expected)
