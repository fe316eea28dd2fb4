"""The ``migrate`` codemod (libcst): ``x = manager.get_session()`` + ``try/finally`` to ``with``.

This module imports :mod:`libcst`; only the ``migrate`` command imports it, lazily.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from flask_unified_session.tooling.analysis import escape_reason, is_method_stmt, mentions
from flask_unified_session.tooling.async_sites import rewrite_async_with
from flask_unified_session.tooling.changes import exit_problem, plain_locals
from flask_unified_session.tooling.checker import dotted as _ast_dotted
from flask_unified_session.tooling.checker import walk_scope
from flask_unified_session.tooling.config import Config
from flask_unified_session.tooling.cstutil import (
    clear_memo,
    dotted_cst,
    drop_final_commit,
    expr_to_ast,
    pass_line,
    raise_only,
    split_calls,
    statements_ast,
    to_ast,
    with_keyword,
    without_rollback,
)
from flask_unified_session.tooling.imports import add_imports
from flask_unified_session.tooling.outcome import FileOutcome, LeftSite, unified_diff
from flask_unified_session.tooling.scopes import ScopeTracker
from flask_unified_session.tooling.segments import head_length, site_segments
from flask_unified_session.tooling.targets import (
    ModuleFacts,
    Target,
    choose_target,
    module_facts,
)
from flask_unified_session.tooling.units import (
    DefEntry,
    SiteBlocks,
    bare_accessors,
    callers_index,
    def_entries,
    needs_independence,
    scan_units,
    site_lines,
)

MIXIN = "SessionServiceMixin"
SERVICE_MANAGER = "self.db_manager"

__all__ = ["FileContext", "FileOutcome", "LeftSite", "migrate_source", "unified_diff"]


@dataclass(frozen=True)
class FileContext:
    """What the project-wide pass knows that one file's rewrite needs."""

    project_has_flask: bool = True
    #: functions of this file whose sites must get ``independent=True`` (see :mod:`.units`)
    independent: frozenset[str] = field(default_factory=frozenset)


class SessionMigrator(ScopeTracker):
    """Rewrite safe sites in place; record the others with their reason.

    Lines of left sites come from ``lines`` (legacy and async sites in source order, from
    :func:`site_lines`): the transformer numbers the sites as it first meets them, which is
    source order. :class:`PositionedMigrator` reads positions from libcst instead.
    """

    def __init__(
        self,
        config: Config,
        display: str,
        context: FileContext,
        facts: ModuleFacts,
        lines: tuple[list[int], list[int]] = ([], []),
        defs: Sequence[DefEntry] = (),
        blocks: SiteBlocks | None = None,
        offset: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.display = display
        self.context = context
        self.facts = facts
        self.bare = bare_accessors(config)
        self.rewritten = 0
        self.left: list[LeftSite] = []
        self.wanted: list[tuple[str, str]] = []
        self.targets: dict[str, int] = {}
        self._plain: dict[int, dict[str, str]] = {}
        self.lines = lines
        #: file line -> the site's statement list and index in the file's ast; ``offset``
        #: turns the segment's line numbers into the file's
        self.blocks: SiteBlocks = blocks or {}
        self.offset = offset
        #: defs in visit order; those without a site are not entered (libcst's traversal is
        #: the codemod's main cost), and the others' ast gives the plain locals
        self.defs = list(defs)
        self._next_def = 0
        self._def_ast: dict[int, DefEntry] = {}
        self._order: dict[int, tuple[int, int]] = {}  # id(node) -> (kind, index)
        self._counts = [0, 0]

    def _number(self, node: cst.CSTNode, kind: int) -> None:
        self._order[id(node)] = (kind, self._counts[kind])
        self._counts[kind] += 1

    def numbering_matches(self) -> bool:
        """Whether the sites met are exactly those of :func:`site_lines`."""
        return self._counts == [len(self.lines[0]), len(self.lines[1])]

    def _enter_def(self, node: cst.CSTNode) -> bool:
        if not self.defs:
            return True
        if self._next_def >= len(self.defs):  # pragma: no cover - numbering disagrees
            self.defs = []
            return True
        entry = self.defs[self._next_def]
        self._def_ast[id(node)] = entry
        if entry.has_site:
            self._next_def += 1
            return True
        self._next_def += 1 + entry.descendants  # its nested defs are skipped with it
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        super().visit_FunctionDef(node)
        return self._enter_def(node)

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        super().visit_ClassDef(node)
        return self._enter_def(node)

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        if self._site_name(node) is not None:
            self._number(node, 0)
        return False  # nothing inside a simple statement is rewritten: skip its expressions

    def visit_With(self, node: cst.With) -> None:
        super().visit_With(node)
        if node.asynchronous is not None and self._async_site(node) is not None:
            self._number(node, 1)

    def _async_site(self, node: cst.With) -> str | None:
        """The variable of ``async with <async factory>() as variable:``, else None."""
        if len(node.items) != 1:
            return None
        item = node.items[0]
        call = item.item
        if (
            not isinstance(call, cst.Call)
            or call.args
            or dotted_cst(call.func) not in self.config.async_factories
            or item.asname is None
            or not isinstance(item.asname.name, cst.Name)
        ):
            return None
        return item.asname.name.value

    # -- scopes with rewriting work ----------------------------------------------------------
    def leave_ClassDef(
        self, original_node: cst.ClassDef, updated_node: cst.ClassDef
    ) -> cst.ClassDef:
        scope = self.scopes.pop()
        if not scope.needs_mixin:
            return updated_node
        if any((dotted_cst(arg.value) or "").endswith(MIXIN) for arg in updated_node.bases):
            return updated_node
        bases = list(updated_node.bases)
        mixin = cst.Arg(value=cst.Name(MIXIN))
        plain_object = [i for i, arg in enumerate(bases) if dotted_cst(arg.value) == "object"]
        if plain_object:
            # object before a mixin is an MRO error: the mixin takes object's place
            index = plain_object[0]
            bases[index] = bases[index].with_changes(value=cst.Name(MIXIN))
            return updated_node.with_changes(bases=bases)
        # Last, so a base class that already derives from the mixin keeps a valid MRO.
        if bases and isinstance(bases[-1].comma, cst.MaybeSentinel):
            bases[-1] = bases[-1].with_changes(
                comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            )
        if updated_node.keywords:
            mixin = mixin.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        return updated_node.with_changes(bases=[*bases, mixin])

    def leave_With(
        self, original_node: cst.With, updated_node: cst.With
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement] | cst.RemovalSentinel:
        self.scopes.pop()
        if original_node.asynchronous is None:
            return updated_node
        name = self._async_site(updated_node)
        if name is None:
            return updated_node
        result = rewrite_async_with(updated_node, name, self.config, self._plain_for_function())
        if isinstance(result, str):
            self.left.append(LeftSite(self.display, self._line(original_node), result))
            return updated_node
        self._use(
            Target(
                self.config.async_target,
                (("flask_unified_session.asyncio", "async_session_scope"),),
                "async with an async session factory",
            )
        )
        return result

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
        """(variable, manager) when ``stmt`` is ``variable = <manager>.<accessor>()``.

        A configured accessor other than get_session also matches as a plain call
        (``SessionLocal()``); its manager is then the accessor's own name.
        """
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
        if not isinstance(target, cst.Name) or not isinstance(value, cst.Call) or value.args:
            return None
        func = value.func
        if isinstance(func, cst.Name) and func.value in self.bare:
            return target.value, func.value
        if not isinstance(func, cst.Attribute) or func.attr.value not in self.config.accessors:
            return None
        manager = dotted_cst(func.value)
        if manager is None or not self.config.is_manager(manager):
            return None
        return target.value, manager

    def _line(self, node: cst.CSTNode) -> int:
        kind, index = self._order.get(id(node), (0, -1))
        found = self.lines[kind]
        return found[index] if 0 <= index < len(found) else 0

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
            outcome = self._rewrite(body, index, *site, original[index])
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
    def _plain_for_function(self) -> dict[str, str]:
        """:func:`plain_locals` of the enclosing function (computed once per function)."""
        function = self.function()
        if function is None:
            return {}
        key = id(function)
        if key not in self._plain:
            entry = self._def_ast.get(key)
            if entry is not None and entry.node.name == function.name.value:
                node: ast.AST | None = entry.node
            else:
                parsed = to_ast(function)
                node = parsed[0] if parsed else None
            self._plain[key] = (
                plain_locals(node)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                else {}
            )
        return self._plain[key]

    def _enclosing_reason(self, name: str) -> str | None:
        if not any(scope.kind == "def" for scope in self.scopes):
            return "module-level session (no function to scope a unit of work)"
        owner = self.scopes[-1]
        if owner.kind in ("if", "else"):
            # Only a test on the variable itself (`if session is None: session = ...`) makes
            # ownership conditional; any other if just decides whether the site runs.
            tested = owner if owner.kind == "if" else self.scopes[-2]
            if isinstance(tested.node, cst.If) and mentions(expr_to_ast(tested.node.test), name):
                return "ownership is conditional (the if tests the session variable)"
        if (
            owner.kind == "try"
            and isinstance(owner.node, cst.Try)
            and self._closes_in_finally(owner.node, name)
        ):
            return "the assignment is inside the try"
        return None

    @staticmethod
    def _rest_reason(code: Sequence[ast.stmt], name: str) -> str:
        """Why statements after the assignment are not a ``try/finally: close()`` site."""
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

    def _choose_target(self, manager: str) -> Target | str:
        service = manager.startswith("self.")
        if service and manager != SERVICE_MANAGER:
            return f"{manager} is not self.db_manager: SessionServiceMixin would not use it"
        classes = self.enclosing_class()
        if service and classes is None:
            return "self.db_manager used outside a class"
        function = self.function()
        target = choose_target(
            self.config,
            self.context.project_has_flask,
            self.facts,
            function.name.value if function is not None else None,
            service,
        )
        if target.expr == self.config.service_target and classes is not None:
            classes.needs_mixin = True
        return target

    def _use(self, target: Target) -> None:
        self.wanted.extend(target.imports)
        key = f"{target.expr} ({target.why})"
        self.targets[key] = self.targets.get(key, 0) + 1

    def _ast_after(
        self, original: cst.BaseStatement, body: list[cst.BaseStatement], index: int
    ) -> list[ast.stmt]:
        """The ``ast`` of the statements after the site in its block: from the file's tree
        when the site was located there (cheap), else printed from libcst."""
        located = self.blocks.get(self._line(original) + self.offset)
        if located is not None:
            block, position = located
            return block[position + 1 :]
        return statements_ast(body[index + 1 :])

    def _rewrite(
        self,
        body: list[cst.BaseStatement],
        index: int,
        name: str,
        manager: str,
        original: cst.BaseStatement,
    ) -> tuple[list[cst.BaseStatement], int] | str:
        reason = self._enclosing_reason(name)
        if reason:
            return reason
        assign = body[index]
        assert isinstance(assign, cst.SimpleStatementLine)
        if isinstance(assign.body[0], cst.AnnAssign):
            return "annotated assignment (rewrite it by hand)"
        rest = self._ast_after(original, body, index)
        for found, stmt in enumerate(rest):
            if isinstance(stmt, ast.Try) and any(
                is_method_stmt(s, name, "close") for s in stmt.finalbody
            ):
                break
            if mentions(stmt, name):
                return self._rest_reason(rest[found:], name)
        else:
            return self._rest_reason(rest, name)
        ast_try = rest[found]
        assert isinstance(ast_try, ast.Try)
        hoisted: list[cst.BaseStatement] = []
        position = index + 1
        while position < len(body):
            candidate = body[position]
            if isinstance(candidate, cst.Try) and self._closes_in_finally(candidate, name):
                break
            hoisted.append(candidate)
            position += 1
        if position == len(body):  # pragma: no cover - the ast and libcst views disagree
            return "no try/finally closes the session right after it is obtained"
        try_node = body[position]
        assert isinstance(try_node, cst.Try)
        comment = assign.trailing_whitespace if assign.trailing_whitespace.comment else None
        built = self._build(try_node, name, manager, comment, ast_try, rest[found + 1 :])
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
        try_lines = list(try_node.leading_lines)
        if index == 0 and not first_lines and not hoisted:  # now first in its block
            while try_lines and try_lines[0].comment is None:
                try_lines.pop(0)
        built = built.with_changes(leading_lines=[*first_lines, *try_lines])
        return [*hoisted, built], position + 1

    @staticmethod
    def _closes_in_finally(node: cst.Try, name: str) -> bool:
        if node.finalbody is None:
            return False
        final = node.finalbody.body
        if not isinstance(final, cst.IndentedBlock):
            return False
        return any(
            is_method_stmt(code, name, "close") for stmt in final.body for code in to_ast(stmt)
        )

    def _handlers(
        self, node: cst.Try, name: str, ast_try: ast.Try
    ) -> list[cst.ExceptHandler] | str:
        """The try's handlers without their ``rollback()``, or why they cannot be kept."""
        handlers: list[cst.ExceptHandler] = []
        for handler, parsed in zip(node.handlers, ast_try.handlers, strict=True):
            if parsed.type is not None and mentions(parsed.type, name):
                return "an except handler uses the session for more than rollback()"
            kept = [s for s in parsed.body if not is_method_stmt(s, name, "rollback")]
            if mentions(kept, name):
                return "an except handler uses the session for more than rollback()"
            handlers.append(without_rollback(handler, name))
        return handlers

    def _build(
        self,
        node: cst.Try,
        name: str,
        manager: str,
        assign_comment: cst.TrailingWhitespace | None,
        ast_try: ast.Try,
        after: Sequence[ast.stmt],
    ) -> cst.BaseCompoundStatement | str:
        """The replacement of ``try`` node ``node`` (``ast_try`` in the file's ``ast``, with
        ``after`` the statements that follow it), or why it is not safe."""
        if not isinstance(node.body, cst.IndentedBlock):
            return "single-line try body"
        assert node.finalbody is not None
        if mentions([s for s in ast_try.finalbody if not is_method_stmt(s, name, "close")], name):
            return "the finally uses the session for more than close()"
        final_rest, _ = split_calls(node.finalbody.body, name, "close")
        handlers = self._handlers(node, name, ast_try)
        if isinstance(handlers, str):
            return handlers
        body_statements = list(node.body.body)
        keep_else: cst.Else | None = None
        if node.orelse is not None:
            else_statements = (
                list(node.orelse.body.body)
                if isinstance(node.orelse.body, cst.IndentedBlock)
                else []
            )
            uses = mentions(ast_try.orelse, name)
            if uses and handlers and not raise_only(handlers):
                return "the try's else uses the session while except handlers are kept"
            if uses:
                body_statements += else_statements
            else:
                keep_else = node.orelse
        block_code = [*ast_try.body, *(ast_try.orelse if keep_else is None else [])]
        handler_code = [
            s for h in ast_try.handlers for s in h.body if not is_method_stmt(s, name, "rollback")
        ]
        reason = escape_reason(block_code + handler_code, name)
        if reason:
            return reason
        if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in walk_scope(block_code)):
            return (
                "the block yields: a unit of work would stay open while the consumer runs "
                "(rewrite it by hand)"
            )
        reason = exit_problem(block_code, name, self._plain_for_function())
        if reason:
            return reason
        for stmt in after:
            if (
                isinstance(stmt, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)
                and not mentions(stmt.value, name)
            ):
                break
            if mentions(stmt, name):
                return "the session is used after the try"
        target = self._choose_target(manager)
        if isinstance(target, str):
            return target
        expression = cst.parse_expression(target.expr)
        function = self.function()
        if function is not None and function.name.value in self.context.independent:
            flagged = with_keyword(expression, "independent")
            if flagged is None:
                return (
                    "it keeps its own transaction boundaries and is called inside another "
                    f"unit of work, but the target {target.expr} takes no independent=True"
                )
            expression = flagged
            target = Target(
                cst.Module(body=[]).code_for_node(expression),
                target.imports,
                target.why + "; own transaction: called inside another unit of work",
            )
        self._use(target)
        body_statements, footer = drop_final_commit(body_statements, name, node.body.footer)
        header = node.body.header
        if header.comment is None and assign_comment is not None:
            header = assign_comment
        with_node = cst.With(
            items=[cst.WithItem(item=expression, asname=cst.AsName(name=cst.Name(name)))],
            body=node.body.with_changes(
                body=body_statements or [pass_line()], footer=footer, header=header
            ),
        )
        if raise_only(handlers):
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


class PositionedMigrator(SessionMigrator):
    """The migrator reading lines from libcst's positions (when the numbering disagrees)."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def _line(self, node: cst.CSTNode) -> int:
        try:
            return self.get_metadata(PositionProvider, node).start.line
        except KeyError:
            return 0


def parse_error(source: str, display: str) -> str:
    """The message of a file that does not parse, at the line Python itself reports."""
    try:
        compile(source, display, "exec", dont_inherit=True, flags=ast.PyCF_ONLY_AST)
    except SyntaxError as exc:
        return f"does not parse: {exc.msg} (line {exc.lineno or 1})"
    except ValueError as exc:  # null bytes
        return f"does not parse: {exc}"
    return "does not parse (libcst cannot read this syntax)"


def _split_lines(source: str) -> list[str]:
    """Lines with their ends, split at ``\n`` only (as ``ast`` counts them)."""
    parts = source.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


@dataclass
class _Piece:
    """The rewrite of one segment of a file."""

    code: str
    left: list[LeftSite]
    targets: dict[str, int]
    wanted: list[tuple[str, str]]


def _transform(
    text: str,
    display: str,
    config: Config,
    context: FileContext,
    facts: ModuleFacts,
    offset: int,
    sites: tuple[list[int], list[int]],
    defs: list[DefEntry],
    blocks: SiteBlocks,
) -> _Piece | None:
    """Run the migrator on ``text``: a whole file, or top-level statements starting at line
    ``offset + 1`` holding ``sites`` and ``defs`` (file lines); None when libcst fails."""
    try:
        module = cst.parse_module(text)
    except cst.ParserSyntaxError:
        return None
    local = ([line - offset for line in sites[0]], [line - offset for line in sites[1]])
    clear_memo()
    try:
        migrator: SessionMigrator = SessionMigrator(
            config, display, context, facts, local, defs, blocks, offset
        )
        new_module = module.visit(migrator)
        if not migrator.numbering_matches():  # pragma: no cover - a safety net
            migrator = PositionedMigrator(config, display, context, facts)
            new_module = MetadataWrapper(module, unsafe_skip_copy=True).visit(migrator)
    finally:
        clear_memo()
    left = [LeftSite(site.path, site.line + offset, site.reason) for site in migrator.left]
    code = new_module.code if migrator.targets else text
    return _Piece(code, left, migrator.targets, migrator.wanted)


def migrate_source(
    source: str,
    display: str,
    config: Config,
    context: FileContext | None = None,
    tree: ast.Module | None = None,
) -> FileOutcome:
    """Migrate the text of one file; never raises for bad input (sets ``error`` instead).

    Only the top-level statements holding a site, and the import block, go through libcst
    (:mod:`.segments`); the rest of the file is copied unchanged.
    """
    outcome = FileOutcome(display, source, source)
    if tree is None:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            outcome.error = parse_error(source, display)
            return outcome
    if context is None:
        # On its own, a file is its own project: its helpers called by its other units
        # still keep their transaction boundaries.
        units = scan_units(tree, config)
        context = FileContext(True, needs_independence(units, callers_index([units])))
    facts = module_facts(tree)
    blocks: SiteBlocks = {}
    legacy, async_sites = site_lines(tree, config, blocks)
    if not legacy and not async_sites:
        return outcome
    lines = _split_lines(source)
    defs = def_entries(tree, (legacy, async_sites))
    functions = [
        (entry.node.lineno, entry.node.end_lineno or entry.node.lineno)
        for entry in defs
        if not isinstance(entry.node, ast.ClassDef)
    ]
    segments = site_segments(tree, [*legacy, *async_sites], functions)
    lone_cr = source.count("\r") != source.count("\r\n")  # ast counts a lone CR as a line end
    if segments is None or lone_cr:
        segments = [(1, len(lines))]
    pieces: list[_Piece] = []
    for start, end in segments:
        inside = (
            [line for line in legacy if start <= line <= end],
            [line for line in async_sites if start <= line <= end],
        )
        piece = _transform(
            "".join(lines[start - 1 : end]),
            display,
            config,
            context,
            facts,
            start - 1,
            inside,
            [entry for entry in defs if start <= entry.node.lineno <= end],
            blocks,
        )
        if piece is None:
            outcome.error = parse_error(source, display)
            return outcome
        pieces.append(piece)
    outcome.left = [site for piece in pieces for site in piece.left]
    outcome.targets = {}
    for piece in pieces:
        for target, count in piece.targets.items():
            outcome.targets[target] = outcome.targets.get(target, 0) + count
    outcome.rewritten = sum(outcome.targets.values())  # sync and async sites alike
    if not outcome.targets:
        return outcome
    new_lines: list[str] = list(lines)
    for (start, end), piece in reversed(list(zip(segments, pieces, strict=True))):
        new_lines[start - 1 : end] = [piece.code]
    wanted = sorted({name for piece in pieces for name in piece.wanted})
    whole_file = segments == [(1, len(lines))]
    head = len(new_lines) if whole_file else head_length(tree, len(lines))
    new_head = add_imports(cst.parse_module("".join(new_lines[:head])), wanted).code
    new_source = new_head + "".join(new_lines[head:])
    try:
        compile(new_source, display, "exec", dont_inherit=True)
    except SyntaxError as exc:  # pragma: no cover - a bug in the codemod, never written
        outcome.error = f"the rewrite would not compile ({exc.msg}); file left unchanged"
        outcome.rewritten = 0
        outcome.targets = {}
        return outcome
    outcome.new = new_source
    return outcome
