"""Time ``flask-unified-session check`` over 100,000 generated lines of realistic Python.

Run: ``python benchmarks/bench_check.py``. Prints the seconds, the lines per second and
PASS/FAIL against the target (under 30 seconds). Exit status 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from flask_unified_session.tooling.cli import main

TARGET_LINES = 100_000
TARGET_SECONDS = 30.0

HEADER = '''"""Module {index}: services and routes of a typical legacy Flask application."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app.models import Order, User
from app.services.helpers import audit
from init import Session

logger = logging.getLogger(__name__)
bp = Blueprint("module_{index}", __name__)

'''

BLOCK = '''

class UserService{n}:
    """Users, the legacy way."""

    def __init__(self, db_manager):
        self.db_manager = db_manager

    def deactivate(self, user_id):
        session = self.db_manager.get_session()
        try:
            user = session.query(User).get(user_id)
            user.active = False
            user.updated_at = datetime.now(timezone.utc)
            session.commit()
        except Exception as e:
            session.rollback()
            logger.error(f"could not deactivate {{user_id}}: {{e}}")
            return False
        finally:
            session.close()
        return True

    def names(self):
        with self.db_manager.get_session() as session:
            return [u.name for u in session.scalars(select(User)).all()]


@bp.route("/orders/{n}/<int:order_id>", methods=["POST"])
def ship_{n}(order_id):
    payload = request.get_json() or {{}}
    db_manager = current_app.config["DB_MANAGER"]
    session = db_manager.get_session()
    try:
        order = session.get(Order, order_id)
        if order is None:
            return jsonify(error="not found"), 404
        order.status = payload.get("status", "shipped")
        audit(session, order)
        session.commit()
        return jsonify(id=order.id, status=order.status)
    except SQLAlchemyError as exc:
        session.rollback()
        logger.exception("ship failed: %s", exc)
        return jsonify(error="database error"), 500
    finally:
        session.close()


def report_{n}(rows):
    total = 0
    for row in rows:
        if row.amount > 100:
            total += row.amount * 2
        else:
            total += row.amount
    return {{"total": total, "count": len(rows)}}
'''


def generate(folder: Path, lines: int = TARGET_LINES) -> int:
    """Write a package of modules totalling at least ``lines`` lines; return the line count."""
    (folder / "pyproject.toml").write_text("[project]\nname = 'legacy'\n", encoding="utf-8")
    package = folder / "app"
    (package / "services").mkdir(parents=True)
    for init in (package / "__init__.py", package / "services" / "__init__.py"):
        init.write_text("", encoding="utf-8")
    (package / "models.py").write_text("Order = User = object\n", encoding="utf-8")
    (package / "services" / "helpers.py").write_text(
        "def audit(session, obj):\n    session.add(obj)\n", encoding="utf-8"
    )
    total = 3
    index = 0
    while total < lines:
        text = HEADER.format(index=index) + "".join(
            BLOCK.format(n=index * 100 + n) for n in range(6)
        )
        (package / f"views_{index:04d}.py").write_text(text, encoding="utf-8")
        total += text.count("\n")
        index += 1
    return total


def run() -> int:
    """Generate the tree, time ``check`` over it and print the result."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = generate(folder)
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["check", str(folder)])
        seconds = time.perf_counter() - start
    findings = out.getvalue().count("\n")
    verdict = "PASS" if seconds < TARGET_SECONDS and status == 1 else "FAIL"
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s)")
    print(f"checked {lines} lines: {findings} findings, exit status {status}")
    print(f"{seconds:.2f} s, {lines / seconds:,.0f} lines/s")
    print(f"{verdict} (target: under {TARGET_SECONDS:.0f} s)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(run())
