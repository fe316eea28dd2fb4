"""Hold the ``on_commit`` hooks of a test: ``captured_on_commit`` and ``capture_on_commit``.

Under ``unified_rollback`` the outermost commit of a unit of work only releases a
SAVEPOINT of the test's connection, but the library still sees an outermost commit and
would run its hooks (enqueue a job, send a mail) for data that the test rolls back.
While a capture is active, every hook that would run (at an outermost commit, or at once
with no unit active) is appended to it instead; the test inspects the hooks and runs them
with :meth:`CapturedHooks.run`, or lets ``execute=True`` run them at the end of the block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import overload

from ..unit_of_work import Hook, hook_captures, run_hook

__all__ = ["CapturedHooks", "capture_on_commit"]


class CapturedHooks(Sequence[Callable[[], object]]):
    """The hooks captured so far, in order; a sequence of the registered callables."""

    def __init__(self) -> None:
        self._pending: list[Hook] = []
        self._ran: list[Callable[[], object]] = []

    @overload
    def __getitem__(self, index: int) -> Callable[[], object]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Callable[[], object]]: ...
    def __getitem__(
        self, index: int | slice
    ) -> Callable[[], object] | Sequence[Callable[[], object]]:
        hooks = self._all()
        return hooks[index]

    def __len__(self) -> int:
        return len(self._ran) + len(self._pending)

    def __repr__(self) -> str:
        return f"<CapturedHooks {len(self._ran)} run, {len(self._pending)} pending>"

    def _all(self) -> list[Callable[[], object]]:
        return [*self._ran, *(hook for hook, _robust in self._pending)]

    @property
    def pending(self) -> list[Callable[[], object]]:
        """The hooks captured and not run yet."""
        return [hook for hook, _robust in self._pending]

    def run(self) -> None:
        """Run the pending hooks in order, as the commit would, then those they register.

        A robust hook's failure is logged and the others run; any other failure stops
        the rest (they stay pending) and is raised.
        """
        while self._pending:
            hook, robust = self._pending.pop(0)
            self._ran.append(hook)
            run_hook(hook, robust)

    def clear(self) -> None:
        """Drop the pending hooks (and forget the ones that ran)."""
        self._pending.clear()
        self._ran.clear()


@contextmanager
def capture_on_commit(*, execute: bool = False) -> Iterator[CapturedHooks]:
    """Capture the hooks that would run inside the block (for unittest, or any code).

    ``execute=True`` runs them when the block ends without an exception.
    """
    captured = CapturedHooks()
    hook_captures.append(captured._pending)
    try:
        yield captured
    finally:
        # By identity: two empty lists are equal.
        for index in range(len(hook_captures) - 1, -1, -1):
            if hook_captures[index] is captured._pending:
                del hook_captures[index]
                break
    if execute:
        captured.run()
