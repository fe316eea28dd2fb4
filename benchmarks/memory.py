"""Resident-memory growth over many units of work, one candidate per process.

``python -m benchmarks.memory CANDIDATE UNITS`` prints one JSON line. SQLite in memory
keeps it fast; the RSS is read after a warm-up (caches filled) and after the run.
"""

from __future__ import annotations

import gc
import json
import sys
import warnings

import psutil


def main(argv: list[str]) -> int:
    candidate, units = argv[0], int(argv[1])
    warnings.simplefilter("default")
    from sqlalchemy.orm import sessionmaker

    from .common import create_schema
    from .units import Service, User, make_app

    app, db = make_app("sqlite://")
    with app.app_context():
        engine = db.engine
        create_schema(engine)
    from flask_unified_session import SessionFactory, session_scope, set_default_factory

    set_default_factory(SessionFactory(engine=engine))
    Session = sessionmaker(engine)
    service = Service()

    def plain(i: int) -> None:
        with Session.begin() as session:
            session.get(User, i).counter += 1  # type: ignore[union-attr]

    def scope(i: int) -> None:
        with session_scope() as session:
            session.get(User, i).counter += 1  # type: ignore[union-attr]

    def uow(i: int) -> None:
        with app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            session.get(User, i).counter += 1

    def mixin(i: int) -> None:
        service.touch(i)

    work = {"sqlalchemy": plain, "session_scope": scope, "get_db_session": uow, "mixin": mixin}
    unit = work[candidate]
    process = psutil.Process()
    with app.app_context():
        for i in range(2000):
            unit(i % 1000 + 1)
        gc.collect()
        before = process.memory_info().rss
        for i in range(units):
            unit(i % 1000 + 1)
        gc.collect()
        after = process.memory_info().rss
    print(json.dumps({"candidate": candidate, "units": units, "before": before, "after": after}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
