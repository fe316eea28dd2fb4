"""The framework-independent session factory and the module-level functions.

Nothing here imports Flask. Every unit of work is a
:class:`~flask_unified_session.unit_of_work.UnitOfWork`, the one implementation of
commit-on-success, rollback-on-error, always-close, and of the nesting rule.
"""

from __future__ import annotations

import functools
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings, display_url, factory_settings
from .engines import engine_for, register_engine
from .process_default import ProcessDefault
from .unit_of_work import DoomedTransactionError, UnitOfWork, _quietly

if TYPE_CHECKING:
    from .replicas import ReplicaSet

__all__ = [
    "DoomedTransactionError",
    "SessionFactory",
    "UnitOfWork",
    "close_session",
    "create_session",
    "get_default_factory",
    "get_engine",
    "get_session",
    "get_session_generator",
    "session_scope",
    "set_default_factory",
]


class TrackedSession(Session):
    """A ``Session`` that warns if it is garbage-collected without ``close()``."""

    _leak_guard: weakref.finalize[Any, Any] | None = None

    def close(self) -> None:
        guard = self._leak_guard
        if guard is not None:
            guard.detach()
            self._leak_guard = None
        super().close()


@functools.cache
def _tracked_class(base: type[Session]) -> type[Session]:
    if issubclass(base, TrackedSession):
        return base
    return type(f"Tracked{base.__name__}", (TrackedSession, base), {})


def _warn_unclosed(site: str) -> None:
    warnings.warn(
        f"a session created at {site} was garbage-collected without close(); "
        "close it in a finally block, or use session_scope()",
        ResourceWarning,
        stacklevel=2,
    )


# -- the factory -----------------------------------------------------------------------


class SessionFactory:
    """Sessions for one database, on one engine shared by the whole process.

    Give at most one of ``url``, ``engine`` (adopted: never disposed by the factory) or
    ``settings``; with none, the settings are read from ``DATABASE_URL`` and ``DB_*``.
    Other keyword arguments go to :class:`sqlalchemy.orm.sessionmaker`;
    ``expire_on_commit`` defaults to ``False`` so objects stay readable after a unit of
    work.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Engine | None = None,
        settings: Settings | None = None,
        **session_options: Any,
    ) -> None:
        settings = factory_settings(url, engine, settings)
        if engine is not None:
            register_engine(engine)
            self.owns_engine = False
        else:
            assert settings is not None
            # An engine already reaching this database (Flask-SQLAlchemy's, adopted) is
            # shared rather than doubled: then the factory does not own it.
            engine, self.owns_engine = engine_for(settings)
        self.settings = settings
        self.engine: Engine = engine
        session_options.setdefault("expire_on_commit", False)
        session_class = _tracked_class(session_options.pop("class_", Session))
        self.sessionmaker: sessionmaker[Session] = sessionmaker(
            bind=engine, class_=session_class, **session_options
        )
        #: the sender of lifecycle signals: the factory, or the Flask app that owns it
        self.signal_sender: object = self
        #: called when a unit of work opens or joins; its mapping goes into ``session.info``
        self.context_provider: Callable[[], Mapping[str, Any]] | None = None
        #: set by the Flask layer: the app context's session (or None outside one), which
        #: an outermost unit of work uses instead of opening a session of its own
        self.context_session: Callable[[], Session | None] | None = None
        #: the read replicas (``settings.replica_urls``) for ``readonly=True`` units, or None
        self.replicas: ReplicaSet | None = None
        if settings is not None and settings.replica_urls:
            # Imported only when replicas are configured: importing the package stays cheap.
            from .replicas import ReplicaSet

            self.replicas = ReplicaSet.from_settings(settings, engine)
            if self.replicas is not None:
                self.replicas.watch(self.sessionmaker)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **session_options: Any
    ) -> SessionFactory:
        """A factory configured from ``DATABASE_URL`` and ``DB_*`` in ``environ``."""
        return cls(settings=Settings.from_env(environ), **session_options)

    def __repr__(self) -> str:
        return f"<SessionFactory {display_url(self.engine.url)}>"

    def get_engine(self) -> Engine:
        """The engine (and so the connection pool) behind every session of this factory."""
        return self.engine

    def create_session(self) -> Session:
        """A new session that the caller must close; a leaked one warns where it was made."""
        session = self.sessionmaker()
        frame = sys._getframe(1)
        if frame.f_globals.get("__name__") == __name__:  # called through a module function
            frame = frame.f_back or frame
        guard = weakref.finalize(
            session, _warn_unclosed, f"{frame.f_code.co_filename}:{frame.f_lineno}"
        )
        guard.atexit = False
        session._leak_guard = guard  # type: ignore[attr-defined]
        return session

    def session_scope(
        self, nested: bool = False, independent: bool = False, readonly: bool = False
    ) -> UnitOfWork:
        """A unit of work: commit on success, roll back on error, always close.

        ``readonly=True``: its own session on a replica (or the primary) in a read-only
        transaction; see :mod:`flask_unified_session.replicas`.
        """
        if readonly:
            from .replicas import readonly_unit

            return readonly_unit(self, nested=nested, independent=independent)
        if self.replicas is not None:
            from .replicas import primary_unit

            return primary_unit(self, self.replicas, nested=nested, independent=independent)
        # Positional: a class called with keywords builds a dict for them on every unit.
        return UnitOfWork(
            self,
            self.sessionmaker,
            nested,
            independent,
            self.signal_sender,
            self.context_provider,
            self.context_session,
        )

    def get_session_generator(self) -> Iterator[Session]:
        """Yield one session for dependency injection; the consumer commits.

        Rolls back if the consumer raises and always closes; never commits by itself.
        """
        session = self.sessionmaker()
        try:
            yield session
        except BaseException:
            _quietly(session.rollback, "rolling back")
            raise
        finally:
            session.close()

    # The legacy ``db_manager`` interface, so a factory can stand in for one.
    def get_session(self) -> Session:
        """Same as :meth:`create_session` (the legacy ``db_manager`` name)."""
        return self.create_session()

    def close_session(self, session: Session) -> None:
        """Close ``session`` (the legacy ``db_manager`` name)."""
        session.close()

    def dispose(self) -> None:
        """Close the pooled connections of an owned engine (it reconnects on next use)."""
        if self.owns_engine:
            self.engine.dispose()
        if self.replicas is not None:
            self.replicas.dispose()


# -- the default factory and the module-level functions ---------------------------------

_default: ProcessDefault[SessionFactory] = ProcessDefault(SessionFactory.from_env)
# Consulted in order by the module-level functions: the Flask layer adds one that returns
# the current app's factory, so a script and a route share one pool.
_current_factory_hooks: list[Callable[[], SessionFactory | None]] = []


def get_default_factory() -> SessionFactory:
    """The process's default factory, configured from the environment on first use."""
    return _default.get()


def existing_default_factory() -> SessionFactory | None:
    """The default factory if it was created or set already; never creates one."""
    return _default.existing()


def set_default_factory(factory: SessionFactory | None) -> None:
    """Replace the default factory (``None``: read the environment again on next use)."""
    _default.set(factory)


def current_factory() -> SessionFactory:
    """The current Flask app's factory inside an app context, else the default one."""
    for hook in _current_factory_hooks:
        factory = hook()
        if factory is not None:
            return factory
    return get_default_factory()


def create_session() -> Session:
    """A new session the caller must close (the app's engine inside a Flask app context)."""
    return current_factory().create_session()


def session_scope(
    nested: bool = False, independent: bool = False, readonly: bool = False
) -> UnitOfWork:
    """A unit of work on the current factory: commit, or roll back, then close."""
    return current_factory().session_scope(nested, independent, readonly)


def get_session_generator() -> Iterator[Session]:
    """Yield one session for a dependency-injection framework (FastAPI ``Depends``)."""
    yield from current_factory().get_session_generator()


def get_engine() -> Engine:
    """The current factory's engine."""
    return current_factory().get_engine()


def get_session() -> Session:
    """Same as :func:`create_session`, for code written against a legacy ``db_manager``."""
    return current_factory().create_session()


def close_session(session: Session) -> None:
    """Close ``session``."""
    session.close()
