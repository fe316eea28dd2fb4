"""Runs last, with no fixture: what every earlier test left, from a connection of its own."""

import sqlalchemy as sa

from common import User, observer_engine


def test_nothing_was_left(committed, audits):
    assert committed() == []
    assert audits() == []
    with observer_engine().connect() as connection:
        tables = sa.inspect(connection).get_table_names()
    assert [t for t in tables if t.endswith(User.__tablename__) and t != User.__tablename__] == []
