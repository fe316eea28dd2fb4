"""A base class for services that run in a request, a thread, a worker or a script."""

from __future__ import annotations

import functools

from flask.globals import _cv_app

from .session_factory import SessionFactory, get_default_factory
from .unit_of_work import UnitOfWork

__all__ = ["SessionServiceMixin"]


class SessionServiceMixin:
    """Gives a service ``self.db_session()``: one unit of work wherever it runs.

    * inside an app context with the extension installed: the app's
      ``unified_session_manager.get_db_session()`` (joins the request's unit of work);
    * elsewhere: a unit of work on ``self.db_manager.get_session()``, a legacy manager or a
      :class:`SessionFactory`;
    * with no ``db_manager`` (absent or ``None``): the default factory (``DATABASE_URL``).

    Every branch enters the same :class:`UnitOfWork`: commit on success, roll back on
    error, always close, the same nesting rule.
    """

    def db_session(
        self, nested: bool = False, independent: bool = False, readonly: bool = False
    ) -> UnitOfWork:
        """A unit of work for this service's current surroundings.

        ``readonly=True``: on a read replica, in a read-only transaction (a legacy manager
        has no replicas: its session, in a read-only transaction).
        """
        context = _cv_app.get(None)  # not current_app: a proxy look-up per call
        if context is not None:
            manager = getattr(context.app, "unified_session_manager", None)
            if manager is not None:
                scope: UnitOfWork = manager.get_db_session(nested, independent, readonly)
                return scope
        db_manager = getattr(self, "db_manager", None)
        if db_manager is None:
            return get_default_factory().session_scope(
                nested=nested, independent=independent, readonly=readonly
            )
        if isinstance(db_manager, SessionFactory):
            return db_manager.session_scope(
                nested=nested, independent=independent, readonly=readonly
            )
        # A legacy manager: its get_session() opens, the protocol commits, rolls back, closes.
        open_session = db_manager.get_session
        if readonly:
            from .replicas import read_only_session

            open_session = functools.partial(read_only_session, db_manager.get_session)
        return UnitOfWork(db_manager, open_session, nested=nested, independent=independent)
