"""The Flask extension: one factory per app, on the app's engines, and its two managers.

Configuration precedence, stated once:

* with ``db=`` (Flask-SQLAlchemy): its engines and bind routing are adopted as they are;
  no engine is created, and engine options belong to ``SQLALCHEMY_ENGINE_OPTIONS``: a
  ``UNIFIED_SESSION_*`` engine key beside ``db=`` is an error naming that key. In an app
  context every unit of work runs on ``db.session``'s session, with its settings.
  ``UNIFIED_SESSION_EXPIRE_ON_COMMIT`` (default ``False``) applies to the sessions the
  library opens itself (``independent=True``, outside an app context).
  ``UNIFIED_SESSION_REPLICA_URLS`` and ``UNIFIED_SESSION_REPLICA_*`` are read here too
  (replicas of the default engine's database; ``db.session`` commits count for
  read-your-writes).
* without ``db``: the URL is the first set of ``UNIFIED_SESSION_DATABASE_URL``,
  ``SQLALCHEMY_DATABASE_URI`` and ``DATABASE_URL`` in ``app.config``, then ``DATABASE_URL``
  in the environment; pool settings are ``UNIFIED_SESSION_POOL_SIZE``,
  ``UNIFIED_SESSION_MAX_OVERFLOW``, ``UNIFIED_SESSION_POOL_TIMEOUT``,
  ``UNIFIED_SESSION_POOL_RECYCLE``, ``UNIFIED_SESSION_POOL_PRE_PING`` and
  ``UNIFIED_SESSION_ECHO``.
* ``UNIFIED_SESSION_COMMIT_MODE``: ``manual`` (default), ``autocommit`` or
  ``autocommit_include_redirect``.
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
from collections import ChainMap
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask.globals import _cv_app, _cv_request
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Engine

from . import session_factory as _factory_module
from . import unit_of_work as _unit_of_work_module
from .cli import unified_session_group
from .config import ConfigurationError, Settings, read_replica_settings, to_bool
from .engines import register_engine
from .managers import COMMIT_MODES, RequestSessionManager, UnitOfWorkManager
from .session_factory import SessionFactory
from .state import EXTENSION_KEY, UnifiedSessionState, get_state

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

__all__ = ["ContextProvider", "UnifiedSession", "UnifiedSessionState", "get_state"]

URL_KEYS = ("UNIFIED_SESSION_DATABASE_URL", "SQLALCHEMY_DATABASE_URI", "DATABASE_URL")

ContextProvider = Callable[[], Mapping[str, Any] | None]

_ENVIRON_REQUEST_ID = "flask_unified_session.request_id"
_in_context: ContextVar[bool] = ContextVar("flask_unified_session_in_context", default=False)


class UnifiedSession:
    """Gives a Flask app one way to get a session, on one pool per database.

    ``init_app(app, db=db)`` adopts Flask-SQLAlchemy's engines (no second pool) and puts
    ``app.unified_session_manager`` (``get_db_session()``: a unit of work that records who
    acted) and ``app.request_session_manager`` (``session_scope()``: the request's session,
    the one behind ``db.session``) on the app. Nothing connects until first use.

    Context providers (``@unified.context_provider``) add entries to ``session.info`` of
    every unit of work, for example a tenant id.
    """

    def __init__(self, app: Flask | None = None, db: SQLAlchemy | None = None) -> None:
        self.context_providers: list[ContextProvider] = []
        #: the Flask-SQLAlchemy extension used by ``init_app`` when it is given none
        self.db = db
        if app is not None:
            self.init_app(app, db=db)

    def context_provider(self, provider: ContextProvider) -> ContextProvider:
        """Register ``provider``; its mapping is merged into ``session.info``."""
        self.context_providers.append(provider)
        return provider

    def init_app(self, app: Flask, db: SQLAlchemy | None = None) -> None:
        """Register the extension on ``app``; refuses a second registration.

        ``db`` defaults to the one given to the constructor.
        """
        if db is None:
            db = self.db
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"flask_unified_session is already registered on app {app.name!r} "
                f"(app.extensions[{EXTENSION_KEY!r}] exists); call init_app once per app"
            )
        commit_mode = app.config.get("UNIFIED_SESSION_COMMIT_MODE", "manual")
        if commit_mode not in COMMIT_MODES:
            raise ConfigurationError(
                f"UNIFIED_SESSION_COMMIT_MODE must be one of {', '.join(COMMIT_MODES)}, "
                f"got {commit_mode!r}"
            )
        if db is not None:
            _refuse_engine_keys_beside_db(app.config)
            factory, engines = _adopt_flask_sqlalchemy(app, db)
        else:
            settings = Settings.from_mapping(
                ChainMap(app.config, {"DATABASE_URL": os.environ.get("DATABASE_URL")}),
                url_keys=URL_KEYS,
                prefix="UNIFIED_SESSION_",
            )
            factory = SessionFactory(settings=settings, expire_on_commit=_expire_on_commit(app))
            engines = {None: factory.engine}
        factory.signal_sender = app
        factory.context_provider = self._provider_for(app)
        state = UnifiedSessionState(self, factory, engines, db, commit_mode)
        state.unified_session_manager = UnitOfWorkManager(factory)
        state.request_session_manager = RequestSessionManager(app, factory, db)
        # One session per app context: every unit of work of this app in its app context
        # runs on the request manager's session (db.session's, with Flask-SQLAlchemy).
        factory.context_session = state.request_session_manager.context_session
        app.extensions[EXTENSION_KEY] = state
        app.unified_session_manager = state.unified_session_manager  # type: ignore[attr-defined]
        app.request_session_manager = state.request_session_manager  # type: ignore[attr-defined]
        state.request_session_manager.install(commit_mode)
        # ``flask unified-session doctor`` also for app.test_cli_runner() and apps whose
        # ``flask`` command does not load plugin entry points.
        app.cli.add_command(unified_session_group)

    def _provider_for(self, app: Flask) -> Callable[[], dict[str, Any]]:
        """What every unit of work of ``app`` records in ``session.info``."""
        providers = self.context_providers

        # Runs on every unit of work, so one function: context variables and plain
        # attributes, no proxies.
        def context() -> dict[str, Any]:
            request_context = _cv_request.get(None)
            if request_context is None:
                if not providers:
                    return {}  # no request, no user code to run
                info: dict[str, Any] = {}
                logged_in = False
            else:
                req = request_context.request
                environ = req.environ
                # One id per request, kept in the environ (a namespaced key).
                request_id = environ.get(_ENVIRON_REQUEST_ID)
                if request_id is None:
                    request_id = environ.get("HTTP_X_REQUEST_ID") or (
                        f"{_request_ids.prefix}-{next(_request_ids.counter)}"
                    )
                    environ[_ENVIRON_REQUEST_ID] = request_id
                rule = req.url_rule  # what req.endpoint reads, without its property call
                info = {
                    "endpoint": rule.endpoint if rule is not None else None,
                    "request_id": request_id,
                }
                logged_in = getattr(app, "login_manager", None) is not None
                if not (logged_in or providers):
                    return info  # no user code to run
            # A user loader or a provider that opens a unit of work itself would call back
            # in here: the inner call contributes nothing instead of recursing.
            if _in_context.get():
                return {}
            token = _in_context.set(True)
            try:
                if logged_in:
                    user_id = _login_user_id(environ)
                    if user_id is not None:
                        info["user_id"] = user_id
                for provider in providers:
                    extra = provider()
                    if extra:
                        info.update(extra)
            finally:
                _in_context.reset(token)
            return info

        return context


# Engine settings the extension would use without db=; with db= they belong to
# Flask-SQLAlchemy, and a silently ignored pool size is worse than an error.
_ENGINE_KEYS = (
    "UNIFIED_SESSION_DATABASE_URL",
    "UNIFIED_SESSION_ECHO",
    "UNIFIED_SESSION_POOL_SIZE",
    "UNIFIED_SESSION_MAX_OVERFLOW",
    "UNIFIED_SESSION_POOL_TIMEOUT",
    "UNIFIED_SESSION_POOL_RECYCLE",
    "UNIFIED_SESSION_POOL_PRE_PING",
    "UNIFIED_SESSION_POOL_PRE_PING_IDLE",
    "UNIFIED_SESSION_CONNECT_TIMEOUT",
    "UNIFIED_SESSION_PGBOUNCER",
)


def _refuse_engine_keys_beside_db(config: Mapping[str, Any]) -> None:
    given = [key for key in _ENGINE_KEYS if key in config]
    if given:
        raise ConfigurationError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set, but init_app was "
            "given db=: the engines are Flask-SQLAlchemy's, so their options belong in "
            "SQLALCHEMY_DATABASE_URI and SQLALCHEMY_ENGINE_OPTIONS (for example "
            "SQLALCHEMY_ENGINE_OPTIONS = {'pool_size': 20, 'pool_pre_ping': True})"
        )


def _adopt_flask_sqlalchemy(
    app: Flask, db: SQLAlchemy
) -> tuple[SessionFactory, dict[str | None, Engine]]:
    if "sqlalchemy" not in app.extensions:
        raise RuntimeError("call db.init_app(app) before unified.init_app(app, db=db)")
    with app.app_context():
        engines: dict[str | None, Engine] = dict(db.engines)
    for engine in engines.values():
        register_engine(engine)
    maker = db.session.session_factory
    options = {k: v for k, v in maker.kw.items() if k != "bind"}
    options["expire_on_commit"] = _expire_on_commit(app)
    default = engines.get(None) or next(iter(engines.values()))
    if len(engines) > 1:
        # Binds: Flask-SQLAlchemy's own Session class routes models with __bind_key__ to
        # their engines, as db.session does (it looks them up through current_app).
        factory = SessionFactory(engine=default, class_=maker.class_, **options)
    else:
        # One engine: a plain Session bound to it routes the same way, without the
        # per-query current_app look-up, and also works in a thread without app context.
        options.pop("db", None)
        factory = SessionFactory(engine=default, **options)
    _adopt_replicas(app, factory, maker)
    return factory, engines


def _adopt_replicas(app: Flask, factory: SessionFactory, maker: Any) -> None:
    # Replicas of the default engine's database, from UNIFIED_SESSION_REPLICA_URLS and
    # the REPLICA_* bounds (not engine options of the primary: allowed beside db=). Their
    # engines are the library's, with its default pool settings. db.session's commits
    # count for read-your-writes as much as the factory's own sessions' do.
    values = read_replica_settings(app.config, factory.engine.url, prefix="UNIFIED_SESSION_")
    urls = values.pop("replica_urls", ())
    if not urls:
        return
    from .replicas import ReplicaSet  # only when replicas are configured

    factory.replicas = ReplicaSet(
        urls,
        primary=factory.engine,
        **{name.removeprefix("replica_"): value for name, value in values.items()},
    )
    factory.replicas.watch(factory.sessionmaker)
    factory.replicas.watch(maker)


def _expire_on_commit(app: Flask) -> bool:
    return to_bool(
        "UNIFIED_SESSION_EXPIRE_ON_COMMIT",
        app.config.get("UNIFIED_SESSION_EXPIRE_ON_COMMIT", False),
    )


class _RequestIds:
    """Request ids unique across processes: a random per-process prefix and a counter.

    Cheaper than a uuid4 per request (no system call); the prefix is drawn again in a
    forked child so that two workers never hand out the same id.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        # Read in context() as f"{prefix}-{next(counter)}", with no call of its own.
        self.prefix = secrets.token_hex(6)
        self.counter = itertools.count(1)


_request_ids = _RequestIds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_request_ids.reseed)


_ENVIRON_USER = "flask_unified_session.user"


_current_user: Any = None  # flask_login.current_user, once an app with a login manager ran


def _login_user_id(environ: dict[str, Any]) -> Any:
    # Flask-Login is optional: only imported when the app has a login manager. The id is
    # read once per user object and request: after a commit db.session has expired the
    # user, and reading it again (get_id(), a column is_active) would send a SELECT and
    # begin a transaction in every later unit of the request.
    global _current_user
    if _current_user is None:
        from flask_login import current_user

        _current_user = current_user
    user = _current_user._get_current_object()
    cached = environ.get(_ENVIRON_USER)
    if cached is not None and cached[0] is user:
        return cached[1]
    # A user that is a mapped object expired by a commit reloads here: that reload must not
    # flush the request's pending objects before the unit's block has even begun.
    state = sa_inspect(user, raiseerr=False)
    session = getattr(state, "session", None)
    if session is None:
        user_id = user.get_id() if user.is_authenticated else None
    else:
        with session.no_autoflush:
            user_id = user.get_id() if user.is_authenticated else None
    environ[_ENVIRON_USER] = (user, user_id)
    return user_id


def _current_app_factory() -> SessionFactory | None:
    # The context variable, not current_app: this runs on every session_scope() call.
    context = _cv_app.get(None)
    if context is not None:
        state = context.app.extensions.get(EXTENSION_KEY)
        if state is not None:
            factory: SessionFactory = state.factory
            return factory
    return None


# Inside an app context, the package's create_session() and session_scope() use the app's
# factory: one pool, and one session, for the routes and the code they call.
_factory_module._current_factory_hooks.append(_current_app_factory)
# The owner units join on is the app context, when one is pushed.
_unit_of_work_module.context_owner = functools.partial(_cv_app.get, None)
