"""Safety analysis of one legacy session site, on the stdlib :mod:`ast` (used by ``migrate``).

A site is ``x = manager.get_session()`` followed by ``try: ... finally: x.close()``. Turning it
into ``with <unit of work> as x:`` adds a commit on normal exit; these functions find the shapes
where that, or the move of the session into a ``with`` block, would change what the code does.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flask_unified_session.tooling.checker import dotted

#: Session methods that read, or only touch the session's identity map.
READ_METHODS = frozenset(
    {"query", "get", "scalar", "scalars", "refresh", "get_bind", "expunge", "is_modified"}
)
#: Method names that mutate the object they are called on, whatever it is.
MUTATING_METHODS = frozenset(
    {
        "append",
        "extend",
        "insert",
        "remove",
        "pop",
        "popitem",
        "update",
        "add",
        "add_all",
        "discard",
        "clear",
        "setdefault",
        "delete",
        "merge",
        "save",
        "flush",
        "sort",
        "reverse",
    }
)
#: Calls assumed free of database side effects.
PURE_FUNCTIONS = frozenset(
    {
        "abs",
        "abort",
        "all",
        "any",
        "bool",
        "dict",
        "enumerate",
        "float",
        "format",
        "getattr",
        "hasattr",
        "int",
        "isinstance",
        "jsonify",
        "len",
        "list",
        "make_response",
        "max",
        "min",
        "print",
        "range",
        "render_template",
        "repr",
        "round",
        "select",
        "set",
        "sorted",
        "str",
        "sum",
        "tuple",
        "url_for",
        "zip",
    }
)
LOGGER_NAMES = frozenset({"logger", "log", "logging", "LOGGER", "_logger", "_log"})


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


def is_method_stmt(stmt: ast.stmt, name: str, method: str) -> bool:
    """Whether ``stmt`` is exactly ``name.method()``."""
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and not stmt.value.args
        and not stmt.value.keywords
        and dotted(stmt.value.func) == f"{name}.{method}"
    )


def _walk(nodes: Iterable[ast.AST]) -> Iterable[ast.AST]:
    for node in nodes:
        yield from ast.walk(node)


def _call_root(call: ast.Call) -> tuple[str | None, str | None]:
    """(root variable, first method) of a call chain such as ``s.query(U).filter(...).all()``."""
    node: ast.expr = call.func
    first: str | None = None
    while True:
        if isinstance(node, ast.Attribute):
            first = node.attr
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            break
    return (node.id if isinstance(node, ast.Name) else None), first


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


@dataclass
class _Flow:
    """Path-sensitive walk tracking "changes made since the last commit" (``dirty``)."""

    name: str
    derived: set[str] = field(default_factory=set)
    problem: str | None = None

    def _is_session_or_derived(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and (node.id == self.name or node.id in self.derived)

    def call_dirty(self, call: ast.Call) -> bool:
        """Whether ``call`` may change database state tracked by the session."""
        root, first = _call_root(call)
        func_name = dotted(call.func) or ""
        if root == self.name:
            if first in READ_METHODS:
                return False
            if first == "execute" and call.args:
                arg = call.args[0]
                return not (
                    isinstance(arg, ast.Call) and (dotted(arg.func) or "").endswith("select")
                )
            return True
        if func_name.rpartition(".")[0] in LOGGER_NAMES or func_name.endswith(".logger"):
            return False
        if ".logger." in f".{func_name}" or func_name in PURE_FUNCTIONS:
            return False
        if isinstance(call.func, ast.Attribute) and call.func.attr in MUTATING_METHODS:
            return True
        arguments = [*call.args, *(k.value for k in call.keywords)]
        return any(self._is_session_or_derived(arg) for arg in arguments)

    def expr_dirty(self, node: ast.AST) -> bool:
        """Whether evaluating ``node`` may change state (any dirty call inside it)."""
        return any(isinstance(n, ast.Call) and self.call_dirty(n) for n in ast.walk(node))

    def _side_effect_call(self, stmt: ast.Expr) -> bool:
        """A call statement made for its effect that is not logging or a session read."""
        value = stmt.value
        if isinstance(value, ast.Await):
            value = value.value
        if not isinstance(value, ast.Call):
            return False
        root, first = _call_root(value)
        if root == self.name:
            return first not in READ_METHODS
        func_name = dotted(value.func) or ""
        if func_name.rpartition(".")[0] in LOGGER_NAMES or ".logger." in f".{func_name}":
            return False
        return func_name not in PURE_FUNCTIONS and func_name != "warnings.warn"

    def stmt_dirty(self, stmt: ast.stmt) -> bool:
        """Whether the simple statement ``stmt`` may change state."""
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = list(stmt.targets)
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            targets = [stmt.target]
        elif isinstance(stmt, ast.Delete):
            targets = list(stmt.targets)
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, (ast.Attribute, ast.Subscript)):
                    return True
        if isinstance(stmt, ast.Expr) and self._side_effect_call(stmt):
            return True
        return self.expr_dirty(stmt)

    def _track(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and stmt.value:
            uses = {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)}
            if uses & ({self.name} | self.derived):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    self.derived.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))

    def _leave(self, node: ast.stmt, dirty: bool, what: str) -> None:
        if dirty and self.problem is None:
            self.problem = (
                f"a {what} can be reached after changes and before any commit "
                "(the old code discarded them; a unit of work would commit them)"
            )

    def block(self, stmts: Sequence[ast.stmt], dirty: bool, in_loop: bool) -> tuple[bool, bool]:
        """Walk ``stmts``; return (dirty at the end, whether every path left the block)."""
        for stmt in stmts:
            dirty, ended = self.stmt(stmt, dirty, in_loop)
            if ended:
                return dirty, True
        return dirty, False

    def _branches(
        self, branches: Sequence[Sequence[ast.stmt]], dirty: bool, in_loop: bool
    ) -> tuple[bool, bool]:
        ends = [self.block(branch, dirty, in_loop) for branch in branches]
        open_ends = [d for d, ended in ends if not ended]
        if not open_ends:
            return dirty, True
        return any(open_ends), False

    def stmt(self, stmt: ast.stmt, dirty: bool, in_loop: bool) -> tuple[bool, bool]:
        """Walk one statement; return (dirty after it, whether it always leaves the block)."""
        if isinstance(stmt, ast.Return):
            if stmt.value is not None and self.expr_dirty(stmt.value):
                dirty = True
            self._leave(stmt, dirty, "return")
            return dirty, True
        if isinstance(stmt, (ast.Break, ast.Continue)):
            if not in_loop:
                self._leave(stmt, dirty, type(stmt).__name__.lower())
            return dirty, True
        if isinstance(stmt, ast.Raise):
            return dirty, True  # the unit of work rolls back, as close() discarded
        if is_method_stmt(stmt, self.name, "commit") or is_method_stmt(stmt, self.name, "rollback"):
            return False, False
        if isinstance(stmt, ast.If):
            dirty = dirty or self.expr_dirty(stmt.test)
            return self._branches([stmt.body, stmt.orelse], dirty, in_loop)
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            head = stmt.test if isinstance(stmt, ast.While) else stmt.iter
            dirty = dirty or self.expr_dirty(head)
            end, _ = self.block(stmt.body, dirty, True)
            if end and not dirty:
                end, _ = self.block(stmt.body, True, True)
            after, ended = self.block(stmt.orelse, dirty or end, in_loop)
            return after or dirty or end, ended and not stmt.orelse
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            dirty = dirty or any(self.expr_dirty(item.context_expr) for item in stmt.items)
            return self.block(stmt.body, dirty, in_loop)
        if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            return self._try(stmt, dirty, in_loop)
        if isinstance(stmt, ast.Match):
            dirty = dirty or self.expr_dirty(stmt.subject)
            return self._branches([case.body for case in stmt.cases] + [[]], dirty, in_loop)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return dirty, False
        self._track(stmt)
        return dirty or self.stmt_dirty(stmt), False

    def _try(self, stmt: ast.stmt, dirty: bool, in_loop: bool) -> tuple[bool, bool]:
        body: list[ast.stmt] = getattr(stmt, "body", [])
        handlers: list[ast.ExceptHandler] = getattr(stmt, "handlers", [])
        orelse: list[ast.stmt] = getattr(stmt, "orelse", [])
        final: list[ast.stmt] = getattr(stmt, "finalbody", [])
        maybe = dirty or any(
            isinstance(n, ast.stmt) and not isinstance(n, ast.Try) and self.stmt_dirty(n)
            for n in _walk(body)
        )
        end, ended = self.block([*body, *orelse], dirty, in_loop)
        ends = [] if ended else [end]
        for handler in handlers:
            h_end, h_ended = self.block(handler.body, maybe, in_loop)
            if not h_ended:
                ends.append(h_end)
        if final:
            f_end, f_ended = self.block(final, maybe or any(ends), in_loop)
            if f_ended:
                return f_end, True
            return f_end or any(ends), not ends
        if not ends:
            return dirty, True
        return any(ends), False


def exit_problem(body: Sequence[ast.stmt], name: str) -> str | None:
    """Why a unit of work would commit changes the old block discarded, or None when safe."""
    flow = _Flow(name)
    dirty, ended = flow.block(body, False, False)
    if flow.problem:
        return flow.problem
    if dirty and not ended:
        return (
            "the block can end with uncommitted changes (the old code discarded them; "
            "a unit of work would commit them)"
        )
    return None
