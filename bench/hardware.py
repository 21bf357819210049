"""The two ceilings of the machine a benchmark runs on, measured in the same run.

A floor is work / ceiling, so a ceiling measured low makes a floor the engine beats. On the
CPU both ceilings are therefore the *best* rate seen, not a typical one:

- ``memory_bandwidth``: the larger of a copy (bytes read + written) and a read-only sum
  (bytes read: what streaming weights is), each over a buffer several times the last-level
  cache, best of several repeats;
- ``matmul_rate``: 2 FLOPs per float32 multiply-add, best over repeats of every shape the
  CPU benchmarks run (gpt2's four Linear weights against 1 to 256 rows, the weights hot in
  cache so that compute, not memory, limits them, plus a 1024² product) through every
  kernel the engine uses (``F.linear`` / MKL, oneDNN, the panel kernel), on
  ``torch.get_num_threads()`` threads as the engine runs them;
- ``cpu_isa_flop_rate``: an upper bound from the ISA and clock, printed beside the floor.

On a GPU they stay medians of repeated timings (a 1 GiB copy, an 8192² product, TF32 off).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt2fast.backends import cpu_packed
from gpt2fast.kernels import panel_linear
from gpt2fast.config import PRESETS
from gpt2fast.weights import linear_shapes

CPU_MODEL = PRESETS["gpt2"]  # the model the CPU benchmarks run
CPU_ROWS = (1, 9, 27, 48, 96, 165, 256)  # M of the cases: (a) 27, (b) 165, (c) 256, generation 1
CPU_REPEATS = 5
FMA_PIPES = 2  # vector FMA units per core assumed by the ISA bound (some cores have one)


@dataclass(frozen=True)
class Ceilings:
    """Memory bandwidth (bytes/s) and float32 matrix-product rate (FLOP/s), measured; on the
    CPU also ``isa_flop_rate``, the ISA-and-clock upper bound (FLOP/s, None if unknown)."""

    device: str
    bandwidth: float
    flop_rate: float
    isa_flop_rate: float | None = None

    def floor_s(self, bytes_moved: float, flops: float) -> tuple[float, str]:
        """The larger of the two times the work needs, and which ceiling sets it."""
        memory_s, compute_s = bytes_moved / self.bandwidth, flops / self.flop_rate
        return (memory_s, "memory") if memory_s >= compute_s else (compute_s, "compute")

    def floor_record(self, bytes_moved: float, flops: float) -> dict[str, object]:
        """A benchmark's ``extra_info`` entries for the floor of this work: floor_s, bound,
        card, the ceilings, and isa_floor_s (the compute time at the ISA peak) where known."""
        floor_s, bound = self.floor_s(bytes_moved, flops)
        record = {"floor_s": floor_s, "bound": bound, "card": self.device, "bandwidth": self.bandwidth,
                  "flop_rate": self.flop_rate}
        if self.isa_flop_rate is not None:
            record.update(isa_flop_rate=self.isa_flop_rate, isa_floor_s=flops / self.isa_flop_rate)
        return record

    def best_with(self, other: Ceilings) -> Ceilings:
        """The higher of each measured rate of two measurements of one device."""
        return Ceilings(self.device, max(self.bandwidth, other.bandwidth), max(self.flop_rate, other.flop_rate),
                        self.isa_flop_rate)


def median_seconds(call, repeats: int, device: torch.device) -> float:
    """Median wall time of ``call()`` over ``repeats`` runs after one warm-up (device synced)."""
    def synced():
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()

    synced()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        synced()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def best_rate(work: list[tuple[float, Callable[[], object]]], repeats: int,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """The highest work / seconds of any (work, call) pair: a peak, which a disturbed timing
    can only lower. ``repeats`` rounds visit every pair in turn (so a burst of other load
    spoils one round, not every timing of one pair), calling it once untimed (hot caches),
    then once timed."""
    best = 0.0
    for _ in range(repeats):
        for amount, call in work:
            call()
            started = clock()
            call()
            best = max(best, amount / (clock() - started))
    return best


def last_level_cache_bytes() -> int:
    """The largest CPU cache this Linux reports (one instance), 0 where it reports none."""
    sizes = [0]
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes)


def memory_bandwidth(device: torch.device) -> float:
    """Bytes/s: on a GPU the median 1 GiB copy, read + write; on the CPU the best of a copy
    (read + write) and a sum (read) over max(256 MiB, 4 × last-level cache) of float32."""
    if device.type == "cuda":
        source = torch.randn(1 << 28, device=device)
        target = torch.empty_like(source)
        seconds = median_seconds(lambda: target.copy_(source), 20, device)
        return 2 * source.numel() * source.element_size() / seconds
    nbytes = max(256 << 20, 4 * last_level_cache_bytes())
    buffer = torch.ones(nbytes // 4)
    half = buffer.numel() // 2
    source, target = buffer[:half], buffer[half:2 * half]
    return best_rate([(2 * 4 * half, lambda: target.copy_(source)), (nbytes, buffer.sum)], CPU_REPEATS)


def engine_linears(weight: torch.Tensor, bias: torch.Tensor) -> list[tuple[float, Callable]]:
    """(most rows it serves, x ↦ x Wᵀ + b) for each kernel the CPU engine may run a Linear
    on: ``F.linear`` (MKL), oneDNN on its prepacked weight, the panel kernel on panels (up to
    ``cpu_packed.PANEL_ROWS_MAX`` rows, as the engine uses it)."""
    linears: list[tuple[float, Callable]] = [(math.inf, lambda x: F.linear(x, weight, bias))]
    if cpu_packed.onednn_available():
        onednn = torch.ops.mkldnn._reorder_linear_weight(weight)
        linears.append((math.inf, lambda x: torch.ops.mkldnn._linear_pointwise(x, onednn, bias, "none", [], "")))
    if panel_linear.available():
        panels = panel_linear.pack_panels(weight)
        linears.append((cpu_packed.PANEL_ROWS_MAX, lambda x: panel_linear.panel_linear(x, panels, bias)))
    return linears


def cpu_gemms() -> list[tuple[float, Callable[[], object]]]:
    """(FLOPs, call) of every CPU product ``matmul_rate`` times: gpt2's four Linear weights
    against each of CPU_ROWS rows through every ``engine_linears`` kernel, and a 1024² product."""
    square = torch.randn(1024, 1024)
    gemms: list[tuple[float, Callable[[], object]]] = [(2 * 1024**3, lambda: square @ square)]
    for out_features, in_features in linear_shapes(CPU_MODEL).values():
        weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
        for rows_max, linear in engine_linears(weight, bias):
            gemms += [(2 * rows * in_features * out_features, partial(linear, torch.randn(rows, in_features)))
                      for rows in CPU_ROWS if rows <= rows_max]
    return gemms


def matmul_rate(device: torch.device) -> float:
    """FLOP/s of float32 products: on a GPU the median 8192² product (TF32 off); on the CPU
    the best over ``cpu_gemms()``."""
    if device.type != "cuda":
        return best_rate(cpu_gemms(), CPU_REPEATS)
    a, b = torch.randn(8192, 8192, device=device), torch.randn(8192, 8192, device=device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        seconds = median_seconds(lambda: a @ b, 10, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * 8192**3 / seconds


def float32_lanes(flags: set[str]) -> int:
    """float32 values per vector register: 16 with AVX-512F, 8 with AVX2 or FMA, else 4."""
    if "avx512f" in flags:
        return 16
    return 8 if flags & {"avx2", "fma"} else 4


def isa_flop_rate(cores: int, clock_hz: float, flags: set[str]) -> float:
    """cores × clock × FMA_PIPES × float32 lanes × 2 FLOPs per FMA."""
    return cores * clock_hz * FMA_PIPES * float32_lanes(flags) * 2


def cpu_flags(cpuinfo: str) -> set[str]:
    """The ISA flags of the first processor in /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_clock_hz(cpuinfo: str, max_freqs_khz: list[int]) -> float | None:
    """The highest clock known: cpufreq's ``cpuinfo_max_freq`` values (kHz) and
    /proc/cpuinfo's "cpu MHz" lines; None if neither gives one."""
    clocks = [khz * 1e3 for khz in max_freqs_khz]
    clocks += [float(line.split(":", 1)[1]) * 1e6 for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
    return max(clocks, default=None)


def cpu_isa_flop_rate() -> float | None:
    """The FMA peak of the cores the engine's threads run on (min(torch threads, CPUs this
    process may use)), from this Linux's ISA flags and clock; None where it reports no clock.

    An upper bound only if the clock read is the highest the cores run at: a VM may report
    just its base clock and no cpufreq, under-reporting the boost clock, so the floor divides
    by the measured best rate and this is printed beside it. Cores with one vector FMA unit,
    or AVX-512 on 256-bit units (AMD Zen 4), peak at half of it."""
    cpuinfo_path = Path("/proc/cpuinfo")
    cpuinfo = cpuinfo_path.read_text() if cpuinfo_path.exists() else ""
    max_freqs = [int(path.read_text()) for path in
                 Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq")]
    clock = cpu_clock_hz(cpuinfo, max_freqs)
    if clock is None:
        return None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return isa_flop_rate(min(torch.get_num_threads(), usable), clock, cpu_flags(cpuinfo))


def measure(device: torch.device) -> Ceilings:
    if device.type == "cuda":
        return Ceilings(torch.cuda.get_device_name(device), memory_bandwidth(device), matmul_rate(device))
    return Ceilings("CPU", memory_bandwidth(device), matmul_rate(device), cpu_isa_flop_rate())


def time_gpu_call(benchmark, ceilings: Ceilings, role: str, call: Callable[[], object], bytes_moved: int,
                  flops: int, rounds: int = 50, unit: str = "call") -> None:
    """Benchmark ``call`` (one ``unit`` of work) on the GPU as ``role`` (baseline or
    gpt2fast), synchronised around each round, recording its work for the floor line and,
    in the summary, its bytes per second against the card's bandwidth."""
    benchmark.extra_info.update(role=role, bytes=bytes_moved, flops=flops, units=1, unit=unit,
                                **ceilings.floor_record(bytes_moved, flops))
    benchmark.pedantic(lambda: (call(), torch.cuda.synchronize()), setup=torch.cuda.synchronize,
                       rounds=rounds, warmup_rounds=max(1, rounds // 10))
    achieved = bytes_moved / benchmark.stats.stats.median
    benchmark.extra_info.update(achieved_gbs=achieved / 1e9, fraction_of_card=achieved / ceilings.bandwidth,
                                summary=f"{benchmark.group} {role}: {achieved / 1e9:.0f} GB/s of the card's "
                                        f"{ceilings.bandwidth / 1e9:.0f} ({achieved / ceilings.bandwidth:.0%})")
