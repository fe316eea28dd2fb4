"""Pages, login and logout: the request's session, per request, and Flask-Login."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app
from example_app.seed import IMAGES
from tests.conftest import Observer

from .conftest import engine_of, login


def test_images_page_lists_the_images_and_gives_the_connection_back(
    app: Flask, client: FlaskClient
) -> None:
    """The read page renders from the request's session, closed when the request ends."""
    response = client.get("/")
    assert response.status_code == 200
    for title, _color, _captions in IMAGES:
        assert title in response.text
    assert engine_of(app).pool.checkedout() == 0


def test_image_page_shows_captions_and_their_state(client: FlaskClient) -> None:
    """The detail page shows each caption with its status; review buttons need a login."""
    response = client.get("/images/1")
    assert response.status_code == 200
    assert "Boats waiting for the tide" in response.text
    assert "approved" in response.text and "pending" in response.text
    assert "/approve" not in response.text
    login(client)
    assert "/captions/2/approve" in client.get("/images/1").text


def test_unknown_image_is_404(client: FlaskClient) -> None:
    """An image id that does not exist answers 404."""
    assert client.get("/images/999").status_code == 404


def test_health_touches_no_database(app: Flask, client: FlaskClient) -> None:
    """A request that never uses the database checks out no connection at all."""
    checkouts: list[object] = []
    engine = engine_of(app)

    def count(*args: object) -> None:
        checkouts.append(args)

    sa.event.listen(engine, "checkout", count)
    try:
        assert client.get("/health").text == "ok"
        assert checkouts == []
        client.get("/")
        assert checkouts
    finally:
        sa.event.remove(engine, "checkout", count)


def test_login_with_the_right_password_logs_in(client: FlaskClient) -> None:
    """The demo user logs in with its hashed password and sees the admin link."""
    response = login(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    page = client.get("/").text
    assert "Log out" in page and 'href="/admin/"' in page


def test_login_with_a_wrong_password_is_refused(client: FlaskClient) -> None:
    """A wrong password answers 401 and leaves the client anonymous."""
    response = login(client, password="not-the-password")
    assert response.status_code == 401
    assert "Wrong name or password" in response.text
    assert "Log in" in client.get("/").text


def test_login_of_an_inactive_user_is_refused(client: FlaskClient, outside: Observer) -> None:
    """Flask-Login refuses a user whose is_active column is false."""
    with outside.engine.begin() as connection:
        connection.execute(sa.text("UPDATE example_users SET is_active = false WHERE id = 2"))
    assert login(client, "ada", "ada-password").status_code == 401


def test_logout_is_post_only_and_logs_out(client: FlaskClient) -> None:
    """GET /logout is refused; POST /logout ends the login."""
    login(client)
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 302
    response = client.post("/captions/2/approve")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_actions_need_a_login(client: FlaskClient, outside: Observer) -> None:
    """An anonymous approve is sent to the login page and changes nothing."""
    response = client.post("/captions/2/approve")
    assert response.status_code == 302
    assert "/login?next=" in response.headers["Location"]
    assert outside.scalar("SELECT status FROM example_captions WHERE id = 2") == "pending"


def test_login_redirects_only_to_paths_on_this_site(client: FlaskClient) -> None:
    """``next`` is followed when it is a local path and ignored when it names another host."""
    form = {"username": "demo", "password": "demo-password"}
    assert client.post("/login?next=/images/2", data=form).headers["Location"] == "/images/2"
    client.post("/logout")
    evil = client.post("/login?next=//evil.example/x", data=form)
    assert evil.headers["Location"] == "/"


def test_admin_pages_need_an_admin(client: FlaskClient) -> None:
    """Anonymous users are sent to the login page; a non-admin gets 403; the admin 200."""
    assert client.get("/admin/").status_code == 302
    login(client, "ada", "ada-password")
    assert client.get("/admin/").status_code == 403
    client.post("/logout")
    login(client)
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "captions_pending" in page.text and "ada" in page.text


def test_database_url_from_the_environment(monkeypatch, tmp_path) -> None:
    """Without SQLALCHEMY_DATABASE_URI in config, the app uses DATABASE_URL unchanged."""
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    app = create_app({"TESTING": True})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == url
    assert str(engine_of(app).url) == url
