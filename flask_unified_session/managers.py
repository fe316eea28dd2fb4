"""The two managers an app gets: units of work, and the app context's session.

Both enter the factory's :class:`~flask_unified_session.unit_of_work.UnitOfWork`, and in
an app context both run on its one session (``db.session``'s, with Flask-SQLAlchemy),
which stays open until the app context is torn down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING

from flask import Flask, Response, appcontext_tearing_down, g
from flask.ctx import AppContext
from flask.globals import _cv_app
from sqlalchemy.orm import Session
from werkzeug.exceptions import InternalServerError

from . import signals
from .session_factory import SessionFactory
from .unit_of_work import UnitOfWork, _quietly

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

__all__ = ["COMMIT_MODES", "RequestSessionManager", "UnitOfWorkManager"]

COMMIT_MODES = ("manual", "autocommit", "autocommit_include_redirect")
_LAST_COMMIT_STATUS = {"autocommit": 299, "autocommit_include_redirect": 399}
_G_SESSION = "_unified_session_request_session"
_G_TIMED = "_unified_session_request_timed"  # (opened at, session)

log = logging.getLogger("flask_unified_session")
# blinker connects and disconnects in place: a truth test of this dict is the check.
_closed_receivers = signals.session_closed.receivers


class UnitOfWorkManager:
    """``app.unified_session_manager``: units of work on the app's engines."""

    def __init__(self, factory: SessionFactory) -> None:
        self.factory = factory

    def get_db_session(
        self, nested: bool = False, independent: bool = False, readonly: bool = False
    ) -> UnitOfWork:
        """A unit of work that records who acted in ``session.info``.

        Commits when the outermost block ends normally, rolls back and re-raises on any
        exception. In an app context it runs on the app context's session and leaves it
        open (objects stay attached) until teardown; elsewhere it opens a session and
        closes it. Inside another unit of work of this app it joins that one;
        ``nested=True`` makes it a SAVEPOINT, ``independent=True`` gives it its own
        session and transaction. ``readonly=True`` runs the block on a read replica in a
        read-only transaction, with a session of its own (closed at its end), unless a
        unit of this app is open: then it joins that one (see
        :mod:`flask_unified_session.replicas`).
        """
        return self.factory.session_scope(nested, independent, readonly)


class RequestSessionManager:
    """``app.request_session_manager``: the session of the current app context."""

    def __init__(self, app: Flask, factory: SessionFactory, db: SQLAlchemy | None) -> None:
        self.app = app
        self.factory = factory
        self.db = db
        # Flask-SQLAlchemy keys db.session's sessions by id(app context): with its own
        # scope function the session of a context is found, and made, as db.session()
        # would, without its proxy and scope-function look-ups.
        self._sessions_by_context: dict[object, Session] | None = None
        self._create_session: Callable[[], Session] | None = None
        self._reporting_at_teardown = False
        if db is not None:
            from flask_sqlalchemy.session import _app_ctx_id

            registry = db.session.registry
            by_context = getattr(registry, "registry", None)
            create = getattr(registry, "createfunc", None)
            if (
                getattr(registry, "scopefunc", None) is _app_ctx_id
                and isinstance(by_context, dict)
                and callable(create)
            ):
                self._sessions_by_context, self._create_session = by_context, create

    def session_scope(self) -> UnitOfWork:
        """The app context's session as a unit of work (the same as ``get_db_session()``).

        Commits on success and rolls back on error; the session (with Flask-SQLAlchemy,
        the one behind ``db.session``) stays open, its objects attached, until the app
        context ends. It records who acted in ``session.info``.
        """
        if _cv_app.get(None) is None:
            raise RuntimeError(
                "request_session_manager.session_scope() needs an application context "
                "(a request, a CLI command, or 'with app.app_context():'). Outside one, use "
                "flask_unified_session.session_scope() or create_session(); inside one, "
                "current_app.unified_session_manager.get_db_session() is a unit of work"
            )
        return self.factory.session_scope()

    def current_session(self) -> Session:
        """The current app context's session, created on first use; closed at teardown."""
        session = self.context_session()
        if session is None:
            raise RuntimeError(
                "request_session_manager.current_session() needs an application context "
                f"of app {self.app.name!r} (a request, a CLI command, or 'with "
                "app.app_context():'); outside one, use flask_unified_session.session_scope()"
            )
        return session

    def context_session(self) -> Session | None:
        """The session of the current app context if it is this app's, else None.

        What the factory's outermost units of work run on (one session per app context);
        created on first use.
        """
        context = _cv_app.get(None)
        if context is None or context.app is not self.app:
            return None
        by_context = self._sessions_by_context
        if by_context is not None:
            key = id(context)
            session = by_context.get(key)
            if session is None:
                assert self._create_session is not None
                session = by_context.setdefault(key, self._create_session())
        elif self.db is not None:
            session = self.db.session()
        else:
            session = context.g.get(_G_SESSION)
            if session is None:
                session = self.factory.sessionmaker()
                setattr(context.g, _G_SESSION, session)
        if _closed_receivers and _G_TIMED not in context.g:
            self._time_until_teardown(context, session)
        return session

    def _time_until_teardown(self, context: AppContext, session: Session) -> None:
        # Its session_closed signal is sent at teardown, with the time since now.
        setattr(context.g, _G_TIMED, (perf_counter(), session))
        if self.db is not None and not self._reporting_at_teardown:
            # Flask-SQLAlchemy closes db.session at teardown; this reports it afterwards.
            # Connected on first need: an app whose sessions nobody times pays nothing.
            appcontext_tearing_down.connect(self._report_at_teardown, sender=self.app)
            self._reporting_at_teardown = True

    def _existing_session(self) -> Session | None:
        # Never creates one: a request that did not touch the database costs nothing.
        if self.db is not None:
            if not self.db.session.registry.has():
                return None
            existing: Session = self.db.session()
            return existing
        current: Session | None = g.get(_G_SESSION)
        return current

    def install(self, commit_mode: str) -> None:
        """Register the teardown (and the commit-mode hook) on the app."""
        if self.db is None:
            # With Flask-SQLAlchemy, db.session is its to close: no teardown function of
            # ours (Flask runs every one on every app context). A plain function, not the
            # bound method: Flask asks it whether it is a coroutine function each time.
            def close_at_teardown(exc: BaseException | None) -> None:
                self._close_at_teardown(exc)

            self.app.teardown_appcontext(close_at_teardown)
        last_status = _LAST_COMMIT_STATUS.get(commit_mode)
        if last_status is not None:

            def commit_by_status(response: Response) -> Response:
                return self._commit_by_status(response, last_status)

            self.app.after_request(commit_by_status)

    def _close_at_teardown(self, _exc: BaseException | None) -> None:
        # Never commits: whatever a block or the commit mode did not commit is rolled back.
        context_g = _cv_app.get().g
        timed = context_g.pop(_G_TIMED, None)
        session = context_g.pop(_G_SESSION, None)
        if session is None:
            return
        try:
            session.close()
        except Exception:
            log.exception("closing the request's session failed")
        if timed is not None and _closed_receivers:
            self._report_closed(session, timed[0])

    def _report_at_teardown(self, _app: Flask, **_kwargs: object) -> None:
        # appcontext_tearing_down is sent after the teardown functions, Flask-SQLAlchemy's
        # db.session.remove() included, with the app context still pushed.
        context = _cv_app.get(None)
        timed = context.g.pop(_G_TIMED, None) if context is not None else None
        if timed is not None and _closed_receivers:
            self._report_closed(timed[1], timed[0])

    def _report_closed(self, session: Session, opened_at: float) -> None:
        try:
            signals.session_closed.send(
                self.app,
                session=session,
                duration=perf_counter() - opened_at,
                context=session.info,
            )
        except Exception:
            log.exception("a receiver of session-closed raised; ignored")

    def _commit_by_status(self, response: Response, last_status: int) -> Response:
        session = self._existing_session()
        if (
            session is None
            or not session.in_transaction()  # nothing was done: nothing to commit
            or not 200 <= response.status_code <= last_status
        ):
            return response
        try:
            session.commit()
        except Exception as exc:
            log.exception("commit of the request's session failed; answering 500")
            _quietly(session.rollback, "rolling back")
            error = InternalServerError(original_exception=exc)
            return self.app.make_response(self.app.handle_http_exception(error))
        return response
