"""The project's declared dependencies, as top-level import names (for FUS003 and migrate).

``check`` often runs where the project's dependencies are not installed (a CI lint job, a
fresh clone). An import is only "missing" when it is neither in the tree, nor installed, nor
declared in ``requirements*.txt`` (or ``req*.txt``, ``requirements/*.txt``),
``pyproject.toml`` (PEP 621 or Poetry), ``setup.cfg`` or a ``Pipfile``.
"""

from __future__ import annotations

import codecs
import configparser
import re
from collections.abc import Iterable
from pathlib import Path

from flask_unified_session.tooling.config import read_toml

#: Distributions whose import name cannot be derived from the distribution name.
IMPORT_NAMES: dict[str, tuple[str, ...]] = {
    "pillow": ("PIL",),
    "pyyaml": ("yaml",),
    "beautifulsoup4": ("bs4",),
    "python_dotenv": ("dotenv",),
    "scikit_learn": ("sklearn",),
    "opencv_python": ("cv2",),
    "opencv_python_headless": ("cv2",),
    "python_telegram_bot": ("telegram",),
    "pyjwt": ("jwt",),
    "python_jose": ("jose",),
    "python_dateutil": ("dateutil",),
    "attrs": ("attr", "attrs"),
    "protobuf": ("google",),
    "mysqlclient": ("MySQLdb",),
    "psycopg2_binary": ("psycopg2",),
    "psycopg_binary": ("psycopg",),
    "pymongo": ("pymongo", "bson", "gridfs"),
    "dnspython": ("dns",),
    "pyserial": ("serial",),
    "python_multipart": ("multipart", "python_multipart"),
    "email_validator": ("email_validator",),
    "discord_py": ("discord",),
    "pytelegrambotapi": ("telebot",),
    "flask_restful": ("flask_restful",),
    "setuptools": ("setuptools", "pkg_resources"),
    "pywin32": ("win32api", "win32con", "pywintypes"),
}
#: What a declared distribution brings with it (imports commonly used without declaring them).
BRINGS: dict[str, tuple[str, ...]] = {
    "flask": ("werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker"),
    "sqlalchemy": ("greenlet",),
    "fastapi": ("starlette", "pydantic", "anyio", "typing_extensions"),
    "pydantic": ("pydantic_core", "typing_extensions", "annotated_types"),
    "requests": ("urllib3", "idna", "certifi", "charset_normalizer"),
    "httpx": ("httpcore", "anyio", "idna", "certifi", "sniffio"),
    "celery": ("kombu", "billiard", "vine", "click"),
    "aiogram": ("aiohttp", "magic_filter", "pydantic", "aiofiles"),
    "aiohttp": ("multidict", "yarl", "aiosignal", "frozenlist"),
    "uvicorn": ("h11", "click"),
    "flask_wtf": ("wtforms",),
    "flask_sqlalchemy": ("sqlalchemy",),
    "flask_migrate": ("alembic", "sqlalchemy"),
    "alembic": ("sqlalchemy", "mako"),
    "pandas": ("numpy", "dateutil", "pytz"),
    "telethon": ("rsa", "pyaes"),
    "python_telegram_bot": ("httpx",),
    "boto3": ("botocore", "s3transfer", "jmespath"),
    "pytest": ("_pytest", "pluggy", "iniconfig"),
}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    """PEP 503 normalisation, with ``_`` as the separator (the form import names use)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def import_names(distribution: str) -> set[str]:
    """Top-level import names a distribution probably provides (lower case except table hits)."""
    norm = normalise(distribution)
    names = {norm, *IMPORT_NAMES.get(norm, ())}
    for prefix in ("python_", "py_"):
        if norm.startswith(prefix):
            names.add(norm[len(prefix) :])
    for suffix in ("_python", "_py", "_binary", "_client", "_sdk"):
        if norm.endswith(suffix):
            names.add(norm[: -len(suffix)])
    if "_" in norm:
        names.add(norm.partition("_")[0])  # google_cloud_storage -> google, flask_login -> flask
    for name in list(names):
        names.update(BRINGS.get(name, ()))
    return names


def _requirement_names(lines: Iterable[str]) -> list[str]:
    names: list[str] = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(("-", "git+", "http:", "https:", "file:")):
            continue
        match = _NAME.match(line)
        if match:
            names.append(match.group(1))
    return names


def _from_requirements(root: Path) -> list[str]:
    patterns = ("*requirements*.txt", "req*.txt", "requirements/*.txt", "requirements/*.in")
    files = sorted({path for pattern in patterns for path in root.glob(pattern)})
    names: list[str] = []
    for path in files:
        try:
            names += _requirement_names(_read_text(path.read_bytes()).splitlines())
        except OSError:
            continue
    return names


def _read_text(data: bytes) -> str:
    """Text of a requirements file; ``pip freeze > req.txt`` in PowerShell writes UTF-16."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def _from_pyproject(root: Path) -> list[str]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return []
    try:
        data = read_toml(path)
    except Exception:  # a broken pyproject is the configuration loader's error to report
        return []
    if data is None:
        return []
    names: list[str] = []
    project = data.get("project", {})
    if isinstance(project, dict):
        names += _requirement_names(str(d) for d in project.get("dependencies", []) or [])
        extras = project.get("optional-dependencies", {}) or {}
        if isinstance(extras, dict):
            for group in extras.values():
                names += _requirement_names(str(d) for d in group or [])
    poetry = data.get("tool", {}).get("poetry", {}) if isinstance(data.get("tool"), dict) else {}
    if isinstance(poetry, dict):
        for key in ("dependencies", "dev-dependencies"):
            table = poetry.get(key, {})
            if isinstance(table, dict):
                names += [str(name) for name in table if name != "python"]
        groups = poetry.get("group", {})
        if isinstance(groups, dict):
            for group in groups.values():
                table = group.get("dependencies", {}) if isinstance(group, dict) else {}
                names += [str(name) for name in table if name != "python"]
    return names


def _from_setup_cfg(root: Path) -> list[str]:
    path = root / "setup.cfg"
    if not path.is_file():
        return []
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return []
    names: list[str] = []
    if parser.has_option("options", "install_requires"):
        names += _requirement_names(parser.get("options", "install_requires").splitlines())
    if parser.has_section("options.extras_require"):
        for _key, value in parser.items("options.extras_require"):
            names += _requirement_names(value.splitlines())
    return names


def _from_pipfile(root: Path) -> list[str]:
    path = root / "Pipfile"
    if not path.is_file():
        return []
    try:
        data = read_toml(path)
    except Exception:  # not ours to validate
        return []
    names: list[str] = []
    for key in ("packages", "dev-packages"):
        table = (data or {}).get(key, {})
        if isinstance(table, dict):
            names += [str(name) for name in table]
    return names


def declared_distributions(root: Path) -> list[str]:
    """Distribution names declared by the project at ``root`` (empty when none are)."""
    return [
        *_from_requirements(root),
        *_from_pyproject(root),
        *_from_setup_cfg(root),
        *_from_pipfile(root),
    ]


def declared_imports(root: Path) -> frozenset[str]:
    """Lower-cased top-level import names the project's declared dependencies provide."""
    names: set[str] = set()
    for distribution in declared_distributions(root):
        names.update(name.lower() for name in import_names(distribution))
    return frozenset(names)
