"""skinny_linear against its float64 reference, its split-K plan, and its sm_80 / sm_90 builds.

Launches run under Triton's interpreter on CPU tensors (compiled on a GPU when there is one,
see tests/conftest.py); outputs are NaN-poisoned first. The interpreter multiplies exactly
whatever ``input_precision`` says, so these tests check the indexing, the split-K reduction and
the epilogues, not tf32x3's accuracy (a GPU test's job). The ahead-of-time builds run in one
child process for the whole module and are read for spills, occupancy and SASS.
"""

from __future__ import annotations

import pytest
import torch
import triton

from aot import CAPABILITIES, AotSpec, compile_in_child
from compare import assert_relative_error
from gpt2fast.kernels.linear import CPU_SM_COUNT
from gpt2fast.kernels.skinny_linear import (
    BLOCK_K,
    BLOCK_N,
    IEEE_BLOCK_K,
    IEEE_MAX_BLOCK_M,
    MAX_SPLIT,
    MIN_SLICE_BLOCKS,
    NUM_STAGES,
    NUM_WARPS,
    PREFETCH_LINES,
    PROGRAMS_PER_SM,
    WAVE_EFFICIENCY,
    layer_norm_stats,
    ln_tiles,
    plan,
    skinny_linear,
    skinny_linear_reference,
    split_chunk,
    stats_shape,
    wave_efficiency,
)

ROWS = (1, 7, 27, 64, 130)
ODD_SHAPES = ((100, 80), (48, 200))  # (K, N) off every block size
EPILOGUES = ("none", "gelu", "residual", "residual in place")
GPT2_SHAPES = ((768, 2304), (768, 768), (768, 3072), (3072, 768))  # (K, N): c_attn, attn/mlp c_proj, c_fc
GPT2_XL_SHAPES = ((1600, 4800), (1600, 1600), (1600, 6400), (6400, 1600))


def _params(rows: int, k: int, n: int, device, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rows * 100_003 + k * 101 + n)
    params = {"x": torch.randn(rows, k, generator=g), "weight": 0.05 * torch.randn(n, k, generator=g),
              "bias": 0.1 * torch.randn(n, generator=g), "residual": torch.randn(rows, n, generator=g)}
    return {name: t.to(device=device, dtype=dtype) for name, t in params.items()}


def _nan(rows: int, n: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.full((rows, n), float("nan"), device=device, dtype=dtype)


def _run(p, epilogue: str, device, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, expected in float64) for one epilogue; ``options`` go to skinny_linear."""
    rows, n = p["residual"].shape
    residual = p["residual"] if epilogue.startswith("residual") else None
    out = p["residual"] if epilogue == "residual in place" else _nan(rows, n, device, p["x"].dtype)
    d = {name: t.cpu().double() for name, t in p.items()}
    expected = skinny_linear_reference(d["x"], d["weight"], d["bias"], gelu=epilogue == "gelu",
                                       residual=d["residual"] if residual is not None else None)
    returned = skinny_linear(p["x"], p["weight"], p["bias"], out, gelu=epilogue == "gelu", residual=residual,
                             **options)
    assert returned is out
    return out, expected


@pytest.mark.parametrize("splits", (1, 2))
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("k, n", ODD_SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_odd_sizes_match_reference(device, rows, k, n, epilogue, splits):
    out, expected = _run(_params(rows, k, n, device), epilogue, device, splits=splits)
    assert_relative_error(out, expected, 1e-5)


@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_ieee_precision_matches_reference(device, epilogue):
    out, expected = _run(_params(27, 100, 80, device), epilogue, device, precision="ieee", splits=2)
    assert_relative_error(out, expected, 1e-5)


@pytest.mark.parametrize("k, n, epilogue", [(*GPT2_SHAPES[0], "none"), (*GPT2_SHAPES[2], "gelu"),
                                            (*GPT2_SHAPES[3], "residual in place")])
def test_gpt2_shapes_with_the_planned_split(device, k, n, epilogue):
    assert plan(27, n, k, CPU_SM_COUNT).splits > 1
    out, expected = _run(_params(27, k, n, device), epilogue, device)
    assert_relative_error(out, expected, 1e-5)


@pytest.mark.parametrize("epilogue", ("gelu", "residual in place"))
@pytest.mark.parametrize("rows", (7, 64))
def test_bf16_matches_the_reference(device, rows, epilogue):
    """bf16 operands multiply exactly and accumulate in fp32; out is rounded once to bf16
    (the interpreter truncates instead of rounding to nearest: 2⁻⁷ rather than 2⁻⁸)."""
    out, expected = _run(_params(rows, 200, 80, device, torch.bfloat16), epilogue, device, splits=3)
    assert_relative_error(out, expected, 8e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tf32x3's accuracy needs real tensor cores")
def test_tf32x3_is_as_accurate_as_ieee_on_a_gpu(device):
    """At a gpt2-xl shape, three TF32 products err like float32's IEEE products (here within 1.5×)."""
    k, n = GPT2_XL_SHAPES[1]
    p = _params(27, k, n, device)
    errors = {}
    for precision in ("ieee", "tf32x3"):
        out, expected = _run(p, "none", device, precision=precision)
        errors[precision] = float(torch.linalg.vector_norm(out.cpu().double() - expected)
                                  / torch.linalg.vector_norm(expected))
    assert errors["tf32x3"] <= 1.5 * errors["ieee"] + 1e-8, errors


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # GELU of y << 0: exp → inf, y/inf = -0
def test_counters_return_to_zero_and_calls_repeat_bitwise(device):
    k, n = GPT2_SHAPES[3]
    p = _params(27, k, n, device)
    chosen = plan(27, n, k, CPU_SM_COUNT)
    assert chosen.splits > 1
    counters = torch.zeros(chosen.tiles(27, n) + 3, dtype=torch.int32, device=device)
    first = skinny_linear(p["x"], p["weight"], p["bias"], _nan(27, n, device), gelu=True, counters=counters)
    assert torch.equal(counters.cpu(), torch.zeros_like(counters.cpu()))
    second = skinny_linear(p["x"], p["weight"], p["bias"], _nan(27, n, device), gelu=True, counters=counters)
    assert torch.equal(counters.cpu(), torch.zeros_like(counters.cpu()))
    assert torch.equal(first, second)  # the partials are summed in a fixed tree whoever arrives last


def test_no_rows_launch_nothing(device):
    p = _params(1, 48, 80, device)
    out = torch.empty(0, 80, device=device)
    assert skinny_linear(p["x"][:0], p["weight"], p["bias"], out) is out


def _tile_stats(y: torch.Tensor) -> torch.Tensor:
    """float64 (mean, M2) per row and 64-column tile of y [M, N]: [⌈N/64⌉, M, 2]."""
    y = y.cpu().double()
    tiles = [y[:, i:i + BLOCK_N] for i in range(0, y.shape[1], BLOCK_N)]
    return torch.stack([torch.stack([t.mean(1), ((t - t.mean(1, keepdim=True)) ** 2).sum(1)], 1) for t in tiles])


def _assert_stats(stats: torch.Tensor, y: torch.Tensor, bound: float) -> None:
    expected = _tile_stats(y)
    assert_relative_error(stats[..., 0], expected[..., 0], bound)  # means
    assert_relative_error(stats[..., 1], expected[..., 1], bound)  # M2: each on its own scale


def _ln_params(rows: int, k: int, device, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rows * 7 + k)
    p = {"ln_w": 1 + 0.1 * torch.randn(k, generator=g), "ln_b": 0.1 * torch.randn(k, generator=g)}
    return {name: t.to(device=device, dtype=dtype) for name, t in p.items()}


@pytest.mark.parametrize("epilogue, splits", (("residual", 1), ("residual in place", 2)))
@pytest.mark.parametrize("rows", ROWS)
def test_residual_epilogue_writes_the_statistics_of_what_it_stored(device, rows, epilogue, splits):
    """N = 200: three full 64-column tiles and one of 8; with split-K the last program of a tile writes them."""
    p = _params(rows, 100, 200, device)
    stats = torch.full(stats_shape(rows, 200), float("nan"), device=device)
    out, expected = _run(p, epilogue, device, splits=splits, stats=stats)
    assert_relative_error(out, expected, 1e-5)
    _assert_stats(stats, out, 1e-6)


@pytest.mark.parametrize("rows", (7, 64))
def test_bf16_statistics_describe_the_rounded_stored_values(device, rows):
    p = _params(rows, 200, 80, device, torch.bfloat16)
    stats = torch.full(stats_shape(rows, 80), float("nan"), device=device)
    out, _ = _run(p, "residual in place", device, splits=3, stats=stats)
    _assert_stats(stats, out, 1e-6)  # fp32 sums of the bf16 values stored, not of the fp32 results


@pytest.mark.parametrize("rows", ROWS)
def test_layer_norm_stats_of_x(device, rows):
    x = _params(rows, 200, 48, device)["x"]
    stats = torch.full(stats_shape(rows, 200), float("nan"), device=device)
    assert layer_norm_stats(x, stats) is stats
    _assert_stats(stats, x, 1e-6)


def _run_ln(p, ln, epilogue: str, device, x=None, ln_stats=None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, expected in float64) of LayerNorm → linear → epilogue, the statistics from layer_norm_stats
    unless given."""
    x = p["x"] if x is None else x
    rows, n = x.shape[0], p["weight"].shape[0]
    out = _nan(rows, n, device, x.dtype)
    d = {name: t.cpu().double() for name, t in (p | ln).items()}
    expected = skinny_linear_reference(x.cpu().double(), d["weight"], d["bias"], gelu=epilogue == "gelu",
                                       ln_w=d["ln_w"], ln_b=d["ln_b"])
    ln_stats = layer_norm_stats(x) if ln_stats is None else ln_stats
    skinny_linear(x, p["weight"], p["bias"], out, gelu=epilogue == "gelu", ln_w=ln["ln_w"], ln_b=ln["ln_b"],
                  ln_stats=ln_stats, **options)
    return out, expected


@pytest.mark.parametrize("epilogue, splits", (("none", 1), ("gelu", 2)))
@pytest.mark.parametrize("rows", ROWS)
def test_layer_norm_prologue_matches_layer_norm_then_linear(device, rows, epilogue, splits):
    """K = 200: the statistics of four 64-column tiles (the last of 8) merged per row."""
    out, expected = _run_ln(_params(rows, 200, 80, device), _ln_params(rows, 200, device), epilogue, device,
                            splits=splits)
    assert_relative_error(out, expected, 1e-5)


def test_layer_norm_of_a_residual_gemm_from_its_epilogue_statistics(device):
    """The block's chain: mlp c_proj writes the residual stream and its statistics, ln_1 → c_attn reads both."""
    rows, k, n = 27, 100, 200
    p, next_layer = _params(rows, k, n, device), _params(rows, n, 80, device)
    stats = torch.full(stats_shape(rows, n), float("nan"), device=device)
    skinny_linear(p["x"], p["weight"], p["bias"], p["residual"], residual=p["residual"], stats=stats, splits=2)
    out, expected = _run_ln(next_layer, _ln_params(rows, n, device), "none", device, x=p["residual"],
                            ln_stats=stats, splits=2)
    assert_relative_error(out, expected, 1e-5)


def test_layer_norm_of_constant_rows_and_large_offsets(device):
    """Rows of one value (variance 0: x̂ = β) and rows 1e4 + N(0, 1), whose variance a
    sum-of-squares formula would lose to cancellation (E[x²] − μ² ≈ 1e8 − 1e8 in fp32)."""
    rows, k = 7, 200
    p, ln = _params(rows, k, 80, device), _ln_params(rows, k, device)
    x = p["x"].cpu()
    x[0], x[1], x[2] = 1.5, 1e4, 0.0
    x[3:] += 1e4
    out, expected = _run_ln(p, ln, "none", device, x=x.to(device))
    assert_relative_error(out[:3], expected[:3], 1e-5)
    # fp32 holds 1e4 + N(0, 1), and μ, to 2⁻¹⁰ (1e-3 of the std): 3e-4 here, PyTorch's fp32 layer_norm 4e-4
    assert_relative_error(out[3:], expected[3:], 1e-3)


@pytest.mark.parametrize("rows", (7, 64))
def test_batched_loads_in_several_batches(device, rows, monkeypatch):
    """Loads capped below the work (as at large S or C): the reduction in batches of 2 of its
    4 partial tiles (splits=5 at K = 200: 4 slices of 64), the LayerNorm merge in batches of 2
    of its 4 tiles (Chan's formula between batches), both fixed in order and repeatable bitwise."""
    import gpt2fast.kernels.skinny_linear as module

    tile_m = min(64, max(16, triton.next_power_of_2(rows)))
    monkeypatch.setattr(module, "SPLIT_CHUNK_ELEMENTS", {tile_m: 2 * BLOCK_N * tile_m})
    monkeypatch.setattr(module, "LN_MERGE_ELEMENTS", 2 * tile_m)
    assert split_chunk(4, tile_m) == 2 and ln_tiles(200, tile_m) == 2
    p, ln = _params(rows, 200, 80, device), _ln_params(rows, 200, device)
    out, expected = _run_ln(p, ln, "gelu", device, splits=5)
    assert_relative_error(out, expected, 1e-5)
    again, _ = _run_ln(p, ln, "gelu", device, splits=5)
    assert torch.equal(out, again)


@pytest.mark.parametrize("rows", (7, 64))
def test_bf16_layer_norm_prologue(device, rows):
    """x̂ rounded to bf16 before the product (truncated by the interpreter), as PyTorch's bf16 layer_norm output is."""
    out, expected = _run_ln(_params(rows, 200, 80, device, torch.bfloat16),
                            _ln_params(rows, 200, device, torch.bfloat16), "gelu", device, splits=3)
    assert_relative_error(out, expected, 8e-3)


def _bad_calls():
    x, w, b, out = torch.zeros(4, 48), torch.zeros(80, 48), torch.zeros(80), torch.zeros(4, 80)
    buffer = torch.zeros(4 * 80)
    return [
        ("dtype", lambda: skinny_linear(x.double(), w.double(), b.double(), out.double()), "float32 or bfloat16"),
        ("mixed dtypes", lambda: skinny_linear(x, w.bfloat16(), b, out), "weight must be"),
        ("weight shape", lambda: skinny_linear(x, w[:, :40].contiguous(), b, out), "weight must be"),
        ("bias shape", lambda: skinny_linear(x, w, b[:79], out), "bias must be"),
        ("out shape", lambda: skinny_linear(x, w, b, out[:3]), "out must be"),
        ("strided x", lambda: skinny_linear(torch.zeros(48, 4).t(), w, b, out), "x must be"),
        ("vector x", lambda: skinny_linear(x[0], w, b, out), "matrices"),
        ("precision", lambda: skinny_linear(x, w, b, out, precision="bf16"), "precision must be"),
        ("unknown precision", lambda: skinny_linear(x, w, b, out, precision="fp8"), "precision must be"),
        ("gelu and residual", lambda: skinny_linear(x, w, b, out, gelu=True, residual=out), "separate epilogues"),
        ("residual shape", lambda: skinny_linear(x, w, b, out, residual=out[:3]), "residual must be"),
        ("residual overlaps out", lambda: skinny_linear(x[:2], w, b, out[:2], residual=out[1:3]), "not overlap"),
        ("out overlaps x", lambda: skinny_linear(buffer[:192].view(4, 48), w, b, buffer.view(4, 80)),
         "must not overlap"),
        ("no columns", lambda: skinny_linear(x[:, :0], w[:, :0], b, out), "at least one column"),
        ("splits", lambda: skinny_linear(x, w, b, out, splits=3), "splits must be"),
        ("counters dtype", lambda: skinny_linear(x, w, b, out, counters=torch.zeros(2, dtype=torch.int64)),
         "counters must be"),
        ("counters size", lambda: skinny_linear(x, w, b, out, splits=2, counters=torch.zeros(1, dtype=torch.int32)),
         "counters must be"),
        ("stats without residual", lambda: skinny_linear(x, w, b, out, stats=torch.zeros(2, 4, 2)), "residual epilogue"),
        ("stats shape", lambda: skinny_linear(x, w, b, out, residual=out, stats=torch.zeros(1, 4, 2)), "stats must be"),
        ("stats layout", lambda: skinny_linear(x, w, b, out, residual=out, stats=torch.zeros(2, 4, 3)), "stats must be"),
        ("stats dtype", lambda: skinny_linear(x, w, b, out, residual=out, stats=torch.zeros(2, 4, 2).bfloat16()),
         "stats must be"),
        ("stats overlap out", lambda: skinny_linear(x, w, b, out, residual=out, stats=out.view(-1)[:16].view(2, 4, 2)),
         "must not overlap"),
        ("ln without stats", lambda: skinny_linear(x, w, b, out, ln_w=torch.ones(48), ln_b=torch.zeros(48)),
         "together"),
        ("ln_w shape", lambda: skinny_linear(x, w, b, out, ln_w=torch.ones(40), ln_b=torch.zeros(48),
                                             ln_stats=torch.zeros(1, 4, 2)), "ln_w must be"),
        ("ln_stats shape", lambda: skinny_linear(x, w, b, out, ln_w=torch.ones(48), ln_b=torch.zeros(48),
                                                 ln_stats=torch.zeros(2, 4, 2)), "ln_stats must be"),
        ("x stats shape", lambda: layer_norm_stats(x, torch.zeros(1, 4, 3)), "stats must be"),
    ]


@pytest.mark.parametrize("call, match", [c[1:] for c in _bad_calls()], ids=[c[0] for c in _bad_calls()])
def test_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("k, n", GPT2_SHAPES + GPT2_XL_SHAPES)
@pytest.mark.parametrize("rows", (1, 16, 27, 64, 130))
def test_plan_fills_the_gpu(rows, k, n, dtype):
    """Slices are at least MIN_SLICE_BLOCKS whole BLOCK_K steps, and the grid holds PROGRAMS_PER_SM
    programs per SM unless K is too short for that many slices of MIN_SLICE_BLOCKS steps; no
    larger S balances the SMs better; gpt2-xl's c_attn, c_fc and mlp c_proj reach WAVE_EFFICIENCY."""
    p = plan(rows, n, k, CPU_SM_COUNT, dtype)
    assert p.block_m == min(64, max(16, triton.next_power_of_2(rows))) and p.block_n == BLOCK_N >= 64
    k_steps = triton.cdiv(k, p.block_k)
    assert p.block_k == BLOCK_K[dtype] and 1 <= p.splits <= min(MAX_SPLIT, k_steps)
    assert p.splits == 1 or k_steps // p.splits >= MIN_SLICE_BLOCKS  # the narrowest slice fills a pipeline
    assert p.num_stages >= 3
    m_tiles, n_tiles, splits = p.grid(rows, n)
    programs = m_tiles * n_tiles * splits
    assert programs >= PROGRAMS_PER_SM * CPU_SM_COUNT or k_steps // MIN_SLICE_BLOCKS <= splits, (programs, p)
    efficiency = wave_efficiency(m_tiles * n_tiles, k_steps, splits, CPU_SM_COUNT)
    assert all(efficiency >= wave_efficiency(m_tiles * n_tiles, k_steps, other, CPU_SM_COUNT)
               for other in range(splits, min(MAX_SPLIT, k_steps // MIN_SLICE_BLOCKS) + 1))  # none better
    if (k, n) in (GPT2_XL_SHAPES[0], GPT2_XL_SHAPES[2], GPT2_XL_SHAPES[3]):
        assert efficiency >= WAVE_EFFICIENCY, (programs, p)


# Every configuration the plan can choose, on aligned pointers and K (the JIT specialises the
# real shapes so, every GPT-2 K being a multiple of 16): fp32 with tf32x3 products and bf16, at
# every BLOCK_M, with the split-K path (partials, tickets, the reduction, GELU) and the direct
# residual one; the LayerNorm prologue (with split and GELU, as c_fc) and the residual epilogue
# writing statistics (with split, as both c_proj); fp32 "ieee" (on the CUDA cores, no MMA) in
# every variant at its BLOCK_Ms (16 and 32), and "tf32" as --dtype tf32 runs c_fc and mlp c_proj.
VARIANTS = {"split+gelu": ("PARTIAL", "GELU"), "residual": ("RESIDUAL",), "ln+split+gelu": ("LN", "PARTIAL", "GELU"),
            "split+residual+stats": ("PARTIAL", "RESIDUAL", "STATS")}
CONFIGS = [(dtype, precision, block_m, variant)
           for dtype, precision in (("fp32", "tf32x3"), ("bf16", "tf32x3"))
           for block_m in (16, 32, 64) for variant in ("split+gelu", "residual")]
CONFIGS += [(dtype, "tf32x3", block_m, "ln+split+gelu") for dtype in ("fp32", "bf16") for block_m in (16, 32, 64)]
CONFIGS += [(dtype, "tf32x3", block_m, "split+residual+stats") for dtype in ("fp32", "bf16") for block_m in (16, 32, 64)]
CONFIGS += [("fp32", "tf32", 32, "ln+split+gelu"), ("fp32", "tf32", 32, "split+residual+stats")]
# fp32 "ieee" (the engine's default, on the FMA units): every variant at its BLOCK_Ms
CONFIGS += [("fp32", "ieee", block_m, variant) for block_m in (16, IEEE_MAX_BLOCK_M) for variant in VARIANTS]
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _spec(dtype: str, precision: str, block_m: int, variant: str, capability: int) -> AotSpec:
    pointer = f"*{dtype}"
    signature = {name: pointer for name in ("x_ptr", "w_ptr", "b_ptr", "res_ptr", "out_ptr")}
    signature |= {"part_ptr": "*fp32", "count_ptr": "*i32", "ln_w_ptr": pointer, "ln_b_ptr": pointer,
                  "ln_stats_ptr": "*fp32", "stats_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32",
                  "splits": "i32"}
    flags = {flag: flag in VARIANTS[variant] for flag in ("GELU", "RESIDUAL", "PARTIAL", "LN", "STATS")}
    constexprs = dict(**flags, PRECISION=precision, BF16_AS_FP32=False, BLOCK_M=block_m, BLOCK_N=BLOCK_N,
                      BLOCK_K=IEEE_BLOCK_K if precision == "ieee" else BLOCK_K[TORCH_DTYPES[dtype]],
                      # the widest batched loads the launcher can choose at this BLOCK_M (most registers)
                      SPLIT_CHUNK=split_chunk(MAX_SPLIT, block_m) if flags["PARTIAL"] else 1,
                      LN_TILES=ln_tiles(1 << 20, block_m) if flags["LN"] else 1,
                      PDL=capability >= 90, PREFETCH_LINES=PREFETCH_LINES)  # as the launcher builds it there
    signature |= {name: "constexpr" for name in constexprs}
    products = precision if dtype == "fp32" else "bf16"
    label = f"{dtype} {products} BLOCK_M={block_m} {variant}{' pdl' if constexprs['PDL'] else ''}"
    return AotSpec(label=label, kernel="gpt2fast.kernels.skinny_linear:skinny_linear_kernel", signature=signature,
                   constexprs=constexprs, options={"num_warps": NUM_WARPS, "num_stages": NUM_STAGES},
                   aligned=True, divisible=("K",), sass=True, capabilities=(capability,))


AOT_SPECS = [_spec(*config, capability) for config in CONFIGS for capability in CAPABILITIES]
SHARED_PER_SM = {80: 163 * 1024, 90: 227 * 1024}


@pytest.fixture(scope="module")
def compiled():
    specs = AOT_SPECS
    results = compile_in_child(specs)
    assert len(results) == len(specs)
    return {result.label: result for result in results}, specs


def test_compiles_ahead_of_time_on_the_tensor_cores(compiled):
    results, specs = compiled
    for spec in specs:
        dtype, block_m, block_k = spec.label.split()[0], spec.constexprs["BLOCK_M"], spec.constexprs["BLOCK_K"]
        stage_bytes = (BLOCK_N + block_m) * block_k * (4 if dtype == "fp32" else 2)
        for capability in spec.capabilities:
            r = results[spec.label]
            counts = {op: r.count(op) for op in ("HGMMA", "HMMA", "FFMA", "LDGSTS")}
            print(f"\n{r.line()}, {r.num_warps} warps, {counts}", end="")
            assert r.spill_store_bytes == 0 and r.spill_load_bytes == 0, r.line()
            assert r.n_regs * 32 * r.num_warps <= 65536 // 2, r.line()  # 2 CTAs per SM by registers
            assert r.shared_bytes <= SHARED_PER_SM[capability] // 2, r.line()  # and by shared memory
            # programmatic dependent launch (sm_90): the L2 prefetches of the first weight steps
            # (one 128-byte line per row and step: BLOCK_N · NUM_STAGES / threads per thread), the
            # early launch of the next kernel (PREEXIT) and one wait for the previous (ACQBULK)
            pdl = (r.count("CCTL.E.PML2"), r.count("PREEXIT"), r.count("ACQBULK"))
            want = (BLOCK_N * PREFETCH_LINES // (32 * NUM_WARPS), 1, 1) if spec.constexprs["PDL"] else (0, 0, 0)
            assert pdl == want, (r.line(), pdl)
            # ... in that order: the prefetches and the early launch before the wait, so they
            # overlap the kernel before (bench/gpu_timeline.py models that overlap)
            assert r.count_before("CCTL.E.PML2", "ACQBULK") == pdl[0], r.line()
            assert r.count_before("PREEXIT", "ACQBULK") == pdl[1], r.line()
            if spec.constexprs["PRECISION"] == "ieee" and dtype == "fp32":
                continue
            assert r.shared_bytes >= 3 * stage_bytes, r.line()  # at least 3 buffers of both operands
            wide = sum(n for op, n in r.opcodes.items() if op.startswith("LDGSTS") and op.endswith(".128"))
            # every operand load a 16-byte cp.async; LayerNorm's γ and β rows (BLOCK_K floats, one
            # per thread) may take a 4-byte one each per stage
            narrow = 2 * NUM_STAGES if spec.constexprs["LN"] else 0
            assert 0 < wide and r.count("LDGSTS") - narrow <= wide, r.line()
            assert r.count("HGMMA" if capability == 90 else "HMMA") > 0, r.line()
            if not any(spec.constexprs[flag] for flag in ("GELU", "LN", "STATS")):  # no FMAs outside the products
                assert r.count("FFMA") == 0, r.line()  # the products all on the tensor cores
    print()
