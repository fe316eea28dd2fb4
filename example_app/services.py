"""Services shared by the admin pages, the Flask CLI and the report script.

Each inherits :class:`~flask_unified_session.SessionServiceMixin` and takes a
``db_manager``. Inside a request or a CLI command, ``self.db_session()`` is the app's
``unified_session_manager.get_db_session()`` (it records who acted and joins an enclosing
unit of work); in a script it is a unit of work on ``db_manager`` (a
:class:`~flask_unified_session.SessionFactory`, or a legacy manager with
``get_session()``), or the default factory (``DATABASE_URL``) when that is ``None``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from flask_unified_session import SessionServiceMixin

from .models import PENDING, AuditEntry, Caption, Image, User, audit


class UserService(SessionServiceMixin):
    def __init__(self, db_manager: Any = None) -> None:
        self.db_manager = db_manager

    def list_users(self) -> list[User]:
        with self.db_session() as session:
            # expire_on_commit is off: the objects stay readable after the block.
            return list(session.scalars(select(User).order_by(User.username)))

    def create_user(self, username: str, password: str, *, is_admin: bool = False) -> User:
        if not username or not password:
            raise ValueError("a user needs a name and a password")
        with self.db_session() as session:
            user = User(username=username, is_admin=is_admin)
            user.set_password(password)
            session.add(user)
            session.flush()
            audit(session, "create_user", user)
            return user

    def set_active(self, user_id: int, active: bool) -> User:
        with self.db_session() as session:
            user = session.get(User, user_id)
            if user is None:
                raise LookupError(f"no user {user_id}")
            user.is_active = active
            audit(session, "activate" if active else "deactivate", user)
            return user


class ModerationService(SessionServiceMixin):
    def __init__(self, db_manager: Any = None) -> None:
        self.db_manager = db_manager

    def stats(self) -> dict[str, int]:
        with self.db_session() as session:
            counts: dict[str, int] = {
                "users": session.scalar(select(func.count()).select_from(User)) or 0,
                "images": session.scalar(select(func.count()).select_from(Image)) or 0,
                "audit_entries": session.scalar(select(func.count()).select_from(AuditEntry)) or 0,
            }
            rows = session.execute(select(Caption.status, func.count()).group_by(Caption.status))
            for status, number in rows:
                counts[f"captions_{status}"] = number
            return counts

    def approve_all_pending(self, reviewer_id: int | None = None) -> int:
        """Approve every pending caption in one unit of work; return how many."""
        with self.db_session() as session:
            pending = session.scalars(select(Caption).where(Caption.status == PENDING)).all()
            for caption in pending:
                caption.approve(reviewer_id)
                audit(session, "approve", caption, detail="bulk")
            return len(pending)
