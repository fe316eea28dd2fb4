"""Engine-level hooks: connect failures without secrets, and pre-ping only after idleness.

:func:`prepare_engine` installs both on an engine right after it is created::

    engine = create_engine(settings.url, **settings.engine_options())
    prepare_engine(engine, settings)

* :func:`install_connect_guard` makes each connection itself (SQLAlchemy's ``do_connect``
  event) so that a failing connect raises an exception of the driver's type with every
  secret removed, and so that PyMySQL's handshake is bounded by ``connect_timeout``.
* :func:`install_idle_pre_ping` pings a connection on checkout only when it sat in the
  pool longer than a threshold: a busy pool pays no round trip, a connection killed
  during a quiet period is still replaced before use.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

from .config import HIDDEN, Settings, is_secret_key, redact_text, url_secrets

__all__ = [
    "install_connect_guard",
    "install_idle_pre_ping",
    "prepare_engine",
    "scrub_exception",
]

#: Key in a pool connection record's ``info``: ``time.monotonic()`` of the last check-in.
CHECKED_IN_AT = "flask_unified_session.checked_in_at"

# Drivers whose connect timeout covers the TCP connect only, not the server's greeting;
# the handshake is bounded by a read timeout that is lifted once connected.
_HANDSHAKE_READ_TIMEOUT = frozenset({"pymysql"})
# How deep scrub_exception looks into an exception's attributes for a secret.
_SCAN_DEPTH = 4


def prepare_engine(engine: Any, settings: Settings) -> None:
    """Install the connect guard and, if ``settings.pool_pre_ping``, the idle pre-ping.

    ``engine`` is an :class:`~sqlalchemy.engine.Engine` or an ``AsyncEngine`` (its
    ``sync_engine`` is used). Call once, right after the engine is created.
    """
    install_connect_guard(engine, settings)
    if settings.pool_pre_ping:
        install_idle_pre_ping(engine, settings.pool_pre_ping_idle)


def install_connect_guard(engine: Any, settings: Settings) -> None:
    """Connect through a guard: a failure carrying a secret is re-raised without it.

    The secrets are those of ``settings`` and of the engine's own URL, plus any
    secret-looking connect argument (``password``, ``sslpassword``…). See
    :func:`scrub_exception` for what the caller then gets.
    """
    sync_engine = _sync_engine(engine)
    known = (*settings.secrets(), *url_secrets(sync_engine.url))
    driver = sync_engine.dialect.driver
    handshake_timeout = settings.connect_timeout if driver in _HANDSHAKE_READ_TIMEOUT else None

    @event.listens_for(sync_engine, "do_connect")
    def _guarded_connect(
        dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> Any:
        secrets = (*known, *_argument_secrets(cparams))
        lift_read_timeout = handshake_timeout is not None and "read_timeout" not in cparams
        if lift_read_timeout:
            cparams["read_timeout"] = handshake_timeout
        try:
            connection = dialect.connect(*cargs, **cparams)
        except Exception as exc:
            failure = scrub_exception(exc, secrets)
            if failure is exc:
                raise
        else:
            if lift_read_timeout:
                # PyMySQL has no public way to change it; its next read applies this.
                connection._read_timeout = None
            return connection
        # Raised outside the except block, so the original is not attached as context.
        raise failure


def install_idle_pre_ping(
    engine: Any, idle_seconds: float, *, clock: Callable[[], float] = time.monotonic
) -> None:
    """Ping a connection at checkout only if it was idle in the pool over ``idle_seconds``.

    A connection just made is not pinged. A failed ping raises
    :class:`~sqlalchemy.exc.DisconnectionError`, on which the pool discards the connection
    and checks out a fresh one (SQLAlchemy's documented checkout mechanism), so the caller
    never sees the dead one. ``idle_seconds=0`` pings every reused connection. Do not also
    pass ``pool_pre_ping=True`` to ``create_engine``: that pings on every checkout.
    """
    sync_engine = _sync_engine(engine)
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine, "checkin")
    def _note_checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info[CHECKED_IN_AT] = clock()

    @event.listens_for(sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get(CHECKED_IN_AT)
        if checked_in_at is None or clock() - checked_in_at < idle_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            record.info.pop(CHECKED_IN_AT, None)
            raise DisconnectionError(
                f"pre-ping of a connection idle for over {idle_seconds:g} s failed "
                f"({type(exc).__name__}); replacing it"
            ) from None


def scrub_exception(exc: BaseException, secrets: Iterable[str]) -> BaseException:
    """``exc`` itself if no secret is reachable from it; else a rebuilt exception.

    The rebuilt one has the same type, its arguments and attributes with every secret
    shown as ``***``, attributes that hold a secret inside some other object (psycopg's
    ``pgconn``, which carries the password) set to ``None``, the original traceback, and no
    ``__cause__`` or ``__context__``: the original, which holds the secret, is not
    reachable from it. If the type cannot be rebuilt without the secret, a
    ``RuntimeError`` with the scrubbed message is returned instead.
    """
    secret_list = tuple(s for s in secrets if s)
    if not secret_list or not _holds_secret(exc, secret_list, _SCAN_DEPTH, set()):
        return exc
    clone = _rebuild(exc, secret_list)
    if clone is None or _holds_secret(clone, secret_list, _SCAN_DEPTH, set()):
        clone = RuntimeError(f"{type(exc).__name__}: {redact_text(str(exc), secret_list)}")
    clone.__cause__ = None
    clone.__context__ = None
    clone.__suppress_context__ = True
    return clone.with_traceback(exc.__traceback__)


def _rebuild(exc: BaseException, secrets: tuple[str, ...]) -> BaseException | None:
    cls = type(exc)
    args = tuple(_scrubbed(arg, secrets) for arg in exc.args)
    if isinstance(exc, UnicodeError) and args != exc.args:
        args = _unicode_error_args(args)
    try:
        clone = cls(*args)
    except Exception:
        try:
            clone = cls.__new__(cls)
            clone.args = args
        except Exception:
            return None
    for name, value in vars(exc).items():
        try:
            setattr(clone, name, _scrubbed(value, secrets))
        except Exception:
            return None
    try:
        str(clone)
        repr(clone)
    except Exception:
        return None
    return clone


def _unicode_error_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    # (encoding, object, start, end, reason): the object was the secret; positions in it
    # would point at characters of it. Point at the marker and say what it was.
    if len(args) == 5 and isinstance(args[1], str):
        return (args[0], args[1], 0, len(args[1]), f"{args[4]} (in a connection secret, hidden)")
    return args


def _scrubbed(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, bytes):
        for secret in secrets:
            value = value.replace(secret.encode("utf-8", "surrogatepass"), HIDDEN.encode())
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_scrubbed(item, secrets) for item in value)
    if isinstance(value, dict):
        return {key: _scrubbed(item, secrets) for key, item in value.items()}
    return None if _holds_secret(value, secrets, _SCAN_DEPTH, set()) else value


def _holds_secret(value: Any, secrets: tuple[str, ...], depth: int, seen: set[int]) -> bool:
    """True if a secret is in ``value``'s text or reachable through its attributes."""
    if id(value) in seen or depth < 0:
        return False
    seen.add(id(value))
    if isinstance(value, str):
        return redact_text(value, secrets) != value
    if isinstance(value, (bytes, bytearray)):
        return any(s.encode("utf-8", "surrogatepass") in value for s in secrets)
    if value is None or isinstance(value, (bool, int, float)):
        return False
    if isinstance(value, (tuple, list, set, frozenset)):
        return any(_holds_secret(item, secrets, depth - 1, seen) for item in value)
    if isinstance(value, dict):
        return any(
            _holds_secret(k, secrets, depth - 1, seen) or _holds_secret(v, secrets, depth - 1, seen)
            for k, v in value.items()
        )
    if isinstance(value, BaseException):
        chained = (value.args, value.__cause__, value.__context__)
        if any(_holds_secret(item, secrets, depth, seen) for item in chained):
            return True
    text: tuple[str, ...]
    try:
        text = (str(value), repr(value))
    except Exception:
        text = ()
    if any(redact_text(t, secrets) != t for t in text):
        return True
    return any(_holds_secret(item, secrets, depth - 1, seen) for item in _attributes(value))


def _attributes(value: Any) -> list[Any]:
    found: list[Any] = []
    with contextlib.suppress(TypeError):
        found.extend(vars(value).values())
    for name in getattr(type(value), "__slots__", ()):
        with contextlib.suppress(AttributeError):
            found.append(getattr(value, name))
    return found


def _argument_secrets(cparams: dict[str, Any]) -> list[str]:
    return [str(v) for k, v in cparams.items() if is_secret_key(k) and isinstance(v, str) and v]


def _sync_engine(engine: Any) -> Engine:
    sync_engine = getattr(engine, "sync_engine", engine)
    if not isinstance(sync_engine, Engine):
        raise TypeError(f"expected an Engine or AsyncEngine, got {type(engine).__name__}")
    return sync_engine
