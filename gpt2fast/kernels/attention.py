"""Causal multi-head attention over right-padded prompts, and its one-query decode step.

Head dim D = 64, H heads, C = H·D. ``causal_attention``: qkv [P, T, 3C] (c_attn output; head h
reads q, k, v at columns h·D, C + h·D, 2C + h·D), lengths [P] int64 (T_p = lengths[p], clamped to
[0, T] in the kernel), out [P, T, C]:

    out[p, t, h·D : h·D+D] = Σ_{s ≤ t} softmax_s(q_t · k_s / sqrt(D)) v_s     for t < T_p,
    out[p, t, :] = 0                                                          for t ≥ T_p,

i.e. F.scaled_dot_product_attention(is_causal=True) on rows t < T_p; qkv rows t ≥ T_p are never
read (NaN padding cannot reach out). One launch, grid (⌈T/BLOCK_M⌉, P·H): program (m, p·H + h)
runs a flash-attention online softmax over key blocks 0 .. min(end of query block m, T_p), both
products ``tl.dot`` (IEEE fp32 by default, ``precision``); tiles from ``causal_config``: T ≤ 128
16×32 with 4 warps, else 64×32 with 8 warps (BLOCK_M query rows × BLOCK_N keys).

``decode_attention``: q [H, D], cache_k / cache_v [H, capacity, D] holding positions 0 .. length-1
(the new token's at length-1), out [H, D]: out[h] = Σ_{s<length} softmax_s(q_h·k_hs/sqrt(D)) v_hs.
Program (s, h) of the split kernel covers ``keys_per_split`` keys (``decode_split``: whole
DECODE_BLOCK_N tiles, ≤ MAX_SPLITS ranges) and writes o_s [D], m_s, l_s; the combine, grid (H,),
gives out[h] = Σ_s w_s o_s / Σ_s w_s, w_s = l_s·exp(m_s − max_s m_s), in split order (one split
writes out directly). Products: fp32 multiply-and-sum (``precision`` unused); rows ≥ length unread.
bfloat16: all tensors may be bf16, read into fp32, both causal products TF32 (q·kᵀ exact), out
rounded once. References: ``causal_attention_reference``, ``decode_attention_reference`` (SDPA).
Why: bench/RESULTS.md, "Kernel design notes moved from module docstrings (issue 16, 2026-11-30)".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..model import merge_heads, split_heads
from .dependent_launch import launch_options, pdl
from ..config import HEAD_DIM
from .checks import STORAGE_DTYPES, check_grid_axis, check_one_device, check_precision

SMALL_T = 128  # prompts up to this many tokens use the small-tile configuration
CAUSAL_CONFIGS = {  # name -> (BLOCK_M, BLOCK_N, num_warps)
    "short": (16, 32, 4),
    "long": (64, 32, 8),
}
DECODE_BLOCK_N = 64  # keys per tile in decode_attention: a 16 kB key tile with 4 warps
DECODE_NUM_WARPS = 4
MAX_SPLITS = 16  # key ranges per head in decode_attention (the combine reads them all at once)
COMBINE_NUM_WARPS = 1


@triton.jit
def causal_attention_kernel(qkv_ptr, lengths_ptr, out_ptr, length, n_head, scale,
                            HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            INPUT_PRECISION: tl.constexpr, PDL: tl.constexpr = False):
    """One (query block, prompt·head) tile of causal attention; see the module docstring.

    qkv_ptr: [P, length, 3·n_head·HEAD_DIM]; lengths_ptr: *i64 [P];
    out_ptr: [P, length, n_head·HEAD_DIM] (both *fp32 or both *bf16); scale: 1/sqrt(HEAD_DIM).
    PDL: launched as a programmatic dependent launch (``dependent_launch``).
    """
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    block_m = tl.program_id(0)
    prompt = tl.program_id(1) // n_head
    head = tl.program_id(1) % n_head
    width = n_head * HEAD_DIM
    prompt_length = tl.maximum(tl.minimum(tl.load(lengths_ptr + prompt), length), 0).to(tl.int32)

    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    real_rows = rows < prompt_length
    q_base = qkv_ptr + prompt.to(tl.int64) * length * 3 * width + head * HEAD_DIM
    q = tl.load(q_base + rows[:, None] * 3 * width + dims[None, :], mask=real_rows[:, None], other=0.0)
    q = q.to(tl.float32) * scale
    k_base = q_base + width
    v_base = q_base + 2 * width

    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    key_end = tl.where(block_m * BLOCK_M < prompt_length,
                       tl.minimum((block_m + 1) * BLOCK_M, prompt_length), 0)
    for start in range(0, key_end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        real_keys = keys < key_end
        k_t = tl.load(k_base + keys[None, :] * 3 * width + dims[:, None], mask=real_keys[None, :], other=0.0)
        k_t = k_t.to(tl.float32)
        scores = tl.dot(q, k_t, input_precision=INPUT_PRECISION)
        visible = real_keys[None, :] & (keys[None, :] <= rows[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        weights = tl.exp(scores - new_max[:, None])
        rescale = tl.exp(row_max - new_max)
        v = tl.load(v_base + keys[:, None] * 3 * width + dims[None, :], mask=real_keys[:, None], other=0.0)
        v = v.to(tl.float32)
        acc = acc * rescale[:, None] + tl.dot(weights, v, input_precision=INPUT_PRECISION)
        row_sum = row_sum * rescale + tl.sum(weights, axis=1)
        row_max = new_max

    row_sum = tl.where(real_rows, row_sum, 1.0)
    result = tl.where(real_rows[:, None], acc / row_sum[:, None], 0.0)
    out_base = out_ptr + prompt.to(tl.int64) * length * width + head * HEAD_DIM
    tl.store(out_base + rows[:, None] * width + dims[None, :], result.to(out_ptr.dtype.element_ty),
             mask=(rows < length)[:, None])


def product_precision(dtype: torch.dtype, precision: str) -> str:
    """``tl.dot``'s input precision: ``precision`` for float32, TF32 (exact) for bf16 values."""
    return "tf32" if dtype == torch.bfloat16 else precision


def causal_config(length: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for prompts padded to ``length`` tokens."""
    return CAUSAL_CONFIGS["short" if length <= SMALL_T else "long"]


def causal_attention(qkv: torch.Tensor, lengths: torch.Tensor, out: torch.Tensor, *,
                     n_head: int, precision: str = "ieee") -> torch.Tensor:
    """Causal attention of every prompt and head in one launch; writes and returns ``out``.

    qkv [P, T, 3C] contiguous (c_attn output), lengths [P] int64 (T_p; values are clamped
    to [0, T]), out [P, T, C] contiguous of qkv's dtype (float32, or bfloat16: then the
    products are TF32 whatever ``precision`` says), all on one device; C = n_head·64.
    Rows t < T_p hold the attention output, rows t ≥ T_p zeros.
    """
    check_precision(precision)
    if qkv.dim() != 3 or qkv.dtype not in STORAGE_DTYPES or not qkv.is_contiguous():
        raise ValueError(f"qkv must be a contiguous float32 or bfloat16 [P, T, 3C], got {qkv.dtype} {tuple(qkv.shape)}")
    n_prompts, length, three_width = qkv.shape
    if n_head <= 0 or three_width != 3 * n_head * HEAD_DIM:
        raise ValueError(f"qkv's last axis must be 3·n_head·{HEAD_DIM} = {3 * n_head * HEAD_DIM}, got {three_width}")
    if lengths.shape != (n_prompts,) or lengths.dtype != torch.int64:
        raise ValueError(f"lengths must be int64 [{n_prompts}], got {lengths.dtype} {tuple(lengths.shape)}")
    width = n_head * HEAD_DIM
    if out.shape != (n_prompts, length, width) or out.dtype != qkv.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {qkv.dtype} {(n_prompts, length, width)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    check_one_device("qkv, lengths and out", qkv, lengths, out)
    check_grid_axis("P·n_head", n_prompts * n_head)
    if n_prompts and length:
        block_m, block_n, num_warps = causal_config(length)
        grid = (triton.cdiv(length, block_m), n_prompts * n_head)
        causal_attention_kernel[grid](qkv, lengths, out, length, n_head, 1.0 / math.sqrt(HEAD_DIM),
                                      HEAD_DIM=HEAD_DIM, BLOCK_M=block_m, BLOCK_N=block_n,
                                      INPUT_PRECISION=product_precision(qkv.dtype, precision),
                                      PDL=pdl(qkv.device), num_warps=num_warps, **launch_options(qkv.device))
    return out


def causal_attention_reference(qkv: torch.Tensor, lengths: torch.Tensor, *, n_head: int) -> torch.Tensor:
    """What ``causal_attention`` writes, with SDPA as ``gpt2fast.model.block`` calls it:
    qkv [P, T, 3C], lengths [P] int64 -> [P, T, C], rows t ≥ lengths[p] zero."""
    q, k, v = split_heads(qkv, n_head)
    out = merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))
    positions = torch.arange(qkv.shape[1], device=qkv.device)
    return out.masked_fill((positions[None, :] >= lengths[:, None])[..., None], 0.0)


@triton.jit(do_not_specialize=["length", "keys_per_split"])
def decode_attention_split_kernel(q_ptr, cache_k_ptr, cache_v_ptr, partial_ptr, stats_ptr,
                                  length, capacity, keys_per_split, n_splits, scale,
                                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Softmax-attention of one head's query over one key range; program (split, head).

    q_ptr: [H, HEAD_DIM]; cache_k_ptr, cache_v_ptr: [H, capacity, HEAD_DIM] (all *fp32 or all
    *bf16); partial_ptr: [H, n_splits, HEAD_DIM] gets the range's normalised output (*fp32, or
    the output itself when n_splits = 1);
    stats_ptr: *fp32 [2, H, n_splits] gets its row maximum (stats[0]) and row sum (stats[1]).
    Keys split·keys_per_split .. min(+keys_per_split, length) - 1; each range is non-empty.
    """
    split = tl.program_id(0)
    head = tl.program_id(1)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + head * HEAD_DIM + dims).to(tl.float32) * scale
    k_base = cache_k_ptr + head.to(tl.int64) * capacity * HEAD_DIM
    v_base = cache_v_ptr + head.to(tl.int64) * capacity * HEAD_DIM

    row_max = tl.full((), float("-inf"), tl.float32)
    row_sum = tl.zeros((), tl.float32)
    acc = tl.zeros((HEAD_DIM,), tl.float32)
    first = split * keys_per_split
    end = tl.minimum(first + keys_per_split, length)
    for start in range(first, end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        real_keys = keys < end
        k = tl.load(k_base + keys[:, None] * HEAD_DIM + dims[None, :], mask=real_keys[:, None], other=0.0)
        v = tl.load(v_base + keys[:, None] * HEAD_DIM + dims[None, :], mask=real_keys[:, None], other=0.0)
        k, v = k.to(tl.float32), v.to(tl.float32)
        scores = tl.where(real_keys, tl.sum(k * q[None, :], axis=1), float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=0))
        weights = tl.exp(scores - new_max)
        rescale = tl.exp(row_max - new_max)
        acc = acc * rescale + tl.sum(weights[:, None] * v, axis=0)
        row_sum = row_sum * rescale + tl.sum(weights, axis=0)
        row_max = new_max

    slot = head * n_splits + split
    tl.store(partial_ptr + slot * HEAD_DIM + dims, (acc / row_sum).to(partial_ptr.dtype.element_ty))
    tl.store(stats_ptr + slot, row_max)
    tl.store(stats_ptr + tl.num_programs(1) * n_splits + slot, row_sum)


@triton.jit
def decode_attention_combine_kernel(partial_ptr, stats_ptr, out_ptr, n_splits,
                                    HEAD_DIM: tl.constexpr, MAX_SPLITS: tl.constexpr):
    """out[h] = Σ_s w_s o_s / Σ_s w_s with w_s = l_s·exp(m_s - max m); program h.

    partial_ptr: *fp32 [H, n_splits, HEAD_DIM] (o_s); stats_ptr: *fp32 [2, H, n_splits]
    (m_s, l_s); out_ptr: *fp32 or *bf16 [H, HEAD_DIM]; n_splits ≤ MAX_SPLITS.
    """
    head = tl.program_id(0)
    splits = tl.arange(0, MAX_SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    real = splits < n_splits
    slots = head * n_splits + splits
    split_max = tl.load(stats_ptr + slots, mask=real, other=float("-inf"))
    split_sum = tl.load(stats_ptr + tl.num_programs(0) * n_splits + slots, mask=real, other=0.0)
    partial = tl.load(partial_ptr + slots[:, None] * HEAD_DIM + dims[None, :], mask=real[:, None], other=0.0)
    weights = split_sum * tl.exp(split_max - tl.max(split_max, axis=0))
    out = tl.sum(weights[:, None] * partial, axis=0) / tl.sum(weights, axis=0)
    tl.store(out_ptr + head * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))


def decode_split(length: int) -> tuple[int, int]:
    """(n_splits, keys_per_split) for ``length`` cached positions: ranges of whole
    DECODE_BLOCK_N tiles, as many as MAX_SPLITS allows, none empty."""
    tiles = triton.cdiv(length, DECODE_BLOCK_N)
    keys_per_split = triton.cdiv(tiles, min(tiles, MAX_SPLITS)) * DECODE_BLOCK_N
    return triton.cdiv(length, keys_per_split), keys_per_split


def decode_attention(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, length: int,
                     out: torch.Tensor, *, precision: str = "ieee") -> torch.Tensor:
    """One new token's attention over a key/value cache; writes and returns ``out``.

    q [H, 64], cache_k and cache_v [H, capacity, 64], out [H, 64]: all float32 or all
    bfloat16, contiguous, one device; 1 ≤ length ≤ capacity. ``precision`` is accepted for
    a uniform interface: the one-row products run in IEEE fp32 in every mode.
    """
    check_precision(precision)
    if q.dim() != 2 or q.shape[1] != HEAD_DIM:
        raise ValueError(f"q must be [H, {HEAD_DIM}], got {tuple(q.shape)}")
    n_head = q.shape[0]
    if cache_k.dim() != 3 or cache_k.shape[0] != n_head or cache_k.shape[2] != HEAD_DIM \
            or cache_v.shape != cache_k.shape:
        raise ValueError(f"cache_k and cache_v must both be [{n_head}, capacity, {HEAD_DIM}], "
                         f"got {tuple(cache_k.shape)} and {tuple(cache_v.shape)}")
    if out.shape != q.shape:
        raise ValueError(f"out must be {tuple(q.shape)}, got {tuple(out.shape)}")
    tensors = (q, cache_k, cache_v, out)
    if q.dtype not in STORAGE_DTYPES or any(t.dtype != q.dtype or not t.is_contiguous() for t in tensors):
        raise ValueError("q, cache_k, cache_v and out must be contiguous, all float32 or all bfloat16")
    check_one_device("q, cache_k, cache_v and out", *tensors)
    capacity = cache_k.shape[1]
    if not 1 <= length <= capacity:
        raise ValueError(f"length must be in [1, {capacity}] (the cache capacity), got {length}")
    if n_head == 0:
        return out
    n_splits, keys_per_split = decode_split(length)
    partial = out if n_splits == 1 else torch.empty((n_head, n_splits, HEAD_DIM), dtype=torch.float32, device=q.device)
    stats = torch.empty((2, n_head, n_splits), dtype=torch.float32, device=q.device)
    decode_attention_split_kernel[(n_splits, n_head)](
        q, cache_k, cache_v, partial, stats, length, capacity, keys_per_split, n_splits,
        1.0 / math.sqrt(HEAD_DIM), HEAD_DIM=HEAD_DIM, BLOCK_N=DECODE_BLOCK_N, num_warps=DECODE_NUM_WARPS)
    if n_splits > 1:
        decode_attention_combine_kernel[(n_head,)](partial, stats, out, n_splits, HEAD_DIM=HEAD_DIM,
                                                   MAX_SPLITS=MAX_SPLITS, num_warps=COMBINE_NUM_WARPS)
    return out


def decode_attention_reference(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                               length: int) -> torch.Tensor:
    """What ``decode_attention`` writes, with SDPA as ``gpt2fast.model.cached_block`` calls it
    for one new token: q [H, D], cache_k/cache_v [H, capacity, D] -> [H, D]."""
    attended = F.scaled_dot_product_attention(q[None, :, None], cache_k[None, :, :length], cache_v[None, :, :length])
    return attended[0, :, 0]
