"""Benchmark plumbing: a ratio table of gpt2fast against its baseline, printed after the run.

Each benchmark sets ``benchmark.group`` to its case and ``benchmark.extra_info["role"]`` to
``"baseline"`` or ``"gpt2fast"``; the summary divides the baseline's mean time by
gpt2fast's for every case where both ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    cases: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        role = bench.extra_info.get("role")
        if role is not None and bench.stats is not None:
            cases.setdefault(bench.group, {})[role] = bench.stats.mean
    rows = [(case, times) for case, times in sorted(cases.items())
            if {"baseline", "gpt2fast"} <= set(times)]
    if not rows:
        return
    terminalreporter.section("gpt2fast / baseline")
    terminalreporter.write_line(f"{'case':<44} {'baseline s':>11} {'gpt2fast s':>11} {'speed-up':>9}")
    for case, times in rows:
        terminalreporter.write_line(
            f"{case:<44} {times['baseline']:>11.3f} {times['gpt2fast']:>11.3f} "
            f"{times['baseline'] / times['gpt2fast']:>8.2f}x"
        )
