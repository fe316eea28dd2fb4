"""Shared by every module of the inner project: the database, the tables, an observer."""

import os

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

URL = os.environ["FUS_TEST_URL"]
SUFFIX = os.environ["FUS_TEST_SUFFIX"]
BACKEND = sa.make_url(URL).get_backend_name()
# An engine that must see only what is committed opts out of unified_rollback.
NOT_ISOLATED = {"unified_rollback": False}


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = f"fus_user_{SUFFIX}"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80), unique=True)
    note: Mapped[str] = mapped_column(sa.String(200), default="")


class Audit(Base):
    __tablename__ = f"fus_audit_{SUFFIX}"

    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(sa.String(80))


def observer_engine() -> sa.Engine:
    return sa.create_engine(URL, poolclass=NullPool, execution_options=NOT_ISOLATED)


def count(session: object, model: type) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(model)))  # type: ignore[attr-defined]
