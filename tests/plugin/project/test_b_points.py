"""Issue 12, point by point, under unified_rollback (the checks after: test_zz_checker)."""

import threading
import unittest

import flask_unified_session as fus
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_unified_session import SessionFactory, UnifiedSession
from flask_unified_session.testing import UnifiedRollbackError, UnifiedRollbackMixin
from sqlalchemy.orm import Session, sessionmaker

from common import BACKEND, URL, Audit, User, count


@pytest.fixture
def factory():
    return SessionFactory(URL)


def names(session):
    return sorted(session.scalars(sa.select(User.name)))


# 1. Commits land in the real database ------------------------------------------------


def test_1_default_factory_made_during_the_test(unified_rollback, committed):
    fus.set_default_factory(None)  # made on first use, inside the test
    with fus.session_scope() as session:  # a CLI job: no app context
        session.add(User(name="p1-script"))
    assert committed() == []


def test_1_a_users_own_create_engine(unified_rollback, committed):
    engine = sa.create_engine(URL)
    with engine.begin() as connection:
        connection.execute(sa.insert(User).values(name="p1-own"))
    with Session(engine) as session:
        session.add(User(name="p1-own-session"))
        session.commit()
    assert committed() == []
    engine.dispose()


@pytest.mark.skipif(BACKEND == "sqlite", reason="pysqlite refuses another thread's connection")
def test_1_a_thread(unified_rollback, committed):
    def work():
        with fus.session_scope() as session:
            session.add(User(name="p1-thread"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    with fus.session_scope() as session:
        assert names(session) == ["p1-thread"]
    assert committed() == []


class TestAppBuiltInSetUp(UnifiedRollbackMixin, unittest.TestCase):
    def setUp(self):
        self.app = Flask(__name__)
        self.app.config["SQLALCHEMY_DATABASE_URI"] = URL
        self.db = SQLAlchemy()
        self.db.init_app(self.app)
        UnifiedSession(self.app, db=self.db)
        with self.app.app_context():
            self.addCleanup(self.db.engine.dispose)
        self.context = self.app.app_context()
        self.context.push()
        self.addCleanup(self.context.pop)

    def test_commits_are_rolled_back(self):
        with self.app.unified_session_manager.get_db_session() as session:
            session.add(User(name="p1-setup"))
        self.db.session.add(User(name="p1-setup-db"))
        self.db.session.commit()
        self.assertEqual(names(self.db.session), ["p1-setup", "p1-setup-db"])


@pytest.mark.unified_rollback
class TestMarkedTestCase(unittest.TestCase):
    def test_marker_on_a_test_case(self):
        with fus.session_scope() as session:
            session.add(User(name="p1-marked"))


# 2. One connection per database, not per engine --------------------------------------


def test_2_two_engines_see_each_others_commits(unified_rollback, factory, committed):
    engine = sa.create_engine(URL)
    plain = sessionmaker(bind=engine)
    with factory.session_scope() as session:
        session.add(User(name="p2-factory"))
    with plain() as session:
        assert names(session) == ["p2-factory"]
        session.add(User(name="p2-plain"))
        session.commit()
    with factory.session_scope() as session:
        assert names(session) == ["p2-factory", "p2-plain"]
    assert committed() == []
    engine.dispose()


# 3. Sessions that end out of order ---------------------------------------------------


def test_3_unit_commits_before_a_session_opened_inside_it(unified_rollback, factory):
    with factory.session_scope() as outer:
        outer.execute(sa.text("SELECT 1"))
        inner = factory.create_session()
        inner.execute(sa.text("SELECT 1"))
        inner.add(User(name="p3-inner"))
        inner.flush()
    inner.commit()
    inner.close()
    with factory.session_scope() as session:
        assert names(session) == ["p3-inner"]


def test_3_inner_session_rolls_back_after_the_unit_committed(unified_rollback, factory):
    with factory.session_scope() as outer:
        outer.add(User(name="p3-outer"))
        inner = factory.create_session()
        inner.execute(sa.text("SELECT 1"))
    inner.rollback()
    inner.close()
    with factory.session_scope() as session:
        assert names(session) == ["p3-outer"]


# 4. independent=True ------------------------------------------------------------------


def test_4_independent_commit_survives_the_outer_rollback(unified_rollback, factory, audits):
    with pytest.raises(ValueError):
        with factory.session_scope() as outer:
            count(outer, User)
            with factory.session_scope(independent=True) as audit:
                audit.add(Audit(message="p4-audit"))
            raise ValueError("the outer unit fails")
    with factory.session_scope() as session:
        assert count(session, Audit) == 1
    assert audits() == []


def test_4_xfail_independent_after_the_outer_wrote(unified_rollback, factory):
    """Cannot be kept on one connection: the test fails, pointing to unified_truncate."""
    with pytest.raises(ValueError):
        with factory.session_scope() as outer:
            outer.add(User(name="p4-outer"))
            outer.flush()
            with factory.session_scope(independent=True) as audit:
                audit.add(Audit(message="p4-lost"))
            raise ValueError("the outer unit fails")


# 5. conn.begin() inside engine.begin() ------------------------------------------------


def test_5_begin_inside_begin_raises_as_in_production(unified_rollback, factory):
    with pytest.raises(sa.exc.InvalidRequestError, match="already"):
        with factory.engine.begin() as connection:
            connection.begin()
    with factory.engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
        with pytest.raises(sa.exc.InvalidRequestError, match="already"):
            connection.begin()


# What a shared connection cannot reproduce, refused -----------------------------------


def test_closing_without_commit_rolls_back_as_in_production(unified_rollback, factory):
    with factory.engine.connect() as connection:
        connection.execute(sa.insert(User).values(name="never-committed"))
    with factory.session_scope() as session:
        assert names(session) == []


def test_raw_connection_is_refused(unified_rollback, factory):
    with pytest.raises(UnifiedRollbackError, match="unified_truncate"):
        factory.engine.raw_connection()
    unified_rollback.problems.clear()  # this test expects the refusal


def test_autocommit_is_refused(unified_rollback, factory):
    with pytest.raises(UnifiedRollbackError, match="AUTOCOMMIT"):
        with factory.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
    unified_rollback.problems.clear()


def test_ddl(unified_rollback, factory):
    table = f"fus_ddl_{User.__tablename__}"
    if BACKEND == "mysql":
        with pytest.raises(UnifiedRollbackError, match="commits implicitly"):
            with factory.engine.begin() as connection:
                connection.execute(sa.text(f"CREATE TABLE {table} (id INTEGER)"))
        unified_rollback.problems.clear()
        return
    with factory.engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {table} (id INTEGER)"))
        connection.execute(sa.text(f"INSERT INTO {table} VALUES (1)"))


def test_fails_after_committing(unified_rollback, factory):
    with factory.session_scope() as session:
        session.add(User(name="failed-test"))
    with factory.session_scope(nested=False) as session:
        session.begin_nested()  # a SAVEPOINT left open
        raise AssertionError("the test fails")


def test_after_a_failure_everything_is_restored(factory, committed):
    assert type(factory.engine).connect.__name__ == "connect"
    assert not hasattr(type(factory.engine).connect, "__wrapped__")
    with factory.engine.connect() as connection:
        assert type(connection).__name__ == "Connection"
    assert factory.engine.pool.checkedout() == 0
    assert committed() == []
