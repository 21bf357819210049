"""The consensus metrics the original recorded after every block.

With y = ln_f(x) and unit rows ŷ_t = y_t / ||y_t||, per prompt of T_p tokens:

    G = Ŷ Ŷᵀ                               (T_p × T_p cosine similarities)
    err[0] = mean_t |ŷ_0 · ŷ_t|            (t over all T_p tokens, t = 0 included)
    err[1] = mean of all T_p² entries of G

Prompts are right-padded to a common T; padded rows and columns are left out of both
means, and their entries of G are NaN.
"""

from __future__ import annotations

import torch

from .model import layer_norm
from .ragged import valid_positions


class PromptMasks:
    """What the metrics need to know about the padding of P prompts of T_max positions,
    computed once per run from valid [P, T] (``ragged.valid_positions``): pairs [P, T, T]
    (both positions valid), count [P] float32 (T_p), and whether any prompt is padded at all."""

    def __init__(self, valid: torch.Tensor):
        self.valid = valid
        self.pairs = valid[:, :, None] & valid[:, None, :]
        self.count = valid.sum(1).to(torch.float32)
        self.ragged = not bool(valid.all())


def consensus_metrics(
    x: torch.Tensor,
    ln_f_w: torch.Tensor,
    ln_f_b: torch.Tensor,
    lengths: torch.Tensor,
    masks: PromptMasks | None = None,
    with_gram: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Metrics of hidden states x [P, T, C] (any float dtype; computed in float32).

    Returns err [P, 2] float32 and G [P, T, T] float32 with NaN outside each prompt's
    T_p × T_p block, or None without ``with_gram``: then G is never formed, since
    Σ_{s,t} ŷ_s·ŷ_t = ||Σ_t ŷ_t||² and row 0 of G is Ŷ ŷ_0 (O(T·C) instead of O(T²·C)).
    lengths [P] int64 holds T_p; ``masks`` (made from them when not given) saves
    rebuilding the padding masks on every call.
    """
    masks = masks if masks is not None else PromptMasks(valid_positions(lengths, x.shape[1]))
    y = layer_norm(x.float(), ln_f_w.float(), ln_f_b.float())
    unit = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    if not with_gram:
        if masks.ragged:
            unit = torch.where(masks.valid[:, :, None], unit, 0.0)
        first_row = (unit @ unit[:, 0, :, None]).squeeze(-1).abs().sum(-1) / masks.count
        total = unit.sum(1)
        whole = (total * total).sum(-1) / (masks.count * masks.count)
        return torch.stack([first_row, whole], dim=-1), None
    gram = unit @ unit.transpose(1, 2)
    if not masks.ragged:
        return torch.stack([gram[:, 0, :].abs().mean(-1), gram.mean((1, 2))], dim=-1), gram
    count = masks.count
    first_row = torch.where(masks.valid, gram[:, 0, :].abs(), 0.0).sum(-1) / count
    whole = torch.where(masks.pairs, gram, 0.0).sum((1, 2)) / (count * count)
    err = torch.stack([first_row, whole], dim=-1)
    return err, torch.where(masks.pairs, gram, torch.nan)
