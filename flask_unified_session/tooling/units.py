"""Cross-site analysis: which migrated helpers run inside another unit of work.

Before the migration every ``db_manager.get_session()`` opened its own session. After it, a
unit of work entered inside another one joins it. For most helpers that is the point; for two
kinds it changes what the code does:

* a helper that commits in the middle of its block: that commit now commits the caller's
  pending work too;
* a helper that catches its own exception: the exception still dooms the joined unit, so the
  caller ends in ``DoomedTransactionError`` where it used to carry on.

Such a helper, when a function containing another unit calls it, gets ``independent=True``:
its own session and transaction, as before. Calls are matched by the called name's last part
(``self.store.save(...)`` calls every ``save``), which can only add ``independent=True``
where it was not needed, never take it away.
"""

from __future__ import annotations

import ast
import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from flask_unified_session.tooling.changes import is_method_stmt
from flask_unified_session.tooling.checker import dotted, walk_scope
from flask_unified_session.tooling.config import Config

#: Calls that open a unit of work once migrated (they mark a function as a caller).
UNIT_CALLS = frozenset({"get_db_session", "session_scope", "db_session", "async_session_scope"})


@dataclass
class FileUnits:
    """Per file: what functions containing a unit call, and which ones keep own boundaries."""

    calls: dict[str, set[str]] = field(default_factory=dict)  # unit function -> called names
    boundary: set[str] = field(default_factory=set)  # site functions with own boundaries
    sites: int = 0  # legacy sites and async-with sites anywhere in the file

    def to_json(self) -> dict[str, object]:
        """A JSON-compatible form (for the cache)."""
        return {
            "calls": {name: sorted(calls) for name, calls in sorted(self.calls.items())},
            "boundary": sorted(self.boundary),
            "sites": self.sites,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> FileUnits:
        """Inverse of :meth:`to_json`."""
        calls = data.get("calls", {})
        boundary = data.get("boundary", [])
        sites = data.get("sites", 0)
        if not isinstance(calls, dict) or not isinstance(boundary, list):
            raise ValueError("malformed units entry")
        return cls(
            {str(k): set(v) for k, v in calls.items()},
            {str(b) for b in boundary},
            int(sites) if isinstance(sites, int) else 0,
        )


def _site_variable(stmt: ast.stmt, config: Config) -> str | None:
    """``x`` when ``stmt`` is ``x = <manager>.<accessor>()`` (or a configured bare accessor)."""
    target: ast.expr
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, value = stmt.target, stmt.value
    elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    else:
        return None
    if not isinstance(target, ast.Name) or not isinstance(value, ast.Call) or value.args:
        return None
    func = value.func
    if isinstance(func, ast.Attribute) and func.attr in config.accessors:
        return target.id if config.is_manager(dotted(func.value)) else None
    if isinstance(func, ast.Name) and func.id in bare_accessors(config):
        return target.id
    return None


def bare_accessors(config: Config) -> frozenset[str]:
    """Accessors that also match as plain calls: configured ones other than ``get_session``.

    A function called ``get_session`` is too often something else (a cached request session,
    a generator dependency) to be migrated unless it is a db manager's method.
    """
    return frozenset(name for name in config.accessors if name != "get_session")


def _keeps_own_boundary(block: list[ast.stmt], name: str) -> bool:
    """A mid-block ``name.commit()``, or a handler that swallows an exception."""
    for stmt in block:
        if not isinstance(stmt, ast.Try):
            continue
        body = stmt.body
        for inner in ast.walk(ast.Module(body=body, type_ignores=[])):
            if (
                isinstance(inner, ast.stmt)
                and is_method_stmt(inner, name, "commit")
                and inner is not body[-1]
            ):
                return True
        for handler in stmt.handlers:
            if not any(isinstance(n, ast.Raise) for n in ast.walk(handler)):
                return True
        return False  # only the try right after the assignment is the site's block
    return False


def _called_names(nodes: Iterable[ast.AST]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Call):
            name = (dotted(node.func) or "").rpartition(".")[2]
            if name:
                names.add(name)
    return names


def scan_units(tree: ast.Module, config: Config) -> FileUnits:
    """Collect :class:`FileUnits` from a parsed module."""
    units = FileUnits()
    for node in ast.walk(tree):
        legacy = isinstance(node, ast.stmt) and _site_variable(node, config) is not None
        async_factory = isinstance(node, ast.AsyncWith) and any(
            isinstance(item.context_expr, ast.Call)
            and dotted(item.context_expr.func) in config.async_factories
            for item in node.items
        )
        units.sites += legacy or async_factory
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        nodes = list(walk_scope(function.body))
        has_unit = any(
            isinstance(node, ast.Call)
            and (dotted(node.func) or "").rpartition(".")[2] in UNIT_CALLS
            for node in nodes
        )
        blocks = [function.body, *(b for node in nodes for b in _statement_lists(node))]
        for block in blocks:
            for index, stmt in enumerate(block):
                variable = _site_variable(stmt, config)
                if variable is None:
                    continue
                has_unit = True
                if _keeps_own_boundary(block[index + 1 :], variable):
                    units.boundary.add(function.name)
        if has_unit:
            units.calls.setdefault(function.name, set()).update(
                _called_names(nodes) - {function.name}
            )
    return units


_HOLDERS = (ast.stmt, ast.ExceptHandler, ast.Module, ast.match_case)


def _statement_lists(node: ast.AST) -> list[list[ast.stmt]]:
    if not isinstance(node, _HOLDERS):  # expressions, the bulk of the nodes, hold none
        return []
    lists: list[list[ast.stmt]] = []
    for field_name in ("body", "orelse", "finalbody"):
        value = getattr(node, field_name, None)
        if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
            lists.append(value)
    return lists


def callers_index(files: Iterable[FileUnits]) -> dict[str, set[str]]:
    """Called name -> the unit functions calling it, over the whole project."""
    callers: dict[str, set[str]] = {}
    for units in files:
        for caller, calls in units.calls.items():
            for name in calls:
                callers.setdefault(name, set()).add(caller)
    return callers


def needs_independence(units: FileUnits, callers: dict[str, set[str]]) -> frozenset[str]:
    """Functions of one file whose sites must get ``independent=True``."""
    return frozenset(name for name in units.boundary if callers.get(name, set()) - {name})


SiteBlocks = dict[int, tuple[list[ast.stmt], int]]


def site_lines(
    tree: ast.Module, config: Config, blocks: SiteBlocks | None = None
) -> tuple[list[int], list[int]]:
    """Lines of the legacy sites and of the async-with sites, in source order.

    A legacy site counts only alone on its line and not in a one-line suite, exactly as the
    codemod sees it; the codemod numbers the sites it meets in the same order, so it needs
    no position metadata (which costs libcst a full code generation). ``blocks``, when
    given, receives each legacy site's statement list and index (line -> (list, index)):
    the codemod's analysis reads the file's ``ast`` there instead of printing libcst nodes.
    """
    legacy: list[int] = []
    async_sites: list[int] = []
    for node in ast.walk(tree):
        for block in _statement_lists(node) + _case_lists(node):
            header = getattr(node, "lineno", None)
            if block and header is not None and block[0].lineno == header:
                continue  # `if x: s = m.get_session()`: a one-line suite
            for index, stmt in enumerate(block):
                if _site_variable(stmt, config) is None:
                    continue
                alone = (index == 0 or block[index - 1].end_lineno != stmt.lineno) and (
                    index + 1 == len(block) or block[index + 1].lineno != stmt.end_lineno
                )
                if alone:
                    legacy.append(stmt.lineno)
                    if blocks is not None:
                        blocks[stmt.lineno] = (block, index)
        if isinstance(node, ast.AsyncWith) and len(node.items) == 1:
            call = node.items[0].context_expr
            if (
                isinstance(call, ast.Call)
                and not call.args
                and dotted(call.func) in config.async_factories
                and isinstance(node.items[0].optional_vars, ast.Name)
            ):
                async_sites.append(node.lineno)
    return sorted(legacy), sorted(async_sites)


def _case_lists(node: ast.AST) -> list[list[ast.stmt]]:
    return [case.body for case in getattr(node, "cases", [])]


_Def = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@dataclass(frozen=True)
class DefEntry:
    """A def or class in source order: whether a site is inside, how many defs it holds."""

    node: _Def
    has_site: bool
    descendants: int


def def_entries(tree: ast.Module, lines: tuple[list[int], list[int]]) -> list[DefEntry]:
    """Every def and class in source (pre-)order, the order libcst visits them in."""
    every = sorted(
        (n for n in ast.walk(tree) if isinstance(n, _Def)), key=lambda n: (n.lineno, n.col_offset)
    )
    sites = sorted(lines[0] + lines[1])
    starts = [node.lineno for node in every]
    entries: list[DefEntry] = []
    for index, node in enumerate(every):
        end = node.end_lineno or node.lineno
        # defs are sorted by start: the ones inside this one follow it and start before its end
        inside = bisect.bisect_right(starts, end, lo=index + 1) - index - 1
        first = bisect.bisect_left(sites, node.lineno)
        has_site = first < len(sites) and sites[first] <= end
        entries.append(DefEntry(node, has_site, inside))
    return entries
