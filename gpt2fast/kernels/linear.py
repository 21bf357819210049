"""The four GEMMs of a block, each fused with what surrounds it.

Rows are flattened prompts × positions: x [M, K] with M = P·T; weights in PyTorch Linear
layout W [N, K] = [out, in], row-major.

    ln_linear (ln_1 → c_attn, ln_2 → c_fc):
        out[m, n] = act(Σ_k LN(x)[m, k] · W[n, k] + b[n])
        LN(x)[m, k] = (x[m, k] - μ_m) · rstd_m · γ[k] + β[k],  rstd_m = 1 / sqrt(σ²_m + 1e-5)
        (μ_m, σ²_m: mean and biased variance of row m; γ, β = ln_w, ln_b [K])
        act = identity, or tanh-GELU: gelu(y) = y/2 · (1 + tanh(u)), u = √(2/π) (y + 0.044715 y³),
        evaluated as y · sigmoid(2u) (the same function, without the cancellation of 1 + tanh(u)).
    linear_residual (attn c_proj, mlp c_proj):
        out[m, n] = residual[m, n] + Σ_k x[m, k] · W[n, k] + b[n]    (out may be residual itself)
    drawn weights (``--random-init`` / ``--const-reset`` redraws), instead of reading W and b:
        W[n, k] = 0.02 · normal_at(key, stream, step, n·K + k),  b = 0
        (= gpt2fast.weight_stream.drawn_tensor(seed, draw, stream, (N, K)) for
        key = philox.mix_key(seed, DRAW_DOMAIN), step = draw; rounded to bf16 for bf16 runs).

Dtypes: x, W, b, γ, β, residual and out all float32, or all bfloat16 (LayerNorm, accumulation
and epilogue in fp32; LN(x) is rounded to bf16 before the product, as PyTorch's bf16 layer_norm
output is, and out once at the store). fp32 dots are IEEE by default (``precision``: one of
``checks.PRECISIONS``, "tf32x3" and "tf32" on the tensor cores); bf16 operands are
upcast and multiplied as TF32, which holds every bf16 value exactly: exact products on the
tensor cores (and the interpreter, which cannot multiply bf16 matrices, computes the same).

Tiling. Program (j, i, s) of the grid (⌈M/BLOCK_M⌉, ⌈N/BLOCK_N⌉, S) computes the output
tile rows j·BLOCK_M.., columns i·BLOCK_N.. over the s-th slice of K (k_per_split wide, a
multiple of every BLOCK_K). BLOCK_M = M rounded up to a power of two in [16, 64]: the whole M
of the real workload (P·T, often < 64) is one tile, so every weight byte is read once; with
more rows the M tiles are the fastest grid axis, so the programs sharing a weight tile run
together and the re-reads hit L2. A program with LayerNorm first computes μ and rstd of its
BLOCK_M rows over all of K (chunked, merged with Chan's formula: one pass, no cancellation);
x is tiny and stays in L2. With S = 1 the epilogue (bias, GELU or residual) is applied in
registers and ``out`` written; with S > 1 each program stores its fp32 partial tile to a
workspace [S, M, N] and ``split_k_finish_kernel`` sums the S partials in a fixed order
before the same epilogue, so results are reproducible (no atomics). Each residual element is
read and its output written by the same thread, so ``out`` may alias ``residual``.

Why this tiling and where it falls short of the bandwidth (the H200 measured it at 3-4 % of
the weight-bandwidth floor; the skinny GEMM replaced it for stored weights): bench/RESULTS.md,
"The fused FMA-path GEMM: its design model".

Autotuning: on CUDA, ``triton.autotune`` picks among ``CONFIGS`` (``DRAWN_CONFIGS`` for drawn
weights; BLOCK_N, BLOCK_K, warps, stages) per (M, N, K, k_per_split, dtypes, variant flags),
benchmarking on the first call of each (warm up before capturing a CUDA graph; during tuning
``out`` is restored between runs, so an in-place residual stays right). On CPU (Triton's
interpreter) ``DEFAULT_CONFIG`` / ``DEFAULT_DRAWN_CONFIG`` is used. S comes from the heuristic
``split_k``, with the GPU's SM count, or 132 on CPU so the interpreter runs an H100's plan.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..model import LAYERNORM_EPS, layer_norm
from ..philox import MAX_ELEMENTS, check_range
from ..weight_stream import InKernelDraw, StepInMemory
from .counter_normal import normal_at
from .checks import STORAGE_DTYPES, check_precision, check_tensor, overlap

# The FMA path of an IEEE fp32 tl.dot holds a thread's rows and columns of both operands over
# all of BLOCK_K in registers, so BLOCK_K stays at 16-32 (64 spills at BLOCK_M = 64). Drawn
# weights load no W, so two stages suffice, and BLOCK_K = 16 keeps a thread at 4 generated
# weights per step (8 spill the Philox state). Left to itself ptxas caps the drawn variants at
# 80-168 registers and spills 8-88 bytes at some BLOCK_M; maxnreg = 255 lets them take the
# 93-238 they need. None spills on sm_80/sm_90 at any BLOCK_M (tests/kernels/test_linear.py).
CONFIGS = [
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=5),
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 16}, num_warps=4, num_stages=5),
]
DRAWN_CONFIGS = [
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 16}, num_warps=4, num_stages=2, maxnreg=255),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2, maxnreg=255),
]
DEFAULT_CONFIG = CONFIGS[1]  # on CPU, and the interpreter's fewest programs
DEFAULT_DRAWN_CONFIG = DRAWN_CONFIGS[1]
BLOCK_M_RANGE = (16, 64)  # BLOCK_M = next power of two of M, clamped to this range
K_ALIGN = max(c.kwargs["BLOCK_K"] for c in CONFIGS + DRAWN_CONFIGS)  # K slices: multiples of every BLOCK_K
MIN_SPLIT_K = 256  # narrowest K slice worth a partial tile's round trip
MAX_SPLIT = 16
SPLIT_BLOCK_N = max(c.kwargs["BLOCK_N"] for c in CONFIGS + DRAWN_CONFIGS)  # S is planned for the widest tiles
CPU_SM_COUNT = 132  # an H100's; the interpreter plans as on one
FINISH_BLOCK_M = 16
FINISH_BLOCK_N = 128
FINISH_NUM_WARPS = 4

INIT_STD: tl.constexpr = tl.constexpr(0.02)  # gpt2fast.weights.INIT_STD, the drawn weights' std
EPS: tl.constexpr = tl.constexpr(LAYERNORM_EPS)
GELU_SCALE: tl.constexpr = tl.constexpr(2 * 0.7978845608028654)  # 2·√(2/π)
GELU_CUBIC: tl.constexpr = tl.constexpr(0.044715)


@triton.jit
def gelu_tanh(y):
    """y/2 · (1 + tanh(√(2/π)(y + 0.044715 y³))) = y · sigmoid(2√(2/π)(y + 0.044715 y³)), fp32."""
    return y / (1.0 + tl.exp((y + y * y * y * GELU_CUBIC) * -GELU_SCALE))


@triton.jit
def row_stats(x_ptr, rows, M, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Mean and 1/sqrt(var + eps) over K of x rows ``rows`` [BLOCK_M] (rows >= M give 0, 1/sqrt(eps)).

    One pass over BLOCK_K-wide chunks: each chunk's mean and centred sum of squares are merged
    into the running ones (Chan, Golub & LeVeque), which stays accurate when |mean| >> std.
    """
    mean = tl.zeros([BLOCK_M], tl.float32)
    m2 = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mask = (rows[:, None] < M) & (ks[None, :] < K)
        chunk = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=mask, other=0.0).to(tl.float32)
        count = tl.minimum(K - k0, BLOCK_K) * 1.0
        chunk_mean = tl.sum(chunk, 1) / count
        centred = tl.where(mask, chunk - chunk_mean[:, None], 0.0)
        mean, m2 = chan_merge(mean, m2, k0 * 1.0, chunk_mean, tl.sum(centred * centred, 1), count)
    return mean, 1.0 / tl.sqrt(m2 / K + EPS)


@triton.jit
def chan_merge(mean, m2, seen, part_mean, part_m2, count):
    """(mean, M2) of ``seen`` values merged with a part of ``count`` values (fp32; Chan,
    Golub & LeVeque): the means' difference enters squared, so nothing cancels when |mean| >> std."""
    delta = part_mean - mean
    mean += delta * (count / (seen + count))
    m2 += part_m2 + delta * delta * (seen * count / (seen + count))
    return mean, m2


@triton.jit
def finish_tile(y, rows, cols, M, N, b_ptr, res_ptr, out_ptr,
                HAS_BIAS: tl.constexpr, GELU: tl.constexpr, RESIDUAL: tl.constexpr):
    """out[rows, cols] = act(y + b[cols]) (+ residual[rows, cols]) for the fp32 tile y
    [len(rows), len(cols)] of an [M, N] output; masked to rows < M, cols < N. Returns the
    tile as computed for the store, in out's dtype (unmasked)."""
    col_ok = cols < N
    mask = (rows[:, None] < M) & col_ok[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if GELU:
        y = gelu_tanh(y)
    offsets = rows[:, None] * N + cols[None, :]
    if RESIDUAL:
        y += tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    stored = y.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offsets, stored, mask=mask)
    return stored


@triton.jit(do_not_specialize=["key", "stream", "step", "steps_per_iteration"])
def fused_linear_kernel(
    x_ptr, w_ptr, b_ptr, ln_w_ptr, ln_b_ptr, res_ptr, out_ptr, part_ptr, iteration_ptr,
    M, N, K, k_per_split,
    key: tl.uint64, stream: tl.uint32, step: tl.uint64, steps_per_iteration: tl.uint64,
    LN: tl.constexpr, GELU: tl.constexpr, RESIDUAL: tl.constexpr, DRAWN: tl.constexpr,
    STEP_IN_MEMORY: tl.constexpr, PARTIAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of x·Wᵀ over the K slice ``program_id(2)``.

    x_ptr [M, K], w_ptr [N, K] (unused if DRAWN), b_ptr [N], ln_w_ptr/ln_b_ptr [K] (if LN),
    res_ptr/out_ptr [M, N]: all of one dtype (fp32 or bf16). part_ptr: fp32 [S, M, N], written
    instead of out when PARTIAL. Without PARTIAL the K slice is all of K and the epilogue
    (bias unless DRAWN, GELU, RESIDUAL) is applied here. Drawn weights use draw ``step``, or
    with STEP_IN_MEMORY iteration_ptr[0] · steps_per_iteration + step (iteration_ptr: int64
    [1], read when the kernel runs, so one CUDA graph serves every iteration).
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    if LN:
        mean, rstd = row_stats(x_ptr, rows, M, K, BLOCK_M, BLOCK_K)
    weight_rows = cols.to(tl.int64) * K
    if STEP_IN_MEMORY:
        step += tl.load(iteration_ptr).to(tl.uint64) * steps_per_iteration
    dtype = x_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    k_start = tl.program_id(2) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in tl.range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a_mask = row_ok[:, None] & k_ok[None, :]
        a = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=a_mask, other=0.0).to(tl.float32)
        if LN:
            gamma = tl.load(ln_w_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            beta = tl.load(ln_b_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            a = ((a - mean[:, None]) * rstd[:, None] * gamma[None, :] + beta[None, :]).to(dtype).to(tl.float32)
        w_mask = col_ok[:, None] & k_ok[None, :]
        if DRAWN:
            w = normal_at(key, stream, step, weight_rows[:, None] + ks[None, :]) * INIT_STD
            w = tl.where(w_mask, w, 0.0).to(dtype).to(tl.float32)
        else:
            w = tl.load(w_ptr + weight_rows[:, None] + ks[None, :], mask=w_mask, other=0.0).to(tl.float32)
        if dtype == tl.float32:
            acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a, tl.trans(w), acc, input_precision="tf32")  # exact: bf16 values fit in TF32
    if PARTIAL:
        mask = row_ok[:, None] & col_ok[None, :]
        offsets = tl.program_id(2) * M * N + rows[:, None] * N + cols[None, :]
        tl.store(part_ptr + offsets, acc, mask=mask)
    else:
        finish_tile(acc, rows, cols, M, N, b_ptr, res_ptr, out_ptr, not DRAWN, GELU, RESIDUAL)


@triton.jit
def split_k_finish_kernel(part_ptr, b_ptr, res_ptr, out_ptr, M, N, splits,
                          HAS_BIAS: tl.constexpr, GELU: tl.constexpr, RESIDUAL: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = act(Σ_{s=0}^{splits-1} part[s] + b) (+ residual), summed in order s = 0, 1, ...

    part_ptr fp32 [splits, M, N]; b_ptr [N]; res_ptr, out_ptr [M, N] (fp32 or bf16).
    """
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]
    y = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for s in range(0, splits):
        y += tl.load(part_ptr + s * M * N + offsets, mask=mask, other=0.0)
    finish_tile(y, rows, cols, M, N, b_ptr, res_ptr, out_ptr, HAS_BIAS, GELU, RESIDUAL)


def _autotuned(configs: list[triton.Config]):
    key = ["M", "N", "K", "k_per_split", "LN", "GELU", "RESIDUAL", "STEP_IN_MEMORY", "PARTIAL", "PRECISION"]
    return triton.autotune(configs=configs, key=key, restore_value=["out_ptr"])(fused_linear_kernel)


AUTOTUNED = {False: _autotuned(CONFIGS), True: _autotuned(DRAWN_CONFIGS)}  # by "weights drawn"


def block_m(rows: int) -> int:
    """BLOCK_M for M = ``rows``: the next power of two, clamped to BLOCK_M_RANGE."""
    low, high = BLOCK_M_RANGE
    return min(high, max(low, triton.next_power_of_2(rows)))


def split_k(rows: int, n: int, k: int, sm_count: int) -> tuple[int, int]:
    """(S, k_per_split) for an [rows, k] x [n, k]ᵀ product on ``sm_count`` SMs.

    Enough K slices that ⌈n/64⌉·⌈rows/BLOCK_M⌉·S programs cover the SMs, slices at least
    MIN_SPLIT_K wide (but one slice if k is narrower) and K_ALIGN-aligned, at most MAX_SPLIT.
    """
    tiles = triton.cdiv(n, SPLIT_BLOCK_N) * triton.cdiv(rows, block_m(rows))
    wanted = max(1, min(triton.cdiv(sm_count, tiles), k // MIN_SPLIT_K, MAX_SPLIT))
    k_per_split = triton.cdiv(triton.cdiv(k, wanted), K_ALIGN) * K_ALIGN
    return triton.cdiv(k, k_per_split), k_per_split


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return CPU_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def _fused_linear(x, weight, bias, ln, residual, out, gelu, precision, drawn, config):
    """Check the arguments of ln_linear / linear_residual, then launch (and finish a split K)."""
    if x.dim() != 2 or out.dim() != 2:
        raise ValueError(f"x and out must be matrices, got {tuple(x.shape)} and {tuple(out.shape)}")
    (m, k), n = x.shape, out.shape[1]
    dtype, device = x.dtype, x.device
    iteration, per_iteration = None, 0
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"x must be float32 or bfloat16, got {dtype}")
    check_precision(precision)
    check_tensor("x", x, (m, k), dtype, device)
    check_tensor("out", out, (m, n), dtype, device)
    if ln is not None:
        check_tensor("ln_w", ln[0], (k,), dtype, device)
        check_tensor("ln_b", ln[1], (k,), dtype, device)
    if residual is not None:
        check_tensor("residual", residual, (m, n), dtype, device)
        if residual.data_ptr() != out.data_ptr() and overlap(residual, out):
            raise ValueError("residual must be out itself or not overlap it")
    if drawn is None:
        if weight is None or bias is None:
            raise ValueError("weight and bias are required unless drawn is given")
        check_tensor("weight", weight, (n, k), dtype, device)
        check_tensor("bias", bias, (n,), dtype, device)
        key = stream = step = 0
    else:
        key, stream, step = drawn
        check_range("key", key, 2**64)
        check_range("stream", stream, 2**32)
        if isinstance(step, StepInMemory):
            check_tensor("iteration", step.iteration, (1,), torch.int64, device)
            check_range("per_iteration", step.per_iteration, 2**32)
            check_range("step offset", step.offset, 2**32)
            iteration, per_iteration, step = step.iteration, step.per_iteration, step.offset
        check_range("step", step, 2**64)
        check_range("weight elements", n * k, MAX_ELEMENTS + 1)
        weight = bias = x  # not read: W is generated and b = 0
    inputs = [x, *(ln or ()), *((weight, bias) if drawn is None else ())]
    if any(overlap(out, t) for t in inputs):
        raise ValueError("out must not overlap x, the weights or the LayerNorm parameters")
    configs = CONFIGS if drawn is None else DRAWN_CONFIGS
    if config is not None and not any(config is c for c in configs):
        raise ValueError("config must be one of CONFIGS (DRAWN_CONFIGS with drawn weights)")
    if m == 0 or n == 0:
        return out
    if k == 0:
        raise ValueError("x must have at least one column")

    splits, k_per_split = split_k(m, n, k, _sm_count(device))
    if max(m * k, splits * m * n) >= 2**31:
        raise ValueError(f"x [{m}, {k}] or the output's partials {splits} x [{m}, {n}] exceed int32 offsets")
    tile_m = block_m(m)
    partial = torch.empty((splits, m, n), dtype=torch.float32, device=device) if splits > 1 else out
    ln_w, ln_b = ln if ln is not None else (x, x)
    res = residual if residual is not None else out
    step_in_memory = iteration is not None
    args = (x, weight, bias, ln_w, ln_b, res, out, partial, iteration if step_in_memory else x,
            m, n, k, k_per_split, key, stream, step, per_iteration)
    flags = dict(LN=ln is not None, GELU=gelu and splits == 1, RESIDUAL=residual is not None and splits == 1,
                 DRAWN=drawn is not None, STEP_IN_MEMORY=step_in_memory, PARTIAL=splits > 1,
                 PRECISION=precision, BLOCK_M=tile_m)

    def grid(meta):
        return triton.cdiv(m, tile_m), triton.cdiv(n, meta["BLOCK_N"]), splits

    if device.type == "cuda" and config is None:
        AUTOTUNED[drawn is not None][grid](*args, **flags)
    else:
        config = config or (DEFAULT_CONFIG if drawn is None else DEFAULT_DRAWN_CONFIG)
        fused_linear_kernel[grid](*args, **flags, **config.all_kwargs())
    if splits > 1:
        finish_grid = (triton.cdiv(n, FINISH_BLOCK_N), triton.cdiv(m, FINISH_BLOCK_M))
        split_k_finish_kernel[finish_grid](
            partial, bias, res, out, m, n, splits, HAS_BIAS=drawn is None, GELU=gelu,
            RESIDUAL=residual is not None, BLOCK_M=FINISH_BLOCK_M, BLOCK_N=FINISH_BLOCK_N,
            num_warps=FINISH_NUM_WARPS,
        )
    return out


def ln_linear(
    x: torch.Tensor, ln_w: torch.Tensor | None, ln_b: torch.Tensor | None, weight: torch.Tensor | None,
    bias: torch.Tensor | None, out: torch.Tensor, *, gelu: bool = False, precision: str = "ieee",
    drawn: InKernelDraw | None = None, config: triton.Config | None = None,
) -> torch.Tensor:
    """out = act(LayerNorm(x) · weightᵀ + bias), act = tanh-GELU if ``gelu``; returns ``out``.

    x [M, K], ln_w, ln_b [K], weight [N, K], bias [N], out [M, N]: contiguous, one device, all
    float32 or all bfloat16; LayerNorm eps 1e-5. ``drawn = (key, stream, step)`` generates
    weight in-kernel as 0.02 · normal_at(key, stream, step, n·K + k) with bias 0 (weight
    and bias are then ignored and may be None); ``step`` may be a ``StepInMemory``.
    ``precision``: one of ``checks.PRECISIONS``. ``config``: one of CONFIGS
    (DRAWN_CONFIGS if drawn) to use instead of the autotuner's choice (CUDA) or
    DEFAULT_CONFIG / DEFAULT_DRAWN_CONFIG (CPU).
    """
    if ln_w is None or ln_b is None:
        raise ValueError("ln_w and ln_b are required")
    return _fused_linear(x, weight, bias, (ln_w, ln_b), None, out, gelu, precision, drawn, config)


def linear_residual(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, residual: torch.Tensor,
    out: torch.Tensor, *, precision: str = "ieee", drawn: InKernelDraw | None = None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """out = residual + x · weightᵀ + bias; returns ``out``, which may be ``residual`` itself.

    x [M, K], weight [N, K], bias [N], residual and out [M, N]: contiguous, one device, all
    float32 or all bfloat16. ``drawn``, ``precision`` and ``config`` as in ``ln_linear``.
    """
    return _fused_linear(x, weight, bias, None, residual, out, False, precision, drawn, config)


def ln_linear_reference(
    x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    *, gelu: bool = False,
) -> torch.Tensor:
    """act(layer_norm(x) · weightᵀ + bias) in PyTorch, in the dtype of the inputs: [M, K] -> [M, N]."""
    y = F.linear(layer_norm(x, ln_w, ln_b), weight, bias)
    return F.gelu(y, approximate="tanh") if gelu else y


def linear_residual_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """residual + x · weightᵀ + bias in PyTorch: [M, K] -> [M, N]."""
    return residual + F.linear(x, weight, bias)
