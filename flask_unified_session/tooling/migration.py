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
import multiprocessing
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

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

#: Below this much source, starting worker processes costs more than it saves.
PARALLEL_FROM_BYTES = 256 * 1024
_J = TypeVar("_J")
_R = TypeVar("_R")


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
    """A hash of the tooling's own source: an edited or upgraded codemod misses the cache
    (whatever the package's version says, and in an editable install too)."""
    folder = Path(__file__).parent
    parts: list[bytes] = []
    for path in sorted(folder.glob("*.py")):
        try:
            parts.append(path.read_bytes())
        except OSError:
            parts.append(path.name.encode())
    return digest(*parts)


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


def _units_key(source: _Source, fingerprint: str, analyse: bool) -> str:
    return digest(FORMAT, "units", fingerprint, source.data, str(analyse))


def _apply_units(source: _Source, entry: object) -> bool:
    """Fill ``source.units`` or ``source.error`` from a cache entry; False when unusable."""
    if not isinstance(entry, dict):
        return False
    try:
        if "error" in entry:
            source.error = str(entry["error"])
        else:
            source.units = FileUnits.from_json(entry)
    except (ValueError, TypeError):
        return False  # a damaged entry: compute it again
    return True


def _scan_job(job: tuple[str, str, Config, bool]) -> dict[str, object]:
    """The first pass over one file: its units, or why it does not parse (a cache entry)."""
    text, display, config, analyse = job
    try:
        tree = ast.parse(text, filename=display)
    except (SyntaxError, ValueError):
        return {"error": parse_error(text, display)}
    return (scan_units(tree, config) if analyse else FileUnits()).to_json()


def _scan(
    source: _Source, config: Config, fingerprint: str, cache: ResultCache, analyse: bool = True
) -> None:
    """Fill ``source.units`` (or ``source.error``) from the cache or a fresh ``ast`` pass."""
    key = _units_key(source, fingerprint, analyse)
    if _apply_units(source, cache.get(key)):
        return
    entry = _scan_job((source.text, source.display, config, analyse))
    cache.put(key, entry)
    _apply_units(source, entry)


class _Workers:
    """Runs a function over items in worker processes when that is worth it."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(
        self, function: Callable[[_J], _R], items: Sequence[_J], sizes: Sequence[int]
    ) -> list[_R]:
        """``[function(item) for item in items]``, biggest items first across the workers."""
        if self.workers <= 1 or len(items) < 2 or sum(sizes) < PARALLEL_FROM_BYTES:
            return [function(item) for item in items]
        if self._pool is None:
            # spawn, not fork: forking a process that runs threads (a test runner, an IDE)
            # can deadlock, and Python 3.12 warns about it
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        # Biggest first, so that no worker is left with a large file at the end.
        order = sorted(range(len(items)), key=lambda i: -sizes[i])
        results = list(self._pool.map(function, [items[i] for i in order], chunksize=4))
        ordered: dict[int, _R] = dict(zip(order, results, strict=True))
        return [ordered[i] for i in range(len(items))]

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


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
    pool = _Workers(workers)
    try:
        return _run(sources, config, fingerprint, has_flask, candidates, write, cache, pool)
    finally:
        pool.close()


def _run(
    sources: list[_Source],
    config: Config,
    fingerprint: str,
    has_flask: bool,
    candidates: re.Pattern[bytes],
    write: bool,
    cache: ResultCache,
    pool: _Workers,
) -> ProjectRun:
    misses: list[tuple[_Source, str, bool]] = []
    for source in sources:
        if source.error is not None:
            continue
        has_flask = has_flask or mentions_flask(source.data)
        # Every file is parsed once (a file that does not parse is reported); only those
        # that can hold a site or a unit of work are analysed.
        analyse = bool(candidates.search(source.data))
        key = _units_key(source, fingerprint, analyse)
        if not _apply_units(source, cache.get(key)):
            misses.append((source, key, analyse))
    entries = pool.map(
        _scan_job,
        [(s.text, s.display, config, analyse) for s, _, analyse in misses],
        [len(s.data) for s, _, _ in misses],
    )
    for (source, key, _), entry in zip(misses, entries, strict=True):
        cache.put(key, entry)
        _apply_units(source, entry)
    callers = callers_index(s.units for s in sources if s.units is not None)
    run = ProjectRun()
    pending: list[tuple[int, _Source, FileContext, str]] = []
    for source in sources:
        outcome, work = _from_cache(source, fingerprint, has_flask, callers, cache)
        if work is not None:
            pending.append((len(run.outcomes), source, *work))
        run.outcomes.append(outcome)
    jobs = [(s.text, s.display, config, context) for _, s, context, _ in pending]
    outcomes = pool.map(_migrate_job, jobs, [len(s.data) for _, s, _, _ in pending])
    for (index, source, _context, key), outcome in zip(pending, outcomes, strict=True):
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
