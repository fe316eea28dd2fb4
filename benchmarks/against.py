"""``python -m benchmarks.against REV``: the W3 ``db=`` routes, this tree's library vs REV's.

A change to the library's hot path saves a few µs per request, while one figure moves
by more than that between runs, processes and days (see performance.md). This measures
the change itself: both versions of the library in one process, on the same database,
with the same routes, run in pairs.

* REV's ``flask_unified_session`` is extracted with ``git archive`` into a temporary
  directory under another name (``fus_rev``), the name rewritten in its sources.
* Each version gets a Flask-SQLAlchemy app with ``UnifiedSession(app, db=db)`` and the
  same four W3 routes (``get_db_session()``, the request manager, ``session_scope()``,
  the mixin); Flask-SQLAlchemy's ``db.session`` route runs beside them as the yardstick.
* For each entry point, many pairs of batches of 10 requests run back to back, in
  alternating order; a process reports the median per-pair difference (this tree minus
  REV). ``--runs`` processes, one ``PYTHONHASHSEED`` each, give the median and the range.

``REV=HEAD`` on a clean tree is an A/A run: what it shows is the harness's own bias.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from .common import User, create_schema, drop_schema, postgresql_url, reachable, table
from .units import FSA, library_views, no_fsync, run_paired, service_class, wsgi_batch

PACKAGE = "flask_unified_session"
RENAMED = "fus_rev"
ENTRY_POINTS = ("get_db_session", "request_manager", "session_scope", "mixin")


def extract(rev: str, into: Path) -> None:
    """REV's package as ``into/fus_rev``, every mention of its name rewritten."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, PACKAGE],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / PACKAGE).rename(into / RENAMED)
    for path in (into / RENAMED).rglob("*.py"):
        path.write_text(path.read_text().replace(PACKAGE, RENAMED))


def make_app(name: str, url: str, package: ModuleType) -> Flask:
    """A Flask-SQLAlchemy app with ``package``'s extension and the four W3 routes."""
    app = Flask(name)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy()
    db.init_app(app)
    package.UnifiedSession(app, db=db)
    with app.app_context():
        no_fsync(db.engine)
    views = library_views(package.session_scope, service_class(package.SessionServiceMixin)())
    for prefix, view in views.items():
        app.add_url_rule(f"/{prefix}/<int:user_id>", prefix, view, methods=["POST"])
    return app


def child(url: str, directory: str, pairs: int) -> dict[str, Any]:
    """One process: per entry point, (REV's µs per request, this tree minus REV in µs)."""
    sys.path.insert(0, directory)
    theirs = importlib.import_module(RENAMED)
    ours = importlib.import_module(PACKAGE)
    fsa_app = Flask("against_fsa")
    fsa_app.config["SQLALCHEMY_DATABASE_URI"] = url
    fsa_db = SQLAlchemy()
    fsa_db.init_app(fsa_app)

    def fsa_view(user_id: int) -> str:
        fsa_db.session.get(User, user_id).counter += 1  # type: ignore[union-attr]
        fsa_db.session.commit()
        return "ok"

    fsa_app.add_url_rule("/fsa/<int:user_id>", "fsa", fsa_view, methods=["POST"])
    with fsa_app.app_context():
        no_fsync(fsa_db.engine)  # before its first connection: the pool keeps them
        create_schema(fsa_db.engine)
    # REV's app first: the order of creation is the same in every process.
    apps = {"rev": make_app("against_rev", url, theirs), "tree": make_app("against", url, ours)}
    errors = {"count": 0}
    report: dict[str, Any] = {}
    fsa = wsgi_batch(fsa_app, "fsa", errors)
    for prefix in ENTRY_POINTS:
        rev, tree = (wsgi_batch(app, prefix, errors) for app in apps.values())
        # Paired against REV (the tree's difference) and against db.session (REV's cost).
        diff = run_paired({"rev": rev, "tree": tree}, "rev", ops=10, pairs=pairs)["tree"][0]
        over_fsa = run_paired({FSA: fsa, "rev": rev}, FSA, ops=10, pairs=pairs // 4)["rev"][0]
        report[prefix] = {"tree_minus_rev_us": diff, "rev_over_fsa_us": over_fsa}
    report["errors"] = errors["count"]
    with fsa_app.app_context():
        drop_schema(fsa_db.engine)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.against", description=__doc__)
    parser.add_argument("rev", help="the git revision to compare the working tree with")
    parser.add_argument("--runs", type=int, default=4, help="fresh processes (default 4)")
    parser.add_argument("--pairs", type=int, default=301, help="pairs per entry point")
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--child", nargs=2, metavar=("URL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.pairs)))
        return 0
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fus-against-") as tmp:
        extract(args.rev, Path(tmp))
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/against.db"
            else:
                url = postgresql_url()
                why = reachable(url)
                if why is not None:
                    print(f"> PostgreSQL skipped: {why} (set TEST_POSTGRESQL_URL)\n")
                    continue
            reports = []
            for seed in range(1, args.runs + 1):
                command = [sys.executable, "-m", "benchmarks.against", args.rev]
                command += ["--pairs", str(args.pairs), "--child", url, tmp]
                env = dict(os.environ, PYTHONHASHSEED=str(seed))
                out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
                reports.append(json.loads(out.stdout.splitlines()[-1]))
                print(f"{backend}: run {seed} of {args.runs} done", file=sys.stderr)
            for prefix in ENTRY_POINTS:
                diffs = [report[prefix]["tree_minus_rev_us"] for report in reports]
                over = [report[prefix]["rev_over_fsa_us"] for report in reports]
                rows.append(
                    [
                        f"{backend}: {prefix}",
                        f"{statistics.median(diffs):+.1f}",
                        f"{min(diffs):+.1f} to {max(diffs):+.1f}",
                        f"{statistics.median(over):+.1f}",
                    ]
                )
            failed = sum(report["errors"] for report in reports)
            rows.append([f"{backend}: non-200 answers", str(failed), "", ""])
    headers = [
        "W3 route",
        "this tree minus REV, µs",
        "range",
        "REV over db.session, µs",
    ]
    print(f"# The working tree against {args.rev}, {args.runs} processes per database\n")
    print(table(headers, rows))
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
