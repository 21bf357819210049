"""Reading every supported checkpoint format back to exactly the canonical state, and refusing
bad files with a one-line InputError that names the file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from gpt2fast.checkpoints import load_checkpoint
from gpt2fast.config import VOCAB_SIZE
from gpt2fast.errors import InputError
from tiny_models import (
    build_hf_cache,
    tiny_config,
    tiny_state,
    write_hf_bin,
    write_hf_config,
    write_hf_safetensors,
    write_nanogpt_ckpt,
)

CFG = tiny_config(n_positions=96)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return tiny_state(CFG, seed=3)


def assert_same_state(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == torch.float32, name
        assert loaded[name].is_contiguous(), name
        assert torch.equal(loaded[name], tensor), name


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_helper_stores_conv1d_transposed(tmp_path, state):
    stored = safetensors.torch.load_file(write_hf_safetensors(tmp_path, CFG, state))
    c = CFG.n_embd
    assert stored["h.0.attn.c_attn.weight"].shape == (c, 3 * c)
    assert stored["h.1.mlp.c_proj.weight"].shape == (4 * c, c)
    assert torch.equal(stored["h.0.attn.c_proj.weight"], state["h.0.attn.c_proj.weight"].t())


def test_hf_safetensors_directory(tmp_path, state):
    path = write_hf_safetensors(tmp_path, CFG, state)
    weights = load_checkpoint(tmp_path, tiny_config(), preset_explicit=False)
    assert_same_state(weights.state, state)
    assert weights.config == CFG
    assert weights.source == str(path)
    assert weights.sha256 == sha256_of(path)


def test_hf_safetensors_file_with_prefix_and_lm_head(tmp_path, state):
    path = write_hf_safetensors(tmp_path, CFG, state, prefix="transformer.")
    assert "lm_head.weight" in safetensors.torch.load_file(path)
    weights = load_checkpoint(path, CFG, preset_explicit=True)
    assert_same_state(weights.state, state)


def test_hf_bin_directory(tmp_path, state):
    path = write_hf_bin(tmp_path, CFG, state)
    weights = load_checkpoint(tmp_path, CFG, preset_explicit=True)
    assert_same_state(weights.state, state)
    assert weights.source == str(path)
    assert weights.sha256 == sha256_of(path)


def test_hf_bin_without_prefix(tmp_path, state):
    path = write_hf_bin(tmp_path, CFG, state, prefix="")
    assert_same_state(load_checkpoint(path, CFG, preset_explicit=False).state, state)


def test_directory_prefers_safetensors(tmp_path, state):
    other = tiny_state(CFG, seed=4)
    write_hf_bin(tmp_path, CFG, other)
    write_hf_safetensors(tmp_path, CFG, state)
    weights = load_checkpoint(tmp_path, CFG, preset_explicit=False)
    assert weights.source.endswith("model.safetensors")
    assert_same_state(weights.state, state)


def test_fp16_checkpoint_becomes_float32(tmp_path, state):
    write_hf_safetensors(tmp_path, CFG, state, dtype=torch.float16)
    weights = load_checkpoint(tmp_path, CFG, preset_explicit=False)
    assert_same_state(weights.state, {name: t.half().float() for name, t in state.items()})


def test_nanogpt_directory(tmp_path, state):
    path = write_nanogpt_ckpt(tmp_path / "ckpt.pt", CFG, state)
    weights = load_checkpoint(tmp_path, tiny_config(), preset_explicit=False)
    assert_same_state(weights.state, state)
    assert weights.config == CFG
    assert weights.sha256 == sha256_of(path)


def test_nanogpt_compiled_and_padded_vocab(tmp_path, state):
    path = write_nanogpt_ckpt(
        tmp_path / "run.pt", CFG, state, vocab_size=50304, compiled_prefix=True
    )
    model_args = torch.load(path, weights_only=True)["model_args"]
    assert model_args["vocab_size"] == 50304
    weights = load_checkpoint(path, CFG, preset_explicit=True)
    assert weights.config.vocab_size == VOCAB_SIZE
    assert_same_state(weights.state, state)


def test_nanogpt_without_bias_gets_zero_biases(tmp_path, state):
    path = write_nanogpt_ckpt(tmp_path / "ckpt.pt", CFG, state, bias=False)
    expected = {
        name: torch.zeros_like(t) if name.endswith(".bias") else t for name, t in state.items()
    }
    assert_same_state(load_checkpoint(path, CFG, preset_explicit=False).state, expected)


def test_bare_state_dict_uses_preset(tmp_path, state):
    path = tmp_path / "weights.pth"
    torch.save({f"transformer.{name}": t for name, t in state.items()}, path)
    weights = load_checkpoint(path, CFG, preset_explicit=False)
    assert weights.config == CFG
    assert_same_state(weights.state, state)


def test_checkpoint_in_hf_cache_snapshot(tmp_path, state):
    snapshot = build_hf_cache(tmp_path, "openai-community/gpt2", CFG, state, fmt="bin")
    weights = load_checkpoint(snapshot / "pytorch_model.bin", tiny_config(), preset_explicit=False)
    assert weights.config == CFG
    assert_same_state(weights.state, state)


def test_config_json_sizes_win(tmp_path):
    cfg = tiny_config(n_layer=3, n_head=4, n_positions=40)
    state = tiny_state(cfg, seed=5)
    write_hf_safetensors(tmp_path, cfg, state)
    weights = load_checkpoint(tmp_path, tiny_config(), preset_explicit=False)
    assert weights.config == cfg
    assert_same_state(weights.state, state)


def test_config_json_with_n_ctx_only(tmp_path, state):
    write_hf_safetensors(tmp_path, CFG, state, with_config=False)
    values = {"n_layer": 2, "n_head": 2, "n_embd": 128, "vocab_size": VOCAB_SIZE, "n_ctx": 96}
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert load_checkpoint(tmp_path, tiny_config(), preset_explicit=False).config == CFG


def test_explicit_preset_mismatch_names_both(tmp_path, state):
    write_hf_safetensors(tmp_path, CFG, state)
    preset = dataclasses.replace(CFG, n_layer=5)
    with pytest.raises(InputError) as error:
        load_checkpoint(tmp_path, preset, preset_explicit=True)
    message = str(error.value)
    assert "n_layer=2" in message and "n_layer=5" in message
    assert "\n" not in message


def test_small_vocabulary_refused(tmp_path):
    cfg = tiny_config(n_positions=8)
    small = dataclasses.replace(cfg, vocab_size=1000)
    state = tiny_state(small, seed=0)
    write_hf_safetensors(tmp_path, small, state)
    with pytest.raises(InputError, match="1000"):
        load_checkpoint(tmp_path, cfg, preset_explicit=False)


def test_untied_lm_head_refused(tmp_path, state):
    tensors = {name: t.clone() for name, t in state.items()}
    torch.save({**tensors, "lm_head.weight": tensors["wte.weight"] + 1.0}, tmp_path / "m.pt")
    with pytest.raises(InputError, match="lm_head"):
        load_checkpoint(tmp_path / "m.pt", CFG, preset_explicit=False)


class MarkerOnLoad:
    """Unpickling this would create the file ``self.marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_truncated(tmp_path: Path, state) -> Path:
    path = write_hf_safetensors(tmp_path, CFG, state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_garbage_bin(tmp_path: Path, state) -> Path:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"this is not a pytorch checkpoint\n" * 10)
    return path


def write_wrong_shape(tmp_path: Path, state) -> Path:
    return write_hf_safetensors(tmp_path, CFG, {**state, "h.1.mlp.c_fc.bias": torch.zeros(7)})


def write_missing_tensor(tmp_path: Path, state) -> Path:
    return write_hf_safetensors(tmp_path, CFG, {k: t for k, t in state.items() if k != "ln_f.bias"})


def write_bad_config(tmp_path: Path, state) -> Path:
    write_hf_safetensors(tmp_path, CFG, state)
    path = tmp_path / "config.json"
    path.write_text('{"n_layer": 2,')
    return path


def write_indivisible_heads(tmp_path: Path, state) -> Path:
    write_hf_safetensors(tmp_path, CFG, state)
    write_hf_config(tmp_path, dataclasses.replace(CFG, n_head=3))
    return tmp_path / "config.json"


def write_integer_tensor(tmp_path: Path, state) -> Path:
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"wte.weight": torch.ones(4, 4, dtype=torch.int64)}, path)
    return path


def write_unknown_suffix(tmp_path: Path, state) -> Path:
    path = tmp_path / "model.npz"
    path.write_bytes(b"PK")
    return path


BAD_CASES = {
    "truncated safetensors": (write_truncated, "safetensors"),
    "garbage bin": (write_garbage_bin, "PyTorch"),
    "wrong shape": (write_wrong_shape, "shape"),
    "missing tensor": (write_missing_tensor, "ln_f.bias"),
    "bad config.json": (write_bad_config, "JSON"),
    "n_embd not multiple of n_head": (write_indivisible_heads, "n_head=3"),
    "integer tensor": (write_integer_tensor, "floating"),
    "unknown suffix": (write_unknown_suffix, "unknown"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_checkpoint_one_line_error(tmp_path, state, case):
    write, expected_text = BAD_CASES[case]
    named = write(tmp_path, state)
    target = named if named.suffix != ".json" else tmp_path
    with pytest.raises(InputError) as error:
        load_checkpoint(target, CFG, preset_explicit=False)
    message = str(error.value)
    assert "\n" not in message
    assert str(named) in message
    assert expected_text in message


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file") as error:
        load_checkpoint(tmp_path / "absent.safetensors", CFG, preset_explicit=False)
    assert str(tmp_path / "absent.safetensors") in str(error.value)


def test_empty_directory(tmp_path):
    with pytest.raises(InputError) as error:
        load_checkpoint(tmp_path, CFG, preset_explicit=False)
    message = str(error.value)
    assert str(tmp_path) in message and "model.safetensors" in message and "\n" not in message


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "ckpt.pt"])
def test_pickled_code_is_not_run(tmp_path, filename):
    marker = tmp_path / "marker"
    torch.save({"wte.weight": torch.zeros(2), "payload": MarkerOnLoad(marker)}, tmp_path / filename)
    with pytest.raises(InputError, match="refused") as error:
        load_checkpoint(tmp_path, CFG, preset_explicit=False)
    assert not marker.exists()
    assert str(tmp_path / filename) in str(error.value)
    assert "\n" not in str(error.value)
    torch.load(tmp_path / filename, weights_only=False)
    assert marker.exists(), "the payload is live: an unsafe load runs it"


def test_a_pickle_of_another_protocol_is_refused_in_one_line(tmp_path):
    """torch warns about pickle protocols other than 2 before refusing: the process still
    prints only its one line (a subprocess: pytest would capture the warning itself)."""
    import subprocess
    import sys

    marker = tmp_path / "marker"
    torch.save({"payload": MarkerOnLoad(marker)}, tmp_path / "ckpt.pt", pickle_protocol=4)
    process = subprocess.run([sys.executable, "-m", "gpt2fast", "--weights", str(tmp_path / "ckpt.pt"), "--prompt",
                              "hi", "--size", "1"], capture_output=True, text=True, cwd=tmp_path)
    err = process.stderr
    assert process.returncode == 2 and err.count("\n") == 1 and err.startswith("gpt2fast: error:"), err
    assert "refused" in err and not marker.exists()
