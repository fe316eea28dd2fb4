"""unified_session_manager.get_db_session(): the factory's unit of work on the app's engines."""

from __future__ import annotations

import pytest
from flask import current_app

from flask_unified_session import DoomedTransactionError
from tests.conftest import User
from tests.flask.conftest import connection_id, engine_of, sqlite_only


class AuditService:
    """A service that opens its own unit of work, as services called from routes do."""

    def record(self, name: str) -> tuple[object, int]:
        with current_app.unified_session_manager.get_db_session() as session:
            session.add(User(name=name))
            session.flush()
            return session, engine_of(current_app).pool.checkedout()


def test_commits_on_success_and_rolls_back_on_error(make_app, flavour, observer):
    """The block commits when it ends normally; an exception rolls back and propagates."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")

    @app.post("/ok")
    def ok():
        with current_app.unified_session_manager.get_db_session() as session:
            session.add(User(name="ok"))
        return "ok"

    @app.post("/fail")
    def fail():
        with current_app.unified_session_manager.get_db_session() as session:
            session.add(User(name="fail"))
            session.flush()
            raise LookupError("no")

    client = app.test_client()
    assert client.post("/fail").status_code == 500
    assert client.post("/ok").status_code == 200
    assert observer.names() == ["ok"]
    assert engine_of(app).pool.checkedout() == 0


def test_service_unit_inside_a_route_unit_opens_no_second_connection(make_app, observer):
    """A service's get_db_session() inside the route's joins it: same session, one connection."""
    app = make_app()
    seen = {}

    @app.post("/nested")
    def nested():
        with current_app.unified_session_manager.get_db_session() as outer:
            outer.add(User(name="outer"))
            outer.flush()
            seen["outer_conn"] = connection_id(outer)
            inner, checkedout = AuditService().record("inner")
            seen["same"] = inner is outer
            seen["checkedout"] = checkedout
            seen["inner_conn"] = connection_id(outer)
        return "ok"

    assert app.test_client().post("/nested").status_code == 200
    assert seen["same"] is True
    assert seen["checkedout"] == 1
    assert seen["outer_conn"] == seen["inner_conn"]
    assert observer.names() == ["inner", "outer"]


def test_unit_of_work_inside_the_request_scope_joins_it(make_app, flavour, observer):
    """get_db_session() inside session_scope() uses the request's session and connection."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    seen = {}

    @app.post("/joined")
    def joined():
        with app.request_session_manager.session_scope() as request_session:
            inner, checkedout = AuditService().record("joined")
            seen["same"] = inner is request_session
            seen["checkedout"] = checkedout
        return "ok"

    assert app.test_client().post("/joined").status_code == 200
    assert seen == {"same": True, "checkedout": 1}
    assert observer.names() == ["joined"]


def test_independent_unit_has_its_own_connection_and_survives_outer_rollback(
    make_app, flavour, observer
):
    """independent=True: a second connection whose commit survives the outer rollback."""
    app = make_app(flask_sqlalchemy=flavour == "flask_sqlalchemy")
    manager = app.unified_session_manager
    seen = {}

    @app.post("/audit")
    def audit():
        with manager.get_db_session() as outer:
            outer.connection()  # holds its connection; writes after, for SQLite's one writer
            with manager.get_db_session(independent=True) as audit_session:
                audit_session.add(User(name="audit"))
                audit_session.flush()
                seen["different"] = audit_session is not outer
                seen["checkedout"] = engine_of(app).pool.checkedout()
            outer.add(User(name="outer-rolled-back"))
            outer.flush()
            raise ValueError("outer fails")

    assert app.test_client().post("/audit").status_code == 500
    assert seen == {"different": True, "checkedout": 2}
    assert observer.names() == ["audit"]
    assert engine_of(app).pool.checkedout() == 0


def test_caught_failure_of_a_joined_unit_dooms_the_request(make_app, observer):
    """An exception that escaped a joined inner unit, even caught, rolls the outer back."""
    app = make_app()

    @app.post("/doomed")
    def doomed():
        with app.unified_session_manager.get_db_session() as outer:
            outer.add(User(name="doomed"))
            try:
                with app.unified_session_manager.get_db_session():
                    raise KeyError("inner")
            except KeyError:
                pass
        return "ok"

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(DoomedTransactionError):
        app.test_client().post("/doomed")
    assert observer.count() == 0


def test_savepoint_contains_an_inner_failure(make_app, observer):
    """nested=True: the inner block's failure is rolled back alone, the outer commits."""
    app = make_app(flask_sqlalchemy=False)  # the factory's SQLite engine has SAVEPOINTs fixed

    @app.post("/savepoint")
    def savepoint():
        with app.unified_session_manager.get_db_session() as outer:
            outer.add(User(name="kept"))
            try:
                with app.unified_session_manager.get_db_session(nested=True) as inner:
                    inner.add(User(name="dropped"))
                    inner.flush()
                    raise KeyError("inner")
            except KeyError:
                pass
        return "ok"

    assert app.test_client().post("/savepoint").status_code == 200
    assert observer.names() == ["kept"]


@sqlite_only
def test_session_info_records_endpoint_and_request_id(make_app, observer):
    """In a request, session.info has the endpoint and the X-Request-ID (or a generated id)."""
    app = make_app()
    infos = []

    @app.get("/info")
    def info_view():
        with app.unified_session_manager.get_db_session() as session:
            infos.append(dict(session.info))
        return "ok"

    client = app.test_client()
    client.get("/info", headers={"X-Request-ID": "req-42"})
    client.get("/info")
    client.get("/info")
    assert infos[0]["endpoint"] == "info_view"
    assert infos[0]["request_id"] == "req-42"
    assert infos[1]["request_id"] != infos[2]["request_id"]
    assert infos[1]["request_id"].split("-")[0] == infos[2]["request_id"].split("-")[0]


@sqlite_only
def test_forked_worker_draws_new_request_id_prefix(make_app):
    """A forked worker's generated request ids never repeat its parent's."""
    import os

    app = make_app()

    @app.get("/id")
    def request_id_view():
        with app.unified_session_manager.get_db_session() as session:
            return str(session.info["request_id"])

    parent = app.test_client().get("/id").get_data(as_text=True)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, app.test_client().get("/id").get_data())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child.count("-") == parent.count("-") == 1
    assert child.split("-")[0] != parent.split("-")[0]


@sqlite_only
def test_outside_a_request_session_info_has_no_request_keys(make_app):
    """In a bare app context (a CLI command), no endpoint or request id is invented."""
    app = make_app()
    with app.app_context(), app.unified_session_manager.get_db_session() as session:
        assert "endpoint" not in session.info
        assert "request_id" not in session.info


@sqlite_only
def test_context_provider_adds_to_session_info(make_app, observer):
    """A provider registered on the extension adds its entries (e.g. a tenant id)."""
    app = make_app()
    extension = app.extensions["unified_session"].extension

    @extension.context_provider
    def tenant():
        return {"tenant_id": "acme", "platform": "web"}

    @app.get("/tenant")
    def tenant_view():
        with app.unified_session_manager.get_db_session() as session:
            return {k: session.info.get(k) for k in ("tenant_id", "platform", "endpoint")}

    assert app.test_client().get("/tenant").json == {
        "tenant_id": "acme",
        "platform": "web",
        "endpoint": "tenant_view",
    }
