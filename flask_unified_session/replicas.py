"""Read replicas: ``readonly=True`` units of work on a replica, everything else on the primary.

A :class:`ReplicaSet` belongs to one :class:`~flask_unified_session.SessionFactory`
(``factory.replicas``), built from ``Settings.replica_urls`` (``DB_REPLICA_URLS``) and the
bounds ``replica_wait``, ``replica_max_lag`` and ``replica_retry_after``
(``DB_REPLICA_WAIT``, ``DB_REPLICA_MAX_LAG``, ``DB_REPLICA_RETRY_AFTER``). With
``init_app(app, db=db)`` the Flask extension builds it from ``UNIFIED_SESSION_REPLICA_*``
on Flask-SQLAlchemy's default engine and watches ``db.session``'s commits too; an
:class:`~flask_unified_session.asyncio.AsyncSessionFactory` has one of its own, used
through :meth:`ReplicaSet.choose_nowait`, :meth:`ReplicaSet.choose` (in a thread) and
:meth:`ReplicaSet.record_lsn`. Its rules, stated once:

* **Routing.** An outermost ``readonly=True`` unit gets a session of its own on one
  replica, round-robin over the usable ones, inside a read-only transaction (``SET
  TRANSACTION READ ONLY``: a write raises, SQLSTATE 25006 on PostgreSQL). It never uses
  the Flask app context's session (that one is the primary's), and it closes its session
  at its end. With no replica configured, or none usable, it runs on the primary, still
  in a read-only transaction, so that code behaves the same on a laptop and behind
  replicas.
* **Nesting.** A readonly unit entered while a primary unit of the same factory is open
  for the same owner joins that unit (it must read the unit's uncommitted writes; the
  transaction is not made read-only then). A readonly unit inside a readonly unit joins
  it; a default unit inside a readonly unit is a primary unit of its own.
* **Read your writes.** Every commit of the factory's sessions on the primary is noted
  for its owner (the app context, else the asyncio task, else the thread). When the
  owner's outermost primary unit ends, the primary's ``pg_current_wal_lsn()`` is read
  once: the commit is before it. A readonly unit of the same owner then uses a replica
  only once it has replayed that far (``pg_last_wal_replay_lsn()``), waiting at most
  ``wait`` seconds in all, and else runs on the primary. Other owners (another request,
  another thread) do not wait.
* **Health.** A replica that refuses connections, fails its check, or lags more than
  ``max_lag`` seconds on two checks in a row is skipped, with one
  :class:`ReplicaUnavailableWarning` per outage, and tried again ``retry_after`` seconds
  later by one unit (the others keep skipping it). No unit fails because a replica is
  gone: it runs on another replica or on the primary. A replica's lag is checked at most
  every ``check_interval`` seconds.
* **Context.** ``session.info["server"]`` is ``"primary"`` or ``"replica host:port"``
  (no password), and ``session.info["readonly"]`` is ``True`` in a readonly session: the
  signals' ``context`` says where a unit ran.
* **Tests.** Inside :func:`route_to_primary` every readonly unit runs on the primary's
  ordinary session maker (no read-only transaction), so a test isolated in one
  transaction (``unified_rollback``) reads its own writes: replicas mirror the primary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from .config import (
    DEFAULT_REPLICA_MAX_LAG,
    DEFAULT_REPLICA_RETRY_AFTER,
    DEFAULT_REPLICA_WAIT,
    Settings,
    display_url,
    redact_url,
)
from .engines import engine_for
from .unit_of_work import UnitOfWork, _live, current_owner, open_units

if TYPE_CHECKING:
    from .session_factory import SessionFactory

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_MAX_LAG",
    "DEFAULT_RETRY_AFTER",
    "DEFAULT_WAIT",
    "Replica",
    "ReplicaSet",
    "ReplicaUnavailableWarning",
    "read_only_session",
    "readonly_unit",
    "route_to_primary",
    "routing_to_primary",
]

log = logging.getLogger("flask_unified_session")

#: Seconds a readonly unit waits for a replica to replay its owner's last commit
#: (``DB_REPLICA_WAIT``).
DEFAULT_WAIT = DEFAULT_REPLICA_WAIT
#: Seconds of replication lag past which a replica is skipped (``DB_REPLICA_MAX_LAG``).
DEFAULT_MAX_LAG = DEFAULT_REPLICA_MAX_LAG
#: Seconds a skipped replica is left alone before one unit tries it again
#: (``DB_REPLICA_RETRY_AFTER``).
DEFAULT_RETRY_AFTER = DEFAULT_REPLICA_RETRY_AFTER
#: Seconds between two lag checks of one replica.
DEFAULT_CHECK_INTERVAL = 1.0

PRIMARY = "primary"


class ReplicaUnavailableWarning(UserWarning):
    """A replica is down or lags too far: readonly units run elsewhere until it is back."""


# -- the test switch ---------------------------------------------------------------------

_to_primary = 0
_to_primary_lock = threading.Lock()


@contextlib.contextmanager
def route_to_primary() -> Iterator[None]:
    """Within the block, in every thread, readonly units run on the primary.

    For test isolation (``unified_rollback``): the test's writes live in one transaction
    on the primary that no replica ever sees. Readonly units then use the factory's
    ordinary session maker on the primary engine, without a read-only transaction (which
    would make the test's whole transaction read-only), and no commit is tracked.
    Blocks may nest.
    """
    global _to_primary
    with _to_primary_lock:
        _to_primary += 1
    try:
        yield
    finally:
        with _to_primary_lock:
            _to_primary -= 1


def routing_to_primary() -> bool:
    """True inside :func:`route_to_primary`."""
    return _to_primary > 0


# -- LSNs --------------------------------------------------------------------------------


def parse_lsn(value: str | None) -> int | None:
    """``'0/D1DE348'`` as an integer (``None`` stays ``None``)."""
    if value is None:
        return None
    high, _, low = value.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


_PRIMARY_LSN = text("SELECT pg_current_wal_lsn()::text")
_REPLICA_CHECK = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() "
    "THEN 0.0 ELSE GREATEST(0.0, COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - "
    "pg_last_xact_replay_timestamp()), 0.0))::float8 END"
)
_PLAIN_CHECK = text("SELECT 1")


# -- one replica -------------------------------------------------------------------------


class Replica:
    """One replica server: its engine and what the last check found."""

    def __init__(self, url: URL, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self.label = f"replica {url.host or 'localhost'}:{url.port or _default_port(url)}"
        self.postgresql = url.get_backend_name() == "postgresql"
        #: ``"ok"``, ``"down"`` or ``"lagging"``
        self.state = "ok"
        #: why it is not ok (no secret)
        self.reason: str | None = None
        #: seconds behind the primary at the last check (``None``: not measured)
        self.lag: float | None = None
        #: the highest LSN seen replayed
        self.replayed = 0
        self.checked_at = float("-inf")
        self.retry_at = 0.0
        self.strikes = 0

    def __repr__(self) -> str:
        return f"<Replica {display_url(self.url)} {self.state}>"


def _default_port(url: URL) -> int | str:
    return {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}.get(url.get_backend_name(), "")


class _Token:
    """The last commit of one owner on the primary."""

    __slots__ = ("committed_at", "lsn", "pending")

    def __init__(self) -> None:
        self.pending = False
        self.lsn: int | None = None
        self.committed_at = 0.0


# Outcomes of a replica check.
_OK, _BEHIND, _DOWN, _LAGGING = "ok", "behind", "down", "lagging"


class ReplicaSet:
    """The replicas of one primary, with their health and each owner's last commit.

    :param urls: the replica URLs (the same database as the primary).
    :param settings: pool and connect settings of the replica engines (default: the
        library's defaults for each URL).
    :param primary: the primary's engine, asked for ``pg_current_wal_lsn()``.
    :param wait: seconds a readonly unit waits, in all, for a replica to replay its
        owner's last commit before it runs on the primary.
    :param max_lag: seconds of lag past which a replica is skipped.
    :param retry_after: seconds before a skipped replica is tried again.
    :param check_interval: seconds between two lag checks of one replica.
    """

    def __init__(
        self,
        urls: tuple[URL, ...] | list[URL] | list[str],
        *,
        primary: Engine,
        settings: Settings | None = None,
        wait: float = DEFAULT_WAIT,
        max_lag: float = DEFAULT_MAX_LAG,
        retry_after: float = DEFAULT_RETRY_AFTER,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
    ) -> None:
        replicas = []
        for raw in urls:
            url = raw if isinstance(raw, URL) else _parse(raw)
            if settings is None:
                replica_settings = Settings(url=url, source="a replica URL")
            else:
                replica_settings = dataclasses.replace(
                    settings,
                    url=url,
                    replica_urls=(),
                    database_async_url=None,
                    source="a replica URL",
                )
            engine, _owned = engine_for(replica_settings)
            replicas.append(Replica(url, engine))
        if not replicas:
            raise ValueError("a ReplicaSet needs at least one replica URL")
        self.replicas: tuple[Replica, ...] = tuple(replicas)
        self.primary = primary
        self.primary_postgresql = primary.url.get_backend_name() == "postgresql"
        self.wait = wait
        self.max_lag = max_lag
        self.retry_after = retry_after
        self.check_interval = check_interval
        #: units by server label, fallbacks and waits: for tests and the docs' figures
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._turn = 0
        self._tokens: weakref.WeakKeyDictionary[object, _Token] = weakref.WeakKeyDictionary()
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()

    @classmethod
    def from_settings(cls, settings: Settings | None, primary: Engine) -> ReplicaSet | None:
        """The replicas of ``settings.replica_urls`` (``None`` if there are none).

        The bounds are ``settings.replica_wait``, ``replica_max_lag`` and
        ``replica_retry_after`` (``DB_REPLICA_WAIT``, ``DB_REPLICA_MAX_LAG``,
        ``DB_REPLICA_RETRY_AFTER``).
        """
        if settings is None or not settings.replica_urls:
            return None
        return cls(
            settings.replica_urls,
            primary=primary,
            settings=settings,
            wait=settings.replica_wait,
            max_lag=settings.replica_max_lag,
            retry_after=settings.replica_retry_after,
        )

    def __repr__(self) -> str:
        return f"<ReplicaSet {', '.join(r.label for r in self.replicas)}>"

    # -- commits on the primary ----------------------------------------------------------

    def watch(self, target: Any) -> None:
        """Note every commit of sessions made by ``target`` (a sessionmaker, a Session
        class or a scoped_session) for read-your-writes."""
        if target in self._watched:
            return
        event.listen(target, "after_commit", self._note_commit)
        self._watched.add(target)

    def _note_commit(self, session: Session) -> None:
        # No SQL here (SQLAlchemy forbids it in after_commit): only remember the commit.
        if "readonly" in session.info or _to_primary:
            return
        owner = current_owner()
        token = self._tokens.get(owner)
        if token is None:
            token = self._tokens[owner] = _Token()
        token.pending = True
        token.committed_at = time.monotonic()

    def settle(self, owner: object | None = None) -> None:
        """Read the primary's WAL position for ``owner``'s commit, if one is pending.

        Called when an outermost primary unit ends; never raises.
        """
        token = self._tokens.get(current_owner() if owner is None else owner)
        if token is not None and token.pending:
            self._resolve(token)

    def _resolve(self, token: _Token) -> None:
        token.pending = False
        token.lsn = None
        if not self.primary_postgresql:
            return
        try:
            with self.primary.connect() as connection:
                token.lsn = parse_lsn(connection.execute(_PRIMARY_LSN).scalar())
        except Exception:
            # Unknown: the owner's readonly units use the primary for a while (see choose).
            log.warning("reading the primary's WAL position failed", exc_info=True)

    def record_lsn(self, owner: object, lsn: int | str | None) -> None:
        """Note a commit of ``owner`` on the primary at WAL position ``lsn``.

        For code that reads ``pg_current_wal_lsn()`` itself after its commit (the async
        units, which cannot block on the sync primary engine). ``lsn`` is an integer or
        PostgreSQL's text form (``'0/D1DE348'``); ``None`` means the position is unknown:
        the owner's readonly units then run on the primary for up to ``max_lag`` seconds.
        Record ``None`` before reading the position, then the position, so that a read
        that fails or is cancelled errs towards the primary.
        """
        position = parse_lsn(lsn) if isinstance(lsn, str) else lsn
        token = self._tokens.get(owner)
        if token is None:
            token = self._tokens[owner] = _Token()
        token.pending = False
        token.lsn = position
        if position is None:
            token.committed_at = time.monotonic()

    def last_commit(self, owner: object | None = None) -> int | None:
        """The WAL position ``owner`` (default: the current one) must see, or ``None``."""
        token = self._tokens.get(current_owner() if owner is None else owner)
        return None if token is None else token.lsn

    # -- choosing a server ---------------------------------------------------------------

    def choose(self, owner: object | None = None) -> tuple[Engine, str]:
        """The engine (and its label) a readonly unit of ``owner`` runs on now.

        May wait, at most ``wait`` seconds, for a replica to replay the owner's last
        commit; checks and connects before answering, so that a replica that is gone is
        skipped here rather than failing the unit.
        """
        engine, label, connection = self._choose(current_owner() if owner is None else owner)
        if connection is not None:
            connection.close()
        return engine, label

    def _choose(self, owner: object) -> tuple[Engine, str, Connection | None]:
        started = time.monotonic()
        needed: int | None = None
        token = self._tokens.get(owner)
        if token is not None:
            if token.pending:
                # A commit outside any unit (db.session.commit(), create_session()).
                self._resolve(token)
            needed = token.lsn
            if needed is None and started - token.committed_at < self.max_lag:
                # Its position is unknown: only the primary surely has it.
                return self._on_primary("unknown position")
        deadline = started + self.wait
        for replica, must_check in self._candidates(started):
            outcome, connection = self._check(replica, needed, deadline, must_check)
            if outcome == _OK:
                waited = time.monotonic() - started
                with self._lock:
                    self.stats[replica.label] += 1
                    if needed is not None and waited > 0.005:
                        self.stats["waited"] += 1
                return replica.engine, replica.label, connection
            if connection is not None:
                connection.close()
        return self._on_primary("behind" if needed is not None else "no replica")

    def choose_nowait(self, owner: object) -> str | None:
        """The label :meth:`choose` would give ``owner`` now, if finding it takes no I/O
        and no wait; else ``None`` (then call :meth:`choose`, which may block).

        No I/O: no commit of the owner whose position is unknown or not yet seen
        replayed, and the replica next in turn is in rotation and was checked less than
        ``check_interval`` seconds ago (or every replica is out and none is due for a
        retry: the primary). For async code, which runs :meth:`choose` in a thread only
        when this gives ``None``.
        """
        now = time.monotonic()
        needed: int | None = None
        token = self._tokens.get(owner)
        if token is not None:
            if token.pending:
                return None
            needed = token.lsn
            if needed is None and now - token.committed_at < self.max_lag:
                return self._on_primary("unknown position")[1]
        with self._lock:
            count = len(self.replicas)
            start = self._turn % count
            chosen: Replica | None = None
            for replica in (*self.replicas[start:], *self.replicas[:start]):
                if replica.state != _OK:
                    if now >= replica.retry_at:
                        return None  # a retry is due: choose() probes it
                    continue
                if now - replica.checked_at >= self.check_interval:
                    return None
                if needed is not None and (not replica.postgresql or needed > replica.replayed):
                    return None
                chosen = replica
                break
            self._turn += 1
            if chosen is not None:
                self.stats[chosen.label] += 1
                return chosen.label
        return self._on_primary("behind" if needed is not None else "no replica")[1]

    def _on_primary(self, why: str) -> tuple[Engine, str, None]:
        with self._lock:
            self.stats[PRIMARY] += 1
            self.stats[f"primary: {why}"] += 1
        return self.primary, PRIMARY, None

    def _candidates(self, now: float) -> list[tuple[Replica, bool]]:
        with self._lock:
            count = len(self.replicas)
            start = self._turn % count
            self._turn += 1
            chosen = []
            for replica in (*self.replicas[start:], *self.replicas[:start]):
                if replica.state == _OK:
                    chosen.append((replica, now - replica.checked_at >= self.check_interval))
                elif now >= replica.retry_at:
                    # This unit probes it; the others keep skipping it meanwhile.
                    replica.retry_at = now + self.retry_after
                    chosen.append((replica, True))
            return chosen

    def _check(
        self,
        replica: Replica,
        needed: int | None,
        deadline: float,
        must_check: bool,
        warn: bool = True,
    ) -> tuple[str, Connection | None]:
        if needed is not None and not replica.postgresql:
            return _BEHIND, None
        if not must_check and (needed is None or needed <= replica.replayed):
            return _OK, None
        connection: Connection | None = None
        pause = 0.005
        first = True
        try:
            connection = replica.engine.connect()
            while True:
                now = time.monotonic()
                if replica.postgresql:
                    in_recovery, replay_text, lag = connection.execute(_REPLICA_CHECK).one()
                    connection.rollback()  # the next poll sees a fresh snapshot
                    replayed = parse_lsn(replay_text)
                else:
                    connection.execute(_PLAIN_CHECK)
                    connection.rollback()
                    in_recovery, replayed, lag = False, None, None
                if first:
                    first = False
                    noted = self._note_check(replica, now, replayed, lag, in_recovery, warn)
                    if noted == _LAGGING:
                        return _LAGGING, connection
                elif replayed is not None:
                    with self._lock:
                        replica.replayed = max(replica.replayed, replayed)
                if needed is None or not in_recovery or needed <= replica.replayed:
                    return _OK, connection
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _BEHIND, connection
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.05)
        except Exception as exc:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
            self._mark(replica, _DOWN, _reason(exc), warn)
            return _DOWN, None

    def _note_check(
        self,
        replica: Replica,
        now: float,
        replayed: int | None,
        lag: float | None,
        in_recovery: bool,
        warn: bool,
    ) -> str:
        with self._lock:
            replica.checked_at = now
            replica.lag = lag if in_recovery else 0.0
            if replayed is not None:
                replica.replayed = max(replica.replayed, replayed)
            if replica.lag is not None and replica.lag > self.max_lag:
                replica.strikes += 1
            else:
                replica.strikes = 0
            lagging = replica.strikes >= 2
        if lagging:
            self._mark(
                replica,
                _LAGGING,
                f"{lag:.1f} s behind the primary (over {self.max_lag:g} s)",
                warn,
            )
            return _LAGGING
        self._mark(replica, _OK, None, warn)
        return _OK

    def _mark(self, replica: Replica, state: str, reason: str | None, warn: bool = True) -> None:
        with self._lock:
            before = replica.state
            replica.state = state
            replica.reason = reason
            if state != _OK:
                replica.retry_at = time.monotonic() + self.retry_after
                self.stats[f"{replica.label} {state}"] += 1
        if before == _OK and state != _OK and warn:
            warnings.warn(
                f"{replica.label} is {state} ({reason}): readonly units run on the other "
                f"replicas or the primary; it is tried again every {self.retry_after:g} s",
                ReplicaUnavailableWarning,
                stacklevel=2,
            )
        elif before != _OK and state == _OK:
            log.info("%s is back: readonly units use it again", replica.label)

    def fail(self, replica: Replica, exc: BaseException) -> None:
        """Mark ``replica`` down because ``exc`` (a connect or begin failure) happened."""
        self._mark(replica, _DOWN, _reason(exc))

    def replica_for(self, label: str) -> Replica | None:
        return next((r for r in self.replicas if r.label == label), None)

    # -- the doctor ----------------------------------------------------------------------

    def describe(self) -> tuple[list[str], int]:
        """Each replica checked now, one line each, and how many are not usable."""
        lines, problems = [], 0
        for replica in self.replicas:
            outcome, connection = self._check(replica, None, time.monotonic(), True, warn=False)
            if connection is not None:
                connection.close()
            shown = display_url(replica.url)
            if outcome == _OK:
                lag = "not measured" if replica.lag is None else f"{replica.lag:.3f} s"
                lines.append(f"{replica.label}: {shown}: ok, lag {lag}")
            else:
                problems += 1
                lines.append(f"{replica.label}: {shown}: {outcome.upper()}: {replica.reason}")
        lines.append(
            f"  replicas: read-your-writes wait {self.wait:g} s, max lag {self.max_lag:g} s, "
            f"retry after {self.retry_after:g} s"
        )
        return lines, problems

    def dispose(self) -> None:
        """Close the replicas' pooled connections (they reconnect on next use)."""
        for replica in self.replicas:
            replica.engine.dispose()


def _parse(raw: str) -> URL:
    from .config import parse_url

    return parse_url(raw, "a replica URL")


def _reason(exc: BaseException) -> str:
    shown = redact_url(exc).strip().splitlines()
    return f"{type(exc).__name__}: {shown[0] if shown else ''}"


# -- read-only sessions ------------------------------------------------------------------

_READ_ONLY_BACKENDS = frozenset({"postgresql", "mysql", "mariadb"})


def _begin_read_only(session: Session, _transaction: SessionTransaction, connection: Any) -> None:
    # PostgreSQL: must come before the first query of the transaction (it does: this runs
    # at its begin). MySQL/MariaDB: applies to the transaction the next statement starts.
    if connection.dialect.name in _READ_ONLY_BACKENDS:
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")


_readonly_makers: weakref.WeakKeyDictionary[Any, sessionmaker[Session]] = (
    weakref.WeakKeyDictionary()
)
_makers_lock = threading.Lock()


def readonly_maker(maker: sessionmaker[Session]) -> sessionmaker[Session]:
    """A sessionmaker like ``maker`` whose every transaction is read-only."""
    readonly = _readonly_makers.get(maker)
    if readonly is None:
        with _makers_lock:
            readonly = _readonly_makers.get(maker)
            if readonly is None:
                readonly = sessionmaker(class_=maker.class_, **maker.kw)
                event.listen(readonly, "after_begin", _begin_read_only)
                _readonly_makers[maker] = readonly
    return readonly


def read_only_session(open_session: Callable[[], Session]) -> Session:
    """``open_session()`` (a legacy manager's ``get_session``) with every transaction of
    the session read-only."""
    session = open_session()
    session.info.update(server=PRIMARY, readonly=True)
    if _to_primary:
        return session
    if session.in_transaction():
        # Already begun: PostgreSQL lets a transaction become read-only at any point.
        transaction = session.get_transaction()
        if transaction is not None:
            _begin_read_only(session, transaction, session.connection())
    event.listen(session, "after_begin", _begin_read_only)
    return session


def _open_readonly(factory: SessionFactory) -> Session:
    if _to_primary:
        session = factory.sessionmaker()
        session.info.update(server=PRIMARY, readonly=True)
        return session
    maker = readonly_maker(factory.sessionmaker)
    replicas: ReplicaSet | None = getattr(factory, "replicas", None)
    if replicas is None:
        return _begun(maker, factory.engine, PRIMARY)
    owner = current_owner()
    for _attempt in replicas.replicas:
        engine, label, connection = replicas._choose(owner)
        if connection is not None:
            connection.close()  # back to the pool: the session checks it out again
        replica = replicas.replica_for(label)
        if replica is None:  # the primary: its failure is the unit's error
            break
        try:
            return _begun(maker, engine, label)
        except Exception as exc:
            replicas.fail(replica, exc)
    return _begun(maker, replicas.primary, PRIMARY)


def _begun(maker: sessionmaker[Session], engine: Engine, label: str) -> Session:
    session = maker(bind=engine)
    session.info.update(server=label, readonly=True)
    try:
        # Connect and begin now: a replica that is gone is skipped here, not in the block.
        session.connection()
    except BaseException:
        with contextlib.suppress(Exception):
            session.close()
        raise
    return session


# -- the units ---------------------------------------------------------------------------


class ReadonlyUnit(UnitOfWork):
    """A ``readonly=True`` unit: its own read-only session on a replica (or the primary).

    Joins an open primary unit of the same factory and owner instead (see the module).
    """

    __slots__ = ("factory",)

    def __init__(self, factory: SessionFactory, *, nested: bool, independent: bool) -> None:
        super().__init__(
            ("readonly", factory),
            functools.partial(_open_readonly, factory),
            nested=nested,
            independent=independent,
            sender=factory.signal_sender,
            context=factory.context_provider,
        )
        self.factory = factory

    def __enter__(self) -> Session:
        if self._transaction is None and not self.independent:
            units = open_units(current_owner())
            if units:
                primary = _live(units.get(self.factory))
                if primary is not None:
                    return self._join(primary)
        return super().__enter__()


class PrimaryUnit(UnitOfWork):
    """A default unit of a factory with replicas: says ``server="primary"`` and, at the
    end of an outermost unit that committed, reads the WAL position for its owner."""

    __slots__ = ("replicas",)

    def __init__(
        self,
        factory: SessionFactory,
        replicas: ReplicaSet,
        *,
        nested: bool,
        independent: bool,
    ) -> None:
        super().__init__(
            factory,
            factory.sessionmaker,
            nested=nested,
            independent=independent,
            sender=factory.signal_sender,
            context=functools.partial(_primary_context, factory.context_provider),
            context_session=factory.context_session,
        )
        self.replicas = replicas

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        outermost = not self._joined
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            if outermost:
                self.replicas.settle()


def _primary_context(provider: Callable[[], Mapping[str, Any]] | None) -> Mapping[str, Any]:
    if provider is None:
        return {"server": PRIMARY}
    return {"server": PRIMARY, **provider()}


def readonly_unit(
    factory: SessionFactory, *, nested: bool = False, independent: bool = False
) -> UnitOfWork:
    """The unit of work of ``factory.session_scope(readonly=True)``."""
    return ReadonlyUnit(factory, nested=nested, independent=independent)


def primary_unit(
    factory: SessionFactory, replicas: ReplicaSet, *, nested: bool, independent: bool
) -> UnitOfWork:
    """The unit of work of ``factory.session_scope()`` when the factory has replicas."""
    return PrimaryUnit(factory, replicas, nested=nested, independent=independent)


def choose_url(factory: SessionFactory, owner: object | None = None) -> tuple[URL, str]:
    """For the async twin: the URL (and label) a readonly unit of ``owner`` (default: the
    current one) should use now, a replica's or else the primary's, after the same waits
    and checks (blocking: from a coroutine, pass ``owner=current_owner()`` and run it in
    ``asyncio.to_thread``). The async side opens its own engine for that URL.
    """
    replicas: ReplicaSet | None = getattr(factory, "replicas", None)
    if replicas is None or _to_primary:
        return factory.engine.url, PRIMARY
    engine, label = replicas.choose(owner)
    return engine.url, label
