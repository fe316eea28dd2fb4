"""The parts of a file the codemod has to parse with libcst.

libcst builds a Python object for every token, which makes parsing, visiting and printing a
whole file the codemod's main cost. Only the top-level statements that contain a site can
change, plus the import block at the head of the file, so only those are parsed; the lines
between them are copied as they are.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence


def _start(stmt: ast.stmt) -> int:
    decorators: list[ast.expr] = getattr(stmt, "decorator_list", [])
    return min([stmt.lineno, *(d.lineno for d in decorators)])


def site_segments(
    tree: ast.Module, sites: Sequence[int], functions: Sequence[tuple[int, int]]
) -> list[tuple[int, int]] | None:
    """(first line, last line) of the top-level statements holding ``sites``, merged where
    statements share a line; None when a site is outside every function of ``functions``
    (line ranges): the whole file is then parsed, so module-level sites get their reason."""
    if any(not any(a <= line <= b for a, b in functions) for line in sites):
        return None
    ranges: list[tuple[int, int]] = []
    for stmt in tree.body:
        start, end = _start(stmt), stmt.end_lineno or stmt.lineno
        if ranges and start <= ranges[-1][1]:  # `a = 1; def ...` share a line: one segment
            ranges[-1] = (ranges[-1][0], max(end, ranges[-1][1]))
        else:
            ranges.append((start, end))
    return [(a, b) for a, b in ranges if any(a <= line <= b for line in sites)]


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def head_length(tree: ast.Module, total_lines: int) -> int:
    """How many lines the head has: everything before the first statement that is neither
    an import nor a docstring (where imports are added)."""
    for stmt in tree.body:
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)) and not _is_docstring(stmt):
            return _start(stmt) - 1
    return total_lines
