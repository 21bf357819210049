"""ln_linear and linear_residual against their PyTorch references, and compiled for sm_80 / sm_90.

The launches run under Triton's interpreter on CPU tensors (or compiled on a GPU when there
is one, see tests/conftest.py); the ahead-of-time compilation runs in child processes. fp32
results are compared with a float64 reference (relative error 1e-5); outputs are filled
with NaN first, so an element the kernels fail to write fails the comparison.
"""

from __future__ import annotations


import pytest
import torch
import triton

from aot import AotSpec, check_compiles
from compare import assert_relative_error
from gpt2fast import philox, weight_stream
from gpt2fast.kernels.linear import (
    AUTOTUNED,
    BLOCK_M_RANGE,
    CONFIGS,
    CPU_SM_COUNT,
    DRAWN_CONFIGS,
    FINISH_BLOCK_M,
    FINISH_BLOCK_N,
    FINISH_NUM_WARPS,
    K_ALIGN,
    MAX_SPLIT,
    block_m,
    linear_residual,
    linear_residual_reference,
    ln_linear,
    ln_linear_reference,
    split_k,
)
from gpt2fast.weight_stream import StepInMemory

ROWS = (1, 7, 27, 64, 130)
BLOCK_MS = tuple(sorted({block_m(rows) for rows in range(1, 257)}))  # every BLOCK_M there is
SHAPES = ((128, 384), (128, 512), (512, 128))  # (K, N): the tiny model's c_attn, c_fc, c_proj
RAGGED = (520, 72)  # K and N off every tile size; K is split in two ragged slices (288 + 232)
SEED, DRAW, STREAM = 1234, 5, 6
KEY = philox.mix_key(SEED, weight_stream.DRAW_DOMAIN)


def _params(rows: int, k: int, n: int, device, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random x [rows, k] (rows with offset means, for LayerNorm), LayerNorm and Linear parameters."""
    g = torch.Generator().manual_seed(rows * 100_003 + k * 101 + n)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    params = {
        "x": rand(rows, k) * 2 + rand(rows, 1) * 3,
        "ln_w": 1 + 0.1 * rand(k), "ln_b": 0.1 * rand(k),
        "weight": 0.02 * rand(n, k), "bias": 0.1 * rand(n),
        "residual": rand(rows, n),
    }
    return {name: t.to(device=device, dtype=dtype) for name, t in params.items()}


def _nan(rows: int, n: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.full((rows, n), float("nan"), device=device, dtype=dtype)


def _double(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.cpu().double() for name, t in p.items()}


def _assert_fp32_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert_relative_error(out, expected, 1e-5)


def _drawn_weight(n: int, k: int) -> torch.Tensor:
    return weight_stream.drawn_tensor(SEED, DRAW, STREAM, (n, k), "cpu").double()


@pytest.mark.parametrize("k, n, gelu", [(*SHAPES[0], False), (*SHAPES[1], True), (*SHAPES[2], False)])
@pytest.mark.parametrize("rows", ROWS)
def test_ln_linear_matches_reference(device, rows, k, n, gelu):
    p = _params(rows, k, n, device)
    out = ln_linear(p["x"], p["ln_w"], p["ln_b"], p["weight"], p["bias"], _nan(rows, n, device), gelu=gelu)
    d = _double(p)
    _assert_fp32_close(out, ln_linear_reference(d["x"], d["ln_w"], d["ln_b"], d["weight"], d["bias"], gelu=gelu))


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("k, n", SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_linear_residual_matches_reference(device, rows, k, n, in_place):
    p = _params(rows, k, n, device)
    expected = linear_residual_reference(**{name: t for name, t in _double(p).items() if "ln" not in name})
    out = p["residual"] if in_place else _nan(rows, n, device)
    returned = linear_residual(p["x"], p["weight"], p["bias"], p["residual"], out)
    assert returned is out
    _assert_fp32_close(out, expected)


@pytest.mark.parametrize("rows", (1, 130))
def test_ln_linear_drawn_weights_equal_drawn_tensor(device, rows):
    k, n = SHAPES[1]
    p = _params(rows, k, n, device)
    out = ln_linear(p["x"], p["ln_w"], p["ln_b"], None, None, _nan(rows, n, device), gelu=True,
                    drawn=(KEY, STREAM, DRAW))
    d = _double(p)
    expected = ln_linear_reference(d["x"], d["ln_w"], d["ln_b"], _drawn_weight(n, k), torch.zeros(n).double(),
                                   gelu=True)
    _assert_fp32_close(out, expected)


@pytest.mark.parametrize("rows", (27,))
def test_linear_residual_drawn_weights_equal_drawn_tensor(device, rows):
    k, n = SHAPES[2]
    p = _params(rows, k, n, device)
    d = _double(p)
    expected = linear_residual_reference(d["x"], _drawn_weight(n, k), torch.zeros(n).double(), d["residual"])
    linear_residual(p["x"], p["weight"], p["bias"], p["residual"], p["residual"], drawn=(KEY, STREAM, DRAW))
    _assert_fp32_close(p["residual"], expected)


@pytest.mark.parametrize("split", (False, True))
def test_step_in_memory_draws_the_step_it_reads(device, split, host_reads_forbidden):
    """The draw is iteration · per_iteration + offset, read from device memory by the
    kernel (never on the host): the same weights as the step passed by value, and new ones
    after the tensor changes."""
    k, n = RAGGED if split else SHAPES[0]
    rows = 27
    assert split_k(rows, n, k, CPU_SM_COUNT)[0] == (2 if split else 1)
    per_iteration, offset = 3, 2
    iteration = torch.tensor([1], dtype=torch.int64, device=device)  # draw 1·3 + 2 = 5 = DRAW
    p = _params(rows, k, n, device)
    # One config for both (a GPU's autotuner would tune the two variants apart): the same
    # products summed in the same order, so the same bits.
    config = DRAWN_CONFIGS[0]
    by_value = linear_residual(p["x"], None, None, p["residual"], _nan(rows, n, device), drawn=(KEY, STREAM, DRAW),
                               config=config)
    in_memory = StepInMemory(iteration, per_iteration, offset)
    with host_reads_forbidden():
        out = linear_residual(p["x"], None, None, p["residual"], _nan(rows, n, device),
                              drawn=(KEY, STREAM, in_memory), config=config)
    torch.testing.assert_close(out, by_value, rtol=0, atol=0)
    iteration.fill_(2)  # draw 8
    out = ln_linear(p["x"], p["ln_w"], p["ln_b"], None, None, _nan(rows, n, device), drawn=(KEY, STREAM, in_memory))
    d = _double(p)
    weight = weight_stream.drawn_tensor(SEED, 8, STREAM, (n, k), "cpu").double()
    _assert_fp32_close(out, ln_linear_reference(d["x"], d["ln_w"], d["ln_b"], weight, torch.zeros(n).double()))


@pytest.mark.parametrize(
    "config, drawn", [(c, False) for c in CONFIGS] + [(c, True) for c in DRAWN_CONFIGS],
    ids=[f"{c.kwargs}-{c.num_warps}w" for c in CONFIGS] + [f"drawn-{c.kwargs}-{c.num_warps}w" for c in DRAWN_CONFIGS],
)
def test_every_config_on_ragged_split_shapes(device, config, drawn):
    (k, n), rows = RAGGED, 27
    assert split_k(rows, n, k, CPU_SM_COUNT)[0] == 2
    p = _params(rows, k, n, device)
    d = _double(p)
    if drawn:
        d["weight"], d["bias"] = _drawn_weight(n, k), torch.zeros(n).double()
    options = dict(config=config, drawn=(KEY, STREAM, DRAW) if drawn else None)
    out = ln_linear(p["x"], p["ln_w"], p["ln_b"], p["weight"], p["bias"], _nan(rows, n, device), gelu=True,
                    **options)
    _assert_fp32_close(out, ln_linear_reference(d["x"], d["ln_w"], d["ln_b"], d["weight"], d["bias"], gelu=True))
    out = linear_residual(p["x"], p["weight"], p["bias"], p["residual"], _nan(rows, n, device), **options)
    _assert_fp32_close(out, linear_residual_reference(d["x"], d["weight"], d["bias"], d["residual"]))


@pytest.mark.parametrize("k, n", [SHAPES[1], SHAPES[2]])
@pytest.mark.parametrize("rows", (7, 64))
def test_bf16_matches_the_bf16_reference(device, rows, k, n):
    p = _params(rows, k, n, device, torch.bfloat16)
    c = {name: t.cpu() for name, t in p.items()}
    out = ln_linear(p["x"], p["ln_w"], p["ln_b"], p["weight"], p["bias"], _nan(rows, n, device, torch.bfloat16),
                    gelu=True)
    expected = ln_linear_reference(c["x"], c["ln_w"], c["ln_b"], c["weight"], c["bias"], gelu=True)
    torch.testing.assert_close(out.cpu().float(), expected.float(), rtol=1e-2, atol=1e-2)
    expected = linear_residual_reference(c["x"], c["weight"], c["bias"], c["residual"])
    linear_residual(p["x"], p["weight"], p["bias"], p["residual"], p["residual"])
    torch.testing.assert_close(p["residual"].cpu().float(), expected.float(), rtol=1e-2, atol=1e-2)


def test_tf32x3_is_as_accurate_as_ieee(device):
    """Three TF32 products per float32 product keep float32's accuracy (against float64); on
    a GPU this compares the tensor-core and CUDA-core paths, under the interpreter (exact
    products in every mode) both give the same result."""
    rows, (k, n) = 27, RAGGED
    p = _params(rows, k, n, device)
    d = _double(p)
    expected = ln_linear_reference(d["x"], d["ln_w"], d["ln_b"], d["weight"], d["bias"], gelu=True)

    def error(precision: str) -> float:
        out = ln_linear(p["x"], p["ln_w"], p["ln_b"], p["weight"], p["bias"], _nan(rows, n, device), gelu=True,
                        precision=precision)
        return float((out.cpu().double() - expected).norm() / expected.norm())

    assert error("tf32x3") <= max(2 * error("ieee"), 1e-6)


def test_tf32_precision_stays_close(device):
    rows, (k, n) = 27, SHAPES[2]
    p = _params(rows, k, n, device)
    d = _double(p)
    out = ln_linear(p["x"], p["ln_w"], p["ln_b"], p["weight"], p["bias"], _nan(rows, n, device), precision="tf32")
    expected = ln_linear_reference(d["x"], d["ln_w"], d["ln_b"], d["weight"], d["bias"])
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-2, atol=1e-2)


def test_autotuner_keeps_an_in_place_residual_right(device, monkeypatch):
    """The CUDA path's autotuner runs every config several times on the same ``out``; restoring
    it between runs keeps an in-place residual update right. Timings are faked (no GPU here)."""
    tuner = AUTOTUNED[False]
    ranks = iter(range(len(CONFIGS), 0, -1))  # the last config benchmarked is the "fastest"

    def bench(kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
        return [float(next(ranks))] * len(quantiles)

    monkeypatch.setitem(tuner.__dict__, "do_bench", bench)  # replaces the cached_property
    monkeypatch.setattr(tuner, "cache", {})
    rows, (k, n) = 27, SHAPES[2]
    p = _params(rows, k, n, device)
    d = _double(p)
    x, w, b, res = p["x"], p["weight"], p["bias"], p["residual"]
    tuner[lambda meta: (1, triton.cdiv(n, meta["BLOCK_N"]), 1)](
        x, w, b, x, x, res, res, res, x, rows, n, k, k, 0, 0, 0, 0, LN=False, GELU=False, RESIDUAL=True,
        DRAWN=False, STEP_IN_MEMORY=False, PARTIAL=False, PRECISION="ieee", BLOCK_M=block_m(rows),
    )
    assert tuner.best_config is CONFIGS[-1]
    _assert_fp32_close(res, linear_residual_reference(d["x"], d["weight"], d["bias"], d["residual"]))


def test_split_k_plans_real_shapes():
    assert split_k(27, 768, 3072, CPU_SM_COUNT) == (11, 288)  # gpt2 mlp c_proj: 12 column tiles
    assert split_k(27, 6400, 1600, CPU_SM_COUNT) == (2, 800)  # gpt2-xl c_fc: 100 column tiles
    assert split_k(27, 384, 128, CPU_SM_COUNT) == (1, 128)  # K too narrow to split
    for rows in ROWS:
        assert BLOCK_M_RANGE[0] <= block_m(rows) <= BLOCK_M_RANGE[1] and block_m(rows) >= min(rows, 64)
        for n in (100, 768, 1600, 2304, 3072, 4800, 6400):
            for k in (1, 100, 768, 1600, 3072, 6400):
                splits, k_per_split = split_k(rows, n, k, CPU_SM_COUNT)
                assert 1 <= splits <= MAX_SPLIT and k_per_split % K_ALIGN == 0
                assert (splits - 1) * k_per_split < k <= splits * k_per_split


def test_no_rows_launch_nothing(device):
    p = _params(1, 128, 384, device)
    out = torch.empty(0, 384, device=device)
    assert ln_linear(p["x"][:0], p["ln_w"], p["ln_b"], p["weight"], p["bias"], out) is out


def _bad_calls():
    """(name, call) pairs that must raise ValueError, built on valid CPU arguments."""
    k, n, rows = 128, 384, 7
    p = _params(rows, k, n, "cpu")
    x, lw, lb, w, b, res = p["x"], p["ln_w"], p["ln_b"], p["weight"], p["bias"], p["residual"]
    out = torch.empty(rows, n)
    wide = torch.empty(rows, 2 * k)
    shared = torch.zeros(rows * (k + n))
    x_in_shared = shared[: rows * k].view(rows, k)
    out_over_x = shared[rows * k - 1 : rows * (k + n) - 1].view(rows, n)
    res_shifted = shared[1 : rows * n + 1].view(rows, n)
    out_shared = shared[: rows * n].view(rows, n)

    def in_memory(dtype=torch.int64, size=1, offset=0) -> StepInMemory:
        return StepInMemory(torch.ones(size, dtype=dtype), 1, offset)

    return [
        ("non-contiguous x", lambda: ln_linear(wide[:, ::2], lw, lb, w, b, out),
         r"x must be a contiguous .*contiguous: False"),
        ("transposed weight", lambda: linear_residual(x, w.t().contiguous().t(), b, res, out),
         r"weight must be a contiguous .*contiguous: False"),
        ("float64 x", lambda: ln_linear(x.double(), lw, lb, w, b, out),
         r"x must be float32 or bfloat16, got torch.float64"),
        ("float16 everything", lambda: linear_residual(x.half(), w.half(), b.half(), res.half(), out.half()),
         r"x must be float32 or bfloat16, got torch.float16"),
        ("weight of the wrong shape", lambda: ln_linear(x, lw, lb, w[:, :64].contiguous(), b, out),
         r"weight must be .*shape \(384, 128\).*got torch.float32 \(384, 64\)"),
        ("bias of the wrong length", lambda: ln_linear(x, lw, lb, w, b[:10].contiguous(), out),
         r"bias must be .*shape \(384,\)"),
        ("ln_w of the wrong length", lambda: ln_linear(x, lw[:64].contiguous(), lb, w, b, out),
         r"ln_w must be .*shape \(128,\)"),
        ("no LayerNorm", lambda: ln_linear(x, None, None, w, b, out), r"ln_w and ln_b are required"),
        ("out of the wrong shape", lambda: ln_linear(x, lw, lb, w, b, torch.empty(rows, n + 1)),
         r"weight must be .*shape \(385, 128\)"),
        ("x vector", lambda: ln_linear(x[0], lw, lb, w, b, out), r"x and out must be matrices"),
        ("mixed dtypes", lambda: ln_linear(x, lw.bfloat16(), lb, w, b, out),
         r"ln_w must be a contiguous torch.float32 .*got torch.bfloat16"),
        ("no weight", lambda: linear_residual(x, None, None, res, out),
         r"weight and bias are required unless drawn is given"),
        ("out overlapping x", lambda: linear_residual(x_in_shared, w, b, res, out_over_x), r"out must not overlap x"),
        ("out overlapping the weight", lambda: ln_linear(x, lw, lb, w, b, w.view(-1)[: rows * n].view(rows, n)),
         r"out must not overlap x"),
        ("residual partly overlapping out", lambda: linear_residual(x, w, b, res_shifted, out_shared),
         r"residual must be out itself or not overlap it"),
        ("unknown precision", lambda: ln_linear(x, lw, lb, w, b, out, precision="tf32x2"), r"precision must be one of"),
        ("stream out of range", lambda: ln_linear(x, lw, lb, None, None, out, drawn=(KEY, 2**32, 0)),
         r"stream must be in \[0, 4294967296\)"),
        ("negative step", lambda: ln_linear(x, lw, lb, None, None, out, drawn=(KEY, 0, -1)),
         r"step must be in .*got -1"),
        ("int32 step tensor", lambda: ln_linear(x, lw, lb, None, None, out, drawn=(KEY, 0, in_memory(torch.int32))),
         r"iteration must be a contiguous torch.int64 .*got torch.int32"),
        ("step in a tensor of two", lambda: ln_linear(x, lw, lb, None, None, out, drawn=(KEY, 0, in_memory(size=2))),
         r"iteration must be .*got torch.int64 \(2,\)"),
        ("negative step offset", lambda: ln_linear(x, lw, lb, None, None, out, drawn=(KEY, 0, in_memory(offset=-1))),
         r"step offset must be in .*got -1"),
        ("unknown config", lambda: ln_linear(x, lw, lb, w, b, out, config=object()), r"config must be one of CONFIGS"),
        ("drawn config for stored weights", lambda: ln_linear(x, lw, lb, w, b, out, config=DRAWN_CONFIGS[0]),
         r"config must be one of CONFIGS"),
    ]


@pytest.mark.parametrize("name, call, message", _bad_calls(), ids=[name for name, _, _ in _bad_calls()])
def test_rejects_bad_arguments(name, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _gemm_spec(label: str, config, block_m: int, dtype: str = "fp32", **flags) -> AotSpec:
    """fused_linear_kernel for one config, BLOCK_M, dtype and variant (flags override LN + GELU)."""
    pointer = f"*{dtype}"
    signature = {name: pointer for name in ("x_ptr", "w_ptr", "b_ptr", "ln_w_ptr", "ln_b_ptr", "res_ptr", "out_ptr")}
    signature |= {"part_ptr": "*fp32", "iteration_ptr": "*i64", "M": "i32", "N": "i32", "K": "i32",
                  "k_per_split": "i32", "key": "u64", "stream": "u32", "step": "u64", "steps_per_iteration": "u64"}
    constexprs = dict(LN=True, GELU=True, RESIDUAL=False, DRAWN=False, STEP_IN_MEMORY=False, PARTIAL=False,
                      PRECISION="ieee")
    constexprs |= flags | {"BLOCK_M": block_m, **config.kwargs}
    signature |= {name: "constexpr" for name in constexprs}
    return AotSpec(
        label=f"fused_linear_kernel {label} BLOCK_M={block_m} {config.kwargs} warps={config.num_warps}",
        kernel="gpt2fast.kernels.linear:fused_linear_kernel", signature=signature, constexprs=constexprs,
        options={"num_warps": config.num_warps, "num_stages": config.num_stages}
        | ({"maxnreg": config.maxnreg} if config.maxnreg else {}),
    )


def _finish_spec(label: str, dtype: str = "fp32", **flags) -> AotSpec:
    pointer = f"*{dtype}"
    constexprs = flags | {"BLOCK_M": FINISH_BLOCK_M, "BLOCK_N": FINISH_BLOCK_N}
    signature = {"part_ptr": "*fp32", "b_ptr": pointer, "res_ptr": pointer, "out_ptr": pointer,
                 "M": "i32", "N": "i32", "splits": "i32"} | {name: "constexpr" for name in constexprs}
    return AotSpec(label=f"split_k_finish_kernel {label}", kernel="gpt2fast.kernels.linear:split_k_finish_kernel",
                   signature=signature, constexprs=constexprs, options={"num_warps": FINISH_NUM_WARPS})


# Every autotuner config with the heaviest fp32 variant (LayerNorm + GELU) and the residual
# one at every BLOCK_M (register use does not grow monotonically with it: ptxas spilled drawn
# variants at 16 and 32 but not 64); the other variants once. Sizes are runtime arguments:
# BLOCK_M = 32 is the real M = 27 of gpt2 and gpt2-xl alike.
EVERY_CONFIG = ([(c, {}, "") for c in CONFIGS] + [(c, {"DRAWN": True}, "drawn ") for c in DRAWN_CONFIGS]
                + [(c, {"DRAWN": True, "STEP_IN_MEMORY": True}, "drawn step in memory ") for c in DRAWN_CONFIGS])
AOT_SPECS = (
    [_gemm_spec(f"{prefix}ln+gelu", c, m, **flags) for m in BLOCK_MS for c, flags, prefix in EVERY_CONFIG]
    + [_gemm_spec(f"{prefix}residual", c, m, LN=False, GELU=False, RESIDUAL=True, **flags)
       for m in BLOCK_MS for c, flags, prefix in EVERY_CONFIG]
    + [_gemm_spec("drawn residual partial", c, 64, LN=False, GELU=False, DRAWN=True, PARTIAL=True)
       for c in DRAWN_CONFIGS]
    + [
        _gemm_spec("ln partial", CONFIGS[1], 64, GELU=False, PARTIAL=True),
        *(_gemm_spec("tf32x3 ln+gelu", c, 32, PRECISION="tf32x3") for c in CONFIGS),
        _gemm_spec("tf32 ln+gelu", CONFIGS[1], 64, PRECISION="tf32"),
        _gemm_spec("bf16 ln+gelu", CONFIGS[1], 64, dtype="bf16"),
        _gemm_spec("bf16 residual", CONFIGS[1], 64, dtype="bf16", LN=False, GELU=False, RESIDUAL=True),
        _finish_spec("bias+gelu", HAS_BIAS=True, GELU=True, RESIDUAL=False),
        _finish_spec("residual", HAS_BIAS=False, GELU=False, RESIDUAL=True),
        _finish_spec("bf16 bias+residual", dtype="bf16", HAS_BIAS=True, GELU=False, RESIDUAL=True),
    ]
)


def test_kernels_compile_ahead_of_time():
    check_compiles(AOT_SPECS, workers=2)
