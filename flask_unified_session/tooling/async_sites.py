"""``async with AsyncSessionLocal() as s:`` with a manual commit, to ``async_session_scope()``.

The old block closes the session at its end and commits only where it says so; the unit of
work commits at a normal exit and rolls back on an exception. The rewrite keeps the body,
drops a final ``await s.commit()`` and ``await s.rollback()`` in handlers, and is refused
where the added commit could persist something the old code discarded.
"""

from __future__ import annotations

import ast

import libcst as cst

from flask_unified_session.tooling.analysis import escape_reason, mentions
from flask_unified_session.tooling.changes import exit_problem
from flask_unified_session.tooling.checker import walk_scope
from flask_unified_session.tooling.config import Config
from flask_unified_session.tooling.cstutil import (
    drop_final_commit,
    expr_to_ast,
    pass_line,
    raise_only,
    split_calls,
    statements_ast,
    without_rollback,
)


def _handlers(node: cst.Try, name: str) -> list[cst.ExceptHandler] | str:
    handlers: list[cst.ExceptHandler] = []
    for handler in node.handlers:
        if handler.type is not None and mentions(expr_to_ast(handler.type), name):
            return "an except handler uses the session for more than rollback()"
        rest, _ = split_calls(handler.body, name, "rollback")
        if mentions(statements_ast(rest), name):
            return "an except handler uses the session for more than rollback()"
        handlers.append(without_rollback(handler, name))
    return handlers


def rewrite_async_with(
    node: cst.With, name: str, config: Config, plain: dict[str, str]
) -> cst.BaseCompoundStatement | str:
    """The replacement of ``async with <factory>() as name:``, or why it is left."""
    if not isinstance(node.body, cst.IndentedBlock):
        return "single-line async with body"
    statements = list(node.body.body)
    footer = list(node.body.footer)
    handlers: list[cst.ExceptHandler] = []
    inner_try: cst.Try | None = None
    if len(statements) == 1 and isinstance(statements[0], cst.Try):
        inner_try = statements[0]
        if inner_try.finalbody is not None or inner_try.orelse is not None:
            return "the try inside the async with has an else or finally (rewrite it by hand)"
        if not isinstance(inner_try.body, cst.IndentedBlock):
            return "single-line try body"
        found = _handlers(inner_try, name)
        if isinstance(found, str):
            return found
        handlers = found
        statements = list(inner_try.body.body)
        footer = list(inner_try.body.footer)
    code = statements_ast(statements)
    handler_code = [
        c
        for h in handlers
        for c in statements_ast(h.body.body if isinstance(h.body, cst.IndentedBlock) else [])
    ]
    reason = escape_reason(code + handler_code, name)
    if reason:
        return reason
    if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in walk_scope(code)):
        return (
            "the block yields: a unit of work would stay open while the consumer runs "
            "(rewrite it by hand)"
        )
    reason = exit_problem(code, name, plain)
    if reason:
        return reason
    statements, footer = drop_final_commit(statements, name, footer)
    target = cst.parse_expression(config.async_target)
    item = node.items[0].with_changes(item=target)
    new_with = node.with_changes(
        items=[item],
        body=node.body.with_changes(body=statements or [pass_line()], footer=footer),
    )
    if inner_try is None or raise_only(handlers) or not handlers:
        return new_with
    # Handlers that do more than roll back stay, around the block, as in the sync rewrite.
    return inner_try.with_changes(
        body=inner_try.body.with_changes(body=[new_with.with_changes(leading_lines=[])]),
        handlers=handlers,
        leading_lines=node.leading_lines,
    )
