"""What the C++ driver runs: the engine protocol both backends implement, and the CUDA-graph
capture of one iteration that both use.

An engine holds the hidden states of P prompts (right-padded to T tokens) and the weights
that move them. ``iteration(i, err, gram)`` applies the L blocks once (steps i·L .. i·L + L - 1)
and writes the consensus metrics after each block: err [P, L, 2] and, unless None, the
cosine-similarity matrices gram [P, L, T, T] (float32, any device). ``decode(i)`` gives the
argmax tokens [P, T] of lm_head(ln_f(x)) after iteration i. ``capture_iteration`` returns a
``CapturedIteration`` that the driver replays instead of calling ``iteration``, or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

GRAPH_WARMUP_ITERATIONS = 2
MIN_GRAPH_REPLAYS = 2  # a graph replayed once would not pay for its warm-up and capture


def pad_prompts(token_lists: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad prompts with token 0: returns tokens [P, T_max] int64 and lengths [P] int64."""
    longest = max(len(tokens) for tokens in token_lists)
    padded = torch.zeros(len(token_lists), longest, dtype=torch.int64)
    for row, tokens in enumerate(token_lists):
        padded[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    lengths = torch.tensor([len(tokens) for tokens in token_lists], dtype=torch.int64)
    return padded.to(device), lengths.to(device)


@dataclass(frozen=True)
class CapturedIteration:
    """A CUDA graph of one iteration and the fixed device buffers it writes each replay:
    err [P, L, 2] and gram [P, L, T, T] (float32; gram is None when not recorded).

    The graph stands for iterations ``first_iteration``.. (the earlier ones run eagerly);
    ``iteration``, when not None, is the int64 [1] device tensor the graph reads the
    iteration index from, to be written before each replay."""

    graph: torch.cuda.CUDAGraph
    err: torch.Tensor
    gram: torch.Tensor | None
    iteration: torch.Tensor | None = None
    first_iteration: int = 0


class Engine(Protocol):
    """The consensus engine the C++ driver runs (``gpt2fast.driver.drive``)."""

    backend: str
    n_prompts: int
    n_layer: int
    length: int

    def iteration(self, index: int, err_out: torch.Tensor, gram_out: torch.Tensor | None) -> None: ...

    def decode(self, index: int) -> torch.Tensor: ...

    def capture_iteration(self, with_gram: bool, n_iterations: int) -> CapturedIteration | None: ...


@torch.no_grad()
def capture_in_place(engine, with_gram: bool, iteration: torch.Tensor | None = None,
                     first_iteration: int = 0) -> CapturedIteration:
    """Capture ``engine.iteration`` as a CUDA graph whose replay advances ``engine.x`` in place.

    Without ``iteration`` the index is frozen at 0, so the graph stands for every iteration
    only when the weights do not change between iterations; with it (an int64 [1] device
    tensor) ``engine.iteration`` is given the tensor, whose value the kernels read at each
    replay. Warm-up runs on a side stream (as CUDA-graph capture requires) and x is restored
    afterwards, so capturing changes no state.
    """
    device = engine.x.device
    err = torch.empty(engine.n_prompts, engine.n_layer, 2, device=device)
    gram = None
    if with_gram:
        gram = torch.empty(engine.n_prompts, engine.n_layer, engine.length, engine.length, device=device)
    state = engine.x
    start = state.clone()

    def iterate_in_place() -> None:
        engine.iteration(0 if iteration is None else iteration, err, gram)
        if engine.x is not state:
            state.copy_(engine.x)
            engine.x = state

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_ITERATIONS):
            iterate_in_place()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        iterate_in_place()
    state.copy_(start)
    return CapturedIteration(graph=graph, err=err, gram=gram, iteration=iteration, first_iteration=first_iteration)
