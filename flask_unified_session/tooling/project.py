"""File discovery and module resolution without executing project code."""

from __future__ import annotations

import errno
import fnmatch
import importlib.machinery
import importlib.util
import io
import sys
import tokenize
from collections.abc import Iterable, Sequence
from pathlib import Path

SKIP_DIRS = frozenset(
    {"__pycache__", "node_modules", "build", "dist", "site-packages", "venv", "env"}
)


def safe_resolve(path: Path) -> Path:
    """``path.resolve()``, or its absolute form when it is a symlink loop (never raises)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: "Symlink loop" before Python 3.13
        return path.absolute()


def describe_unreadable(path: Path, exc: OSError) -> str:
    """Why ``path`` cannot be read, naming the link and its target the right way round."""
    if path.is_symlink():
        try:
            target = path.readlink()
        except OSError:
            target = None
        if exc.errno == errno.ELOOP:
            return f"cannot read: {path.name} is a symbolic link loop"
        if target is not None and not path.exists():
            return f"cannot read: {path.name} is a link to {target}, which does not exist"
    return f"cannot read: {exc.strerror or exc}"


def source_encoding(data: bytes) -> str:
    """The PEP 263 encoding of Python source ``data`` (``utf-8`` without a declaration)."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except (SyntaxError, LookupError):
        return "utf-8"
    return "utf-8" if encoding == "utf-8-sig" else encoding


def decode_source(data: bytes) -> str:
    """Python source text in its declared encoding (undecodable bytes replaced)."""
    return data.decode(source_encoding(data), errors="replace")


def _excluded(path: Path, root: Path, exclude: Sequence[str]) -> bool:
    try:
        rel = safe_resolve(path).relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    return any(fnmatch.fnmatch(rel, pattern) for pattern in exclude)


def iter_python_files(path: Path, root: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """Python files under ``path`` (or ``path`` itself), skipping hidden and build folders."""
    if path.is_file():
        return [path]
    found: list[Path] = []
    stack = [path]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if entry.is_dir():
                if entry.is_symlink():
                    continue  # never follow folder links (loops, vendored trees)
                if name.startswith(".") or name in SKIP_DIRS or name.endswith(".egg-info"):
                    continue
                if not _excluded(entry, root, exclude):
                    stack.append(entry)
            elif name.endswith(".py") and not _excluded(entry, root, exclude):
                found.append(entry)
    return sorted(found)


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` inside the project at ``root`` (``src/`` layout aware)."""
    try:
        rel = safe_resolve(path).relative_to(root)
    except ValueError:
        return path.stem
    parts = list(rel.with_suffix("").parts)
    if len(parts) > 1 and parts[0] == "src":
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


_SUFFIXES = (*importlib.machinery.all_suffixes(), ".pyi")


def _module_file_exists(folder: Path, name: str) -> bool:
    return any((folder / (name + suffix)).is_file() for suffix in _SUFFIXES)


class ModuleResolver:
    """Answers "does this module exist?" from the project tree, then the environment.

    Top-level names missing from the tree are looked up with :func:`importlib.util.find_spec`
    (which imports nothing for a top-level name); submodules are looked up on the file system,
    never imported. A top-level name that a declared dependency provides exists too: ``check``
    may run where the project's dependencies are not installed.
    """

    def __init__(self, root: Path, declared: frozenset[str] = frozenset()) -> None:
        self.root = root
        #: lower-cased import names of the project's declared dependencies
        self.declared = declared
        self.bases: tuple[Path, ...] = (root,) + (
            (root / "src",) if (root / "src").is_dir() else ()
        )
        self._tree: dict[tuple[Path, tuple[str, ...]], bool | None] = {}
        self._env: dict[tuple[str, ...], bool] = {}

    def _in_tree(self, base: Path, parts: tuple[str, ...]) -> bool | None:
        """True: found; False: the top-level name exists but a submodule does not; None: absent."""
        key = (base, parts)
        cached = self._tree.get(key, ...)
        if cached is not ...:
            return cached
        result: bool | None = True
        folder = base
        for index, part in enumerate(parts):
            if (folder / part).is_dir():
                folder = folder / part
                continue
            if _module_file_exists(folder, part):
                break  # a module file: deeper names are attributes, not our concern
            result = None if index == 0 else False
            break
        self._tree[key] = result
        return result

    def _in_env(self, parts: tuple[str, ...]) -> bool:
        cached = self._env.get(parts)
        if cached is not None:
            return cached
        result = self._find_in_env(parts)
        self._env[parts] = result
        return result

    @staticmethod
    def _find_in_env(parts: tuple[str, ...]) -> bool:
        top = parts[0]
        if top in sys.builtin_module_names or top in sys.modules:
            return True
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False
        locations: Iterable[str] | None = spec.submodule_search_locations
        for part in parts[1:]:
            if locations is None:
                return True  # a plain module: deeper names may be attributes (os.path)
            next_locations: list[str] = []
            found = False
            for location in locations:
                folder = Path(location)
                if (folder / part).is_dir():
                    next_locations.append(str(folder / part))
                    found = True
                elif _module_file_exists(folder, part):
                    found = True
            if not found:
                return False
            locations = next_locations or None
        return True

    def exists(self, module: str, importer: Path) -> bool:
        """Whether absolute ``module`` can be imported by the file ``importer``."""
        parts = tuple(module.split("."))
        if parts[0] == "__future__":
            return True
        for base in (*self.bases, importer.parent):
            if self._in_tree(base, parts):
                return True
        return self._in_env(parts) or parts[0].lower() in self.declared

    def relative_exists(self, module: str | None, level: int, importer: Path) -> bool:
        """Whether ``from <level dots><module> import ...`` resolves against ``importer``."""
        folder = importer.parent
        for _ in range(level - 1):
            folder = folder.parent
        if not module:
            return folder.is_dir()
        return bool(self._in_tree(folder, tuple(module.split("."))))
