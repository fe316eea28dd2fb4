"""The ``check`` command's engine: stdlib :mod:`ast` rules FUS001-FUS007 and FUS900."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flask_unified_session.tooling.config import Config
from flask_unified_session.tooling.dependencies import declared_imports
from flask_unified_session.tooling.findings import RULES, Finding
from flask_unified_session.tooling.project import (
    ModuleResolver,
    decode_source,
    describe_unreadable,
    module_name,
)

SA_SESSION = frozenset({"sqlalchemy.orm.Session", "sqlalchemy.orm.session.Session"})
ENGINE_FACTORIES = frozenset({"create_engine", "create_async_engine"})
SESSION_MAKERS = frozenset({"sessionmaker", "async_sessionmaker"})
#: Handlers that show the author expects the import itself to fail.
IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})
#: Handlers that only make a guard when the try holds nothing but imports.
BROAD_ERRORS = frozenset({"Exception", "BaseException"})
NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*))?", re.I)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def walk_scope(nodes: Sequence[ast.AST]) -> Iterator[ast.AST]:
    """Walk ``nodes`` without entering nested functions, lambdas or classes.

    A def among ``nodes`` themselves is skipped too: a module-level walk must not see a
    function's local of the same name (its close() does not close the module's session).
    """
    stack = [node for node in reversed(nodes) if not isinstance(node, _SCOPES)]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _SCOPES):
                stack.append(child)


def _is_method_call(node: ast.AST, name: str, method: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == name
    )


def _closes(node: ast.AST, name: str) -> bool:
    """``name.close()``, or a closing call given ``name`` (``close_session(name)``)."""
    if _is_method_call(node, name, "close"):
        return True
    if not isinstance(node, ast.Call) or "close" not in (dotted(node.func) or "").lower():
        return False
    return any(isinstance(arg, ast.Name) and arg.id == name for arg in node.args)


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _bare_uses(node: ast.AST, name: str) -> bool:
    """Whether ``name`` appears in ``node`` other than as the object of an attribute access."""
    attribute_objects = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    return any(
        isinstance(n, ast.Name) and n.id == name and id(n) not in attribute_objects
        for n in ast.walk(node)
    )


@dataclass
class FileReport:
    """What checking one file produced: findings, plus engine calls for the cross-file rule."""

    findings: list[Finding] = field(default_factory=list)
    engine_calls: list[tuple[int, int]] = field(default_factory=list)
    maker_calls: list[tuple[int, int]] = field(default_factory=list)


class FileChecker(ast.NodeVisitor):
    """Apply the per-file rules to one parsed module."""

    def __init__(self, path: Path, display: str, config: Config, resolver: ModuleResolver) -> None:
        self.path = path
        self.display = display
        self.config = config
        self.resolver = resolver
        self.report = FileReport()
        self.aliases: dict[str, str] = {}
        self._guard_depth = 0
        self._with_calls: set[int] = set()
        self._scopes: list[Sequence[ast.stmt]] = []
        self._opened: dict[int, tuple[Sequence[ast.stmt], list[tuple[str, ast.stmt]]]] = {}
        #: module-level names bound by assignment: they hide an import of the same name
        self.rebound: set[str] = set()
        #: module-level names bound to sessionmaker(...): calling them opens a session
        self.session_makers: set[str] = set()
        #: module-level functions that return a new session (``return SessionLocal()``)
        self.factory_functions: set[str] = set()

    # -- helpers -----------------------------------------------------------------------------
    def add(self, node: ast.AST, code: str, message: str) -> None:
        """Record a finding at ``node``."""
        line = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0) + 1
        self.report.findings.append(Finding(self.display, line, col, code, message))

    def qualified(self, node: ast.expr) -> str | None:
        """Resolve a Name/Attribute chain through the file's imports."""
        name = dotted(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        if head in self.rebound:
            return name
        target = self.aliases.get(head)
        if target is None:
            return name
        return f"{target}.{rest}" if rest else target

    def _add_aliases(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    self.aliases[top] = top
        elif node.module and not node.level:
            for alias in node.names:
                self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def _collect_aliases(self, body: Sequence[ast.stmt]) -> None:
        """Module-level imports (also under a top-level ``if``/``try``), before the visit."""
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self._add_aliases(node)
            elif isinstance(node, ast.If):
                self._collect_aliases([*node.body, *node.orelse])
            elif isinstance(node, ast.Try):
                inner = [*node.body, *node.orelse, *node.finalbody]
                self._collect_aliases([*inner, *(s for h in node.handlers for s in h.body)])

    def _collect_bindings(self, body: Sequence[ast.stmt]) -> None:
        """Module-level assignments and functions that make or hide session factories."""
        for node in body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                self.rebound.update(names)
                value = node.value
                if (
                    isinstance(value, ast.Call)
                    and (dotted(value.func) or "").rpartition(".")[2] in SESSION_MAKERS
                ):
                    self.session_makers.update(names)
            elif isinstance(node, ast.FunctionDef) and self._returns_new_session(node):
                self.factory_functions.add(node.name)
            elif isinstance(node, ast.If):
                self._collect_bindings([*node.body, *node.orelse])

    def _returns_new_session(self, node: ast.FunctionDef) -> bool:
        """A plain function (no yield, no decorator) whose returns are session factory calls."""
        if node.decorator_list:
            return False
        returns = []
        for inner in walk_scope(node.body):
            if isinstance(inner, (ast.Yield, ast.YieldFrom)):
                return False
            if isinstance(inner, ast.Return) and inner.value is not None:
                returns.append(inner.value)
        return bool(returns) and all(
            isinstance(value, ast.Call) and self._makes_session(value, nested=True)
            for value in returns
        )

    def _makes_session(self, call: ast.Call, nested: bool = False) -> bool:
        qualified = self.qualified(call.func)
        if qualified is None:
            return False
        if qualified in SA_SESSION:
            return True
        local = dotted(call.func) or ""
        if local in self.session_makers or (nested and local.endswith(".Session")):
            return True
        last = local.rpartition(".")[2]
        if last not in self.config.session_factories:
            return False
        if last.startswith("get_"):
            # A function called get_session is as often an HTTP client, a cached request
            # session or a generator dependency: only a manager's method, or a function this
            # file defines as returning a new session, counts.
            if isinstance(call.func, ast.Attribute):
                return self.config.is_manager(dotted(call.func.value))
            return local in self.factory_functions
        return True

    def is_session_factory(self, call: ast.Call) -> bool:
        """A call producing a new session: ``Session()``, a sessionmaker or a configured factory."""
        return self._makes_session(call)

    # -- entry point -------------------------------------------------------------------------
    def run(self, tree: ast.Module) -> FileReport:
        """Check ``tree`` and return the report."""
        self._collect_aliases(tree.body)
        self._collect_bindings(tree.body)
        self._scopes.append(tree.body)
        self.visit(tree)
        for body, opened in self._opened.values():
            nodes = list(walk_scope(body))
            for name, assign in opened:
                status = self._closing_status(nodes, name, body, assign)
                if status is not None:
                    self.add(assign, "FUS002", f"session {name!r} {status}")
        return self.report

    # -- FUS003: imports ---------------------------------------------------------------------
    @staticmethod
    def _is_import_guard(node: ast.Try) -> bool:
        """``try: import x / except ImportError:``, not any try whose handler is broad.

        A function body wrapped in ``try/except Exception`` is error handling, and an import
        inside it that cannot resolve is still a broken import.
        """
        only_imports = all(
            isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass, ast.Assign))
            for stmt in node.body
        )
        for handler in node.handlers:
            types = (
                []
                if handler.type is None
                else handler.type.elts
                if isinstance(handler.type, ast.Tuple)
                else [handler.type]
            )
            names = {(dotted(t) or "").rpartition(".")[2] for t in types}
            if names & IMPORT_ERRORS:
                return True
            if only_imports and (handler.type is None or names & BROAD_ERRORS):
                return True
        return False

    def visit_Try(self, node: ast.Try) -> None:
        guarded = self._is_import_guard(node)
        if guarded:
            self._guard_depth += 1
            for stmt in node.body:
                self.visit(stmt)
            self._guard_depth -= 1
            for part in (*node.handlers, *node.orelse, *node.finalbody):
                self.visit(part)
        else:
            self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        names = {dotted(n) for n in ast.walk(node.test) if isinstance(n, (ast.Name, ast.Attribute))}
        guarded = bool(
            names & {"TYPE_CHECKING", "typing.TYPE_CHECKING", "sys.version_info", "sys.platform"}
        )
        self._guard_depth += guarded
        self.generic_visit(node)
        self._guard_depth -= guarded

    def visit_Import(self, node: ast.Import) -> None:
        self._add_aliases(node)
        if self._guard_depth:
            return
        for alias in node.names:
            if not self.resolver.exists(alias.name, self.path):
                self.add(
                    node, "FUS003", f"module {alias.name!r} not found in project or environment"
                )

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._add_aliases(node)
        if self._guard_depth:
            return
        if node.level:
            if not self.resolver.relative_exists(node.module, node.level, self.path):
                shown = "." * node.level + (node.module or "")
                self.add(node, "FUS003", f"relative module {shown!r} not found")
        elif node.module and not self.resolver.exists(node.module, self.path):
            self.add(node, "FUS003", f"module {node.module!r} not found in project or environment")

    # -- FUS006 / FUS001 / FUS004 / FUS005 ---------------------------------------------------
    def _visit_with(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            call = item.context_expr
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in self.config.accessors
                and self.config.is_manager(dotted(call.func.value))
            ):
                self._with_calls.add(id(call))
                self.add(
                    call,
                    "FUS006",
                    f"'with {dotted(call.func)}()' closes the session but never commits",
                )
        self.generic_visit(node)

    visit_With = _visit_with
    visit_AsyncWith = _visit_with

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in self.config.accessors
            and id(node) not in self._with_calls
            and self.config.is_manager(dotted(func.value))
        ):
            self.add(node, "FUS001", f"direct {dotted(func)}() call; use the unit of work")
        qualified = self.qualified(func)
        if qualified is not None:
            last = qualified.rpartition(".")[2]
            if last in ENGINE_FACTORIES:
                self.report.engine_calls.append((node.lineno, node.col_offset + 1))
            elif last in SESSION_MAKERS and qualified.startswith("sqlalchemy"):
                self.report.maker_calls.append((node.lineno, node.col_offset + 1))
            elif (
                qualified in SA_SESSION
                and not node.args
                and not any(k.arg in ("bind", None) for k in node.keywords)
            ):
                self.add(node, "FUS005", "Session() without bind")
        self.generic_visit(node)

    # -- FUS002: sessions not closed on every path -------------------------------------------
    def _visit_scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._scopes.append(node.body)
        self.generic_visit(node)
        self._scopes.pop()

    visit_FunctionDef = _visit_scope
    visit_AsyncFunctionDef = _visit_scope

    def _visit_assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        if isinstance(node, ast.Assign):
            target = node.targets[0] if len(node.targets) == 1 else None
        else:
            target = node.target
        value = node.value
        if (
            isinstance(target, ast.Name)
            and isinstance(value, ast.Call)
            and self.is_session_factory(value)
        ):
            body = self._scopes[-1]
            self._opened.setdefault(id(body), (body, []))[1].append((target.id, node))
        self.generic_visit(node)

    visit_Assign = _visit_assign
    visit_AnnAssign = _visit_assign

    @staticmethod
    def _closing_status(
        nodes: list[ast.AST], name: str, body: Sequence[ast.stmt], assign: ast.stmt
    ) -> str | None:
        """None when ``name`` is closed on every path or handed over, else what is wrong."""
        if _closed_after(body, assign, name):
            return None
        closed_anywhere = closed_in_branch = False
        for node in nodes:
            if isinstance(node, ast.Try) and any(
                _closes(n, name) for s in node.finalbody for n in ast.walk(s)
            ):
                closed_in_branch = True
            if (
                isinstance(node, (ast.Return, ast.Yield, ast.YieldFrom))
                and node.value is not None
                and _bare_uses(node.value, name)
            ):
                return None
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets)
                and _bare_uses(node.value, name)
            ):
                return None
            if _closes(node, name):
                closed_anywhere = True
        if closed_in_branch and not _close_follows(body, assign, name):
            return "is closed in a finally on some paths only: the others leak it"
        if closed_anywhere:
            return "is closed, but not in a finally: an exception leaks it"
        return "is never closed"


def _closes_block(stmt: ast.stmt, name: str) -> bool:
    """A statement that closes ``name`` however it ends: try/finally close, or ``with``."""
    if isinstance(stmt, ast.Try) and any(
        _closes(n, name) for s in stmt.finalbody for n in ast.walk(s)
    ):
        return True
    return isinstance(stmt, (ast.With, ast.AsyncWith)) and any(
        _mentions(item.context_expr, name) for item in stmt.items
    )


def _closed_after(body: Sequence[ast.stmt], assign: ast.stmt, name: str) -> bool:
    """Whether every path from ``assign`` passes a closing statement.

    The closing statement must follow the assignment in its own block or in an enclosing
    one, or be the finally of a try the assignment is inside; one in a branch does not
    close the other branch's session.
    """
    path = _path_to(body, assign)
    if path is None:
        return False
    for block, index, owner in reversed(path):
        for stmt in _until_rebound(block[index + 1 :], name):
            if _closes_block(stmt, name):
                return True
        if (
            isinstance(owner, ast.Try)
            and block is not owner.finalbody
            and any(_closes(n, name) for s in owner.finalbody for n in ast.walk(s))
        ):
            return True
    return False


def _close_follows(body: Sequence[ast.stmt], assign: ast.stmt, name: str) -> bool:
    """Whether a statement after ``assign`` (in its block or an enclosing one) closes it."""
    path = _path_to(body, assign) or []
    return any(
        _closes(node, name)
        for block, index, _owner in path
        for stmt in _until_rebound(block[index + 1 :], name)
        for node in _walk_outside_finally(stmt)
    )


def _until_rebound(stmts: Sequence[ast.stmt], name: str) -> Iterator[ast.stmt]:
    """``stmts`` up to (not including) one that binds ``name`` again: a later close() is
    the next session's."""
    for stmt in stmts:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return
        yield stmt


def _walk_outside_finally(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` that does not enter ``finally`` blocks (a close there is reported apart)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child_field, value in ast.iter_fields(current):
            if isinstance(current, ast.Try) and child_field == "finalbody":
                continue
            items = value if isinstance(value, list) else [value]
            stack.extend(item for item in items if isinstance(item, ast.AST))


_Path = list[tuple[Sequence[ast.stmt], int, "ast.stmt | None"]]


def _path_to(
    body: Sequence[ast.stmt], target: ast.stmt, owner: ast.stmt | None = None
) -> _Path | None:
    """The blocks from ``body`` down to ``target``: (block, index in it, statement owning it)."""
    for index, stmt in enumerate(body):
        if stmt is target:
            return [(body, index, owner)]
        if isinstance(stmt, _SCOPES):
            continue
        for block in _blocks(stmt):
            inner = _path_to(block, target, stmt)
            if inner is not None:
                return [(body, index, owner), *inner]
    return None


def _blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists directly inside a compound statement."""
    blocks: list[list[ast.stmt]] = []
    for field_name in ("body", "orelse", "finalbody"):
        value = getattr(stmt, field_name, None)
        if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
            blocks.append(value)
    for handler in getattr(stmt, "handlers", []):
        blocks.append(handler.body)
    for case in getattr(stmt, "cases", []):
        blocks.append(case.body)
    return blocks


def _suppressed(finding: Finding, lines: list[str]) -> bool:
    if finding.line > len(lines):
        return False
    match = NOQA.search(lines[finding.line - 1])
    if match is None:
        return False
    codes = match.group("codes")
    if codes is None:
        return True
    return finding.code in {c.strip().upper() for c in codes.split(",")}


@dataclass
class CheckResult:
    """Findings of a ``check`` run and how many files were read."""

    findings: list[Finding] = field(default_factory=list)
    files: int = 0


def check_file(path: Path, display: str, config: Config, resolver: ModuleResolver) -> FileReport:
    """Check one file; a file that cannot be read or parsed yields a FUS900 finding."""
    try:
        source = path.read_bytes()
        tree = ast.parse(source, filename=display)
    except SyntaxError as exc:
        message = f"syntax error: {exc.msg}"
        finding = Finding(display, exc.lineno or 1, (exc.offset or 0) or 1, "FUS900", message)
        return FileReport(findings=[finding])
    except ValueError as exc:  # null bytes (Python < 3.12)
        return FileReport(findings=[Finding(display, 1, 1, "FUS900", f"syntax error: {exc}")])
    except OSError as exc:
        message = describe_unreadable(path, exc)
        return FileReport(findings=[Finding(display, 1, 1, "FUS900", message)])
    report = FileChecker(path, display, config, resolver).run(tree)
    if report.findings:
        lines = decode_source(source).splitlines()
        report.findings = [f for f in report.findings if not _suppressed(f, lines)]
        report.engine_calls = [
            (line, col)
            for line, col in report.engine_calls
            if not _suppressed(Finding(display, line, col, "FUS004", ""), lines)
        ]
        report.maker_calls = [
            (line, col)
            for line, col in report.maker_calls
            if not _suppressed(Finding(display, line, col, "FUS007", ""), lines)
        ]
    return report


def check_project(files: Sequence[tuple[Path, str]], root: Path, config: Config) -> CheckResult:
    """Check ``files`` (path, displayed name) of the project at ``root``, including FUS004."""
    resolver = ModuleResolver(root, declared_imports(root))
    result = CheckResult(files=len(files))
    engines: dict[str, list[tuple[str, int, int]]] = {}
    makers: dict[str, list[tuple[str, int, int]]] = {}
    for path, display in files:
        report = check_file(path, display, config, resolver)
        result.findings.extend(report.findings)
        for calls, found in ((report.engine_calls, engines), (report.maker_calls, makers)):
            if calls:
                module = module_name(path, root)
                found.setdefault(module, []).extend((display, line, col) for line, col in calls)
    result.findings.extend(_spread("FUS004", "engine", engines, config))
    result.findings.extend(_spread("FUS007", "session factory", makers, config))
    result.findings = sorted(f for f in result.findings if f.code not in config.ignore)
    return result


def _spread(
    code: str, what: str, calls_by_module: dict[str, list[tuple[str, int, int]]], config: Config
) -> list[Finding]:
    """Findings for objects of one kind created in more than one module (or outside the allowed)."""
    engines = calls_by_module
    findings: list[Finding] = []
    allowed = set(config.engine_modules)
    for module, calls in engines.items():
        if allowed:
            if module in allowed:
                continue
            reason = f"module {module!r} is not in engine-modules"
        elif len(engines) > 1:
            others = sorted(m for m in engines if m != module)
            reason = f"{what} objects are also created in {', '.join(others[:3])}"
            reason += " ..." if len(others) > 3 else ""
        else:
            continue
        findings.extend(
            Finding(display, line, col, code, f"{what} created here: {reason}")
            for display, line, col in calls
        )
    return findings


__all__ = ["RULES", "CheckResult", "FileChecker", "check_file", "check_project", "dotted"]
