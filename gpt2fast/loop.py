"""The N-iteration loop of a consensus run: metrics to chunk buffers, chunks to the files.

Iterations run in chunks of ``c``; each chunk's metrics accumulate in buffers of shape
err [c, P, L, 2] and G [c, P, L, T, T] and are handed to the outputs when the chunk is
full, at the last iteration, or when a stop was requested (then the loop ends early).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .interrupts import StopRequest
from .outputs import ConsensusOutputs

CHUNK_BYTES = 64 << 20
MAX_CHUNK_ITERATIONS = 64


def chunk_iterations(n_prompts: int, n_layer: int, length: int, wants_gram: bool) -> int:
    """How many iterations one chunk holds: as many as fit ``CHUNK_BYTES`` of buffers, 1..64."""
    per_iteration = 4 * n_prompts * n_layer * (2 + (length * length if wants_gram else 0))
    return max(1, min(MAX_CHUNK_ITERATIONS, CHUNK_BYTES // per_iteration))


def run_iterations(
    engine,
    n_iterations: int,
    outputs: ConsensusOutputs,
    *,
    decode_iterations: frozenset[int] = frozenset(),
    on_decode: Callable[[int, torch.Tensor], None] = lambda index, tokens: None,
    on_iteration: Callable[[], None] = lambda: None,
    stop: StopRequest | None = None,
) -> int:
    """Run iterations 0..N-1 of ``engine``; return how many completed and were written.

    on_decode(i, tokens [P, T] int64) is called after each iteration in decode_iterations;
    on_iteration() after every iteration (the progress bar).
    """
    per_chunk = min(
        n_iterations,
        chunk_iterations(engine.n_prompts, engine.n_layer, engine.length, outputs.wants_gram),
    )
    err = torch.empty(per_chunk, engine.n_prompts, engine.n_layer, 2)
    gram = None
    if outputs.wants_gram:
        gram = torch.empty(per_chunk, engine.n_prompts, engine.n_layer, engine.length, engine.length)
    chunk_start = 0
    for index in range(n_iterations):
        slot = index - chunk_start
        tokens = engine.iteration(
            index, err[slot], None if gram is None else gram[slot], index in decode_iterations
        )
        if tokens is not None:
            on_decode(index, tokens)
        on_iteration()
        stopping = stop is not None and stop.requested
        if slot + 1 == per_chunk or index + 1 == n_iterations or stopping:
            filled = slot + 1
            outputs.write(chunk_start, err[:filled], None if gram is None else gram[:filled])
            outputs.flush()
            chunk_start = index + 1
        if stopping:
            return index + 1
    return n_iterations
