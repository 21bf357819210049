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


def valid_positions(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """[P, T] bool, True at positions t < T_p of prompt p. lengths [P] int64."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def consensus_metrics(
    x: torch.Tensor,
    ln_f_w: torch.Tensor,
    ln_f_b: torch.Tensor,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Metrics of hidden states x [P, T, C] (any float dtype; computed in float32).

    Returns err [P, 2] float32 and G [P, T, T] float32 with NaN outside each prompt's
    T_p × T_p block. lengths [P] int64 holds T_p.
    """
    y = layer_norm(x.float(), ln_f_w.float(), ln_f_b.float())
    unit = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    gram = unit @ unit.transpose(1, 2)
    valid = valid_positions(lengths, x.shape[1])
    pairs = valid[:, :, None] & valid[:, None, :]
    count = lengths.to(torch.float32)
    first_row = torch.where(valid, gram[:, 0, :].abs(), 0.0).sum(-1) / count
    whole = torch.where(pairs, gram, 0.0).sum((1, 2)) / (count * count)
    err = torch.stack([first_row, whole], dim=-1)
    return err, torch.where(pairs, gram, torch.nan)
