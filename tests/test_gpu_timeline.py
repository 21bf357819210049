"""bench/gpu_timeline.py: the DRAM shared by the streams in flight, and what programmatic
dependent launches let overlap (prefetches placed while the kernel before runs)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from gpu_timeline import Dram, Stage, simulate  # noqa: E402

BANDWIDTH = 4000.0  # bytes per µs
times = st.floats(0.0, 20.0)


def test_requests_in_flight_share_the_bandwidth():
    dram = Dram(BANDWIDTH)
    first, second = dram.ask(0.0, 8000.0), dram.ask(0.0, 4000.0)  # 2000 bytes/µs each
    late = dram.ask(1.0, 1000.0)  # from 1 µs three ways: 1333 bytes/µs each
    assert dram.finished(late) == pytest.approx(1.75)
    assert dram.finished(second) == pytest.approx(2.25)  # 1000 bytes left, two ways
    assert dram.finished(first) == pytest.approx(13000.0 / BANDWIDTH)  # never idle: all bytes at the full rate
    with pytest.raises(ValueError, match="arrives after the DRAM served"):
        dram.ask(1.0, 10.0)


@st.composite
def stages(draw, prefetch: bool):
    count = draw(st.integers(1, 6))
    result = []
    for _ in range(count):
        stream = draw(st.floats(0.0, 40000.0))
        result.append(Stage(boundary=draw(st.floats(0.5, 3.0)), loop=draw(times), pre=draw(st.floats(0.0, 1.0)),
                            fill=draw(st.floats(0.0, 1.0)), tail=draw(st.floats(0.0, 2.0)), floor=draw(times),
                            stream_bytes=stream, prefetch_bytes=draw(st.floats(0.0, stream)) if prefetch else 0.0,
                            hit_loop=draw(times) if prefetch else None,
                            occupancy=draw(st.floats(0.1, 1.0)), early=draw(st.booleans()),
                            triggers=draw(st.booleans())))
    return result


@settings(max_examples=60, deadline=None)
@given(stages(prefetch=False))
def test_without_prefetches_the_kernels_follow_each_other_as_alone(chain):
    spans = simulate(chain, BANDWIDTH)
    assert spans[-1][1] == pytest.approx(sum(stage.serial(BANDWIDTH) for stage in chain))
    assert all(end >= start for start, end in spans)


@settings(max_examples=60, deadline=None)
@given(stages(prefetch=True))
def test_with_prefetches_no_faster_than_the_dram(chain):
    """Every byte passes at most at the bandwidth, prefetched or not."""
    spans = simulate(chain, BANDWIDTH)
    assert spans[-1][1] >= sum(stage.stream_bytes for stage in chain) / BANDWIDTH - 1e-6


def kernel(occupancy: float, early: bool = True, loop: float = 10.0, prefetch: float = 0.0) -> Stage:
    """A weight-streaming kernel: 40000 bytes (10 µs of DRAM alone), its K loop ``loop`` µs."""
    return Stage(boundary=1.0, loop=loop, hit_loop=1.0, fill=0.5, tail=1.0, stream_bytes=40000.0,
                 prefetch_bytes=prefetch, occupancy=occupancy, early=early, triggers=early)


def test_a_kernel_that_fits_beside_the_one_before_prefetches_during_it():
    """A compute-bound kernel (loop 30 µs, DRAM 10 µs) then one whose weights are all
    prefetched: placed with the first one (whose programs trigger it as they start), its bytes
    arrive during it, and its loop runs
    from L2 (hit_loop); if both do not fit on an SM together it is placed at the first one's
    loop end, and its bytes arrive after it."""
    alone = simulate([kernel(0.5, loop=30.0), kernel(0.5, prefetch=0.0)], BANDWIDTH)
    beside = simulate([kernel(0.5, loop=30.0), kernel(0.5, prefetch=40000.0)], BANDWIDTH)
    after = simulate([kernel(0.75, loop=30.0), kernel(0.5, prefetch=40000.0)], BANDWIDTH)
    first_end = 1.0 + 0.5 + 30.0 + 1.0
    assert alone[0][1] == beside[0][1] == after[0][1] == pytest.approx(first_end)
    assert alone[1][1] == pytest.approx(first_end + 1.0 + 0.5 + 10.0 + 1.0)  # its bytes after its start
    assert beside[1][1] == pytest.approx(first_end + 1.0 + 0.5 + 1.0 + 1.0)  # bytes already in L2
    # placed at the first one's loop end (31.5 µs): 10 µs of bytes done at 41.5, + fill, + tail
    assert after[1][1] == pytest.approx(31.5 + 10.0 + 0.5 + 1.0)
    # not a programmatic dependent launch: placed when the first one ends, no gain over alone
    plain = simulate([kernel(0.5, loop=30.0), kernel(0.5, early=False, prefetch=40000.0)], BANDWIDTH)
    assert plain[1][1] == pytest.approx(first_end + 1.0 + 10.0 + 0.5 + 1.0)


def test_a_kernel_that_does_not_trigger_holds_the_next_one_back():
    """The first kernel lets nothing start early (no gdc_launch_dependents): the second one's
    programs are placed, and ask for their prefetch, only when it ends."""
    first = dataclasses.replace(kernel(0.5, loop=30.0), triggers=False)
    spans = simulate([first, kernel(0.5, prefetch=40000.0)], BANDWIDTH)
    assert spans[1][1] == pytest.approx(32.5 + 10.0 + 0.5 + 1.0)  # 10 µs of bytes from 32.5, fill, tail


def test_prefetches_wait_for_room_in_l2():
    chain = [kernel(0.5, loop=30.0), kernel(0.5, prefetch=40000.0)]
    assert simulate(chain, BANDWIDTH, l2_room=40000.0)[1][1] < simulate(chain, BANDWIDTH, l2_room=39999.0)[1][1]
