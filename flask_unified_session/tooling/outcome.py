"""What ``migrate`` did to one file: the outcome record, the sites it left, its diff."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LeftSite:
    """A session site ``migrate`` did not rewrite, and why."""

    path: str
    line: int
    reason: str

    def to_text(self) -> str:
        """Render as ``path:line: reason``."""
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class FileOutcome:
    """The result of migrating one file."""

    path: str
    original: str
    new: str
    rewritten: int = 0
    left: list[LeftSite] = field(default_factory=list)
    error: str | None = None
    #: "target (why)" -> how many sites of the file got it
    targets: dict[str, int] = field(default_factory=dict)
    encoding: str = "utf-8"

    @property
    def changed(self) -> bool:
        """Whether the file's text changed."""
        return self.new != self.original

    def diff(self) -> str:
        """Unified diff of the change (empty when unchanged)."""
        return unified_diff(self.original, self.new, self.path)


def _range(start: int, length: int) -> str:
    """The ``start,length`` of a hunk header (1-based; an empty range names the line before)."""
    first = start + 1 if length else start
    return str(first) if length == 1 else f"{first},{length}"


def unified_diff(old: str, new: str, path: str, context: int = 3) -> str:
    """A unified diff of ``old`` to ``new``.

    :func:`difflib.unified_diff` cannot turn off the "popular line" heuristic, which makes
    whole classes look rewritten in files with many blank or repeated lines.
    """
    a = old.splitlines(keepends=True)
    b = new.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    out: list[str] = []
    for group in matcher.get_grouped_opcodes(context):
        if not out:
            out += [f"--- a/{path}\n", f"+++ b/{path}\n"]
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@\n")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                out += [" " + line for line in a[a1:a2]]
                continue
            out += ["-" + line for line in a[a1:a2]]
            out += ["+" + line for line in b[b1:b2]]
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)
