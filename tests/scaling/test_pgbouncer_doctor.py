"""flask unified-session doctor behind PgBouncer: it warns about server-side prepares."""

from __future__ import annotations

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_unified_session import UnifiedSession


def doctor(app: Flask) -> str:
    result = app.test_cli_runner().invoke(args=["unified-session", "doctor"])
    assert result.exit_code == 0, result.output
    return str(result.output)


@pytest.mark.parametrize(("pgbouncer", "warned"), [(None, True), ("transaction", False)])
def test_doctor_warns_about_prepared_statements_behind_a_pooler(
    pgbouncer_url: str, pgbouncer: str | None, warned: bool
) -> None:
    app = Flask("behind_pgbouncer")
    app.config["UNIFIED_SESSION_DATABASE_URL"] = pgbouncer_url
    if pgbouncer:
        app.config["UNIFIED_SESSION_PGBOUNCER"] = pgbouncer
    UnifiedSession(app)
    output = doctor(app)
    assert ("WARNING: connections go through a pooler" in output) is warned, output
    app.extensions["unified_session"].factory.engine.dispose()


def test_doctor_warns_for_flask_sqlalchemy_engines_too(pgbouncer_url: str) -> None:
    db = SQLAlchemy()
    app = Flask("fsa_behind_pgbouncer")
    app.config["SQLALCHEMY_DATABASE_URI"] = pgbouncer_url
    db.init_app(app)
    UnifiedSession(app, db=db)
    assert "DB_PGBOUNCER=transaction" in doctor(app)
    with app.app_context():
        db.engine.dispose()


def test_no_warning_straight_to_the_server(primary_url: str) -> None:
    app = Flask("no_pooler")
    app.config["UNIFIED_SESSION_DATABASE_URL"] = primary_url
    UnifiedSession(app)
    assert "WARNING" not in doctor(app)
    app.extensions["unified_session"].factory.engine.dispose()
