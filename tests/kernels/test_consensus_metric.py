"""consensus_metric against its PyTorch reference, and compiled for sm_80 / sm_90.

The launches run under Triton's interpreter on CPU tensors (or compiled on a GPU when there
is one, see tests/conftest.py); the ahead-of-time compilation runs in a child process.
Outputs are written, as the driver does, through strided views into [P, L, 2] and
[P, L, T, T] buffers at one layer; the other layers must stay untouched.
"""

from __future__ import annotations

import pytest
import torch

from aot import AotSpec, check_compiles
from gpt2fast.kernels import consensus_metric as metric_module
from gpt2fast.kernels.checks import PRECISIONS
from gpt2fast.kernels.consensus_metric import (
    COMBINE_WARPS,
    FINALIZE_BLOCK,
    GRAM_CONFIGS,
    MAX_SPLIT_BT,
    consensus_metric,
    consensus_metric_reference,
    gram_block,
    gram_splits,
    unit_rows_warps,
)

N_LAYER = 3
LAYER = 1
SENTINEL = -3.0  # the target layer's G slot starts finite, so a missing NaN write shows


def _unit_rows_spec(label: str, dtype: str, block_c: int) -> AotSpec:
    pointer = "*" + dtype
    return AotSpec(
        label=f"unit_rows_kernel {label}",
        kernel="gpt2fast.kernels.consensus_metric:unit_rows_kernel",
        signature={"x_ptr": pointer, "w_ptr": pointer, "b_ptr": pointer, "lengths_ptr": "*i64",
                   "unit_ptr": "*fp32", "P": "i32", "T": "i32", "C": "i32", "eps": "fp32", "BLOCK_C": "constexpr"},
        constexprs={"BLOCK_C": block_c},
        options={"num_warps": unit_rows_warps(block_c)},
    )


def _gram_spec(config, precision: str, write_gram: bool, split: bool) -> AotSpec:
    return AotSpec(
        label=f"gram_tiles_kernel BT={config.block_t} BK={config.block_k} {precision}"
              f"{'' if write_gram else ' no-gram'}{' split' if split else ''}",
        kernel="gpt2fast.kernels.consensus_metric:gram_tiles_kernel",
        signature={"unit_ptr": "*fp32", "lengths_ptr": "*i64", "gram_ptr": "*fp32", "partial_ptr": "*fp32",
                   "slices_ptr": "*fp32", "P": "i32", "T": "i32", "C": "i32", "k_per_slice": "i32",
                   "stride_gp": "i32", "stride_gl": "i32", "stride_gs": "i32", "stride_gt": "i32",
                   "WRITE_GRAM": "constexpr",
                   "SPLIT": "constexpr", "BT": "constexpr", "BK": "constexpr", "PRECISION": "constexpr"},
        constexprs={"WRITE_GRAM": write_gram, "SPLIT": split, "BT": config.block_t, "BK": config.block_k,
                    "PRECISION": precision},
        options={"num_warps": config.num_warps},
    )


def _combine_spec(config, write_gram: bool) -> AotSpec:
    return AotSpec(
        label=f"gram_combine_kernel BT={config.block_t}{'' if write_gram else ' no-gram'}",
        kernel="gpt2fast.kernels.consensus_metric:gram_combine_kernel",
        signature={"slices_ptr": "*fp32", "lengths_ptr": "*i64", "gram_ptr": "*fp32", "partial_ptr": "*fp32",
                   "P": "i32", "T": "i32", "n_slices": "i32", "stride_gp": "i32", "stride_gl": "i32", "stride_gs": "i32",
                   "stride_gt": "i32",
                   "WRITE_GRAM": "constexpr", "BT": "constexpr"},
        constexprs={"WRITE_GRAM": write_gram, "BT": config.block_t},
        options={"num_warps": COMBINE_WARPS},
    )


AOT_SPECS = [
    _unit_rows_spec("C=128 (tests)", "fp32", 128),
    _unit_rows_spec("C=200 (tests)", "fp32", 256),
    _unit_rows_spec("C=768/1024", "fp32", 1024),
    _unit_rows_spec("C=1280/1600", "fp32", 2048),
    _unit_rows_spec("C=768/1024 bf16", "bf16", 1024),
    _unit_rows_spec("C=1280/1600 bf16", "bf16", 2048),
    *[_gram_spec(config, precision, write_gram, split) for config in GRAM_CONFIGS
      for precision in PRECISIONS for write_gram in (True, False)
      for split in ((False, True) if config.block_t <= MAX_SPLIT_BT else (False,))],
    *[_combine_spec(config, write_gram) for config in GRAM_CONFIGS if config.block_t <= MAX_SPLIT_BT
      for write_gram in (True, False)],
    AotSpec(
        label="finalize_kernel",
        kernel="gpt2fast.kernels.consensus_metric:finalize_kernel",
        signature={"partial_ptr": "*fp32", "lengths_ptr": "*i64", "err_ptr": "*fp32", "P": "i32", "n_tiles": "i32",
                   "stride_ep": "i32", "stride_el": "i32", "stride_ek": "i32", "BLOCK": "constexpr"},
        constexprs={"BLOCK": FINALIZE_BLOCK},
        options={"num_warps": 4},
    ),
]


def _inputs(device, lengths, width, dtype=torch.float32, seed=0):
    """x [P, T, C] with a common offset (so cosines are not all near zero), ln_f w and b."""
    generator = torch.Generator().manual_seed(seed)
    length = max(lengths)
    offset = torch.randn(width, generator=generator)
    x = torch.randn(len(lengths), length, width, generator=generator) + offset
    w = 1.0 + 0.1 * torch.randn(width, generator=generator)
    b = 0.1 * torch.randn(width, generator=generator)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    return [t.to(device=device, dtype=dtype) for t in (x, w, b)] + [lengths.to(device)]


def _slots(device, n_prompts, length, with_gram):
    """Poisoned [P, L, 2] and [P, L, T, T] buffers (NaN; the target G slot holds SENTINEL)."""
    err = torch.full((n_prompts, N_LAYER, 2), float("nan"), device=device)
    gram = None
    if with_gram:
        gram = torch.full((n_prompts, N_LAYER, length, length), float("nan"), device=device)
        gram[:, LAYER] = SENTINEL
    return err, gram


def _run(launcher, x, w, b, lengths, with_gram, **kwargs):
    """Call ``launcher`` on views at LAYER, as the driver does; return the whole buffers."""
    err, gram = _slots(x.device, x.shape[0], x.shape[1], with_gram)
    launcher(x, w, b, lengths, err[:, LAYER], None if gram is None else gram[:, LAYER], **kwargs)
    return err.cpu(), None if gram is None else gram.cpu()


def _check_against_reference(x, w, b, lengths, with_gram=True, rtol=1e-5, atol=1e-6, **kwargs):
    err, gram = _run(consensus_metric, x, w, b, lengths, with_gram, **kwargs)
    expected_err, expected_gram = _run(consensus_metric_reference, x, w, b, lengths, with_gram)
    others = [layer for layer in range(N_LAYER) if layer != LAYER]
    assert err[:, others].isnan().all()
    assert not err[:, LAYER].isnan().any()
    torch.testing.assert_close(err[:, LAYER], expected_err[:, LAYER], rtol=rtol, atol=atol)
    if with_gram:
        assert gram[:, others].isnan().all()
        outside = expected_gram[:, LAYER].isnan()
        assert torch.equal(gram[:, LAYER].isnan(), outside)
        assert outside.sum() == sum(x.shape[1] ** 2 - n ** 2 for n in lengths.tolist())
        torch.testing.assert_close(gram[:, LAYER], expected_gram[:, LAYER], rtol=rtol, atol=atol,
                                   equal_nan=True)


@pytest.mark.parametrize("length", (1, 7, 27, 64, 130))
def test_matches_reference_on_ragged_prompts(device, length):
    x, w, b, lengths = _inputs(device, [length, 1, length // 2 + 1], 128, seed=length)
    _check_against_reference(x, w, b, lengths)


def test_matches_reference_with_the_largest_tiles(device):
    x, w, b, lengths = _inputs(device, [260, 131], 32, seed=6)
    _check_against_reference(x, w, b, lengths)


def test_matches_reference_at_width_not_a_power_of_two(device):
    x, w, b, lengths = _inputs(device, [27, 5, 14], 200, seed=1)
    _check_against_reference(x, w, b, lengths)


def test_writes_through_any_strides(device):
    x, w, b, lengths = _inputs(device, [27, 14, 1], 128, seed=7)
    n_prompts, length = x.shape[:2]
    err = torch.full((2, n_prompts), float("nan"), device=device).t()
    gram = torch.full((length, length, n_prompts), SENTINEL, device=device).permute(2, 0, 1)
    consensus_metric(x, w, b, lengths, err, gram)
    expected_err, expected_gram = (torch.empty(n_prompts, 2), torch.empty(n_prompts, length, length))
    consensus_metric_reference(x.cpu(), w.cpu(), b.cpu(), lengths.cpu(), expected_err, expected_gram)
    torch.testing.assert_close(err.cpu(), expected_err, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gram.cpu(), expected_gram, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("length", (7, 64))
def test_without_gram_writes_err_only(device, length):
    x, w, b, lengths = _inputs(device, [length, length // 2 + 1], 128, seed=2)
    _check_against_reference(x, w, b, lengths, with_gram=False)


def test_bfloat16_input_accumulates_in_float32(device):
    x, w, b, lengths = _inputs(device, [27, 9], 128, dtype=torch.bfloat16, seed=3)
    _check_against_reference(x, w, b, lengths)


def test_tf32_precision_is_close(device):
    x, w, b, lengths = _inputs(device, [27, 9], 128, seed=4)
    _check_against_reference(x, w, b, lengths, rtol=1e-2, atol=1e-3, precision="tf32")


def test_repeated_runs_are_bitwise_identical(device):
    """No atomics and tile sizes fixed by the shapes (no autotuning): one summation order."""
    x, w, b, lengths = _inputs(device, [40, 17, 2], 128, seed=5)
    first, second = (_run(consensus_metric, x, w, b, lengths, True) for _ in range(2))
    assert torch.equal(first[0].nan_to_num(), second[0].nan_to_num())
    assert torch.equal(first[1].nan_to_num(), second[1].nan_to_num())


@pytest.mark.parametrize("length", (1, 27, 70))
@pytest.mark.parametrize("with_gram", (True, False))
def test_split_gram_matches_reference(device, monkeypatch, length, with_gram):
    """Slices of C summed by gram_combine_kernel (the real widths split at small T; here
    the slices are narrowed so the tests' widths split too, with a ragged last slice)."""
    monkeypatch.setattr(metric_module, "MIN_SLICE", 32)
    lengths = [length, max(1, length // 3)]
    config = gram_block(length)
    assert gram_splits(len(lengths), -(-length // config.block_t), 200, config)[0] > 1
    _check_against_reference(*_inputs(device, lengths, 200, seed=length), with_gram=with_gram)


def test_split_slices_are_float32_whatever_the_default_dtype(device, monkeypatch):
    """The Gram's slices are float32 buffers even when a caller made torch's default dtype
    bfloat16 (they would round the partial sums)."""
    monkeypatch.setattr(metric_module, "MIN_SLICE", 32)
    x, w, b, lengths = _inputs(device, [27, 9], 200, seed=4)
    err, gram = _slots(device, 2, 27, True)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        consensus_metric(x, w, b, lengths, err[:, LAYER], gram[:, LAYER])
    finally:
        torch.set_default_dtype(default)
    expected_err, expected_gram = _run(consensus_metric_reference, x, w, b, lengths, True)
    torch.testing.assert_close(err.cpu(), expected_err, rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(gram.cpu(), expected_gram, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_gram_splits_cover_the_width_in_aligned_slices():
    small, large = gram_block(27), gram_block(1024)
    for n_prompts, n_blocks, width in ((1, 2, 1600), (1, 2, 768), (8, 3, 1600), (1, 8, 1600), (2, 1, 128)):
        splits, k_per_slice = gram_splits(n_prompts, n_blocks, width, small)
        assert k_per_slice % small.block_k == 0 and (splits - 1) * k_per_slice < width <= splits * k_per_slice
        assert splits == 1 or k_per_slice >= 128
    assert gram_splits(1, 2, 1600, small)[0] > 1 and gram_splits(1, 12, 1600, small)[0] == 1
    assert gram_splits(1, 5, 1600, large)[0] == 1


def test_gram_tiles_grow_with_length():
    assert [gram_block(n).block_t for n in (1, 64, 65, 256, 257, 1024)] == [16, 16, 32, 32, 64, 64]
    assert (1024 // gram_block(1024).block_t) ** 2 <= FINALIZE_BLOCK


def _bad(**changes):
    x, w, b, lengths = _inputs("cpu", [5, 3], 16)
    arguments = dict(x=x, ln_f_w=w, ln_f_b=b, lengths=lengths, err_out=torch.empty(2, 2),
                     gram_out=torch.empty(2, 5, 5))
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize(
    "arguments, precision, message",
    [
        (_bad(x=torch.empty(2, 5, 16, dtype=torch.float64)), "ieee", "x must be a contiguous float32"),
        (_bad(x=torch.empty(2, 16, 5).transpose(1, 2)), "ieee", "x must be a contiguous float32"),
        (_bad(x=torch.empty(5, 16)), "ieee", "x must be a contiguous float32"),
        (_bad(x=torch.empty(2, 5, 16), ln_f_w=torch.empty(15)), "ieee", "ln_f_w must be"),
        (_bad(x=torch.empty(2, 5, 2049), ln_f_w=torch.empty(2049), ln_f_b=torch.empty(2049)), "ieee",
         "exceeds the largest supported width"),
        (_bad(ln_f_b=torch.empty(16, dtype=torch.bfloat16)), "ieee", "ln_f_b must be"),
        (_bad(lengths=torch.tensor([5, 3], dtype=torch.int32)), "ieee", "lengths must be"),
        (_bad(lengths=torch.tensor([5, 3, 1])), "ieee", "lengths must be"),
        (_bad(err_out=torch.empty(2, 3)), "ieee", "err_out must be"),
        (_bad(err_out=torch.empty(2, 2, dtype=torch.float64)), "ieee", "err_out must be"),
        (_bad(err_out=torch.empty(2, 1, 2)), "ieee", "takes err_out"),
        (_bad(gram_out=torch.empty(2, 5, 4)), "ieee", "gram_out must be"),
        (_bad(x=torch.empty(3, 2, 5, 16), err_out=torch.empty(2, 2, 2), gram_out=None), "ieee", "err_out must be"),
        (_bad(x=torch.empty(3, 2, 5, 16), err_out=torch.empty(2, 3, 2), gram_out=torch.empty(2, 2, 5, 5)), "ieee",
         "gram_out must be"),
        (_bad(), "tf32x2", "precision"),
    ],
)
def test_rejects_bad_arguments(arguments, precision, message):
    with pytest.raises(ValueError, match=message):
        consensus_metric(**arguments, precision=precision)


@pytest.mark.parametrize("length, split", [(27, False), (27, True), (70, False)])
def test_all_layers_at_once_match_the_reference_per_layer(device, monkeypatch, length, split):
    """x [L, P, T, C] (every block's states of an iteration) into err [P, L, 2] and G
    [P, L, T, T]: each layer's slot as one layer alone would write it (split Gram too)."""
    if split:
        monkeypatch.setattr(metric_module, "MIN_SLICE", 32)
    lengths_list, layers, width = [length, 1, length // 2 + 1], 3, 200
    states = [_inputs(device, lengths_list, width, seed=length + layer) for layer in range(layers)]
    x = torch.stack([inputs[0] for inputs in states])
    w, b, lengths = states[0][1:]
    err = torch.full((len(lengths_list), layers, 2), float("nan"), device=device)
    gram = torch.full((len(lengths_list), layers, length, length), SENTINEL, device=device)
    consensus_metric(x, w, b, lengths, err, gram)
    for layer in range(layers):
        want_err, want_gram = torch.empty(len(lengths_list), 2), torch.empty(len(lengths_list), length, length)
        consensus_metric_reference(x[layer].cpu(), w.cpu(), b.cpu(), lengths.cpu(), want_err, want_gram)
        torch.testing.assert_close(err[:, layer].cpu(), want_err, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gram[:, layer].cpu(), want_gram, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_no_prompts_launches_nothing():
    consensus_metric(torch.empty(0, 4, 16), torch.empty(16), torch.empty(16),
                     torch.empty(0, dtype=torch.int64), torch.empty(0, 2), torch.empty(0, 4, 4))


def test_refuses_more_programs_than_a_grid_axis_holds():
    """L·P·S Gram programs on the grid's third axis: 48 layers of 1366 prompts exceed 65535
    (shapes only: meta tensors, refused before any launch)."""
    x = torch.empty(48, 1366, 1, 64, device="meta")
    vector = torch.empty(64, device="meta")
    lengths = torch.ones(1366, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match=r"L·P·S \(layers, prompts, slices of C\) = 65568 exceeds the 65535"):
        consensus_metric(x, vector, vector, lengths, torch.empty(1366, 48, 2, device="meta"), None)


def test_kernels_compile_ahead_of_time():
    check_compiles(AOT_SPECS)
