"""Flask-SQLAlchemy binds: a model on a second database is reached through both managers."""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_unified_session.engines import known_engines
from tests.conftest import RUN, User


class OtherBase(DeclarativeBase):
    # Flask-SQLAlchemy routes a table by its metadata's bind key.
    metadata = sa.MetaData(info={"bind_key": "other"})


class Note(OtherBase):
    __tablename__ = f"fus_note_{RUN}"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(80))


def test_bound_model_reached_through_both_managers(make_app, tmp_path, observer):
    """Note (bind 'other') and User (default) in one unit: each lands in its own database."""
    other_url = f"sqlite:///{os.path.join(tmp_path, 'other.db')}"
    app = make_app(SQLALCHEMY_BINDS={"other": other_url})
    db = app.extensions["test_db"]
    with app.app_context():
        other_engine = db.engines["other"]
        OtherBase.metadata.create_all(other_engine)

    @app.post("/notes")
    def notes():
        with app.unified_session_manager.get_db_session() as session:
            session.add_all([Note(text="uow"), User(name="uow")])
        with app.request_session_manager.session_scope() as session:
            session.add_all([Note(text="request"), User(name="request")])
        return "ok"

    assert app.test_client().post("/notes").status_code == 200
    assert observer.names() == ["request", "uow"]
    with other_engine.connect() as connection:
        texts = connection.execute(sa.select(Note.text).order_by(Note.text)).scalars().all()
    assert texts == ["request", "uow"]
    # Both of Flask-SQLAlchemy's engines are adopted, no engine of the extension's own.
    assert {id(r.engine) for r in known_engines()} == {
        id(other_engine),
        id(app.extensions["unified_session"].factory.engine),
    }
    assert not any(r.owned for r in known_engines())
