"""A standalone report: no Flask app, no app context, the same database as the app.

    python -m example_app.report                    # counts, and the pending captions
    python -m example_app.report --json             # the counts as JSON
    python -m example_app.report --approve-pending  # approve them all (audited as "script")

It reads ``DATABASE_URL`` like the library does (without it: the app's SQLite file), and
shows the three ways to reach the database outside Flask: the service (its
``db_session()`` falls back to ``db_manager``), ``session_scope()`` (a unit of work) and
``create_session()`` (a session you close yourself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from sqlalchemy import select

from flask_unified_session import (
    SessionFactory,
    create_session,
    get_default_factory,
    session_scope,
    set_default_factory,
)

from .models import PENDING, Caption
from .services import ModerationService
from .settings import database_url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app.report", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument(
        "--approve-pending", action="store_true", help="approve every pending caption"
    )
    args = parser.parse_args(argv)

    if not os.environ.get("DATABASE_URL"):
        # The library's default factory reads DATABASE_URL; point it at the app's file.
        set_default_factory(SessionFactory(database_url()))
    factory = get_default_factory()
    service = ModerationService(db_manager=factory)

    if args.approve_pending:
        count = service.approve_all_pending(reviewer_id=None)
        print(f"approved {count} caption(s)")

    counts = service.stats()
    if args.json:
        print(json.dumps(counts, sort_keys=True))
        return 0

    for name, number in sorted(counts.items()):
        print(f"{name:>20}: {number}")

    # A unit of work: committed (here: nothing to commit) and closed when the block ends.
    with session_scope() as session:
        pending = session.scalars(
            select(Caption).where(Caption.status == PENDING).order_by(Caption.id)
        ).all()
    # expire_on_commit is off: the rows stay readable after the block.
    for caption in pending:
        print(f"  pending #{caption.id}: {caption.text}")

    # A plain session: yours to close, on every path.
    session = create_session()
    try:
        newest = session.scalar(select(Caption.id).order_by(Caption.id.desc()).limit(1))
    finally:
        session.close()
    print(f"newest caption id: {newest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
