"""Project discovery and the ``[tool.flask-unified-session]`` configuration table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flask_unified_session.tooling.findings import RULES

ROOT_MARKERS = ("pyproject.toml", "setup.cfg", ".git")
SECTION = "tool.flask-unified-session"

DEFAULT_MANAGER_NAMES = ("db_manager", "self.db_manager", "database_manager")
DEFAULT_SESSION_FACTORIES = ("SessionLocal", "get_session", "create_session")
DEFAULT_MIGRATE_TARGET = "current_app.unified_session_manager.get_db_session()"
DEFAULT_SERVICE_TARGET = "self.db_session()"
DEFAULT_FRAMEWORK_TARGET = "session_scope()"
DEFAULT_ASYNC_TARGET = "async_session_scope()"
DEFAULT_ACCESSORS = ("get_session",)
DEFAULT_ASYNC_FACTORIES = (
    "AsyncSessionLocal",
    "async_session",
    "async_session_maker",
    "async_session_factory",
    "AsyncSession",
)


class ConfigError(Exception):
    """Invalid configuration; the message names the file and the key."""


@dataclass(frozen=True)
class Config:
    """Settings of ``check`` and ``migrate`` (defaults when no configuration is found)."""

    manager_names: tuple[str, ...] = DEFAULT_MANAGER_NAMES
    session_factories: tuple[str, ...] = DEFAULT_SESSION_FACTORIES
    engine_modules: tuple[str, ...] = ()
    ignore: frozenset[str] = frozenset()
    exclude: tuple[str, ...] = ()
    migrate_target: str = DEFAULT_MIGRATE_TARGET
    service_target: str = DEFAULT_SERVICE_TARGET
    framework_target: str = DEFAULT_FRAMEWORK_TARGET
    async_target: str = DEFAULT_ASYNC_TARGET
    #: methods of a db manager that hand out a new session (``db_manager.get_session()``);
    #: a name other than get_session also matches as a plain call (``SessionLocal()``)
    accessors: tuple[str, ...] = DEFAULT_ACCESSORS
    #: async session factories used as ``async with Factory() as session:``
    async_factories: tuple[str, ...] = DEFAULT_ASYNC_FACTORIES
    source: Path | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def is_manager(self, dotted: str | None) -> bool:
        """True when ``dotted`` (e.g. ``self.db_manager``) names a db manager.

        A configured name without dots also matches as the last attribute (``app.db_manager``).
        """
        if dotted is None:
            return False
        if dotted in self.manager_names:
            return True
        last = dotted.rpartition(".")[2]
        return any("." not in name and name == last for name in self.manager_names)


def find_project_root(path: Path) -> Path:
    """The nearest folder at or above ``path`` holding a root marker, else ``path``'s folder."""
    start = path.resolve()
    if not start.is_dir():
        start = start.parent
    for folder in (start, *start.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return start


def read_toml(path: Path) -> dict[str, Any] | None:
    """Parse a TOML file; None when no TOML parser is available (Python 3.10 without tomli)."""
    if sys.version_info >= (3, 11):
        import tomllib

        with path.open("rb") as handle:
            try:
                return tomllib.load(handle)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:  # pragma: no cover - exercised on Python 3.10 only
        import tomli  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # pragma: no cover
        return None
    with path.open("rb") as handle:  # pragma: no cover
        try:
            data: dict[str, Any] = tomli.load(handle)
        except tomli.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        return data


def _string_list(path: Path, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: [{SECTION}] {key} must be a list of strings")
    return tuple(value)


def _string(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: [{SECTION}] {key} must be a non-empty string")
    return value


# Key in [tool.flask-unified-session] -> (Config field, reader); "ignore" is checked apart.
_KEYS: dict[str, tuple[str, Callable[[Path, str, object], object]]] = {
    "manager-names": ("manager_names", _string_list),
    "session-factories": ("session_factories", _string_list),
    "engine-modules": ("engine_modules", _string_list),
    "exclude": ("exclude", _string_list),
    "migrate-target": ("migrate_target", _string),
    "service-target": ("service_target", _string),
    "framework-target": ("framework_target", _string),
    "async-target": ("async_target", _string),
    "accessors": ("accessors", _string_list),
    "async-session-factories": ("async_factories", _string_list),
}


def parse_table(path: Path, table: object) -> Config:
    """Build a :class:`Config` from the ``[tool.flask-unified-session]`` table of ``path``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{SECTION}] must be a table")
    config = Config(source=path)
    for key, value in table.items():
        if key == "ignore":
            codes = _string_list(path, key, value)
            unknown = [c for c in codes if c not in RULES]
            if unknown:
                raise ConfigError(
                    f"{path}: [{SECTION}] ignore: unknown rule code(s) {', '.join(unknown)}"
                )
            config = replace(config, ignore=frozenset(codes))
            continue
        if key not in _KEYS:
            raise ConfigError(f"{path}: [{SECTION}] unknown key {key!r}")
        field_name, read = _KEYS[key]
        change: dict[str, Any] = {field_name: read(path, key, value)}
        config = replace(config, **change)
    return config


def load_config(root: Path) -> Config:
    """Read the configuration of the project at ``root`` (defaults when there is none)."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return Config()
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{pyproject}: cannot read: {exc}") from exc
    if "flask-unified-session" not in text:
        return Config()
    data = read_toml(pyproject)
    if data is None:  # pragma: no cover - Python 3.10 without tomli
        return Config(
            warnings=(
                f"{pyproject}: [{SECTION}] ignored: reading it on Python 3.10 needs tomli "
                "(pip install tomli)",
            )
        )
    tool = data.get("tool", {})
    if not isinstance(tool, dict) or "flask-unified-session" not in tool:
        return Config()
    return parse_table(pyproject, tool["flask-unified-session"])
