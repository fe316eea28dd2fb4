"""``python -m benchmarks.repeat``: W1-W3 in several fresh processes, and their spread.

One process's paired figures carry that process's own state (its string-hash seed, what
ran first in it): six runs of the same code moved one W3 figure by up to 20 µs, more than
the differences being judged. This runs the W1-W3 sections in ``--runs`` fresh processes,
each with its own ``PYTHONHASHSEED``, and prints for every targeted entry point the median
of the processes' paired figures with their range. Judge a target on the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from .common import table, verdict
from .run import MAX_CPU_OVER_US, MIN_RATIO_W3, W3_TARGETED, W12_TARGETED
from .units import FLOOR, FSA

WORKLOADS = (
    # (report key, title, reference, paired field, targeted entry points)
    ("W1 unit of work", "W1", FLOOR, "paired_cpu_over_floor_us", W12_TARGETED),
    ("W2 read-only", "W2", FLOOR, "paired_cpu_over_floor_us", W12_TARGETED),
    ("W3", "W3", FSA, "paired_cpu_vs_fsa_us", W3_TARGETED),
)


def _one_run(seed: int, backends: str, quick: bool, path: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks", "--only", "units,routes"]
    command += ["--backends", backends, "--json", path] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(path) as f:
        report: dict[str, Any] = json.load(f)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.repeat", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes (default 5)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--quick", action="store_true", help="fewer operations per process")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    reports = []
    with tempfile.TemporaryDirectory(prefix="fus-repeat-") as tmp:
        for seed in range(1, args.runs + 1):
            reports.append(_one_run(seed, args.backends, args.quick, f"{tmp}/{seed}.json"))
            print(f"run {seed} of {args.runs} done", file=sys.stderr)
    print(f"# W1-W3 over {args.runs} processes (PYTHONHASHSEED 1 to {args.runs})\n")
    rows = []
    for backend in args.backends.split(","):
        for key, title, reference, field, targeted in WORKLOADS:
            sections = [report.get(f"{key} {backend}") for report in reports]
            if not all(sections):
                continue
            for name in targeted:
                # µs over the reference, and the CPU ratio to it, in each process
                over = [section[name][field] for section in sections if section]
                ratios = [
                    section[reference]["cpu_us"] / (section[reference]["cpu_us"] + diff)
                    for section, diff in zip(sections, over, strict=True)
                    if section
                ]
                middle = statistics.median(over), statistics.median(ratios)
                ok = middle[0] <= MAX_CPU_OVER_US if title != "W3" else middle[1] >= MIN_RATIO_W3
                rows.append(
                    [
                        f"{title} {backend}: {name}",
                        f"{middle[0]:+.1f}",
                        f"{min(over):+.1f} to {max(over):+.1f}",
                        f"{middle[1]:.3f}",
                        f"{min(ratios):.3f} to {max(ratios):.3f}",
                        verdict(ok),
                    ]
                )
    headers = ["entry point", "µs over the reference", "range", "ratio", "range", "median"]
    print(table(headers, rows))
    met = sum(row[-1] == "PASS" for row in rows)
    took = time.perf_counter() - started
    print(f"\n{met} of {len(rows)} targets met by the median; {took:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
