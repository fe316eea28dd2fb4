"""Where the example app's database lives, shared by the app, its CLI and the report script.

``DATABASE_URL`` wins (PostgreSQL, MariaDB, anything SQLAlchemy speaks); without it the
app uses a SQLite file in the instance folder next to this package, so ``make run`` needs
no server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: the folder Flask uses as ``app.instance_path`` (``instance/`` at the repository root)
INSTANCE_PATH = Path(__file__).resolve().parent.parent / "instance"

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"


def database_url(environ: Mapping[str, str] | None = None) -> str:
    """``DATABASE_URL`` from ``environ``, else the SQLite file in the instance folder."""
    environ = os.environ if environ is None else environ
    url = environ.get("DATABASE_URL")
    if url:
        return url
    INSTANCE_PATH.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{INSTANCE_PATH / 'example.db'}"
