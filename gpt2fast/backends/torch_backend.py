"""The PyTorch backend: every prompt batched in one right-padded tensor, any device.

One *iteration* applies all L blocks in order and records the consensus metrics after
each one; the loop over iterations belongs to the C++ driver (``gpt2fast.driver``), which
hands in the buffers the metrics go to, or replays the CUDA graph of one iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..metrics import PromptMasks, consensus_metrics
from ..model import block, cached_block, embed, layer_norm
from ..ragged import RaggedRows
from .cpu_packed import packed_blocks, step_block, suiting_rows
from ..weight_stream import WeightStream

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


class TorchEngine:
    """The hidden states of all prompts and the weights that move them, on one device.

    x [R, C] holds the R = Σ_p T_p real rows of the prompts (``ragged.RaggedRows``: padded
    positions are never computed), starting as ``wte[tokens] + wpe[positions]`` with the
    loaded weights (before any ``--random-init`` redraw, as in the original).
    """

    backend = "torch"

    def __init__(self, stream: WeightStream, token_lists: list[list[int]], noff: bool):
        self.stream = stream
        self.noff = noff
        self.n_layer = stream.cfg.n_layer
        self.n_head = stream.cfg.n_head
        self.tokens, self.lengths = pad_prompts(token_lists, stream.wte.device)
        self.n_prompts, self.length = self.tokens.shape
        self.rows = RaggedRows(self.lengths, self.length)
        self.masks = PromptMasks(self.lengths, self.length)
        self.x = self.rows.unpad(embed(self.tokens, stream.wte, stream.wpe))
        self.packed = packed_blocks(stream, noff, self.rows.n_rows)

    @torch.no_grad()
    def iteration(self, index: int, err_out: torch.Tensor, gram_out: torch.Tensor | None) -> None:
        """Apply blocks 0..L-1 once (steps index·L .. index·L + L - 1), writing metrics.

        err_out [P, L, 2] float32 receives err after each block; gram_out [P, L, T, T]
        float32 (or None to skip) receives G. Both may live on any device.
        """
        x = self.x
        for layer in range(self.n_layer):
            params, ops = step_block(self.stream, self.packed, index * self.n_layer + layer)
            x = block(x, params, self.n_head, self.noff, ops, self.rows)
            err, gram = consensus_metrics(self.rows.pad(x), self.stream.ln_f_w, self.stream.ln_f_b,
                                          self.lengths, self.masks, with_gram=gram_out is not None)
            err_out[:, layer].copy_(err)
            if gram_out is not None:
                gram_out[:, layer].copy_(gram)
        self.x = x

    @torch.no_grad()
    def decode(self, index: int) -> torch.Tensor:
        """Argmax token [P, T] int64 (CPU) at every position of ``lm_head(ln_f(x))`` after
        iteration ``index`` (padded positions: meaningless), one prompt at a time so only
        one [T, V] logits tensor exists."""
        lm_head = self.stream.lm_head_after(index * self.n_layer + self.n_layer - 1)
        y = layer_norm(self.rows.pad(self.x), self.stream.ln_f_w, self.stream.ln_f_b)
        return torch.stack([(rows @ lm_head.T).argmax(-1) for rows in y]).cpu()

    @torch.no_grad()
    def capture_iteration(self, with_gram: bool, n_iterations: int) -> CapturedIteration | None:
        """A CUDA graph of one iteration that updates x in place for a run of
        ``n_iterations``, or None where a graph cannot stand for every iteration (off CUDA,
        and under ``--const-reset``: each step then has its own weights, drawn from Python)
        or would replay fewer than MIN_GRAPH_REPLAYS times."""
        if self.x.device.type != "cuda" or self.stream.const_reset or n_iterations < MIN_GRAPH_REPLAYS:
            return None
        return capture_in_place(self, with_gram)


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


class TorchGeneration:
    """Generation's cached forward pass on the torch backend: per step u a key and a value
    cache [1, H, capacity, D] (``model.cached_block``). On the CPU the block weights are
    prepacked for one row (each new token), as the consensus engine's are for its rows; a
    prompt too long for that layout (``cpu_packed.suiting_rows``) runs once on the stored
    weights instead, so no second packed copy is made for it."""

    def __init__(self, stream: WeightStream, noff: bool, iterations: int):
        self.stream = stream
        self.noff = noff
        self.steps = iterations * stream.cfg.n_layer
        self.cache_k = self.cache_v = None
        self.packed = packed_blocks(stream, noff, 1)

    def start(self, capacity: int) -> None:
        cfg, wte = self.stream.cfg, self.stream.wte
        shape = (self.steps, 1, cfg.n_head, capacity, cfg.head_dim)
        self.cache_k = torch.empty(shape, device=wte.device, dtype=wte.dtype)
        self.cache_v = torch.empty(shape, device=wte.device, dtype=wte.dtype)

    @torch.no_grad()
    def advance(self, ids: list[int], start: int) -> torch.Tensor:
        """Run all steps over ``ids`` at positions start..; logits [V] of the last one."""
        stream = self.stream
        new_ids = torch.tensor([ids], dtype=torch.int64, device=stream.wte.device)
        x = embed(new_ids, stream.wte, stream.wpe, start)
        packed = suiting_rows(self.packed, len(ids))
        for step in range(self.steps):
            params, ops = step_block(stream, packed, step)
            x = cached_block(x, params, stream.cfg.n_head, self.noff, self.cache_k[step], self.cache_v[step],
                             start, ops)
        last = layer_norm(x[0, -1], stream.ln_f_w, stream.ln_f_b)
        return last @ stream.lm_head_after(self.steps - 1).T
