"""``migrate`` over a project: a cheap pass over every file, then libcst where there are sites.

The first pass reads every file once (bytes, a hash, and ``ast`` only when the text can hold a
site or a unit of work) to learn the project-wide facts: whether the project uses Flask at
all, and which helpers are called from inside other units of work (:mod:`.units`). The
second pass runs the libcst codemod on the files that have sites. Both passes are cached by
content hash (:mod:`.cache`), so a run over unchanged files parses nothing with libcst.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from flask_unified_session import __version__
from flask_unified_session.tooling.cache import FORMAT, ResultCache, digest
from flask_unified_session.tooling.codemod import FileContext, migrate_source, parse_error
from flask_unified_session.tooling.config import Config
from flask_unified_session.tooling.dependencies import declared_imports
from flask_unified_session.tooling.outcome import FileOutcome, LeftSite
from flask_unified_session.tooling.project import describe_unreadable, source_encoding
from flask_unified_session.tooling.targets import mentions_flask
from flask_unified_session.tooling.units import (
    UNIT_CALLS,
    FileUnits,
    callers_index,
    needs_independence,
    scan_units,
)


@dataclass
class _Source:
    path: Path
    display: str
    data: bytes
    text: str = ""
    encoding: str = "utf-8"
    units: FileUnits | None = None
    error: str | None = None


@dataclass
class ProjectRun:
    """Every file's outcome, in the order given."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _code_version() -> str:
    """A hash of the tooling's own source: an edited or upgraded codemod misses the cache."""
    folder = Path(__file__).parent
    parts: list[bytes] = []
    for path in sorted(folder.glob("*.py")):
        try:
            parts.append(path.read_bytes())
        except OSError:
            parts.append(path.name.encode())
    return digest(__version__, *parts)


def _fingerprint(config: Config) -> str:
    """The tool's version and the configuration values that change what migrate produces."""
    return repr(
        (
            _code_version(),
            config.manager_names,
            config.accessors,
            config.async_factories,
            config.migrate_target,
            config.service_target,
            config.framework_target,
            config.async_target,
        )
    )


def _candidate_pattern(config: Config) -> re.Pattern[bytes]:
    """Bytes that any site or unit of work must contain (files without them skip ``ast``)."""
    names = {*config.accessors, *config.async_factories, *UNIT_CALLS}
    return re.compile(b"|".join(re.escape(name.encode()) for name in sorted(names)))


def read_source(path: Path, display: str) -> _Source:
    """Read and decode one file in its PEP 263 encoding (``error`` set when it cannot be)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _Source(path, display, b"", error=describe_unreadable(path, exc))
    source = _Source(path, display, data, encoding=source_encoding(data))
    try:
        source.text = data.decode(source.encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        source.error = f"cannot decode as {source.encoding}: {exc}"
    return source


def _scan(
    source: _Source, config: Config, fingerprint: str, cache: ResultCache, analyse: bool = True
) -> None:
    """Fill ``source.units`` (or ``source.error``) from the cache or a fresh ``ast`` pass."""
    key = digest(FORMAT, "units", fingerprint, source.data, str(analyse))
    entry = cache.get(key)
    if isinstance(entry, dict):
        try:
            if "error" in entry:
                source.error = str(entry["error"])
            else:
                source.units = FileUnits.from_json(entry)
            return
        except (ValueError, TypeError):
            pass  # a damaged entry: compute it again
    try:
        tree = ast.parse(source.text, filename=source.display)
    except (SyntaxError, ValueError):
        source.error = parse_error(source.text, source.display)
        cache.put(key, {"error": source.error})
        return
    source.units = scan_units(tree, config) if analyse else FileUnits()
    cache.put(key, source.units.to_json())


def _map_lines(old: str, new: str, lines: Sequence[int]) -> list[int] | None:
    """Where lines of ``old`` are in ``new`` (None when one of them was changed)."""
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    mapped: list[int] = []
    for line in lines:
        for tag, a1, a2, b1, _b2 in matcher.get_opcodes():
            if a1 <= line - 1 < a2:
                if tag != "equal":
                    return None
                mapped.append(b1 + (line - 1 - a1) + 1)
                break
        else:
            return None
    return mapped


def migrate_project(
    files: Sequence[tuple[Path, str]],
    root: Path,
    config: Config,
    write: bool,
    cache: ResultCache | None = None,
    workers: int = 1,
) -> ProjectRun:
    """Migrate ``files`` (path, displayed name) of the project at ``root``.

    ``workers`` > 1 runs the codemod of different files in that many processes.
    """
    cache = cache or ResultCache(None)
    fingerprint = _fingerprint(config)
    candidates = _candidate_pattern(config)
    sources = [read_source(path, display) for path, display in files]
    has_flask = "flask" in declared_imports(root)
    for source in sources:
        if source.error is not None:
            continue
        has_flask = has_flask or mentions_flask(source.data)
        # Every file is parsed once (a file that does not parse is reported); only those
        # that can hold a site or a unit of work are analysed.
        _scan(source, config, fingerprint, cache, bool(candidates.search(source.data)))
    callers = callers_index(s.units for s in sources if s.units is not None)
    run = ProjectRun()
    pending: list[tuple[int, _Source, FileContext, str]] = []
    for source in sources:
        outcome, work = _from_cache(source, fingerprint, has_flask, callers, cache)
        if work is not None:
            pending.append((len(run.outcomes), source, *work))
        run.outcomes.append(outcome)
    jobs = [(s.text, s.display, config, context) for _, s, context, _ in pending]
    for (index, source, _context, key), outcome in zip(
        pending, _run_codemod(jobs, workers), strict=True
    ):
        outcome.encoding = source.encoding
        run.outcomes[index] = outcome
        if outcome.error is not None:
            continue
        if not outcome.changed:
            cache.put(key, [[site.line, site.reason] for site in outcome.left])
        elif write:
            source.path.write_bytes(outcome.new.encode(source.encoding))
            _remember_written(outcome, source, config, fingerprint, has_flask, callers, cache)
    warning = cache.save()
    if warning:
        run.warnings.append(warning)
    return run


def _migrate_job(job: tuple[str, str, Config, FileContext]) -> FileOutcome:
    return migrate_source(*job)


def _run_codemod(
    jobs: list[tuple[str, str, Config, FileContext]], workers: int
) -> list[FileOutcome]:
    """Run the codemod on each job, in worker processes when there are several files."""
    if workers <= 1 or len(jobs) < 2:
        return [_migrate_job(job) for job in jobs]
    # Biggest files first, so that no worker is left with a large file at the end.
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][0]))
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        results = list(pool.map(_migrate_job, [jobs[i] for i in order]))
    outcomes: list[FileOutcome | None] = [None] * len(jobs)
    for position, index in enumerate(order):
        outcomes[index] = results[position]
    return [outcome for outcome in outcomes if outcome is not None]


def _from_cache(
    source: _Source,
    fingerprint: str,
    has_flask: bool,
    callers: dict[str, set[str]],
    cache: ResultCache,
) -> tuple[FileOutcome, tuple[FileContext, str] | None]:
    """The outcome known without libcst, or what the codemod needs (context, cache key)."""
    outcome = FileOutcome(source.display, source.text, source.text, encoding=source.encoding)
    if source.error is not None:
        outcome.error = source.error
        return outcome, None
    if source.units is None or not source.units.sites:
        return outcome, None
    independent = needs_independence(source.units, callers)
    context = FileContext(has_flask, independent)
    key = digest(
        FORMAT, "outcome", fingerprint, source.data, str(has_flask), ",".join(sorted(independent))
    )
    entry = cache.get(key)
    if isinstance(entry, list):
        try:
            outcome.left = [LeftSite(source.display, int(line), str(why)) for line, why in entry]
            return outcome, None
        except (TypeError, ValueError):
            pass  # a damaged entry: run the codemod
    return outcome, (context, key)


def _remember_written(
    outcome: FileOutcome,
    source: _Source,
    config: Config,
    fingerprint: str,
    has_flask: bool,
    callers: dict[str, set[str]],
    cache: ResultCache,
) -> None:
    """Cache the written file as "nothing to do", so a second run does not parse it again.

    Valid because the rewrite is idempotent (tested on every fixture): the written text has
    no site left to rewrite, and the sites it leaves are the same, on lines that did not
    change. When one of those lines moved inside a changed region, nothing is cached.
    """
    lines = _map_lines(outcome.original, outcome.new, [site.line for site in outcome.left])
    if lines is None:
        return
    written = _Source(source.path, source.display, outcome.new.encode(source.encoding))
    written.text, written.encoding = outcome.new, source.encoding
    _scan(written, config, fingerprint, cache)  # the next run's first pass finds it cached
    if written.units is None:
        return
    independent = needs_independence(written.units, callers)
    key = digest(
        FORMAT, "outcome", fingerprint, written.data, str(has_flask), ",".join(sorted(independent))
    )
    cache.put(key, [[line, site.reason] for line, site in zip(lines, outcome.left, strict=True)])
