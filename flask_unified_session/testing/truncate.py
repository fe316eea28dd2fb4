"""``unified_truncate``: the test commits for real; what it wrote is removed afterwards.

Before the test (or when an engine first reaches a database during it), one snapshot per
database: its tables, and for each table its row count and its largest integer primary
key. After the test, one query finds the tables whose count or largest key changed, and:

* a table that was empty before is emptied with ``DELETE`` (a ``TRUNCATE`` of every
  such table costs tens of milliseconds on PostgreSQL and MariaDB, ``DELETE`` of a test's
  few rows well under one: see docs/testing.md, "Figures"; set ``truncate_backends``
  for tests that write many rows);
* a table that had rows keeps them: only rows with a larger key are deleted (a table
  without an integer key: rows not in a copy taken before);
* a table the test created is dropped.

Rows the test updated or deleted in tables that had rows are not restored: a warning
(:class:`TruncateWarning`) names the table when its count went down. Cleanup runs on
connections of each database's own engine, with foreign-key checks off on MariaDB and
SQLite and in dependency order on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["TruncateIsolation", "TruncateWarning", "truncate_isolation"]


_T = TypeVar("_T")


class TruncateWarning(UserWarning):
    """``unified_truncate`` could not put a table back as it was before the test."""


_PG_TABLES = """
SELECT c.relname,
       (SELECT a.attname FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = c.oid AND i.indisprimary AND i.indnatts = 1
           AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""
_PG_FKS = """
SELECT c1.relname, c2.relname FROM pg_constraint k
  JOIN pg_class c1 ON c1.oid = k.conrelid JOIN pg_class c2 ON c2.oid = k.confrelid
  JOIN pg_namespace n ON n.oid = c1.relnamespace
 WHERE k.contype = 'f' AND n.nspname = current_schema()
"""
_SQLITE_TABLES = """
SELECT m.name, CASE WHEN (SELECT count(*) FROM pragma_table_info(m.name) WHERE pk > 0) = 1
       THEN (SELECT name FROM pragma_table_info(m.name)
              WHERE pk = 1 AND upper(type) LIKE '%INT%') END
  FROM sqlite_master m WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
"""


@dataclass
class _Snapshot:
    """One database before the test."""

    engine: Engine
    keys: dict[str, str | None]  # table -> its integer primary key column, if any
    counts: dict[str, tuple[int, Any]]  # table -> (rows, largest key)
    copies: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)


_mysql_keys: dict[tuple[Any, str], str | None] = {}


class _Backend:
    def __init__(self, engine: Engine, only: Callable[[str], bool] | None = None) -> None:
        self.engine = engine
        self.only = only
        self.name = engine.dialect.name
        self.quote = engine.dialect.identifier_preparer.quote

    @contextlib.contextmanager
    def cursor(self) -> Any:
        # The engine's own pool, never through an (isolated or patched) Engine.connect.
        fairy = self.engine.pool.connect()
        try:
            cursor = fairy.cursor()
            try:
                yield cursor
                fairy.commit()
            finally:
                cursor.close()
        finally:
            fairy.close()

    def tables(self, cursor: Any) -> dict[str, str | None]:
        if self.name in ("mysql", "mariadb"):
            tables = self._mysql_tables(cursor)
        else:
            cursor.execute(_PG_TABLES if self.name == "postgresql" else _SQLITE_TABLES)
            tables = {str(name): key for name, key in cursor.fetchall()}
        if self.only is not None:
            tables = {name: key for name, key in tables.items() if self.only(name)}
        return tables

    def _mysql_tables(self, cursor: Any) -> dict[str, str | None]:
        # information_schema costs tens of milliseconds on MariaDB: SHOW TABLES, and the
        # key of each table looked up once (SHOW COLUMNS), then kept for the run.
        from ..engines import database_identity

        identity = database_identity(self.engine.url)
        cursor.execute("SHOW FULL TABLES WHERE Table_type = 'BASE TABLE'")
        tables: dict[str, str | None] = {}
        for row in cursor.fetchall():
            name = str(row[0])
            if self.only is not None and not self.only(name):
                continue
            cache_key = (identity, name)
            if cache_key not in _mysql_keys:
                cursor.execute(f"SHOW COLUMNS FROM {self.quote(name)}")
                primary = [(c[0], str(c[1]).lower()) for c in cursor.fetchall() if c[3] == "PRI"]
                integer = len(primary) == 1 and "int" in primary[0][1]
                _mysql_keys[cache_key] = str(primary[0][0]) if integer else None
            tables[name] = _mysql_keys[cache_key]
        return tables

    def forget(self, tables: list[str]) -> None:
        """Tables created or dropped by the test: their key is looked up again."""
        from ..engines import database_identity

        identity = database_identity(self.engine.url)
        for name in tables:
            _mysql_keys.pop((identity, name), None)

    def counts(self, cursor: Any, keys: dict[str, str | None]) -> dict[str, tuple[int, Any]]:
        if not keys:
            return {}
        parts = []
        for table, key in keys.items():
            literal = "'" + table.replace("'", "''") + "'"
            largest = f"MAX({self.quote(key)})" if key else "NULL"
            parts.append(f"SELECT {literal}, COUNT(*), {largest} FROM {self.quote(table)}")
        cursor.execute(" UNION ALL ".join(parts))
        return {str(t): (int(n), m) for t, n, m in cursor.fetchall()}

    def rows(self, cursor: Any, table: str) -> list[tuple[Any, ...]]:
        cursor.execute(f"SELECT * FROM {self.quote(table)}")
        return [tuple(row) for row in cursor.fetchall()]


class TruncateIsolation:
    """Real commits during the block; afterwards the rows written are removed."""

    # Measured (benchmarks/plugin_overhead.py): DELETE of a test's few rows beats TRUNCATE
    # on PostgreSQL and MariaDB by tens of milliseconds; the backends named here TRUNCATE
    # the tables that were empty instead (for tests that write many rows).
    truncate_backends: frozenset[str] = frozenset()

    def __init__(
        self, engines: list[Engine] | None = None, tables: Callable[[str], bool] | None = None
    ) -> None:
        self._lock = threading.RLock()
        self._snapshots: dict[tuple[Any, ...], _Snapshot | None] = {}
        self._stack = contextlib.ExitStack()
        self._closed = False
        self.problems: list[str] = []
        self._initial = engines or []
        #: which tables are looked after (default: every table of the schema)
        self.tables = tables

    def start(self) -> TruncateIsolation:
        from sqlalchemy.engine import Engine

        from .rollback import _active, _classes_defining, _patch_lock

        with _patch_lock:
            if _active:
                raise RuntimeError(
                    "unified_rollback and unified_truncate cannot be combined, nor nested"
                )
            _active.append(self)
        self._stack.callback(_active.remove, self)
        for engine in self._initial:
            self.watch(engine)
        for name in ("connect", "raw_connection"):
            for cls in _classes_defining(Engine, name):
                original = cls.__dict__[name]
                setattr(cls, name, _watching(original, self))
                self._stack.callback(setattr, cls, name, original)
        return self

    def watch(self, engine: Engine) -> None:
        """Take the snapshot of ``engine``'s database, if not taken yet."""
        from ..engines import database_identity

        identity = database_identity(engine.url)
        if identity is None or engine.dialect.is_async:
            return  # a private in-memory SQLite: gone with its engine
        if identity in self._snapshots:
            return
        with self._lock:
            if identity in self._snapshots or self._closed:
                return
            self._snapshots[identity] = _retried(lambda: self._snapshot(engine))

    def _snapshot(self, engine: Engine) -> _Snapshot:
        backend = _Backend(engine, self.tables)
        with backend.cursor() as cursor:
            keys = backend.tables(cursor)
            counts = backend.counts(cursor, keys)
            snapshot = _Snapshot(engine, keys, counts)
            for table, key in keys.items():
                if key is None and counts[table][0]:
                    snapshot.copies[table] = backend.rows(cursor, table)
        return snapshot

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for snapshot in list(self._snapshots.values()):
                if snapshot is not None:
                    _retried(functools.partial(self._clean, snapshot))
        finally:
            self._stack.close()

    def __enter__(self) -> TruncateIsolation:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- cleanup ---------------------------------------------------------------------

    def _clean(self, snapshot: _Snapshot) -> None:
        backend = _Backend(snapshot.engine, self.tables)
        quote = backend.quote
        with backend.cursor() as cursor:
            keys = backend.tables(cursor)
            created = [t for t in keys if t not in snapshot.keys]
            dropped = [t for t in snapshot.keys if t not in keys]
            kept = {t: k for t, k in snapshot.keys.items() if t in keys}
            counts = backend.counts(cursor, kept)
            changed = [t for t in kept if counts[t] != snapshot.counts[t]]
            if not (created or changed or dropped):
                return
            backend.forget(created + dropped)
            for table in dropped:
                self.problems.append(f"the test dropped table {table}; it is not restored")
            fk_off = self._foreign_keys_off(backend, cursor)
            order = (
                self._order(backend, cursor, changed) if backend.name == "postgresql" else changed
            )
            empty = [t for t in order if snapshot.counts[t][0] == 0]
            if empty and backend.name in self.truncate_backends and backend.name != "sqlite":
                emptied = self._truncate(backend, cursor, snapshot, empty)
                order = [t for t in order if t not in emptied]
            for table in order:
                before, largest = snapshot.counts[table]
                key = kept[table]
                if before == 0:
                    cursor.execute(f"DELETE FROM {quote(table)}")
                elif key is not None and largest is not None:
                    cursor.execute(
                        f"DELETE FROM {quote(table)} WHERE {quote(key)} > {int(largest)}"
                    )
                else:
                    self._delete_new_rows(backend, cursor, table, snapshot.copies.get(table, []))
            if created:
                if backend.name == "postgresql":
                    cursor.execute(
                        "DROP TABLE IF EXISTS " + ", ".join(quote(t) for t in created) + " CASCADE"
                    )
                else:
                    for table in created:
                        cursor.execute(f"DROP TABLE IF EXISTS {quote(table)}")
            if fk_off is not None:
                fk_off()
            after = backend.counts(cursor, {t: kept[t] for t in changed})
            for table in changed:
                rows, before = after[table][0], snapshot.counts[table][0]
                if rows > before:
                    self.problems.append(
                        f"{rows - before} row(s) written to {table} could not be told apart "
                        "from the rows it had before the test (a key below the largest "
                        "one); they are left in place"
                    )
                elif rows < before:
                    warnings.warn(
                        f"the test deleted {before - rows} row(s) of {table} that existed "
                        "before it; unified_truncate does not restore them",
                        TruncateWarning,
                        stacklevel=2,
                    )

    def _truncate(
        self, backend: _Backend, cursor: Any, snapshot: _Snapshot, changed: list[str]
    ) -> set[str]:
        """TRUNCATE the changed tables that were empty; returns the ones it emptied."""
        if backend.name != "postgresql":
            for table in changed:
                cursor.execute(f"TRUNCATE TABLE {backend.quote(table)}")
            return set(changed)
        # PostgreSQL truncates a referenced table only with every table referencing it.
        cursor.execute(_PG_FKS)
        references = cursor.fetchall()
        candidates = {t for t, (rows, _) in snapshot.counts.items() if rows == 0}
        while True:
            blocked = {p for c, p in references if p in candidates and c not in candidates}
            if not blocked:
                break
            candidates -= blocked
        needed = set(changed) & candidates
        closure = set(needed)
        while True:
            more = {c for c, p in references if p in closure and c not in closure}
            if not more:
                break
            closure |= more
        if closure:
            cursor.execute("TRUNCATE " + ", ".join(backend.quote(t) for t in sorted(closure)))
        return needed

    def _foreign_keys_off(self, backend: _Backend, cursor: Any) -> Any:
        if backend.name == "sqlite":
            cursor.execute("PRAGMA foreign_keys")
            previous = cursor.fetchone()[0]
            cursor.connection.commit()  # PRAGMA foreign_keys is ignored in a transaction
            cursor.execute("PRAGMA foreign_keys=OFF")
            return lambda: (
                cursor.connection.commit(),
                cursor.execute(f"PRAGMA foreign_keys={int(previous)}"),
            )
        if backend.name in ("mysql", "mariadb"):
            cursor.execute("SET FOREIGN_KEY_CHECKS=0")
            return lambda: cursor.execute("SET FOREIGN_KEY_CHECKS=1")
        return None

    def _order(self, backend: _Backend, cursor: Any, tables: list[str]) -> list[str]:
        """Referencing tables first (PostgreSQL checks foreign keys on DELETE)."""
        if len(tables) < 2:
            return tables
        cursor.execute(_PG_FKS)
        wanted = set(tables)
        children: dict[str, set[str]] = {t: set() for t in tables}
        for child, parent in cursor.fetchall():
            if child in wanted and parent in wanted and child != parent:
                children[parent].add(child)
        ordered: list[str] = []
        visiting: set[str] = set()

        def visit(table: str) -> None:
            if table in ordered or table in visiting:
                return
            visiting.add(table)
            for child in sorted(children[table]):
                visit(child)
            ordered.append(table)

        for table in tables:
            visit(table)
        return ordered

    def _delete_new_rows(
        self, backend: _Backend, cursor: Any, table: str, copy: list[tuple[Any, ...]]
    ) -> None:
        remaining = list(copy)
        extra = []
        for row in backend.rows(cursor, table):
            if row in remaining:
                remaining.remove(row)
            else:
                extra.append(row)
        if not extra:
            return
        cursor.execute(f"SELECT * FROM {backend.quote(table)} WHERE 1 = 0")
        columns = [d[0] for d in cursor.description]
        paramstyle = backend.engine.dialect.paramstyle
        for row in extra:
            clauses, values = [], []
            for column, value in zip(columns, row, strict=True):
                if value is None:
                    clauses.append(f"{backend.quote(column)} IS NULL")
                else:
                    mark = "?" if paramstyle == "qmark" else "%s"
                    clauses.append(f"{backend.quote(column)} = {mark}")
                    values.append(value)
            limit = " LIMIT 1" if backend.name in ("mysql", "mariadb") else ""
            cursor.execute(
                f"DELETE FROM {backend.quote(table)} WHERE {' AND '.join(clauses)}{limit}",
                tuple(values),
            )


def _retried(step: Callable[[], _T]) -> _T:
    """``step()``, again if a table came or went meanwhile (another process's, say)."""
    for attempt in range(3):
        try:
            return step()
        except Exception:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _watching(original: Any, isolation: TruncateIsolation) -> Any:
    def method(engine: Any, *args: Any, **kwargs: Any) -> Any:
        if not isolation._closed:
            isolation.watch(engine)
        return original(engine, *args, **kwargs)

    method.__wrapped__ = original  # type: ignore[attr-defined]
    return method


@contextlib.contextmanager
def truncate_isolation(*engines: Engine, tables: Callable[[str], bool] | None = None) -> Any:
    """A :class:`TruncateIsolation` for the block (unittest, scripts).

    ``tables``: which tables to look after (default: every table of each schema).
    """
    with TruncateIsolation(list(engines), tables) as isolation:
        yield isolation
