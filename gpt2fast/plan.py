"""A run's size before it starts (``--plan``): the bytes of each output, the memory it holds,
and the least time it takes on this machine; nothing of the run is computed.

The time is a roofline floor: per iteration, the larger of the weights' bytes over the memory
bandwidth and the FLOPs over the float32 product rate (``work.iteration_work``), both rates
measured here in a fraction of a second, summed over the run's batches and iterations. Runs
take longer (on the CPU about 2x at few rows, far more for tiny models, whose iterations are
dispatch-bound; bench/RESULTS.md); err2's bytes must also reach the disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .backends import batch_prompt_limit
from .batches import plan_batches
from .config import ModelConfig
from .memory import chunk_iterations, consensus_memory, staging_budget
from .outputs import format_bytes
from .errors import InputError
from .validation import MATRIX_DTYPES, Prompts, check_run_fits, memory_for_batches, prompt_tokens
from .work import iteration_work

REPEATS = 3


@dataclass
class RunPlan:
    """outputs: {role, path, shape, dtype, bytes} each; weights: bytes per place (host,
    device); batches: prompt indices per batch; memory: the largest batch's floor per place
    (``memory.consensus_memory``); budget: bytes per place the batches may take; floor_s:
    the run's least time, ``bound`` its limit (memory or compute) at ``bandwidth`` B/s and
    ``flop_rate`` FLOP/s; chunk: iterations per err2 staging slot (of the first batch; 0
    without err2), each chunk adding ``run_bytes`` to every err2 row; refusal: why the run
    would not start (None: it would)."""

    outputs: list[dict]
    weights: dict[str, int]
    batches: list[list[int]]
    memory: dict[str, int]
    budget: dict[str, int]
    iterations: int
    floor_s: float
    bound: str
    bandwidth: float
    flop_rate: float
    chunk: int = 0
    run_bytes: int = 0
    refusal: str | None = None

    def lines(self) -> list[str]:
        """The plan as the CLI prints it."""
        lines = ["outputs:"]
        for output in self.outputs:
            lines.append(f"  {output['role']:<5} {output['path'] or '(in memory)'}  {tuple(output['shape'])} "
                         f"{output['dtype']}  {format_bytes(output['bytes'])}")
        places = sorted(set(self.weights) | set(self.memory))
        lines.append("memory: " + "; ".join(
            f"{place} {format_bytes(self.weights.get(place, 0))} weights + at least "
            f"{format_bytes(self.memory.get(place, 0))} for the run (of {format_bytes(self.budget[place])} "
            f"available)" for place in places))
        lines.append(f"batches: {len(self.batches)}" + (" (all prompts at once)" if len(self.batches) == 1 else
                                                         f" of {', '.join(str(len(b)) for b in self.batches)} prompts"))
        if self.chunk >= self.iterations:
            lines.append("err2 staging: one chunk, written as whole rows after the last iteration")
        elif self.chunk:
            lines.append(f"err2 staging: chunks of {self.chunk} iterations, each adding {format_bytes(self.run_bytes)} "
                         f"to every row (short runs write slowly: a larger --memory-budget makes them longer)")
        if self.refusal is not None:
            lines.append(f"as it stands the run would not start: {self.refusal}")
        lines.append(f"time: at least {format_seconds(self.floor_s)} for {self.iterations} iterations ({self.bound}-bound "
                     f"at {self.bandwidth / 1e9:.1f} GB/s and {self.flop_rate / 1e9:.0f} GFLOP/s measured now)")
        return lines


def format_seconds(seconds: float) -> str:
    """``42.0 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def best_rate(amount: float, call: Callable[[], object], device: torch.device) -> float:
    """amount / the fastest of REPEATS calls (after one untimed)."""
    call()
    best = 0.0
    for _ in range(REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, amount / (time.perf_counter() - started))
    return best


def machine_rates(device: torch.device) -> tuple[float, float]:
    """(bytes/s of a large copy, read + write; FLOP/s of a float32 product) on ``device``."""
    numel = (256 << 20) // 4 if device.type == "cuda" else (64 << 20) // 4
    source = torch.ones(numel, device=device)
    target = torch.empty_like(source)
    side = 4096 if device.type == "cuda" else 768
    a = torch.randn(side, side, device=device)
    return (best_rate(8 * numel, lambda: target.copy_(source), device),
            best_rate(2 * side**3, lambda: a @ a, device))


def output_record(role: str, path: Path | None, shape: tuple[int, ...], dtype: str, itemsize: int) -> dict:
    count = 1
    for size in shape:
        count *= size
    return {"role": role, "path": None if path is None else str(path), "shape": list(shape), "dtype": dtype,
            "bytes": itemsize * count}


def plan_run(cfg: ModelConfig, prompts: Prompts, size: int, err_path: Path | None, gram_path: Path | None,
             matrix: bool, matrix_format: tuple[int, str], backend: str, device: torch.device, storage: torch.dtype,
             weights_to_load: bool, memory_budget: int | None) -> RunPlan:
    """The ``RunPlan`` of a consensus run of these prompts (InputError for prompts no run
    takes); a run too large for the memory or the disk is planned all the same, ``refusal``
    saying why it would not start."""
    _, token_lists = prompt_tokens(prompts, cfg.n_positions)
    try:
        check_run_fits(prompts, cfg, size, matrix, err_path, gram_path, backend, device, storage, weights_to_load,
                       memory_budget, matrix_format)
        refusal = None
    except InputError as error:
        refusal = str(error)
    lengths = [len(tokens) for tokens in token_lists]
    wants_gram = matrix or gram_path is not None
    steps, (every, matrix_dtype) = cfg.n_layer * size, matrix_format
    outputs = [output_record("err", err_path, (len(lengths), steps, 2), "float32", 4)]
    if wants_gram:
        outputs.append(output_record("err2", gram_path, (len(lengths), max(lengths), max(lengths), -(-steps // every)),
                                     matrix_dtype, MATRIX_DTYPES[matrix_dtype]))
    weights, budget = memory_for_batches(cfg, device, storage, weights_to_load, memory_budget)

    staging = staging_budget(memory_budget)

    def needs(batch: list[int]) -> dict[str, int]:
        return consensus_memory(cfg, batch, size, wants_gram, backend, device, storage.itemsize, staging)

    unlimited = {place: math.inf for place in budget}
    batches = plan_batches(list(range(len(lengths))), lengths, needs, budget if refusal is None else unlimited,
                           batch_prompt_limit(backend, cfg))
    memory: dict[str, int] = {}
    for batch in batches:
        for place, count in needs([lengths[i] for i in batch]).items():
            memory[place] = max(memory.get(place, 0), count)
    chunk = run_bytes = 0
    if wants_gram:
        first = [lengths[i] for i in batches[0]]
        chunk = chunk_iterations(len(first), cfg.n_layer, max(first), True, size, staging)
        run_bytes = -(-chunk * cfg.n_layer // every) * MATRIX_DTYPES[matrix_dtype]
    bandwidth, flop_rate = machine_rates(device)
    floor_s, bound = 0.0, "memory"
    for batch in batches:
        bytes_moved, flops = iteration_work(cfg, [lengths[i] for i in batch], wants_gram, storage.itemsize)
        memory_s, compute_s = bytes_moved / bandwidth, flops / flop_rate
        floor_s += size * max(memory_s, compute_s)
        bound = "memory" if memory_s >= compute_s else "compute"
    return RunPlan(outputs=outputs, weights=weights, batches=batches, memory=memory, budget=budget,
                   iterations=size, floor_s=floor_s, bound=bound, bandwidth=bandwidth, flop_rate=flop_rate,
                   chunk=chunk, run_bytes=run_bytes, refusal=refusal)
