"""The PyTorch backend: every prompt batched in one right-padded tensor, any device.

One *iteration* applies all L blocks in order and records the consensus metrics after
each one; the loop over iterations belongs to the caller (``gpt2fast.loop``), which hands
in the buffers the metrics go to.
"""

from __future__ import annotations

import torch

from ..metrics import consensus_metrics
from ..model import block, embed, layer_norm
from ..weight_stream import WeightStream


def pad_prompts(token_lists: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad prompts with token 0: returns tokens [P, T_max] int64 and lengths [P] int64."""
    longest = max(len(tokens) for tokens in token_lists)
    padded = torch.zeros(len(token_lists), longest, dtype=torch.int64)
    for row, tokens in enumerate(token_lists):
        padded[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    lengths = torch.tensor([len(tokens) for tokens in token_lists], dtype=torch.int64)
    return padded.to(device), lengths.to(device)


class TorchEngine:
    """The hidden states of all prompts and the weights that move them, on one device.

    x [P, T_max, C] starts as ``wte[tokens] + wpe[positions]`` with the loaded weights
    (before any ``--random-init`` redraw, as in the original).
    """

    backend = "torch"

    def __init__(self, stream: WeightStream, token_lists: list[list[int]], noff: bool):
        self.stream = stream
        self.noff = noff
        self.n_layer = stream.cfg.n_layer
        self.n_head = stream.cfg.n_head
        self.tokens, self.lengths = pad_prompts(token_lists, stream.wte.device)
        self.x = embed(self.tokens, stream.wte, stream.wpe)

    @property
    def n_prompts(self) -> int:
        return self.tokens.shape[0]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    @torch.no_grad()
    def iteration(
        self,
        index: int,
        err_out: torch.Tensor,
        gram_out: torch.Tensor | None,
        decode: bool,
    ) -> torch.Tensor | None:
        """Apply blocks 0..L-1 once (steps index·L .. index·L + L - 1), writing metrics.

        err_out [P, L, 2] float32 receives err after each block; gram_out [P, L, T, T]
        float32 (or None to skip) receives G. With ``decode``, returns the argmax token at
        every position [P, T] int64 of ``lm_head(ln_f(x))`` after the last block (one prompt
        at a time, so the [T, V] logits of only one prompt exist at once).
        """
        first_step = index * self.n_layer
        for layer in range(self.n_layer):
            step = first_step + layer
            self.x = block(self.x, self.stream.block(step), self.n_head, self.noff)
            err, gram = consensus_metrics(self.x, self.stream.ln_f_w, self.stream.ln_f_b, self.lengths)
            err_out[:, layer].copy_(err)
            if gram_out is not None:
                gram_out[:, layer].copy_(gram)
        if not decode:
            return None
        last_step = first_step + self.n_layer - 1
        lm_head = self.stream.lm_head_after(last_step)
        y = layer_norm(self.x, self.stream.ln_f_w, self.stream.ln_f_b)
        return torch.stack([(rows @ lm_head.T).argmax(-1) for rows in y]).cpu()
