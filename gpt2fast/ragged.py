"""Prompts of different lengths as packed rows, with the padded view attention needs.

Row-wise work (LayerNorms, Linears, GELU, residual adds) runs on the R = Σ_p T_p real rows
only; causal attention and the metrics run on the right-padded view [P, T_max, ·], whose
padded rows are zero. With prompts of one length both views are the same tensor.
"""

from __future__ import annotations

import torch


def valid_positions(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """[P, T] bool, True at positions t < T_p of prompt p. lengths [P] int64."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


class RaggedRows:
    """The real rows of P right-padded prompts of T_max positions.

    lengths [P] int64 holds T_p; ``valid`` [P, T_max] is ``valid_positions`` (the metrics'
    masks are made from it too). ``pad(rows [R, F]) -> [P, T_max, F]`` (zeros at padded
    positions) and ``unpad(padded [P, T_max, F]) -> [R, F]`` convert between the layouts.
    """

    def __init__(self, lengths: torch.Tensor, length: int):
        self.n_prompts, self.length = lengths.shape[0], length
        self.valid = valid_positions(lengths, length)
        self.ragged = not bool(self.valid.all())
        self.index = torch.nonzero(self.valid.reshape(-1)).reshape(-1)  # [R] flat positions p·T_max + t
        self.n_rows = int(self.index.shape[0])

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        if not self.ragged:
            return rows.view(self.n_prompts, self.length, rows.shape[-1])
        padded = rows.new_zeros(self.n_prompts * self.length, rows.shape[-1])
        padded.index_copy_(0, self.index, rows)
        return padded.view(self.n_prompts, self.length, rows.shape[-1])

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        flat = padded.reshape(self.n_prompts * self.length, padded.shape[-1])
        return flat if not self.ragged else flat.index_select(0, self.index)
