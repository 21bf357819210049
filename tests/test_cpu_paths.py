"""The CPU engine's fast paths: ragged rows (no padded rows computed) and prepacked weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt2fast.backends import cpu_packed
from gpt2fast.kernels import panel_linear
from gpt2fast.backends.torch_backend import TorchEngine, TorchGeneration
from gpt2fast.metrics import PromptMasks, consensus_metrics
from gpt2fast.model import DENSE, block
from gpt2fast.ragged import RaggedRows, valid_positions
from gpt2fast.weight_stream import WeightStream
from tiny_models import tiny_config, tiny_state

CFG = tiny_config()
STATE = tiny_state(CFG, seed=11)
PROMPTS = [[5, 9, 200, 7], [31], [8, 8, 8, 1, 2, 3]]


def stream(const_reset: bool = False) -> WeightStream:
    return WeightStream(CFG, STATE, seed=2, random_init=False, const_reset=const_reset,
                        device=torch.device("cpu"), dtype=torch.float32)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def test_ragged_rows_round_trip_with_zero_padding():
    rows = RaggedRows(torch.tensor([3, 1, 2]), 3)
    values = torch.arange(6 * 2, dtype=torch.float32).view(6, 2) + 1
    padded = rows.pad(values)
    assert padded.shape == (3, 3, 2) and rows.n_rows == 6
    assert torch.equal(padded[0], values[:3]) and torch.equal(padded[1, 0], values[3])
    assert torch.equal(padded[1, 1:], torch.zeros(2, 2)) and torch.equal(padded[2, 2], torch.zeros(2))
    assert torch.equal(rows.unpad(padded), values)


def test_equal_lengths_are_views_without_copies():
    rows = RaggedRows(torch.tensor([4, 4]), 4)
    values = torch.randn(8, 3)
    assert not rows.ragged and rows.pad(values).data_ptr() == values.data_ptr()


def test_ragged_block_equals_the_padded_block_on_real_rows():
    """Padded rows never influence real ones (causal attention), so skipping them is exact."""
    rows = RaggedRows(torch.tensor([len(t) for t in PROMPTS]), 6)
    padded = torch.randn(3, 6, CFG.n_embd)
    params = stream().block(0)
    want = rows.unpad(block(padded, params, CFG.n_head, False))
    got = block(rows.unpad(padded), params, CFG.n_head, False, DENSE, rows)
    assert relative_error(got, want) < 1e-6


@pytest.mark.skipif(not cpu_packed.onednn_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("form", ["linear", "linear_gelu", "linear_add"])
def test_packed_linears_equal_dense_ones(form):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 48, generator=generator)
    weight, bias = torch.randn(80, 48, generator=generator) * 0.1, torch.randn(80, generator=generator)
    extra = (torch.randn(2, 5, 80, generator=generator),) if form == "linear_add" else ()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight)
    got = getattr(cpu_packed.PACKED, form)(x, packed, bias, *extra)
    assert relative_error(got, getattr(DENSE, form)(x, weight, bias, *extra)) < 1e-6


ONEDNN_ONLY = pytest.mark.skipif(not cpu_packed.onednn_available(), reason="PyTorch built without oneDNN")
PANELS_ONLY = pytest.mark.skipif(not panel_linear.available(), reason="CPU without AVX-512F")


@pytest.fixture
def onednn_layout(monkeypatch):
    """Every row count gets oneDNN's layout (as many rows would)."""
    monkeypatch.setattr(cpu_packed, "PANEL_ROWS_MAX", 0)


@PANELS_ONLY
def test_few_rows_get_panels_and_many_rows_onednn():
    weights = stream()
    blocks, ops = cpu_packed.packed_blocks(weights, False, cpu_packed.PANEL_ROWS_MAX)
    assert ops is cpu_packed.PANELS and blocks[0].attn_w.shape == (3 * CFG.n_embd // 16, CFG.n_embd, 16)
    if cpu_packed.onednn_available():
        assert cpu_packed.packed_blocks(weights, False, cpu_packed.PANEL_ROWS_MAX + 1).ops is cpu_packed.PACKED


@pytest.mark.parametrize("layout", [pytest.param("panels", marks=PANELS_ONLY),
                                    pytest.param("onednn", marks=ONEDNN_ONLY)])
def test_panels_serve_only_few_rows_and_onednn_any(request, layout):
    if layout == "onednn":
        request.getfixturevalue("onednn_layout")
    packed = cpu_packed.packed_blocks(stream(), False, 1)
    limit = cpu_packed.PANEL_ROWS_MAX
    assert cpu_packed.suiting_rows(packed, limit) is packed
    assert (cpu_packed.suiting_rows(packed, limit + 1) is None) == (layout == "panels")
    assert cpu_packed.suiting_rows(None, 1) is None


@pytest.mark.parametrize("layout", [pytest.param("panels", marks=PANELS_ONLY),
                                    pytest.param("onednn", marks=ONEDNN_ONLY)])
def test_packing_is_shared_per_stream_and_skipped_for_const_reset(request, layout):
    if layout == "onednn":
        request.getfixturevalue("onednn_layout")
    weights = stream()
    blocks, _ = cpu_packed.packed_blocks(weights, False, 11)
    assert blocks is cpu_packed.packed_blocks(weights, False, 11)[0] and len(blocks) == CFG.n_layer
    without_mlp = cpu_packed.packed_blocks(weights, True, 11)[0][0]
    assert without_mlp.fc_w is weights.block(0).fc_w and without_mlp.attn_w is not weights.block(0).attn_w
    assert cpu_packed.packed_blocks(stream(const_reset=True), False, 11) is None


@pytest.mark.skipif(cpu_packed.layout_for(11) is None, reason="neither AVX-512F nor oneDNN here")
def test_packing_is_skipped_when_memory_is_short(monkeypatch):
    assert cpu_packed.packed_blocks(stream(), False, 11) is not None
    monkeypatch.setattr(cpu_packed, "available_memory", lambda device: 1000)
    assert cpu_packed.packed_blocks(stream(), False, 11) is None


@ONEDNN_ONLY
def test_without_the_panel_kernel_few_rows_get_onednn(monkeypatch):
    monkeypatch.setattr(panel_linear, "available", lambda: False)
    assert cpu_packed.layout_for(1).ops is cpu_packed.PACKED


def run_engine() -> np.ndarray:
    engine = TorchEngine(stream(), PROMPTS, False)
    err = torch.empty(3, CFG.n_layer, 2)
    for index in range(2):
        engine.iteration(index, err, None)
    return err.numpy().copy()


@pytest.mark.parametrize("layout", [pytest.param("panels", marks=PANELS_ONLY),
                                    pytest.param("onednn", marks=ONEDNN_ONLY)])
def test_engine_with_and_without_packing_agree(request, monkeypatch, layout):
    if layout == "onednn":
        request.getfixturevalue("onednn_layout")
    packed = run_engine()
    monkeypatch.setattr(cpu_packed, "layout_for", lambda rows: None)
    assert TorchEngine(stream(), PROMPTS, False).packed is None
    np.testing.assert_allclose(packed, run_engine(), rtol=1e-5, atol=1e-6)


@PANELS_ONLY
def test_generation_with_and_without_packing_agree(monkeypatch):
    """Generation packs its weights for one row: the prompt, then each token, the same logits."""
    def logits() -> torch.Tensor:
        runner = TorchGeneration(stream(), False, 2)
        runner.start(8)
        return torch.stack([runner.advance(PROMPTS[2], 0), runner.advance([17], 6), runner.advance([3], 7)])

    assert TorchGeneration(stream(), False, 2).packed.ops is cpu_packed.PANELS
    packed = logits()
    monkeypatch.setattr(cpu_packed, "layout_for", lambda rows: None)
    assert TorchGeneration(stream(), False, 2).packed is None
    torch.testing.assert_close(packed, logits(), rtol=1e-5, atol=1e-5)


def test_metrics_without_padding_skip_the_masks_and_agree_with_them():
    x = torch.randn(2, 6, CFG.n_embd, generator=torch.Generator().manual_seed(9))
    lengths = torch.tensor([6, 6])
    weights = stream()
    masks = PromptMasks(valid_positions(lengths, 6))
    assert not masks.ragged
    fast = consensus_metrics(x, weights.ln_f_w, weights.ln_f_b, lengths, masks)
    masks.ragged = True  # the general path, with every position valid
    general = consensus_metrics(x, weights.ln_f_w, weights.ln_f_b, lengths, masks)
    for got, want in zip(fast, general, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lengths", [[6, 6], [6, 2]])
def test_metrics_without_the_gram_equal_those_from_it(lengths):
    """mean of G = ||Σ ŷ||² / T² and row 0 = Ŷ ŷ_0, ragged prompts included."""
    x = torch.randn(2, 6, CFG.n_embd, generator=torch.Generator().manual_seed(12))
    lengths = torch.tensor(lengths)
    weights = stream()
    from_gram, gram = consensus_metrics(x, weights.ln_f_w, weights.ln_f_b, lengths)
    direct, none = consensus_metrics(x, weights.ln_f_w, weights.ln_f_b, lengths, with_gram=False)
    assert none is None and gram.shape == (2, 6, 6)
    torch.testing.assert_close(direct, from_gram, rtol=1e-6, atol=1e-6)
