"""The two ceilings of the machine a benchmark runs on, measured in the same run.

``memory_bandwidth`` counts bytes read plus bytes written by a large copy; ``matmul_rate``
counts 2·n³ floating-point operations per float32 matrix product (IEEE fp32: TF32 is off).
Both are medians of repeated timings, in bytes/s and FLOP/s.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ceilings:
    """Measured memory bandwidth (bytes/s) and float32 matrix-product rate (FLOP/s)."""

    device: str
    bandwidth: float
    flop_rate: float

    def floor_s(self, bytes_moved: float, flops: float) -> tuple[float, str]:
        """The larger of the two times the work needs, and which ceiling sets it."""
        memory_s, compute_s = bytes_moved / self.bandwidth, flops / self.flop_rate
        return (memory_s, "memory") if memory_s >= compute_s else (compute_s, "compute")


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


def memory_bandwidth(device: torch.device) -> float:
    """Bytes/s of a 1 GiB (GPU) or 256 MiB (CPU) copy, read + write."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 26)
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    seconds = median_seconds(lambda: target.copy_(source), 20 if device.type == "cuda" else 5, device)
    return 2 * source.numel() * source.element_size() / seconds


def matmul_rate(device: torch.device) -> float:
    """FLOP/s of an n×n float32 product, n = 8192 (GPU) or 2048 (CPU), TF32 off."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        seconds = median_seconds(lambda: a @ b, 10 if device.type == "cuda" else 3, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size**3 / seconds


def measure(device: torch.device) -> Ceilings:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return Ceilings(name, memory_bandwidth(device), matmul_rate(device))
