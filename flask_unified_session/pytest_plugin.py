"""pytest plugin: a test that asks for ``unified_rollback`` leaves nothing in the database.

Registered through the ``pytest11`` entry point, so pytest loads it in every project that
installs flask-unified-session; it stays inactive until a test requests the
``unified_rollback`` fixture (directly, or with ``@pytest.mark.usefixtures``). This module
imports neither Flask nor Flask-SQLAlchemy, and SQLAlchemy only once a test asks for it.

For the duration of one test, each isolated engine hands out one connection, opened on
first use, inside an outer transaction that is rolled back when the test ends:

* ``engine.connect()`` and ``engine.begin()`` return that connection; its ``close()`` does
  nothing, its ``begin()`` is a SAVEPOINT, and its ``commit()``/``rollback()`` act back to
  the previous commit, never on the outer transaction;
* ORM sessions reach it too: ``Session.get_bind()`` answers the connection instead of the
  engine, and the known sessionmakers join with ``join_transaction_mode="create_savepoint"``,
  so ``session.commit()`` releases a SAVEPOINT and ``session.rollback()`` rolls back to it;
* on pysqlite engines that lack the SAVEPOINT fix (adopted Flask-SQLAlchemy engines), the
  test connection emits ``BEGIN`` itself for the duration of the test.

Everything is restored when the test ends, also when it fails."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import sessionmaker

__all__ = [
    "RollbackIsolation",
    "rollback_isolation",
    "unified_rollback",
    "unified_rollback_targets",
]

_MISSING = object()
_JOIN_MODE = "join_transaction_mode"


class RollbackIsolation:
    """Every isolated engine answers one connection whose outer transaction is rolled back.

    Use it through the ``unified_rollback`` fixture, or directly::

        with rollback_isolation(app, factory) as isolation:
            ...  # commits here are undone at the end of the block

    Accepted targets (:meth:`bind`): a Flask app (the extension's engines and factory, and
    Flask-SQLAlchemy's engines and ``db.session``), a
    :class:`~flask_unified_session.SessionFactory` (or anything with ``engine`` and
    ``sessionmaker``), a ``sessionmaker`` or ``scoped_session``, an ``Engine``.

    The one connection of an engine is shared by every thread of the test: do not use it
    from several threads at the same time.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._lock = threading.RLock()
        self._engines: dict[Engine, Connection | None] = {}
        self._makers: set[int] = set()
        self._session_patch_installed = False
        self._closed = False

    # -- public ------------------------------------------------------------------------

    def bind(self, *targets: Any) -> None:
        """Isolate ``targets`` too, from now until the end of the test."""
        for target in targets:
            self._bind_one(target)

    @property
    def engines(self) -> list[Engine]:
        """The engines isolated so far."""
        return list(self._engines)

    def connection(self, engine: Engine | None = None) -> Connection:
        """The test's connection to ``engine`` (default: the only, or first, isolated one)."""
        if engine is None:
            if not self._engines:
                raise LookupError("no engine is isolated: bind an app, a factory or an engine")
            engine = next(iter(self._engines))
        if engine not in self._engines:
            raise LookupError(f"{engine!r} is not isolated by this test; bind() it first")
        return self._connection_for(engine)

    def close(self) -> None:
        """Roll back every test transaction and undo every patch (idempotent)."""
        if not self._closed:
            self._closed = True
            self._stack.close()

    def __enter__(self) -> RollbackIsolation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- targets -----------------------------------------------------------------------

    def _bind_one(self, target: Any) -> None:
        from sqlalchemy.engine import Connection, Engine
        from sqlalchemy.orm import scoped_session, sessionmaker

        if self._closed:
            raise RuntimeError("this isolation has ended; bind() within the test")
        if target is None or isinstance(target, Connection):
            return  # nothing to do: a Connection is already under its owner's control
        if isinstance(target, Engine):
            self._bind_engine(target)
        elif isinstance(target, scoped_session):
            self._bind_sessionmaker(target.session_factory)
        elif isinstance(target, sessionmaker):
            self._bind_sessionmaker(target)
        elif isinstance(getattr(target, "extensions", None), dict):
            self._bind_app(target)
        elif isinstance(getattr(target, "engine", None), Engine) and isinstance(
            getattr(target, "sessionmaker", None), sessionmaker
        ):
            self._bind_engine(target.engine)
            self._bind_sessionmaker(target.sessionmaker)
        else:
            raise TypeError(
                f"cannot isolate {target!r}: give a Flask app, a SessionFactory, a "
                "sessionmaker, a scoped_session or an Engine"
            )

    def _bind_app(self, app: Any) -> None:
        state = app.extensions.get("unified_session")
        db = app.extensions.get("sqlalchemy")
        if state is not None:
            self._bind_one(state.factory)
            for engine in state.engines.values():
                self._bind_engine(engine)
            db = state.db or db
        if db is not None and hasattr(type(db), "engines"):
            # Flask-SQLAlchemy: its engines belong to the app; db.session's sessionmaker.
            with app.app_context():
                engines = list(db.engines.values())
                maker = db.session.session_factory
            for engine in engines:
                self._bind_engine(engine)
            self._bind_sessionmaker(maker)

    def _bind_sessionmaker(self, maker: sessionmaker[Any]) -> None:
        from sqlalchemy.engine import Engine

        with self._lock:
            if id(maker) in self._makers:
                return
            self._makers.add(id(maker))
            previous = maker.kw.get(_JOIN_MODE, _MISSING)
            maker.kw[_JOIN_MODE] = "create_savepoint"

            def restore() -> None:
                if previous is _MISSING:
                    maker.kw.pop(_JOIN_MODE, None)
                else:
                    maker.kw[_JOIN_MODE] = previous

            self._stack.callback(restore)
        binds = [maker.kw.get("bind"), *(maker.kw.get("binds") or {}).values()]
        for bind in binds:
            if isinstance(bind, Engine):
                self._bind_engine(bind)

    def _bind_engine(self, engine: Engine) -> None:
        with self._lock:
            if engine in self._engines:
                return
            self._install_session_patch()
            self._engines[engine] = None

            def connect() -> Connection:
                return self._connection_for(engine)

            _patch(self._stack, engine, "connect", connect)

    # -- the test connection -----------------------------------------------------------

    def _connection_for(self, engine: Engine) -> Connection:
        connection = self._engines.get(engine)
        if connection is not None:
            return connection
        with self._lock:
            connection = self._engines.get(engine)
            if connection is None:
                if self._closed:
                    raise RuntimeError("the test's isolation has ended")
                connection = self._open(engine)
                self._engines[engine] = connection
            return connection

    def _open(self, engine: Engine) -> Connection:
        from sqlalchemy import event

        opened: list[Connection] = []
        sqlite = engine.dialect.name == "sqlite" and engine.dialect.driver == "pysqlite"
        if sqlite:
            # pysqlite (legacy transaction control) emits no BEGIN for SQLAlchemy's
            # begin() and none before SAVEPOINT, so releasing the outermost SAVEPOINT
            # would commit for real: emit BEGIN ourselves, as the engines this library
            # makes always do. Added before connecting, so that the connection has the
            # engine's events; a no-op when a BEGIN was already emitted (our own
            # engines, Python 3.12's autocommit=False).
            def begin_for_real(connection: Connection) -> None:
                if opened and connection is opened[0]:
                    dbapi = connection.connection.dbapi_connection
                    if dbapi is not None and not dbapi.in_transaction:
                        connection.exec_driver_sql("BEGIN")

            event.listen(engine, "begin", begin_for_real)
            self._stack.callback(event.remove, engine, "begin", begin_for_real)

        connection = type(engine).connect(engine)  # the engine's own, never a patched one
        opened.append(connection)
        self._stack.callback(_finish, connection)
        _patch_connection(connection)
        return connection

    def _install_session_patch(self) -> None:
        # Sessions reach the database through get_bind(): answer the test connection for
        # an isolated engine, so the session joins the test's transaction (a Session that
        # connected to an engine itself would take the outer transaction as its own).
        if self._session_patch_installed:
            return
        self._session_patch_installed = True
        from sqlalchemy.engine import Engine
        from sqlalchemy.orm import Session

        for cls in _classes_defining(Session, "get_bind"):
            original = cls.__dict__["get_bind"]
            cls.get_bind = _isolated_get_bind(original, self, Engine)  # type: ignore[attr-defined]
            self._stack.callback(setattr, cls, "get_bind", original)


@contextlib.contextmanager
def rollback_isolation(*targets: Any) -> Iterator[RollbackIsolation]:
    """A :class:`RollbackIsolation` of ``targets`` for the block; everything rolled back after."""
    isolation = RollbackIsolation()
    try:
        isolation.bind(*targets)
        yield isolation
    finally:
        isolation.close()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def unified_rollback_targets() -> list[Any]:
    """What ``unified_rollback`` isolates besides its defaults; override it to add some.

    Return Flask apps, ``SessionFactory`` objects, sessionmakers or engines.
    """
    return []


@pytest.fixture
def unified_rollback(request: pytest.FixtureRequest) -> Iterator[RollbackIsolation]:
    """Run the test in one transaction per database, rolled back when the test ends.

    Isolates the ``app`` fixture's app when the test uses one (pytest-flask), the default
    factory when there is one (or ``DATABASE_URL`` is set), every engine
    flask-unified-session created or adopted so far, and ``unified_rollback_targets``.
    Yields the :class:`RollbackIsolation`; ``bind()`` adds targets made during the test.
    """
    from .engines import known_engines

    isolation = RollbackIsolation()
    try:
        if "app" in request.fixturenames:
            app = request.getfixturevalue("app")
            if isinstance(getattr(app, "extensions", None), dict):
                isolation.bind(app)
        isolation.bind(_default_factory())
        isolation.bind(*request.getfixturevalue("unified_rollback_targets"))
        isolation.bind(*(record.engine for record in known_engines()))
        yield isolation
    finally:
        isolation.close()


# -- helpers -----------------------------------------------------------------------------


def _default_factory() -> Any:
    """The default factory if there is one, or if ``DATABASE_URL`` calls for a new one.

    Not created when an engine the library knows already reaches that database (an app's
    Flask-SQLAlchemy engine): a second engine there is the user's call to make, not ours.
    """
    from . import session_factory
    from .config import ConfigurationError, Settings
    from .engines import database_identity, known_engines

    existing = session_factory.existing_default_factory()
    if existing is not None:
        return existing
    if not os.environ.get("DATABASE_URL"):
        return None
    try:
        settings = Settings.from_env()
    except ConfigurationError:
        return None  # the code under test will say so if it uses it
    identity = database_identity(settings.url)
    if identity is not None and any(r.database == identity for r in known_engines()):
        return None
    return session_factory.get_default_factory()


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _patch(stack: contextlib.ExitStack, target: Any, name: str, value: object) -> None:
    """Set an instance attribute; the exit stack puts the previous state back."""
    previous = target.__dict__.get(name, _MISSING)
    setattr(target, name, value)

    def restore() -> None:
        if previous is _MISSING:
            target.__dict__.pop(name, None)
        else:
            setattr(target, name, previous)

    stack.callback(restore)


def _classes_defining(base: type, name: str) -> list[type]:
    found: list[type] = []
    pending = [base]
    seen: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if name in cls.__dict__:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


_PATCHED = ("close", "begin", "commit", "rollback")


def _patch_connection(connection: Connection) -> None:
    """Begin the test's transaction; code using the connection directly cannot end it.

    Under the outer transaction sits a "base" SAVEPOINT: a session that was not configured
    with ``join_transaction_mode="create_savepoint"`` still joins with a SAVEPOINT of its
    own (the "conditional_savepoint" default), and ``commit()``/``rollback()`` called on
    the connection itself (commit-as-you-go code) release or roll back to it, then open
    the next one: the work is kept, or undone, back to the previous commit, as on a
    connection of its own.
    """
    from sqlalchemy import exc
    from sqlalchemy.engine import Connection

    Connection.begin(connection)
    base = [connection.begin_nested()]

    def restart() -> None:
        if not connection.in_transaction():  # something ended the outer transaction
            Connection.begin(connection)
        base[0] = connection.begin_nested()

    def begin() -> Any:
        if not connection.in_transaction():
            restart()
        return connection.begin_nested()

    def commit() -> None:
        current = connection.get_nested_transaction()
        if current is None:
            restart()
        elif current is base[0]:
            current.commit()
            restart()
        # else a session's (or a begin()'s) SAVEPOINT is open: the work stays in it

    def rollback() -> None:
        current = connection.get_nested_transaction()
        if current is None:
            Connection.rollback(connection)
            restart()
        elif current is base[0]:
            current.rollback()
            restart()
        else:
            raise exc.InvalidRequestError(
                "rollback() on the test's connection while a session's SAVEPOINT is open "
                "on it: under unified_rollback, engine.connect() answers the one "
                "connection that sessions use too; roll back the session, or the "
                "transaction object that begin() returned"
            )

    connection.close = _nothing  # type: ignore[method-assign]
    connection.begin = begin  # type: ignore[method-assign]
    connection.commit = commit  # type: ignore[method-assign]
    connection.rollback = rollback  # type: ignore[method-assign]


def _isolated_get_bind(original: Any, isolation: RollbackIsolation, engine_type: type) -> Any:
    def get_bind(session: Any, *args: Any, **kwargs: Any) -> Any:
        bind = original(session, *args, **kwargs)
        if isinstance(bind, engine_type) and bind in isolation._engines:
            return isolation._connection_for(bind)
        return bind

    get_bind.__wrapped__ = original  # type: ignore[attr-defined]
    return get_bind


def _finish(connection: Connection) -> None:
    """Roll back whatever the test's connection holds, then give it back to the pool."""
    from sqlalchemy.engine import Connection

    for name in _PATCHED:
        connection.__dict__.pop(name, None)
    try:
        if not connection.closed and not connection.invalidated:
            connection.rollback()
            dbapi = connection.connection.dbapi_connection
            if getattr(dbapi, "in_transaction", False):  # pysqlite with autocommit=True
                connection.exec_driver_sql("ROLLBACK")
    finally:
        Connection.close(connection)
