"""Unit tests of the safety analysis behind ``migrate`` (when a unit of work changes behaviour)."""

from __future__ import annotations

import ast
import textwrap

import pytest

from flask_unified_session.tooling.analysis import escape_reason, exit_problem
from flask_unified_session.tooling.changes import plain_locals


def body(code: str) -> list[ast.stmt]:
    """Parse a dedented block of statements."""
    return ast.parse(textwrap.dedent(code)).body


@pytest.mark.parametrize(
    "code",
    [
        "user = s.query(U).get(1)\nif user is None:\n    return None\nreturn user.name\n",
        "s.add(x)\ns.commit()\nreturn x.id\n",
        "logger.info('start')\nreturn len(s.scalars(select(U)).all())\n",
        "x.name = 'n'\nraise ValueError('no')\n",
        "if a:\n    s.add(x)\n    s.commit()\n    return 1\nreturn 0\n",
        "for i in items:\n    if not i:\n        continue\n    s.add(i)\ns.commit()\n",
    ],
)
def test_safe_blocks(code: str) -> None:
    """Reads, committed changes and exceptions leave nothing a unit of work would commit."""
    assert exit_problem(body(code), "s") is None


@pytest.mark.parametrize(
    "code",
    [
        "user = s.get(U, 1)\nuser.name = 'x'\nif bad:\n    return False\ns.commit()\n",
        "s.add(x)\nreturn True\n",
        "return fn(s)\n",
        "user = s.get(U, 1)\nmark(user)\nreturn 1\n",
        "user = s.get(U, 1)\nuser.tags.append(t)\n",
        "s.execute(update(U).values(a=1))\n",
        "s.add(x)\ns.commit()\nx.done = True\n",
    ],
)
def test_blocks_that_would_commit_discarded_changes(code: str) -> None:
    """A path leaving the block with uncommitted changes is a reason to refuse."""
    assert exit_problem(body(code), "s") is not None


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("return s\n", "the session is returned"),
        ("yield s\n", "the session is yielded"),
        ("self.s = s\n", "the session is stored on an object"),
        ("other = s\n", "the session is aliased to another variable"),
        ("pool.append(s)\n", "the session is stored in a container"),
        ("s = None\n", "the session variable is reassigned inside the block"),
        ("s.close()\n", "close() is called inside the block"),
        ("helper(s)\nreturn s.query(U).all()\n", None),
    ],
)
def test_escape_reasons(code: str, reason: str | None) -> None:
    """A session leaving the block is named; passing it to a helper is fine."""
    assert escape_reason(body(code), "s") == reason


@pytest.mark.parametrize(
    "code",
    [
        "u = s.get(U, 1)\nflash('saved')\nreturn redirect(url_for('x'))\n",
        "rows = []\nfor u in s.query(U):\n    rows.append(u)\nreturn rows\n",
        "out = {}\nu = s.get(U, 1)\nout['name'] = u.name\nreturn out\n",
        "form = F()\nform.name.data = s.get(U, 1).name\nreturn render(form)\n",
        "s.execute(text('SELECT 1'))\nreturn True\n",
        "q = s.query(U).filter(U.a)\nreturn paginate(q)\n",
        "u = s.get(U, 1)\nlabel = describe(u)\nreturn label\n",
        "u = s.get(U, 1)\nawait update.message.delete()\nreturn u.id\n",
    ],
)
def test_local_work_is_not_a_change(code: str) -> None:
    """What touches no database object leaves nothing for a unit of work to commit."""
    tree = ast.parse("def f():\n" + textwrap.indent(code, "    "))
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    assert exit_problem(function.body, "s", plain_locals(function)) is None


@pytest.mark.parametrize(
    "code",
    [
        "s.query(U).filter(U.a).delete()\nreturn 1\n",
        "s.query(U).filter(U.a).update({'a': 1})\nreturn 1\n",
        "q = s.query(U)\nq.delete()\nreturn 1\n",
        "s.execute(text('DELETE FROM u'))\nreturn 1\n",
        "db.session.add(U())\nreturn 1\n",
        "u = s.get(U, 1)\nsetattr(u, 'a', 1)\nreturn 1\n",
        "u = s.get(U, 1)\nroles = u.roles\nroles.append(r)\nreturn 1\n",
    ],
)
def test_database_work_is_a_change(code: str) -> None:
    """Writes through the session, a query, the app's session or a loaded object count."""
    tree = ast.parse("def f():\n" + textwrap.indent(code, "    "))
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    assert exit_problem(function.body, "s", plain_locals(function)) is not None
