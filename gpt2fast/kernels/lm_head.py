"""The language-model head, tied to the token embedding: logits = y · wteᵀ.

y holds ln_f-normalised rows, wte [V, C] with V = 50257, both float32 or both bfloat16 (bf16
values read into float32 and multiplied exactly, as TF32 or FMAs; logits and their maxima are
float32, so a bf16 argmax can break a tie that PyTorch's bf16 logits would make). Two uses:

    lm_head_argmax:  y [M, C] -> ids [M] int64, ids[m] = argmax_v (y wteᵀ)[m, v]
                     (``--decode``: every position of every prompt, M = P·T)
    lm_head_logits:  y [C]    -> logits [V] float32, logits = wte y   (generation: last position)

``drawn = (key, stream, step)``: wte[v, c] = 0.02 · normal_at(key, stream, step, v·C + c),
generated in the kernel, never stored (= ``weight_stream.drawn_tensor(seed, draw, WTE_STREAM,
(V, C))`` for key = philox.mix_key(seed, DRAW_DOMAIN), step = draw; independent of V); wte's data
is then unread, only its shape [V, C], dtype and device (``torch.empty(1, C).expand(V, C)`` does).

Argmax, two kernels, no atomics: ``argmax_partials_kernel``, grid (⌈M/BLOCK_M⌉, splits), walks a
contiguous range of BLOCK_V-row vocab tiles in increasing v (K-loop of ``tl.dot`` over C per
[BLOCK_M, BLOCK_V] logit tile), keeping a running (max, index) per row, into partials [splits, M];
``argmax_combine_kernel`` reduces them over the splits in order. Ties go to the lowest index, NaN
beats any number (first NaN wins), as ``torch.argmax``. Logits: ``logits_kernel``, a GEMV, one
program per BLOCK_V rows of wte, float32 FMAs. Configs: ``argmax_config`` (BLOCK_M from M), no
autotune; C is a compile-time constant. References: ``lm_head_argmax_reference``,
``lm_head_logits_reference`` (both via ``head_weight_reference``).
Why: bench/RESULTS.md, "Kernel design notes moved from module docstrings (issue 16, 2026-11-30)".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..philox import counter_normal
from ..philox import check_range
from ..weights import INIT_STD
from .counter_normal import normal_at
from .checks import STORAGE_DTYPES, check_one_device, check_precision

ARGMAX_BLOCK_V = 64
ARGMAX_BLOCK_K = 16  # tl.dot needs K >= 16 (Triton 3.6 refuses 8); see ARGMAX_WARPS for spills
ARGMAX_WARPS = {16: 8, 32: 8, 64: 8}  # BLOCK_M -> num_warps: no spills on sm_80, sm_90
DRAWN_CONFIG = (64, 8, "ieee")  # (BLOCK_M, num_warps, precision) of every drawn argmax
TARGET_PROGRAMS = 1024  # argmax programs per call: ~8 per H100 SM, and bounded partials
COMBINE_BLOCK = 128
LOGITS_BLOCK_V = 32
LOGITS_BLOCK_K = 64  # with NUM_WARPS = 4: four 16-byte loads per thread per step
NUM_WARPS = 4
NO_DRAW = (0, 0, 0)
DRAW_STD = tl.constexpr(INIT_STD)


@triton.jit
def weight_tile(wte_ptr, vocab, column, n_vocab, key, stream, step,
                N_EMBD: tl.constexpr, DRAWN: tl.constexpr):
    """wte[vocab, column] as a float32 block (0 outside [0, n_vocab) x [0, N_EMBD)).

    vocab: int64 block [BV, 1]; column: int block [1, BK]. DRAWN: regenerate the redraw
    DRAW_STD (0.02) · normal_at(key, stream, step, v·N_EMBD + c) instead of loading,
    rounded to wte's dtype (as the stored redraw of a bf16 run is).
    """
    inside = (vocab < n_vocab) & (column < N_EMBD)
    element = vocab * N_EMBD + column
    if DRAWN:
        drawn = DRAW_STD * normal_at(key, stream, step, element)
        return tl.where(inside, drawn.to(wte_ptr.dtype.element_ty).to(tl.float32), 0.0)
    return tl.load(wte_ptr + element, mask=inside, other=0.0).to(tl.float32)


@triton.jit
def prefer(new_value, old_value):
    """Whether candidate ``new_value`` replaces ``old_value`` (found at a lower index):
    strictly larger, or the first NaN (torch.argmax treats NaN as the maximum)."""
    return (new_value > old_value) | ((new_value != new_value) & (old_value == old_value))


@triton.jit
def tile_argmax(logits, vocab, n_vocab):
    """(max, lowest index of the max) per row of a [BM, BV] logit tile; vocab [1, BV] int64.

    Columns at or beyond n_vocab are ignored; a row holding NaN gives (NaN, first NaN).
    """
    is_nan = logits != logits
    value = tl.where((vocab < n_vocab) & ~is_nan, logits, float("-inf"))
    best = tl.max(value, axis=1)
    index = tl.min(tl.where(value == best[:, None], vocab, n_vocab), axis=1)
    first_nan = tl.min(tl.where(is_nan & (vocab < n_vocab), vocab, n_vocab), axis=1)
    has_nan = first_nan < n_vocab
    return tl.where(has_nan, float("nan"), best), tl.where(has_nan, first_nan, index)


@triton.jit(do_not_specialize=["key", "stream", "step"])
def argmax_partials_kernel(y_ptr, wte_ptr, best_ptr, index_ptr, n_rows, n_vocab, tiles_per_split,
                           key: tl.uint64, stream: tl.uint32, step: tl.uint64,
                           N_EMBD: tl.constexpr, DRAWN: tl.constexpr, PRECISION: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Running (max, index) of rows m of y wteᵀ over one contiguous range of vocab tiles.

    y_ptr: [n_rows, N_EMBD] and wte_ptr: [n_vocab, N_EMBD], both *fp32 or both *bf16;
    best_ptr: *fp32 and index_ptr: *i32, both [splits, n_rows]; program (row block, split).
    """
    split = tl.program_id(1)
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_col = row.to(tl.int64)[:, None]
    row_inside = row_col < n_rows
    k = tl.arange(0, BLOCK_K)[None, :]
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    index = tl.zeros((BLOCK_M,), tl.int64)
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, tl.cdiv(n_vocab, BLOCK_V))
    for tile in range(first_tile, last_tile):
        vocab = (tile * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
        logits = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
        for k0 in range(0, N_EMBD, BLOCK_K):
            y = tl.load(y_ptr + row_col * N_EMBD + k0 + k, mask=row_inside & (k0 + k < N_EMBD), other=0.0)
            y = y.to(tl.float32)
            w = weight_tile(wte_ptr, vocab[:, None], k0 + k, n_vocab, key, stream, step, N_EMBD, DRAWN)
            logits = tl.dot(y, tl.trans(w), logits, input_precision=PRECISION)
        tile_best, tile_index = tile_argmax(logits, vocab[None, :], n_vocab)
        better = prefer(tile_best, best)
        best = tl.where(better, tile_best, best)
        index = tl.where(better, tile_index, index)
    tl.store(best_ptr + split * n_rows + row, best, mask=row < n_rows)
    tl.store(index_ptr + split * n_rows + row, index.to(tl.int32), mask=row < n_rows)


@triton.jit
def argmax_combine_kernel(best_ptr, index_ptr, out_ptr, n_rows, splits, BLOCK: tl.constexpr):
    """out[m] = index of the preferred partial of row m over splits 0, 1, ... in order.

    best_ptr: *fp32 and index_ptr: *i32 [splits, n_rows]; out_ptr: *i64 [n_rows].
    """
    row = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = row < n_rows
    best = tl.load(best_ptr + row, mask=inside)
    index = tl.load(index_ptr + row, mask=inside)
    for split in range(1, splits):
        candidate = tl.load(best_ptr + split * n_rows + row, mask=inside)
        better = prefer(candidate, best)
        best = tl.where(better, candidate, best)
        index = tl.where(better, tl.load(index_ptr + split * n_rows + row, mask=inside), index)
    tl.store(out_ptr + row, index.to(tl.int64), mask=inside)


@triton.jit(do_not_specialize=["key", "stream", "step"])
def logits_kernel(y_ptr, wte_ptr, out_ptr, n_vocab, key: tl.uint64, stream: tl.uint32, step: tl.uint64,
                  N_EMBD: tl.constexpr, DRAWN: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[v] = sum_c wte[v, c] · y[c] for one block of BLOCK_V vocabulary rows.

    y_ptr: [N_EMBD] and wte_ptr: [n_vocab, N_EMBD], both *fp32 or both *bf16; out_ptr: *fp32
    [n_vocab].
    """
    vocab = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    k = tl.arange(0, BLOCK_K)
    products = tl.zeros((BLOCK_V, BLOCK_K), tl.float32)
    for k0 in range(0, N_EMBD, BLOCK_K):
        y = tl.load(y_ptr + k0 + k, mask=k0 + k < N_EMBD, other=0.0).to(tl.float32)
        w = weight_tile(wte_ptr, vocab[:, None], (k0 + k)[None, :], n_vocab, key, stream, step, N_EMBD, DRAWN)
        products += w * y[None, :]
    tl.store(out_ptr + vocab, tl.sum(products, axis=1), mask=vocab < n_vocab)


def check_head_arguments(y: torch.Tensor, wte: torch.Tensor, out: torch.Tensor, out_shape: tuple,
                         out_dtype: torch.dtype, precision: str, drawn) -> tuple[int, int, int]:
    """Shared checks of both launchers; returns (key, stream, step) (zeros when not drawn)."""
    if y.dtype not in STORAGE_DTYPES or wte.dtype != y.dtype or wte.dim() != 2:
        raise ValueError(f"y and wte [V, C] must both be float32 or both bfloat16, "
                         f"got {y.dtype}, {wte.dtype} {tuple(wte.shape)}")
    if wte.shape[0] == 0 or wte.shape[1] == 0 or y.shape[-1] != wte.shape[1]:
        raise ValueError(f"y {tuple(y.shape)} and wte {tuple(wte.shape)} need one width C > 0 and V > 0")
    if out.dtype != out_dtype or tuple(out.shape) != out_shape:
        raise ValueError(f"out must be {out_dtype} {out_shape}, got {out.dtype} {tuple(out.shape)}")
    if not (y.is_contiguous() and out.is_contiguous() and (drawn is not None or wte.is_contiguous())):
        raise ValueError("y, out and (unless drawn) wte must be contiguous")
    check_one_device("y, wte and out", y, wte, out)
    check_precision(precision)
    if drawn is None:
        return NO_DRAW
    key, stream, step = drawn
    check_range("key", key, 2**64)
    check_range("stream", stream, 2**32)
    check_range("step", step, 2**64)
    return key, stream, step


def argmax_config(n_rows: int, precision: str, drawn: bool) -> tuple[int, int, str]:
    """(BLOCK_M, num_warps, precision) of the partials kernel for M rows.

    BLOCK_M is the smallest power of two >= M among ARGMAX_WARPS (16, 32, 64; tl.dot needs
    16 rows), 64 for M > 64. A drawn head always runs DRAWN_CONFIG: regenerating a weight
    costs far more than the BLOCK_M products it feeds, so tf32 would gain nothing there, and
    the widest row block regenerates wte the fewest times. "tf32x3" runs as "ieee" (the same
    float32 accuracy; its build spills at BLOCK_M = 32, and the head runs only at decode
    iterations, where its speed hardly counts).
    """
    if drawn:
        return DRAWN_CONFIG
    block_m = min(max(triton.next_power_of_2(n_rows), min(ARGMAX_WARPS)), max(ARGMAX_WARPS))
    return block_m, ARGMAX_WARPS[block_m], "ieee" if precision == "tf32x3" else precision


def lm_head_argmax(y: torch.Tensor, wte: torch.Tensor, out_ids: torch.Tensor, *,
                   precision: str = "ieee", drawn: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Write argmax_v (y wteᵀ)[m, v] into ``out_ids`` [M] int64; returns ``out_ids``.

    y [M, C] (ln_f-normalised rows) and wte [V, C] (only its shape and dtype when
    ``drawn`` = (key < 2**64, stream < 2**32, step < 2**64) is given), both float32 or both
    bfloat16; contiguous, one device. precision: one of ``checks.PRECISIONS``
    (tensor-core modes ignored when drawn, see ``argmax_config``; bf16 values always run
    as TF32, which multiplies them exactly).
    Allocates float32 and int32 partials [splits, M], splits <= TARGET_PROGRAMS.
    """
    if y.dim() != 2:
        raise ValueError(f"y must be [M, C], got {tuple(y.shape)}")
    key, stream, step = check_head_arguments(y, wte, out_ids, (y.shape[0],), torch.int64, precision, drawn)
    n_rows, n_embd = y.shape
    n_vocab = wte.shape[0]
    if n_rows == 0:
        return out_ids
    precision = "tf32" if y.dtype == torch.bfloat16 else precision
    block_m, num_warps, precision = argmax_config(n_rows, precision, drawn is not None)
    row_blocks = triton.cdiv(n_rows, block_m)
    tiles = triton.cdiv(n_vocab, ARGMAX_BLOCK_V)
    tiles_per_split = triton.cdiv(tiles, max(1, min(tiles, TARGET_PROGRAMS // row_blocks)))
    splits = triton.cdiv(tiles, tiles_per_split)
    best = torch.empty((splits, n_rows), dtype=torch.float32, device=y.device)
    index = torch.empty((splits, n_rows), dtype=torch.int32, device=y.device)
    argmax_partials_kernel[(row_blocks, splits)](
        y, wte, best, index, n_rows, n_vocab, tiles_per_split, key, stream, step,
        N_EMBD=n_embd, DRAWN=drawn is not None, PRECISION=precision,
        BLOCK_M=block_m, BLOCK_V=ARGMAX_BLOCK_V, BLOCK_K=ARGMAX_BLOCK_K, num_warps=num_warps,
    )
    argmax_combine_kernel[(triton.cdiv(n_rows, COMBINE_BLOCK),)](
        best, index, out_ids, n_rows, splits, BLOCK=COMBINE_BLOCK, num_warps=NUM_WARPS
    )
    return out_ids


def lm_head_logits(y: torch.Tensor, wte: torch.Tensor, out: torch.Tensor, *,
                   precision: str = "ieee", drawn: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Write the logits wte · y into ``out`` [V] float32; returns ``out``.

    y [C] (one ln_f-normalised row) and wte [V, C] (only its shape and dtype when ``drawn``
    is given), both float32 or both bfloat16, as ``lm_head_argmax``; contiguous, one device.
    ``precision`` is checked like ``lm_head_argmax``'s, but every value gives the same IEEE
    float32 FMAs.
    """
    if y.dim() != 1:
        raise ValueError(f"y must be [C], got {tuple(y.shape)}")
    key, stream, step = check_head_arguments(y, wte, out, (wte.shape[0],), torch.float32, precision, drawn)
    n_vocab, n_embd = wte.shape
    logits_kernel[(triton.cdiv(n_vocab, LOGITS_BLOCK_V),)](
        y, wte, out, n_vocab, key, stream, step, N_EMBD=n_embd, DRAWN=drawn is not None,
        BLOCK_V=LOGITS_BLOCK_V, BLOCK_K=LOGITS_BLOCK_K, num_warps=NUM_WARPS,
    )
    return out


def head_weight_reference(wte: torch.Tensor, drawn: tuple[int, int, int] | None) -> torch.Tensor:
    """wte itself, or the redraw (key, stream, step) of its shape and dtype on its device."""
    if drawn is None:
        return wte
    key, stream, step = drawn
    values = counter_normal(key, stream, step, wte.numel(), device=wte.device)
    return values.mul_(INIT_STD).view(wte.shape).to(wte.dtype)


def lm_head_argmax_reference(y: torch.Tensor, wte: torch.Tensor, *,
                             drawn: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``(y @ wteᵀ).argmax(-1)`` in PyTorch: y [M, C] -> [M] int64 (materialises [M, V])."""
    return (y @ head_weight_reference(wte, drawn).T).argmax(dim=-1)


def lm_head_logits_reference(y: torch.Tensor, wte: torch.Tensor, *,
                             drawn: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``wte @ y`` in PyTorch: y [C] -> [V] float32."""
    return head_weight_reference(wte, drawn) @ y
