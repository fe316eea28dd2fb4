"""Shared pieces: the schema, the machine description, statistics and tables."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib.metadata import version

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PID = os.getpid()
ROWS = 1000
DEFAULT_POSTGRESQL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class Base(DeclarativeBase):
    pass


class User(Base):
    # The pid keeps two runs (or another engineer's tests) on one server apart.
    __tablename__ = f"bench_users_{PID}"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    counter: Mapped[int] = mapped_column(default=0)


def create_schema(engine: sa.Engine) -> None:
    """The ``users`` table with ``ROWS`` rows (dropped first if a previous run left it)."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(User),
            [{"id": i, "name": f"user{i}", "counter": 0} for i in range(1, ROWS + 1)],
        )


def drop_schema(engine: sa.Engine) -> None:
    Base.metadata.drop_all(engine)


def postgresql_url() -> str:
    return os.environ.get("TEST_POSTGRESQL_URL") or DEFAULT_POSTGRESQL_URL


def reachable(url: str) -> str | None:
    """``None`` if a connection can be made, else the reason."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect():
            return None
    except Exception as exc:  # any driver error: the benchmark skips that backend
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    packages = []
    for name in (
        "SQLAlchemy",
        "Flask",
        "Flask-SQLAlchemy",
        "flask-unified-session",
        "psycopg",
        "waitress",
        "Werkzeug",
    ):
        try:
            packages.append(f"{name} {version(name)}")
        except Exception:
            packages.append(f"{name} (absent)")
    return [
        ("cpu", cpu),
        ("cores", str(os.cpu_count())),
        ("load average at start", load),
        ("python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("os", platform.platform()),
        ("packages", ", ".join(packages)),
    ]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into the docs)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
