"""Settings: defaults, parsing, and errors that name the setting but never a password."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.pool import StaticPool

from flask_unified_session import ConfigurationError, SessionFactory, Settings

PASSWORD = "hunter2-Secret"
URL = f"postgresql+psycopg://app:{PASSWORD}@db.example:5432/app"


def test_defaults_from_env() -> None:
    """Only DATABASE_URL given: pool 5 + 10 overflow, pre-ping on, echo off, timeout 30."""
    settings = Settings.from_env({"DATABASE_URL": URL})
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (5, 10, 30.0)
    assert settings.pool_pre_ping is True
    assert settings.echo is False
    assert settings.pool_recycle is None


def test_every_variable_is_read() -> None:
    """DB_* variables set every pool option."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": URL,
            "DB_ECHO": "T",
            "DB_POOL_SIZE": "7",
            "DB_MAX_OVERFLOW": "0",
            "DB_POOL_TIMEOUT": "2.5",
            "DB_POOL_RECYCLE": "300",
            "DB_POOL_PRE_PING": "false",
        }
    )
    assert settings.echo is True
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (7, 0, 2.5)
    assert settings.pool_recycle == 300
    assert settings.pool_pre_ping is False


@pytest.mark.parametrize("value", ["true", "1", "t", "TRUE", "True"])
def test_echo_truthy_values(value: str) -> None:
    """DB_ECHO accepts true, 1 and t in any case."""
    assert Settings.from_env({"DATABASE_URL": URL, "DB_ECHO": value}).echo is True


def test_missing_url_names_the_variable() -> None:
    """No DATABASE_URL: a ValueError subclass that names the variable."""
    with pytest.raises(ValueError, match="DATABASE_URL is not set") as info:
        Settings.from_env({})
    assert isinstance(info.value, ConfigurationError)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DB_POOL_SIZE", "abc", "DB_POOL_SIZE must be a whole number, got 'abc'"),
        ("DB_POOL_SIZE", "-1", "DB_POOL_SIZE must not be negative, got '-1'"),
        ("DB_MAX_OVERFLOW", "1.5", "DB_MAX_OVERFLOW must be a whole number, got '1.5'"),
        ("DB_POOL_TIMEOUT", "soon", "DB_POOL_TIMEOUT must be a number of seconds, got 'soon'"),
        ("DB_ECHO", "maybe", "DB_ECHO must be true or false"),
        ("DB_POOL_PRE_PING", "sometimes", "DB_POOL_PRE_PING must be true or false"),
    ],
)
def test_malformed_value_names_variable_and_value(key: str, value: str, message: str) -> None:
    """A malformed value names the variable and the value, and not the password."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"DATABASE_URL": URL, key: value})
    assert message in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@host:notaport/db",
        f"not a url {PASSWORD}",
        f"://app:{PASSWORD}@host/db",
    ],
)
def test_unparsable_url_is_named_without_password(url: str) -> None:
    """A URL SQLAlchemy cannot parse: the error names DATABASE_URL and hides the password."""
    with pytest.raises(ConfigurationError, match="DATABASE_URL is not a valid") as info:
        Settings.from_env({"DATABASE_URL": url})
    assert PASSWORD not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unknown_driver_is_named_without_password() -> None:
    """An unknown dialect or driver names the setting and the driver, not the password."""
    with pytest.raises(
        ConfigurationError, match="unknown database driver 'postgresql\\+nodb'"
    ) as e:
        Settings.from_env({"DATABASE_URL": f"postgresql+nodb://app:{PASSWORD}@h/db"})
    assert "DATABASE_URL" in str(e.value)
    assert PASSWORD not in str(e.value)


def test_password_absent_from_repr_str_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Settings, factories and the echo log never show the password."""
    caplog.set_level(logging.DEBUG)
    settings = Settings.from_env({"DATABASE_URL": URL})
    factory = SessionFactory(settings=settings)
    for text in (repr(settings), str(settings), repr(factory), str(factory.engine.url)):
        assert PASSWORD not in text
    assert PASSWORD not in caplog.text


def test_flask_style_keys_with_fallback_order() -> None:
    """from_mapping takes the first URL key that is set and a custom prefix."""
    settings = Settings.from_mapping(
        {"SECOND": "sqlite:///a.db", "APP_POOL_SIZE": "3"},
        url_keys=("FIRST", "SECOND"),
        prefix="APP_",
    )
    assert settings.url.database == "a.db"
    assert settings.source == "SECOND"
    assert settings.pool_size == 3
    with pytest.raises(ConfigurationError, match="APP_POOL_SIZE"):
        Settings.from_mapping(
            {"FIRST": "sqlite://", "APP_POOL_SIZE": "x"}, url_keys=("FIRST",), prefix="APP_"
        )


def test_sqlite_memory_gets_arguments_sqlite_accepts() -> None:
    """sqlite:// gets a StaticPool and no pool sizing, and the engine builds."""
    settings = Settings.from_env({"DATABASE_URL": "sqlite://", "DB_POOL_SIZE": "3"})
    options = settings.engine_options()
    assert options["poolclass"] is StaticPool
    assert "pool_size" not in options and "max_overflow" not in options
    factory = SessionFactory(settings=settings)
    with factory.session_scope() as session:
        assert session.connection().exec_driver_sql("select 1").scalar() == 1


def test_sqlite_file_builds_with_pool_sizes(tmp_path: object) -> None:
    """A file SQLite URL with the default pool sizes builds an engine that works."""
    factory = SessionFactory(f"sqlite:///{tmp_path}/x.db")
    with factory.session_scope() as session:
        assert session.connection().exec_driver_sql("select 1").scalar() == 1
    assert factory.engine.pool.size() == 5  # type: ignore[attr-defined]


def test_missing_driver_module_is_a_configuration_error() -> None:
    """A known dialect whose driver is not installed: a clear error naming the setting."""
    with pytest.raises(
        ConfigurationError, match="DATABASE_URL: the driver for 'postgresql\\+pg8000'"
    ):
        SessionFactory(
            settings=Settings.from_env({"DATABASE_URL": f"postgresql+pg8000://u:{PASSWORD}@h/db"})
        )


def test_direct_construction_is_validated() -> None:
    """Settings(...) built in code rejects a negative pool size too."""
    with pytest.raises(ConfigurationError, match="pool_size must be 0 or more"):
        Settings(url="sqlite:///x.db", pool_size=-2)  # type: ignore[arg-type]


def test_factory_takes_at_most_one_source() -> None:
    """SessionFactory refuses url together with engine or settings."""
    with pytest.raises(TypeError, match="at most one of url, engine, settings"):
        SessionFactory("sqlite://", settings=Settings.from_env({"DATABASE_URL": "sqlite://"}))
