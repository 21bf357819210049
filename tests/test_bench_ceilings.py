"""The benchmark's CPU ceilings (bench/hardware.py) are ceilings: the best rate of every
timing, not a typical one, and the ISA bound from the flags and the highest clock given."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))

import hardware  # noqa: E402

CPUINFO = """processor\t: 0
cpu MHz\t\t: 2596.124
flags\t\t: fpu sse sse2 fma avx2 avx512f avx512bw
processor\t: 1
cpu MHz\t\t: 1800.000
flags\t\t: fpu sse sse2 fma avx2 avx512f avx512bw
"""


def scripted_clock(durations: list[float]):
    """A clock whose successive (start, end) readings are ``durations`` apart."""
    readings = iter([t for d in durations for t in (0.0, d)])
    return lambda: next(readings)


def test_best_rate_is_the_highest_of_every_timing():
    calls = {"a": 0, "b": 0}
    work = [(10.0, lambda: calls.__setitem__("a", calls["a"] + 1)),
            (30.0, lambda: calls.__setitem__("b", calls["b"] + 1))]
    # Rounds visit a then b: a takes 2, 5 (its best, 5/s), 4 s; b 10, 3 (10/s), 6 s.
    clock = scripted_clock([2.0, 10.0, 5.0, 3.0, 4.0, 6.0])
    assert hardware.best_rate(work, repeats=3, clock=clock) == pytest.approx(10.0)
    assert calls == {"a": 6, "b": 6}  # an untimed call before each timed one


@pytest.mark.parametrize("flags, lanes", [({"avx512f", "avx2", "fma"}, 16), ({"avx2", "fma"}, 8),
                                          ({"fma"}, 8), ({"sse2"}, 4), (set(), 4)])
def test_float32_lanes_follow_the_widest_vector_isa(flags, lanes):
    assert hardware.float32_lanes(flags) == lanes


def test_isa_bound_is_cores_clock_pipes_lanes_and_two_flops_per_fma():
    assert hardware.isa_flop_rate(2, 2.5e9, {"avx2", "fma"}) == 2 * 2.5e9 * 2 * 8 * 2
    assert hardware.isa_flop_rate(1, 3e9, hardware.cpu_flags(CPUINFO)) == 3e9 * 2 * 16 * 2


def test_clock_is_the_highest_reported():
    assert hardware.cpu_clock_hz(CPUINFO, []) == pytest.approx(2596.124e6)
    assert hardware.cpu_clock_hz(CPUINFO, [3_700_000, 3_500_000]) == pytest.approx(3.7e9)
    assert hardware.cpu_clock_hz("", []) is None


def test_floor_divides_by_the_measured_rate_and_prints_the_isa_bound_beside():
    ceilings = hardware.Ceilings("CPU", bandwidth=25e9, flop_rate=200e9, isa_flop_rate=400e9)
    record = ceilings.floor_record(0.34e9, 4.6e9)
    assert record["bound"] == "compute" and record["floor_s"] == pytest.approx(4.6e9 / 200e9)
    assert record["isa_floor_s"] == pytest.approx(4.6e9 / 400e9)


def test_two_measurements_keep_the_higher_of_each_rate():
    first = hardware.Ceilings("CPU", bandwidth=25e9, flop_rate=100e9, isa_flop_rate=400e9)
    later = hardware.Ceilings("CPU", bandwidth=20e9, flop_rate=220e9, isa_flop_rate=400e9)
    assert first.best_with(later) == hardware.Ceilings("CPU", 25e9, 220e9, 400e9)
