"""A libcst transformer base that knows which blocks enclose the node being visited."""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

_Statement = cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement] | cst.RemovalSentinel


@dataclass
class Scope:
    """One enclosing construct of the visited node."""

    kind: str  # "def", "class", "if", "else", "try", "loop", "with", "except", "finally"
    node: cst.CSTNode
    needs_mixin: bool = False


class ScopeTracker(cst.CSTTransformer):
    """Keeps :attr:`scopes`, innermost last; subclasses add the rewriting."""

    def __init__(self) -> None:
        super().__init__()
        self.scopes: list[Scope] = []

    def _push(self, kind: str, node: cst.CSTNode) -> None:
        self.scopes.append(Scope(kind, node))

    def function(self) -> cst.FunctionDef | None:
        """The innermost enclosing def, if any."""
        for scope in reversed(self.scopes):
            if scope.kind == "def" and isinstance(scope.node, cst.FunctionDef):
                return scope.node
        return None

    def enclosing_class(self) -> Scope | None:
        """The innermost enclosing class scope, if any."""
        for scope in reversed(self.scopes):
            if scope.kind == "class":
                return scope
        return None

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool | None:
        self._push("def", node)
        return None

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        self.scopes.pop()
        return updated_node

    def visit_ClassDef(self, node: cst.ClassDef) -> bool | None:
        self._push("class", node)
        return None

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

    def leave_For(self, original_node: cst.For, updated_node: cst.For) -> _Statement:
        self.scopes.pop()
        return updated_node

    def visit_While(self, node: cst.While) -> None:
        self._push("loop", node)

    def leave_While(self, original_node: cst.While, updated_node: cst.While) -> _Statement:
        self.scopes.pop()
        return updated_node

    def visit_With(self, node: cst.With) -> None:
        self._push("with", node)

    def visit_Try(self, node: cst.Try) -> None:
        self._push("try", node)

    def leave_Try(self, original_node: cst.Try, updated_node: cst.Try) -> _Statement:
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
