"""unified_truncate: real commits, from threads, raw connections, processes, DDL."""

import os
import subprocess
import sys
import threading
import unittest

import flask_unified_session as fus
import pytest
import sqlalchemy as sa
from flask_unified_session import SessionFactory
from flask_unified_session.testing import UnifiedTruncateMixin

from common import URL, Audit, User, count, observer_engine

NEW_TABLE = f"fus_new_{User.__tablename__}"


@pytest.fixture(scope="module", autouse=True)
def seeded():
    """Rows committed before the module's tests: kept by every cleanup."""
    engine = observer_engine()
    with engine.begin() as connection:
        connection.execute(sa.insert(User).values(name="seed"))
        connection.execute(sa.insert(Audit).values(message="seed"))
    yield
    with engine.begin() as connection:
        connection.execute(sa.delete(User))
        connection.execute(sa.delete(Audit))
    engine.dispose()


@pytest.fixture
def factory():
    return SessionFactory(URL)


def test_a_thread_with_its_own_connection(unified_truncate, factory, committed):
    def work():
        with factory.session_scope() as session:
            session.add(User(name="t-thread"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert committed() == ["seed", "t-thread"]


def test_raw_connection(unified_truncate, factory, committed):
    raw = factory.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"INSERT INTO {User.__tablename__} (name, note) VALUES ('t-raw', '')")
        raw.commit()
    finally:
        raw.close()
    assert committed() == ["seed", "t-raw"]


def test_another_process(unified_truncate, committed):
    code = (
        "import os, sqlalchemy as sa\n"
        "e = sa.create_engine(os.environ['FUS_TEST_URL'])\n"
        "with e.begin() as c:\n"
        f'    c.execute(sa.text("INSERT INTO {User.__tablename__} (name, note) '
        "VALUES ('t-process', '')\"))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
    assert committed() == ["seed", "t-process"]


def test_ddl_and_a_new_table(unified_truncate, factory):
    with factory.engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {NEW_TABLE} (id INTEGER PRIMARY KEY)"))
        connection.execute(sa.text(f"INSERT INTO {NEW_TABLE} VALUES (1)"))
        connection.execute(sa.insert(Audit).values(message="t-ddl"))


def test_independent_commit_is_real(unified_truncate, factory, audits):
    with pytest.raises(ValueError):
        with factory.session_scope() as outer:
            count(outer, User)
            with factory.session_scope(independent=True) as audit:
                audit.add(Audit(message="t-independent"))
            raise ValueError("the outer unit fails")
    assert audits() == ["seed", "t-independent"]


class TestTruncateCase(UnifiedTruncateMixin, unittest.TestCase):
    def test_commit_in_a_test_case(self):
        with fus.session_scope() as session:
            session.add(User(name="t-unittest"))


def test_only_the_seed_is_left(committed, audits):
    assert committed() == ["seed"]
    assert audits() == ["seed"]
    with observer_engine().connect() as connection:
        assert NEW_TABLE not in sa.inspect(connection).get_table_names()
