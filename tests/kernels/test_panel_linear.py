"""The CPU's few-row Linear (csrc/panel_linear_*.cpp through kernels/panel_linear.py), every
variant this build and CPU run, against ``F.linear`` in float64, at shapes that exercise every
tile: row counts around the row blocks (9 rows for avx512, 6 for avx2), panel counts around
the 3-panel block of avx512, columns that end inside a panel or inside its first half."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2fast import _panel_linear
from gpt2fast.backends import cpu_packed
from gpt2fast.kernels import panel_linear
from gpt2fast.errors import InputError
from gpt2fast.model import DENSE

VARIANTS = _panel_linear.variants()
pytestmark = pytest.mark.skipif(not VARIANTS, reason="no panel-kernel variant is built or runs on this CPU")

POISON = 1.0e30


@pytest.fixture(params=VARIANTS or ["none"], autouse=True)
def variant(request, monkeypatch) -> str:
    """Every test runs once per variant, chosen as a user would force it."""
    monkeypatch.setenv(panel_linear.VARIANT_ENV, request.param)
    return request.param


def operands(rows: int, in_features: int, out_features: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=generator)
    weight = torch.randn(out_features, in_features, generator=generator) / in_features ** 0.5
    bias = torch.randn(out_features, generator=generator)
    residual = torch.randn(rows, out_features, generator=generator)
    return x, weight, bias, residual


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


def test_panels_hold_sixteen_output_columns_each_zero_past_the_end():
    weight = torch.arange(40 * 3, dtype=torch.float32).view(40, 3)
    panels = panel_linear.pack_panels(weight)
    assert panels.shape == (3, 3, 16)
    for column in range(40):
        assert torch.equal(panels[column // 16, :, column % 16], weight[column])
    assert torch.equal(panels[2, :, 8:], torch.zeros(3, 8))


@pytest.mark.parametrize("rows", [1, 5, 6, 7, 8, 9, 10, 27, 31])
@pytest.mark.parametrize("out_features", [5, 8, 11, 16, 32, 48, 53, 80, 144])
@pytest.mark.parametrize("with_residual", [False, True])
def test_panel_linear_equals_the_float64_product(rows, out_features, with_residual):
    x, weight, bias, residual = operands(rows, 37, out_features)
    want = panel_linear.panel_linear_reference(x, weight, bias, residual if with_residual else None)
    got = panel_linear.panel_linear(x, panel_linear.pack_panels(weight), bias, residual if with_residual else None)
    assert got.shape == (rows, out_features)
    assert relative_error(got, want) < 1e-6


@pytest.mark.parametrize("rows", [3, 27])
def test_writes_stay_inside_the_output(rows, variant):
    """The last panel's columns past N and the memory after y are left alone."""
    x, weight, bias, residual = operands(rows, 24, 53, seed=3)
    panels = panel_linear.pack_panels(weight)
    y = torch.full((rows * 53 + 64,), POISON)
    _panel_linear.linear(x.data_ptr(), rows, 24, panels.data_ptr(), bias.data_ptr(), 53, False, residual.data_ptr(),
                         y.data_ptr(), torch.get_num_threads(), variant)
    assert torch.all(y[rows * 53:] == POISON)
    want = panel_linear.panel_linear_reference(x, weight, bias, residual)
    assert relative_error(y[: rows * 53].view(rows, 53), want) < 1e-6


def test_gelu_follows_the_exact_tanh_approximation_over_a_wide_range():
    """Identity weights make y = GELU(x), so the kernel's GELU is seen alone. The exact value
    is 0.5·v·(1 + tanh u) = v / (1 + e^(-2u)) in float64 (float64 ``F.gelu`` itself cancels
    to 0 below v ≈ -6). Computing u in float32 moves e^(-2u) by about |2u| ulp, so the bound
    is 4 ulp plus that (3|2u| ulp), whatever the method."""
    values = torch.linspace(-9, 30, 48_000)
    got = panel_linear.panel_linear(values.view(-1, 16), panel_linear.pack_panels(torch.eye(16)), torch.zeros(16),
                                  gelu=True).view(-1).double()
    v = values.double()
    u = 0.7978845608028654 * (v + 0.044715 * v**3)
    want = panel_linear.panel_linear_reference(values.view(-1, 16), torch.eye(16), torch.zeros(16), gelu=True).view(-1)
    ulp = torch.finfo(torch.float32).eps * want.abs()
    assert torch.all((got - want).abs() <= (4 + 3 * (2 * u).abs().where(u < 0, 0)) * ulp)
    assert got[-1] == 30


def test_the_reference_is_float64_linear_and_gelu():
    """The reference's GELU is F.gelu's tanh approximation where F.gelu does not cancel."""
    x, weight, bias, residual = operands(4, 40, 24, seed=5)
    linear = F.linear(x.double(), weight.double(), bias.double())
    torch.testing.assert_close(panel_linear.panel_linear_reference(x, weight, bias, residual),
                               residual.double() + linear, rtol=1e-14, atol=0)
    torch.testing.assert_close(panel_linear.panel_linear_reference(x, weight, bias, gelu=True),
                               F.gelu(linear, approximate="tanh"), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("in_features,out_features", [(768, 2304), (3072, 768)])
def test_gpt2_sized_products(in_features, out_features):
    x, weight, bias, residual = operands(27, in_features, out_features, seed=8)
    got = panel_linear.panel_linear(x, panel_linear.pack_panels(weight), bias, residual)
    want = panel_linear.panel_linear_reference(x, weight, bias, residual)
    assert float((got.double() - want).norm() / want.norm()) < 1e-6


def test_output_is_float32_whatever_the_default_dtype():
    x, weight, bias, _ = operands(5, 16, 32, seed=9)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        got = panel_linear.panel_linear(x, panel_linear.pack_panels(weight), bias)
    finally:
        torch.set_default_dtype(default)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads, name, message", [(0, None, "threads must be at least 1"),
                                                    (1, "sse9", "this build has no sse9 variant")])
def test_bad_threads_or_variant_are_refused(variant, threads, name, message):
    x, weight, bias, _ = operands(2, 16, 16)
    y = torch.empty(2, 16)
    with pytest.raises(ValueError, match=message):
        _panel_linear.linear(x.data_ptr(), 2, 16, panel_linear.pack_panels(weight).data_ptr(), bias.data_ptr(), 16,
                             False, 0, y.data_ptr(), threads, name or variant)


@pytest.mark.parametrize("form", ["linear", "linear_gelu", "linear_add"])
def test_panel_forms_equal_dense_ones_on_batched_rows(form):
    x, weight, bias, _ = operands(2 * 5, 48, 80, seed=4)
    x = x.view(2, 5, 48)
    extra = (torch.randn(2, 5, 80, generator=torch.Generator().manual_seed(5)),) if form == "linear_add" else ()
    got = getattr(cpu_packed.PANELS, form)(x, panel_linear.pack_panels(weight), bias, *extra)
    want = getattr(DENSE, form)(x, weight, bias, *extra)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_the_thread_count():
    """Every output is summed by one thread in one order, so the result is bitwise fixed."""
    x, weight, bias, _ = operands(27, 96, 7 * 48, seed=6)
    panels = panel_linear.pack_panels(weight)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = panel_linear.panel_linear(x, panels, bias)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, panel_linear.panel_linear(x, panels, bias))


def test_non_contiguous_inputs_are_read_correctly():
    x, weight, bias, residual = operands(12, 32, 48, seed=7)
    column_major_x, column_major_residual = x.T.contiguous().T, residual.T.contiguous().T
    assert not column_major_x.is_contiguous()
    got = panel_linear.panel_linear(column_major_x, panel_linear.pack_panels(weight), bias, column_major_residual)
    torch.testing.assert_close(got, residual + F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", ["in_features", "panels", "unpacked", "panel_dtype", "bias_rank", "dtype",
                                    "residual_dtype", "residual_shape"])
def test_mismatched_operands_are_refused(change):
    x, weight, bias, residual = operands(4, 32, 48)
    panels = panel_linear.pack_panels(weight)
    if change == "in_features":
        x = x[:, :31]
    elif change == "panels":
        panels = panels[:2]
    elif change == "unpacked":
        panels, bias = weight[:1], bias[:1]
    elif change == "panel_dtype":
        panels = panels.double()
    elif change == "bias_rank":
        bias = bias.view(24, 2)
    elif change == "dtype":
        x = x.double()
    elif change == "residual_dtype":
        residual = residual.double()
    else:
        residual = residual.T.contiguous()
    with pytest.raises(ValueError, match="panel linear"):
        panel_linear.panel_linear(x, panels, bias, residual)


@pytest.mark.parametrize("gelu", [False, True])
def test_variants_sum_in_the_same_order(monkeypatch, gelu):
    """Every variant starts each output from its bias and adds x[m, k]·W[n, k] by FMA for
    k = 0, 1, ... in order, and computes GELU with the same operations, so all of them give
    the same bits (this is what lets a run be compared across CPUs of either ISA)."""
    x, weight, bias, residual = operands(31, 40, 53, seed=12)
    panels = panel_linear.pack_panels(weight)
    results = []
    for name in VARIANTS:
        monkeypatch.setenv(panel_linear.VARIANT_ENV, name)
        results.append(panel_linear.panel_linear(x, panels, bias, residual, gelu=gelu))
    for result in results[1:]:
        assert torch.equal(result, results[0])


def test_the_fastest_runnable_variant_is_chosen_unless_one_is_forced(monkeypatch):
    monkeypatch.delenv(panel_linear.VARIANT_ENV)
    assert panel_linear.kernel_variant() == VARIANTS[0]
    assert set(VARIANTS) <= set(_panel_linear.compiled())
    for name in VARIANTS:
        monkeypatch.setenv(panel_linear.VARIANT_ENV, name.upper())
        assert panel_linear.kernel_variant() == name
    monkeypatch.setenv(panel_linear.VARIANT_ENV, "off")
    assert panel_linear.kernel_variant() is None and not panel_linear.available()
    with pytest.raises(ValueError, match="no kernel variant runs here"):
        panel_linear.panel_linear(*operands(2, 16, 16)[:1], panel_linear.pack_panels(torch.eye(16)), torch.zeros(16))


def test_a_variant_this_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setenv(panel_linear.VARIANT_ENV, "neon")
    with pytest.raises(InputError, match=r"GPT2FAST_PANEL_KERNEL=neon: this build and CPU run only .*off"):
        panel_linear.kernel_variant()
