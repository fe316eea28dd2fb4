"""Import cost (median wall time of fresh interpreters, and -X importtime self times)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from .common import median

# The package imports its names lazily, so each statement imports the names a user
# imports; the dependencies are what those names need (the ORM included).
STATEMENTS = {
    "python (nothing)": "pass",
    "sqlalchemy": "import sqlalchemy",
    "sqlalchemy.orm + blinker (the core's dependencies)": "import sqlalchemy.orm, blinker",
    "flask_unified_session (core)": (
        "from flask_unified_session import SessionFactory, session_scope, create_session"
    ),
    "flask": "import flask",
    "flask_sqlalchemy": "import flask_sqlalchemy",
    "flask + sqlalchemy.orm (the Flask layer's dependencies)": "import flask, sqlalchemy.orm",
    "flask_unified_session + Flask layer": (
        "from flask_unified_session import UnifiedSession, SessionServiceMixin, session_scope"
    ),
}

# (library import, its dependencies) pairs whose difference is the library's own cost.
PAIRS = [
    ("flask_unified_session (core)", "sqlalchemy.orm + blinker (the core's dependencies)"),
    (
        "flask_unified_session + Flask layer",
        "flask + sqlalchemy.orm (the Flask layer's dependencies)",
    ),
]


def wall_times(runs: int) -> dict[str, float]:
    """Median seconds of ``python -c STATEMENT``, the statements interleaved run by run."""
    samples: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    for _ in range(runs):
        for name, statement in STATEMENTS.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", statement], check=True)
            samples[name].append(time.perf_counter() - start)
    return {name: median(values) for name, values in samples.items()}


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def own_import_time(runs: int) -> float:
    """Median microseconds spent in flask_unified_session's own modules (self time)."""
    totals = []
    statement = STATEMENTS["flask_unified_session + Flask layer"]
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", statement],
            check=True,
            capture_output=True,
            text=True,
        )
        total = 0
        for line in done.stderr.splitlines():
            match = _LINE.match(line)
            if match and match.group(4).startswith("flask_unified_session"):
                total += int(match.group(1))
        totals.append(total)
    return median(totals)
