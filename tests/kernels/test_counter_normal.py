"""fill_counter_normal against its PyTorch reference, and compiled for sm_80 / sm_90.

The launches run under Triton's interpreter on CPU tensors (or compiled on a GPU when there
is one, see tests/conftest.py); the ahead-of-time compilation runs in a child process.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from aot import AotSpec, check_compiles
from gpt2fast.kernels.counter_normal import (
    BLOCK,
    NUM_WARPS,
    counter_normal_reference,
    counter_words,
    fill_counter_normal,
)
from gpt2fast.philox import MASK32, philox4x32

NUMELS = (1, 7, 27, 64, 130, 4099)
KEY_STREAM_STEP = ((5, 0, 0), (2**63 + 12345, 2**32 - 1, 2**33 + 5), (0x299F31D0A4093822, 7, 2**64 - 1))
WORD_GROUPS = 1000
WORDS_BLOCK = 256
AOT_SPECS = [
    AotSpec(
        label="fill_counter_normal_kernel",
        kernel="gpt2fast.kernels.counter_normal:fill_counter_normal_kernel",
        signature={"out_ptr": "*fp32", "key": "u64", "stream": "u32", "step": "u64", "numel": "i64",
                   "BLOCK": "constexpr"},
        constexprs={"BLOCK": BLOCK},
        options={"num_warps": NUM_WARPS},
    )
]


@triton.jit
def counter_words_kernel(out_ptr, key, stream, step, groups, BLOCK: tl.constexpr):
    """out[w, g] = word w of counter_words(key, stream, step, g), g < groups; out: *i64 [4, groups]."""
    group = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = group < groups
    r0, r1, r2, r3 = counter_words(key, stream, step, group)
    tl.store(out_ptr + group, r0.to(tl.int64), mask=mask)
    tl.store(out_ptr + groups + group, r1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 2 * groups + group, r2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 3 * groups + group, r3.to(tl.int64), mask=mask)


@pytest.mark.parametrize("key, stream, step", KEY_STREAM_STEP)
def test_counter_words_bit_exact(device, key, stream, step):
    words = torch.full((4, WORD_GROUPS), -1, dtype=torch.int64, device=device)
    grid = (triton.cdiv(WORD_GROUPS, WORDS_BLOCK),)
    counter_words_kernel[grid](words, key, stream, step, WORD_GROUPS, BLOCK=WORDS_BLOCK)
    expected = philox4x32(key, torch.arange(WORD_GROUPS), stream, step & MASK32, step >> 32)
    assert torch.equal(words.cpu(), torch.stack(expected))


@pytest.mark.parametrize("numel", NUMELS)
@pytest.mark.parametrize("key, stream, step", KEY_STREAM_STEP)
def test_fill_matches_reference(device, key, stream, step, numel):
    out = torch.full((numel,), float("nan"), device=device)
    fill_counter_normal(out, key, stream, step)
    out = out.cpu()
    assert not out.isnan().any()
    torch.testing.assert_close(out, counter_normal_reference(key, stream, step, numel), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "out, key, stream, step, message",
    [
        (torch.empty(8, dtype=torch.float64), 0, 0, 0, "out must be a contiguous float32 vector, got torch.float64"),
        (torch.empty(4, 2), 0, 0, 0, r"out must be a contiguous float32 vector, got torch.float32 \(4, 2\)"),
        (torch.empty(16)[::2], 0, 0, 0, r"out must be a contiguous float32 vector, got torch.float32 \(8,\)"),
        (torch.empty(8), 2**64, 0, 0, r"key must be in \[0, 18446744073709551616\)"),
        (torch.empty(8), 0, 2**32, 0, r"stream must be in \[0, 4294967296\)"),
        (torch.empty(8), 0, 0, -1, "step must be in .*got -1"),
    ],
)
def test_fill_rejects_bad_arguments(out, key, stream, step, message):
    with pytest.raises(ValueError, match=message):
        fill_counter_normal(out, key, stream, step)


def test_fill_of_nothing_launches_nothing():
    out = torch.empty(0)
    assert fill_counter_normal(out, 1, 2, 3) is out


def test_fill_kernel_compiles_ahead_of_time():
    check_compiles(AOT_SPECS)
