"""Settings for one database: read from the environment or a mapping, validated once.

Nothing here imports Flask. The same names serve both sources: the environment uses
``DATABASE_URL`` and ``DB_*``; a Flask config uses ``UNIFIED_SESSION_DATABASE_URL`` and
``UNIFIED_SESSION_*`` (see :mod:`flask_unified_session.extension`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

__all__ = ["ConfigurationError", "Settings", "redact_url", "to_bool"]

_TRUE = frozenset({"true", "1", "t", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "f", "no", "n", "off", ""})
_PASSWORD_IN_URL = re.compile(r"(?P<head>://[^/@:]*:)[^@/]*(?P<tail>@)")


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names the setting, never a password."""


def redact_url(value: object) -> str:
    """Return ``value`` as text with any URL password replaced by ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", str(value))


@dataclass(frozen=True)
class Settings:
    """What it takes to build one engine. ``repr`` and ``str`` never show the password."""

    url: URL
    echo: bool = False
    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    pool_recycle: int | None = None
    pool_pre_ping: bool = True
    #: where the URL came from, used in error messages (``DATABASE_URL``, a config key, …)
    source: str = field(default="DATABASE_URL", compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``DATABASE_URL`` and ``DB_*`` from ``environ`` (default: ``os.environ``)."""
        return cls.from_mapping(os.environ if environ is None else environ)

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        *,
        url_keys: tuple[str, ...] = ("DATABASE_URL",),
        prefix: str = "DB_",
    ) -> Settings:
        """Read settings from ``mapping``.

        The URL is the first of ``url_keys`` present and non-empty; the other settings are
        ``{prefix}ECHO``, ``{prefix}POOL_SIZE``, ``{prefix}MAX_OVERFLOW``,
        ``{prefix}POOL_TIMEOUT``, ``{prefix}POOL_RECYCLE`` and ``{prefix}POOL_PRE_PING``.
        """
        url_key = next((k for k in url_keys if mapping.get(k) not in (None, "")), None)
        if url_key is None:
            raise ConfigurationError(
                f"{' or '.join(url_keys)} is not set: give the database URL, for example "
                f"'postgresql+psycopg://user:password@localhost/app' or 'sqlite:///app.db'"
            )
        values: dict[str, Any] = {"url": parse_url(mapping[url_key], url_key), "source": url_key}
        readers = {
            "echo": to_bool,
            "pool_size": _to_int,
            "max_overflow": _to_int,
            "pool_timeout": _to_float,
            "pool_recycle": _to_int,
            "pool_pre_ping": to_bool,
        }
        for name, read in readers.items():
            key = prefix + name.upper()
            raw = mapping.get(key)
            if raw is not None and raw != "":
                values[name] = value = read(key, raw)
                if value < (-1 if name == "pool_recycle" else 0):
                    raise ConfigurationError(f"{key} must not be negative, got {raw!r}")
        return cls(**values)

    def __post_init__(self) -> None:
        # Range checks live here so that direct construction is validated too.
        if isinstance(self.url, str):
            object.__setattr__(self, "url", parse_url(self.url, self.source))
        for name in ("pool_size", "max_overflow", "pool_timeout"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigurationError(f"{name} must be 0 or more, got {value!r}")
        if self.pool_recycle is not None and self.pool_recycle < -1:
            raise ConfigurationError(
                f"pool_recycle must be -1 (off) or more, got {self.pool_recycle!r}"
            )

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def is_sqlite_memory(self) -> bool:
        return is_sqlite_memory(self.url)

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`sqlalchemy.create_engine` that this backend accepts.

        In-memory SQLite gets one shared connection (``StaticPool``), since each new
        connection would otherwise see an empty database; pool sizing is only passed to
        backends whose pool takes it.
        """
        options: dict[str, Any] = {"echo": self.echo, "pool_pre_ping": self.pool_pre_ping}
        if self.is_sqlite_memory:
            from sqlalchemy.pool import StaticPool

            options["poolclass"] = StaticPool
            options["connect_args"] = {"check_same_thread": False}
            return options
        options.update(
            pool_size=self.pool_size,
            max_overflow=self.max_overflow,
            pool_timeout=self.pool_timeout,
        )
        if self.pool_recycle is not None:
            options["pool_recycle"] = self.pool_recycle
        if self.is_sqlite:
            # A file database is shared by the threads of the pool.
            options["connect_args"] = {"check_same_thread": False}
        return options


def is_sqlite_memory(url: URL) -> bool:
    """True for an in-memory SQLite URL: a database private to each connection."""
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or "mode=memory" in database
    )


def parse_url(raw: object, key: str) -> URL:
    """Parse ``raw`` as a SQLAlchemy URL whose driver is known; errors name ``key``."""
    if isinstance(raw, URL):
        url = raw
    else:
        text = str(raw).strip()
        try:
            url = make_url(text)
            url.port  # noqa: B018 - the port is parsed lazily; a bad one must fail here
        except (ArgumentError, ValueError):
            # Without '://' the value may be anything, a pasted password included: not shown.
            shown = repr(redact_url(text)) if "://" in text else "(no 'dialect://'; value hidden)"
            raise ConfigurationError(
                f"{key} is not a valid SQLAlchemy URL: {shown} "
                f"(expected 'dialect+driver://user:password@host:port/database')"
            ) from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"{key} names an unknown database driver {url.drivername!r} "
            f"(in {url!s}); check the part before '://'"
        ) from None
    return url


def _to_int(key: str, raw: object) -> int:
    if isinstance(raw, bool):
        raise ConfigurationError(f"{key} must be a whole number, got {raw!r}")
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ConfigurationError(f"{key} must be a whole number, got {raw!r}") from None


def _to_float(key: str, raw: object) -> float:
    try:
        return float(str(raw).strip())
    except ValueError:
        raise ConfigurationError(f"{key} must be a number of seconds, got {raw!r}") from None


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
