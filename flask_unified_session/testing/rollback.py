"""``unified_rollback``: one connection per database, every engine, any order of ends.

While an isolation is active, ``Engine.connect`` is replaced at class level, so every
engine that reaches a database during the test (made before it or during it, by this
library, by Flask-SQLAlchemy or by the user's own ``create_engine``) answers a
*logical* connection: a real :class:`~sqlalchemy.engine.Connection` of that engine, with
its own SQLAlchemy transaction state, over the one DBAPI connection the test holds for
that database (keyed by :func:`~flask_unified_session.engines.database_identity`). That
DBAPI connection sits in an outer transaction rolled back when the test ends.

Each logical transaction is a SAVEPOINT on the shared connection, kept in one stack per
database by :class:`_Database`:

* ``begin()`` (or autobegin) sets a SAVEPOINT; ``commit()`` marks it released (a real
  ``RELEASE`` only once nothing live sits above it, so ends may come in any order);
  ``rollback()`` is ``ROLLBACK TO SAVEPOINT``, after which the SAVEPOINTs of other live
  transactions that it destroyed are set again.
* Every statement is attributed to the logical transaction that ran it. When a
  transaction commits, the live transactions below it that have written nothing since
  their SAVEPOINT get a new SAVEPOINT above the committed work, so their later rollback
  keeps it (an ``independent=True`` unit inside a unit that only read, then fails).
* What one shared connection cannot reproduce is not hidden: a rollback that would undo
  another transaction's committed work, a commit of work that another transaction's
  rollback undid, DDL on MySQL/MariaDB (an implicit commit), ``raw_connection()``,
  isolation-level changes, a raw ``COMMIT``: each is refused with (or recorded as)
  :class:`UnifiedRollbackError`, and the test fails saying why and pointing to
  ``unified_truncate``.

Engines that must see only committed data (an observer) opt out with the execution
option ``unified_rollback=False``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = [
    "RollbackIsolation",
    "UnifiedRollbackError",
    "UnifiedRollbackWarning",
    "rollback_isolation",
]

OPT_OUT = "unified_rollback"
HINT = (
    "; the test's code needs real commits here: use the unified_truncate fixture "
    "(or @pytest.mark.unified_truncate) for this test"
)

LIVE, RELEASED, ROLLED_BACK = "live", "released", "rolled back"


class UnifiedRollbackError(RuntimeError):
    """What the code under test did cannot behave as in production under ``unified_rollback``."""


class UnifiedRollbackWarning(UserWarning):
    """A connection was already in use when ``unified_rollback`` started: it is not isolated."""


class _Savepoint:
    __slots__ = ("lost", "mark", "name", "owner", "root", "state")

    def __init__(self, name: str, owner: object, mark: int, root: _Savepoint | None) -> None:
        self.name = name
        self.owner = owner
        self.mark = mark  # index in the write log when it was set
        self.root = root or self  # the logical transaction it belongs to
        self.state = LIVE
        self.lost = False  # its work was undone by another transaction's rollback


_READS = frozenset({"SELECT", "SHOW", "PRAGMA", "EXPLAIN", "DESCRIBE", "DESC", "VALUES", "SET"})
_CONTROL = frozenset({"SAVEPOINT", "RELEASE"})
_ENDS = frozenset({"COMMIT", "BEGIN", "START", "END", "ROLLBACK"})
_MYSQL_DDL = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME", "GRANT", "REVOKE"})
_LEADING = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/|\()*", re.S)
_WRITE_IN_CTE = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.I)


def _keyword(statement: str) -> str:
    rest = statement[_LEADING.match(statement).end() :]  # type: ignore[union-attr]
    return rest[:12].split(None, 1)[0].upper() if rest.strip() else ""


class _Database:
    """The test's one DBAPI connection to a database, and its stack of SAVEPOINTs."""

    def __init__(self, isolation: RollbackIsolation, engine: Engine, key: Any) -> None:
        from sqlalchemy.engine import Connection

        self.isolation = isolation
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.mysql = engine.dialect.name in ("mysql", "mariadb")
        self.names = itertools.count(1)
        self.stack: list[_Savepoint] = []
        self.by_name: dict[str, _Savepoint] = {}
        self.writes: list[_Savepoint] = []  # the root transaction of each write, in order
        self.closed = False
        # Never through Engine.connect/raw_connection, nor from the engine's own pool: from
        # a copy of that pool kept for the whole test run (its events included), so that
        # the connection survives engines that come and go with the tests.
        self.fairy = _holder_pool(key, engine).connect()
        self.holder = Connection(engine, connection=self.fairy)
        self.holder.begin()
        dbapi = self.fairy.dbapi_connection
        if getattr(dbapi, "in_transaction", True) is False:
            # pysqlite without the SAVEPOINT fix emits no BEGIN for SQLAlchemy's begin()
            # and none before SAVEPOINT: releasing the last SAVEPOINT would commit.
            self.holder.exec_driver_sql("BEGIN")
        self.shared = _SharedDBAPI(self.fairy, self)

    # -- physical statements ---------------------------------------------------------

    def _sql(self, statement: str) -> None:
        self.holder.exec_driver_sql(statement)

    def _set(self, owner: object, root: _Savepoint | None) -> _Savepoint:
        name = f"fus_sp_{next(self.names)}"
        self._sql(f"SAVEPOINT {name}")
        savepoint = _Savepoint(name, owner, len(self.writes), root)
        self.stack.append(savepoint)
        self.by_name[name] = savepoint
        return savepoint

    def _trim(self) -> None:
        while self.stack and self.stack[-1].state != LIVE:
            top = self.stack.pop()
            self._sql(f"RELEASE SAVEPOINT {top.name}")

    # -- logical transactions --------------------------------------------------------

    def begin(self, owner: object, root: _Savepoint | None = None) -> _Savepoint:
        with self.lock:
            self._check_open()
            return self._set(owner, root)

    def wrote(self, savepoint: _Savepoint | None) -> None:
        if savepoint is not None:
            self.writes.append(savepoint.root)

    def release(self, savepoint: _Savepoint, whole: bool) -> None:
        """Commit (``whole``: a root transaction) or release a SAVEPOINT, in any order."""
        with self.lock:
            if self.closed or savepoint.state != LIVE:
                return
            owner = savepoint.owner
            ended = [savepoint]
            if whole:
                ended += [s for s in self.stack if s.owner is owner and s.state == LIVE]
            for each in ended:
                each.state = RELEASED
            if whole and savepoint.lost:
                self.isolation.problem(
                    "a transaction committed work that another transaction's rollback "
                    "had already undone: on the test's one connection per database, a "
                    "rollback undoes everything written after its SAVEPOINT, also by "
                    "other sessions or connections (production keeps their work)"
                )
            if whole:
                self._protect(savepoint)
            self._trim()

    def _protect(self, committed: _Savepoint) -> None:
        # Live transactions below the committed work that wrote nothing since their
        # SAVEPOINT get a new one above it: their rollback then keeps this commit.
        if not any(w is committed for w in self.writes[committed.mark :]):
            return
        index = self.stack.index(committed) if committed in self.stack else len(self.stack)
        for savepoint in list(self.stack[:index]):
            if savepoint.state != LIVE or savepoint.owner is committed.owner:
                continue
            if any(w is savepoint.root for w in self.writes[savepoint.mark :]):
                continue  # it wrote: its rollback will undo this commit (reported then)
            old = self.stack.index(savepoint)
            placeholder = _Savepoint(savepoint.name, None, savepoint.mark, None)
            placeholder.state = RELEASED
            self.stack[old] = placeholder
            name = f"fus_sp_{next(self.names)}"
            self._sql(f"SAVEPOINT {name}")
            savepoint.name, savepoint.mark = name, len(self.writes)
            self.stack.append(savepoint)

    def rollback(self, savepoint: _Savepoint, whole: bool) -> None:
        with self.lock:
            if self.closed or savepoint.state != LIVE or savepoint not in self.stack:
                return
            owner = savepoint.owner
            for root in {w for w in self.writes[savepoint.mark :] if w.owner is not owner}:
                if root.state == LIVE:
                    root.lost = True
                else:
                    self.isolation.problem(
                        "a rollback undid work that another transaction had committed "
                        "(for example an independent=True unit, or a second session, "
                        "inside a unit of work that then failed): on the test's one "
                        "connection per database a rollback undoes everything written "
                        "after its SAVEPOINT; production keeps the committed work"
                    )
            self._sql(f"ROLLBACK TO SAVEPOINT {savepoint.name}")
            index = self.stack.index(savepoint)
            above = self.stack[index + 1 :]
            del self.stack[index + 1 :]
            del self.writes[savepoint.mark :]
            savepoint.state = ROLLED_BACK
            if whole:
                for each in above:
                    if each.owner is owner:
                        each.state = ROLLED_BACK
            for each in above:
                if each.state == LIVE and each.owner is not owner:
                    # Destroyed by ROLLBACK TO: set again, so its own end still works.
                    name = f"fus_sp_{next(self.names)}"
                    self._sql(f"SAVEPOINT {name}")
                    each.name, each.mark = name, len(self.writes)
                    self.stack.append(each)
                elif each.state == LIVE:
                    each.state = ROLLED_BACK
            self._trim()

    def _check_open(self) -> None:
        if self.closed:
            raise UnifiedRollbackError(
                "this connection belongs to a unified_rollback test that has ended (a "
                "session or connection kept open across tests); open a new one"
            )

    def close(self) -> None:
        from sqlalchemy.engine import Connection

        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                if not self.holder.invalidated:
                    self.holder.rollback()
            finally:
                Connection.close(self.holder)


class _SharedDBAPI:
    """The test's pooled DBAPI connection, as a logical connection sees it: never closed."""

    __slots__ = ("_database", "_fairy")

    def __init__(self, fairy: Any, database: _Database) -> None:
        object.__setattr__(self, "_fairy", fairy)
        object.__setattr__(self, "_database", database)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        self._database._check_open()  # a connection kept past its test
        return self._fairy.cursor(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fairy, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._fairy, name, value)

    def close(self) -> None:
        pass

    def _close_special(self, transaction_reset: bool = False) -> None:
        pass

    def detach(self) -> None:
        raise UnifiedRollbackError("detach() of the test's shared connection" + HINT)


_logical_class: type[Connection] | None = None


def _logical_connection_class() -> type[Connection]:
    """A ``Connection`` whose transactions are SAVEPOINTs of its database's stack."""
    global _logical_class
    if _logical_class is not None:
        return _logical_class
    from sqlalchemy.engine import Connection

    class LogicalConnection(Connection):
        _fus_db: _Database
        _fus_root: _Savepoint | None = None

        def _begin_impl(self, transaction: Any) -> None:
            self._fus_root = self._fus_db.begin(self)

        def _commit_impl(self) -> None:
            root, self._fus_root = self._fus_root, None
            if root is not None:
                self._fus_db.release(root, whole=True)

        def _rollback_impl(self) -> None:
            root, self._fus_root = self._fus_root, None
            if root is not None:
                self._fus_db.rollback(root, whole=True)

        def _savepoint_impl(self, name: str | None = None) -> str:
            savepoint = self._fus_db.begin(self, self._fus_root)
            return savepoint.name if name is None else self._alias(name, savepoint)

        def _alias(self, name: str, savepoint: _Savepoint) -> str:
            self._fus_db.by_name[f"{id(self)}:{name}"] = savepoint
            return name

        def _find(self, name: str) -> _Savepoint | None:
            db = self._fus_db
            return db.by_name.get(f"{id(self)}:{name}") or db.by_name.get(name)

        def _release_savepoint_impl(self, name: str) -> None:
            savepoint = self._find(name)
            if savepoint is not None:
                self._fus_db.release(savepoint, whole=False)

        def _rollback_to_savepoint_impl(self, name: str) -> None:
            savepoint = self._find(name)
            if savepoint is not None:
                self._fus_db.rollback(savepoint, whole=False)

        def _exec_single_context(
            self, dialect: Any, context: Any, statement: Any, parameters: Any
        ) -> Any:
            self._fus_statement(getattr(statement, "string", statement))
            return super()._exec_single_context(dialect, context, statement, parameters)

        def _exec_insertmany_context(self, dialect: Any, context: Any) -> Any:
            self._fus_statement("INSERT")
            return super()._exec_insertmany_context(dialect, context)

        def _fus_statement(self, statement: str) -> None:
            db = self._fus_db
            db._check_open()
            keyword = _keyword(statement)
            if keyword in _READS or keyword in _CONTROL:
                return
            if keyword == "WITH" and not _WRITE_IN_CTE.search(statement):
                return
            if keyword in _ENDS and not statement.lstrip().upper().startswith("ROLLBACK TO"):
                db.isolation.refuse(
                    f"{keyword} sent as a statement would end the test's transaction; "
                    "use the connection's or session's commit()/rollback()"
                )
            if db.mysql and keyword in _MYSQL_DDL and "TEMPORARY" not in statement[:40].upper():
                db.isolation.refuse(
                    f"{keyword} on MySQL/MariaDB commits implicitly, which would end the "
                    "test's transaction and keep everything written so far; make the "
                    "schema before the test"
                )
            root = self._fus_root
            if root is None:  # a statement outside a transaction: autobegin missed
                return
            with db.lock:
                db.wrote(root)

    _logical_class = LogicalConnection
    return LogicalConnection


# -- the isolation ------------------------------------------------------------------------

_pools: dict[Any, Any] = {}


def _holder_pool(key: Any, engine: Engine) -> Any:
    from sqlalchemy.pool import SingletonThreadPool, StaticPool

    if key[0][0] == "engine" or isinstance(engine.pool, (StaticPool, SingletonThreadPool)):
        return engine.pool  # a copy would be another database (SQLite in memory)
    pool = _pools.get(key)
    if pool is None:
        pool = _pools[key] = engine.pool.recreate()
    return pool


def dispose_pools() -> None:
    """Close the connections kept for the tests' transactions (at the end of the run)."""
    while _pools:
        _key, pool = _pools.popitem()
        with contextlib.suppress(Exception):
            pool.dispose()


_active: list[object] = []  # the active isolation (rollback or truncate)
_patch_lock = threading.Lock()


class RollbackIsolation:
    """Every engine's connections, one per database, in a transaction rolled back at the end.

    Use it through the ``unified_rollback`` fixture, or directly (unittest, scripts)::

        with rollback_isolation():
            ...  # commits here are undone at the end of the block

    Only one isolation is active at a time in a process.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._lock = threading.RLock()
        self._databases: dict[tuple[Any, ...], _Database] = {}
        self.problems: list[str] = []
        self._closed = False
        self._started = False

    # -- public ----------------------------------------------------------------------

    def start(self) -> RollbackIsolation:
        from sqlalchemy.engine import Engine
        from sqlalchemy.engine.default import DefaultDialect

        with _patch_lock:
            if _active:
                raise RuntimeError(
                    "a rollback isolation is already active in this process (unified_rollback "
                    "and unified_truncate cannot be combined, nor nested)"
                )
            _active.append(self)
        self._stack.callback(_active.remove, self)
        self._started = True
        _warn_about_open_connections()
        for cls in _classes_defining(Engine, "connect"):
            self._patch(cls, "connect", _isolated_connect(cls.__dict__["connect"], self))
        for cls in _classes_defining(Engine, "raw_connection"):
            self._patch(cls, "raw_connection", _isolated_raw(cls.__dict__["raw_connection"], self))
        try:  # readonly units run on the primary, whose test transaction holds the writes
            from ..replicas import route_to_primary
        except ImportError:  # pragma: no cover - a core without replica routing
            pass
        else:
            self._stack.enter_context(route_to_primary())
        original = DefaultDialect.__dict__["_set_connection_characteristics"]
        self._patch(
            DefaultDialect, "_set_connection_characteristics", _isolated_characteristics(original)
        )
        return self

    def bind(self, *targets: Any) -> None:
        """Kept for version 1's API: every engine is isolated, nothing needs binding."""
        for target in targets:
            if target is not None and not _isolatable(target):
                raise TypeError(
                    f"cannot isolate {target!r}: give a Flask app, a SessionFactory, a "
                    "sessionmaker, a scoped_session or an Engine"
                )

    @property
    def databases(self) -> int:
        """How many databases the test reached so far."""
        return len(self._databases)

    def connection(self, engine: Engine) -> Connection:
        """A new connection of ``engine`` on the test's connection to its database."""
        return engine.connect()

    def problem(self, message: str) -> None:
        """Record a divergence from production: the test fails at its end."""
        full = message + HINT
        if full not in self.problems:
            self.problems.append(full)

    def refuse(self, message: str) -> None:
        self.problem(message)
        raise UnifiedRollbackError(message + HINT)

    def close(self) -> None:
        """Roll back every database's transaction and undo every patch (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._lock:
                databases = list(self._databases.values())
            for database in databases:
                with contextlib.suppress(Exception):
                    database.close()
        finally:
            self._stack.close()

    def __enter__(self) -> RollbackIsolation:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if exc is None and self.problems:
            raise UnifiedRollbackError("\n".join(self.problems))

    # -- internals -------------------------------------------------------------------

    def _patch(self, cls: type, name: str, value: Any) -> None:
        original = cls.__dict__[name]
        setattr(cls, name, value)
        self._stack.callback(setattr, cls, name, original)

    def _database_for(self, engine: Engine) -> _Database:
        from ..engines import database_identity

        identity = database_identity(engine.url)
        dialect = engine.dialect
        key = (identity or ("engine", id(engine)), dialect.name, dialect.driver)
        database = self._databases.get(key)
        if database is None:
            with self._lock:
                database = self._databases.get(key)
                if database is None:
                    if self._closed:
                        raise UnifiedRollbackError("the test's isolation has ended")
                    database = self._databases[key] = _Database(self, engine, key)
        return database

    def _logical(self, engine: Engine) -> Connection:
        database = self._database_for(engine)
        database._check_open()
        if database.pid != os.getpid():
            self.refuse(
                "a forked process reached the database: it would talk over the test "
                "process's connection"
            )
        cls = _logical_connection_class()
        connection = cls(engine, connection=database.shared)  # type: ignore[arg-type]
        connection._fus_db = database  # type: ignore[attr-defined]
        return connection


def _warn_about_open_connections() -> None:
    # A session or connection opened before the isolation (a fixture set up before
    # unified_rollback) keeps a connection of its own, and its commits are real.
    import warnings

    from ..engines import known_engines

    for record in known_engines():
        checkedout = getattr(record.engine.pool, "checkedout", None)
        if checkedout is not None and checkedout() > 0 and not _excluded(record.engine):
            warnings.warn(
                f"{checkedout()} connection(s) of the engine created at {record.site} were "
                "already in use when unified_rollback started: their work is not isolated "
                "and their commits are real. Start unified_rollback first (usefixtures, "
                "the marker, or the first argument of the test), before fixtures that "
                "touch the database",
                UnifiedRollbackWarning,
                stacklevel=4,
            )


def _excluded(engine: Any) -> bool:
    return engine._execution_options.get(OPT_OUT, True) is False


def _isolated_connect(original: Any, isolation: RollbackIsolation) -> Any:
    def connect(engine: Any) -> Any:
        if isolation._closed or _excluded(engine):
            return original(engine)
        if engine.dialect.is_async:
            isolation.refuse("async engines are not isolated by unified_rollback")
        return isolation._logical(engine)

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    return connect


def _isolated_raw(original: Any, isolation: RollbackIsolation) -> Any:
    def raw_connection(engine: Any) -> Any:
        if isolation._closed or _excluded(engine):
            return original(engine)
        isolation.refuse(
            "raw_connection() hands out a DBAPI connection of its own, whose commits "
            "are real and which cannot see the test's data"
        )

    raw_connection.__wrapped__ = original  # type: ignore[attr-defined]
    return raw_connection


def _isolated_characteristics(original: Any) -> Any:
    def set_characteristics(dialect: Any, connection: Any, characteristics: Any) -> Any:
        database = getattr(connection, "_fus_db", None)
        if database is not None and not database.closed:
            database.isolation.refuse(
                f"{', '.join(characteristics)} cannot change inside the test's one "
                "transaction (AUTOCOMMIT would commit for real)"
            )
        return original(dialect, connection, characteristics)

    return set_characteristics


def _isolatable(target: Any) -> bool:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import scoped_session, sessionmaker

    return (
        isinstance(target, (Engine, sessionmaker, scoped_session))
        or isinstance(getattr(target, "extensions", None), dict)
        or isinstance(getattr(target, "engine", None), Engine)
    )


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


@contextlib.contextmanager
def rollback_isolation(*targets: Any) -> Iterator[RollbackIsolation]:
    """A :class:`RollbackIsolation` for the block: every commit in it is rolled back after.

    ``targets`` are accepted for version 1's API; every engine is isolated anyway.
    """
    isolation = RollbackIsolation()
    isolation.bind(*targets)
    with isolation:
        yield isolation
