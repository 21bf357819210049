"""causal_attention and decode_attention against their SDPA references, and compiled for
sm_80 / sm_90.

The launches run under Triton's interpreter on CPU tensors (or compiled on a GPU when there
is one, see tests/conftest.py); the ahead-of-time compilation runs in a child process.
Inputs that must not be read (prompt padding, cache rows past the length) hold NaN, and
outputs start as NaN, so a leak or an unwritten element fails the comparison.

Accuracy: fp32 results agree with SDPA to 1e-5 relative to the output's scale (max |out|):
with peaked softmax rows both sit ~1e-6 of that scale from a float64 evaluation, so an
elementwise relative bound alone would fail on outputs that cancel to near zero.
"""

from __future__ import annotations

import pytest
import torch

from aot import CAPABILITIES, AotSpec, check_compiles
from gpt2fast.kernels.checks import PRECISIONS
from gpt2fast.kernels.attention import (
    CAUSAL_CONFIGS,
    COMBINE_NUM_WARPS,
    DECODE_BLOCK_N,
    DECODE_NUM_WARPS,
    HEAD_DIM,
    MAX_SPLITS,
    causal_attention,
    causal_attention_reference,
    causal_config,
    decode_attention,
    decode_attention_reference,
    decode_split,
)

N_HEAD = 2
WIDTH = N_HEAD * HEAD_DIM
LENGTHS = (1, 7, 27, 64, 130)
DECODE_LENGTHS = (1, 7, 64, 130, 1100)
QKV_SCALE = 2.0  # scores q·k/8 of standard deviation ~4: peaked softmax rows
MODULE = "gpt2fast.kernels.attention"
CAUSAL_SIGNATURE = {"qkv_ptr": "*fp32", "lengths_ptr": "*i64", "out_ptr": "*fp32", "length": "i32",
                    "n_head": "i32", "scale": "fp32", "HEAD_DIM": "constexpr", "BLOCK_M": "constexpr",
                    "BLOCK_N": "constexpr", "INPUT_PRECISION": "constexpr", "PDL": "constexpr"}
# causal attention as its launcher builds it: a programmatic dependent launch on sm_90
AOT_SPECS = [
    AotSpec(
        label=f"causal_attention_kernel {name} {block_m}x{block_n} {precision} (D=64, any C=64·H: 768, 1600)"
              f"{' pdl' if capability >= 90 else ''}",
        kernel=f"{MODULE}:causal_attention_kernel",
        signature=CAUSAL_SIGNATURE,
        constexprs={"HEAD_DIM": HEAD_DIM, "BLOCK_M": block_m, "BLOCK_N": block_n, "INPUT_PRECISION": precision,
                    "PDL": capability >= 90},
        options={"num_warps": num_warps},
        capabilities=(capability,),
    )
    for name, (block_m, block_n, num_warps) in CAUSAL_CONFIGS.items()
    for precision in PRECISIONS
    for capability in CAPABILITIES
] + [
    AotSpec(
        label=f"causal_attention_kernel {name} {block_m}x{block_n} bf16 (D=64){' pdl' if capability >= 90 else ''}",
        kernel=f"{MODULE}:causal_attention_kernel",
        signature={**CAUSAL_SIGNATURE, "qkv_ptr": "*bf16", "out_ptr": "*bf16"},
        constexprs={"HEAD_DIM": HEAD_DIM, "BLOCK_M": block_m, "BLOCK_N": block_n, "INPUT_PRECISION": "tf32",
                    "PDL": capability >= 90},
        options={"num_warps": num_warps},
        capabilities=(capability,),
    )
    for name, (block_m, block_n, num_warps) in CAUSAL_CONFIGS.items()
    for capability in CAPABILITIES
] + [
    AotSpec(
        label=f"decode_attention_split_kernel BLOCK_N={DECODE_BLOCK_N} {dtype} (D=64)",
        kernel=f"{MODULE}:decode_attention_split_kernel",
        signature={"q_ptr": f"*{dtype}", "cache_k_ptr": f"*{dtype}", "cache_v_ptr": f"*{dtype}",
                   "partial_ptr": "*fp32", "stats_ptr": "*fp32", "length": "i32", "capacity": "i32",
                   "keys_per_split": "i32", "n_splits": "i32", "scale": "fp32", "HEAD_DIM": "constexpr",
                   "BLOCK_N": "constexpr"},
        constexprs={"HEAD_DIM": HEAD_DIM, "BLOCK_N": DECODE_BLOCK_N},
        options={"num_warps": DECODE_NUM_WARPS},
    )
    for dtype in ("fp32", "bf16")
] + [
    AotSpec(
        label=f"decode_attention_combine_kernel MAX_SPLITS={MAX_SPLITS} {dtype} (D=64)",
        kernel=f"{MODULE}:decode_attention_combine_kernel",
        signature={"partial_ptr": "*fp32", "stats_ptr": "*fp32", "out_ptr": f"*{dtype}", "n_splits": "i32",
                   "HEAD_DIM": "constexpr", "MAX_SPLITS": "constexpr"},
        constexprs={"HEAD_DIM": HEAD_DIM, "MAX_SPLITS": MAX_SPLITS},
        options={"num_warps": COMBINE_NUM_WARPS},
    )
    for dtype in ("fp32", "bf16")
]


def assert_close_fp32(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Elementwise within ``rel`` relative or ``rel``·max|expected| absolute; NaN fails."""
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * float(expected.abs().max()))


def prompt_lengths(length: int) -> list[int]:
    """Ragged prompts padded to ``length``: a full one, a one-token one, and about half."""
    return [length, 1, length // 2 + 1]


def random_qkv(n_prompts: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return QKV_SCALE * torch.randn(n_prompts, length, 3 * WIDTH, generator=generator)


def run_causal(qkv: torch.Tensor, lengths: torch.Tensor, device: torch.device, precision: str = "ieee"):
    """causal_attention on ``qkv`` with its padding rows replaced by NaN, output poisoned."""
    poisoned = qkv.clone()
    for p, prompt_length in enumerate(lengths.tolist()):
        poisoned[p, max(prompt_length, 0):] = float("nan")
    out = torch.full(qkv.shape[:2] + (WIDTH,), float("nan"), device=device)
    causal_attention(poisoned.to(device), lengths.to(device), out, n_head=N_HEAD, precision=precision)
    return out.cpu()


@pytest.mark.parametrize("length", LENGTHS)
def test_causal_matches_sdpa(device, length):
    lengths = torch.tensor(prompt_lengths(length))
    qkv = random_qkv(len(lengths), length, seed=length)
    out = run_causal(qkv, lengths, device)
    assert_close_fp32(out, causal_attention_reference(qkv, lengths, n_head=N_HEAD))
    for p, prompt_length in enumerate(lengths.tolist()):
        assert torch.count_nonzero(out[p, prompt_length:]) == 0


def test_causal_uses_both_tile_configurations():
    assert {causal_config(length) for length in LENGTHS} == set(CAUSAL_CONFIGS.values())


def test_causal_tf32_is_close(device):
    lengths = torch.tensor(prompt_lengths(27))
    qkv = random_qkv(len(lengths), 27, seed=3)
    out = run_causal(qkv, lengths, device, precision="tf32")
    assert_close_fp32(out, causal_attention_reference(qkv, lengths, n_head=N_HEAD), rel=1e-2)


@pytest.mark.parametrize("length", [27, 130])
def test_causal_bf16_is_close(device, length):
    """bf16 in and out: within bf16's resolution of float32 SDPA on the same bf16 values."""
    lengths = torch.tensor(prompt_lengths(length))
    qkv = random_qkv(len(lengths), length, seed=8).to(torch.bfloat16)
    out = torch.full(qkv.shape[:2] + (WIDTH,), float("nan"), dtype=torch.bfloat16, device=device)
    causal_attention(qkv.to(device), lengths.to(device), out, n_head=N_HEAD)
    expected = causal_attention_reference(qkv.float(), lengths, n_head=N_HEAD)
    assert_close_fp32(out.cpu().float(), expected, rel=1e-2)


def test_causal_clamps_lengths_outside_the_padded_length(device):
    length = 20
    qkv = random_qkv(3, length, seed=5)
    out = torch.full((3, length, WIDTH), float("nan"), device=device)
    causal_attention(qkv.to(device), torch.tensor([0, length + 9, -2**32 + 5], device=device), out, n_head=N_HEAD)
    expected = causal_attention_reference(qkv, torch.tensor([0, length, 0]), n_head=N_HEAD)
    assert_close_fp32(out.cpu(), expected)


def test_causal_of_nothing_launches_nothing():
    for shape in ((0, 5), (2, 0)):
        out = torch.empty(shape + (WIDTH,))
        assert causal_attention(torch.empty(shape + (3 * WIDTH,)), torch.zeros(shape[0], dtype=torch.int64),
                                out, n_head=N_HEAD) is out


@pytest.mark.parametrize(
    "qkv, lengths, out, n_head, precision, message",
    [
        (torch.empty(2, 4, 3 * WIDTH, dtype=torch.float64), torch.ones(2, dtype=torch.int64),
         torch.empty(2, 4, WIDTH), N_HEAD, "ieee",
         r"qkv must be a contiguous float32 or bfloat16 .*torch.float64"),
        (torch.empty(2, 4, 6 * WIDTH)[..., ::2], torch.ones(2, dtype=torch.int64),
         torch.empty(2, 4, WIDTH), N_HEAD, "ieee",
         r"qkv must be a contiguous .*got torch.float32"),
        (torch.empty(2, 4, 3 * WIDTH), torch.ones(2, dtype=torch.int64), torch.empty(2, 4, WIDTH), 3, "ieee",
         r"3·n_head·64 = 576, got 384"),
        (torch.empty(2, 4, 3 * WIDTH + 3), torch.ones(2, dtype=torch.int64),
         torch.empty(2, 4, WIDTH + 1), N_HEAD, "ieee",
         r"= 384, got 387"),
        (torch.empty(2, 4, 3 * WIDTH), torch.ones(2, dtype=torch.int32), torch.empty(2, 4, WIDTH), N_HEAD, "ieee",
         r"lengths must be int64 .*torch.int32"),
        (torch.empty(2, 4, 3 * WIDTH), torch.ones(3, dtype=torch.int64), torch.empty(2, 4, WIDTH), N_HEAD, "ieee",
         r"lengths must be int64 \[2\], got torch.int64 \(3,\)"),
        (torch.empty(2, 4, 3 * WIDTH), torch.ones(2, dtype=torch.int64), torch.empty(2, 5, WIDTH), N_HEAD, "ieee",
         r"out must be a contiguous torch.float32 \(2, 4, 128\), got torch.float32 \(2, 5, 128\)"),
        (torch.empty(2, 4, 3 * WIDTH), torch.ones(2, dtype=torch.int64),
         torch.empty(2, WIDTH, 4).transpose(1, 2), N_HEAD, "ieee",
         r"out must be a contiguous torch.float32 \(2, 4, 128\), got torch.float32 \(2, 4, 128\)"),
        (torch.empty(2, 4, 3 * WIDTH), torch.ones(2, dtype=torch.int64), torch.empty(2, 4, WIDTH), N_HEAD, "tf32x2",
         r"precision must be one of"),
        (torch.empty(2, 4, 3 * WIDTH, dtype=torch.bfloat16), torch.ones(2, dtype=torch.int64),
         torch.empty(2, 4, WIDTH), N_HEAD, "ieee",
         r"out must be a contiguous torch.bfloat16"),
    ],
)
def test_causal_rejects_bad_arguments(qkv, lengths, out, n_head, precision, message):
    with pytest.raises(ValueError, match=message):
        causal_attention(qkv, lengths, out, n_head=n_head, precision=precision)


def random_cache(length: int, capacity: int, seed: int) -> tuple[torch.Tensor, ...]:
    """q [H, D] and caches [H, capacity, D] whose rows ≥ length are NaN."""
    generator = torch.Generator().manual_seed(seed)
    q = QKV_SCALE * torch.randn(N_HEAD, HEAD_DIM, generator=generator)
    cache_k, cache_v = (QKV_SCALE * torch.randn(N_HEAD, capacity, HEAD_DIM, generator=generator) for _ in range(2))
    cache_k[:, length:] = float("nan")
    cache_v[:, length:] = float("nan")
    return q, cache_k, cache_v


def test_causal_refuses_more_programs_than_a_grid_axis_holds():
    """P·H programs on the grid's second axis: 2622 gpt2-xl prompts (25 heads) exceed 65535
    (shapes only: meta tensors, refused before any launch)."""
    qkv = torch.empty(2622, 1, 3 * 25 * 64, device="meta")
    lengths = torch.ones(2622, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match="P·n_head = 65550 exceeds the 65535 programs a grid axis holds"):
        causal_attention(qkv, lengths, torch.empty(2622, 1, 25 * 64, device="meta"), n_head=25)


@pytest.mark.parametrize("length", DECODE_LENGTHS)
def test_decode_matches_sdpa(device, length):
    q, cache_k, cache_v = random_cache(length, length + 5, seed=length)
    out = torch.full((N_HEAD, HEAD_DIM), float("nan"), device=device)
    decode_attention(q.to(device), cache_k.to(device), cache_v.to(device), length, out)
    expected = decode_attention_reference(q, cache_k, cache_v, length)
    assert_close_fp32(out.cpu(), expected)


def test_decode_partials_are_float32_whatever_the_default_dtype(device):
    """The split's partial outputs and statistics are float32 buffers even when a caller made
    torch's default dtype bfloat16 (they would round the partials)."""
    q, cache_k, cache_v = random_cache(1100, 1105, seed=3)
    assert decode_split(1100)[0] > 1
    out = torch.full((N_HEAD, HEAD_DIM), float("nan"), device=device)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        decode_attention(q.to(device), cache_k.to(device), cache_v.to(device), 1100, out)
    finally:
        torch.set_default_dtype(default)
    assert_close_fp32(out.cpu(), decode_attention_reference(q, cache_k, cache_v, 1100))


@pytest.mark.parametrize("length", [7, 130])
def test_decode_bf16_is_close(device, length):
    q, cache_k, cache_v = (t.to(torch.bfloat16) for t in random_cache(length, length + 3, seed=length))
    out = torch.full((N_HEAD, HEAD_DIM), float("nan"), dtype=torch.bfloat16, device=device)
    decode_attention(q.to(device), cache_k.to(device), cache_v.to(device), length, out)
    expected = decode_attention_reference(q.float(), cache_k.float(), cache_v.float(), length)
    assert_close_fp32(out.cpu().float(), expected, rel=1e-2)


def test_decode_equals_the_last_causal_row(device):
    length = 27
    qkv = random_qkv(1, length, seed=11)
    causal = run_causal(qkv, torch.tensor([length]), device)
    k, v = (qkv[0, :, i * WIDTH:(i + 1) * WIDTH].reshape(length, N_HEAD, HEAD_DIM).transpose(0, 1).contiguous()
            for i in (1, 2))
    q = qkv[0, -1, :WIDTH].reshape(N_HEAD, HEAD_DIM)
    out = torch.full((N_HEAD, HEAD_DIM), float("nan"), device=device)
    decode_attention(q.to(device), k.to(device), v.to(device), length, out)
    assert_close_fp32(out.cpu().reshape(WIDTH), causal[0, -1])


def test_decode_split_covers_the_keys_in_whole_tiles():
    counts = set()
    for length in range(1, 1025):
        n_splits, keys_per_split = decode_split(length)
        assert 1 <= n_splits <= MAX_SPLITS and keys_per_split % DECODE_BLOCK_N == 0
        assert (n_splits - 1) * keys_per_split < length <= n_splits * keys_per_split
        counts.add(n_splits)
    assert counts == set(range(1, MAX_SPLITS + 1))


def decode_case(message: str, **changes) -> tuple[dict, str]:
    """decode_attention's arguments for 2 heads and a 9-key cache, with ``changes``; the error expected."""
    arguments = dict(q=torch.empty(2, 64), cache_k=torch.empty(2, 9, 64), cache_v=torch.empty(2, 9, 64), length=4,
                     out=torch.empty(2, 64), precision="ieee")
    return {**arguments, **changes}, message


@pytest.mark.parametrize(
    "arguments, message",
    [
        decode_case(r"q must be \[H, 64\]", q=torch.empty(2, 32), cache_k=torch.empty(2, 9, 32),
                    cache_v=torch.empty(2, 9, 32), out=torch.empty(2, 32)),
        decode_case(r"cache_k and cache_v must both be \[2, capacity, 64\], got \(3, 9, 64\)",
                    cache_k=torch.empty(3, 9, 64), cache_v=torch.empty(3, 9, 64)),
        decode_case(r"got \(2, 9, 64\) and \(2, 8, 64\)", cache_v=torch.empty(2, 8, 64)),
        decode_case(r"out must be \(2, 64\), got \(1, 64\)", out=torch.empty(1, 64)),
        decode_case("must be contiguous, all float32 or all bfloat16",
                    cache_k=torch.empty(2, 9, 64, dtype=torch.float64)),
        decode_case("must be contiguous, all float32 or all bfloat16", cache_k=torch.empty(9, 2, 64).transpose(0, 1)),
        decode_case(r"length must be in \[1, 9\] .*got 0", length=0),
        decode_case(r"length must be in \[1, 9\] .*got 10", length=10),
        decode_case("precision must be one of", precision="fp16"),
        decode_case("must be contiguous, all float32 or all bfloat16", q=torch.empty(2, 64, dtype=torch.bfloat16),
                    cache_k=torch.empty(2, 9, 64, dtype=torch.bfloat16),
                    cache_v=torch.empty(2, 9, 64, dtype=torch.bfloat16)),
    ],
)
def test_decode_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        decode_attention(**arguments)


def test_attention_kernels_compile_ahead_of_time():
    check_compiles(AOT_SPECS)
