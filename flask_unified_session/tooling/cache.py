"""A cache of per-file results of ``migrate``, keyed by a hash of everything they depend on.

What is stored is derived data only: the cross-site facts of a file and, for a file that
needs no change, the sites it leaves. Rewritten text is never stored, so a damaged or edited
cache can at worst make ``migrate`` skip work, never write code into a source file. Every
key hashes the tool's version, the configuration and the file's bytes (plus, for outcomes,
the project facts the file depends on): a changed file, option or version misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: Bump when what the codemod produces changes, so stale entries miss.
FORMAT = "migrate-cache-3"
DIRECTORY_NAME = ".flask-unified-session-cache"
MAX_ENTRIES = 50_000
_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file marks a cache directory created by flask-unified-session migrate.\n"
)


def digest(*parts: bytes | str) -> str:
    """A SHA-256 hex digest of ``parts``, each length-prefixed (no ambiguous joins)."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


class ResultCache:
    """A JSON file of entries under ``directory``; disabled when ``directory`` is None."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._entries: dict[str, Any] = {}
        self._dirty = False
        if directory is not None:
            self._entries = self._load(directory / f"{FORMAT}.json")

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # absent, unreadable or damaged: start afresh
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Any:
        """The entry stored under ``key``, or None."""
        return self._entries.get(key)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-compatible) under ``key``."""
        if self.directory is None:
            return
        self._entries.pop(key, None)
        self._entries[key] = value  # most recent last: the oldest go first when full
        self._dirty = True

    def save(self) -> str | None:
        """Write the entries atomically; return a warning instead of raising on failure."""
        if self.directory is None or not self._dirty:
            return None
        entries = self._entries
        if len(entries) > MAX_ENTRIES:
            entries = dict(list(entries.items())[-MAX_ENTRIES:])
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for name, text in ((".gitignore", "*\n"), ("CACHEDIR.TAG", _TAG)):
                marker = self.directory / name
                if not marker.exists():
                    marker.write_text(text, encoding="utf-8")
            handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entries, out, separators=(",", ":"))
            os.replace(temporary, self.directory / f"{FORMAT}.json")
        except OSError as exc:
            return f"cache not saved in {self.directory}: {exc.strerror or exc}"
        self._dirty = False
        return None
