"""One copy of the weights: a stream that owns its weights hands its block weights over, the
CPU backend packs them in place (panels) or one at a time (oneDNN), and that packed copy is
the only one, serving every row count; weights passed in by the caller are left alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import gpt2fast
from gpt2fast import api
from gpt2fast.backends import cpu_packed
from gpt2fast.kernels import panel_linear
from gpt2fast.backends.torch_backend import TorchEngine, TorchGeneration
from gpt2fast.errors import InputError
from gpt2fast.model import BlockParams
from gpt2fast.weight_stream import WeightStream
from gpt2fast.weights import LINEAR_NAMES
from tiny_models import tiny_config, tiny_state

CFG = tiny_config()
STATE = tiny_state(CFG, seed=11)
PROMPTS = [[5, 9, 200, 7], [31], [8, 8, 8, 1, 2, 3]]
LINEAR_FIELDS = cpu_packed.ATTENTION_NAMES + cpu_packed.MLP_NAMES

PANELS_ONLY = pytest.mark.skipif(not panel_linear.available(), reason="no panel-kernel variant here")
ONEDNN_ONLY = pytest.mark.skipif(not cpu_packed.onednn_available(), reason="PyTorch built without oneDNN")
LAYOUTS = [pytest.param("panels", marks=PANELS_ONLY), pytest.param("onednn", marks=ONEDNN_ONLY)]


@pytest.fixture
def layout(request, monkeypatch) -> str:
    """Which packed layout few rows get: panels, or oneDNN's (as many rows would)."""
    if request.param == "onednn":
        monkeypatch.setattr(cpu_packed, "PANEL_ROWS_MAX", 0)
    return request.param


def copied_state() -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in STATE.items()}


def stream(state: dict[str, torch.Tensor], owned: bool, random_init: bool = False,
           const_reset: bool = False) -> WeightStream:
    return WeightStream(CFG, state, seed=2, random_init=random_init, const_reset=const_reset,
                        device=torch.device("cpu"), dtype=torch.float32, owned=owned)


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (oneDNN's opaque ones count by size)."""
    storages = {}
    for tensor in tensors:
        if tensor.is_mkldnn:
            storages[id(tensor)] = tensor.numel() * tensor.element_size()
        else:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def held_tensors(weights: WeightStream, blocks: list[BlockParams], fields=None) -> list[torch.Tensor]:
    """Every tensor the stream and the packed blocks reference (of blocks: ``fields`` only)."""
    tensors = [] if fields else [weights.wte, weights.wpe, weights.ln_f_w, weights.ln_f_b]
    for params in [*blocks, *(p for p in weights.loaded if p is not None)]:
        tensors += [getattr(params, name) for name in fields or [f.name for f in dataclasses.fields(params)]]
    return tensors


def linear_bytes() -> int:
    return sum(STATE[f"h.{layer}.{name}.weight"].nbytes for layer in range(CFG.n_layer) for name in LINEAR_NAMES)


@pytest.mark.parametrize("layout", LAYOUTS, indirect=True)
def test_an_owned_stream_keeps_one_packed_copy(layout):
    state = copied_state()
    canonical = {name: state[f"h.0.{name}.weight"].data_ptr() for name in LINEAR_NAMES}
    weights = stream(state, owned=True)
    assert state == {} and weights.owns_blocks
    blocks, ops = cpu_packed.packed_blocks(weights, False, 11)
    assert ops is (cpu_packed.PANELS if layout == "panels" else cpu_packed.PACKED)
    assert weights.loaded == [None] * CFG.n_layer
    with pytest.raises(RuntimeError, match="handed over"):
        weights.block(0)
    if layout == "panels":  # in place: the panels live where the canonical weights did
        assert blocks[0].attn_w.shape == (3 * CFG.n_embd // 16, CFG.n_embd, 16)
        assert blocks[0].attn_w.data_ptr() == canonical["attn.c_attn"]
        assert blocks[0].fc_proj_w.data_ptr() == canonical["mlp.c_proj"]
    assert storage_bytes(held_tensors(weights, blocks)) <= sum(tensor.nbytes for tensor in STATE.values())
    assert storage_bytes(held_tensors(weights, blocks, LINEAR_FIELDS)) <= linear_bytes()
    # The only copy serves every later row count and noff, and steps that find no layout.
    later_blocks, later_ops = cpu_packed.packed_blocks(weights, True, cpu_packed.PANEL_ROWS_MAX + 1)
    assert later_blocks is blocks and later_ops is ops
    params, step_ops = cpu_packed.step_block(weights, None, CFG.n_layer + 1)
    assert params is blocks[1] and step_ops is ops


@pytest.mark.parametrize("layout", LAYOUTS, indirect=True)
def test_a_stream_given_the_callers_weights_copies_them(layout):
    weights = stream(STATE, owned=False)
    assert not weights.owns_blocks and len(STATE) == len(tiny_state(CFG, seed=11))
    blocks, _ = cpu_packed.packed_blocks(weights, False, 11)
    assert weights.block(0).attn_w is STATE["h.0.attn.c_attn.weight"]
    assert storage_bytes(held_tensors(weights, blocks, LINEAR_FIELDS)) >= 2 * linear_bytes()
    with pytest.raises(RuntimeError, match="does not own"):
        weights.give_block(0)


def test_const_reset_keeps_the_owned_weights_canonical():
    weights = stream(copied_state(), owned=True, const_reset=True)
    assert not weights.owns_blocks and cpu_packed.packed_blocks(weights, False, 11) is None
    assert weights.block(0).attn_w.shape == (3 * CFG.n_embd, CFG.n_embd)


def run_engine(weights: WeightStream, iterations: int = 2) -> np.ndarray:
    engine = TorchEngine(weights, PROMPTS, False)
    err = torch.empty(3, CFG.n_layer, 2)
    out = []
    for index in range(iterations):
        engine.iteration(index, err, None)
        out.append(err.numpy().copy())
    return np.stack(out)


@pytest.mark.parametrize("layout", LAYOUTS, indirect=True)
@pytest.mark.parametrize("random_init", [False, True])
def test_owned_weights_compute_what_the_callers_do(layout, random_init):
    """Same layout, same kernels: packing in place (owned weights; a --random-init redraw,
    owned or not) changes no bit of the results against the packed copy of the caller's
    weights, and the caller's weights stay as they were."""
    before = copied_state()
    owned = run_engine(stream(copied_state(), owned=True, random_init=random_init))
    copied = run_engine(stream(STATE, owned=False, random_init=random_init))
    np.testing.assert_array_equal(owned, copied)
    assert all(torch.equal(STATE[name], tensor) for name, tensor in before.items())  # the caller's: untouched


def test_a_random_init_redraw_is_packed_once_even_from_the_callers_weights():
    weights = stream(STATE, owned=False, random_init=True)
    assert weights.owns_blocks
    if cpu_packed.layout_for(11) is None:
        pytest.skip("neither a panel kernel nor oneDNN here")
    cpu_packed.packed_blocks(weights, False, 11)
    assert weights.loaded == [None] * CFG.n_layer and STATE["h.0.attn.c_attn.weight"].shape == (3 * CFG.n_embd, CFG.n_embd)


@PANELS_ONLY
def test_generation_runs_a_long_prompt_on_the_only_copy(monkeypatch):
    """A prompt too long for the panels' best rows has no canonical weights to fall back on."""
    monkeypatch.setattr(cpu_packed, "PANEL_ROWS_MAX", 4)

    def logits(weights: WeightStream) -> torch.Tensor:
        runner = TorchGeneration(weights, False, 2)
        runner.start(8)
        return torch.stack([runner.advance(PROMPTS[2], 0), runner.advance([17], 6)])

    owned = stream(copied_state(), owned=True)
    got = logits(owned)
    assert owned.loaded == [None] * CFG.n_layer
    monkeypatch.setattr(cpu_packed, "layout_for", lambda rows: None)
    torch.testing.assert_close(got, logits(stream(STATE, owned=False)), rtol=1e-5, atol=1e-5)


def test_the_api_loads_weights_for_one_run(tiny_checkpoint):
    weights, _ = api.load_weights(tiny_checkpoint, None, 0)
    assert weights.single_use and weights.state
    first = gpt2fast.consensus(PROMPTS[0], weights=weights, size=2, progress=False)
    assert weights.state == {}
    with pytest.raises(InputError, match="taken them"):
        gpt2fast.consensus(PROMPTS[0], weights=weights, size=2, progress=False)
    again = gpt2fast.consensus(PROMPTS[0], weights=api.load_weights(tiny_checkpoint, None, 0)[0], size=2,
                               progress=False)
    np.testing.assert_array_equal(first.err, again.err)


def test_weights_made_by_the_caller_are_left_whole(tiny_checkpoint):
    loaded, _ = api.load_weights(tiny_checkpoint, None, 0)
    weights = dataclasses.replace(loaded, state=dict(loaded.state), single_use=False)
    kept = {name: tensor.clone() for name, tensor in weights.state.items()}
    first = gpt2fast.consensus(PROMPTS[0], weights=weights, size=2, progress=False)
    second = gpt2fast.consensus(PROMPTS[0], weights=weights, size=2, progress=False)
    np.testing.assert_array_equal(first.err, second.err)
    assert all(torch.equal(weights.state[name], tensor) for name, tensor in kept.items())
