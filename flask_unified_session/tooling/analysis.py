"""Safety analysis of one legacy session site, on the stdlib :mod:`ast` (used by ``migrate``).

A site is ``x = manager.get_session()`` followed by ``try: ... finally: x.close()``. Turning it
into ``with <unit of work> as x:`` moves the session into a block; these functions find the
shapes where that would change what the code does (the session leaving the block). Whether the
commit the unit of work adds changes anything is :mod:`.changes`'s question.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence

from flask_unified_session.tooling.changes import MUTATING_METHODS, exit_problem, is_method_stmt
from flask_unified_session.tooling.checker import dotted

__all__ = ["direct_use", "escape_reason", "exit_problem", "is_method_stmt", "mentions"]


def mentions(node: ast.AST | Sequence[ast.AST], name: str) -> bool:
    """Whether the variable ``name`` is read or written anywhere in ``node``."""
    nodes = node if isinstance(node, Sequence) else [node]
    return any(isinstance(n, ast.Name) and n.id == name for item in nodes for n in ast.walk(item))


def direct_use(node: ast.AST, name: str) -> bool:
    """Whether ``node`` is ``name`` itself, or a literal container holding it directly."""
    if isinstance(node, ast.Name):
        return node.id == name
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(direct_use(element, name) for element in node.elts)
    if isinstance(node, ast.Dict):
        return any(direct_use(value, name) for value in node.values)
    if isinstance(node, ast.Starred):
        return direct_use(node.value, name)
    return False


def _walk(nodes: Iterable[ast.AST]) -> Iterable[ast.AST]:
    for node in nodes:
        yield from ast.walk(node)


def escape_reason(stmts: Sequence[ast.AST], name: str) -> str | None:
    """Why the session must stay outside a ``with`` block (it leaves the block), or None."""
    for node in _walk(stmts):
        if isinstance(node, ast.Return) and node.value and direct_use(node.value, name):
            return "the session is returned"
        if (
            isinstance(node, (ast.Yield, ast.YieldFrom))
            and node.value
            and direct_use(node.value, name)
        ):
            return "the session is yielded"
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return "the session variable is reassigned inside the block"
            if direct_use(node.value, name):
                if any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in targets):
                    return "the session is stored on an object"
                return "the session is aliased to another variable"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in MUTATING_METHODS and any(
                direct_use(arg, name) for arg in node.args
            ):
                return "the session is stored in a container"
            if dotted(node.func) == f"{name}.close":
                return "close() is called inside the block"
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and mentions(
            node, name
        ):
            return "the session is captured by a nested function"
        if isinstance(node, (ast.Global, ast.Nonlocal)) and name in node.names:
            return "the session variable is global or nonlocal"
        if isinstance(node, (ast.For, ast.AsyncFor)) and mentions(node.target, name):
            return "the session variable is reassigned inside the block"
        if (
            isinstance(node, ast.withitem)
            and node.optional_vars is not None
            and mentions(node.optional_vars, name)
        ):
            return "the session variable is reassigned inside the block"
        if isinstance(node, ast.NamedExpr) and node.target.id == name:
            return "the session variable is reassigned inside the block"
        if isinstance(node, ast.Delete) and mentions(node, name):
            return "the session variable is deleted"
    return None
