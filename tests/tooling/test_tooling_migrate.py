"""Before/after fixture pairs of ``migrate``, idempotence, compilation and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from flask_unified_session.tooling.codemod import migrate_source
from flask_unified_session.tooling.config import Config

from .conftest import FIXTURES

PAIRS = sorted(p.name for p in FIXTURES.iterdir() if (p / "before.py").is_file())
CONFIG = Config()
LOST_CHANGES = (
    "a return can be reached after changes and before any commit "
    "(the old code discarded them; a unit of work would commit them)"
)


def read(name: str, which: str) -> str:
    """Text of ``fixtures/<name>/<which>.py``."""
    return (FIXTURES / name / f"{which}.py").read_text(encoding="utf-8")


def test_fixture_pairs_are_present() -> None:
    """Every shape the migration must handle has a before/after pair."""
    assert len(PAIRS) >= 12
    assert all((FIXTURES / name / "after.py").is_file() for name in PAIRS)


@pytest.mark.parametrize("name", PAIRS)
def test_before_migrates_to_after(name: str) -> None:
    """migrate(before.py) is exactly after.py."""
    assert migrate_source(read(name, "before"), name, CONFIG).new == read(name, "after")


@pytest.mark.parametrize("name", PAIRS)
def test_migrate_is_idempotent(name: str) -> None:
    """migrate(after.py) changes nothing."""
    outcome = migrate_source(read(name, "after"), name, CONFIG)
    assert outcome.new == read(name, "after")
    assert outcome.rewritten == 0


@pytest.mark.parametrize("name", PAIRS)
def test_after_compiles(name: str) -> None:
    """Every after.py compiles."""
    compile(read(name, "after"), f"{name}/after.py", "exec")


def test_escaping_sessions_are_left_with_reasons() -> None:
    """Sites that cannot be rewritten safely are unchanged and listed with their reason."""
    outcome = migrate_source(read("escapes", "before"), "escapes.py", CONFIG)
    assert outcome.new == outcome.original
    assert [(s.line, s.reason) for s in outcome.left] == [
        (5, "the session is returned"),
        (14, "the session is stored on an object"),
        (19, "the session is yielded"),
        (28, "ownership is conditional (the if tests the session variable)"),
        (37, "the assignment is inside the try"),
        (45, "close() is not in a finally"),
        (52, "an except handler uses the session for more than rollback()"),
        (
            65,
            "the block can end with uncommitted changes (the old code discarded them; "
            "a unit of work would commit them)",
        ),
        (74, "the finally closes the session conditionally"),
    ]


def test_return_after_uncommitted_change_is_refused() -> None:
    """A return reachable after a change and before a commit keeps the site as it was."""
    outcome = migrate_source(read("return_in_try", "before"), "r.py", CONFIG)
    assert [(s.line, s.reason) for s in outcome.left] == [(27, LOST_CHANGES)]
    assert "def half_update(db_manager, user_id, name):\n    session = db_manager" in outcome.new


def test_decorator_passing_session_in_return_is_refused() -> None:
    """`return fn(session)` may change data after the last commit, so it is left alone."""
    outcome = migrate_source(read("nested_functions", "before"), "n.py", CONFIG)
    assert [(s.line, s.reason) for s in outcome.left] == [
        (
            40,
            "a return can be reached after the session was handed to fn(), which may change "
            "it, and before any commit (the old code discarded such changes; a unit of work "
            "would commit them)",
        )
    ]


def test_commit_followed_by_anything_is_kept() -> None:
    """Only a commit that is the very last statement of the block is dropped."""
    after = read("commits", "after")
    assert "session.commit()\n        session.refresh(invoice)\n        return invoice.id" in after
    assert after.count("session.commit()") == 2


def test_service_class_gains_mixin_and_import() -> None:
    """A class using self.db_manager gets SessionServiceMixin as its last base and the import."""
    after = read("service_class", "after")
    assert "from flask_unified_session import SessionServiceMixin\n" in after
    assert "class AccountService(SessionServiceMixin):" in after
    assert "class AuditService(BaseService, SessionServiceMixin, metaclass=type):" in after
    assert "def __init__(self, db_manager):\n        self.db_manager = db_manager" in after


def test_comments_are_preserved() -> None:
    """Every comment of the file survives the rewrite."""
    before, after = read("comments", "before"), read("comments", "after")
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    missing = [c for c in comments if c not in after]
    assert missing == [" legacy"]  # the assignment's own comment goes with the assignment


def test_syntax_error_is_reported_not_raised() -> None:
    """A file that does not parse is returned unchanged with an error message."""
    source = (FIXTURES / "broken" / "broken.py").read_text(encoding="utf-8")
    outcome = migrate_source(source, "broken.py", CONFIG)
    assert outcome.new == source
    assert outcome.error is not None
    assert outcome.error.startswith("does not parse")


def test_target_is_configurable() -> None:
    """migrate-target / framework-target replace the defaults, each in its own context."""
    config = Config(migrate_target="get_db_session()", framework_target="scope()")
    outcome = migrate_source(read("try_finally", "before"), "t.py", config)
    assert "    with scope() as session:\n" in outcome.new
    assert "current_app" not in outcome.new
    assert "import session_scope" not in outcome.new
    view = migrate_source(read("targets_flask_view", "before"), "v.py", config)
    assert "    with get_db_session() as session:\n" in view.new


def test_module_level_session_is_left(tmp_path: Path) -> None:
    """A session obtained at import time has no function to scope it and is left alone."""
    source = "s = db_manager.get_session()\ntry:\n    s.query(1)\nfinally:\n    s.close()\n"
    outcome = migrate_source(source, "m.py", CONFIG)
    assert outcome.new == source
    assert [s.reason for s in outcome.left] == [
        "module-level session (no function to scope a unit of work)"
    ]


def test_crlf_line_endings_are_kept() -> None:
    """A file with CRLF line endings keeps them."""
    source = read("try_finally", "before").replace("\n", "\r\n")
    new = migrate_source(source, "t.py", CONFIG).new
    assert new == read("try_finally", "after").replace("\n", "\r\n")


def test_loop_exits_and_late_uses_are_refused() -> None:
    """break after changes, use after close, closures and un-committed returns are left alone."""
    outcome = migrate_source(read("loops_and_refusals", "before"), "l.py", CONFIG)
    assert [(s.line, s.reason) for s in outcome.left] == [
        (31, LOST_CHANGES.replace("a return", "a break")),
        (42, "the session is used after the try"),
        (51, "the session is captured by a nested function"),
        (60, LOST_CHANGES),
    ]
    assert outcome.rewritten == 3  # await notify(user.email) changes nothing in the session


def test_else_and_extra_finally_are_kept_around_the_with() -> None:
    """A try/else committing moves into the block; a finally doing more than close() stays."""
    after = read("try_else_finally", "after")
    assert '    else:\n        log.info("ok")\n    finally:\n        log.debug("closed")\n' in after
    assert "session.close()" not in after
    assert "    except KeyError:\n        raise\n" in after


def test_diff_hunks_stay_small_in_repetitive_files() -> None:
    """The diff shows only the changed lines, even when many lines repeat."""
    block = read("try_finally", "before").split("\n\n\n", 1)[1]
    source = "from app.models import Order\n" + "\n\n" * 3 + "\n\n".join([block] * 40)
    outcome = migrate_source(source, "many.py", CONFIG)
    assert outcome.rewritten == 40
    changed = [
        line
        for line in outcome.diff().splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert len(changed) == 1 + 40 * 6  # the import, then 5 lines out and 1 in per site


def test_each_site_gets_the_target_of_its_context() -> None:
    """Views get the manager; scripts, threads, to_thread and FastAPI the framework-free one."""
    view = read("targets_flask_view", "after")
    assert "def archive(note_id):\n    with current_app.unified_session_manager" in view
    assert "def rename_from_form(note_id):\n    with current_app.unified_session_manager" in view
    assert "def count_notes():\n    # no request" in view
    assert (
        "    with session_scope() as session:\n        return session.query(Note).count()" in view
    )
    assert "app.run" in read("targets_app_runner", "after")
    assert "current_app.unified_session_manager" in read("targets_app_runner", "after")
    for name in ("targets_script", "targets_fastapi"):
        after = read(name, "after")
        assert "current_app.unified_session_manager" not in after, name
        assert "from flask_unified_session import session_scope\n" in after, name
    threads = read("targets_threads", "after")
    assert "def build_report(report_id):\n    with session_scope()" in threads
    assert "def export_report(report_id):\n    with session_scope()" in threads
    assert "def show(report_id):\n    with current_app.unified_session_manager" in threads


def test_summary_names_the_targets_and_why() -> None:
    """The outcome lists every target chosen with the reason, for the summary."""
    outcome = migrate_source(read("targets_threads", "before"), "t.py", CONFIG)
    assert outcome.targets == {
        "session_scope() (runs in a thread, an executor or a task)": 2,
        "current_app.unified_session_manager.get_db_session() (a Flask view)": 1,
    }


def test_helpers_called_inside_units_keep_their_boundaries() -> None:
    """Mid-block commit and swallowed exceptions: independent=True; plain helpers join."""
    after = read("crosssite", "after")
    assert "def save_with_audit(self, note):\n        # commits" in after
    assert after.count("self.db_session(independent=True)") == 2
    assert "def rename(self, note_id, title):\n        # commits once, at the end: joining" in after
    assert (
        "    def purge_old(self):\n        # commits mid-block, but nothing else calls it" in after
    )
    assert after.count("with self.db_session() as session:") == 2


def test_local_work_is_not_a_database_change() -> None:
    """flash, local list/dict, form fields, SELECT and a Query given to a helper: rewritten."""
    outcome = migrate_source(read("changes_local_work", "before"), "c.py", CONFIG)
    assert outcome.left == []
    assert outcome.rewritten == 5


def test_database_work_before_a_return_is_left_with_its_reason() -> None:
    """Loaded objects changed, query(...).delete(), db.session.add, a helper given an object."""
    outcome = migrate_source(read("changes_db_work", "before"), "c.py", CONFIG)
    assert outcome.new == outcome.original
    assert [(s.line, s.reason) for s in outcome.left] == [
        (8, LOST_CHANGES),
        (23, LOST_CHANGES),
        (36, LOST_CHANGES),
        (46, LOST_CHANGES),
        (59, "no try/finally closes the session right after it is obtained"),
        (73, "ownership is conditional (the if tests the session variable)"),
    ]


def test_object_base_is_replaced_by_the_mixin() -> None:
    """class Repo(object) becomes class Repo(SessionServiceMixin), never (object, Mixin)."""
    after = read("mro_object", "after")
    assert "class Repo(SessionServiceMixin):" in after
    assert "class Mirror(SessionServiceMixin, metaclass=type):" in after
    assert "class Plain(SessionServiceMixin):" in after
    assert "object, SessionServiceMixin" not in after


def test_generator_yielding_in_the_block_is_left() -> None:
    """A yield inside the block would keep the unit open across it: left, with the reason."""
    outcome = migrate_source(read("generator_yield", "before"), "g.py", CONFIG)
    assert [(s.line, s.reason) for s in outcome.left] == [
        (
            6,
            "the block yields: a unit of work would stay open while the consumer runs "
            "(rewrite it by hand)",
        )
    ]
    assert outcome.rewritten == 1


def test_async_with_factory_becomes_async_session_scope() -> None:
    """async with AsyncSessionLocal() + manual commit/rollback -> async_session_scope()."""
    outcome = migrate_source(read("async_with", "before"), "a.py", CONFIG)
    assert outcome.rewritten == 4
    assert [s.line for s in outcome.left] == [46]
    after = read("async_with", "after")
    assert "from flask_unified_session.asyncio import async_session_scope\n" in after
    assert "await session.commit()" not in after
    assert "await session.rollback()" not in after
    assert "    except Exception as exc:\n        log_failure(order_id, exc)\n" in after


def test_accessor_configuration_reaches_the_codemod() -> None:
    """accessors = [..., "get_main_session"] makes db_manager.get_main_session() a site."""
    source = read("try_finally", "before").replace("get_session()", "get_main_session()")
    assert migrate_source(source, "t.py", CONFIG).rewritten == 0
    config = Config(accessors=("get_session", "get_main_session"))
    assert migrate_source(source, "t.py", config).rewritten == 1


def test_rollback_sharing_a_line_is_dropped_alone() -> None:
    """`session.rollback(); logger.error(...)` keeps the logging call."""
    source = (
        "def f(db_manager):\n    session = db_manager.get_session()\n    try:\n"
        "        session.add(X())\n        session.commit()\n    except Exception as e:\n"
        "        session.rollback(); logger.error(e)\n    finally:\n        session.close()\n"
    )
    new = migrate_source(source, "r.py", CONFIG).new
    assert "    except Exception as e:\n        logger.error(e)\n" in new
    assert "rollback" not in new
