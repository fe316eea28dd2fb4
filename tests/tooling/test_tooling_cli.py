"""End-to-end tests of the command line, through ``main([...])`` and ``python -m``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flask_unified_session.tooling.cli import INSTALL_HINT, main
from flask_unified_session.tooling.findings import RULES

from .conftest import FIXTURES, WriteProject

REPO = Path(__file__).resolve().parents[2]
LEGACY = (FIXTURES / "except_logs_returns" / "before.py").read_text(encoding="utf-8")
LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<code>FUS\d{3}) \S.*$")


def test_check_clean_exits_0(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check exits 0 and prints nothing for a clean project."""
    root = project({"ok.py": "import os\n\nprint(os.sep)\n"})
    monkeypatch.chdir(root)
    assert main(["check", "."]) == 0
    assert capsys.readouterr().out == ""


def test_check_findings_exit_1_text_format(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check exits 1 and prints `path:line:col: CODE message` lines."""
    root = project({"pkg/views.py": LEGACY.replace("import logging", "from init import x")})
    monkeypatch.chdir(root)
    assert main(["check", "pkg"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "pkg/views.py:1:1: FUS003 module 'init' not found in project or environment",
        "pkg/views.py:3:1: FUS003 module 'app.models' not found in project or environment",
        "pkg/views.py:9:15: FUS001 direct db_manager.get_session() call; use the unit of work",
    ]
    assert all(LINE.match(line) for line in lines)


def test_check_json_format(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--format json prints an array of findings with path, line, col, code, message, fix."""
    root = project({"a.py": "from init import Session\n"})
    monkeypatch.chdir(root)
    assert main(["check", "--format", "json", "a.py"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data == [
        {
            "path": "a.py",
            "line": 1,
            "col": 1,
            "code": "FUS003",
            "message": "module 'init' not found in project or environment",
            "fix": RULES["FUS003"].fix,
        }
    ]


def test_check_ignore_option(project: WriteProject, monkeypatch: pytest.MonkeyPatch) -> None:
    """--ignore CODES skips those rules."""
    root = project({"a.py": "from init import Session\n"})
    monkeypatch.chdir(root)
    assert main(["check", "--ignore", "FUS003", "a.py"]) == 0


def test_usage_errors_exit_2(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing path, a bad option or an unknown rule code exits 2."""
    root = project({"a.py": ""})
    monkeypatch.chdir(root)
    assert main(["check", "missing.py"]) == 2
    assert "missing.py: no such file or directory" in capsys.readouterr().err
    assert main(["check", "--bogus", "a.py"]) == 2
    assert main(["check", "--ignore", "FUS999", "a.py"]) == 2
    assert main([]) == 2


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("bogus = 1", "[tool.flask-unified-session] unknown key 'bogus'"),
        ("manager-names = 'db'", "manager-names must be a list of strings"),
        ('ignore = ["FUS123"]', "ignore: unknown rule code(s) FUS123"),
        ("migrate-target = ''", "migrate-target must be a non-empty string"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(
    project: WriteProject,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    message: str,
) -> None:
    """Invalid configuration is an error naming pyproject.toml and the key, exit 2."""
    root = project({"a.py": ""}, pyproject=f"[tool.flask-unified-session]\n{table}\n")
    monkeypatch.chdir(root)
    assert main(["check", "a.py"]) == 2
    err = capsys.readouterr().err
    assert str(root / "pyproject.toml") in err
    assert message in err


def test_invalid_toml_exits_2(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pyproject.toml that is not TOML is reported with its path, exit 2."""
    root = project({"a.py": ""}, pyproject="[tool.flask-unified-session\n")
    monkeypatch.chdir(root)
    assert main(["check", "a.py"]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_migrate_diff_is_default_and_writes_nothing(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate prints a unified diff and a summary, and leaves the files unchanged."""
    root = project(
        {
            "svc.py": LEGACY,
            "leak.py": (FIXTURES / "escapes" / "before.py").read_text(encoding="utf-8"),
        }
    )
    monkeypatch.chdir(root)
    assert main(["migrate", "."]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("--- a/svc.py\n+++ b/svc.py\n")
    assert "+        with session_scope() as session:\n" in captured.out
    assert (root / "svc.py").read_text(encoding="utf-8") == LEGACY
    assert "2 file(s) scanned, 1 site(s) to rewrite (use --write to apply) in 1 file(s)." in (
        captured.err
    )
    assert "Targets chosen:\n      1  session_scope() (the project does not depend on Flask)\n" in (
        captured.err
    )
    assert "9 site(s) left unchanged:" in captured.err
    assert "  leak.py:5: the session is returned\n" in captured.err


def test_migrate_write_then_idempotent(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate --write rewrites files that compile; a second run changes nothing."""
    root = project({"svc.py": LEGACY})
    monkeypatch.chdir(root)
    assert main(["migrate", "--write", "svc.py"]) == 0
    written = (root / "svc.py").read_text(encoding="utf-8")
    assert written == (FIXTURES / "except_logs_returns" / "after.py").read_text(encoding="utf-8")
    compile(written, "svc.py", "exec")
    capsys.readouterr()
    assert main(["migrate", "--write", "svc.py"]) == 0
    assert (root / "svc.py").read_text(encoding="utf-8") == written
    assert "0 site(s) rewritten" in capsys.readouterr().err


def test_migrate_target_option(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--target sets the unit of work of app-context code, --framework-target the other."""
    view = "from flask import flash\n\n\n" + LEGACY.replace(
        "return True", "flash('ok')\n    return True"
    )
    root = project({"svc.py": LEGACY, "view.py": view})
    monkeypatch.chdir(root)
    assert (
        main(["migrate", "--target", "unit_of_work()", "--framework-target", "scope()", "."]) == 0
    )
    out = capsys.readouterr().out
    assert "+        with scope() as session:\n" in out
    assert "+        with unit_of_work() as session:\n" in out
    assert main(["migrate", "--target", "with (", "svc.py"]) == 2
    assert main(["migrate", "--framework-target", "with (", "svc.py"]) == 2
    assert main(["migrate", "--accessor", "not a name", "svc.py"]) == 2


def test_migrate_syntax_error_reported(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate reports a file that does not parse, exits 1 and still handles the others."""
    broken = (FIXTURES / "broken" / "broken.py").read_text(encoding="utf-8")
    root = project({"broken.py": broken, "svc.py": LEGACY})
    monkeypatch.chdir(root)
    assert main(["migrate", "--write", "."]) == 1
    err = capsys.readouterr().err
    assert "error: broken.py: does not parse" in err
    assert (root / "broken.py").read_text(encoding="utf-8") == broken
    assert "session_scope()" in (root / "svc.py").read_text(encoding="utf-8")


def test_migrate_without_libcst_exits_2(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without libcst, migrate prints how to install the extra and exits 2."""
    root = project({"svc.py": LEGACY})
    monkeypatch.chdir(root)
    monkeypatch.setitem(sys.modules, "libcst", None)
    assert main(["migrate", "svc.py"]) == 2
    assert INSTALL_HINT in capsys.readouterr().err


def test_rules_command_lists_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    """`rules` prints every rule code with its fix."""
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    assert all(code in out for code in RULES)


def test_python_dash_m_subprocess(project: WriteProject) -> None:
    """`python -m flask_unified_session check` exits 0, 1 and 2 and prints JSON."""
    root = project({"ok.py": "x = 1\n", "bad.py": "from init import Session\n"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "flask_unified_session", *args]
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)

    assert run("check", "ok.py").returncode == 0
    bad = run("check", "--format", "json", "bad.py")
    assert bad.returncode == 1
    assert [f["code"] for f in json.loads(bad.stdout)] == ["FUS003"]
    missing = run("check", "nope.py")
    assert missing.returncode == 2
    assert "nope.py" in missing.stderr


def test_bad_migrate_target_in_config_exits_2(
    project: WriteProject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migrate-target that is not an expression is a configuration error naming the key."""
    root = project(
        {"svc.py": LEGACY}, pyproject='[tool.flask-unified-session]\nmigrate-target = "with ("\n'
    )
    monkeypatch.chdir(root)
    assert main(["migrate", "svc.py"]) == 2
    err = capsys.readouterr().err
    assert "pyproject.toml: [tool.flask-unified-session] migrate-target" in err
