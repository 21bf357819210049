"""What a run needs in memory, from its sizes before anything is allocated, and what the
machine has free.

A consensus run's estimate (``consensus_memory``) is a floor: the tensors that certainly
exist at once, so a run refused for it could not have run (a run that passes may still need
more, e.g. the allocator's slack).
Per element, with rows = Σ_p T_p, P prompts padded to T, L layers, width C, in the
engine's dtype (4 bytes fp32, 2 bf16):
    activations   rows · 6C        the residual stream, its LayerNorm and the MLP's 4C
    Triton states L · P · T · C    every block's output (``TritonEngine.states``)
    Gram          P · T²  (float32) formed by the metric when err2 is recorded
    graph buffer  P · L · T² (float32) the CUDA graph's err2 output, on the GPU
    staging       2 slots of ``chunk_iterations`` iterations within the staging
                  budget (float32, host; one slot when the run fits in it)
"""

from __future__ import annotations

import contextlib
import os
import resource

import torch

from .config import ModelConfig

STAGING_BYTES = 2 << 30  # the staging slots' default bound (``staging_budget``)


def chunk_iterations(n_prompts: int, n_layer: int, length: int, wants_gram: bool, n_iterations: int,
                     staging: int = STAGING_BYTES) -> int:
    """Iterations per staging slot within ``staging`` bytes: all N in one slot when they fit,
    else as many as fit in each of two slots (one filling while the other is written), at
    least 1.

    Larger slots mean longer contiguous runs per err2 row, hence fewer and larger writes
    (each chunk writes one run of c·L floats to each of the P·T² rows; a run of one chunk
    writes whole rows, sequentially).
    """
    per_iteration = 4 * n_prompts * n_layer * (2 + (length * length if wants_gram else 0))
    if n_iterations * per_iteration <= staging:
        return n_iterations
    return max(1, min(n_iterations, staging // (2 * per_iteration)))


def staging_budget(memory_budget: int | None = None) -> int:
    """Bytes for the driver's staging slots: STAGING_BYTES, at most a quarter of the free
    host memory, at most half of ``memory_budget`` when given (the rest for the batches)."""
    bound = min(STAGING_BYTES, available_memory(torch.device("cpu")) // 4)
    return max(1, bound if memory_budget is None else min(bound, memory_budget // 2))


def consensus_memory(cfg: ModelConfig, lengths: list[int], iterations: int, wants_gram: bool, backend: str,
                     device: torch.device, element_size: int, staging: int = STAGING_BYTES) -> dict[str, int]:
    """Bytes the run holds at least besides its weights: ``{"host": ..., "device": ...}``
    (one entry, "host", when the run's device is the CPU)."""
    n_prompts, length, rows, width = len(lengths), max(lengths), sum(lengths), cfg.n_embd
    gram = n_prompts * length * length if wants_gram else 0
    engine = element_size * rows * 6 * width + 4 * gram
    if backend == "triton":
        engine += element_size * cfg.n_layer * n_prompts * length * width
    if device.type == "cuda" and wants_gram:
        engine += 4 * cfg.n_layer * gram
    chunk = chunk_iterations(n_prompts, cfg.n_layer, length, wants_gram, iterations, staging)
    slot = chunk * 4 * n_prompts * cfg.n_layer * (2 + (length * length if wants_gram else 0))
    slots = (2 if iterations > chunk else 1) * slot
    if device.type == "cpu":
        return {"host": engine + slots}
    return {"host": slots, "device": engine}


def cache_bytes(n_layer: int, n_embd: int, iterations: int, max_length: int, element_size: int) -> int:
    """Bytes of the key/value cache for N·L steps of ``max_length`` positions."""
    return 2 * iterations * n_layer * max_length * n_embd * element_size


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device``: GPU free memory, or host RAM available
    (Linux's MemAvailable: free pages plus the page cache that can be dropped; free pages
    alone where /proc/meminfo does not say), within what an address-space limit
    (``ulimit -v``) leaves this process."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        free = int(meminfo_field("/proc/meminfo", "MemAvailable")) * 1024
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        with contextlib.suppress(OSError, ValueError):
            free = min(free, limit - int(meminfo_field("/proc/self/status", "VmSize")) * 1024)
    return max(free, 0)


def meminfo_field(path: str, name: str) -> str:
    """The number of a ``Name:   123 kB`` line of a /proc file (ValueError when absent)."""
    with open(path) as lines:
        for line in lines:
            if line.startswith(name + ":"):
                return line.split()[1]
    raise ValueError(f"{path} has no {name}")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: MemoryError, torch's CUDA
    OutOfMemoryError, or its CPU allocator's RuntimeError ("can't allocate memory")."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))
