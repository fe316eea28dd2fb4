"""Write actions: units of work that commit, roll back, and record who acted.

The central ones run on SQLite, PostgreSQL and MariaDB; effects are checked from an independent
connection, so only what was committed counts.
"""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import BACKENDS, Observer

from .conftest import engine_of, login, run_module

# The central behaviours run on every backend; the rest on SQLite only, to stay fast.
on_every_backend = pytest.mark.parametrize("backend_name", BACKENDS)

AUDIT_OF = "SELECT count(*) FROM example_audit WHERE target = :target"


@on_every_backend
def test_approve_commits_and_records_the_user(
    app: Flask, client: FlaskClient, outside: Observer
) -> None:
    """Approving a caption commits the change and an audit row carrying session.info."""
    login(client)
    response = client.post("/captions/2/approve")
    assert response.status_code == 302
    assert outside.scalar("SELECT status FROM example_captions WHERE id = 2") == "approved"
    assert outside.scalar("SELECT reviewed_by_id FROM example_captions WHERE id = 2") == 1
    assert outside.scalar(AUDIT_OF, target="caption:2") == 1
    assert outside.scalar("SELECT user_id FROM example_audit") == "1"
    assert outside.scalar("SELECT endpoint FROM example_audit") == "main.approve"
    assert outside.scalar("SELECT request_id FROM example_audit")
    assert engine_of(app).pool.checkedout() == 0


@on_every_backend
def test_a_failing_action_rolls_back_everything(
    app: Flask, client: FlaskClient, outside: Observer
) -> None:
    """Approving an approved caption answers 409; the audit row it had flushed is gone."""
    login(client)
    response = client.post("/captions/1/approve")  # seeded as approved
    assert response.status_code == 409
    assert "already approved" in response.text
    assert outside.scalar(AUDIT_OF, target="caption:1") == 0
    assert outside.scalar("SELECT status FROM example_captions WHERE id = 1") == "approved"
    assert engine_of(app).pool.checkedout() == 0
    # The next action in the same login works: nothing was left half-done.
    assert client.post("/captions/2/reject").status_code == 302
    assert outside.scalar("SELECT status FROM example_captions WHERE id = 2") == "rejected"


def test_add_caption_commits_a_pending_caption(client: FlaskClient, outside: Observer) -> None:
    """A suggested caption is stored as pending, authored by the logged-in user."""
    login(client, "ada", "ada-password")
    response = client.post("/images/3/captions", data={"text": "  Neon and rain  "})
    assert response.status_code == 302
    row = "SELECT {} FROM example_captions WHERE text = 'Neon and rain'"
    assert outside.scalar(row.format("status")) == "pending"
    assert outside.scalar(row.format("author_id")) == 2
    assert client.post("/images/3/captions", data={"text": ""}).status_code == 302
    assert outside.scalar("SELECT count(*) FROM example_captions WHERE image_id = 3") == 2


@on_every_backend
def test_admin_service_from_a_request(client: FlaskClient, outside: Observer) -> None:
    """The admin's UserService commits through the app's unit of work, audited as the admin."""
    login(client)
    assert client.post("/admin/users/2/deactivate").status_code == 302
    assert not outside.scalar("SELECT is_active FROM example_users WHERE id = 2")
    assert outside.scalar("SELECT user_id FROM example_audit WHERE target = 'user:2'") == "1"
    assert (
        outside.scalar("SELECT endpoint FROM example_audit WHERE target = 'user:2'")
        == "admin.deactivate"
    )
    assert login(client.application.test_client(), "ada", "ada-password").status_code == 401


def test_admin_service_refuses_self_deactivation(client: FlaskClient, outside: Observer) -> None:
    """The admin cannot lock themselves out; nothing is written."""
    login(client)
    client.post("/admin/users/1/deactivate")
    assert outside.scalar("SELECT is_active FROM example_users WHERE id = 1")
    assert outside.scalar("SELECT count(*) FROM example_audit") == 0


def test_admin_approve_all_is_one_unit_of_work(client: FlaskClient, outside: Observer) -> None:
    """Approving all pending captions commits them together, with one request id."""
    login(client)
    assert client.post("/admin/captions/approve-all").status_code == 302
    assert outside.scalar("SELECT count(*) FROM example_captions WHERE status = 'pending'") == 0
    assert outside.scalar("SELECT count(*) FROM example_audit WHERE detail = 'bulk'") == 4
    assert outside.scalar("SELECT count(DISTINCT request_id) FROM example_audit") == 1


@on_every_backend
def test_admin_service_from_the_standalone_script(
    app: Flask, example_url: str, outside: Observer
) -> None:
    """The report script, with no Flask app, commits through the same service on DATABASE_URL."""
    done = run_module("example_app.report", "--approve-pending", "--json", database_url=example_url)
    assert done.returncode == 0, done.stderr
    approved_line, counts_line = done.stdout.strip().splitlines()
    assert approved_line == "approved 4 caption(s)"
    counts = json.loads(counts_line)
    assert counts["captions_approved"] == 5 and "captions_pending" not in counts
    assert outside.scalar("SELECT count(*) FROM example_captions WHERE status = 'pending'") == 0
    # Outside a request there is no user, endpoint or request id to record.
    assert outside.scalar("SELECT count(*) FROM example_audit WHERE user_id IS NULL") == 4
    assert outside.scalar("SELECT count(*) FROM example_audit WHERE endpoint IS NULL") == 4
