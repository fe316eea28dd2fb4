"""Which unit of work a migrated site gets, chosen from where its code runs.

``current_app.unified_session_manager.get_db_session()`` only works inside a Flask app
context. A script, a thread target, a function run through ``asyncio.to_thread``, a worker
task, a FastAPI module or a project without Flask gets the framework-free
``session_scope()``, which needs no Flask import and still joins the app context's unit of
work when there is one. Nothing here guesses in favour of Flask: code not known to run in an
app context gets the framework-free target.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from flask_unified_session.tooling.checker import dotted
from flask_unified_session.tooling.config import Config

#: Decorator attributes that make a function a Flask view or request hook.
VIEW_DECORATORS = frozenset(
    {
        "route",
        "get",
        "post",
        "put",
        "patch",
        "delete",
        "before_request",
        "after_request",
        "teardown_request",
        "before_app_request",
        "errorhandler",
        "app_errorhandler",
        "context_processor",
        "app_context_processor",
        "login_required",
        "user_loader",
        "request_loader",
        "cli.command",
    }
)
#: Decorators of worker tasks (Celery, RQ, APScheduler): no app context unless set up.
TASK_DECORATORS = frozenset({"task", "shared_task", "scheduled_job", "job", "periodic_task"})
#: Frameworks whose code never runs in a Flask app context.
OTHER_FRAMEWORKS = frozenset(
    {"fastapi", "starlette", "aiogram", "telegram", "telebot", "discord", "django", "litestar"}
)
#: Calls that run a function somewhere else (another thread, process or executor).
_RUNNERS = frozenset({"to_thread", "run_in_executor", "submit", "map", "apply_async", "Timer"})
#: Names whose use shows a function runs in a request or app context.
CONTEXT_NAMES = frozenset(
    {
        "request",
        "current_app",
        "g",
        "flash",
        "render_template",
        "current_user",
        "jsonify",
        "url_for",
        "redirect",
        "make_response",
        "abort",
        "login_user",
        "logout_user",
    }
)
_FLASK_IMPORT = re.compile(rb"^\s*(from\s+flask[\s.]|import\s+flask\b)", re.M)


def mentions_flask(source: bytes) -> bool:
    """Whether a file's source imports Flask (a byte scan, for the project-wide fact)."""
    return bool(_FLASK_IMPORT.search(source))


@dataclass(frozen=True)
class Target:
    """A unit-of-work expression, the imports it needs, and why it was chosen."""

    expr: str
    imports: tuple[tuple[str, str], ...]
    why: str


@dataclass(frozen=True)
class ModuleFacts:
    """What a module says about where its functions run."""

    imports_flask: bool
    other_framework: str | None
    is_script: bool
    views: frozenset[str]
    elsewhere: frozenset[str]  # functions run as thread targets, via to_thread, or as tasks
    in_context: frozenset[str]  # functions using request / current_app / flash ...


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    names: set[str] = set()
    for decorator in node.decorator_list:
        func = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = dotted(func) or ""
        names.add(name.rpartition(".")[2])
        if name.endswith("cli.command"):
            names.add("cli.command")
    return names


def _runs_elsewhere(call: ast.Call) -> list[str]:
    """Names of functions ``call`` hands to a thread, an executor or a task queue."""
    name = (dotted(call.func) or "").rpartition(".")[2]
    found: list[str] = []
    for keyword in call.keywords:
        if keyword.arg == "target":
            found.append((dotted(keyword.value) or "").rpartition(".")[2])
    if name in _RUNNERS:
        index = 1 if name in ("run_in_executor", "Timer") else 0
        if len(call.args) > index:
            found.append((dotted(call.args[index]) or "").rpartition(".")[2])
    return [f for f in found if f]


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    parts = [node.test.left, *node.test.comparators]
    return any(isinstance(p, ast.Name) and p.id == "__name__" for p in parts) and any(
        isinstance(p, ast.Constant) and p.value == "__main__" for p in parts
    )


def _main_starts_app(node: ast.If) -> bool:
    """A main block that serves the Flask app or enters its context (the app's own runner)."""
    for inner in ast.walk(node):
        if isinstance(inner, ast.Call):
            name = dotted(inner.func) or ""
            if name.endswith(("app.run", "app_context", "socketio.run", "serve")):
                return True
    return False


def module_facts(tree: ast.Module) -> ModuleFacts:
    """Collect :class:`ModuleFacts` from a parsed module."""
    imports_flask = False
    other: str | None = None
    functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    calls: list[ast.Call] = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Call):
            calls.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append(node)
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module]
        for module in modules:
            top = module.partition(".")[0]
            imports_flask = imports_flask or top == "flask"
            if top in OTHER_FRAMEWORKS and other is None:
                other = top
    views: set[str] = set()
    elsewhere: set[str] = set()
    in_context: set[str] = set()
    for call in calls:
        elsewhere.update(_runs_elsewhere(call))
    for node in functions:
        if imports_flask and any(
            isinstance(n, ast.Name) and n.id in CONTEXT_NAMES for n in ast.walk(node)
        ):
            in_context.add(node.name)
        decorators = _decorator_names(node)
        if decorators & VIEW_DECORATORS:
            views.add(node.name)
        if decorators & TASK_DECORATORS:
            elsewhere.add(node.name)
    mains = [node for node in tree.body if _is_main_guard(node)]
    is_script = bool(mains) and not any(
        _main_starts_app(node) for node in mains if isinstance(node, ast.If)
    )
    return ModuleFacts(
        imports_flask,
        other,
        is_script,
        frozenset(views),
        frozenset(elsewhere),
        frozenset(in_context),
    )


def _imports_for(expr: str) -> tuple[tuple[str, str], ...]:
    if expr.startswith("current_app."):
        return (("flask", "current_app"),)
    if expr.startswith("session_scope("):
        return (("flask_unified_session", "session_scope"),)
    if expr.startswith("async_session_scope("):
        return (("flask_unified_session.asyncio", "async_session_scope"),)
    return ()


def framework_free(config: Config, why: str) -> Target:
    """The target for code that cannot count on an app context."""
    return Target(config.framework_target, _imports_for(config.framework_target), why)


def choose_target(
    config: Config,
    project_has_flask: bool,
    module: ModuleFacts,
    function: str | None,
    service: bool,
) -> Target:
    """The unit of work for a site in ``function`` (a method of a service class if ``service``)."""
    if not project_has_flask:
        return framework_free(config, "the project does not depend on Flask")
    if module.other_framework is not None:
        return framework_free(config, f"a {module.other_framework} module")
    if service:
        return Target(
            config.service_target,
            (("flask_unified_session", "SessionServiceMixin"),),
            "a service class (the mixin works in and out of an app context)",
        )
    if function is not None and function in module.elsewhere:
        return framework_free(config, "runs in a thread, an executor or a task")
    if function is not None and function in module.views:
        return Target(config.migrate_target, _imports_for(config.migrate_target), "a Flask view")
    if module.is_script:
        return framework_free(config, "a script (no app context)")
    if function is not None and function in module.in_context:
        return Target(
            config.migrate_target,
            _imports_for(config.migrate_target),
            "uses the request or app context",
        )
    return framework_free(config, "not known to run in an app context")
