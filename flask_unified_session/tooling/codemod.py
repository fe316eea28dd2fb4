"""The ``migrate`` codemod (libcst): ``x = manager.get_session()`` + ``try/finally`` to ``with``.

This module imports :mod:`libcst`; only the ``migrate`` command imports it, lazily.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from flask_unified_session.tooling.analysis import (
    escape_reason,
    exit_problem,
    is_method_stmt,
    mentions,
)
from flask_unified_session.tooling.checker import dotted as _ast_dotted
from flask_unified_session.tooling.config import Config

MIXIN = "SessionServiceMixin"
SERVICE_MANAGER = "self.db_manager"


@dataclass(frozen=True)
class LeftSite:
    """A session site ``migrate`` did not rewrite, and why."""

    path: str
    line: int
    reason: str

    def to_text(self) -> str:
        """Render as ``path:line: reason``."""
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class FileOutcome:
    """The result of migrating one file."""

    path: str
    original: str
    new: str
    rewritten: int = 0
    left: list[LeftSite] = field(default_factory=list)
    error: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the file's text changed."""
        return self.new != self.original

    def diff(self) -> str:
        """Unified diff of the change (empty when unchanged)."""
        return unified_diff(self.original, self.new, self.path)


def _range(start: int, length: int) -> str:
    """The ``start,length`` of a hunk header (1-based; an empty range names the line before)."""
    first = start + 1 if length else start
    return str(first) if length == 1 else f"{first},{length}"


def unified_diff(old: str, new: str, path: str, context: int = 3) -> str:
    """A unified diff of ``old`` to ``new``.

    :func:`difflib.unified_diff` cannot turn off the "popular line" heuristic, which makes
    whole classes look rewritten in files with many blank or repeated lines.
    """
    a = old.splitlines(keepends=True)
    b = new.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    out: list[str] = []
    for group in matcher.get_grouped_opcodes(context):
        if not out:
            out += [f"--- a/{path}\n", f"+++ b/{path}\n"]
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@\n")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                out += [" " + line for line in a[a1:a2]]
                continue
            out += ["-" + line for line in a[a1:a2]]
            out += ["+" + line for line in b[b1:b2]]
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def _dotted(node: cst.BaseExpression) -> str | None:
    parts: list[str] = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if isinstance(node, cst.Name):
        parts.append(node.value)
        return ".".join(reversed(parts))
    return None


_EMPTY = cst.Module(body=[])


def _to_ast(node: cst.CSTNode) -> list[ast.stmt]:
    """Parse the source of a statement node back with :mod:`ast` (for the safety analysis)."""
    return ast.parse(_EMPTY.code_for_node(node)).body


def _pass_line() -> cst.SimpleStatementLine:
    return cst.SimpleStatementLine(body=[cst.Pass()])


@dataclass
class _Scope:
    kind: str  # "def", "class", "if", "else", "try", "loop", "with", "except", "finally"
    node: cst.CSTNode
    needs_mixin: bool = False


class SessionMigrator(cst.CSTTransformer):
    """Rewrite safe sites in place; record the others with their reason."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, config: Config, display: str) -> None:
        super().__init__()
        self.config = config
        self.display = display
        self.scopes: list[_Scope] = []
        self.rewritten = 0
        self.left: list[LeftSite] = []
        self.need_flask = False
        self.need_mixin = False
        self.target = cst.parse_expression(config.migrate_target)
        self.service_target = cst.parse_expression(config.service_target)

    # -- scope tracking ----------------------------------------------------------------------
    def _push(self, kind: str, node: cst.CSTNode) -> None:
        self.scopes.append(_Scope(kind, node))

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._push("def", node)

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        self.scopes.pop()
        return updated_node

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._push("class", node)

    def leave_ClassDef(
        self, original_node: cst.ClassDef, updated_node: cst.ClassDef
    ) -> cst.ClassDef:
        scope = self.scopes.pop()
        if not scope.needs_mixin:
            return updated_node
        if any((_dotted(arg.value) or "").endswith(MIXIN) for arg in updated_node.bases):
            return updated_node
        self.need_mixin = True
        bases = list(updated_node.bases)
        if bases and isinstance(bases[-1].comma, cst.MaybeSentinel):
            bases[-1] = bases[-1].with_changes(
                comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            )
        new_arg = cst.Arg(value=cst.Name(MIXIN))
        if updated_node.keywords:
            new_arg = new_arg.with_changes(
                comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            )
        return updated_node.with_changes(bases=[*bases, new_arg])

    def visit_If(self, node: cst.If) -> None:
        self._push("if", node)

    def leave_If(self, original_node: cst.If, updated_node: cst.If) -> cst.If:
        self.scopes.pop()
        return updated_node

    def visit_Else(self, node: cst.Else) -> None:
        parent = self.scopes[-1].kind if self.scopes else ""
        self._push("else" if parent == "if" else f"else-{parent}", node)

    def leave_Else(self, original_node: cst.Else, updated_node: cst.Else) -> cst.Else:
        self.scopes.pop()
        return updated_node

    def visit_For(self, node: cst.For) -> None:
        self._push("loop", node)

    def leave_For(
        self, original_node: cst.For, updated_node: cst.For
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement] | cst.RemovalSentinel:
        self.scopes.pop()
        return updated_node

    def visit_While(self, node: cst.While) -> None:
        self._push("loop", node)

    def leave_While(
        self, original_node: cst.While, updated_node: cst.While
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement] | cst.RemovalSentinel:
        self.scopes.pop()
        return updated_node

    def visit_With(self, node: cst.With) -> None:
        self._push("with", node)

    def leave_With(
        self, original_node: cst.With, updated_node: cst.With
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement] | cst.RemovalSentinel:
        self.scopes.pop()
        return updated_node

    def visit_Try(self, node: cst.Try) -> None:
        self._push("try", node)

    def leave_Try(
        self, original_node: cst.Try, updated_node: cst.Try
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement] | cst.RemovalSentinel:
        self.scopes.pop()
        return updated_node

    def visit_ExceptHandler(self, node: cst.ExceptHandler) -> None:
        self._push("except", node)

    def leave_ExceptHandler(
        self, original_node: cst.ExceptHandler, updated_node: cst.ExceptHandler
    ) -> cst.ExceptHandler:
        self.scopes.pop()
        return updated_node

    def visit_Finally(self, node: cst.Finally) -> None:
        self._push("finally", node)

    def leave_Finally(self, original_node: cst.Finally, updated_node: cst.Finally) -> cst.Finally:
        self.scopes.pop()
        return updated_node

    # -- blocks ------------------------------------------------------------------------------
    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.BaseSuite:
        body = self._process(list(original_node.body), list(updated_node.body))
        return updated_node.with_changes(body=body)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        self._process(list(original_node.body), list(updated_node.body))
        return updated_node  # module-level sites are reported, never rewritten

    def _site_name(self, stmt: cst.BaseStatement) -> tuple[str, str] | None:
        """(variable, manager) when ``stmt`` is ``variable = <manager>.get_session()``."""
        if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
            return None
        small = stmt.body[0]
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            target: cst.BaseExpression = small.targets[0].target
            value: cst.BaseExpression | None = small.value
        elif isinstance(small, cst.AnnAssign):
            target, value = small.target, small.value
        else:
            return None
        if not isinstance(target, cst.Name) or not isinstance(value, cst.Call):
            return None
        func = value.func
        if not isinstance(func, cst.Attribute) or func.attr.value != "get_session" or value.args:
            return None
        manager = _dotted(func.value)
        if manager is None or not self.config.is_manager(manager):
            return None
        return target.value, manager

    def _line(self, node: cst.CSTNode) -> int:
        try:
            return self.get_metadata(PositionProvider, node).start.line
        except KeyError:
            return 0

    def _process(
        self, original: list[cst.BaseStatement], body: list[cst.BaseStatement]
    ) -> list[cst.BaseStatement]:
        result: list[cst.BaseStatement] = []
        index = 0
        while index < len(body):
            site = self._site_name(body[index])
            if site is None:
                result.append(body[index])
                index += 1
                continue
            outcome = self._rewrite(body, index, *site)
            if isinstance(outcome, str):
                self.left.append(LeftSite(self.display, self._line(original[index]), outcome))
                result.append(body[index])
                index += 1
            else:
                replacement, index = outcome
                result.extend(replacement)
                self.rewritten += 1
        return result

    # -- one site ----------------------------------------------------------------------------
    def _enclosing_reason(self, name: str) -> str | None:
        if not any(scope.kind == "def" for scope in self.scopes):
            return "module-level session (no function to scope a unit of work)"
        if not self.scopes:
            return None
        owner = self.scopes[-1]
        if owner.kind in ("if", "else"):
            return "ownership is conditional (the session is obtained inside an if)"
        if (
            owner.kind == "try"
            and isinstance(owner.node, cst.Try)
            and self._closes_in_finally(owner.node, name)
        ):
            return "the assignment is inside the try"
        return None

    def _rest_reason(self, rest: Sequence[cst.BaseStatement], name: str) -> str:
        """Why statements after the assignment are not a ``try/finally: close()`` site."""
        code = [node for stmt in rest for node in _to_ast(stmt)]
        for node in code:
            if isinstance(node, ast.Try) and any(
                isinstance(n, ast.Call) and _ast_dotted(n.func) == f"{name}.close"
                for n in ast.walk(ast.Module(body=node.finalbody, type_ignores=[]))
            ):
                return "the finally closes the session conditionally"
        reason = escape_reason(code, name)
        if reason in ("the session is returned", "the session is yielded"):
            return reason
        if reason == "close() is called inside the block":
            return "close() is not in a finally"
        if reason is not None and "stored" in reason:
            return reason
        return "no try/finally closes the session right after it is obtained"

    def _choose_target(self, manager: str) -> cst.BaseExpression | str:
        if manager.startswith("self."):
            if manager != SERVICE_MANAGER:
                return f"{manager} is not self.db_manager: SessionServiceMixin would not use it"
            classes = [scope for scope in self.scopes if scope.kind == "class"]
            if not classes:
                return "self.db_manager used outside a class"
            classes[-1].needs_mixin = True
            return self.service_target
        if self.config.migrate_target.startswith("current_app."):
            self.need_flask = True
        return self.target

    def _rewrite(
        self, body: list[cst.BaseStatement], index: int, name: str, manager: str
    ) -> tuple[list[cst.BaseStatement], int] | str:
        reason = self._enclosing_reason(name)
        if reason:
            return reason
        assign = body[index]
        assert isinstance(assign, cst.SimpleStatementLine)
        if isinstance(assign.body[0], cst.AnnAssign):
            return "annotated assignment (rewrite it by hand)"
        hoisted: list[cst.BaseStatement] = []
        position = index + 1
        while position < len(body):
            stmt = body[position]
            if isinstance(stmt, cst.Try) and self._closes_in_finally(stmt, name):
                break
            if mentions(_to_ast(stmt), name):
                return self._rest_reason(body[position:], name)
            hoisted.append(stmt)
            position += 1
        else:
            return self._rest_reason(body[index + 1 :], name)
        try_node = body[position]
        assert isinstance(try_node, cst.Try)
        comment = assign.trailing_whitespace if assign.trailing_whitespace.comment else None
        built = self._build(try_node, name, manager, body[position + 1 :], comment)
        if isinstance(built, str):
            return built
        first_lines = list(assign.leading_lines)
        if hoisted:
            head = hoisted[0]
            if isinstance(head, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                own = list(head.leading_lines)
                if index == 0 and not first_lines:  # now first in its block: no blank line
                    while own and own[0].comment is None:
                        own.pop(0)
                hoisted[0] = head.with_changes(leading_lines=[*first_lines, *own])
                first_lines = []
        built = built.with_changes(leading_lines=[*first_lines, *try_node.leading_lines])
        return [*hoisted, built], position + 1

    @staticmethod
    def _closes_in_finally(node: cst.Try, name: str) -> bool:
        if node.finalbody is None:
            return False
        final = node.finalbody.body
        if not isinstance(final, cst.IndentedBlock):
            return False
        return any(
            is_method_stmt(code, name, "close") for stmt in final.body for code in _to_ast(stmt)
        )

    @staticmethod
    def _split(
        block: cst.BaseSuite, name: str, method: str
    ) -> tuple[list[cst.BaseStatement], list[cst.EmptyLine]]:
        """Statements of ``block`` without top-level ``name.method()``.

        Comment lines above a removed statement move to the next kept statement; those left
        over (nothing follows) are returned so the caller can keep them in a block footer.
        """
        kept: list[cst.BaseStatement] = []
        carried: list[cst.EmptyLine] = []
        statements = block.body if isinstance(block, cst.IndentedBlock) else []
        for stmt in statements:
            code = _to_ast(stmt)
            if len(code) == 1 and is_method_stmt(code[0], name, method):
                if isinstance(stmt, cst.SimpleStatementLine):
                    carried += [line for line in stmt.leading_lines if line.comment is not None]
                continue
            if carried and isinstance(stmt, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                stmt = stmt.with_changes(leading_lines=[*carried, *stmt.leading_lines])
                carried = []
            kept.append(stmt)
        return kept, carried

    def _build(
        self,
        node: cst.Try,
        name: str,
        manager: str,
        after: Sequence[cst.BaseStatement],
        assign_comment: cst.TrailingWhitespace | None,
    ) -> cst.BaseCompoundStatement | str:
        """The replacement of ``try`` node ``node``, or why it is not safe."""
        if not isinstance(node.body, cst.IndentedBlock):
            return "single-line try body"
        assert node.finalbody is not None
        final_rest, _ = self._split(node.finalbody.body, name, "close")
        if final_rest and mentions([c for s in final_rest for c in _to_ast(s)], name):
            return "the finally uses the session for more than close()"
        handlers: list[cst.ExceptHandler] = []
        for handler in node.handlers:
            if handler.type is not None and mentions(_to_ast(cst.Expr(handler.type)), name):
                return "an except handler uses the session for more than rollback()"
            rest, orphans = self._split(handler.body, name, "rollback")
            if mentions([c for s in rest for c in _to_ast(s)], name):
                return "an except handler uses the session for more than rollback()"
            new_body = handler.body.with_changes(body=rest or [_pass_line()])
            if orphans and isinstance(new_body, cst.IndentedBlock):
                new_body = new_body.with_changes(footer=[*orphans, *new_body.footer])
            handlers.append(handler.with_changes(body=new_body))
        body_statements = list(node.body.body)
        keep_else: cst.Else | None = None
        if node.orelse is not None:
            else_statements = (
                list(node.orelse.body.body)
                if isinstance(node.orelse.body, cst.IndentedBlock)
                else []
            )
            uses = mentions([c for s in else_statements for c in _to_ast(s)], name)
            if uses and handlers and not self._raise_only(handlers):
                return "the try's else uses the session while except handlers are kept"
            if uses:
                body_statements += else_statements
            else:
                keep_else = node.orelse
        block_code = [c for s in body_statements for c in _to_ast(s)]
        everything = block_code + [c for h in handlers for s in h.body.body for c in _to_ast(s)]
        reason = escape_reason(everything, name)
        if reason:
            return reason
        reason = exit_problem(block_code, name)
        if reason:
            return reason
        for stmt in after:
            code = _to_ast(stmt)
            if (
                len(code) == 1
                and isinstance(code[0], ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in code[0].targets)
                and not mentions(code[0].value, name)
            ):
                break
            if mentions(code, name):
                return "the session is used after the try"
        target = self._choose_target(manager)
        if isinstance(target, str):
            return target
        footer = list(node.body.footer)
        last = _to_ast(body_statements[-1]) if body_statements else []
        if len(last) == 1 and is_method_stmt(last[0], name, "commit"):
            commit = body_statements.pop()
            if isinstance(commit, cst.SimpleStatementLine):
                footer = [line for line in commit.leading_lines if line.comment] + footer
        header = node.body.header
        if header.comment is None and assign_comment is not None:
            header = assign_comment
        with_node = cst.With(
            items=[cst.WithItem(item=target, asname=cst.AsName(name=cst.Name(name)))],
            body=node.body.with_changes(
                body=body_statements or [_pass_line()], footer=footer, header=header
            ),
        )
        if self._raise_only(handlers):
            handlers = []
        final = (
            node.finalbody.with_changes(body=node.finalbody.body.with_changes(body=final_rest))
            if final_rest
            else None
        )
        if not handlers and final is None and keep_else is None:
            return with_node
        if not handlers and final is None:
            return "the try's else cannot be kept without an except handler"
        return node.with_changes(
            body=node.body.with_changes(body=[with_node]),
            handlers=handlers,
            orelse=keep_else,
            finalbody=final,
        )

    @staticmethod
    def _raise_only(handlers: Sequence[cst.ExceptHandler]) -> bool:
        """Whether every handler only re-raises (so all of them can go)."""

        def bare_raise(handler: cst.ExceptHandler) -> bool:
            code = [c for s in handler.body.body for c in _to_ast(s)]
            return len(code) == 1 and isinstance(code[0], ast.Raise) and code[0].exc is None

        return bool(handlers) and all(bare_raise(h) for h in handlers)


def _imported_names(module: cst.Module) -> set[tuple[str, str]]:
    """(module, name) pairs bound by top-level ``from module import name`` statements."""
    found: set[tuple[str, str]] = set()
    for stmt in module.body:
        if not isinstance(stmt, cst.SimpleStatementLine):
            continue
        for small in stmt.body:
            if isinstance(small, cst.ImportFrom) and small.module and not small.relative:
                source = _dotted(small.module) or ""
                if isinstance(small.names, cst.ImportStar):
                    found.add((source, "*"))
                    continue
                for alias in small.names:
                    if alias.asname is None and isinstance(alias.name, cst.Name):
                        found.add((source, alias.name.value))
    return found


def _is_import_line(stmt: cst.BaseStatement) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and all(
        isinstance(small, (cst.Import, cst.ImportFrom)) for small in stmt.body
    )


def _is_docstring(stmt: cst.BaseStatement) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )


def add_imports(module: cst.Module, wanted: Sequence[tuple[str, str]]) -> cst.Module:
    """Add ``from module import name`` lines after the module's leading imports.

    Existing import lines are never edited; a name already imported is not added again.
    """
    present = _imported_names(module)
    missing = [
        (source, name)
        for source, name in wanted
        if (source, name) not in present and (source, "*") not in present
    ]
    if not missing:
        return module
    body = list(module.body)
    position = 1 if body and _is_docstring(body[0]) else 0
    last_import = None
    for index in range(position, len(body)):
        if _is_import_line(body[index]):
            last_import = index
        elif not _is_docstring(body[index]):
            break
    new_lines = [
        cst.parse_statement(f"from {source} import {name}\n", config=module.config_for_parsing)
        for source, name in missing
    ]
    if last_import is not None:
        insert_at = last_import + 1
    else:
        insert_at = position
        if position:  # after the docstring, separated by one blank line
            new_lines[0] = new_lines[0].with_changes(leading_lines=[cst.EmptyLine()])
    return module.with_changes(body=[*body[:insert_at], *new_lines, *body[insert_at:]])


def migrate_source(source: str, display: str, config: Config) -> FileOutcome:
    """Migrate the text of one file; never raises for bad input (sets ``error`` instead)."""
    outcome = FileOutcome(display, source, source)
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        outcome.error = f"does not parse: {exc.message} (line {exc.raw_line})"
        return outcome
    migrator = SessionMigrator(config, display)
    new_module = MetadataWrapper(module).visit(migrator)
    outcome.left = migrator.left
    outcome.rewritten = migrator.rewritten
    if not migrator.rewritten:
        return outcome
    wanted: list[tuple[str, str]] = []
    if migrator.need_flask:
        wanted.append(("flask", "current_app"))
    if migrator.need_mixin:
        wanted.append(("flask_unified_session", MIXIN))
    new_module = add_imports(new_module, wanted)
    new_source = new_module.code
    try:
        compile(new_source, display, "exec", dont_inherit=True)
    except SyntaxError as exc:  # pragma: no cover - a bug in the codemod, never written
        outcome.error = f"the rewrite would not compile ({exc.msg}); file left unchanged"
        outcome.rewritten = 0
        return outcome
    outcome.new = new_source
    return outcome


def migrate_file(path: Path, display: str, config: Config, write: bool) -> FileOutcome:
    """Migrate one file on disk; write it back only when ``write`` and it changed."""
    try:
        source = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        outcome = FileOutcome(display, "", "")
        outcome.error = f"cannot read: {exc}"
        return outcome
    outcome = migrate_source(source, display, config)
    if write and outcome.changed and outcome.error is None:
        path.write_bytes(outcome.new.encode("utf-8"))
    return outcome
