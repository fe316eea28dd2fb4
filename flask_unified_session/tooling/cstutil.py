"""Small libcst helpers shared by the sync and async rewrites."""

from __future__ import annotations

import ast
from collections.abc import Sequence

import libcst as cst

from flask_unified_session.tooling.changes import is_method_stmt

_EMPTY = cst.Module(body=[])
#: id(node) -> (node, its ast): the analysis asks for the same statements many times; the
#: node is kept so its id cannot be reused while the entry lives. Cleared per file.
_MEMO: dict[int, tuple[cst.CSTNode, list[ast.stmt]]] = {}


def clear_memo() -> None:
    """Forget the converted statements (call before and after each file)."""
    _MEMO.clear()


def to_ast(node: cst.CSTNode) -> list[ast.stmt]:
    """Parse the source of a statement node back with :mod:`ast` (for the safety analysis)."""
    hit = _MEMO.get(id(node))
    if hit is not None and hit[0] is node:
        return hit[1]
    parsed = ast.parse(_EMPTY.code_for_node(node)).body
    _MEMO[id(node)] = (node, parsed)
    return parsed


def expr_to_ast(node: cst.BaseExpression) -> ast.expr:
    """Parse the source of an expression node back with :mod:`ast`."""
    return ast.parse("(" + _EMPTY.code_for_node(node) + ")", mode="eval").body


def statements_ast(statements: Sequence[cst.CSTNode]) -> list[ast.stmt]:
    """:func:`to_ast` of several statements, concatenated."""
    return [code for stmt in statements for code in to_ast(stmt)]


def dotted_cst(node: cst.BaseExpression) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts: list[str] = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if isinstance(node, cst.Name):
        parts.append(node.value)
        return ".".join(reversed(parts))
    return None


def pass_line() -> cst.SimpleStatementLine:
    """A ``pass`` statement line."""
    return cst.SimpleStatementLine(body=[cst.Pass()])


def split_calls(
    block: cst.BaseSuite, name: str, method: str
) -> tuple[list[cst.BaseStatement], list[cst.EmptyLine]]:
    """Statements of ``block`` without top-level ``name.method()`` (awaited or not).

    Comment lines above a removed statement move to the next kept statement; those left
    over (nothing follows) are returned so the caller can keep them in a block footer.
    """
    kept: list[cst.BaseStatement] = []
    carried: list[cst.EmptyLine] = []
    statements = block.body if isinstance(block, cst.IndentedBlock) else []
    for stmt in statements:
        code = to_ast(stmt)
        if len(code) > 1 and isinstance(stmt, cst.SimpleStatementLine):
            # `session.rollback(); logger.error(...)`: drop the call, keep the rest of the line
            smalls = [
                small
                for small, parsed in zip(stmt.body, code, strict=True)
                if not is_method_stmt(parsed, name, method)
            ]
            if not smalls:
                carried += [line for line in stmt.leading_lines if line.comment is not None]
                continue
            if len(smalls) < len(stmt.body):
                smalls[-1] = smalls[-1].with_changes(semicolon=cst.MaybeSentinel.DEFAULT)
                stmt = stmt.with_changes(body=smalls)
                code = [c for c in code if not is_method_stmt(c, name, method)]
        if len(code) == 1 and is_method_stmt(code[0], name, method):
            if isinstance(stmt, cst.SimpleStatementLine):
                carried += [line for line in stmt.leading_lines if line.comment is not None]
            continue
        if carried and isinstance(stmt, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
            stmt = stmt.with_changes(leading_lines=[*carried, *stmt.leading_lines])
            carried = []
        kept.append(stmt)
    return kept, carried


def raise_only(handlers: Sequence[cst.ExceptHandler]) -> bool:
    """Whether every handler only re-raises (so all of them can go)."""

    def bare_raise(handler: cst.ExceptHandler) -> bool:
        code = statements_ast(
            handler.body.body if isinstance(handler.body, cst.IndentedBlock) else []
        )
        return len(code) == 1 and isinstance(code[0], ast.Raise) and code[0].exc is None

    return bool(handlers) and all(bare_raise(h) for h in handlers)


def drop_final_commit(
    statements: list[cst.BaseStatement], name: str, footer: Sequence[cst.EmptyLine]
) -> tuple[list[cst.BaseStatement], list[cst.EmptyLine]]:
    """Remove a ``name.commit()`` that is the block's last statement (the unit commits there)."""
    footer = list(footer)
    last = to_ast(statements[-1]) if statements else []
    if len(last) == 1 and is_method_stmt(last[0], name, "commit"):
        commit = statements[-1]
        statements = statements[:-1]
        if isinstance(commit, cst.SimpleStatementLine):
            footer = [line for line in commit.leading_lines if line.comment] + footer
    return statements, footer


def with_keyword(target: cst.BaseExpression, keyword: str) -> cst.BaseExpression | None:
    """``target`` with ``keyword=True`` added to its call, or None when it is not a call."""
    if not isinstance(target, cst.Call):
        return None
    if any(arg.keyword is not None and arg.keyword.value == keyword for arg in target.args):
        return target
    args = list(target.args)
    if args:
        args[-1] = args[-1].with_changes(
            comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        )
    flag = cst.Arg(
        keyword=cst.Name(keyword),
        value=cst.Name("True"),
        equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
        ),
    )
    return target.with_changes(args=[*args, flag])


def without_rollback(handler: cst.ExceptHandler, name: str) -> cst.ExceptHandler:
    """``handler`` with its ``name.rollback()`` calls removed (the unit rolls back now);
    comments on removed lines are kept in the block's footer."""
    rest, orphans = split_calls(handler.body, name, "rollback")
    body = handler.body.with_changes(body=rest or [pass_line()])
    if orphans and isinstance(body, cst.IndentedBlock):
        body = body.with_changes(footer=[*orphans, *body.footer])
    return handler.with_changes(body=body)
