"""What touches the database: the change analysis behind ``migrate``'s exit check.

A unit of work commits on a normal exit where the old code closed (discarding what it had not
committed). A site is only refused when some path can leave the block with a *database*
change made and not committed. Work on local values is not one: ``flash()``, ``append`` on a
local list, an item set on a local dict, a WTForms field, ``execute(text("SELECT ..."))``, a
``Query`` handed to a helper.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flask_unified_session.tooling.checker import dotted, walk_scope

#: Session (and Query) methods that only read or touch the identity map.
READ_METHODS = frozenset(
    {
        "query",
        "get",
        "scalar",
        "scalars",
        "refresh",
        "get_bind",
        "expunge",
        "expunge_all",
        "is_modified",
        "begin",
        "in_transaction",
        "no_autoflush",
        "identity_key",
    }
)
#: Methods of a Query / Select that build it or read from it.
QUERY_BUILDERS = frozenset(
    {
        "filter",
        "filter_by",
        "where",
        "order_by",
        "group_by",
        "having",
        "join",
        "outerjoin",
        "options",
        "limit",
        "offset",
        "distinct",
        "select_from",
        "with_entities",
        "add_columns",
        "correlate",
        "execution_options",
        "params",
        "yield_per",
        "subquery",
        "union",
        "exists",
        "label",
        "scalar_subquery",
    }
)
QUERY_READERS = frozenset(
    {"all", "first", "one", "one_or_none", "scalar", "count", "get", "paginate", "exists"}
)
#: Methods that write, wherever they appear in a session or query chain.
WRITE_METHODS = frozenset(
    {
        "add",
        "add_all",
        "delete",
        "merge",
        "flush",
        "update",
        "bulk_save_objects",
        "bulk_insert_mappings",
        "bulk_update_mappings",
        "insert",
        "values",
    }
)
#: Methods that change the object they are called on, whatever it is.
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
        "populate_obj",
    }
)
#: Collection mutators: on an object of unknown origin they may change a loaded collection
#: (``user.roles`` handed around); ``delete()`` or ``save()`` there is taken for another
#: library's call (a chat message, a file), which a session commit does not concern.
COLLECTION_MUTATORS = frozenset(
    {
        "append",
        "extend",
        "insert",
        "remove",
        "pop",
        "popitem",
        "update",
        "add",
        "discard",
        "clear",
        "setdefault",
        "sort",
        "reverse",
    }
)
#: Calls with no database side effect, even when given an object loaded from the session.
PURE_FUNCTIONS = frozenset(
    {
        "abs",
        "abort",
        "all",
        "any",
        "bool",
        "dict",
        "enumerate",
        "filter",
        "flash",
        "float",
        "format",
        "getattr",
        "hasattr",
        "id",
        "int",
        "isinstance",
        "iter",
        "json.dumps",
        "jsonify",
        "len",
        "list",
        "make_response",
        "map",
        "max",
        "min",
        "next",
        "print",
        "range",
        "redirect",
        "render_template",
        "repr",
        "reversed",
        "round",
        "select",
        "set",
        "sorted",
        "str",
        "sum",
        "text",
        "tuple",
        "type",
        "url_for",
        "warnings.warn",
        "zip",
    }
)
CONTAINER_CALLS = frozenset(
    {"list", "dict", "set", "defaultdict", "OrderedDict", "Counter", "deque", "tuple"}
)
LOGGER_NAMES = frozenset({"logger", "log", "logging", "LOGGER", "_logger", "_log", "app.logger"})
_READ_SQL = re.compile(r"^\s*(select|show|explain|describe)\b", re.I)
_WRITE_SQL = re.compile(r"\b(insert|update|delete|merge|create|drop|alter|truncate)\b", re.I)


def is_method_stmt(stmt: ast.stmt, name: str, method: str) -> bool:
    """Whether ``stmt`` is exactly ``name.method()`` (or ``await name.method()``)."""
    if not isinstance(stmt, ast.Expr):
        return False
    value = stmt.value.value if isinstance(stmt.value, ast.Await) else stmt.value
    return (
        isinstance(value, ast.Call)
        and not value.args
        and not value.keywords
        and dotted(value.func) == f"{name}.{method}"
    )


def call_chain(call: ast.Call) -> tuple[str | None, list[str]]:
    """(root variable, methods in call order) of e.g. ``s.query(U).filter(...).delete()``."""
    node: ast.expr = call.func
    methods: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            methods.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            break
    return (node.id if isinstance(node, ast.Name) else None), methods[::-1]


def _root_name(node: ast.expr) -> tuple[str | None, bool]:
    """(root variable, whether the path to it goes through a subscript) of an assign target."""
    through_subscript = False
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        through_subscript = through_subscript or isinstance(node, ast.Subscript)
        node = node.value
    return (node.id if isinstance(node, ast.Name) else None), through_subscript


def is_read_sql(node: ast.expr) -> bool:
    """``text("SELECT ...")`` / ``select(...)`` / a SELECT string."""
    if isinstance(node, ast.Call):
        name = (dotted(node.func) or "").rpartition(".")[2]
        if name == "select":
            return True
        if name == "text" and node.args:
            return is_read_sql(node.args[0])
        return False
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(_READ_SQL.match(node.value)) and not _WRITE_SQL.search(node.value)
    return False


def _plain_kind(value: ast.expr) -> str | None:
    """ "container" or "object" when ``value`` is a new local value (not a database one)."""
    if isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)):
        return "container"
    if isinstance(value, (ast.Constant, ast.JoinedStr)):
        return "container"  # immutable: nothing can be set on it
    if isinstance(value, ast.Call):
        name = (dotted(value.func) or "").rpartition(".")[2]
        if name in CONTAINER_CALLS:
            return "container"
        if isinstance(value.func, (ast.Name, ast.Attribute)) and name[:1].isupper():
            return "object"  # a new object (a form, a transient model): not in a session yet
    return None


def bound_names(target: ast.expr) -> set[str]:
    """Names an assignment target rebinds (``a, b = ...``), not those it assigns into
    (``form.name.data = ...`` and ``counts[k] = ...`` leave ``form`` and ``counts`` bound)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return {name for element in target.elts for name in bound_names(element)}
    if isinstance(target, ast.Starred):
        return bound_names(target.value)
    return set()


def plain_locals(function: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """Local names only ever bound to new local values (name -> "container" / "object")."""
    kinds: dict[str, str] = {}
    excluded: set[str] = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
    for node in walk_scope(function.body):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            excluded.update(node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            kind = _plain_kind(node.value)
            for target in targets:
                if isinstance(target, ast.Name):
                    if kind is None or kinds.get(target.id, kind) != kind:
                        excluded.add(target.id)
                    else:
                        kinds[target.id] = kind
                else:
                    excluded.update(bound_names(target))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            excluded.update(bound_names(node.target))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            excluded.update(bound_names(node.optional_vars))
        elif isinstance(node, (ast.AugAssign, ast.NamedExpr)) and isinstance(node.target, ast.Name):
            if not isinstance(node, ast.AugAssign):
                excluded.add(node.target.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            excluded.add(node.name)
    return {name: kind for name, kind in kinds.items() if name not in excluded}


def _walk(nodes: Iterable[ast.AST]) -> Iterable[ast.AST]:
    for node in nodes:
        yield from ast.walk(node)


@dataclass
class ChangeFlow:
    """Path-sensitive walk tracking "database changes made since the last commit" (``dirty``)."""

    name: str
    plain: dict[str, str] = field(default_factory=dict)
    derived: set[str] = field(default_factory=set)
    queries: set[str] = field(default_factory=set)
    problem: str | None = None
    #: the first helper given the session, when that is the only "change" seen: the reason
    #: then names it (the helper may write; nothing else in the block does)
    handed_to: str | None = None
    other_change: bool = False

    # -- what a value is ---------------------------------------------------------------------
    def _is_db_value(self, node: ast.expr) -> bool:
        """The session itself, or an object loaded from it (not a query: a query only reads)."""
        return isinstance(node, ast.Name) and (node.id == self.name or node.id in self.derived)

    def _session_chain_writes(self, call: ast.Call, methods: list[str]) -> bool:
        if any(method in WRITE_METHODS for method in methods):
            return True
        first = methods[0] if methods else ""
        if first == "execute" or first == "scalars" or first == "scalar":
            args = call_chain_first_args(call, self.name)
            if first != "execute":
                return False
            return not (args and (is_read_sql(args[0]) or self._is_query_name(args[0])))
        return first not in READ_METHODS and first not in QUERY_BUILDERS

    def _is_query_name(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id in self.queries

    def call_dirty(self, call: ast.Call, statement: bool = False) -> bool:
        """Whether ``call`` may change database state the unit of work would commit."""
        dirty = self._call_dirty(call, statement)
        if dirty:
            arguments = [*call.args, *(k.value for k in call.keywords)]
            root, _ = call_chain(call)
            if root != self.name and any(
                isinstance(a, ast.Name) and a.id == self.name for a in arguments
            ):
                self.handed_to = self.handed_to or (dotted(call.func) or "a helper")
            else:
                self.other_change = True
        return dirty

    def _call_dirty(self, call: ast.Call, statement: bool) -> bool:
        root, methods = call_chain(call)
        func_name = dotted(call.func) or ""
        arguments = [*call.args, *(k.value for k in call.keywords)]
        passes_session = any(isinstance(a, ast.Name) and a.id == self.name for a in arguments)
        # A loaded object handed to a call made for its effect may be changed by it; one
        # whose result is used (`label = describe(user)`) is taken for a read.
        passes_db_value = passes_session or (
            statement and any(self._is_db_value(arg) for arg in arguments)
        )
        if root == self.name:
            return self._session_chain_writes(call, methods)
        if root is not None and root in self.queries:
            return any(method in WRITE_METHODS for method in methods)
        if func_name.rpartition(".")[0] in LOGGER_NAMES or ".logger." in f".{func_name}.":
            return False
        if func_name in PURE_FUNCTIONS or func_name.rpartition(".")[2] in ("flash", "jsonify"):
            return False
        if ".session." in f".{func_name}":
            # db.session.add(x): the app context's session, which the unit now commits
            return not (methods and methods[-1] in READ_METHODS | QUERY_READERS)
        if root is not None and root in self.plain:
            if self.plain[root] == "container":
                return False  # a local list or dict: holding a loaded object changes nothing
            return passes_db_value or (methods[-1:] == ["populate_obj"])
        if root is not None and root in self.derived:
            # a method of a loaded object may change it (set_password); as a value, only
            # the mutating ones are assumed to
            return statement or any(method in MUTATING_METHODS for method in methods)
        if isinstance(call.func, ast.Attribute) and call.func.attr in COLLECTION_MUTATORS:
            return True
        # Any other call: it can only reach this session through what it is given.
        return passes_db_value

    def expr_dirty(self, node: ast.AST) -> bool:
        """Whether evaluating ``node`` may change state (any dirty call inside it)."""
        return any(isinstance(n, ast.Call) and self.call_dirty(n) for n in ast.walk(node))

    def _target_dirty(self, target: ast.expr) -> bool:
        """Whether assigning to ``target`` (an attribute or item) changes a database object."""
        root, through_subscript = _root_name(target)
        kind = self.plain.get(root or "")
        if kind == "object":
            return False  # a new local object (a form field, a transient model)
        if kind == "container":
            return through_subscript and not isinstance(target, ast.Subscript)
        return True

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
            elements = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            for element in elements:
                if isinstance(element, (ast.Attribute, ast.Subscript)) and self._target_dirty(
                    element
                ):
                    self.other_change = True
                    return True
        if isinstance(stmt, ast.Expr):
            value = stmt.value.value if isinstance(stmt.value, ast.Await) else stmt.value
            if isinstance(value, ast.Call) and self.call_dirty(value, statement=True):
                return True
        return self.expr_dirty(stmt)

    def _loads_objects(self, value: ast.expr) -> bool:
        """Whether ``value`` may hold objects of the session (not a value computed from one).

        ``session.get(...)``, a query's rows, an attribute or item of a loaded object (it may
        be a relationship) are; ``str(user.id)`` or ``decrypt(user.key)`` are not: a call
        that is not given the session returns no object of it.
        """
        if isinstance(value, ast.Await):
            return self._loads_objects(value.value)
        if isinstance(value, ast.Name):
            return value.id == self.name or value.id in self.derived or value.id in self.queries
        if isinstance(value, (ast.Attribute, ast.Subscript)):
            return self._loads_objects(value.value)
        if isinstance(value, ast.Call):
            root, _ = call_chain(value)
            if root is not None and (
                root == self.name or root in self.derived or root in self.queries
            ):
                return True
            return any(
                isinstance(arg, ast.Name) and arg.id == self.name
                for arg in [*value.args, *(k.value for k in value.keywords)]
            )
        if isinstance(value, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            return any(self._loads_objects(g.iter) for g in value.generators)
        if isinstance(value, (ast.List, ast.Tuple, ast.Set)):
            return any(self._loads_objects(element) for element in value.elts)
        if isinstance(value, (ast.BoolOp, ast.IfExp)):
            parts = value.values if isinstance(value, ast.BoolOp) else [value.body, value.orelse]
            return any(self._loads_objects(part) for part in parts)
        return False

    def _bind(self, targets: Sequence[ast.expr], value: ast.expr | None) -> None:
        """Track what names now hold: a query, an object from the session, or neither."""
        names = {name for target in targets for name in bound_names(target)}
        is_query = value is not None and self._is_query_value(value)
        loads = value is not None and self._loads_objects(value)
        for name in names:
            self.derived.discard(name)
            self.queries.discard(name)
            if is_query:
                self.queries.add(name)
            elif loads:
                self.derived.add(name)

    def _is_query_value(self, value: ast.expr) -> bool:
        if is_read_sql(value):
            return True
        if not isinstance(value, ast.Call):
            return False
        root, methods = call_chain(value)
        if root == self.name:
            return (
                bool(methods)
                and methods[0] == "query"
                and all(m in QUERY_BUILDERS for m in methods[1:])
            )
        if root is not None and root in self.queries:
            return all(m in QUERY_BUILDERS for m in methods)
        return False

    def _track(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Assign):
            self._bind(stmt.targets, stmt.value)
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) and stmt.value is not None:
            if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
                return
            self._bind([stmt.target], stmt.value)

    def _leave(self, dirty: bool, what: str) -> None:
        if dirty and self.problem is None:
            if self.handed_to is not None and not self.other_change:
                self.problem = (
                    f"a {what} can be reached after the session was handed to "
                    f"{self.handed_to}(), which may change it, and before any commit (the old "
                    "code discarded such changes; a unit of work would commit them)"
                )
            else:
                self.problem = (
                    f"a {what} can be reached after changes and before any commit "
                    "(the old code discarded them; a unit of work would commit them)"
                )

    # -- the walk ----------------------------------------------------------------------------
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
            self._leave(dirty, "return")
            return dirty, True
        if isinstance(stmt, (ast.Break, ast.Continue)):
            if not in_loop:
                self._leave(dirty, type(stmt).__name__.lower())
            return dirty, True
        if isinstance(stmt, ast.Raise):
            return dirty, True  # the unit of work rolls back, as close() discarded
        if is_method_stmt(stmt, self.name, "commit") or is_method_stmt(stmt, self.name, "rollback"):
            return False, False
        if isinstance(stmt, ast.If):
            dirty = dirty or self.expr_dirty(stmt.test)
            return self._branches([stmt.body, stmt.orelse], dirty, in_loop)
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            return self._loop(stmt, dirty, in_loop)
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            dirty = dirty or any(self.expr_dirty(item.context_expr) for item in stmt.items)
            for item in stmt.items:
                if item.optional_vars is not None:
                    self._bind([item.optional_vars], item.context_expr)
            return self.block(stmt.body, dirty, in_loop)
        if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            return self._try(stmt, dirty, in_loop)
        if isinstance(stmt, ast.Match):
            dirty = dirty or self.expr_dirty(stmt.subject)
            return self._branches([case.body for case in stmt.cases] + [[]], dirty, in_loop)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return dirty, False
        changed = self.stmt_dirty(stmt)
        self._track(stmt)
        return dirty or changed, False

    def _loop(
        self, stmt: ast.For | ast.AsyncFor | ast.While, dirty: bool, in_loop: bool
    ) -> tuple[bool, bool]:
        if isinstance(stmt, ast.While):
            dirty = dirty or self.expr_dirty(stmt.test)
        else:
            dirty = dirty or self.expr_dirty(stmt.iter)
            self._bind([stmt.target], stmt.iter)
        end, _ = self.block(stmt.body, dirty, True)
        if end and not dirty:
            end, _ = self.block(stmt.body, True, True)
        after, ended = self.block(stmt.orelse, dirty or end, in_loop)
        return after or dirty or end, ended and not stmt.orelse

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


def call_chain_first_args(call: ast.Call, root: str) -> list[ast.expr]:
    """The arguments of the first call on ``root`` in a chain (``s.execute(X).all()`` -> X)."""
    node: ast.expr = call
    found: list[ast.expr] = []
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == root
        ):
            found = list(node.args)
        node = node.func if isinstance(node, ast.Call) else node.value
    return found


def exit_problem(
    body: Sequence[ast.stmt], name: str, plain: dict[str, str] | None = None
) -> str | None:
    """Why a unit of work would commit changes the old block discarded, or None when safe.

    ``plain`` names the function's locals that only ever hold new local values
    (:func:`plain_locals`); changing them is not a database change.
    """
    flow = ChangeFlow(name, plain=dict(plain or {}))
    dirty, ended = flow.block(body, False, False)
    if flow.problem:
        return flow.problem
    if dirty and not ended:
        if flow.handed_to is not None and not flow.other_change:
            return (
                f"the block can end after the session was handed to {flow.handed_to}(), "
                "which may change it, without a commit (the old code discarded such changes; "
                "a unit of work would commit them)"
            )
        return (
            "the block can end with uncommitted changes (the old code discarded them; "
            "a unit of work would commit them)"
        )
    return None
