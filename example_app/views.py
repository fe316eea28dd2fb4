"""Pages (reads in the request's session) and actions (writes in units of work).

The write actions accept POST only and carry no CSRF token: acceptable for a local demo,
not for a real site (add Flask-WTF's CSRFProtect or an equivalent there).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from werkzeug.wrappers import Response

from .models import Caption, CaptionStateError, Image, User, audit

main = Blueprint("main", __name__)
auth = Blueprint("auth", __name__)


@main.get("/health")
def health() -> str:
    # Touches no database: no session is created, no connection checked out.
    return "ok"


@main.get("/")
def images() -> str:
    with current_app.request_session_manager.session_scope() as session:
        rows = session.scalars(
            select(Image).options(selectinload(Image.captions)).order_by(Image.id)
        ).all()
        return render_template("images.html", images=rows)


@main.get("/images/<int:image_id>")
def image(image_id: int) -> str:
    with current_app.request_session_manager.session_scope() as session:
        found = session.get(Image, image_id)
        if found is None:
            abort(404)
        return render_template("image.html", image=found)


@main.post("/images/<int:image_id>/captions")
@login_required
def add_caption(image_id: int) -> Response:
    text = request.form.get("text", "").strip()
    if not text or len(text) > 500:
        flash("A caption needs between 1 and 500 characters.", "error")
        return redirect(url_for(".image", image_id=image_id))
    with current_app.unified_session_manager.get_db_session() as session:
        if session.get(Image, image_id) is None:
            abort(404)  # an exception: the unit of work rolls back
        caption = Caption(image_id=image_id, text=text, author_id=current_user.id)
        session.add(caption)
        session.flush()
        audit(session, "add_caption", caption)
    flash("Caption added; it waits for approval.", "info")
    return redirect(url_for(".image", image_id=image_id))


@main.post("/captions/<int:caption_id>/approve")
@login_required
def approve(caption_id: int) -> Response | tuple[str, int]:
    return _review(caption_id, "approve")


@main.post("/captions/<int:caption_id>/reject")
@login_required
def reject(caption_id: int) -> Response | tuple[str, int]:
    return _review(caption_id, "reject")


def _review(caption_id: int, action: str) -> Response | tuple[str, int]:
    try:
        with current_app.unified_session_manager.get_db_session() as session:
            caption = session.get(Caption, caption_id)
            if caption is None:
                abort(404)
            image_id = caption.image_id
            audit(session, action, caption)  # flushed: in the database, inside the unit
            getattr(caption, action)(current_user.id)  # may raise CaptionStateError
    except CaptionStateError as exc:
        # The unit of work rolled back: the audit row above is gone too.
        return render_template("error.html", message=str(exc)), 409
    flash(f"Caption {caption_id}: {action}d.", "info")
    return redirect(url_for(".image", image_id=image_id))


@auth.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("login.html")
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    with current_app.request_session_manager.session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None or not user.check_password(password) or not login_user(user):
            return render_template("login.html", error="Wrong name or password."), 401
    return redirect(_safe_next(request.args.get("next")))


@auth.post("/logout")
def logout() -> Response:
    logout_user()
    return redirect(url_for("main.images"))


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never redirect a login to another host.
    if target and target.startswith("/") and not urlsplit(target).netloc:
        return target
    return url_for("main.images")
