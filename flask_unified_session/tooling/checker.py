"""The ``check`` command's engine: stdlib :mod:`ast` rules FUS001-FUS006 and FUS900."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flask_unified_session.tooling.config import Config
from flask_unified_session.tooling.findings import RULES, Finding
from flask_unified_session.tooling.project import ModuleResolver, module_name

SA_SESSION = frozenset({"sqlalchemy.orm.Session", "sqlalchemy.orm.session.Session"})
ENGINE_FACTORIES = frozenset({"create_engine", "create_async_engine"})
IMPORT_GUARDS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
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
    """Walk ``nodes`` without entering nested functions, lambdas or classes."""
    stack = list(reversed(nodes))
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
        self._opened: dict[int, tuple[Sequence[ast.stmt], list[tuple[str, ast.AST]]]] = {}

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

    def is_session_factory(self, call: ast.Call) -> bool:
        """A call producing a new session: ``sqlalchemy.orm.Session()`` or a configured factory."""
        qualified = self.qualified(call.func)
        if qualified is None:
            return False
        if qualified in SA_SESSION:
            return True
        last = qualified.rpartition(".")[2]
        local = dotted(call.func) or ""
        return last in self.config.session_factories or local in self.config.session_factories

    # -- entry point -------------------------------------------------------------------------
    def run(self, tree: ast.Module) -> FileReport:
        """Check ``tree`` and return the report."""
        self._collect_aliases(tree.body)
        self._scopes.append(tree.body)
        self.visit(tree)
        for body, opened in self._opened.values():
            nodes = list(walk_scope(body))
            for name, assign in opened:
                status = self._closing_status(nodes, name)
                if status is not None:
                    self.add(assign, "FUS002", f"session {name!r} {status}")
        return self.report

    # -- FUS003: imports ---------------------------------------------------------------------
    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(
            handler.type is None
            or any(
                dotted(t) in IMPORT_GUARDS
                for t in (
                    handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                )
            )
            for handler in node.handlers
        )
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
                and call.func.attr == "get_session"
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
            and func.attr == "get_session"
            and id(node) not in self._with_calls
            and self.config.is_manager(dotted(func.value))
        ):
            self.add(node, "FUS001", f"direct {dotted(func)}() call; use the unit of work")
        qualified = self.qualified(func)
        if qualified is not None:
            last = qualified.rpartition(".")[2]
            if last in ENGINE_FACTORIES:
                self.report.engine_calls.append((node.lineno, node.col_offset + 1))
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
    def _closing_status(nodes: list[ast.AST], name: str) -> str | None:
        """None when ``name`` is closed on every path or handed over, else what is wrong."""
        closed_anywhere = False
        for node in nodes:
            if isinstance(node, ast.Try) and any(
                _closes(n, name) for s in node.finalbody for n in ast.walk(s)
            ):
                return None
            if isinstance(node, (ast.With, ast.AsyncWith)) and any(
                _mentions(item.context_expr, name) for item in node.items
            ):
                return None
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
        if closed_anywhere:
            return "is closed, but not in a finally: an exception leaks it"
        return "is never closed"


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
        return FileReport(findings=[Finding(display, 1, 1, "FUS900", f"cannot read: {exc}")])
    report = FileChecker(path, display, config, resolver).run(tree)
    if report.findings:
        lines = source.decode("utf-8", errors="replace").splitlines()
        report.findings = [f for f in report.findings if not _suppressed(f, lines)]
        report.engine_calls = [
            (line, col)
            for line, col in report.engine_calls
            if not _suppressed(Finding(display, line, col, "FUS004", ""), lines)
        ]
    return report


def check_project(files: Sequence[tuple[Path, str]], root: Path, config: Config) -> CheckResult:
    """Check ``files`` (path, displayed name) of the project at ``root``, including FUS004."""
    resolver = ModuleResolver(root)
    result = CheckResult(files=len(files))
    engines: dict[str, list[tuple[str, int, int]]] = {}
    for path, display in files:
        report = check_file(path, display, config, resolver)
        result.findings.extend(report.findings)
        if report.engine_calls:
            module = module_name(path, root)
            engines.setdefault(module, []).extend(
                (display, line, col) for line, col in report.engine_calls
            )
    allowed = set(config.engine_modules)
    for module, calls in engines.items():
        if allowed:
            if module in allowed:
                continue
            reason = f"module {module!r} is not in engine-modules"
        elif len(engines) > 1:
            others = sorted(m for m in engines if m != module)
            reason = f"engines are also created in {', '.join(others[:3])}"
            reason += " ..." if len(others) > 3 else ""
        else:
            continue
        result.findings.extend(
            Finding(display, line, col, "FUS004", f"engine created here: {reason}")
            for display, line, col in calls
        )
    result.findings = sorted(f for f in result.findings if f.code not in config.ignore)
    return result


__all__ = ["RULES", "CheckResult", "FileChecker", "check_file", "check_project", "dotted"]
