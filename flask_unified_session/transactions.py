"""Transactions beyond commit: ``on_commit`` hooks, and retries of transient errors.

* :func:`on_commit` registers a callable on the innermost open level of the current
  unit of work; it runs after the outermost commit, once the connection went back to the
  pool, and never if the work rolls back.
* :func:`run_in_transaction` (and the :func:`transactional` decorator) runs a function in
  a fresh unit of work per attempt and retries it only when that is known to be safe:
  the server rolled the whole transaction back (a serialization failure or a deadlock),
  or the connection was lost before COMMIT was sent.

Nothing here imports Flask.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from sqlalchemy import event, exc
from sqlalchemy.orm import Session

from .unit_of_work import DoomedTransactionError, _run_hooks, current_transaction

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import SessionTransaction

    from .asyncio import AsyncSessionFactory
    from .session_factory import SessionFactory

__all__ = [
    "RETRYABLE_MYSQL_ERRORS",
    "RETRYABLE_SQLSTATES",
    "async_run_in_transaction",
    "on_commit",
    "retryable",
    "run_in_transaction",
    "transactional",
]

log = logging.getLogger("flask_unified_session")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: PostgreSQL: serialization_failure and deadlock_detected. The server rolled back.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
#: MySQL/MariaDB (and Galera): ER_LOCK_DEADLOCK. The server rolled back.
RETRYABLE_MYSQL_ERRORS = frozenset({1213})

Backoff = tuple[float, float]
_DEFAULT_BACKOFF: Backoff = (0.05, 1.0)


# -- on_commit --------------------------------------------------------------------------


def on_commit(
    fn: Callable[[], object], *, robust: bool = False, factory: SessionFactory | None = None
) -> None:
    """Run ``fn()`` after the current unit of work commits; never if it rolls back.

    ``fn`` is registered on the innermost open level of the current owner's latest
    entered unit of work (``factory=``: that factory's unit). Hooks run after the
    outermost commit, once the session closed (or, for the app context's session, once
    the commit released the connection), in registration order. A rolled-back
    ``nested=True`` block drops the hooks registered inside it; a released one hands them
    to the enclosing level. A hook registered inside a doomed level is accepted and
    dropped at its rollback. With no unit of work active, ``fn`` runs at once.

    ``robust=True``: a failing ``fn`` is logged and the other hooks still run.
    ``robust=False``: its exception stops the later hooks and reaches the caller of the
    unit of work, although the data is already committed.
    """
    transaction = current_transaction(factory)
    if transaction is None:
        _run_hooks([(fn, robust)])
        return
    transaction.innermost().hooks.append((fn, robust))


# -- classification ---------------------------------------------------------------------


def _sqlstate(error: BaseException) -> str | None:
    orig = getattr(error, "orig", None)
    for name in ("sqlstate", "pgcode"):  # psycopg 3 and asyncpg; psycopg2
        value = getattr(orig, name, None)
        if isinstance(value, str):
            return value
    return None


def _mysql_errno(error: BaseException) -> int | None:
    orig = getattr(error, "orig", None)
    if orig is None:
        return None
    errno = getattr(orig, "errno", None)  # the MariaDB connector
    if isinstance(errno, int):
        return errno
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL, mysqlclient, aiomysql
        return args[0]
    return None


def _code(error: BaseException) -> str:
    # MySQL drivers give an error number (PyMySQL also a SQLSTATE, 40001 for 1213).
    errno = _mysql_errno(error)
    if errno is not None:
        return f"error {errno}"
    sqlstate = _sqlstate(error)
    if sqlstate is not None:
        return f"SQLSTATE {sqlstate}"
    return "no error code"


def retryable(error: BaseException, *, commit_sent: bool) -> bool:
    """Whether a transaction that failed with ``error`` may safely run again.

    Yes when the server rolled it back: PostgreSQL SQLSTATE 40001 or 40P01, MySQL/MariaDB
    error 1213, also when COMMIT reported them. Yes for a lost connection only before
    COMMIT was sent (``commit_sent=False``); after, its outcome is unknown. Never an
    integrity error. A :class:`DoomedTransactionError` is judged by its cause.
    """
    if isinstance(error, DoomedTransactionError) and error.__cause__ is not None:
        error = error.__cause__
    if not isinstance(error, exc.DBAPIError) or isinstance(error, exc.IntegrityError):
        return False
    errno = _mysql_errno(error)
    if errno is not None:  # MySQL/MariaDB: judged by the error number alone
        if errno in RETRYABLE_MYSQL_ERRORS:
            return True
    elif _sqlstate(error) in RETRYABLE_SQLSTATES:
        return True
    return bool(error.connection_invalidated) and not commit_sent


# -- run_in_transaction -----------------------------------------------------------------


class _Attempt:
    """Records whether COMMIT was handed to the driver on any connection of a session."""

    __slots__ = ("commit_sent", "connections", "session")

    def __init__(self) -> None:
        self.commit_sent = False
        self.session: Session | None = None
        self.connections: list[Connection] = []

    def mark(self, _connection: Connection) -> None:
        self.commit_sent = True

    def after_begin(
        self, _session: Session, _transaction: SessionTransaction, connection: Connection
    ) -> None:
        # The Core "commit" event fires just before the DBAPI commit(): after the final
        # flush, so an error of the flush still counts as before COMMIT.
        if connection not in self.connections:
            event.listen(connection, "commit", self.mark)
            self.connections.append(connection)

    def start(self, session: Session) -> None:
        self.session = session
        event.listen(session, "after_begin", self.after_begin)
        if session.in_transaction():  # begun before this attempt (the app context's)
            self.after_begin(session, session.get_transaction(), session.connection())  # type: ignore[arg-type]

    def stop(self) -> None:
        # After the unit of work exited: its COMMIT, if any, was seen.
        session, self.session = self.session, None
        if session is not None and event.contains(session, "after_begin", self.after_begin):
            event.remove(session, "after_begin", self.after_begin)
        for connection in self.connections:
            if event.contains(connection, "commit", self.mark):
                event.remove(connection, "commit", self.mark)
        self.connections.clear()


def _refuse_inside_unit(name: str) -> None:
    if current_transaction() is not None:
        raise RuntimeError(
            f"{name}() was called inside an active unit of work: a retry must run the "
            "whole transaction again, which a joined unit cannot do. Call it where no "
            "session_scope()/get_db_session() block is open (the function it runs opens "
            "its own unit per attempt)"
        )


def _refuse_pending_work(factory: SessionFactory, name: str) -> None:
    # In an app context the unit runs on the app context's session: changes made on it
    # outside any unit would be lost by a rollback and not repeated by the retry. Checked
    # before the unit begins, so that refusing does not roll them back.
    session = factory.context_session() if factory.context_session is not None else None
    if session is not None and (session.new or session.dirty or session.deleted):
        raise RuntimeError(
            f"{name}() found uncommitted changes on the app context's session, made "
            "outside any unit of work: a retry would lose them. Commit them first, or "
            "make them inside the function"
        )


def _delay(attempt: int, backoff: Backoff) -> float:
    # Full jitter: uniform in [0, min(cap, base * 2 ** (attempt - 1))].
    base, cap = backoff
    return random.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


def _check_arguments(attempts: int, backoff: Backoff) -> None:
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts!r}")
    base, cap = backoff
    if base < 0 or cap < 0:
        raise ValueError(f"backoff must be two non-negative numbers, got {backoff!r}")


def _log_retry(
    name: str, attempt: int, attempts: int, error: BaseException, at_commit: bool, delay: float
) -> None:
    # The code and the class only: the message of a DBAPI error carries the statement's
    # parameters.
    cause = error.__cause__ if isinstance(error, DoomedTransactionError) else None
    log.warning(
        "%s: attempt %d of %d failed with %s (%s)%s; retrying in %.3f s",
        name,
        attempt,
        attempts,
        _code(cause if cause is not None else error),
        type(error).__name__,
        " at COMMIT" if at_commit else "",
        delay,
    )


def run_in_transaction(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 3,
    backoff: Backoff = _DEFAULT_BACKOFF,
    factory: SessionFactory | None = None,
    **kwargs: Any,
) -> T:
    """Call ``fn(session, *args, **kwargs)`` in a unit of work; retry it if that is safe.

    Each attempt is a fresh unit of work of ``factory`` (default: the current one, the
    app's inside a Flask app context) that commits at its end. An attempt that fails with
    an error :func:`retryable` accepts is rolled back, and after a jittered exponential
    delay (``backoff=(base, cap)`` seconds) the next one runs; after ``attempts`` attempts,
    or on any other error, the error is raised unchanged. The hooks
    (:func:`on_commit`) of a failed attempt never run. Each retry is logged with the
    attempt number and the SQLSTATE or error number, never the statement's parameters.

    ``fn`` may run more than once: it should have no effect outside the database other
    than through :func:`on_commit`. Raises :class:`RuntimeError` inside an active unit of
    work.
    """
    from .session_factory import current_factory

    _check_arguments(attempts, backoff)
    _refuse_inside_unit("run_in_transaction")
    chosen = current_factory() if factory is None else factory
    _refuse_pending_work(chosen, "run_in_transaction")
    attempt = 1
    while True:
        watch = _Attempt()
        try:
            with chosen.session_scope() as session:
                watch.start(session)
                return fn(session, *args, **kwargs)
        except Exception as error:
            if attempt >= attempts or not retryable(error, commit_sent=watch.commit_sent):
                raise
            delay = _delay(attempt, backoff)
            _log_retry("run_in_transaction", attempt, attempts, error, watch.commit_sent, delay)
        finally:
            watch.stop()
        time.sleep(delay)
        attempt += 1


@overload
def transactional(fn: F, /) -> F: ...
@overload
def transactional(
    *,
    attempts: int = 3,
    backoff: Backoff = _DEFAULT_BACKOFF,
    factory: SessionFactory | None = None,
) -> Callable[[F], F]: ...


def transactional(
    fn: F | None = None,
    /,
    *,
    attempts: int = 3,
    backoff: Backoff = _DEFAULT_BACKOFF,
    factory: SessionFactory | None = None,
) -> F | Callable[[F], F]:
    """Decorate a function or a service method to run as :func:`run_in_transaction` does.

    ``@transactional`` or ``@transactional(attempts=5)``: each call runs the function,
    with its own arguments, in a fresh unit of work per attempt, retried on the same
    errors. The function takes no session argument: ``session_scope()``,
    ``get_db_session()`` or ``self.db_session()`` inside it join the attempt's unit.
    Calling it inside an active unit of work raises :class:`RuntimeError`.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run_in_transaction(
                lambda _session: function(*args, **kwargs),
                attempts=attempts,
                backoff=backoff,
                factory=factory,
            )

        return wrapper  # type: ignore[return-value]

    if fn is not None:
        return decorate(fn)
    return decorate


async def async_run_in_transaction(
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    attempts: int = 3,
    backoff: Backoff = _DEFAULT_BACKOFF,
    factory: AsyncSessionFactory | None = None,
    **kwargs: Any,
) -> T:
    """The async twin of :func:`run_in_transaction`: ``await fn(session, *args, **kwargs)``.

    Each attempt is a fresh unit of ``factory.async_session_scope()`` (default: the
    default async factory's); the same errors are retried, after the same jittered
    delays (``asyncio.sleep``). Also ``flask_unified_session.asyncio.run_in_transaction``.
    """
    import asyncio

    from .asyncio import async_session_scope

    _check_arguments(attempts, backoff)
    _refuse_inside_unit("async_run_in_transaction")
    attempt = 1
    while True:
        watch = _Attempt()
        try:
            scope = async_session_scope() if factory is None else factory.async_session_scope()
            async with scope as session:
                watch.start(session.sync_session)
                return await fn(session, *args, **kwargs)
        except Exception as error:
            if attempt >= attempts or not retryable(error, commit_sent=watch.commit_sent):
                raise
            delay = _delay(attempt, backoff)
            _log_retry(
                "async_run_in_transaction", attempt, attempts, error, watch.commit_sent, delay
            )
        finally:
            watch.stop()
        await asyncio.sleep(delay)
        attempt += 1
