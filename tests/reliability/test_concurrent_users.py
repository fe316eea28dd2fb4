"""Eight users at once on a threaded server: sessions, rows and user ids never cross."""

from __future__ import annotations

import http.client
import json
import threading

import pytest
import sqlalchemy as sa
from flask import Flask, current_app, jsonify
from flask_login import LoginManager, UserMixin, current_user, login_required

from flask_unified_session import UnifiedSession
from tests.conftest import Observer, User

from .conftest import serve, size

pytestmark = pytest.mark.reliability

THREADS = 8


class Account(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def make_app(url: str) -> Flask:
    app = Flask(__name__)
    app.config["UNIFIED_SESSION_DATABASE_URL"] = url
    app.config["UNIFIED_SESSION_POOL_SIZE"] = THREADS
    UnifiedSession(app)
    login = LoginManager(app)

    @login.request_loader
    def from_header(request):  # type: ignore[no-untyped-def]
        user_id = request.headers.get("X-User")
        return Account(user_id) if user_id else None

    @app.post("/rows/<int:n>")
    @login_required
    def write(n: int):  # type: ignore[no-untyped-def]
        me = current_user.get_id()
        with current_app.unified_session_manager.get_db_session() as session:  # type: ignore[attr-defined]
            recorded = session.info.get("user_id")
            session.add(User(name=f"{me}-{n}", note=f"pending:{recorded}"))
            session.flush()
            # Rows flushed but not committed by other requests must be invisible here.
            foreign_pending = session.scalar(
                sa.select(sa.func.count())
                .select_from(User)
                .where(User.note.like("pending:%"), ~User.name.like(f"{me}-%"))
            )
            mine = session.scalars(sa.select(User).where(User.name == f"{me}-{n}")).one()
            mine.note = str(recorded)  # committed rows carry the user the unit recorded
        return jsonify(user=me, recorded=recorded, foreign_pending=foreign_pending)

    return app


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_concurrent_users_never_see_each_others_uncommitted_rows(
    db_url: str, observer: Observer
) -> None:
    """8 threads x N requests as 8 users: isolation holds, each row lands with its own user."""
    requests = size(50, 1000)
    app = make_app(db_url)
    problems: list[str] = []
    lock = threading.Lock()

    def client(user: str, port: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for n in range(requests):
                connection.request("POST", f"/rows/{n}", headers={"X-User": user})
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    with lock:
                        problems.append(f"{user} #{n}: HTTP {response.status}")
                    continue
                answer = json.loads(body)
                if answer != {"user": user, "recorded": user, "foreign_pending": 0}:
                    with lock:
                        problems.append(f"{user} #{n}: {answer}")
        except Exception as exc:  # reported below, with the user that hit it
            with lock:
                problems.append(f"{user}: {exc!r}")
        finally:
            connection.close()

    with serve(app, threads=THREADS) as port:
        users = [f"user{i}" for i in range(THREADS)]
        threads = [threading.Thread(target=client, args=(u, port)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
    assert problems == []
    engine = app.extensions["unified_session"].factory.engine
    assert engine.pool.checkedout() == 0
    with observer.engine.connect() as c:
        rows = c.execute(sa.select(User.name, User.note)).all()
    assert len(rows) == THREADS * requests
    assert all(name.split("-")[0] == note for name, note in rows)
