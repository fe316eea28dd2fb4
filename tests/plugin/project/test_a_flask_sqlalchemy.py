"""An app with Flask-SQLAlchemy: every entry point, pytest-flask's client, independent units."""

import flask_unified_session as fus
import pytest
import sqlalchemy as sa
from flask import Flask, current_app, request
from flask_sqlalchemy import SQLAlchemy
from flask_unified_session import SessionServiceMixin, UnifiedSession

from common import URL, Audit, User, count

db = SQLAlchemy()


class Service(SessionServiceMixin):
    def add(self, name):
        with self.db_session() as session:
            session.add(User(name=name))


@pytest.fixture(scope="module")
def app():
    app = Flask(__name__)
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI=URL)
    db.init_app(app)
    UnifiedSession(app, db=db)

    @app.post("/users")
    def add_user():
        with current_app.unified_session_manager.get_db_session() as session:
            session.add(User(name=request.form["name"]))
            # db.session first used inside the unit (point 3): the same session in v2
            db.session.add(User(name=request.form["name"] + "-db"))
        db.session.commit()
        with Service().db_session() as session:
            session.add(User(name=request.form["name"] + "-mixin"))
        return "", 201

    @app.get("/users")
    def count_users():
        return str(count(db.session, User))

    yield app
    with app.app_context():
        db.engine.dispose()


def count_in_test():
    with fus.session_scope() as session:
        return count(session, User)


def test_commits_through_every_entry_point(unified_rollback, app, committed):
    with app.app_context():
        with current_app.unified_session_manager.get_db_session() as session:
            session.add(User(name="get_db_session"))
        with current_app.request_session_manager.session_scope() as session:
            session.add(User(name="request_session_scope"))
        session = fus.create_session()
        session.add(User(name="create_session_in_app"))
        session.commit()
        session.close()
        with fus.session_scope() as session:
            session.add(User(name="session_scope_in_app"))
        Service().add("mixin_in_app")
        db.session.add(User(name="db_session_commit"))
        db.session.commit()
    # outside an app context: the default factory, made during the test (point 1)
    session = fus.create_session()
    session.add(User(name="create_session"))
    session.commit()
    session.close()
    with fus.session_scope() as session:
        session.add(User(name="session_scope"))
    generator = fus.get_session_generator()
    session = next(generator)
    session.add(User(name="session_generator"))
    session.commit()
    generator.close()
    with fus.get_engine().begin() as connection:
        connection.execute(sa.insert(User).values(name="engine_begin"))
    with fus.get_engine().connect() as connection:
        connection.execute(sa.insert(User).values(name="engine_connect"))
        connection.commit()
    assert count_in_test() == 11
    assert committed() == []


def test_nothing_is_left_for_the_next_test(unified_rollback, app, committed):
    assert committed() == []
    assert count_in_test() == 0


@pytest.mark.usefixtures("unified_rollback")
def test_requests_in_pytest_flask_context(client, committed):
    assert client.post("/users", data={"name": "ann"}).status_code == 201
    assert client.post("/users", data={"name": "bob"}).status_code == 201
    assert client.get("/users").text == "6"
    assert committed() == []


@pytest.mark.unified_rollback
class TestWithoutPushedContext:
    @pytest.fixture(autouse=True)
    def _push_request_context(self):
        # pytest-flask's documented override: every request gets its own app context.
        pass

    def test_requests_each_in_their_own_context(self, client, committed):
        assert client.post("/users", data={"name": "cyd"}).status_code == 201
        assert client.get("/users").text == "3"
        assert committed() == []

    def test_independent_unit_in_a_request_survives_the_outer_rollback(self, app, audits):
        with app.app_context():
            manager = current_app.unified_session_manager
            with pytest.raises(LookupError):
                with manager.get_db_session() as outer:
                    outer.scalar(sa.select(sa.func.count()).select_from(User))
                    with manager.get_db_session(independent=True) as audit:
                        audit.add(Audit(message="denied"))
                    raise LookupError("the request fails")
        with app.app_context():
            assert [a.message for a in db.session.scalars(sa.select(Audit))] == ["denied"]
        assert audits() == []


def test_plugin_is_loaded_but_idle(request, app, committed):
    """Without a fixture nothing is patched and commits are real (removed again here)."""
    assert "unified_rollback" not in request.fixturenames
    with app.app_context():
        with app.unified_session_manager.get_db_session() as session:
            session.add(User(name="real"))
            assert type(session.connection()).__name__ == "Connection"
    assert committed() == ["real"]
    with app.app_context():
        db.session.execute(sa.delete(User))
        db.session.commit()
    assert committed() == []
