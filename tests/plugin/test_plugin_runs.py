"""Issue 12 in real pytest sessions (tests/plugin/project), checked from outside.

One inner run per backend (SQLite, PostgreSQL, MariaDB); each test below reads the
outcome of the inner tests for one point of the issue, and what the run left behind.
"""

from __future__ import annotations

import subprocess
import sys

from .conftest import InnerRun


def test_nothing_is_left_in_the_database(project_run: InnerRun) -> None:
    """Seen from a connection of its own after the run: every table empty, no new table."""
    assert project_run.rows_left and set(project_run.rows_left.values()) == {0}, (
        project_run.rows_left,
        project_run.output[-4000:],
    )
    assert [t.split("_")[1] for t in project_run.tables_left] == ["audit", "user"]
    project_run.assert_passed("test_zz_checker.py::test_nothing_was_left")


def test_every_entry_point_and_pytest_flask(project_run: InnerRun) -> None:
    module = "test_a_flask_sqlalchemy.py"
    tests = project_run.matching(module)
    assert len(tests) == 6, tests
    project_run.assert_passed(*tests)


def test_point_1_engines_made_during_the_test_and_apps_built_in_setup(
    project_run: InnerRun,
) -> None:
    """The default factory made mid-test, a user's create_engine, a thread, setUp apps."""
    tests = [
        "test_1_default_factory_made_during_the_test",
        "test_1_a_users_own_create_engine",
        "TestAppBuiltInSetUp::test_commits_are_rolled_back",
        "TestMarkedTestCase::test_marker_on_a_test_case",
    ]
    project_run.assert_passed(*tests)
    thread = project_run.outcome("test_1_a_thread")
    assert thread == ("skipped" if project_run.backend == "sqlite" else "passed")


def test_point_2_one_connection_per_database(project_run: InnerRun) -> None:
    project_run.assert_passed("test_2_two_engines_see_each_others_commits")


def test_point_3_sessions_end_in_any_order(project_run: InnerRun) -> None:
    project_run.assert_passed(
        "test_3_unit_commits_before_a_session_opened_inside_it",
        "test_3_inner_session_rolls_back_after_the_unit_committed",
        "TestWithoutPushedContext::test_requests_each_in_their_own_context",
    )


def test_point_4_independent_units(project_run: InnerRun) -> None:
    """Kept when the outer unit only read; otherwise the test fails pointing to truncate."""
    project_run.assert_passed(
        "test_4_independent_commit_survives_the_outer_rollback",
        "TestWithoutPushedContext::test_independent_unit_in_a_request_survives_the_outer_rollback",
        "test_independent_commit_is_real",
    )
    name = "test_b_points.py::test_4_xfail_independent_after_the_outer_wrote"
    assert project_run.outcome(name) == "error"
    assert "unified_truncate" in project_run.message(name)
    assert "committed" in project_run.message(name)


def test_point_5_begin_inside_begin_raises(project_run: InnerRun) -> None:
    project_run.assert_passed("test_5_begin_inside_begin_raises_as_in_production")


def test_what_a_shared_connection_cannot_do_is_refused(project_run: InnerRun) -> None:
    project_run.assert_passed(
        "test_closing_without_commit_rolls_back_as_in_production",
        "test_raw_connection_is_refused",
        "test_autocommit_is_refused",
        "test_ddl",
    )


def test_a_failed_test_is_rolled_back_and_unpatched(project_run: InnerRun) -> None:
    assert project_run.outcome("test_fails_after_committing") == "failed"
    project_run.assert_passed("test_after_a_failure_everything_is_restored")


def test_truncate_strategy(project_run: InnerRun) -> None:
    """Threads, raw_connection(), processes, DDL, unittest: real commits, removed after."""
    tests = project_run.matching("test_c_truncate.py")
    assert len(tests) == 7, tests
    project_run.assert_passed(*tests)


def test_a_suite_of_100_tests_leaves_nothing(project_run: InnerRun) -> None:
    tests = project_run.matching("test_d_suite.py::test_commit_everywhere[")
    assert len(tests) == 100
    project_run.assert_passed(*tests)


def test_plugin_idle_without_a_fixture(project_run: InnerRun) -> None:
    project_run.assert_passed("test_plugin_is_loaded_but_idle")


def test_the_documented_example_passes(project_run: InnerRun) -> None:
    tests = project_run.matching("docs_example.test_users.py")
    assert len(tests) >= 3, tests
    project_run.assert_passed(*tests)


def test_importing_the_plugin_imports_neither_flask_nor_sqlalchemy() -> None:
    """pytest imports the plugin in every run: it must stay cheap."""
    code = (
        "import sys, flask_unified_session.testing.plugin, flask_unified_session.pytest_plugin; "
        "print(sorted(m for m in ('flask', 'flask_sqlalchemy', 'flask_login', 'sqlalchemy') "
        "if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "[]"
