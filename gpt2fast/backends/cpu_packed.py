"""Linear layers on weights prepacked once for oneDNN: the CPU's faster GEMMs at few rows.

At the consensus workload's few rows (M = P·T, often < 64) a CPU GEMM streams its weight
from memory every call; ``F.linear`` (MKL) also repacks the weight into its panel layout on
every call. Packing each block's four weights once (``mkldnn._reorder_linear_weight``) and
computing with ``mkldnn._linear_pointwise`` skips that: about 22 % less GEMM time for gpt2 at
T = 27 on the 2-core development machine (bench/RESULTS.md). The GELU of c_fc and the
residual adds of both projections run as oneDNN post-ops of the same call. Float32 only;
results agree with ``F.linear`` to float32 rounding (the summation order differs). The
packed copy doubles the memory of the block weights (gpt2: +0.34 GB, gpt2-xl: +6 GB); it is
skipped when it would take more than half the free memory.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from ..generate import available_memory
from ..model import BlockParams
from ..weight_stream import WeightStream

ATTENTION_NAMES = ("attn_w", "attn_proj_w")
MLP_NAMES = ("fc_w", "fc_proj_w")


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


def pack_block(p: BlockParams, names: tuple[str, ...]) -> BlockParams:
    """``p`` with the Linear weights ``names`` reordered into oneDNN's packed layout (copies)."""
    return dataclasses.replace(p, **{name: torch.ops.mkldnn._reorder_linear_weight(getattr(p, name))
                                     for name in names})


def packed_blocks(stream: WeightStream, noff: bool) -> list[BlockParams] | None:
    """The L blocks of every iteration, packed, when they can be: float32 weights on the
    CPU that stay the same from one iteration to the next (not ``--const-reset``), a
    PyTorch with oneDNN, and room for the copy in half the free memory. None otherwise
    (the caller then uses ``stream.block``).

    Packed once per stream and ``noff`` (which leaves the unused MLP weights as they are),
    kept while the stream lives, so every engine of one set of weights shares it."""
    usable = (stream.wte.device.type == "cpu" and stream.wte.dtype == torch.float32
              and not stream.const_reset and available())
    if not usable:
        return None
    names = ATTENTION_NAMES if noff else ATTENTION_NAMES + MLP_NAMES
    packed = _PACKED_BY_STREAM.setdefault(stream, {})
    if noff not in packed:
        first = stream.block(0)
        copy_bytes = stream.cfg.n_layer * sum(getattr(first, name).nbytes for name in names)
        if copy_bytes > available_memory(torch.device("cpu")) // 2:
            return None
        packed[noff] = [pack_block(stream.block(layer), names) for layer in range(stream.cfg.n_layer)]
    return packed[noff]
