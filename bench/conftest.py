"""Benchmark plumbing: a ratio table of gpt2fast against its baseline, printed after the run.

Each benchmark sets ``benchmark.group`` to its case and ``benchmark.extra_info["role"]`` to
``"baseline"`` or ``"gpt2fast"``; the summary divides the baseline's median time by
gpt2fast's for every case where both ran (medians: one disturbed round on a shared machine
moves a mean of a few rounds by tens of per cent). A gpt2fast benchmark that also records
its work (``bytes``, ``flops``: ``gpt2fast/work.py``), ``units``, ``unit`` and the floor of that
work (``hardware.Ceilings.floor_record``) gets a line comparing its time per unit with the
floor per unit. On the CPU the ceilings are measured again after the benchmarks, and every
floor recomputed from the higher rates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hardware import Ceilings, measure  # noqa: E402

FIRST_CEILINGS = pytest.StashKey[Ceilings]()


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return
    measured = [bench for bench in session.benchmarks if bench.stats.data]  # a failed case has none
    if not measured:
        return
    ratios = ratio_lines(measured)
    if ratios:
        terminalreporter.section("gpt2fast / baseline")
        for line in ratios:
            terminalreporter.write_line(line)
    floors = roofline_lines(measured)
    if floors:
        terminalreporter.section("gpt2fast / hardware floor")
        for line in floors:
            terminalreporter.write_line(line)
    summaries = [bench.extra_info["summary"] for bench in measured if "summary" in bench.extra_info]
    if summaries:
        terminalreporter.section("gpt2fast / other results")
        for line in summaries:
            terminalreporter.write_line(line)


def ratio_lines(benchmarks: list) -> list[str]:
    """The table of median times per case where both roles ran, with baseline / gpt2fast."""
    cases: dict[str, dict[str, float]] = {}
    for bench in benchmarks:
        role = bench.extra_info.get("role")
        if role is not None and bench.stats is not None:
            cases.setdefault(bench.group, {})[role] = bench.stats.median
    rows = [(case, times) for case, times in sorted(cases.items())
            if {"baseline", "gpt2fast"} <= set(times)]
    if not rows:
        return []
    lines = [f"{'case':<48} {'baseline s':>11} {'gpt2fast s':>11} {'speed-up':>9}"]
    for case, times in rows:
        lines.append(f"{case:<48} {times['baseline']:>11.3f} {times['gpt2fast']:>11.3f} "
                     f"{times['baseline'] / times['gpt2fast']:>8.2f}x")
    return lines


@pytest.fixture(scope="session")
def ceilings(pytestconfig) -> Ceilings:
    """The bandwidth and float32 FLOP rate of the device the benchmarks run on (on the CPU
    the best rates seen, and the ISA bound: ``hardware.py``)."""
    measured = measure(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    pytestconfig.stash[FIRST_CEILINGS] = measured
    return measured


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """On the CPU, measure the ceilings again after the benchmarks and rewrite every floor
    with the higher rates of both measurements, before pytest-benchmark saves them: on a
    shared machine other work may have run through the whole first measurement."""
    first = session.config.stash.get(FIRST_CEILINGS, None)
    benchmarks = getattr(getattr(session.config, "_benchmarksession", None), "benchmarks", [])
    floored = [bench for bench in benchmarks if "flops" in bench.extra_info]
    if first is not None and first.device == "CPU" and floored:
        best = first.best_with(measure(torch.device("cpu")))
        for bench in floored:
            bench.extra_info.update(best.floor_record(bench.extra_info["bytes"], bench.extra_info["flops"]))
    yield


def roofline_lines(benchmarks: list) -> list[str]:
    """One line per gpt2fast benchmark that recorded a floor: achieved time against it, with
    the compute floor at the ISA peak and the kernel of the Linear layers where recorded."""
    lines = []
    for bench in benchmarks:
        info = bench.extra_info
        if info.get("role") != "gpt2fast" or "floor_s" not in info or bench.stats is None:
            continue
        achieved = bench.stats.median / info["units"]
        floor = info["floor_s"] / info["units"]
        isa = f"; ISA peak {info['isa_floor_s'] / info['units'] * 1e3:.3f} ms" if "isa_floor_s" in info else ""
        rate = f", {info['new_tokens'] / bench.stats.median:.1f} tokens/s" if "new_tokens" in info else ""
        gemm = f", GEMMs: {info['gemm']}" if "gemm" in info else ""
        lines.append(f"{bench.group:<48} {achieved * 1e3:>10.3f} ms/{info['unit']} "
                     f"floor {floor * 1e3:.3f} ms ({info['bound']}, {info['card']}{isa}) "
                     f"achieved/floor {achieved / floor:.2f}{rate}{gemm}")
    return lines
