"""Settings for one database: read from the environment or a mapping, validated once.

Nothing here imports Flask. The same names serve both sources: the environment uses
``DATABASE_URL``, ``DATABASE_ASYNC_URL`` and ``DB_*``; a Flask config uses
``UNIFIED_SESSION_DATABASE_URL``, ``UNIFIED_SESSION_DATABASE_ASYNC_URL`` and
``UNIFIED_SESSION_*`` (see :mod:`flask_unified_session.extension`).

Secrets: every URL the library shows goes through :func:`display_url` (a ``URL``) or
:func:`redact_url` (text). Both hide the userinfo password, any secret-looking query value
(``?password=``, ``sslpassword``, ``token``…) and, for text SQLAlchemy could not parse,
everything between the first ``:`` after the user name and the last ``@``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

__all__ = [
    "MAX_SECONDS",
    "ConfigurationError",
    "Settings",
    "display_url",
    "read_replica_settings",
    "redact_text",
    "redact_url",
    "to_bool",
    "url_secrets",
]

_TRUE = frozenset({"true", "1", "t", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "f", "no", "n", "off", ""})
HIDDEN = "***"

#: The longest wait any timeout setting accepts: one day. Far below what threading and
#: the C time functions overflow at, and far above any wait an application means.
MAX_SECONDS = 86400.0

# Query keys whose value is treated as a secret: any key containing one of these words.
_SECRET_KEY_WORDS = ("pass", "pwd", "secret", "token", "credential", "apikey", "api_key")
# A URL in free text starts at 'scheme://'.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# Where a URL quoted inside a message ends (a raw one in a setting runs to the end).
_TEXT_URL_END = re.compile(r"[\s'\"<>`]")
# A query parameter: after '?', '&' or ';' (never at the start, where the userinfo is).
_SECRET_PAIR = re.compile(r"(?<=[?&;])(?P<key>[^=&;?#\s]+)=(?P<value>[^&;#\s]*)")

# Sync driver -> the async driver of the same database (DATABASE_ASYNC_URL's default).
_ASYNC_TWIN = {
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg2": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg_async",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mysql+mysqldb": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mysql+aiomysql": "mysql+aiomysql",
    "mysql+asyncmy": "mysql+asyncmy",
    "mariadb+pymysql": "mariadb+aiomysql",
    "mariadb+aiomysql": "mariadb+aiomysql",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}

# Driver -> (connect argument, whole seconds only) for DB_CONNECT_TIMEOUT.
_CONNECT_TIMEOUT_ARG = {
    "psycopg": ("connect_timeout", True),
    "psycopg_async": ("connect_timeout", True),
    "psycopg2": ("connect_timeout", True),
    "asyncpg": ("timeout", False),
    "pymysql": ("connect_timeout", False),
    "aiomysql": ("connect_timeout", False),
    "asyncmy": ("connect_timeout", False),
    "mysqldb": ("connect_timeout", True),
    "mariadbconnector": ("connect_timeout", True),
}

PGBOUNCER_MODES = ("transaction",)

#: Seconds a readonly unit waits, in all, for a replica to replay its owner's last commit.
DEFAULT_REPLICA_WAIT = 2.0
#: Seconds of replication lag past which a replica is skipped.
DEFAULT_REPLICA_MAX_LAG = 30.0
#: Seconds a skipped replica is left alone before one unit tries it again.
DEFAULT_REPLICA_RETRY_AFTER = 5.0


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names the setting, never a password."""


# --- secrets --------------------------------------------------------------------------


def is_secret_key(key: str) -> bool:
    """True for a query or connect-argument name whose value is a secret."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_KEY_WORDS)


def url_secrets(url: URL) -> tuple[str, ...]:
    """The secret parts of a parsed URL: password, secret query values, and the part of a
    host before an ``@`` (the tail of a password with a raw ``@`` that SQLAlchemy took for
    the host)."""
    found: list[str] = []
    if url.password:
        found.append(str(url.password))
    for key, value in url.query.items():
        if is_secret_key(key):
            found.extend(v for v in ([value] if isinstance(value, str) else value) if v)
    if url.host and "@" in url.host:
        found.append(url.host.rsplit("@", 1)[0])
    return tuple(found)


def display_url(url: URL) -> str:
    """``url`` as text safe to print: password, secret query values and a host's
    ``…@`` prefix shown as ``***``.

    Use this wherever a URL is shown; ``str(url)`` hides only the userinfo password.
    """
    query = {key: (HIDDEN if is_secret_key(key) else value) for key, value in url.query.items()}
    shown = url.set(query=query)
    if url.host and "@" in url.host:
        shown = shown.set(host=HIDDEN + "@" + url.host.rsplit("@", 1)[1])
    # render_as_string percent-encodes '*': put the marker back as written.
    return shown.render_as_string(hide_password=True).replace("%2A%2A%2A", HIDDEN)


def redact_url(value: object) -> str:
    """``value`` as text with every URL secret shown as ``***``.

    A :class:`~sqlalchemy.engine.URL` is shown by :func:`display_url`. Text that is one URL
    (a setting's value) is redacted as a whole, whatever it contains; in other text (an
    exception message) each ``scheme://…`` runs to the next space or quote.
    """
    if isinstance(value, URL):
        return display_url(value)
    text = str(value)
    stripped = text.strip()
    if _SCHEME.match(stripped) and not any(c.isspace() for c in stripped):
        return _redact_url_text(stripped)
    return _redact_urls_in(text)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (as written, percent-encoded or escaped) and every
    URL secret shown as ``***``. Longer secrets are replaced first."""
    for variant in sorted(_variants(secrets), key=len, reverse=True):
        text = text.replace(variant, HIDDEN)
    return _redact_urls_in(text)


def _variants(secrets: Iterable[str]) -> set[str]:
    """The ways a secret may be written in a message."""
    found: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        found.update(
            {
                secret,
                quote(secret, safe=""),
                quote_plus(secret, safe=""),
                secret.encode("unicode_escape").decode("ascii"),
                repr(secret)[1:-1],
            }
        )
    found.discard("")
    return found


def _redact_urls_in(text: str) -> str:
    out: list[str] = []
    position = 0
    for match in _SCHEME.finditer(text):
        if match.start() < position:
            continue
        end_match = _TEXT_URL_END.search(text, match.end())
        end = end_match.start() if end_match else len(text)
        out.append(text[position : match.start()])
        out.append(_redact_url_text(text[match.start() : end]))
        position = end
    out.append(text[position:])
    return "".join(out)


def _redact_url_text(url_text: str) -> str:
    """One URL as text, parsed or not: the userinfo password and secret query values hidden.

    SQLAlchemy takes the password up to the first '@'; a human who typed a raw '@' meant
    the last one. Hiding up to the last '@' covers both (and may hide more than needed
    when a query value holds an '@': safe, only less informative).
    """
    scheme = _SCHEME.match(url_text)
    assert scheme is not None
    head, rest = url_text[: scheme.end()], url_text[scheme.end() :]
    if "@" in rest:
        userinfo, after = rest.rsplit("@", 1)
        if ":" in userinfo:
            # Only the user name (before the first ':') is shown; it holds no secret.
            rest = userinfo.split(":", 1)[0] + ":" + HIDDEN + "@" + after
    return head + _SECRET_PAIR.sub(_hide_secret_pair, rest)


def _hide_secret_pair(match: re.Match[str]) -> str:
    key = match.group("key")
    return f"{key}={HIDDEN}" if is_secret_key(key) else match.group(0)


# --- settings -------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Settings:
    """What it takes to build one engine. ``repr`` and ``str`` never show a secret."""

    url: URL
    echo: bool = False
    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    pool_recycle: int | None = None
    #: idle pre-ping on (see ``pool_pre_ping_idle``); never SQLAlchemy's ping-every-checkout
    pool_pre_ping: bool = True
    #: where the URL came from, used in error messages (``DATABASE_URL``, a config key, …)
    source: str = field(default="DATABASE_URL", compare=False)
    #: seconds a connection attempt may take, given to drivers that support it
    connect_timeout: float = 10.0
    #: a checkout pings a connection only if it sat in the pool longer than this (0: always)
    pool_pre_ping_idle: float = 1.0
    #: ``DATABASE_ASYNC_URL`` as given; ``None`` derives it (see :attr:`async_url`)
    database_async_url: URL | None = None
    #: read replicas, same backend as ``url``
    replica_urls: tuple[URL, ...] = ()
    #: ``"transaction"`` behind PgBouncer in transaction pooling mode, else ``None``
    pgbouncer: str | None = None
    #: seconds a readonly unit waits for a replica to replay its owner's last commit
    #: before it runs on the primary (0: never waits)
    replica_wait: float = DEFAULT_REPLICA_WAIT
    #: seconds of replication lag past which a replica is skipped
    replica_max_lag: float = DEFAULT_REPLICA_MAX_LAG
    #: seconds before a skipped (down or lagging) replica is tried again
    replica_retry_after: float = DEFAULT_REPLICA_RETRY_AFTER

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``DATABASE_URL``, ``DATABASE_ASYNC_URL`` and ``DB_*`` from ``environ``
        (default: ``os.environ``)."""
        return cls.from_mapping(os.environ if environ is None else environ)

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        *,
        url_keys: tuple[str, ...] = ("DATABASE_URL",),
        prefix: str = "DB_",
        async_url_keys: tuple[str, ...] | None = None,
    ) -> Settings:
        """Read settings from ``mapping``.

        The URL is the first of ``url_keys`` present and non-empty; the async URL the first
        of ``async_url_keys`` (default ``DATABASE_ASYNC_URL`` for the ``DB_`` prefix, else
        ``{prefix}DATABASE_ASYNC_URL``). The other settings are ``{prefix}`` followed by
        ``ECHO``, ``POOL_SIZE``, ``MAX_OVERFLOW``, ``POOL_TIMEOUT``, ``POOL_RECYCLE``,
        ``POOL_PRE_PING``, ``POOL_PRE_PING_IDLE``, ``CONNECT_TIMEOUT``, ``PGBOUNCER`` and
        the replica settings of :func:`read_replica_settings`. Errors name the key and
        never show a secret of the URL.
        """
        url_key = _first_set(mapping, url_keys)
        if url_key is None:
            raise ConfigurationError(
                f"{' or '.join(url_keys)} is not set: give the database URL, for example "
                f"'postgresql+psycopg://user:password@localhost/app' or 'sqlite:///app.db'"
            )
        url = parse_url(mapping[url_key], url_key)
        try:
            return cls(**_read_values(mapping, url, url_key, prefix, async_url_keys))
        except ConfigurationError as error:
            # A value pasted into the wrong key may be the password: never echo it.
            raise ConfigurationError(redact_text(str(error), url_secrets(url))) from None

    def __post_init__(self) -> None:
        # Checks live here so that direct construction is validated too; from_mapping
        # checked each value already under its own key.
        if isinstance(self.url, str):
            object.__setattr__(self, "url", parse_url(self.url, self.source))
        if isinstance(self.database_async_url, str):
            object.__setattr__(
                self, "database_async_url", parse_url(self.database_async_url, "async_url")
            )
        replicas = self.replica_urls
        if isinstance(replicas, (str, URL)) or not isinstance(replicas, tuple):
            replicas = _read_replicas("replica_urls", replicas, self.url)
            object.__setattr__(self, "replica_urls", replicas)
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        if self.pgbouncer is not None and self.url.get_backend_name() != "postgresql":
            raise ConfigurationError(
                f"pgbouncer={self.pgbouncer!r} needs a PostgreSQL URL, not "
                f"{self.url.get_backend_name()!r}"
            )

    def __repr__(self) -> str:
        parts = []
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, URL):
                shown = repr(display_url(value))
            elif isinstance(value, tuple):
                shown = "(" + ", ".join(repr(display_url(u)) for u in value) + ")"
            else:
                shown = repr(value)
            parts.append(f"{item.name}={shown}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def is_sqlite_memory(self) -> bool:
        return is_sqlite_memory(self.url)

    @property
    def async_url(self) -> URL:
        """``DATABASE_ASYNC_URL``, or the async twin of ``url``'s driver.

        psycopg keeps its URL (it serves both); ``postgresql`` and psycopg2 become
        ``postgresql+psycopg``, PyMySQL and mysqlclient ``aiomysql``, pysqlite
        ``aiosqlite``. A driver with no known twin is an error naming DATABASE_ASYNC_URL,
        raised only when the async URL is asked for.
        """
        if self.database_async_url is not None:
            return self.database_async_url
        twin = _ASYNC_TWIN.get(self.url.drivername)
        if twin is None:
            raise ConfigurationError(
                f"DATABASE_ASYNC_URL is not set and {self.source}'s driver "
                f"{self.url.drivername!r} has no known async twin: set DATABASE_ASYNC_URL "
                f"(UNIFIED_SESSION_DATABASE_ASYNC_URL in Flask), for example "
                f"'postgresql+psycopg://…', 'mysql+aiomysql://…' or 'sqlite+aiosqlite:///…'"
            )
        return self.url.set(drivername=twin)

    def secrets(self) -> tuple[str, ...]:
        """Every secret of every URL these settings hold, for :func:`redact_text`."""
        urls = [self.url, *self.replica_urls]
        if self.database_async_url is not None:
            urls.append(self.database_async_url)
        return tuple(secret for url in urls for secret in url_secrets(url))

    def engine_options(self, url: URL | None = None) -> dict[str, Any]:
        """Keyword arguments for :func:`sqlalchemy.create_engine` (or
        ``create_async_engine``) that the backend of ``url`` accepts.

        ``url`` defaults to :attr:`url`; pass :attr:`async_url` or a replica URL for those
        engines. ``pool_pre_ping`` is never passed: pre-ping is installed by
        :func:`flask_unified_session.connections.prepare_engine`, which pings only
        connections idle longer than ``pool_pre_ping_idle``. In-memory SQLite gets one
        shared connection (``StaticPool``), since each new connection would otherwise see
        an empty database; pool sizing is only passed to backends whose pool takes it.
        """
        url = self.url if url is None else url
        options: dict[str, Any] = {"echo": self.echo}
        connect_args = self.connect_args(url)
        if is_sqlite_memory(url):
            from sqlalchemy.pool import StaticPool

            options["poolclass"] = StaticPool
        else:
            options.update(
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
                pool_timeout=self.pool_timeout,
            )
            if self.pool_recycle is not None:
                options["pool_recycle"] = self.pool_recycle
        if connect_args:
            options["connect_args"] = connect_args
        return options

    def connect_args(self, url: URL | None = None) -> dict[str, Any]:
        """The driver arguments these settings imply for ``url`` (default :attr:`url`).

        A value the URL's query string already sets is left to the URL.
        """
        url = self.url if url is None else url
        args: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            # A file database is shared by the pool's threads; the one in-memory
            # connection too. (SQLite's own ``timeout`` is a lock wait, not a connect
            # timeout: it is left to the URL.)
            args["check_same_thread"] = False
            return args
        driver = url.get_driver_name()
        timeout_arg = _CONNECT_TIMEOUT_ARG.get(driver)
        if timeout_arg is not None and timeout_arg[0] not in url.query:
            name, whole = timeout_arg
            args[name] = max(1, math.ceil(self.connect_timeout)) if whole else self.connect_timeout
        if self.pgbouncer == "transaction" and driver in ("psycopg", "psycopg_async"):
            # PgBouncer hands each transaction to any server connection: a statement
            # prepared on one is unknown on the next. psycopg then never prepares.
            args["prepare_threshold"] = None
        return args


def _first_set(mapping: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    return next((k for k in keys if mapping.get(k) not in (None, "")), None)


def _read_values(
    mapping: Mapping[str, Any],
    url: URL,
    url_key: str,
    prefix: str,
    async_url_keys: tuple[str, ...] | None,
) -> dict[str, Any]:
    values: dict[str, Any] = {"url": url, "source": url_key}
    if async_url_keys is None:
        async_url_keys = (
            ("DATABASE_ASYNC_URL",) if prefix == "DB_" else (f"{prefix}DATABASE_ASYNC_URL",)
        )
    async_key = _first_set(mapping, async_url_keys)
    if async_key is not None:
        values["database_async_url"] = parse_url(mapping[async_key], async_key)
    readers: dict[str, Any] = {
        "echo": to_bool,
        "pool_size": _to_int,
        "max_overflow": _to_int,
        "pool_timeout": _to_float,
        "pool_recycle": _to_int,
        "pool_pre_ping": to_bool,
        "pool_pre_ping_idle": _to_float,
        "connect_timeout": _to_float,
        "pgbouncer": _to_pgbouncer,
    }
    for name, read in readers.items():
        key = prefix + name.upper()
        raw = mapping.get(key)
        if raw is not None and raw != "":
            value = read(key, raw)
            check = _CHECKS.get(name)
            values[name] = check(key, value) if check else value
    values.update(read_replica_settings(mapping, url, prefix=prefix))
    return values


# The replica bounds, all seconds.
_REPLICA_SECONDS = ("replica_wait", "replica_max_lag", "replica_retry_after")


def read_replica_settings(
    mapping: Mapping[str, Any], primary: URL, *, prefix: str = "DB_"
) -> dict[str, Any]:
    """The replica settings given in ``mapping``, read and checked as :class:`Settings`
    reads them, by :class:`Settings` field name.

    ``{prefix}REPLICA_URLS`` (comma-separated, or a sequence of URLs; each the same kind
    of database as ``primary``) becomes ``replica_urls``; ``{prefix}REPLICA_WAIT``,
    ``{prefix}REPLICA_MAX_LAG`` and ``{prefix}REPLICA_RETRY_AFTER`` (seconds) become
    ``replica_wait``, ``replica_max_lag`` and ``replica_retry_after``. Keys absent or empty
    are left out (their defaults apply). Errors name the key. For apps whose primary
    engine is not the library's (``init_app(app, db=db)``), which have no
    :class:`Settings`.
    """
    values: dict[str, Any] = {}
    replicas_key = prefix + "REPLICA_URLS"
    raw_replicas = mapping.get(replicas_key)
    if raw_replicas not in (None, ""):
        values["replica_urls"] = _read_replicas(replicas_key, raw_replicas, primary)
    for name in _REPLICA_SECONDS:
        key = prefix + name.upper()
        raw = mapping.get(key)
        if raw is not None and raw != "":
            values[name] = _CHECKS[name](key, _to_float(key, raw))
    return values


def _read_replicas(key: str, raw: object, primary: URL) -> tuple[URL, ...]:
    """A comma-separated string, or a sequence of strings or URLs; each checked."""
    if isinstance(raw, URL):
        items: list[object] = [raw]
    elif isinstance(raw, str):
        items = [part for part in raw.split(",") if part.strip()]
    elif isinstance(raw, Iterable):
        items = list(raw)
    else:
        raise ConfigurationError(f"{key} must be a comma-separated list of database URLs")
    replicas = []
    for position, item in enumerate(items, start=1):
        label = f"{key} (URL {position} of {len(items)})"
        replica = parse_url(item, label)
        if replica.get_backend_name() != primary.get_backend_name():
            raise ConfigurationError(
                f"{label} is a {replica.get_backend_name()!r} database, but the primary is "
                f"{primary.get_backend_name()!r}: a replica serves the same database"
            )
        replicas.append(replica)
    return tuple(replicas)


def _whole_at_least(minimum: int, hint: str = "") -> Any:
    def check(label: str, value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(
                f"{label} must be a whole number, at least {minimum}{hint}, got {value!r}"
            )
        return value

    return check


def _seconds(allow_zero: bool, hint: str = "") -> Any:
    lowest = "0 or more" if allow_zero else "more than 0"

    def check(label: str, value: float) -> float:
        ok = (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and math.isfinite(value)
            and (value >= 0 if allow_zero else value > 0)
            and value <= MAX_SECONDS
        )
        if not ok:
            raise ConfigurationError(
                f"{label} must be a number of seconds, {lowest} and at most "
                f"{MAX_SECONDS:g} (one day){hint}, got {value!r}"
            )
        return float(value)

    return check


def _check_recycle(label: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value > 0):
        raise ConfigurationError(
            f"{label} must be a number of seconds more than 0, or -1 (off), got {value!r}"
        )
    return value


def _check_flag(label: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{label} must be True or False, got {value!r}")
    return value


def _check_pgbouncer(label: str, value: str | None) -> str | None:
    if value is not None and value not in PGBOUNCER_MODES:
        raise ConfigurationError(
            f"{label} must be 'transaction' or unset (session pooling needs no setting), "
            f"got {value!r}"
        )
    return value


_CHECKS: dict[str, Any] = {
    "echo": _check_flag,
    "pool_pre_ping": _check_flag,
    # 0 is SQLAlchemy's "no limit": a pool that can open as many connections as asked.
    "pool_size": _whole_at_least(1, " (0 would mean no limit)"),
    # -1 is SQLAlchemy's "no limit" too: refused for the same reason.
    "max_overflow": _whole_at_least(0, " (-1, no limit, is refused)"),
    "pool_timeout": _seconds(allow_zero=False),
    "connect_timeout": _seconds(allow_zero=False),
    "pool_pre_ping_idle": _seconds(allow_zero=True, hint="; 0 pings every checkout"),
    "pool_recycle": _check_recycle,
    "pgbouncer": _check_pgbouncer,
    "replica_wait": _seconds(allow_zero=True, hint="; 0 never waits for a replica"),
    "replica_max_lag": _seconds(allow_zero=False),
    "replica_retry_after": _seconds(allow_zero=False),
}


def factory_settings(url: object, engine: object, settings: Settings | None) -> Settings | None:
    """The settings of a session factory given at most one of ``url``, ``engine``,
    ``settings`` (``None`` when an engine is adopted; the environment when none is given).
    """
    arguments = (("url", url), ("engine", engine), ("settings", settings))
    given = [name for name, value in arguments if value is not None]
    if len(given) > 1:
        raise TypeError(f"give at most one of url, engine, settings; got {' and '.join(given)}")
    if engine is not None:
        return None
    if settings is not None:
        return settings
    if url is None:
        return Settings.from_env()
    return Settings(url=parse_url(url, "url"), source="url")


def is_sqlite_memory(url: URL) -> bool:
    """True for an in-memory SQLite URL: a database private to each connection."""
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or "mode=memory" in database
    )


def parse_url(raw: object, key: str) -> URL:
    """Parse ``raw`` as a SQLAlchemy URL whose driver is known; errors name ``key`` and
    never show a secret."""
    if isinstance(raw, URL):
        url = raw
    else:
        text = str(raw).strip()
        try:
            url = make_url(text)
            url.port  # noqa: B018 - the port is parsed lazily; a bad one must fail here
        except (ArgumentError, ValueError):
            # Without '://' the value may be anything, a pasted password included: not shown.
            shown = (
                repr(redact_url(text)) if _SCHEME.match(text) else "(no 'dialect://'; value hidden)"
            )
            raise ConfigurationError(
                f"{key} is not a valid SQLAlchemy URL: {shown} "
                f"(expected 'dialect+driver://user:password@host:port/database')"
            ) from None
    if url.host and "@" in url.host:
        # SQLAlchemy ends the password at the first '@': the rest would be sent as the host
        # name, and drivers print host names in their errors.
        raise ConfigurationError(
            f"{key} has a raw '@' in its password ({display_url(url)}): percent-encode "
            f"it as %40 (and '/' as %2F, ':' as %3A, '#' as %23)"
        )
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"{key} names an unknown database driver {url.drivername!r} "
            f"(in {display_url(url)}); check the part before '://'"
        ) from None
    password = url.query.get("password")
    if url.password is None and isinstance(password, str):
        # The same connect argument for every driver, but SQLAlchemy's own str(url) and
        # Engine repr hide only the userinfo password: move it there.
        url = url.difference_update_query(["password"]).set(password=password)
    return url


def _to_int(key: str, raw: object) -> int:
    if isinstance(raw, bool):
        raise ConfigurationError(f"{key} must be a whole number, got {raw!r}")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ConfigurationError(f"{key} must be a whole number, got {raw!r}") from None


def _to_float(key: str, raw: object) -> float:
    if isinstance(raw, bool):
        raise ConfigurationError(f"{key} must be a number of seconds, got {raw!r}")
    try:
        return float(str(raw).strip())
    except ValueError:
        raise ConfigurationError(f"{key} must be a number of seconds, got {raw!r}") from None


def _to_pgbouncer(key: str, raw: object) -> str:
    return _check_pgbouncer(key, str(raw).strip().lower()) or ""


def to_bool(key: str, raw: object) -> bool:
    """Read a flag: true/false, 1/0, t/f, yes/no, on/off in any case; else an error naming key."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"{key} must be true or false (1/0, t/f, yes/no), got {raw!r}")
