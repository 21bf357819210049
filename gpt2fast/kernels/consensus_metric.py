"""The consensus metric after every block of an iteration, for all layers and prompts at once,
in three or four launches.

With y = ln_f(x) (LayerNorm, eps 1e-5, affine w, b [C]) and unit rows ŷ_t = y_t / ||y_t||,
per layer l and prompt p of T_p tokens (right-padded to a common T, 1 <= T_p <= T):

    G = Ŷ Ŷᵀ                                    [T_p, T_p] cosine similarities
    err[p, l, 0] = (1 / T_p)  Σ_{t < T_p} |G[0, t]|
    err[p, l, 1] = (1 / T_p²) Σ_{s, t < T_p} G[s, t]

and G is NaN outside the T_p × T_p block of its [T, T] slot. x is [L, P, T, C] (the states
after each of L blocks); each (layer, prompt) pair is a slot l·P + p. The pipeline:

1. ``unit_rows_kernel``, grid (T, L·P): one row per program, LayerNorm then ŷ_t into a float32
   scratch [L, P, T, C] (padded rows t >= T_p are neither read nor written);
2. ``gram_tiles_kernel``, grid (T / BT, T / BT, L·P·S): one BT × BT tile of G per program, a
   K loop of ``tl.dot`` over its slice of C; writes the tile (NaN outside the block) and two
   partial sums per tile (|G[0, t]| over the tile's part of row 0, and all valid entries of
   the tile) to a float32 scratch [L·P, tiles, 2]; tiles wholly outside the block skip the K
   loop. With S > 1 slices (``gram_splits``: few slots at small T, where a few programs would
   each walk all of C one dependent step at a time) each program stores its slice's partial
   tile to a scratch [L·P, S, T', T'] instead, and ``gram_combine_kernel``, grid (T / BT,
   T / BT, L·P), sums the S partials in slice order before the same epilogue;
3. ``finalize_kernel``, grid (L·P,): sums each slot's partials in a fixed order and divides.

No atomics anywhere, so the result is bitwise deterministic; nothing reads lengths on the
host, so the pipeline needs no host sync and can be captured in a CUDA graph. The two
scratch buffers are allocated by the launcher with ``torch.empty`` (the caching allocator,
or the graph's private pool under capture).

Configurations are picked by plain heuristics (``gram_block`` on T, ``BLOCK_C`` the next
power of two of C), not ``triton.autotune``: autotuning would launch benchmark runs inside
CUDA-graph capture and cannot run under the interpreter. Every configuration the launcher
can pick for GPT-2 sizes is in the tests' AOT specs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..metrics import consensus_metrics
from ..model import LAYERNORM_EPS
from .checks import STORAGE_DTYPES, check_grid_axis, check_one_device, check_precision

MAX_C = 2048
FINALIZE_BLOCK = 256  # partial sums per finalize step: all tiles of T = 1024 in one step
COMBINE_WARPS = 4
TARGET_GRAM_PROGRAMS = 128  # split C until the Gram launch has about this many programs
MIN_SLICE = 128  # ... with slices of C at least this wide
MAX_SPLIT_BT = 32  # only tiles up to this size split (the split 64 x 64 build spills on sm_80)


@dataclass(frozen=True)
class GramConfig:
    """Tiling of ``gram_tiles_kernel``: square BT × BT tiles of G, a K step of BK columns of C.

    An fp32 "ieee" ``tl.dot`` runs on the FMA units and holds each thread's rows and columns
    of the K step in registers, so BK shrinks as BT grows: every config compiles without
    spills for sm_80 and sm_90 (at most 128 registers), tf32 and tf32x3 included."""

    block_t: int
    block_k: int
    num_warps: int


GRAM_CONFIGS = (GramConfig(16, 32, 4), GramConfig(32, 32, 8), GramConfig(64, 16, 16))


def gram_block(length: int) -> GramConfig:
    """The Gram tiling for T = ``length``: at most 16 tiles per prompt up to T = 64 (small T
    is latency-bound, so spread it), 64 tiles up to T = 256, 64 × 64 tiles beyond."""
    if length <= 64:
        return GRAM_CONFIGS[0]
    if length <= 256:
        return GRAM_CONFIGS[1]
    return GRAM_CONFIGS[2]


def gram_splits(n_prompts: int, n_blocks: int, width: int, config: GramConfig) -> tuple[int, int]:
    """(S, k_per_slice): slices of C, each a multiple of BK and at least MIN_SLICE wide,
    until the Gram launch has about TARGET_GRAM_PROGRAMS programs (one slice for tiles
    larger than MAX_SPLIT_BT)."""
    block_k = config.block_k
    if config.block_t > MAX_SPLIT_BT:
        return 1, triton.cdiv(width, block_k) * block_k
    programs = n_prompts * n_blocks * n_blocks
    wanted = max(1, min(triton.cdiv(TARGET_GRAM_PROGRAMS, programs), width // MIN_SLICE))
    k_per_slice = triton.cdiv(triton.cdiv(width, wanted), block_k) * block_k
    return triton.cdiv(width, k_per_slice), k_per_slice


def unit_rows_warps(block_c: int) -> int:
    """Warps of ``unit_rows_kernel`` for a row block of ``block_c``: 8 elements per thread
    from C = 1024 up, capped at 8 warps."""
    return min(max(block_c // 256, 1), 8)


@triton.jit
def unit_rows_kernel(x_ptr, w_ptr, b_ptr, lengths_ptr, unit_ptr, P, T, C, eps, BLOCK_C: tl.constexpr):
    """unit[l, p, t] = ŷ_t of LayerNorm(x[l, p, t]) for t < lengths[p], program (t, l·P + p).

    x: *fp32 or *bf16 [L, P, T, C] contiguous; w, b: [C] (same dtype); lengths: *i64 [P];
    unit: *fp32 [L, P, T, C] contiguous. Arithmetic in float32.
    """
    t = tl.program_id(0)
    slot = tl.program_id(1)
    if t < tl.load(lengths_ptr + slot % P):
        row = (slot.to(tl.int64) * T + t) * C
        c = tl.arange(0, BLOCK_C)
        in_row = c < C
        x = tl.load(x_ptr + row + c, mask=in_row, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / C
        centred = tl.where(in_row, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / C + eps)
        w = tl.load(w_ptr + c, mask=in_row, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=in_row, other=0.0).to(tl.float32)
        y = tl.where(in_row, centred * rstd * w + b, 0.0)
        tl.store(unit_ptr + row + c, y / tl.sqrt(tl.sum(y * y, axis=0)), mask=in_row)


@triton.jit
def finish_gram_tile(acc, s, t, length, T, tile, slot_ptr, partial_ptr, stride_gs, stride_gt,
                     WRITE_GRAM: tl.constexpr):
    """Store the finished tile acc = G[s, t] (NaN outside the prompt's block) into the slot's
    [T, T] matrix at ``slot_ptr`` and the tile's two sums into partial[tile]."""
    s_valid = s < length
    t_valid = t < length
    pair = s_valid[:, None] & t_valid[None, :]
    if WRITE_GRAM:
        in_slot = (s < T)[:, None] & (t < T)[None, :]
        out = slot_ptr + s[:, None] * stride_gs + t[None, :] * stride_gt
        tl.store(out, tl.where(pair, acc, float("nan")), mask=in_slot)
    first_row = tl.sum(tl.sum(tl.where(pair & (s == 0)[:, None], tl.abs(acc), 0.0), axis=1), axis=0)
    whole = tl.sum(tl.sum(tl.where(pair, acc, 0.0), axis=1), axis=0)
    tl.store(partial_ptr + 2 * tile, first_row)
    tl.store(partial_ptr + 2 * tile + 1, whole)


@triton.jit
def slot_gram(gram_ptr, slot, P, stride_gp, stride_gl):
    """The [T, T] matrix of slot l·P + p in gram [P, L, T, T] with strides (stride_gp, stride_gl, ..)."""
    return gram_ptr + (slot % P).to(tl.int64) * stride_gp + (slot // P).to(tl.int64) * stride_gl


@triton.jit
def gram_tiles_kernel(unit_ptr, lengths_ptr, gram_ptr, partial_ptr, slices_ptr, P, T, C, k_per_slice,
                      stride_gp, stride_gl, stride_gs, stride_gt,
                      WRITE_GRAM: tl.constexpr, SPLIT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      PRECISION: tl.constexpr):
    """Tile (s-block, t-block) of G = Ŷ Ŷᵀ for slot l·P + p (layer l, prompt p) over one slice of C.

    unit: *fp32 [L, P, T, C] contiguous (rows t < lengths[p] hold ŷ_t); lengths: *i64 [P];
    program_id(2) = slot·S + slice, columns slice·k_per_slice .. + k_per_slice.
    Without SPLIT (S = 1): the finished tile goes to gram: *fp32 [P, L, T, T] with strides
    (stride_gp, stride_gl, stride_gs, stride_gt), written only when WRITE_GRAM, and its sums
    to partial: *fp32 [L·P, tiles, 2], tile = s_block · n_blocks + t_block: [.., 0] = Σ |G[0, t]|
    over the tile's valid part of row 0, [.., 1] = Σ of its valid entries. With SPLIT the
    raw slice tile goes to slices: *fp32 [L·P, S, n_blocks·BT, n_blocks·BT] instead.
    """
    t_block = tl.program_id(0)
    s_block = tl.program_id(1)
    n_blocks = tl.num_programs(0)
    n_slices = tl.cdiv(C, k_per_slice)
    slot = tl.program_id(2) // n_slices
    piece = tl.program_id(2) - slot * n_slices
    layer = slot // P
    prompt_index = slot - layer * P
    length = tl.load(lengths_ptr + prompt_index).to(tl.int32)
    s = s_block * BT + tl.arange(0, BT)
    t = t_block * BT + tl.arange(0, BT)
    s_valid = s < length
    t_valid = t < length
    prompt = unit_ptr + slot.to(tl.int64) * T * C
    k = tl.arange(0, BK)
    live = (s_block * BT < length) & (t_block * BT < length)
    k_start = piece * k_per_slice
    k_end = tl.where(live, tl.minimum(k_start + k_per_slice, C), k_start)
    # where the epilogue writes, worked out before the loop (no slot index lives through it)
    tile = (slot.to(tl.int64) * tl.num_programs(1) + s_block) * n_blocks + t_block
    side = n_blocks * BT
    out_ptr = (slices_ptr + (slot.to(tl.int64) * n_slices + piece) * side * side if SPLIT
               else gram_ptr + prompt_index.to(tl.int64) * stride_gp + layer.to(tl.int64) * stride_gl)
    acc = tl.zeros((BT, BT), dtype=tl.float32)
    for k0 in range(k_start, k_end, BK):
        in_k = k0 + k < k_end
        a = tl.load(prompt + s[:, None] * C + (k0 + k)[None, :],
                    mask=s_valid[:, None] & in_k[None, :], other=0.0)
        b = tl.load(prompt + t[None, :] * C + (k0 + k)[:, None],
                    mask=t_valid[None, :] & in_k[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if SPLIT:
        tl.store(out_ptr + s[:, None] * side + t[None, :], acc)
    else:
        finish_gram_tile(acc, s, t, length, T, tile, out_ptr, partial_ptr, stride_gs, stride_gt, WRITE_GRAM)


@triton.jit
def gram_combine_kernel(slices_ptr, lengths_ptr, gram_ptr, partial_ptr, P, T, n_slices,
                        stride_gp, stride_gl, stride_gs, stride_gt, WRITE_GRAM: tl.constexpr, BT: tl.constexpr):
    """Tile (s-block, t-block) of slot l·P + p: Σ over the slices of C in order, then the
    epilogue of ``gram_tiles_kernel``. slices: *fp32 [L·P, n_slices, n_blocks·BT, n_blocks·BT]."""
    t_block = tl.program_id(0)
    s_block = tl.program_id(1)
    slot = tl.program_id(2)
    n_blocks = tl.num_programs(0)
    side = n_blocks * BT
    s = s_block * BT + tl.arange(0, BT)
    t = t_block * BT + tl.arange(0, BT)
    base = slices_ptr + slot.to(tl.int64) * n_slices * side * side + s[:, None] * side + t[None, :]
    acc = tl.zeros((BT, BT), dtype=tl.float32)
    for piece in range(0, n_slices):
        acc += tl.load(base + piece * side * side)
    length = tl.load(lengths_ptr + slot % P).to(tl.int32)
    tile = (slot.to(tl.int64) * tl.num_programs(1) + s_block) * n_blocks + t_block
    finish_gram_tile(acc, s, t, length, T, tile, slot_gram(gram_ptr, slot, P, stride_gp, stride_gl),
                     partial_ptr, stride_gs, stride_gt, WRITE_GRAM)


@triton.jit
def finalize_kernel(partial_ptr, lengths_ptr, err_ptr, P, n_tiles, stride_ep, stride_el, stride_ek,
                    BLOCK: tl.constexpr):
    """err[p, l] = (Σ partial[slot, :, 0] / T_p, Σ partial[slot, :, 1] / T_p²) for slot l·P + p
    = program_id(0), summed in a fixed order.

    partial: *fp32 [L·P, n_tiles, 2] contiguous; lengths: *i64 [P]; err: *fp32 [P, L, 2] with
    strides (stride_ep, stride_el, stride_ek).
    """
    slot = tl.program_id(0)
    partials = partial_ptr + slot.to(tl.int64) * n_tiles * 2
    first_row = tl.zeros((BLOCK,), dtype=tl.float32)
    whole = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_tiles, BLOCK):
        tile = start + tl.arange(0, BLOCK)
        in_range = tile < n_tiles
        first_row += tl.load(partials + 2 * tile, mask=in_range, other=0.0)
        whole += tl.load(partials + 2 * tile + 1, mask=in_range, other=0.0)
    count = tl.load(lengths_ptr + slot % P).to(tl.float32)
    out = err_ptr + (slot % P).to(tl.int64) * stride_ep + (slot // P).to(tl.int64) * stride_el
    tl.store(out, tl.sum(first_row, axis=0) / count)
    tl.store(out + stride_ek, tl.sum(whole, axis=0) / (count * count))


def _layered(x: torch.Tensor, err_out: torch.Tensor, gram_out: torch.Tensor | None):
    """x [L, P, T, C], err_out [P, L, 2], gram_out [P, L, T, T] of either accepted form (a 3-D
    x is one layer, with err_out [P, 2] and gram_out [P, T, T])."""
    if x.dim() != 3:
        return x, err_out, gram_out
    if err_out.dim() != 2 or (gram_out is not None and gram_out.dim() != 3):
        raise ValueError(f"x [P, T, C] takes err_out [P, 2] and gram_out [P, T, T], got err_out "
                         f"{tuple(err_out.shape)} and gram_out {None if gram_out is None else tuple(gram_out.shape)}")
    return x[None], err_out[:, None], None if gram_out is None else gram_out[:, None]


def _check(x: torch.Tensor, ln_f_w: torch.Tensor, ln_f_b: torch.Tensor, lengths: torch.Tensor,
           err_out: torch.Tensor, gram_out: torch.Tensor | None, precision: str) -> None:
    if x.dim() != 4 or x.dtype not in STORAGE_DTYPES or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous float32 or bfloat16 [P, T, C] or [L, P, T, C] tensor, "
                         f"got {x.dtype} {tuple(x.shape)}")
    layers, n_prompts, length, width = x.shape
    if width > MAX_C:
        raise ValueError(f"C = {width} exceeds the largest supported width {MAX_C}")
    for name, vector in (("ln_f_w", ln_f_w), ("ln_f_b", ln_f_b)):
        if vector.shape != (width,) or vector.dtype != x.dtype or not vector.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {x.dtype} [{width}] vector, "
                             f"got {vector.dtype} {tuple(vector.shape)}")
    if lengths.shape != (n_prompts,) or lengths.dtype != torch.int64 or not lengths.is_contiguous():
        raise ValueError(f"lengths must be a contiguous int64 [{n_prompts}] vector, "
                         f"got {lengths.dtype} {tuple(lengths.shape)}")
    if err_out.shape != (n_prompts, layers, 2) or err_out.dtype != torch.float32:
        raise ValueError(f"err_out must be a float32 [{n_prompts}, {layers}, 2] tensor "
                         f"([{n_prompts}, 2] for one layer), got {err_out.dtype} {tuple(err_out.shape)}")
    if gram_out is not None and (gram_out.shape != (n_prompts, layers, length, length)
                                 or gram_out.dtype != torch.float32):
        raise ValueError(f"gram_out must be a float32 [{n_prompts}, {layers}, {length}, {length}] tensor "
                         f"(no layer axis for one layer), got {gram_out.dtype} {tuple(gram_out.shape)}")
    tensors = [x, ln_f_w, ln_f_b, lengths, err_out] + ([] if gram_out is None else [gram_out])
    check_one_device("x, ln_f_w, ln_f_b, lengths, err_out and gram_out", *tensors)
    check_precision(precision)


def consensus_metric(x: torch.Tensor, ln_f_w: torch.Tensor, ln_f_b: torch.Tensor,
                     lengths: torch.Tensor, err_out: torch.Tensor, gram_out: torch.Tensor | None,
                     *, precision: str = "ieee") -> None:
    """Write the consensus metric of every layer's x into err_out (and G into gram_out).

    x [L, P, T, C] (the states after L blocks) or [P, T, C] (one), contiguous float32 or
    bfloat16, C <= 2048; ln_f_w, ln_f_b [C], x's dtype; lengths [P] int64 with 1 <= T_p <= T
    (not checked: that would need a host sync); err_out [P, L, 2] ([P, 2]) float32, any
    strides (e.g. the driver's ``err_slot[row]``); gram_out None or [P, L, T, T] ([P, T, T])
    float32, any strides, NaN outside each prompt's block. ``precision`` is the ``tl.dot``
    input precision, one of ``checks.PRECISIONS``: "ieee" (exact fp32, default),
    "tf32x3" or "tf32" (~3e-4 relative error in G). Allocates two float32 scratch buffers,
    [L, P, T, C] and [L·P, tiles, 2], and at small T the slices of G [L·P, S, T', T'], with
    ``torch.empty``.
    """
    x, err_out, gram_out = _layered(x, err_out, gram_out)
    _check(x, ln_f_w, ln_f_b, lengths, err_out, gram_out, precision)
    layers, n_prompts, length, width = x.shape
    slots = layers * n_prompts
    if slots == 0:
        return
    config = gram_block(length)
    n_blocks = triton.cdiv(length, config.block_t)
    splits, k_per_slice = gram_splits(slots, n_blocks, width, config)
    check_grid_axis("L·P·S (layers, prompts, slices of C)", slots * splits)
    unit = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    block_c = triton.next_power_of_2(width)
    unit_rows_kernel[(length, slots)](x, ln_f_w, ln_f_b, lengths, unit, n_prompts, length, width, LAYERNORM_EPS,
                                      BLOCK_C=block_c, num_warps=unit_rows_warps(block_c))
    partial = torch.empty(slots, n_blocks * n_blocks, 2, dtype=torch.float32, device=x.device)
    side = n_blocks * config.block_t
    slices = partial if splits == 1 else torch.empty(slots, splits, side, side, dtype=torch.float32, device=x.device)
    gram = partial if gram_out is None else gram_out
    gram_strides = (0, 0, 0, 0) if gram_out is None else gram_out.stride()
    gram_tiles_kernel[(n_blocks, n_blocks, slots * splits)](
        unit, lengths, gram, partial, slices, n_prompts, length, width, k_per_slice, *gram_strides,
        WRITE_GRAM=gram_out is not None, SPLIT=splits > 1, BT=config.block_t, BK=config.block_k,
        PRECISION=precision, num_warps=config.num_warps)
    if splits > 1:
        gram_combine_kernel[(n_blocks, n_blocks, slots)](
            slices, lengths, gram, partial, n_prompts, length, splits, *gram_strides,
            WRITE_GRAM=gram_out is not None, BT=config.block_t, num_warps=COMBINE_WARPS)
    finalize_kernel[(slots,)](partial, lengths, err_out, n_prompts, n_blocks * n_blocks, *err_out.stride(),
                              BLOCK=FINALIZE_BLOCK, num_warps=4)


def consensus_metric_reference(x: torch.Tensor, ln_f_w: torch.Tensor, ln_f_b: torch.Tensor,
                               lengths: torch.Tensor, err_out: torch.Tensor,
                               gram_out: torch.Tensor | None, *, precision: str = "ieee") -> None:
    """``consensus_metric`` in PyTorch (``gpt2fast.metrics.consensus_metrics`` per layer), same
    arguments and outputs; ``precision`` is accepted and ignored (always fp32)."""
    x, err_out, gram_out = _layered(x, err_out, gram_out)
    for layer, states in enumerate(x):
        err, gram = consensus_metrics(states, ln_f_w, ln_f_b, lengths)
        err_out[:, layer].copy_(err)
        if gram_out is not None:
            gram_out[:, layer].copy_(gram)
