"""embed against gpt2fast.model.embed, and compiled for sm_80 / sm_90.

The launches run under Triton's interpreter on CPU tensors (or compiled on a GPU when there
is one, see tests/conftest.py); the ahead-of-time compilation runs in a child process.
float32 outputs are compared bit for bit: each element is one addition wte + wpe, correctly
rounded on every device, in the kernel and in torch alike.
"""

from __future__ import annotations

import pytest
import torch
import triton

from aot import AotSpec, check_compiles
from gpt2fast.kernels.embedding import BLOCK_C, NUM_WARPS, embed, embed_kernel, embed_reference

VOCAB = 300
POSITIONS = 1024
LENGTHS = (1, 7, 27, 64, 130)
AOT_SPECS = [
    AotSpec(
        label=f"embed_kernel C={width} {dtype}",
        kernel="gpt2fast.kernels.embedding:embed_kernel",
        signature={"tokens_ptr": "*i64", "wte_ptr": f"*{dtype}", "wpe_ptr": f"*{dtype}", "out_ptr": f"*{dtype}",
                   "length": "i32", "start": "i32", "n_vocab": "i32", "N_EMBD": "constexpr",
                   "BLOCK_C": "constexpr"},
        constexprs={"N_EMBD": width, "BLOCK_C": BLOCK_C},
        options={"num_warps": NUM_WARPS},
    )
    for width in (768, 1600)
    for dtype in ("fp32", "bf16")
]


def tables(width: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    wte = torch.randn(VOCAB, width, generator=generator)
    wpe = torch.randn(POSITIONS, width, generator=generator)
    return wte.to(device), wpe.to(device)


@pytest.mark.parametrize("width", [128, 80, 300])  # one column block, a ragged one, two
@pytest.mark.parametrize("start", [0, 5, POSITIONS - 130])
@pytest.mark.parametrize("prompts, length", [(1, t) for t in LENGTHS] + [(3, 27), (2, 130)])
def test_embed_matches_reference(device, prompts, length, start, width):
    wte, wpe = tables(width, prompts * length + start, device)
    tokens = torch.randint(0, VOCAB, (prompts, length), generator=torch.Generator().manual_seed(length))
    tokens = tokens.to(device)
    out = torch.full((prompts, length, width), float("nan"), device=device)
    assert embed(tokens, wte, wpe, out, start=start) is out
    assert torch.equal(out.cpu(), embed_reference(tokens, wte, wpe, start).cpu())


@pytest.mark.parametrize("length", [1, 27])
def test_bf16_embedding_rounds_the_sum_once_as_torch_does(device, length):
    """Equal on a GPU (round to nearest even); Triton's interpreter truncates float32 to
    bf16 (seen with Triton 3.9, also with fp_downcast_rounding="rtne"), so there the two
    may differ by one bf16 unit in the last place, 2**-7 relative at most."""
    wte, wpe = (table.to(torch.bfloat16) for table in tables(80, length, device))
    tokens = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(3)).to(device)
    out = torch.full((2, length, 80), float("nan"), dtype=torch.bfloat16, device=device)
    embed(tokens, wte, wpe, out, start=4)
    expected = embed_reference(tokens, wte, wpe, 4).cpu()
    if device.type == "cuda":
        assert torch.equal(out.cpu(), expected)
    torch.testing.assert_close(out.cpu().float(), expected.float(), rtol=2**-7, atol=0)


def test_out_of_range_ids_give_nan_rows_in_the_kernel(device):
    """What a CUDA launch (which skips the host check) does with a bad id: NaN, no stray read."""
    width, length = 128, 4
    wte, wpe = tables(width, 0, device)
    tokens = torch.tensor([[3, VOCAB, -1, VOCAB - 1]], device=device)
    out = torch.zeros(1, length, width, device=device)
    embed_kernel[(length, triton.cdiv(width, BLOCK_C))](tokens, wte, wpe, out, length, 2, VOCAB,
                                                        N_EMBD=width, BLOCK_C=BLOCK_C)
    out = out.cpu()
    assert out[0, [1, 2]].isnan().all()
    assert torch.equal(out[0, 0], (wte[3] + wpe[2]).cpu())
    assert torch.equal(out[0, 3], (wte[VOCAB - 1] + wpe[5]).cpu())


@pytest.mark.parametrize("bad_id", [VOCAB, -1])
def test_out_of_range_ids_are_refused_on_the_cpu(bad_id):
    wte, wpe = tables(128, 0, "cpu")
    tokens = torch.tensor([[1, bad_id]])
    with pytest.raises(ValueError, match="token ids"):
        embed(tokens, wte, wpe, torch.empty(1, 2, 128))


def test_embed_of_no_tokens_launches_nothing():
    wte, wpe = tables(128, 0, "cpu")
    out = torch.empty(2, 0, 128)
    assert embed(torch.empty(2, 0, dtype=torch.int64), wte, wpe, out) is out


def good_arguments(device="cpu") -> dict:
    return {"tokens": torch.zeros(1, 3, dtype=torch.int64, device=device),
            "wte": torch.zeros(9, 8, device=device), "wpe": torch.zeros(16, 8, device=device),
            "out": torch.empty(1, 3, 8, device=device), "start": 0}


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("tokens", torch.zeros(1, 3, dtype=torch.int32), "tokens must be int64 .* got torch.int32"),
        ("tokens", torch.zeros(3, dtype=torch.int64), r"tokens must be int64 \[P, T\], got torch.int64 \(3,\)"),
        ("tokens", torch.zeros(1, 6, dtype=torch.int64)[:, ::2], "must be contiguous"),
        ("wte", torch.empty(9, 8, dtype=torch.float64), "wte must be float32 or bfloat16"),
        ("wte", torch.empty(8, 9).T, "must be contiguous"),
        ("wpe", torch.empty(16, 4), "need the same width"),
        ("out", torch.empty(1, 3, 4), r"out must be \[P, T, C\] = \(1, 3, 8\)"),
        ("out", torch.empty(1, 3, 8, dtype=torch.float16), "share one dtype, got .*torch.float16"),
        ("out", torch.empty(1, 3, 8, dtype=torch.bfloat16), "share one dtype, got .*torch.bfloat16"),
        ("wpe", torch.empty(16, 8, dtype=torch.bfloat16), "share one dtype, got .*torch.bfloat16"),
        ("start", 14, "positions 14..16 are outside wpe's 16 rows"),
        ("start", -1, "positions -1..1 are outside"),
    ],
)
def test_embed_rejects_bad_arguments(name, bad, message, device):
    """The checks run before any launch, so the bad call is made with CPU tensors."""
    embed(**good_arguments(device))
    arguments = good_arguments()
    arguments[name] = bad
    with pytest.raises(ValueError, match=message):
        embed(**arguments)


def test_embed_rejects_zero_width():
    tokens = torch.zeros(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="need the same width C > 0"):
        embed(tokens, torch.empty(9, 0), torch.empty(16, 0), torch.empty(1, 3, 0))


def test_embed_kernel_compiles_ahead_of_time():
    check_compiles(AOT_SPECS)
