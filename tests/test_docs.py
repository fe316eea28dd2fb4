"""Every ```python block in the documentation runs, as written.

How the blocks run (the same rules are stated at the top of the quickstart):

* one test per page; the page's ``python`` blocks run **in order**, each in a **fresh
  namespace** (``__name__`` is ``"docs_example"``), so a block imports what it uses;
* the page runs in its own empty temporary directory (the cwd), with ``DATABASE_URL`` set
  to a SQLite file in it: what one block writes to the database or to a file, the later
  blocks of the same page can see;
* around each block the library is reset: no default factory, every engine it created or
  adopted disposed and forgotten, so one block's pool never leaks into the next;
* the suite's ``filterwarnings = error`` applies: a block that leaks a session fails.

A fence counts as Python when its info string is ``python``, ``py``, ``python3`` or
``{code-block} python`` (options lines such as ``:caption:`` are skipped). Use ``text``,
``console`` or ``ini`` for fragments and shell sessions.

README.md's blocks run too: the first screen a newcomer reads must not drift.
"""

from __future__ import annotations

import gc
import re
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import flask_unified_session
from flask_unified_session import engines as engine_registry
from flask_unified_session.asyncio import set_default_async_factory

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MODULE = "docs_example"
PYTHON_INFO = {"python", "py", "python3"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(text: str, path: Path = ROOT / "<text>") -> list[Block]:
    """The Python fences of a Markdown text, in order (nested fences are not descended)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"].expandtabs())
        info = opening["info"].strip()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines):
            closing = _FENCE.match(lines[index])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(lines[index])
            index += 1
        index += 1
        words = info.split()
        language = words[1] if words[:1] == ["{code-block}"] and len(words) > 1 else info
        if language.split()[:1] and language.split()[0] in PYTHON_INFO:
            if words[:1] == ["{code-block}"]:
                while body and re.match(r"^\s*:[\w-]+:", body[0]):
                    body.pop(0)
            code = textwrap.dedent(
                "\n".join(line[indent:] if line[:indent].isspace() else line for line in body)
            )
            blocks.append(Block(path, start + 1, code + "\n"))
    return blocks


def _pages() -> list[object]:
    pages: list[object] = sorted(DOCS.glob("*.md"))
    pages.append(ROOT / "README.md")
    return pages


def _reset_library() -> None:
    flask_unified_session.set_default_factory(None)
    set_default_async_factory(None)
    for record in engine_registry.known_engines():
        record.engine.dispose()  # adopted ones too: the block that made them is over
    flask_unified_session.dispose_engines()


@pytest.fixture
def page_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cwd and a SQLite DATABASE_URL in it, for one page."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'docs.db'}")
    _reset_library()
    yield tmp_path
    _reset_library()


@pytest.mark.parametrize("page", _pages(), ids=lambda page: Path(str(page)).name)
def test_python_blocks_run(page: Path, page_dir: Path) -> None:
    """Every ```python block of the page runs without error or warning, in order."""
    for block in python_blocks(page.read_text(encoding="utf-8"), page):
        # A real module, so that SQLAlchemy and Flask can look the block's classes up.
        module = types.ModuleType(MODULE)
        sys.modules[MODULE] = module
        try:
            exec(compile(block.code, block.where(), "exec"), module.__dict__)
            del module
            sys.modules.pop(MODULE, None)
            gc.collect()  # a session the block leaked warns here, inside this test
        except BaseException as exc:
            raise AssertionError(f"the python block at {block.where()} failed: {exc!r}") from exc
        finally:
            sys.modules.pop(MODULE, None)
            _reset_library()


def test_the_docs_have_runnable_blocks() -> None:
    """The parser finds the blocks of the pages that must have some (guards a silent no-op)."""
    for name in ("index.md", "quickstart.md", "concepts.md", "migration.md"):
        assert python_blocks((DOCS / name).read_text(encoding="utf-8")), name


def test_the_parser_finds_python_fences_only() -> None:
    """Python fences (backticks, tildes, longer fences, indented, code-block) and no others."""
    text = textwrap.dedent(
        """\
        ```python
        a = 1
        ```
        ```text
        not python
        ```
        ````py
        ```python
        b = 2
        ```
        ````
        1. a list item:

           ```python
           c = 3
           ```
        ~~~python3
        d = 4
        ~~~
        ```{code-block} python
        :caption: e

        e = 5
        ```
        ```console
        $ python -c 'f = 6'
        ```
        """
    )
    codes = [block.code for block in python_blocks(text)]
    assert codes == [
        "a = 1\n",
        "```python\nb = 2\n```\n",
        "c = 3\n",
        "d = 4\n",
        "\ne = 5\n",
    ]
    assert [block.line for block in python_blocks(text)] == [1, 7, 14, 17, 20]


def test_api_page_covers_the_public_names() -> None:
    """Every name in ``flask_unified_session.__all__`` and every signal is on the API page."""
    from flask_unified_session import signals

    api = (DOCS / "api.md").read_text(encoding="utf-8")
    names = [*flask_unified_session.__all__, *signals.__all__]
    missing = [name for name in names if not re.search(rf"\b{re.escape(name)}\b", api)]
    assert missing == []


def test_configuration_page_covers_every_setting() -> None:
    """Each setting appears under its environment variable and its Flask config key."""
    from dataclasses import fields

    from flask_unified_session import Settings
    from flask_unified_session.extension import URL_KEYS
    from flask_unified_session.managers import COMMIT_MODES

    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    expected = ["DATABASE_URL", *URL_KEYS, *COMMIT_MODES]
    expected += ["UNIFIED_SESSION_COMMIT_MODE", "UNIFIED_SESSION_EXPIRE_ON_COMMIT"]
    expected += ["DATABASE_ASYNC_URL", "UNIFIED_SESSION_DATABASE_ASYNC_URL"]
    for field in fields(Settings):
        if field.name not in ("url", "source", "database_async_url"):
            expected += [f"DB_{field.name.upper()}", f"UNIFIED_SESSION_{field.name.upper()}"]
    assert [name for name in expected if f"`{name}`" not in page] == []
