"""100 tests that commit through every entry point: nothing is left afterwards."""

import flask_unified_session as fus
import pytest
import sqlalchemy as sa
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from flask_unified_session import SessionServiceMixin, UnifiedSession

from common import URL, User, count

db = SQLAlchemy()


class Service(SessionServiceMixin):
    pass


@pytest.fixture(scope="module")
def app():
    app = Flask(__name__)
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI=URL)
    db.init_app(app)
    UnifiedSession(app, db=db)
    yield app
    with app.app_context():
        db.engine.dispose()


def add(session, n, where):
    session.add(User(name=f"s{n}-{where}"))


@pytest.mark.parametrize("n", range(100))
def test_commit_everywhere(unified_rollback, app, n):
    with app.app_context():
        with current_app.unified_session_manager.get_db_session() as session:
            add(session, n, "get_db_session")
        with current_app.request_session_manager.session_scope() as session:
            add(session, n, "request")
        with Service().db_session() as session:
            add(session, n, "mixin")
        add(db.session, n, "db")
        db.session.commit()
    with fus.session_scope() as session:
        add(session, n, "script")
    session = fus.create_session()
    add(session, n, "create_session")
    session.commit()
    session.close()
    with fus.get_engine().begin() as connection:
        connection.execute(sa.insert(User).values(name=f"s{n}-engine"))
    own = sa.create_engine(URL)
    with own.connect() as connection:
        connection.execute(sa.insert(User).values(name=f"s{n}-own-engine"))
        connection.commit()
    own.dispose()
    with fus.session_scope() as session:
        assert count(session, User) == 8
