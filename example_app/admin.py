"""The admin blueprint: its services inherit SessionServiceMixin and take a db_manager.

Inside a request the mixin uses the app's ``get_db_session()``; the ``db_manager`` given
here (the app's own factory) is what the same service uses where no app context exists,
for example in a thread started from a view.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from werkzeug.wrappers import Response

from .services import ModerationService, UserService

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _factory() -> object:
    return current_app.extensions["unified_session"].factory


@bp.before_request
@login_required
def require_admin() -> None:
    if not current_user.is_admin:
        abort(403)


@bp.get("/")
def index() -> str:
    users = UserService(db_manager=_factory()).list_users()
    stats = ModerationService(db_manager=_factory()).stats()
    return render_template("admin/index.html", users=users, stats=stats)


@bp.post("/users/<int:user_id>/deactivate")
def deactivate(user_id: int) -> Response:
    return _set_active(user_id, False)


@bp.post("/users/<int:user_id>/activate")
def activate(user_id: int) -> Response:
    return _set_active(user_id, True)


def _set_active(user_id: int, active: bool) -> Response:
    if user_id == current_user.id and not active:
        flash("You cannot deactivate yourself.", "error")
        return redirect(url_for(".index"))
    try:
        user = UserService(db_manager=_factory()).set_active(user_id, active)
    except LookupError:
        abort(404)
    flash(f"{user.username} is now {'active' if active else 'inactive'}.", "info")
    return redirect(url_for(".index"))


@bp.post("/captions/approve-all")
def approve_all() -> Response:
    count = ModerationService(db_manager=_factory()).approve_all_pending(current_user.id)
    flash(f"Approved {count} caption(s).", "info")
    return redirect(url_for(".index"))
