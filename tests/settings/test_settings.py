"""Settings: defaults, parsing, ranges, and errors that name the setting but never a secret."""

from __future__ import annotations

import math

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from flask_unified_session.config import (
    MAX_SECONDS,
    ConfigurationError,
    Settings,
    display_url,
    redact_text,
    redact_url,
)

PASSWORD = "hunter2-Secret"
URL = f"postgresql+psycopg://app:{PASSWORD}@db.example:5432/app"
FLASK = "UNIFIED_SESSION_"


def from_env(**values: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": URL, **values})


def raised(**values: object) -> ConfigurationError:
    """The ConfigurationError of these env values; checked to hold no secret."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"DATABASE_URL": URL, **values})  # type: ignore[dict-item]
    error = info.value
    for text in (str(error), repr(error), repr(error.args)):
        assert PASSWORD not in text
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error


def test_defaults_from_env() -> None:
    """Only DATABASE_URL: pool 5 + 10, timeout 30, pre-ping after 1 s idle, connect 10 s."""
    settings = Settings.from_env({"DATABASE_URL": URL})
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (5, 10, 30.0)
    assert settings.pool_pre_ping is True and settings.pool_pre_ping_idle == 1.0
    assert settings.connect_timeout == 10.0
    assert settings.echo is False and settings.pool_recycle is None
    assert settings.replica_urls == () and settings.pgbouncer is None
    assert settings.async_url.drivername == "postgresql+psycopg"


def test_every_variable_is_read() -> None:
    """DB_* and DATABASE_ASYNC_URL set every option."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": URL,
            "DATABASE_ASYNC_URL": "postgresql+asyncpg://app:x@db.example/app",
            "DB_ECHO": "T",
            "DB_POOL_SIZE": "7",
            "DB_MAX_OVERFLOW": "0",
            "DB_POOL_TIMEOUT": "2.5",
            "DB_POOL_RECYCLE": "300",
            "DB_POOL_PRE_PING": "false",
            "DB_POOL_PRE_PING_IDLE": "0",
            "DB_CONNECT_TIMEOUT": "3",
            "DB_REPLICA_URLS": "postgresql+psycopg://r@replica1/app, postgresql://r@replica2/app",
            "DB_PGBOUNCER": "Transaction",
        }
    )
    assert settings.echo is True
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (7, 0, 2.5)
    assert settings.pool_recycle == 300
    assert settings.pool_pre_ping is False and settings.pool_pre_ping_idle == 0.0
    assert settings.connect_timeout == 3.0
    assert settings.async_url.drivername == "postgresql+asyncpg"
    assert [u.host for u in settings.replica_urls] == ["replica1", "replica2"]
    assert settings.pgbouncer == "transaction"


def test_flask_prefix_reads_every_setting() -> None:
    """from_mapping(prefix='UNIFIED_SESSION_') reads the same settings under Flask names."""
    settings = Settings.from_mapping(
        {
            "UNIFIED_SESSION_DATABASE_URL": URL,
            f"{FLASK}DATABASE_ASYNC_URL": "postgresql+psycopg_async://app@db.example/app",
            f"{FLASK}POOL_SIZE": 20,
            f"{FLASK}POOL_PRE_PING": True,
            f"{FLASK}POOL_PRE_PING_IDLE": 5,
            f"{FLASK}CONNECT_TIMEOUT": 4,
            f"{FLASK}REPLICA_URLS": ["postgresql://r@replica1/app"],
            f"{FLASK}PGBOUNCER": "transaction",
        },
        url_keys=("UNIFIED_SESSION_DATABASE_URL",),
        prefix=FLASK,
    )
    assert settings.pool_size == 20 and settings.pool_pre_ping_idle == 5.0
    assert settings.connect_timeout == 4.0 and settings.pgbouncer == "transaction"
    assert settings.async_url.drivername == "postgresql+psycopg_async"
    assert settings.replica_urls[0].host == "replica1"
    with pytest.raises(ConfigurationError, match="UNIFIED_SESSION_POOL_TIMEOUT"):
        Settings.from_mapping(
            {"U": URL, f"{FLASK}POOL_TIMEOUT": math.inf}, url_keys=("U",), prefix=FLASK
        )


def test_missing_url_names_the_variable() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL is not set") as info:
        Settings.from_env({})
    assert isinstance(info.value, ConfigurationError)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DB_POOL_SIZE", "abc", "DB_POOL_SIZE must be a whole number, got 'abc'"),
        ("DB_POOL_SIZE", "-1", "DB_POOL_SIZE must be a whole number, at least 1"),
        ("DB_POOL_SIZE", "0", "(0 would mean no limit)"),
        ("DB_MAX_OVERFLOW", "1.5", "DB_MAX_OVERFLOW must be a whole number, got '1.5'"),
        ("DB_MAX_OVERFLOW", "-1", "DB_MAX_OVERFLOW must be a whole number, at least 0"),
        ("DB_POOL_TIMEOUT", "soon", "DB_POOL_TIMEOUT must be a number of seconds, got 'soon'"),
        ("DB_POOL_TIMEOUT", "inf", "DB_POOL_TIMEOUT must be a number of seconds, more than 0"),
        ("DB_POOL_TIMEOUT", "nan", "DB_POOL_TIMEOUT must be"),
        ("DB_POOL_TIMEOUT", "1e12", "at most 86400"),
        ("DB_POOL_TIMEOUT", "0", "DB_POOL_TIMEOUT must be"),
        ("DB_POOL_TIMEOUT", "-1", "DB_POOL_TIMEOUT must be"),
        ("DB_CONNECT_TIMEOUT", "inf", "DB_CONNECT_TIMEOUT must be"),
        ("DB_CONNECT_TIMEOUT", "nan", "DB_CONNECT_TIMEOUT must be"),
        ("DB_CONNECT_TIMEOUT", "0", "DB_CONNECT_TIMEOUT must be"),
        ("DB_CONNECT_TIMEOUT", "-3", "DB_CONNECT_TIMEOUT must be"),
        ("DB_CONNECT_TIMEOUT", "1e12", "DB_CONNECT_TIMEOUT must be"),
        ("DB_POOL_PRE_PING_IDLE", "-1", "DB_POOL_PRE_PING_IDLE must be"),
        ("DB_POOL_PRE_PING_IDLE", "inf", "DB_POOL_PRE_PING_IDLE must be"),
        ("DB_POOL_RECYCLE", "0", "DB_POOL_RECYCLE must be a number of seconds more than 0"),
        ("DB_POOL_RECYCLE", "-2", "or -1 (off)"),
        ("DB_POOL_RECYCLE", "1.5", "DB_POOL_RECYCLE must be a whole number"),
        ("DB_PGBOUNCER", "session", "DB_PGBOUNCER must be 'transaction' or unset"),
        ("DB_PGBOUNCER", "true", "DB_PGBOUNCER must be"),
        ("DB_ECHO", "maybe", "DB_ECHO must be true or false"),
        ("DB_POOL_PRE_PING", "sometimes", "DB_POOL_PRE_PING must be true or false"),
        ("DB_REPLICA_URLS", "mysql+pymysql://r@h/db", "DB_REPLICA_URLS (URL 1 of 1)"),
        ("DATABASE_ASYNC_URL", "nonsense", "DATABASE_ASYNC_URL is not a valid"),
    ],
)
def test_bad_value_names_variable_never_password(key: str, value: str, message: str) -> None:
    assert message in str(raised(**{key: value}))


def test_value_that_is_the_password_is_not_echoed() -> None:
    """The password pasted into the wrong variable is not repeated by the error."""
    error = raised(DB_POOL_SIZE=PASSWORD)
    assert "DB_POOL_SIZE must be a whole number, got '***'" in str(error)


def test_range_limits_are_accepted() -> None:
    settings = from_env(DB_POOL_TIMEOUT=str(MAX_SECONDS), DB_CONNECT_TIMEOUT="0.5")
    assert settings.pool_timeout == MAX_SECONDS and settings.connect_timeout == 0.5
    assert from_env(DB_POOL_RECYCLE="-1").pool_recycle == -1


def test_replica_error_names_the_position_and_hides_password() -> None:
    error = raised(DB_REPLICA_URLS=f"postgresql://r@ok/db,postgresql://r:{PASSWORD}@h:x/db")
    assert "DB_REPLICA_URLS (URL 2 of 2) is not a valid SQLAlchemy URL" in str(error)


def test_pgbouncer_needs_postgresql() -> None:
    with pytest.raises(ConfigurationError, match="needs a PostgreSQL URL"):
        Settings.from_env({"DATABASE_URL": "sqlite:///x.db", "DB_PGBOUNCER": "transaction"})


# --- URLs and redaction ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@host:notaport/db",
        f"postgresql+psycopg://app:pa/{PASSWORD}@db.internal:54x32/app",  # raw '/'
        f"postgresql+psycopg://app:p@{PASSWORD}@db.internal:54x32/app",  # raw '@'
        f"postgresql+psycopg://app:p:{PASSWORD}@db.internal:54x32/app",  # raw ':'
        f"postgresql+psycopg://app:p?{PASSWORD}@db.internal:54x32/app",  # raw '?'
        f"postgresql+psycopg://app:{PASSWORD}€@db.internal:54x32/app",
        f"postgresql://app@h:x/db?password={PASSWORD}",
        f"not a url {PASSWORD}",
        f"://app:{PASSWORD}@host/db",
        PASSWORD,
    ],
)
def test_unparsable_url_is_named_without_password(url: str) -> None:
    error = raised(DATABASE_URL=url)
    assert "DATABASE_URL is not a valid SQLAlchemy URL" in str(error)


def test_raw_at_in_password_is_refused() -> None:
    """SQLAlchemy would send the tail of the password as the host name: refused."""
    error = raised(DATABASE_URL=f"postgresql+psycopg://app:S3@{PASSWORD}@127.0.0.1/test")
    assert "percent-encode it as %40" in str(error)
    error = raised(DATABASE_URL=f"postgresql://u:x!@#{PASSWORD}@127.0.0.1/test")
    assert "DATABASE_URL has a raw '@' in its password" in str(error)


def test_unknown_driver_is_named_without_password() -> None:
    error = raised(DATABASE_URL=f"postgresql+nodb://app:{PASSWORD}@h/db?token={PASSWORD}")
    assert "unknown database driver 'postgresql+nodb'" in str(error)
    assert "DATABASE_URL" in str(error)


def test_query_string_secrets_hidden_in_repr_and_str() -> None:
    secret_url = f"postgresql+psycopg://app@db/app?password={PASSWORD}&sslpassword={PASSWORD}x"
    settings = Settings.from_env(
        {
            "DATABASE_URL": secret_url,
            "DB_REPLICA_URLS": f"postgresql://r:{PASSWORD}@replica/app?token={PASSWORD}",
            "DATABASE_ASYNC_URL": f"postgresql+psycopg://a:{PASSWORD}@db/app",
        }
    )
    for text in (repr(settings), str(settings), display_url(settings.url)):
        assert PASSWORD not in text
    assert "password=***" in repr(settings) and "sslpassword=***" in repr(settings)
    assert set(settings.secrets()) >= {PASSWORD, PASSWORD + "x"}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:pa/SECRET@h:x/db", "postgresql://u:***@h:x/db"),
        ("postgresql://u:p@SECRET@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:S3!@#SECRET@127.0.0.1/test", "postgresql://u:***@127.0.0.1/test"),
        ("postgresql://u@h/db?password=SECRET&a=1", "postgresql://u@h/db?password=***&a=1"),
        (
            "postgresql://u@h/db?a=x@y&pwd=SECRET;token=SECRET",
            "postgresql://u@h/db?a=x@y&pwd=***;token=***",
        ),
        ("postgresql://pass:pa=SECRET@h/db", "postgresql://pass:***@h/db"),
        ("mysql://u:x?token=SECRET@h/db", "mysql://u:***@h/db"),
        (
            "failed for 'mysql+pymysql://r:SECRET@h/db' and \"postgresql://x:SECRET@z\" ok",
            "failed for 'mysql+pymysql://r:***@h/db' and \"postgresql://x:***@z\" ok",
        ),
        ("no url here", "no url here"),
    ],
)
def test_redact_url_text(text: str, shown: str) -> None:
    assert redact_url(text) == shown


def test_display_url_of_parsed_url() -> None:
    url = make_url("postgresql+psycopg://app:SECRET@db:5432/app?password=SECRET&app=x")
    assert display_url(url) == "postgresql+psycopg://app:***@db:5432/app?app=x&password=***"
    assert redact_url(url) == display_url(url)
    tricky = make_url("postgresql://u:p@SECRET@h/db")  # SQLAlchemy: host 'SECRET@h'
    assert "SECRET" not in display_url(tricky)


def test_redact_text_hides_secret_in_any_spelling() -> None:
    secret = "p@ss/€ word"
    text = f"a {secret} b p%40ss%2F%E2%82%AC%20word c p%40ss%2F%E2%82%AC+word d p@ss/\\u20ac word"
    assert redact_text(text, [secret]) == "a *** b *** c *** d ***"
    assert redact_text("keep", ["", "zz"]) == "keep"


# --- async URL, engine options --------------------------------------------------------


@pytest.mark.parametrize(
    ("sync", "async_"),
    [
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("mysql+pymysql://u@h/db", "mysql+aiomysql://u@h/db"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_async_url_derived(sync: str, async_: str) -> None:
    settings = Settings.from_env({"DATABASE_URL": sync})
    assert settings.async_url.render_as_string(hide_password=False) == async_


def test_async_url_without_twin_is_an_error_only_when_asked() -> None:
    settings = Settings.from_env({"DATABASE_URL": f"oracle+oracledb://u:{PASSWORD}@h/db"})
    with pytest.raises(ConfigurationError, match="DATABASE_ASYNC_URL is not set") as info:
        settings.async_url  # noqa: B018
    assert PASSWORD not in str(info.value)


def test_engine_options_never_pass_pool_pre_ping() -> None:
    """Pre-ping is the idle pre-ping of connections.prepare_engine, not SQLAlchemy's."""
    options = from_env().engine_options()
    assert "pool_pre_ping" not in options
    assert options["connect_args"] == {"connect_timeout": 10}


@pytest.mark.parametrize(
    ("url", "connect_args"),
    [
        ("postgresql+psycopg://u@h/db", {"connect_timeout": 3}),
        ("postgresql+psycopg2://u@h/db", {"connect_timeout": 3}),
        ("postgresql+asyncpg://u@h/db", {"timeout": 2.5}),
        ("mysql+pymysql://u@h/db", {"connect_timeout": 2.5}),
        ("mysql+aiomysql://u@h/db", {"connect_timeout": 2.5}),
        ("mysql+mysqldb://u@h/db", {"connect_timeout": 3}),
        ("postgresql+psycopg://u@h/db?connect_timeout=7", {}),  # the URL's own wins
        ("sqlite:///x.db", {"check_same_thread": False}),  # sqlite's timeout is a lock wait
    ],
)
def test_connect_timeout_per_driver(url: str, connect_args: dict[str, object]) -> None:
    settings = Settings.from_env({"DATABASE_URL": url, "DB_CONNECT_TIMEOUT": "2.5"})
    assert settings.engine_options().get("connect_args", {}) == connect_args


def test_pgbouncer_transaction_mode_options() -> None:
    settings = from_env(DB_PGBOUNCER="transaction")
    assert settings.engine_options()["connect_args"]["prepare_threshold"] is None
    psycopg2 = Settings.from_env(
        {"DATABASE_URL": "postgresql+psycopg2://u@h/db", "DB_PGBOUNCER": "transaction"}
    )
    assert "prepare_threshold" not in psycopg2.engine_options()["connect_args"]


def test_sqlite_memory_gets_arguments_sqlite_accepts() -> None:
    options = Settings.from_env({"DATABASE_URL": "sqlite://", "DB_POOL_SIZE": "3"}).engine_options()
    assert options["poolclass"] is StaticPool
    assert "pool_size" not in options and "max_overflow" not in options


def test_flask_style_keys_with_fallback_order() -> None:
    settings = Settings.from_mapping(
        {"SECOND": "sqlite:///a.db", "APP_POOL_SIZE": "3"},
        url_keys=("FIRST", "SECOND"),
        prefix="APP_",
    )
    assert settings.url.database == "a.db" and settings.source == "SECOND"
    assert settings.pool_size == 3


def test_direct_construction_is_validated() -> None:
    """Settings(...) built in code is checked too, naming the field."""
    with pytest.raises(ConfigurationError, match="pool_size must be a whole number, at least 1"):
        Settings(url="sqlite:///x.db", pool_size=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pool_timeout must be"):
        Settings(url=make_url("sqlite:///x.db"), pool_timeout=math.nan)
    with pytest.raises(ConfigurationError, match="replica_urls"):
        Settings(url=make_url("sqlite:///x.db"), replica_urls="postgresql://h/db")  # type: ignore[arg-type]
