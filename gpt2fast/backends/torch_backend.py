"""The PyTorch backend: every prompt batched in one right-padded tensor, any device.

One *iteration* applies all L blocks in order and records the consensus metrics after
each one; the loop over iterations belongs to the C++ driver (``gpt2fast.driver``), which
hands in the buffers the metrics go to, or replays the CUDA graph of one iteration.
"""

from __future__ import annotations

import torch

from ..metrics import PromptMasks, consensus_metrics
from ..model import block, cached_block, embed, layer_norm
from ..ragged import RaggedRows
from .cpu_packed import packed_blocks, step_block, suiting_rows
from .engine import MIN_GRAPH_REPLAYS, CapturedIteration, capture_in_place, pad_prompts
from ..weight_stream import WeightStream

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
        self.masks = PromptMasks(self.rows.valid)
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
