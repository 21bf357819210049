"""Linear layers on weights prepacked once for oneDNN: the CPU's faster GEMMs at few rows.

At the consensus workload's few rows (M = P·T, often < 64) a CPU GEMM streams its weight
from memory every call; ``F.linear`` (MKL) also repacks the weight into its panel layout on
every call. Packing each block's four weights once (``mkldnn._reorder_linear_weight``) and
computing with ``mkldnn._linear_pointwise`` skips that: about 22 % less GEMM time for gpt2 at
T = 27 on the 2-core development machine (bench/RESULTS.md). The GELU of c_fc and the
residual adds of both projections run as oneDNN post-ops of the same call. Float32 only;
results agree with ``F.linear`` to float32 rounding (the summation order differs).
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from ..model import BlockParams
from ..weight_stream import WeightStream

PACKED_NAMES = ("attn_w", "attn_proj_w", "fc_w", "fc_proj_w")


def available() -> bool:
    """Whether this PyTorch build has the oneDNN (mkldnn) linear operators."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinears:
    """``model.DenseLinears`` on weights returned by ``pack_block``."""

    @staticmethod
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "tanh")

    @staticmethod
    def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")


PACKED = PackedLinears()
_PACKED_BY_STREAM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pack_block(p: BlockParams) -> BlockParams:
    """``p`` with its four Linear weights reordered into oneDNN's packed layout (a copy)."""
    return dataclasses.replace(
        p, **{name: torch.ops.mkldnn._reorder_linear_weight(getattr(p, name)) for name in PACKED_NAMES}
    )


def packed_blocks(stream: WeightStream) -> list[BlockParams] | None:
    """The L blocks of every iteration, packed, when they can be: float32 weights on the
    CPU that stay the same from one iteration to the next (not ``--const-reset``), and a
    PyTorch with oneDNN. None otherwise (the caller then uses ``stream.block``).

    Packed once per stream (a copy of the block weights, kept while the stream lives), so
    every engine of one set of weights shares it."""
    usable = (stream.wte.device.type == "cpu" and stream.wte.dtype == torch.float32
              and not stream.const_reset and available())
    if not usable:
        return None
    if stream not in _PACKED_BY_STREAM:
        _PACKED_BY_STREAM[stream] = [pack_block(stream.block(layer)) for layer in range(stream.cfg.n_layer)]
    return _PACKED_BY_STREAM[stream]
