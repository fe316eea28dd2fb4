"""The framework-independent session factory and the one unit-of-work protocol.

Nothing here imports Flask. :class:`UnitOfWork` is the only implementation of
commit-on-success, rollback-on-error, always-close; every entry point of the library
(``session_scope()``, ``get_db_session()``, the request manager's ``session_scope()``,
``SessionServiceMixin.db_session()``) enters one.

Nesting: a unit of work entered while another of the same *key* (a factory, an app's
factory, a legacy ``db_manager``) is active in the same thread and asyncio task joins it:
same session, same connection, the commit left to the outermost. ``nested=True`` makes
the inner block a SAVEPOINT; ``independent=True`` opens its own session. An exception
escaping a joined block dooms the unit: the outermost rolls back and raises
:class:`DoomedTransactionError` even if the caller caught the exception.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from time import perf_counter
from types import TracebackType
from typing import Any

from blinker import NamedSignal
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from . import signals
from .config import Settings, parse_url
from .engines import engine_for, register_engine

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

log = logging.getLogger("flask_unified_session")


class DoomedTransactionError(RuntimeError):
    """The unit of work was rolled back because an exception escaped a joined inner scope."""


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


# -- the unit-of-work protocol ---------------------------------------------------------


_active: ContextVar[tuple[UnitOfWork, ...]] = ContextVar("flask_unified_session_units", default=())


class UnitOfWork:
    """One unit of work: a context manager that yields a session.

    :param key: what "the same factory" means for nesting.
    :param open_session: called to get the session when this unit is the outermost.
    :param close: close the session at the end (the request's session is closed at
        app-context teardown instead).
    :param sender: the sender of the lifecycle signals.
    :param context: called on entry; its mapping is merged into ``session.info``.

    An outermost unit is pushed on a per-context stack; a scope that joins it keeps a
    reference to it (``_outer``) and marks it doomed when an exception escapes.
    """

    __slots__ = (
        "_close",
        "_context",
        "_doomed",
        "_listening",
        "_outer",
        "_owner",
        "_savepoint",
        "_session",
        "_started",
        "_token",
        "independent",
        "key",
        "nested",
        "open_session",
        "sender",
    )

    def __init__(
        self,
        key: object,
        open_session: Callable[[], Session],
        *,
        nested: bool = False,
        independent: bool = False,
        close: bool = True,
        sender: object = None,
        context: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.key = key
        self.open_session = open_session
        self.nested = nested
        self.independent = independent
        self.sender = key if sender is None else sender
        self._close = close
        self._context = context
        self._outer: UnitOfWork | None = None
        self._savepoint: SessionTransaction | None = None
        self._doomed: BaseException | None = None
        self._listening = False
        self._owner: tuple[int, object] | None = None

    def __enter__(self) -> Session:
        stack = _active.get()
        # A task created inside a scope inherits the context (and so the stack): the task
        # keeps it from joining a session another task uses concurrently. current_task()
        # is only asked when a loop runs in this thread.
        task = None
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and asyncio._get_running_loop() is not None:
            task = asyncio.current_task()
        owner = (threading.get_ident(), task)
        if stack and not self.independent:
            for unit in reversed(stack):
                if unit.key is self.key and unit._owner == owner:
                    return self._join(unit)
        session = self._session = self.open_session()
        # The unit is pushed last: if a context provider or a signal receiver raises, the
        # block never runs and no __exit__ would pop a unit pushed earlier (later scopes
        # would join a dead session and their commits would be lost).
        try:
            if self._context is not None:
                session.info.update(self._context())
            if signals.anyone_listening():
                self._listening = True
                self._started = perf_counter()
                self._emit(signals.session_opened)
        except BaseException:
            if self._close:
                _quietly(session.close, "closing the session")
            raise
        self._owner = owner
        self._token = _active.set((*stack, self))
        return session

    def _join(self, outer: UnitOfWork) -> Session:
        if outer._doomed is not None:
            raise DoomedTransactionError(_doomed_message(outer._doomed)) from outer._doomed
        self._outer = outer
        session = outer._session
        if self._context is not None:
            for name, value in self._context().items():
                session.info.setdefault(name, value)
        if self.nested:
            self._savepoint = session.begin_nested()
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._outer is not None:
            self._exit_joined(self._outer, exc)
            return
        _active.reset(self._token)
        session = self._session
        failed = exc is not None
        try:
            if exc is None and self._doomed is None:
                # Every session operation (add, execute, get) begins a transaction, so
                # none begun means no work: an empty commit is skipped, not "if dirty".
                if session.in_transaction():
                    try:
                        session.commit()
                    except BaseException:
                        failed = True
                        self._rollback(session)
                        raise
                self._emit(signals.session_committed)
            else:
                failed = True
                self._rollback(session)
                if exc is None:
                    raise DoomedTransactionError(_doomed_message(self._doomed)) from self._doomed
        finally:
            if self._close:
                self._close_session(session, quietly=failed)

    def _exit_joined(self, outer: UnitOfWork, exc: BaseException | None) -> None:
        savepoint = self._savepoint
        if savepoint is None:
            if exc is not None and outer._doomed is None:
                outer._doomed = exc
        elif exc is None:
            if savepoint.is_active:
                try:
                    savepoint.commit()
                except BaseException:
                    _quietly(savepoint.rollback, "rolling back a savepoint")
                    raise
        elif savepoint.is_active:
            _quietly(savepoint.rollback, "rolling back a savepoint")

    def _rollback(self, session: Session) -> None:
        _quietly(session.rollback, "rolling back")
        self._emit(signals.session_rolled_back)

    def _close_session(self, session: Session, *, quietly: bool) -> None:
        if quietly:
            _quietly(session.close, "closing the session")
        else:
            session.close()
        self._emit(signals.session_closed)

    def _emit(self, signal: NamedSignal) -> None:
        if self._listening:
            session = self._session
            signal.send(
                self.sender,
                session=session,
                duration=perf_counter() - self._started,
                context=session.info,
            )


def _quietly(step: Callable[[], object], what: str) -> None:
    # Called while another exception is in flight: that one must reach the caller.
    try:
        step()
    except Exception:
        log.warning(
            "error while %s after a failure; the original error follows", what, exc_info=True
        )


def _doomed_message(cause: BaseException | None) -> str:
    return (
        f"the unit of work was rolled back and nothing was committed: {cause!r} escaped "
        "an inner scope that had joined it. Let the exception reach the outermost scope, "
        "or give the inner scope nested=True so a SAVEPOINT contains its failure"
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
        given = [
            n
            for n, v in (("url", url), ("engine", engine), ("settings", settings))
            if v is not None
        ]
        if len(given) > 1:
            raise TypeError(f"give at most one of url, engine, settings; got {' and '.join(given)}")
        if engine is not None:
            register_engine(engine)
            self.owns_engine = False
        else:
            if settings is None:
                settings = (
                    Settings.from_env()
                    if url is None
                    else Settings(url=parse_url(url, "url"), source="url")
                )
            engine = engine_for(settings)
            self.owns_engine = True
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

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **session_options: Any
    ) -> SessionFactory:
        """A factory configured from ``DATABASE_URL`` and ``DB_*`` in ``environ``."""
        return cls(settings=Settings.from_env(environ), **session_options)

    def __repr__(self) -> str:
        return f"<SessionFactory {self.engine.url!s}>"

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

    def session_scope(self, nested: bool = False, independent: bool = False) -> UnitOfWork:
        """A unit of work: commit on success, roll back on error, always close."""
        return UnitOfWork(
            self,
            self.sessionmaker,
            nested=nested,
            independent=independent,
            sender=self.signal_sender,
            context=self.context_provider,
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


# -- the default factory and the module-level functions ---------------------------------

_default: SessionFactory | None = None
_default_lock = threading.Lock()
# Consulted in order by the module-level functions: the Flask layer adds one that returns
# the current app's factory, so a script and a route share one pool.
_current_factory_hooks: list[Callable[[], SessionFactory | None]] = []


def get_default_factory() -> SessionFactory:
    """The process's default factory, configured from the environment on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = SessionFactory.from_env()
    return _default


def existing_default_factory() -> SessionFactory | None:
    """The default factory if it was created or set already; never creates one."""
    return _default


def set_default_factory(factory: SessionFactory | None) -> None:
    """Replace the default factory (``None``: read the environment again on next use)."""
    global _default
    with _default_lock:
        _default = factory


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


def session_scope(nested: bool = False, independent: bool = False) -> UnitOfWork:
    """A unit of work on the current factory: commit, or roll back, then close."""
    return current_factory().session_scope(nested=nested, independent=independent)


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
