"""Block weights prepacked once for the CPU's faster GEMMs, in the layout that suits the rows.

At the consensus workload's rows (M = P·T) a CPU GEMM streams its weight from memory every
call; ``F.linear`` (MKL) also repacks the weight into its panel layout on every call.
Packing each block's four weights once skips that, in one of two layouts:

- few rows (M <= PANEL_ROWS_MAX, CPUs with AVX-512F): 16-column panels for the kernel of
  ``kernels.panel_linear``, which overlaps the weight stream with its FMAs best;
- otherwise oneDNN's layout (``mkldnn._reorder_linear_weight``), computed by
  ``mkldnn._linear_pointwise`` with the GELU of c_fc and the residual adds of both
  projections as post-ops of the same call: about 22 % less GEMM time than ``F.linear`` for
  gpt2 at T = 27 on the 2-core development machine (bench/RESULTS.md).

Float32 only; results agree with ``F.linear`` to float32 rounding (the summation order
differs). Where the stream owns its block weights (weights the API loaded for the run, or a
``--random-init`` redraw) they are handed over and packed in place, or one at a time: the
packed weights are then the only copy (gpt2-xl: 5.9 GB), in the layout for the first engine's
rows, and serve every later engine and row count of the stream. Other weights (a ``Weights``
passed in by the caller) are packed into a copy that takes as much memory as the block
weights (gpt2: +0.34 GB, gpt2-xl: +6 GB; a stream that serves both few and many rows keeps
one of each layout), skipped when it would take more than half the free memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch

from ..memory import available_memory
from ..model import DENSE, BlockParams
from ..weight_stream import WeightStream
from ..kernels import panel_linear

ATTENTION_NAMES = ("attn_w", "attn_proj_w")
MLP_NAMES = ("fc_w", "fc_proj_w")
# Up to this many rows the panel kernel beats oneDNN (1.3x at 27 rows, 1.05x at 96, for
# gpt2 on the development machine; bench/RESULTS.md).
PANEL_ROWS_MAX = 96


def onednn_available() -> bool:
    """Whether this PyTorch build has the oneDNN (mkldnn) linear operators."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinears:
    """``model.DenseLinears`` on weights in oneDNN's packed layout, for any number of rows."""

    max_rows = math.inf

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


class PanelLinears:
    """``model.DenseLinears`` on weights packed by ``kernels.panel_linear.pack_panels``, for
    up to ``max_rows`` rows (beyond, oneDNN is faster)."""

    max_rows = PANEL_ROWS_MAX

    @staticmethod
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return panel_linear.panel_linear(x, weight, bias)

    @staticmethod
    def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return panel_linear.panel_linear(x, weight, bias, gelu=True)

    @staticmethod
    def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return panel_linear.panel_linear(x, weight, bias, residual)


PANELS = PanelLinears()

_PACKED_BY_STREAM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SOLE_COPY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # stream -> PackedBlocks


def pack_block(p: BlockParams, names: tuple[str, ...], pack) -> BlockParams:
    """``p`` with the Linear weights ``names`` replaced by ``pack(weight)`` (copies)."""
    return dataclasses.replace(p, **{name: pack(getattr(p, name)) for name in names})


class PackedLayout(NamedTuple):
    """A layout the block weights can be packed in: ``pack`` (weight -> packed weight) and
    the Linear forms that compute on it (``PACKED`` or ``PANELS``)."""

    pack: Callable[[torch.Tensor], torch.Tensor]
    ops: PackedLinears | PanelLinears


class PackedBlocks(NamedTuple):
    """The L blocks of an iteration with their Linear weights packed, and the forms that use them."""

    blocks: list[BlockParams]
    ops: PackedLinears | PanelLinears


def layout_for(rows: int) -> PackedLayout | None:
    """The faster packed layout for ``rows`` rows, or None where this PyTorch and CPU have
    neither."""
    if rows <= PANEL_ROWS_MAX and panel_linear.available():
        return PackedLayout(panel_linear.pack_panels, PANELS)
    if onednn_available():
        return PackedLayout(torch.ops.mkldnn._reorder_linear_weight, PACKED)
    return None


def packed_blocks(stream: WeightStream, noff: bool, rows: int) -> PackedBlocks | None:
    """The L blocks of every iteration packed for GEMMs of ``rows`` rows, with the Linear
    forms that compute on them, when they can be: float32 weights on the CPU that stay the
    same from one iteration to the next (not ``--const-reset``) and a packed layout
    (``layout_for``). None otherwise (the caller then uses ``stream.block`` and
    ``model.DENSE``).

    Where the stream owns its block weights (``WeightStream.owns_blocks``) they are handed
    over and packed in place (``sole_copy``), all four Linears whatever ``noff``, and that
    copy is returned for every later call. Otherwise they are packed into a copy, once per
    stream, ``noff`` (which leaves the unused MLP weights as they are) and layout, when it
    fits in half the free memory, and kept while the stream lives, so every engine of one set
    of weights shares it."""
    if stream in _SOLE_COPY:
        return _SOLE_COPY[stream]
    layout = layout_for(rows)
    usable = stream.wte.device.type == "cpu" and stream.wte.dtype == torch.float32 and not stream.const_reset
    if not usable or layout is None:
        return None
    pack, ops = layout
    if stream.owns_blocks:
        _SOLE_COPY[stream] = PackedBlocks(sole_copy(stream, pack), ops)
        return _SOLE_COPY[stream]
    names = ATTENTION_NAMES if noff else ATTENTION_NAMES + MLP_NAMES
    packed = _PACKED_BY_STREAM.setdefault(stream, {})
    key = (noff, pack)
    if key not in packed:
        first = stream.block(0)
        copy_bytes = stream.cfg.n_layer * sum(getattr(first, name).nbytes for name in names)
        if copy_bytes > available_memory(torch.device("cpu")) // 2:
            return None
        packed[key] = [pack_block(stream.block(layer), names, pack) for layer in range(stream.cfg.n_layer)]
    return PackedBlocks(packed[key], ops)


def sole_copy(stream: WeightStream, pack) -> list[BlockParams]:
    """Every block of ``stream`` handed over (``give_block``) and packed by ``pack``: oneDNN's
    layout one block at a time (oneDNN threads each reorder itself), each canonical weight
    freed as soon as its block is packed; panels in place, all blocks on
    ``torch.get_num_threads()`` threads (the C++ packing releases the GIL), once handed over
    (which draws a ``--random-init`` redraw, on torch's own threads)."""
    names = ATTENTION_NAMES + MLP_NAMES
    if pack is not panel_linear.pack_panels:
        return [pack_block(stream.give_block(layer), names, pack) for layer in range(stream.cfg.n_layer)]
    given = [stream.give_block(layer) for layer in range(stream.cfg.n_layer)]
    in_place = functools.partial(panel_linear.pack_panels, in_place=True)
    with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
        return list(pool.map(lambda params: pack_block(params, names, in_place), given))


def suiting_rows(packed: PackedBlocks | None, rows: int) -> PackedBlocks | None:
    """``packed`` (what ``packed_blocks`` returned) where its layout serves GEMMs of ``rows``
    rows well (``ops.max_rows``: panels up to PANEL_ROWS_MAX rows, oneDNN's layout any),
    else None."""
    if packed is not None and rows > packed.ops.max_rows:
        return None
    return packed


def step_block(stream: WeightStream, packed: PackedBlocks | None, step: int) -> tuple[BlockParams, object]:
    """The weights of step ``step`` and the Linear forms that use them: from ``packed`` (what
    ``packed_blocks`` returned) where it is not None, else from the stream's sole packed copy
    where it has one (it serves every row count), else ``stream.block(step)`` and
    ``model.DENSE``."""
    if packed is None:
        packed = _SOLE_COPY.get(stream)
    if packed is None:
        return stream.block(step), DENSE
    blocks, ops = packed
    return blocks[step % stream.cfg.n_layer], ops
