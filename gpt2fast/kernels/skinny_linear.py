"""A skinny GEMM on the tensor cores: few rows of x against a large weight, split over K.

    out[m, n] = epilogue(Σ_k x̂[m, k] · W[n, k] + b[n])
    epilogue = identity, tanh-GELU, or + residual[m, n] (out may be residual): ``linear.finish_tile``
    x̂ = x, or with LayerNorm x̂[m, k] = (x[m, k] − μ_m) · rstd_m · γ[k] + β[k], rstd = 1/sqrt(σ² + 1e-5)

x [M, K], W [N, K] (PyTorch Linear layout), b [N], γ, β [K], residual and out [M, N], contiguous;
all float32 (products as ``precision`` says: "tf32x3", "ieee" or "tf32") or all bfloat16 (x̂
rounded to bf16 first); fp32 LayerNorm, accumulation and epilogue, out rounded once. LayerNorm
statistics of an [M, C] matrix: fp32 [⌈C/64⌉, M, 2] (``stats_shape``), (mean, M2 = Σ (y − mean)²)
per row and 64-column tile, written by residual calls (or ``layer_norm_stats``), read by LN calls.

Tiling, swapped operands: program (j, i, s) of the grid (⌈M/BLOCK_M⌉, ⌈N/BLOCK_N⌉, S) multiplies
W[i·BLOCK_N.., k] [BLOCK_N = 64, BLOCK_K] by x[j·BLOCK_M.., k]ᵀ [BLOCK_K, BLOCK_M] (BLOCK_M: M
rounded up to a power of two in [16, 64]; fp32 "ieee": BLOCK_M ≤ 32, BLOCK_K = 16) into an fp32
[BLOCK_N, BLOCK_M] accumulator stored transposed, over K steps [⌊s·B/S⌋, ⌊(s+1)·B/S⌋) of
B = ⌈K/BLOCK_K⌉, pipelined over ``num_stages`` ≥ 3 cp.async buffers. S = 1: bias, epilogue, out.
S > 1: fp32 partial to workspace[s] ([S, M, N]), then a ticket from the tile's int32 counter
(acq_rel atomic after a CTA barrier); the last to arrive sums workspace[0..S−1] in split order
(``split_chunk`` tiles per load), applies the epilogue, writes out, resets the counter to 0:
bitwise reproducible, no finish kernel. sm_90+ (``dependent_launch``): ``prefetch_weights``, then
``gdc_launch_dependents``, ``gdc_wait`` before other accesses. S: ``plan`` (132 SMs on the CPU).
Reference: ``skinny_linear_reference``.
Why: bench/RESULTS.md, "Kernel design notes moved from module docstrings (issue 16, 2026-11-30)".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..model import LAYERNORM_EPS
from .dependent_launch import launch_options, pdl
from .checks import STORAGE_DTYPES, check_precision, check_tensor, overlap
from .linear import _sm_count, block_m, chan_merge, finish_tile

BLOCK_N = 64  # weight rows per tile: wgmma's M (one warpgroup of 4 warps)
BLOCK_K = {torch.float32: 32, torch.bfloat16: 64}  # 8 KB of weights per stage either way
# fp32 "ieee" multiplies on the FMA units, each thread holding its rows and columns of a K
# step in registers: half the K step, and at most 32 token rows per tile (64 spill there)
IEEE_BLOCK_K = 16
IEEE_MAX_BLOCK_M = 32
NUM_WARPS = 4
NUM_STAGES = 4  # 4 stages × 8 KB of weights in flight per program, 2+ programs per SM
PREFETCH_LINES = NUM_STAGES  # 128-byte lines of each weight row prefetched to L2 (PDL): the first stages
PROGRAMS_PER_SM = 2
MIN_SLICE_BLOCKS = 4  # a K slice spans at least this many BLOCK_K steps (a full pipeline)
MAX_SPLIT = 32
WAVE_EFFICIENCY = 0.85  # wanted (``wave_efficiency``): the busiest SM's share of the weights near the mean
# What the last program's reduction and the LayerNorm merge may load at once (fp32 elements
# per program of NUM_WARPS warps): SPLIT_CHUNK partial tiles per BLOCK_M (64 registers a
# thread: 128 spilled fp32 tf32x3 BLOCK_M = 64 on sm_80, whose K loop holds 255, and took
# the BLOCK_M = 32 builds from 115 to 144 registers, 4 programs per SM to 3), LN_TILES
# tiles' (mean, M2) pairs. The partial tiles are separate loads, not one [SPLIT_CHUNK, ..]
# load summed by tl.sum: Triton 3.6 (the GPU machines') built that form at 225 registers
# instead of 149 (fp32 tf32x3, BLOCK_M = 32, sm_90; bench/triton_compat.py).
SPLIT_CHUNK_ELEMENTS = {16: 8192, 32: 8192, 64: 8192}
LN_MERGE_ELEMENTS = 2048
STATS_COLUMNS: tl.constexpr = tl.constexpr(BLOCK_N)  # columns per LayerNorm-statistics tile
EPS: tl.constexpr = tl.constexpr(LAYERNORM_EPS)


@dataclass(frozen=True)
class SkinnyPlan:
    """How one call runs: tiles, K slices and the launch options."""

    block_m: int
    block_n: int
    block_k: int
    splits: int
    num_warps: int = NUM_WARPS
    num_stages: int = NUM_STAGES

    def grid(self, m: int, n: int) -> tuple[int, int, int]:
        """(M tiles, N tiles, S): M tiles fastest, so the programs sharing a weight tile run together."""
        return triton.cdiv(m, self.block_m), triton.cdiv(n, self.block_n), self.splits

    def steps(self, k: int) -> int:
        """K steps of the widest slice: ⌈⌈K/BLOCK_K⌉ / S⌉."""
        return triton.cdiv(triton.cdiv(k, self.block_k), self.splits)

    def tiles(self, m: int, n: int) -> int:
        """Output tiles, i.e. split-K counters a call uses (``ticket_count``)."""
        return triton.cdiv(m, self.block_m) * triton.cdiv(n, self.block_n)


def ticket_count(m: int, n: int) -> int:
    """Split-K tickets (output tiles) of a call with m rows and at most n output columns."""
    return triton.cdiv(m, 16) * triton.cdiv(n, BLOCK_N)  # the smallest BLOCK_M: the most tiles


def wave_efficiency(tiles: int, k_blocks: int, splits: int, sm_count: int) -> float:
    """How full the busiest SM keeps the GPU: the K steps of all programs over sm_count times
    those of the busiest SM, which runs ⌈programs / sm_count⌉ programs of ⌈k_blocks / S⌉ steps
    (1: every SM streams the same share of the weights)."""
    programs = tiles * splits
    return tiles * k_blocks / (sm_count * triton.cdiv(programs, sm_count) * triton.cdiv(k_blocks, splits))


def plan(m: int, n: int, k: int, sm_count: int, dtype: torch.dtype = torch.float32,
         precision: str = "tf32x3") -> SkinnyPlan:
    """The SkinnyPlan of an [m, k] × [n, k]ᵀ product on ``sm_count`` SMs (see the module docstring).

    Among the splits that give PROGRAMS_PER_SM programs per SM (or as many as K allows in
    slices of MIN_SLICE_BLOCKS steps), the one of highest ``wave_efficiency``; the fewest
    splits among equals.
    """
    tile_m, block_k = block_m(m), BLOCK_K[dtype]
    if dtype == torch.float32 and precision == "ieee":
        tile_m, block_k = min(tile_m, IEEE_MAX_BLOCK_M), IEEE_BLOCK_K
    tiles = triton.cdiv(m, tile_m) * triton.cdiv(n, BLOCK_N)
    k_blocks = triton.cdiv(k, block_k)
    most = max(1, min(k_blocks // MIN_SLICE_BLOCKS, MAX_SPLIT))
    least = min(triton.cdiv(PROGRAMS_PER_SM * sm_count, tiles), most)
    splits = max(range(least, most + 1), key=lambda s: (wave_efficiency(tiles, k_blocks, s, sm_count), -s))
    return SkinnyPlan(tile_m, BLOCK_N, block_k, splits)


def split_chunk(splits: int, tile_m: int) -> int:
    """Partial tiles the last program loads at once: S rounded up to a power of two, capped by
    SPLIT_CHUNK_ELEMENTS (⌈S / split_chunk⌉ dependent loads)."""
    return min(triton.next_power_of_2(splits), max(1, SPLIT_CHUNK_ELEMENTS[tile_m] // (BLOCK_N * tile_m)))


def ln_tiles(k: int, tile_m: int) -> int:
    """LayerNorm-statistics tiles a program loads at once: ⌈K/64⌉ rounded up to a power of two,
    capped by LN_MERGE_ELEMENTS (⌈⌈K/64⌉ / ln_tiles⌉ dependent loads)."""
    return min(triton.next_power_of_2(triton.cdiv(k, BLOCK_N)), max(1, LN_MERGE_ELEMENTS // tile_m))


@triton.jit
def store_tile_stats(stats_ptr, y, rows, tile, M, N):
    """stats[tile, rows] = (mean, M2) over the valid columns of the fp32 tile y [len(rows),
    STATS_COLUMNS] at columns tile·STATS_COLUMNS.. of an [M, N] matrix; stats fp32 [⌈N/STATS_COLUMNS⌉, M, 2]."""
    cols = tile * STATS_COLUMNS + tl.arange(0, STATS_COLUMNS)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    count = tl.minimum(N - tile * STATS_COLUMNS, STATS_COLUMNS) * 1.0
    mean = tl.sum(tl.where(mask, y, 0.0), 1) / count
    centred = tl.where(mask, y - mean[:, None], 0.0)
    offsets = (tile * M + rows) * 2
    tl.store(stats_ptr + offsets, mean, mask=rows < M)
    tl.store(stats_ptr + offsets + 1, tl.sum(centred * centred, 1), mask=rows < M)


@triton.jit
def merge_tile_stats(stats_ptr, rows, M, K, TILES: tl.constexpr):
    """μ and 1/sqrt(σ² + eps) of rows ``rows`` of an [M, K] matrix from its per-tile (mean, M2)
    in stats fp32 [⌈K/STATS_COLUMNS⌉, M, 2] (rows >= M: 0, 1/sqrt(eps)).

    TILES (a power of two) tiles' pairs at a time, all loaded at once ([TILES, len(rows)], masked)
    and combined in registers in a fixed tree: the group's mean = Σ c_t·mean_t / Σ c_t, then its
    M2 = Σ (M2_t + c_t·(mean_t − mean)²) (no cancellation); groups (one when TILES ≥ ⌈K/64⌉)
    merged in order with Chan's formula."""
    mean = rows * 0.0
    m2 = rows * 0.0
    for t0 in range(0, tl.cdiv(K, STATS_COLUMNS), TILES):
        tiles = t0 + tl.arange(0, TILES)
        offsets = (tiles[:, None] * M + rows[None, :]) * 2
        ok = (tiles[:, None] * STATS_COLUMNS < K) & (rows[None, :] < M)
        part_mean = tl.load(stats_ptr + offsets, mask=ok, other=0.0)
        part_m2 = tl.load(stats_ptr + offsets + 1, mask=ok, other=0.0)
        count = tl.minimum(tl.maximum(K - tiles * STATS_COLUMNS, 0), STATS_COLUMNS) * 1.0  # 0 past the end
        group = tl.minimum(K - t0 * STATS_COLUMNS, TILES * STATS_COLUMNS) * 1.0
        group_mean = tl.sum(count[:, None] * part_mean, 0) / group
        delta = part_mean - group_mean[None, :]
        group_m2 = tl.sum(part_m2 + count[:, None] * delta * delta, 0)
        mean, m2 = chan_merge(mean, m2, t0 * STATS_COLUMNS * 1.0, group_mean, group_m2, group)
    return mean, 1.0 / tl.sqrt(m2 / K + EPS)


@triton.jit
def tile_stats_kernel(x_ptr, stats_ptr, M, K, BLOCK_M: tl.constexpr):
    """stats of x [M, K] (see store_tile_stats) for rows program_id(0)·BLOCK_M.., tile program_id(1)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * STATS_COLUMNS + tl.arange(0, STATS_COLUMNS)
    x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < M) & (cols[None, :] < K), other=0.0)
    store_tile_stats(stats_ptr, x.to(tl.float32), rows, tl.program_id(1), M, K)


@triton.jit
def prefetch_weights(w_ptr, cols, k_start, N, K, LINES: tl.constexpr):
    """Ask L2 for LINES 128-byte lines of each row W[cols, k_start ..] (addresses clamped into
    W). No data moves into registers: ``prefetch.global.L2::evict_last``."""
    line: tl.constexpr = 1024 // w_ptr.dtype.element_ty.primitive_bitwidth  # elements per 128 bytes
    lines = tl.minimum(k_start + tl.arange(0, LINES) * line, K - 1)
    rows = tl.minimum(cols, N - 1).to(tl.int64) * K
    tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1]; // $0", "=r,l",
                              [w_ptr + rows[:, None] + lines[None, :]], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def skinny_linear_kernel(
    x_ptr, w_ptr, b_ptr, res_ptr, out_ptr, part_ptr, count_ptr, ln_w_ptr, ln_b_ptr, ln_stats_ptr, stats_ptr,
    M, N, K, splits,
    GELU: tl.constexpr, RESIDUAL: tl.constexpr, PARTIAL: tl.constexpr, PRECISION: tl.constexpr,
    BF16_AS_FP32: tl.constexpr, LN: tl.constexpr, STATS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_CHUNK: tl.constexpr = 1, LN_TILES: tl.constexpr = 1, PDL: tl.constexpr = False,
    PREFETCH_LINES: tl.constexpr = 4,
):
    """Output tile (rows j·BLOCK_M.., cols i·BLOCK_N..) over the K slice s, (j, i, s) = program ids.

    x_ptr [M, K], w_ptr [N, K], b_ptr [N], res_ptr/out_ptr [M, N] of one dtype; part_ptr fp32
    [splits, M, N] and count_ptr int32 [⌈M/BLOCK_M⌉·⌈N/BLOCK_N⌉] (zeros) used when PARTIAL.
    LN: x normalised on load with ln_w_ptr, ln_b_ptr [K] (x's dtype) and the statistics
    ln_stats_ptr fp32 [⌈K/64⌉, M, 2]; STATS: the tile's (mean, M2) per row of what it stored
    to stats_ptr fp32 [⌈N/64⌉, M, 2] (BLOCK_N = 64). BF16_AS_FP32: multiply bf16 operands
    upcast (exactly, as "ieee"), for the interpreter, which cannot multiply bf16 matrices.
    """
    tile_m, tile_n, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    weight_rows = cols.to(tl.int64) * K
    k_blocks = tl.cdiv(K, BLOCK_K)
    k_start = (s * k_blocks // splits) * BLOCK_K
    k_end = tl.minimum(((s + 1) * k_blocks // splits) * BLOCK_K, K)
    if PDL:
        prefetch_weights(w_ptr, cols, k_start, N, K, PREFETCH_LINES)
        gdc_launch_dependents()
        gdc_wait()  # from here on the previous kernel's writes are visible, and it reads nothing we write
    if LN:
        mean, rstd = merge_tile_stats(ln_stats_ptr, rows, M, K, LN_TILES)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k0 in tl.range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        w = tl.load(w_ptr + weight_rows[:, None] + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if LN:  # x̂ = (x − μ)·rstd·γ + β, rounded to x's dtype; loaded [BLOCK_M, BLOCK_K] for 16-byte cp.async
            x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            gamma = tl.load(ln_w_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            beta = tl.load(ln_b_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            x_hat = (x.to(tl.float32) - mean[:, None]) * rstd[:, None] * gamma[None, :] + beta[None, :]
            xt = tl.trans(x_hat.to(x.dtype))
        else:
            xt = tl.load(x_ptr + rows[None, :] * K + ks[:, None], mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        if x_ptr.dtype.element_ty == tl.float32:
            acc = tl.dot(w, xt, acc, input_precision=PRECISION)
        elif BF16_AS_FP32:
            acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, xt, acc)
    if PARTIAL:
        offsets = rows[None, :] * N + cols[:, None]
        mask = row_ok[None, :] & col_ok[:, None]
        tl.store(part_ptr + s * M * N + offsets, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial stores precede the ticket's release
        counter = count_ptr + tile_m * tl.num_programs(1) + tile_n
        if tl.atomic_add(counter, 1, sem="acq_rel") == splits - 1:
            # SPLIT_CHUNK partial tiles per trip, unrolled: independent loads (masked past S)
            # the compiler issues back to back, added in split order; trips in order
            acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            for t0 in range(0, splits, SPLIT_CHUNK):
                for j in tl.static_range(SPLIT_CHUNK):
                    in_range = mask & (tl.zeros_like(offsets) + t0 + j < splits)
                    acc += tl.load(part_ptr + (t0 + j) * M * N + offsets, mask=in_range, other=0.0,
                                   cache_modifier=".cg")
            stored = finish_tile(tl.trans(acc), rows, cols, M, N, b_ptr, res_ptr, out_ptr, True, GELU, RESIDUAL)
            if STATS:
                store_tile_stats(stats_ptr, stored.to(tl.float32), rows, tile_n, M, N)
            tl.store(counter, 0)
    else:
        stored = finish_tile(tl.trans(acc), rows, cols, M, N, b_ptr, res_ptr, out_ptr, True, GELU, RESIDUAL)
        if STATS:
            store_tile_stats(stats_ptr, stored.to(tl.float32), rows, tile_n, M, N)


def skinny_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, *,
    gelu: bool = False, residual: torch.Tensor | None = None, precision: str = "tf32x3",
    counters: torch.Tensor | None = None, splits: int | None = None,
    ln_w: torch.Tensor | None = None, ln_b: torch.Tensor | None = None, ln_stats: torch.Tensor | None = None,
    stats: torch.Tensor | None = None,
) -> torch.Tensor:
    """out = act(LN(x) · weightᵀ + bias) (+ residual); act = tanh-GELU if ``gelu``; returns ``out``.

    x [M, K], weight [N, K], bias [N], out and residual [M, N]: contiguous, one device, all
    float32 or all bfloat16; ``out`` may be ``residual`` itself. ``precision``: "tf32x3",
    "ieee" or "tf32" (fp32 only). ``counters``: int32 zeros of at least ``plan(...).tiles(M, N)``
    elements, the split-K tickets, left at zero after the call (allocate once per call site
    for a CUDA graph; a fresh zeroed tensor when None). ``splits`` overrides the plan's S.
    LN(x) = x unless ``ln_w``, ``ln_b`` [K] (x's dtype) and ``ln_stats`` fp32 ``stats_shape(M, K)``
    (x's per-tile statistics: ``layer_norm_stats`` or a residual call's ``stats``) are given.
    ``stats`` fp32 ``stats_shape(M, N)``, with ``residual`` only: filled with out's statistics.
    """
    if gelu and residual is not None:
        raise ValueError("gelu and residual are separate epilogues: pass one of them")
    if stats is not None and residual is None:
        raise ValueError("stats are written by the residual epilogue: pass residual with them")
    if (ln_w is None) != (ln_b is None) or (ln_w is None) != (ln_stats is None):
        raise ValueError("LayerNorm needs ln_w, ln_b and ln_stats together")
    if x.dim() != 2 or out.dim() != 2:
        raise ValueError(f"x and out must be matrices, got {tuple(x.shape)} and {tuple(out.shape)}")
    (m, k), n = x.shape, out.shape[1]
    dtype, device = x.dtype, x.device
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"x must be float32 or bfloat16, got {dtype}")
    check_precision(precision)
    check_tensor("x", x, (m, k), dtype, device)
    check_tensor("weight", weight, (n, k), dtype, device)
    check_tensor("bias", bias, (n,), dtype, device)
    check_tensor("out", out, (m, n), dtype, device)
    if residual is not None:
        check_tensor("residual", residual, (m, n), dtype, device)
        if residual.data_ptr() != out.data_ptr() and overlap(residual, out):
            raise ValueError("residual must be out itself or not overlap it")
    if any(overlap(out, t) for t in (x, weight, bias)):
        raise ValueError("out must not overlap x, weight or bias")
    if ln_w is not None:
        check_tensor("ln_w", ln_w, (k,), dtype, device)
        check_tensor("ln_b", ln_b, (k,), dtype, device)
        check_tensor("ln_stats", ln_stats, stats_shape(m, k), torch.float32, device)
    if stats is not None:
        check_tensor("stats", stats, stats_shape(m, n), torch.float32, device)
        if any(overlap(stats, t) for t in (x, weight, bias, out) + ((ln_stats,) if ln_stats is not None else ())):
            raise ValueError("stats must not overlap the other arguments")
    if m == 0 or n == 0:
        return out
    if k == 0:
        raise ValueError("x must have at least one column")
    chosen = plan(m, n, k, _sm_count(device), dtype, precision)
    if splits is not None:
        if not 1 <= splits <= triton.cdiv(k, chosen.block_k):
            raise ValueError(f"splits must be in [1, {triton.cdiv(k, chosen.block_k)}], got {splits}")
        chosen = dataclasses.replace(chosen, splits=splits)
    if counters is None:
        counters = torch.zeros(chosen.tiles(m, n), dtype=torch.int32, device=device)
    elif (counters.dtype != torch.int32 or counters.dim() != 1 or counters.device != device
          or not counters.is_contiguous() or counters.numel() < chosen.tiles(m, n)):
        raise ValueError(f"counters must be a contiguous int32 vector of at least {chosen.tiles(m, n)} "
                         f"elements on {device}, got {counters.dtype} {tuple(counters.shape)} on {counters.device}")
    if max(m * k, chosen.splits * m * n) >= 2**31:
        raise ValueError(f"x [{m}, {k}] or the partials {chosen.splits} x [{m}, {n}] exceed int32 offsets")
    partial = chosen.splits > 1
    workspace = torch.empty((chosen.splits, m, n), dtype=torch.float32, device=device) if partial else out
    skinny_linear_kernel[chosen.grid(m, n)](
        x, weight, bias, residual if residual is not None else out, out, workspace, counters,
        *((ln_w, ln_b, ln_stats) if ln_w is not None else (x, x, out)), stats if stats is not None else out,
        m, n, k, chosen.splits,
        GELU=gelu, RESIDUAL=residual is not None, PARTIAL=partial, PRECISION=precision,
        BF16_AS_FP32=dtype == torch.bfloat16 and device.type != "cuda", LN=ln_w is not None, STATS=stats is not None,
        BLOCK_M=chosen.block_m, BLOCK_N=chosen.block_n, BLOCK_K=chosen.block_k,
        SPLIT_CHUNK=split_chunk(chosen.splits, chosen.block_m), LN_TILES=ln_tiles(k, chosen.block_m),
        PDL=pdl(device), PREFETCH_LINES=PREFETCH_LINES, num_warps=chosen.num_warps,
        num_stages=chosen.num_stages, **launch_options(device),
    )
    return out


def stats_shape(rows: int, cols: int) -> tuple[int, int, int]:
    """Shape of the LayerNorm statistics of an [rows, cols] matrix: (mean, M2) per row and 64-column tile."""
    return triton.cdiv(cols, BLOCK_N), rows, 2


def layer_norm_stats(x: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
    """Per-tile statistics of x [M, K] (fp32 or bf16) into ``stats`` fp32 ``stats_shape(M, K)``
    (fresh when None), as a residual skinny_linear call writes them: for an LN whose x no GEMM wrote."""
    if x.dim() != 2 or x.dtype not in STORAGE_DTYPES:
        raise ValueError(f"x must be a float32 or bfloat16 matrix, got {x.dtype} {tuple(x.shape)}")
    m, k = x.shape
    check_tensor("x", x, (m, k), x.dtype, x.device)
    if stats is None:
        stats = torch.empty(stats_shape(m, k), dtype=torch.float32, device=x.device)
    check_tensor("stats", stats, stats_shape(m, k), torch.float32, x.device)
    if overlap(stats, x):
        raise ValueError("stats must not overlap x")
    if m > 0 and k > 0:
        tile_m = block_m(m)
        tile_stats_kernel[(triton.cdiv(m, tile_m), triton.cdiv(k, BLOCK_N))](x, stats, m, k, BLOCK_M=tile_m)
    return stats


def skinny_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, gelu: bool = False,
    residual: torch.Tensor | None = None, ln_w: torch.Tensor | None = None, ln_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """act(LN(x) · weightᵀ + bias) (+ residual) in PyTorch, in the dtype of the inputs: [M, K] -> [M, N].

    LN(x) = layer_norm(x, ln_w, ln_b) (biased variance, eps LAYERNORM_EPS) when ln_w is given, else x."""
    if ln_w is not None:
        x = torch.nn.functional.layer_norm(x, (x.shape[1],), ln_w, ln_b, LAYERNORM_EPS)
    y = torch.nn.functional.linear(x, weight, bias)
    if gelu:
        y = torch.nn.functional.gelu(y, approximate="tanh")
    return y if residual is None else residual + y
