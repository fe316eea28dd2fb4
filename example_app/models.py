"""The example's models: plain SQLAlchemy, so the report script uses them without Flask.

Flask-SQLAlchemy is given this ``Base`` (``SQLAlchemy(model_class=Base)``), so
``db.session`` and ``db.create_all()`` see the same tables.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ForeignKey, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"

#: werkzeug's hash method for new passwords (scrypt: slow on purpose); the example's tests
#: set a cheap one so that they stay fast.
PASSWORD_HASH_METHOD = "scrypt"


class CaptionStateError(Exception):
    """A caption was asked to change state from a state that does not allow it."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    """A person who logs in. Implements the four attributes Flask-Login asks for."""

    __tablename__ = "example_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password, method=PASSWORD_HASH_METHOD)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    # Flask-Login's protocol (is_active is the column above).
    is_authenticated = True
    is_anonymous = False

    def get_id(self) -> str:
        return str(self.id)


class Image(Base):
    __tablename__ = "example_images"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(120))
    color: Mapped[str] = mapped_column(String(7), default="#888888")
    captions: Mapped[list[Caption]] = relationship(
        back_populates="image", order_by="Caption.id", cascade="all, delete-orphan"
    )


class Caption(Base):
    __tablename__ = "example_captions"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("example_images.id"))
    text: Mapped[str] = mapped_column(String(500))
    author_id: Mapped[int | None] = mapped_column(ForeignKey("example_users.id"))
    status: Mapped[str] = mapped_column(String(10), default=PENDING)
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("example_users.id"))
    reviewed_at: Mapped[datetime | None]

    image: Mapped[Image] = relationship(back_populates="captions")
    author: Mapped[User | None] = relationship(foreign_keys=[author_id])

    def approve(self, reviewer_id: int | None) -> None:
        self._review(APPROVED, reviewer_id)

    def reject(self, reviewer_id: int | None) -> None:
        self._review(REJECTED, reviewer_id)

    def _review(self, status: str, reviewer_id: int | None) -> None:
        if self.status != PENDING:
            raise CaptionStateError(f"caption {self.id} is already {self.status}")
        self.status = status
        self.reviewed_by_id = reviewer_id
        self.reviewed_at = utcnow()


class AuditEntry(Base):
    """Who did what: written in the same unit of work as the change it records."""

    __tablename__ = "example_audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(String(80))
    user_id: Mapped[str | None] = mapped_column(String(40))
    endpoint: Mapped[str | None] = mapped_column(String(80))
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    detail: Mapped[str] = mapped_column(Text, default="")


def audit(session: Session, action: str, target: Any, detail: str = "") -> AuditEntry:
    """Add an audit row from ``session.info`` (filled by ``get_db_session()`` in a request).

    Flushed at once, so that a failure later in the same unit of work shows the rollback
    taking a row that really reached the database.
    """
    info = session.info
    user_id = info.get("user_id")
    entry = AuditEntry(
        action=action,
        target=f"{type(target).__name__.lower()}:{getattr(target, 'id', target)}",
        user_id=None if user_id is None else str(user_id),
        endpoint=info.get("endpoint"),
        request_id=info.get("request_id"),
        detail=detail,
    )
    session.add(entry)
    session.flush()
    return entry
