"""lm_head_argmax and lm_head_logits against their PyTorch references, and compiled for
sm_80 / sm_90.

The interpreter is slow, so vocabularies are small slices (V <= 1031, C = 128, plus a
ragged C = 80); ties are planted with integer-valued data, where every logit is exact in
float32 whatever the summation order, so the tie rule (lowest index) is what is tested.
"""

from __future__ import annotations

import pytest
import torch

from aot import AotSpec, check_compiles
from gpt2fast import weight_stream
from gpt2fast.kernels import lm_head
from gpt2fast.kernels.checks import PRECISIONS
from gpt2fast.kernels.lm_head import (
    ARGMAX_BLOCK_K,
    ARGMAX_BLOCK_V,
    ARGMAX_WARPS,
    COMBINE_BLOCK,
    LOGITS_BLOCK_K,
    LOGITS_BLOCK_V,
    NUM_WARPS,
    argmax_config,
    lm_head_argmax,
    lm_head_argmax_reference,
    lm_head_logits,
    lm_head_logits_reference,
)
from gpt2fast.philox import mix_key

WIDTH = 128
VOCABS = (1, 7, 300, 1031)
ROWS = (1, 7, 27, 64, 130)
FEW_PROGRAMS = 3  # forces splits of several vocab tiles: the running max and the combine
REAL_WIDTHS = (768, 1600)
EDGES = (0, ARGMAX_BLOCK_V - 1, ARGMAX_BLOCK_V, 2 * ARGMAX_BLOCK_V - 1, 5 * ARGMAX_BLOCK_V, 1029, 1030)
# A tie partner per edge: in another tile (first/last, neighbours) or in the same tile.
TIE_PARTNERS = (1028, ARGMAX_BLOCK_V + 1, ARGMAX_BLOCK_V + 26, ARGMAX_BLOCK_V + 36, 5 * ARGMAX_BLOCK_V - 1,
                1025, 67)


def partials_spec(width: int, config: tuple[int, int, str], drawn: bool, dtype: str = "fp32") -> AotSpec:
    block_m, num_warps, precision = config
    return AotSpec(
        label=f"argmax_partials_kernel C={width} BLOCK_M={block_m} {precision}{' drawn' if drawn else ''} {dtype}",
        kernel="gpt2fast.kernels.lm_head:argmax_partials_kernel",
        signature={"y_ptr": f"*{dtype}", "wte_ptr": f"*{dtype}", "best_ptr": "*fp32", "index_ptr": "*i32",
                   "n_rows": "i32", "n_vocab": "i32", "tiles_per_split": "i32",
                   "key": "u64", "stream": "u32", "step": "u64", "N_EMBD": "constexpr",
                   "DRAWN": "constexpr", "PRECISION": "constexpr", "BLOCK_M": "constexpr",
                   "BLOCK_V": "constexpr", "BLOCK_K": "constexpr"},
        constexprs={"N_EMBD": width, "DRAWN": drawn, "PRECISION": precision, "BLOCK_M": block_m,
                    "BLOCK_V": ARGMAX_BLOCK_V, "BLOCK_K": ARGMAX_BLOCK_K},
        options={"num_warps": num_warps},
    )


def logits_spec(width: int, drawn: bool, dtype: str = "fp32") -> AotSpec:
    return AotSpec(
        label=f"logits_kernel C={width}{' drawn' if drawn else ''} {dtype}",
        kernel="gpt2fast.kernels.lm_head:logits_kernel",
        signature={"y_ptr": f"*{dtype}", "wte_ptr": f"*{dtype}", "out_ptr": "*fp32", "n_vocab": "i32",
                   "key": "u64", "stream": "u32", "step": "u64", "N_EMBD": "constexpr",
                   "DRAWN": "constexpr", "BLOCK_V": "constexpr", "BLOCK_K": "constexpr"},
        constexprs={"N_EMBD": width, "DRAWN": drawn, "BLOCK_V": LOGITS_BLOCK_V, "BLOCK_K": LOGITS_BLOCK_K},
        options={"num_warps": NUM_WARPS},
    )


# Every configuration the launchers can pick (argmax_config over every row-block size,
# precision and drawn/loaded head), at gpt2-xl's width, and the exact-float32 ones at
# gpt2's too. C is the only shape compiled in.
ARGMAX_CONFIGS = sorted({(argmax_config(rows, precision, drawn), drawn)
                         for rows in ARGMAX_WARPS for precision in PRECISIONS for drawn in (False, True)})
AOT_SPECS = [
    *(partials_spec(1600, config, drawn) for config, drawn in ARGMAX_CONFIGS),
    *(partials_spec(1600, config, drawn, "bf16") for config, drawn in ARGMAX_CONFIGS
      if config[2] == "tf32" or drawn),
    *(logits_spec(1600, drawn, "bf16") for drawn in (False, True)),
    *(partials_spec(768, config, drawn) for config, drawn in ARGMAX_CONFIGS if config[2] == "ieee"),
    *(logits_spec(width, drawn) for width in REAL_WIDTHS for drawn in (False, True)),
    AotSpec(
        label="argmax_combine_kernel",
        kernel="gpt2fast.kernels.lm_head:argmax_combine_kernel",
        signature={"best_ptr": "*fp32", "index_ptr": "*i32", "out_ptr": "*i64", "n_rows": "i32",
                   "splits": "i32", "BLOCK": "constexpr"},
        constexprs={"BLOCK": COMBINE_BLOCK},
        options={"num_warps": NUM_WARPS},
    ),
]


def poisoned_ids(rows: int, device) -> torch.Tensor:
    return torch.full((rows,), -7, dtype=torch.int64, device=device)


def argmax_of(y: torch.Tensor, wte: torch.Tensor, **options) -> torch.Tensor:
    return lm_head_argmax(y, wte, poisoned_ids(y.shape[0], y.device), **options).cpu()


def integer_valued(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Small integers as float32: every dot product of width 128 is exact, in any order."""
    return torch.randint(-3, 4, shape, generator=generator).float()


def assert_argmax_is_clear(y: torch.Tensor, wte: torch.Tensor) -> None:
    """Each row's largest logit leads its second by more than twice float32's worst-case
    summation error (C·2⁻²⁴·Σ|y_k w_k|), so every summation order (the kernel's tiles, BLAS)
    finds the same argmax: random data can then be compared exactly."""
    y, wte = y.cpu().double(), wte.cpu().double()
    if wte.shape[0] > 1:
        top = (y @ wte.T).topk(2, dim=-1).values
        error = y.shape[1] * 2**-24 * (y.abs() @ wte.abs().T).amax(dim=-1)
        assert (top[:, 0] - top[:, 1] > 2 * error).all(), "the seeded data has a near tie"


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("vocab", VOCABS)
def test_argmax_matches_reference(device, vocab, rows):
    generator = torch.Generator().manual_seed(vocab * 1000 + rows)
    y = torch.randn(rows, WIDTH, generator=generator).to(device)
    wte = torch.randn(vocab, WIDTH, generator=generator).to(device)
    assert_argmax_is_clear(y, wte)
    assert torch.equal(argmax_of(y, wte), lm_head_argmax_reference(y, wte).cpu())


@pytest.mark.parametrize("programs", [lm_head.TARGET_PROGRAMS, FEW_PROGRAMS])
@pytest.mark.parametrize("vocab, rows", [(300, 27), (1031, 64), (1031, 130)])
def test_argmax_ties_go_to_the_lowest_index(device, monkeypatch, programs, vocab, rows):
    monkeypatch.setattr(lm_head, "TARGET_PROGRAMS", programs)
    generator = torch.Generator().manual_seed(vocab + rows + programs)
    y = integer_valued(generator, rows, WIDTH)
    wte = integer_valued(generator, vocab, WIDTH)
    for low in range(0, vocab - 1, 97):  # duplicates across tiles, splits and the last tile
        wte[vocab - 1 - low // 2] = wte[low]
    logits = y @ wte.T
    assert ((logits == logits.max(-1, keepdim=True).values).sum(-1) > 1).any(), "no tie was planted"
    expected = lm_head_argmax_reference(y, wte)
    assert torch.equal(argmax_of(y.to(device), wte.to(device)), expected)


@pytest.mark.parametrize("programs", [lm_head.TARGET_PROGRAMS, FEW_PROGRAMS])
def test_argmax_finds_maxima_at_tile_edges(device, monkeypatch, programs):
    """Small integers (|value| <= 13) throughout: every logit is exact in float32 and in every
    product precision (TF32 and bf16 hold such operands exactly), whatever the summation
    order, so a planted tie is a tie on any machine."""
    monkeypatch.setattr(lm_head, "TARGET_PROGRAMS", programs)
    generator = torch.Generator().manual_seed(programs)
    vocab, planted = 1031, len(EDGES)
    y = integer_valued(generator, 2 * planted, WIDTH)
    wte = integer_valued(generator, vocab, WIDTH)
    expected = torch.empty(2 * planted, dtype=torch.int64)
    for row, (edge, partner) in enumerate(zip(EDGES, TIE_PARTNERS)):
        y[row, 0] = 1
        wte[edge] = 4 * y[row]  # row `row`'s maximum, 4·|y|² > 3·|y|₁ >= any random row's logit ...
        wte[partner] = wte[edge]
        wte[partner, 0] -= 1  # ... which leads the partner's by 1
        y[planted + row] = y[row]
        y[planted + row, 0] = 0  # row `planted + row` does not see that column: a tie
        expected[row], expected[planted + row] = edge, min(edge, partner)
    assert torch.equal(lm_head_argmax_reference(y, wte), expected)
    for precision in PRECISIONS:
        assert torch.equal(argmax_of(y.to(device), wte.to(device), precision=precision), expected)


@pytest.mark.parametrize("programs", [lm_head.TARGET_PROGRAMS, FEW_PROGRAMS])
def test_argmax_treats_nan_as_torch_does(device, monkeypatch, programs):
    monkeypatch.setattr(lm_head, "TARGET_PROGRAMS", programs)
    generator = torch.Generator().manual_seed(11)
    y = torch.randn(7, WIDTH, generator=generator)
    wte = torch.randn(1031, WIDTH, generator=generator)
    wte[900, 3] = float("nan")
    wte[300, 5] = float("nan")
    y[2] = float("nan")
    wte[1000] = 10 * y[4]  # a larger number after the first NaN does not win
    expected = lm_head_argmax_reference(y, wte)
    assert expected.tolist() == [300, 300, 0, 300, 300, 300, 300]
    assert torch.equal(argmax_of(y.to(device), wte.to(device)), expected)


def test_argmax_with_a_ragged_width(device):
    generator = torch.Generator().manual_seed(80)
    y = torch.randn(27, 80, generator=generator).to(device)
    wte = torch.randn(300, 80, generator=generator).to(device)
    assert_argmax_is_clear(y, wte)
    assert torch.equal(argmax_of(y, wte), lm_head_argmax_reference(y, wte).cpu())


def drawn_args(seed: int, draw: int) -> tuple[int, int, int]:
    return mix_key(seed, weight_stream.DRAW_DOMAIN), weight_stream.WTE_STREAM, draw


@pytest.mark.parametrize("seed, draw", [(0, 1), (2024, 2**33 + 3)])
def test_drawn_head_is_the_weight_stream_redraw(device, seed, draw):
    vocab, rows = 300, 27
    generator = torch.Generator().manual_seed(seed)
    y = torch.randn(rows, WIDTH, generator=generator).to(device)
    redraw = weight_stream.drawn_tensor(seed, draw, weight_stream.WTE_STREAM, (vocab, WIDTH), device)
    shape_only = torch.full((1, WIDTH), float("nan"), device=device).expand(vocab, WIDTH)
    drawn = drawn_args(seed, draw)
    assert_argmax_is_clear(y, redraw)  # a margin that also covers the kernel's draw, a few ulp off
    ids = argmax_of(y, shape_only, drawn=drawn)
    assert torch.equal(ids, lm_head_argmax_reference(y, redraw).cpu())
    assert torch.equal(ids, lm_head_argmax_reference(y, shape_only, drawn=drawn).cpu())
    logits = lm_head_logits(y[3], shape_only, torch.full((vocab,), float("nan"), device=device), drawn=drawn)
    expected = lm_head_logits_reference(y[3], redraw)
    torch.testing.assert_close(logits.cpu(), expected.cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 27, 130])
def test_bf16_argmax_is_the_exact_argmax_of_the_bf16_values(device, rows):
    """Small integers are exact in bf16 and their dot products exact in float32: the
    argmax, ties included, is the float32 one of the same values."""
    generator = torch.Generator().manual_seed(rows)
    y, wte = integer_valued(generator, rows, WIDTH), integer_valued(generator, 1031, WIDTH)
    wte[1030] = wte[5]
    expected = lm_head_argmax_reference(y, wte)
    bf16 = {"dtype": torch.bfloat16, "device": device}
    assert torch.equal(argmax_of(y.to(**bf16), wte.to(**bf16)), expected)


def kernel_bf16(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 -> bf16 as a kernel's ``.to(tl.bfloat16)`` does: to nearest even on a GPU;
    Triton's interpreter truncates (the low 16 bits dropped)."""
    if device.type == "cuda":
        return values.to(torch.bfloat16)
    return (values.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)


def test_bf16_drawn_head_and_logits(device):
    """Stored bf16 weights, and the redraw rounded to bf16 inside the kernel."""
    vocab, seed, draw = 300, 5, 7
    y = torch.randn(WIDTH, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    redraw = weight_stream.drawn_tensor(seed, draw, weight_stream.WTE_STREAM, (vocab, WIDTH), "cpu")
    shape_only = torch.zeros((1, WIDTH), dtype=torch.bfloat16, device=device).expand(vocab, WIDTH)
    for wte, drawn in ((redraw.to(torch.bfloat16), None), (kernel_bf16(redraw, device), drawn_args(seed, draw))):
        out = torch.full((vocab,), float("nan"), device=device)
        lm_head_logits(y.to(device), wte.to(device) if drawn is None else shape_only, out, drawn=drawn)
        exact = lm_head_logits_reference(y.double(), wte.double())
        torch.testing.assert_close(out.cpu().double(), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [WIDTH, 80])
@pytest.mark.parametrize("vocab", VOCABS)
def test_logits_match_reference(device, vocab, width):
    generator = torch.Generator().manual_seed(vocab + width)
    y = torch.randn(width, generator=generator).to(device)
    wte = torch.randn(vocab, width, generator=generator).to(device)
    out = torch.full((vocab,), float("nan"), device=device)
    assert lm_head_logits(y, wte, out) is out
    exact = lm_head_logits_reference(y.double(), wte.double())
    torch.testing.assert_close(out.cpu().double(), exact.cpu(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cpu(), lm_head_logits_reference(y, wte).cpu(), rtol=1e-5, atol=1e-5)


def test_argmax_of_no_rows_launches_nothing():
    out = torch.empty(0, dtype=torch.int64)
    assert lm_head_argmax(torch.empty(0, WIDTH), torch.empty(7, WIDTH), out) is out


def ids_arguments(device="cpu") -> dict:
    return {"y": torch.zeros(3, WIDTH, device=device), "wte": torch.zeros(7, WIDTH, device=device),
            "out_ids": torch.empty(3, dtype=torch.int64, device=device)}


def logits_arguments(device="cpu") -> dict:
    return {"y": torch.zeros(WIDTH, device=device), "wte": torch.zeros(7, WIDTH, device=device),
            "out": torch.empty(7, device=device)}


BAD_HEAD_ARGUMENTS = [
    ("wte", torch.empty(7, 64), "need one width C > 0 and V > 0"),
    ("wte", torch.empty(7, WIDTH, dtype=torch.bfloat16), "both bfloat16, got torch.float32, torch.bfloat16"),
    ("wte", torch.empty(0, WIDTH), "need one width C > 0 and V > 0"),
    ("wte", torch.empty(7, WIDTH, dtype=torch.float64), "both bfloat16, got torch.float32, torch.float64"),
    ("wte", torch.empty(WIDTH, 7).T, r"y, out and \(unless drawn\) wte must be contiguous"),
    ("precision", "tf32x2", "precision must be one of"),
    ("drawn", (2**64, 0, 0), r"key must be in \[0, 18446744073709551616\)"),
    ("drawn", (0, 2**32, 0), r"stream must be in \[0, 4294967296\)"),
    ("drawn", (0, 0, -1), "step must be in .*got -1"),
]


@pytest.mark.parametrize(
    "name, bad, message",
    [
        *BAD_HEAD_ARGUMENTS,
        ("y", torch.empty(3, WIDTH, dtype=torch.float64), "both bfloat16, got torch.float64, torch.float32"),
        ("y", torch.empty(3, 2 * WIDTH)[:, ::2], "must be contiguous"),
        ("y", torch.empty(WIDTH), r"y must be \[M, C\]"),
        ("out_ids", torch.empty(3, dtype=torch.int32), r"out must be torch.int64 \(3,\), got torch.int32"),
        ("out_ids", torch.empty(4, dtype=torch.int64), r"out must be torch.int64 \(3,\), got torch.int64 \(4,\)"),
    ],
)
def test_argmax_rejects_bad_arguments(name, bad, message, device):
    """The checks run before any launch, so the bad call is made with CPU tensors."""
    lm_head_argmax(**ids_arguments(device))
    arguments = ids_arguments()
    arguments[name] = bad
    with pytest.raises(ValueError, match=message):
        lm_head_argmax(**arguments)


@pytest.mark.parametrize(
    "name, bad, message",
    [
        *BAD_HEAD_ARGUMENTS,
        ("y", torch.empty(2, WIDTH), r"y must be \[C\]"),
        ("out", torch.empty(7, dtype=torch.float64), r"out must be torch.float32 \(7,\), got torch.float64"),
        ("out", torch.empty(8), r"out must be torch.float32 \(7,\), got torch.float32 \(8,\)"),
    ],
)
def test_logits_reject_bad_arguments(name, bad, message, device):
    lm_head_logits(**logits_arguments(device))
    arguments = logits_arguments()
    arguments[name] = bad
    with pytest.raises(ValueError, match=message):
        lm_head_logits(**arguments)


def test_head_kernels_compile_ahead_of_time():
    check_compiles(AOT_SPECS)
