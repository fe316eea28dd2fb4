"""The one unit-of-work protocol: commit on success, roll back on error, always close.

Every entry point of the library enters a :class:`UnitOfWork`. The state of a
transaction is owned by an explicit :class:`Transaction` object, never reconstructed
from a snapshot:

* A :class:`Transaction` is opened by the outermost unit of a *key* (a factory, a legacy
  ``db_manager``) for an *owner*: the Flask app context when one is pushed, else the
  current asyncio task, else the current greenlet or thread. It is registered under
  ``(owner, key)`` until that unit exits; units entered meanwhile by the same owner with
  the same key join it. A unit exited (in any order, in any thread or context) is marked
  closed and is never joined again; a process forked while it is open does not see it.
* A transaction is a stack of :class:`Level` objects: the outermost one (the transaction
  itself), and one per ``nested=True`` unit (a SAVEPOINT). An exception escaping a joined
  unit dooms the level it joined: that level rolls back at its end and raises
  :class:`DoomedTransactionError`, and no commit can persist anything meanwhile.
* Hooks (:func:`flask_unified_session.on_commit`) live in levels: a released savepoint
  hands them to its parent, a rolled-back one drops them, and the outermost runs them
  after its commit, once the connection went back to the pool.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from time import perf_counter
from types import TracebackType
from typing import Any

from blinker import NamedSignal
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from . import signals

__all__ = [
    "DoomedTransactionError",
    "Hook",
    "Level",
    "Transaction",
    "UnitOfWork",
    "current_transaction",
    "task_owner",
]

log = logging.getLogger("flask_unified_session")

Hook = tuple[Callable[[], object], bool]


class DoomedTransactionError(RuntimeError):
    """The unit of work was rolled back because an exception escaped a joined inner scope."""


# -- owners ----------------------------------------------------------------------------

#: Set by the Flask layer: returns the pushed app context (the owner there), or None.
context_owner: Callable[[], object | None] | None = None

try:  # a greenlet (gevent or not) never joins its parent's unit
    from greenlet import getcurrent as _current_greenlet
except ImportError:  # pragma: no cover - greenlet comes with SQLAlchemy's asyncio extra
    _current_greenlet = None


class _ThreadToken:
    """A unique, weakly referenceable stand-in for a thread (idents are reused)."""

    __slots__ = ("__weakref__",)


_thread_tokens = threading.local()


def _thread_owner() -> object:
    token = getattr(_thread_tokens, "token", None)
    if token is None:
        token = _thread_tokens.token = _ThreadToken()
    return token


def current_owner() -> object:
    """Who units join on: the app context, else the asyncio task, else greenlet or thread."""
    if context_owner is not None:
        owner = context_owner()
        if owner is not None:
            return owner
    # current_task() is only asked when a loop runs in this thread.
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio._get_running_loop() is not None:
        task = asyncio.current_task()
        if task is not None:
            return task
    if _current_greenlet is not None:
        return _current_greenlet()
    return _thread_owner()


# Open transactions by owner, then by key, keyed by a weak reference to the owner: an
# owner that is gone (a thread that ended, a popped app context) takes its entries with
# it. A plain dict rather than a WeakKeyDictionary: looked up on every unit of work, with
# weakref.ref(owner) (a C call that reuses the owner's reference) instead of Python code.
_open: dict[weakref.ref[Any], dict[object, Transaction]] = {}
_pid = os.getpid()
# Sessions of a parent process's units that a forked child exited: never used again (the
# socket is the parent's), and kept referenced so that no finalizer talks over it.
_abandoned: list[Session] = []


def _after_fork_in_child() -> None:
    # Takes no lock: the parent's units simply stop being visible.
    global _open, _pid
    _open = {}
    _pid = os.getpid()


def open_units(owner: object) -> dict[object, Transaction] | None:
    """The open transactions of ``owner`` by key, or None if it has none.

    Read it through this function: the registry is replaced in a forked child.
    """
    return _open.get(weakref.ref(owner))


def _forget_owner(ref: weakref.ref[Any]) -> None:
    # Called by the garbage collector (also in a forked child, before its hooks): no lock.
    # A dead reference equals only itself, so this removes exactly the owner's entry.
    _open.pop(ref, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def task_owner() -> object:
    """The owner async units nest on: the running task, also inside a Flask app context.

    Tasks of one app context (``gather`` in an async view) must not share an AsyncSession.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio._get_running_loop() is not None:
        task = asyncio.current_task()
        if task is not None:
            return task
    return current_owner()


def current_transaction(key: object | None = None) -> Transaction | None:
    """The open transaction of the current owner (for ``key``; else the latest entered).

    Both owners are asked: sync units nest on the app context, async ones on the task.
    """
    owners = {id(owner): owner for owner in (current_owner(), task_owner())}
    latest: Transaction | None = None
    for owner in owners.values():
        units = _open.get(weakref.ref(owner))
        if not units:
            continue
        candidates = [units.get(key)] if key is not None else list(units.values())
        for candidate in candidates:
            transaction = _live(candidate)
            if transaction is not None and (latest is None or transaction.serial > latest.serial):
                latest = transaction
    return latest


def _live(transaction: Transaction | None) -> Transaction | None:
    # An independent unit shadows the one it was opened in; skip any that have exited.
    while transaction is not None and (not transaction.open or transaction.pid != _pid):
        transaction = transaction.shadowed
    return transaction


# -- transaction state -----------------------------------------------------------------


class Level:
    """One level of a transaction: a SAVEPOINT, or (as :class:`Transaction`) the outermost."""

    __slots__ = ("doomed", "hooks", "open", "parent", "savepoint")

    def __init__(self, savepoint: SessionTransaction | None, parent: Level | None) -> None:
        self.savepoint = savepoint
        self.parent = parent
        self.doomed: BaseException | None = None
        self.hooks: list[Hook] = []
        self.open = True

    def nearest_open(self) -> Level | None:
        level: Level | None = self
        while level is not None and not level.open:
            level = level.parent
        return level


_serials = iter(range(1, sys.maxsize))


class Transaction(Level):
    """The state of one outermost unit of work, from its entry to its exit.

    It is its own outermost level; each ``nested=True`` unit adds a SAVEPOINT level to
    :attr:`savepoints`. The transaction is not in that list: that would make every
    transaction a reference cycle, left to the garbage collector.
    """

    __slots__ = (
        "doom_guard",
        "key",
        "listening",
        "owner_units",
        "owns_session",
        "pid",
        "savepoints",
        "sender",
        "serial",
        "session",
        "shadowed",
        "started",
    )

    def __init__(self, key: object, session: Session, sender: object, owns_session: bool) -> None:
        # Level's five slots, set here rather than through super().__init__(): one frame
        # less on every unit. A slot added to Level must be set here too.
        self.savepoint = self.parent = self.doomed = None
        self.hooks = []
        self.open = True
        self.key = key
        self.session = session
        self.sender = sender
        #: whether the transaction closes its session (not the app context's one)
        self.owns_session = owns_session
        self.pid = _pid
        self.serial = next(_serials)
        self.savepoints: list[Level] = []
        self.shadowed: Transaction | None = None
        self.owner_units: dict[object, Transaction] | None = None
        self.doom_guard: Callable[..., None] | None = None
        self.listening = any(signals._RECEIVERS)
        if self.listening:  # ``started`` is read only to send a signal
            self.started = perf_counter()

    @property
    def any_doomed(self) -> BaseException | None:
        """The exception that doomed a level, if one is doomed."""
        if self.doomed is not None:
            return self.doomed
        for level in self.savepoints:
            if level.doomed is not None:
                return level.doomed
        return None

    def innermost(self) -> Level:
        savepoints = self.savepoints
        return savepoints[-1] if savepoints else self

    def doom(self, level: Level, cause: BaseException) -> None:
        target = level.nearest_open()
        if target is None or target.doomed is not None:
            return
        target.doomed = cause
        if self.doom_guard is None:
            # Nothing may commit while a level is doomed: a manual session.commit() raises.
            def refuse_commit(_session: Session) -> None:
                raise DoomedTransactionError(_doomed_message(self.any_doomed))

            event.listen(self.session, "before_commit", refuse_commit)
            self.doom_guard = refuse_commit

    def drop_guard_if_clear(self) -> None:
        guard = self.doom_guard
        if guard is not None and self.any_doomed is None:
            self.doom_guard = None
            _quietly(
                lambda: event.remove(self.session, "before_commit", guard),
                "removing the commit guard",
            )

    def emit(self, signal: NamedSignal) -> None:
        if self.listening:
            session = self.session
            try:
                signal.send(
                    self.sender,
                    session=session,
                    duration=perf_counter() - self.started,
                    context=session.info,
                )
            except Exception:
                # A receiver never replaces the caller's exception, nor stops the protocol.
                log.exception("a receiver of %s raised; ignored", signal.name)


# -- the unit of work ------------------------------------------------------------------


class UnitOfWork:
    """One unit of work: a context manager that yields a session.

    :param key: what "the same factory" means for nesting.
    :param open_session: called for the session of an outermost unit.
    :param context_session: if given and it returns a session, an outermost unit uses
        that one (the app context's session) and leaves it open at its end.
    :param sender: the sender of the lifecycle signals.
    :param context: called on entry; its mapping is merged into ``session.info``.

    The object may be entered again once it has exited, never while it is active.
    """

    __slots__ = (
        "_context",
        "_context_session",
        "_joined",
        "_level",
        "_transaction",
        "independent",
        "key",
        "nested",
        "open_session",
        "owner_of",
        "sender",
    )

    def __init__(
        self,
        key: object,
        open_session: Callable[[], Session],
        nested: bool = False,
        independent: bool = False,
        sender: object = None,
        context: Callable[[], Mapping[str, Any]] | None = None,
        context_session: Callable[[], Session | None] | None = None,
        owner_of: Callable[[], object] = current_owner,
    ) -> None:
        self.key = key
        #: who this unit nests on (``task_owner`` for async units)
        self.owner_of = owner_of
        self.open_session = open_session
        self.nested = nested
        self.independent = independent
        self.sender = key if sender is None else sender
        self._context = context
        self._context_session = context_session
        self._transaction: Transaction | None = None
        self._level: Level | None = None
        self._joined = False

    def __enter__(self) -> Session:
        # Joins the owner's open unit of this key, if any; else opens the outermost unit.
        if self._transaction is not None:
            raise RuntimeError(
                "this scope is already active: a scope object is entered once at a time; "
                "call session_scope() (or get_db_session()) again for another block"
            )
        owner = self.owner_of()
        units = _open.get(weakref.ref(owner))
        if units and not self.independent:
            transaction = _live(units.get(self.key))
            if transaction is not None:
                return self._join(transaction)
        session = None
        if self._context_session is not None and not self.independent:
            session = self._context_session()
        owns_session = session is None
        if session is None:
            session = self.open_session()
        transaction = Transaction(self.key, session, self.sender, owns_session)
        if units is None:
            # Before the context provider, which may run units of its own (a user loader).
            units = _open[weakref.ref(owner, _forget_owner)] = {}
        # The transaction is registered last: if a context provider raises, the block
        # never runs and no __exit__ would unregister it.
        try:
            if self._context is not None:
                context = self._context()
                if context:  # session.info is created on first access: only if needed
                    session.info.update(context)
        except BaseException:
            if owns_session:
                _quietly(session.close, "closing the session")
            raise
        if transaction.listening:
            transaction.emit(signals.session_opened)
        # Shadows the key's open transaction, if any (an independent unit).
        transaction.shadowed = units.get(self.key)
        units[self.key] = transaction
        transaction.owner_units = units
        self._transaction = self._level = transaction
        self._joined = False
        return session

    def _join(self, transaction: Transaction) -> Session:
        doomed = transaction.any_doomed
        if doomed is not None:
            raise DoomedTransactionError(_doomed_message(doomed)) from doomed
        session = transaction.session
        if self._context is not None:
            for name, value in self._context().items():
                session.info.setdefault(name, value)
        parent = transaction.innermost()
        if self.nested:
            level = Level(session.begin_nested(), parent)
            transaction.savepoints.append(level)
        else:
            level = parent
        self._transaction = transaction
        self._level = level
        self._joined = True
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A joined unit leaves its level; the outermost one commits or rolls back, closes.
        transaction, level = self._transaction, self._level
        self._transaction = self._level = None
        if transaction is None or level is None:
            raise RuntimeError("this scope was exited without being entered")
        if self._joined:
            if self.nested:
                self._exit_savepoint(transaction, level, exc)
            elif exc is not None:
                transaction.doom(level, exc)
            return
        # Unregistered first: whatever happens below, no unit joins it again.
        transaction.open = False
        units = transaction.owner_units
        key = transaction.key
        if units is not None and units.get(key) is transaction:
            shadowed = transaction.shadowed
            previous = _live(shadowed) if shadowed is not None else None
            if previous is None:
                del units[key]
            else:
                units[key] = previous
        doomed = transaction.doomed
        for level in transaction.savepoints:  # still open: exits come in any order
            level.open = False
            if doomed is None:
                doomed = level.doomed
        session = transaction.session
        if transaction.pid != _pid:
            # A forked child leaving its parent's unit: the connection is the parent's.
            _abandoned.append(session)
            return
        committed = False
        failed = exc is not None or doomed is not None
        try:
            if not failed:
                # Every session operation (add, execute, get) begins a transaction, so
                # none begun means no work: an empty commit is skipped, not "if dirty".
                if session.in_transaction():
                    try:
                        session.commit()
                    except BaseException:
                        failed = True
                        _quietly(session.rollback, "rolling back")
                        transaction.emit(signals.session_rolled_back)
                        raise
                committed = True
                if transaction.listening:
                    transaction.emit(signals.session_committed)
            else:
                _quietly(session.rollback, "rolling back")
                transaction.emit(signals.session_rolled_back)
                if exc is None:
                    raise DoomedTransactionError(_doomed_message(doomed)) from doomed
        finally:
            if doomed is not None:
                transaction.doomed = None
                for level in transaction.savepoints:
                    level.doomed = None
            if transaction.doom_guard is not None:
                transaction.drop_guard_if_clear()
            if transaction.owns_session:
                if failed:
                    _quietly(session.close, "closing the session")
                else:
                    session.close()
                transaction.emit(signals.session_closed)
        if committed and transaction.hooks:
            _run_hooks(transaction.hooks)

    def _exit_savepoint(
        self, transaction: Transaction, level: Level, exc: BaseException | None
    ) -> None:
        level.open = False
        if level in transaction.savepoints:
            transaction.savepoints.remove(level)
        savepoint = level.savepoint
        assert savepoint is not None
        doomed = level.doomed
        try:
            if exc is None and doomed is None:
                if savepoint.is_active:
                    try:
                        savepoint.commit()
                    except BaseException:
                        _quietly(savepoint.rollback, "rolling back a savepoint")
                        raise
                parent = level.parent.nearest_open() if level.parent is not None else None
                if parent is not None:
                    parent.hooks.extend(level.hooks)
                return
            if savepoint.is_active:
                _quietly(savepoint.rollback, "rolling back a savepoint")
            if exc is None:
                raise DoomedTransactionError(_doomed_message(doomed)) from doomed
        finally:
            transaction.drop_guard_if_clear()


#: Capture lists (``flask_unified_session.testing.on_commit``): while one is pushed, hooks
#: that would run are appended to the innermost one instead, for the test to run or drop.
hook_captures: list[list[Hook]] = []


def _run_hooks(hooks: list[Hook]) -> None:
    # After the commit, with the connection back in the pool, in registration order. The
    # data is committed whatever a hook does: a robust hook's failure is logged and the
    # others run; any other hook's failure stops the rest and reaches the caller.
    if hook_captures:
        hook_captures[-1].extend(hooks)
        return
    for hook, robust in hooks:
        run_hook(hook, robust)


def run_hook(hook: Callable[[], object], robust: bool) -> None:
    """Run one on_commit hook: a robust one's failure is logged, any other's raised."""
    if not robust:
        hook()
        return
    try:
        hook()
    except Exception:
        log.exception("an on_commit hook failed after the commit; the others still run")


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
