"""Command line: ``flask-unified-session check|migrate`` (also ``python -m flask_unified_session``).

Exit codes follow ruff and flake8: 0 clean, 1 findings (``check``) or files that could not be
processed (``migrate``), 2 usage errors (bad option, missing path, bad configuration, missing
``libcst`` for ``migrate``).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from flask_unified_session.tooling.cache import DIRECTORY_NAME
from flask_unified_session.tooling.config import (
    SECTION,
    Config,
    ConfigError,
    find_project_root,
    load_config,
)
from flask_unified_session.tooling.findings import RULES, Finding, render_json
from flask_unified_session.tooling.project import iter_python_files, safe_resolve

INSTALL_HINT = "pip install 'flask-unified-session[tooling]'"


class UsageError(Exception):
    """A usage error: reported on stderr, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flask-unified-session",
        description="Find (check) and rewrite (migrate) legacy SQLAlchemy session code.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check", help="report legacy session code")
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.add_argument(
        "--ignore", default="", metavar="CODES", help="comma-separated rule codes to skip"
    )
    migrate = commands.add_parser("migrate", help="rewrite try/finally sessions to `with`")
    migrate.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    mode = migrate.add_mutually_exclusive_group()
    mode.add_argument("--diff", action="store_true", help="print a unified diff (default)")
    mode.add_argument("--write", action="store_true", help="write the changes to the files")
    migrate.add_argument(
        "--target",
        metavar="EXPR",
        help="unit of work for code that runs in an app context "
        "(default: current_app.unified_session_manager.get_db_session())",
    )
    migrate.add_argument(
        "--framework-target",
        metavar="EXPR",
        help="unit of work for scripts, threads, FastAPI and projects without Flask "
        "(default: session_scope())",
    )
    migrate.add_argument(
        "--accessor",
        action="append",
        default=[],
        metavar="NAME",
        help="a db manager method (or factory) that hands out a session, besides the "
        "configured ones (repeatable; e.g. --accessor get_main_session)",
    )
    migrate.add_argument(
        "--no-cache", action="store_true", help="neither read nor write the result cache"
    )
    migrate.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="files rewritten in parallel by N processes (default: the number of CPUs)",
    )
    migrate.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help=f"where the result cache lives (default: <project root>/{DIRECTORY_NAME})",
    )
    commands.add_parser("rules", help="list the rule codes of check")
    return parser


def _display(path: Path) -> str:
    try:
        # abspath, not resolve(): a link is shown by its own name, not its target's
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(os.getcwd())).as_posix()
    except ValueError:
        return path.as_posix()


def _projects(paths: Sequence[Path]) -> dict[Path, tuple[Config, list[Path]]]:
    """Group the files under ``paths`` by project root, each with its configuration."""
    projects: dict[Path, tuple[Config, list[Path]]] = {}
    seen: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file or directory")
        root = find_project_root(path)
        if root not in projects:
            projects[root] = (load_config(root), [])
        config, files = projects[root]
        for file in iter_python_files(path, root, config.exclude):
            key = safe_resolve(file)
            if key not in seen:
                seen.add(key)
                files.append(file)
    return projects


def _warn(config: Config, err: TextIO) -> None:
    for warning in config.warnings:
        print(f"warning: {warning}", file=err)


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from flask_unified_session.tooling.checker import check_project

    ignore = {code.strip().upper() for code in args.ignore.split(",") if code.strip()}
    unknown = sorted(ignore - set(RULES))
    if unknown:
        raise UsageError(f"--ignore: unknown rule code(s) {', '.join(unknown)}")
    findings: list[Finding] = []
    files = 0
    for root, (config, paths) in _projects(args.paths).items():
        _warn(config, err)
        config = replace(config, ignore=config.ignore | ignore)
        result = check_project([(p, _display(p)) for p in paths], root, config)
        findings.extend(result.findings)
        files += result.files
    if args.format == "json":
        print(render_json(findings), file=out)
    else:
        for finding in findings:
            print(finding.to_text(), file=out)
        if findings:
            print(f"Found {len(findings)} problem(s) in {files} file(s).", file=err)
    return 1 if findings else 0


def _is_expression(text: str) -> bool:
    """Whether ``text`` parses as one Python expression."""
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return True


def _migrate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        import libcst  # noqa: F401
    except ImportError:
        print(
            f"error: `migrate` needs libcst. Install it with:\n    {INSTALL_HINT}",
            file=err,
        )
        return 2
    from flask_unified_session.tooling.cache import ResultCache
    from flask_unified_session.tooling.migration import migrate_project

    for option, value in (("--target", args.target), ("--framework-target", args.framework_target)):
        if value is not None and not _is_expression(value):
            raise UsageError(f"{option}: not a Python expression: {value!r}")
    for name in args.accessor:
        if not name.isidentifier():
            raise UsageError(f"--accessor: not a name: {name!r}")
    scanned = rewritten = changed = 0
    left: list[str] = []
    errors: list[str] = []
    targets: dict[str, int] = {}
    for root, (config, paths) in _projects(args.paths).items():
        _warn(config, err)
        for key, value in (
            ("migrate-target", config.migrate_target),
            ("service-target", config.service_target),
            ("framework-target", config.framework_target),
            ("async-target", config.async_target),
        ):
            if not _is_expression(value):
                raise UsageError(f"{config.source}: [{SECTION}] {key}: not a Python expression")
        if args.target is not None:
            config = replace(config, migrate_target=args.target)
        if args.framework_target is not None:
            config = replace(config, framework_target=args.framework_target)
        if args.accessor:
            config = replace(config, accessors=(*config.accessors, *args.accessor))
        cache_dir = None if args.no_cache else (args.cache_dir or root / DIRECTORY_NAME)
        run = migrate_project(
            [(p, _display(p)) for p in paths],
            root,
            config,
            args.write,
            ResultCache(cache_dir),
            workers=max(1, args.jobs),
        )
        for warning in run.warnings:
            print(f"warning: {warning}", file=err)
        for outcome in run.outcomes:
            scanned += 1
            if outcome.error:
                errors.append(f"{outcome.path}: {outcome.error}")
                continue
            rewritten += outcome.rewritten
            changed += outcome.changed
            left.extend(site.to_text() for site in outcome.left)
            for target, count in outcome.targets.items():
                targets[target] = targets.get(target, 0) + count
            if outcome.changed and not args.write:
                out.write(outcome.diff())
    action = "rewritten" if args.write else "to rewrite (use --write to apply)"
    print(
        f"{scanned} file(s) scanned, {rewritten} site(s) {action} in {changed} file(s).",
        file=err,
    )
    if targets:
        print("Targets chosen:", file=err)
        for target, count in sorted(targets.items(), key=lambda item: (-item[1], item[0])):
            print(f"  {count:5d}  {target}", file=err)
    if left:
        print(f"{len(left)} site(s) left unchanged:", file=err)
        for line in left:
            print(f"  {line}", file=err)
    for line in errors:
        print(f"error: {line}", file=err)
    return 1 if errors else 0


def _rules(out: TextIO) -> int:
    for rule in RULES.values():
        print(f"{rule.code}  {rule.summary}\n        fix: {rule.fix}", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return exc.code if isinstance(exc.code, int) else 2
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "check":
            return _check(args, out, err)
        if args.command == "migrate":
            return _migrate(args, out, err)
        return _rules(out)
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}", file=err)
        return 2
