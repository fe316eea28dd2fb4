"""Adding ``from module import name`` lines to a libcst module without touching the others."""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst


def _dotted(node: cst.BaseExpression) -> str | None:
    parts: list[str] = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if isinstance(node, cst.Name):
        parts.append(node.value)
        return ".".join(reversed(parts))
    return None


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
