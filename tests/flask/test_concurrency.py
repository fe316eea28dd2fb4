"""Many threads, many logged-in users, a real WSGI server: sessions never leak across requests."""

from __future__ import annotations

import gc
import http.client
import threading

from flask_login import current_user
from sqlalchemy import select
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.conftest import User
from tests.flask.conftest import engine_of

THREADS = 8
REQUESTS = 50


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class Rollback(Exception):
    pass


def _build(make_app):
    app = make_app(login=True)

    @app.post("/work/<int:i>")
    def work(i):
        user = current_user.get_id()
        name = f"{user}-{i}"
        # Half the requests use a unit of work, half the request's session.
        if i % 4 < 2:
            scope = app.unified_session_manager.get_db_session()
        else:
            scope = app.request_session_manager.session_scope()
        try:
            with scope as session:
                if session.info.get("user_id") != user:
                    return f"session.info user {session.info.get('user_id')} != {user}", 500
                mine = User(name=name)  # held: the identity map only keeps weak references
                session.add(mine)
                session.flush()
                own = [obj.name for obj in session.identity_map.values()]
                if own != [name]:
                    return f"{name} holds objects of others: {own}", 500
                # Odd-numbered rows are never committed: seeing one is seeing another's
                # pending object.
                for seen in session.scalars(select(User.name)):
                    if seen != name and int(seen.rsplit("-", 1)[1]) % 2:
                        return f"{name} saw {seen}, which was never committed", 500
                if i % 2:
                    raise Rollback
        except Rollback:
            return "rolled back", 409
        return "ok", 200

    return app


def test_threads_of_users_never_see_each_others_pending_objects(make_app, observer):
    """8 threads x 50 requests through a real server: isolation, pool back to 0, no leaks."""
    app = _build(make_app)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    failures = []

    def client(user):
        for i in range(REQUESTS):
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
            try:
                connection.request("POST", f"/work/{i}", headers={"X-User": user})
                response = connection.getresponse()
                body = response.read().decode()
                expected = 409 if i % 2 else 200
                if response.status != expected:
                    failures.append((user, i, response.status, body))
            except Exception as exc:
                failures.append((user, i, "error", repr(exc)))
            finally:
                connection.close()

    clients = [threading.Thread(target=client, args=(f"user{n}",)) for n in range(THREADS)]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
    finally:
        server.shutdown()
        server.server_close()
        serving.join()
    assert failures == []
    assert observer.count() == THREADS * REQUESTS // 2
    assert engine_of(app).pool.checkedout() == 0
    gc.collect()  # an unclosed session would warn (ResourceWarning is an error here)
