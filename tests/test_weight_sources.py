"""Where weights come from: explicit path, "random", the HF cache, a download, random fallback.

Every test points the HF cache at tmp_path and replaces ``hf_hub_download`` and the
reachability probe, so neither the real cache nor the network is touched.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch

from gpt2fast import weight_sources
from gpt2fast.config import ModelConfig
from gpt2fast.weight_sources import hf_cache_dir, random_weights, resolve_weights
from gpt2fast.weights import INIT_STD, expected_shapes, is_drawn, random_state, state_sha256, tensor_xxh64
from tiny_models import build_hf_cache, tiny_config, tiny_state, write_hf_safetensors

CFG = tiny_config(n_positions=64)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return tiny_state(CFG, seed=11)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache in tmp_path, offline, with downloading made to fail the test."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(**kwargs):
        pytest.fail(f"hf_hub_download called with {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(weight_sources, "hub_unreachable", lambda: None)
    return root


class Warnings(list):
    def __call__(self, line: str) -> None:
        assert "\n" not in line
        self.append(line)


def assert_same_state(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in expected.items())


def test_explicit_path(tmp_path, cache, state):
    path = write_hf_safetensors(tmp_path / "ckpt", CFG, state)
    warn = Warnings()
    weights = resolve_weights(str(path), "gpt2", tiny_config(), False, 0, warn)
    assert weights.source == str(path)
    assert weights.config == CFG
    assert_same_state(weights.state, state)
    assert warn == []


def test_random_is_reproducible_per_seed(cache):
    warn = Warnings()
    first = resolve_weights("random", "gpt2", CFG, True, 7, warn)
    again = resolve_weights("random", "gpt2", CFG, True, 7, warn)
    other = resolve_weights("random", "gpt2", CFG, True, 8, warn)
    assert first.source == "random(seed=7)" and other.source == "random(seed=8)"
    assert_same_state(again.state, first.state)
    assert_same_state(first.state, random_state(CFG, 7))
    assert not torch.equal(first.state["wte.weight"], other.state["wte.weight"])
    assert first.sha256 == again.sha256 == state_sha256(first.state)
    assert first.sha256 != other.sha256
    assert len(warn) == 3 and all("random" in line for line in warn)


def serial_random_state(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """The definition of the random initialisation: one generator, drawing in turn."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(cfg).items():
        if is_drawn(name):
            state[name] = torch.randn(shape, generator=generator) * INIT_STD
        elif name.endswith("weight"):
            state[name] = torch.ones(shape)
        else:
            state[name] = torch.zeros(shape)
    return state


ODD_CONFIGS = [
    ModelConfig(n_layer=2, n_head=1, n_embd=5, vocab_size=7, n_positions=9),    # no size a multiple of 16
    ModelConfig(n_layer=1, n_head=1, n_embd=3, vocab_size=5, n_positions=2),    # wpe of 6 elements
    ModelConfig(n_layer=3, n_head=2, n_embd=16, vocab_size=101, n_positions=4),
    tiny_config(n_layer=2, n_embd=24, n_positions=64),
]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2**32 + 3])
@pytest.mark.parametrize("cfg", ODD_CONFIGS, ids=lambda cfg: f"C{cfg.n_embd}-V{cfg.vocab_size}")
def test_random_state_has_the_bits_of_one_serial_generator(monkeypatch, cfg, seed, threads):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    digests: dict[str, str] = {}
    state = random_state(cfg, seed, digests)
    want = serial_random_state(cfg, seed)
    assert list(state) == list(want)
    for name, tensor in want.items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name].view(torch.int32), tensor.view(torch.int32))
    assert digests == {name: tensor_xxh64(want[name]) for name in want if is_drawn(name)}


MASK = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                      0x27D4EB2F165667C5)


def xxh64_reference(data: bytes) -> int:
    """XXH64 with seed 0, line by line from xxHash's specification (slow)."""
    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & MASK

    def step(acc, lane):
        return rotl((acc + lane * P2) & MASK, 31) * P1 & MASK

    def word(at, size):
        return int.from_bytes(data[at:at + size], "little")

    at, length = 0, len(data)
    if length >= 32:
        lanes = [(P1 + P2) & MASK, P2, 0, (-P1) & MASK]
        while at + 32 <= length:
            lanes = [step(lane, word(at + 8 * i, 8)) for i, lane in enumerate(lanes)]
            at += 32
        h = (rotl(lanes[0], 1) + rotl(lanes[1], 7) + rotl(lanes[2], 12) + rotl(lanes[3], 18)) & MASK
        for lane in lanes:
            h = ((h ^ step(0, lane)) * P1 + P4) & MASK
    else:
        h = P5
    h = (h + length) & MASK
    while at + 8 <= length:
        h = (rotl(h ^ step(0, word(at, 8)), 27) * P1 + P4) & MASK
        at += 8
    if at + 4 <= length:
        h = (rotl(h ^ (word(at, 4) * P1 & MASK), 23) * P2 + P3) & MASK
        at += 4
    for byte in data[at:]:
        h = rotl(h ^ (byte * P5 & MASK), 11) * P1 & MASK
    for shift, prime in ((33, P2), (29, P3)):
        h = (h ^ (h >> shift)) * prime & MASK
    return h ^ (h >> 32)


def test_xxh64_follows_the_specification():
    """The published values, then the reference above at every tail length and across stripes."""
    assert [xxh64_reference(text) for text in (b"", b"abc", b"Nobody inspects the spammish repetition")] == \
        [0xEF46DB3751D8E999, 0x44BC2CF5AD770999, 0xFBCEA83C8A378BF1]
    values = torch.randn(40, generator=torch.Generator().manual_seed(2))
    for count in [0, 1, 2, 3, 7, 8, 9, 16, 40]:
        tensor = values[:count].clone()
        assert tensor_xxh64(tensor) == f"{xxh64_reference(tensor.numpy().tobytes()):016x}"
    bytes_ = torch.arange(77, dtype=torch.uint8)
    assert tensor_xxh64(bytes_) == f"{xxh64_reference(bytes(range(77))):016x}"  # 4- and 1-byte tails
    assert tensor_xxh64(values.view(5, 8).t()) == tensor_xxh64(values.view(5, 8).t().contiguous())


def test_state_sha256_is_over_each_tensors_own_digest():
    state = {"b": torch.arange(6.0).view(2, 3), "a": torch.zeros(3, dtype=torch.bfloat16)}
    lines = "".join(f"{name}:{state[name].dtype}:{tuple(state[name].shape)}:"
                    f"{xxh64_reference(state[name].contiguous().view(torch.uint8).numpy().tobytes()):016x}\n"
                    for name in ("a", "b"))
    assert state_sha256(state) == hashlib.sha256(lines.encode()).hexdigest()
    assert state_sha256(state, {"b": tensor_xxh64(state["b"])}) == state_sha256(state)
    assert state_sha256(state, {"b": "0" * 16}) != state_sha256(state)  # known digests are used as given


def test_random_weights_are_hashed_as_they_are_drawn():
    weights = random_weights(CFG, 4)
    assert weights.sha256 == state_sha256(weights.state) and not weights.single_use


def test_state_sha256_sees_one_value_and_names():
    base = {"a": torch.zeros(3), "b": torch.ones(2, 2)}
    changed = {"a": torch.tensor([0.0, 0.0, 1e-30]), "b": torch.ones(2, 2)}
    renamed = {"a": torch.zeros(3), "c": torch.ones(2, 2)}
    reshaped = {"a": torch.zeros(3), "b": torch.ones(4)}
    digests = {state_sha256(s) for s in (base, changed, renamed, reshaped)}
    assert len(digests) == 4
    assert state_sha256(dict(reversed(base.items()))) == state_sha256(base)


@pytest.mark.parametrize("repo_id", ["openai-community/gpt2", "gpt2"])
def test_found_in_hf_cache(cache, state, repo_id):
    snapshot = build_hf_cache(cache, repo_id, CFG, state)
    cached = huggingface_hub.try_to_load_from_cache(repo_id, "model.safetensors", cache_dir=cache)
    assert cached == str(snapshot / "model.safetensors")
    warn = Warnings()
    weights = resolve_weights(None, "gpt2", tiny_config(), False, 0, warn)
    assert weights.source == f"hf-cache:{repo_id}:{snapshot / 'model.safetensors'}"
    assert weights.config == CFG
    assert_same_state(weights.state, state)
    blob = (snapshot / "model.safetensors").resolve()
    assert weights.sha256 == blob.name
    assert warn == []


def test_cache_prefers_openai_community_and_finds_bin(cache, state):
    build_hf_cache(cache, "openai-community/gpt2-medium", CFG, state, fmt="bin")
    build_hf_cache(cache, "gpt2-medium", CFG, tiny_state(CFG, seed=12))
    weights = resolve_weights(None, "gpt2-medium", tiny_config(), False, 0, Warnings())
    assert weights.source.startswith("hf-cache:openai-community/gpt2-medium:")
    assert weights.source.endswith("pytorch_model.bin")
    assert_same_state(weights.state, state)


def test_cache_dir_from_hf_home_read_at_call_time(tmp_path, cache, state, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    build_hf_cache(tmp_path / "home" / "hub", "gpt2", CFG, state)
    weights = resolve_weights(None, "gpt2", tiny_config(), False, 0, Warnings())
    assert weights.source.startswith("hf-cache:gpt2:" + str(tmp_path / "home" / "hub"))


def test_default_cache_dir(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hf_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"


def test_offline_and_uncached_falls_back_to_random_loudly(cache):
    warn = Warnings()
    weights = resolve_weights(None, "gpt2", CFG, True, 5, warn)
    assert weights.source == "random(seed=5)"
    assert_same_state(weights.state, random_state(CFG, 5))
    assert len(warn) >= 4 and all(line.startswith("WARNING: ") for line in warn)
    cache_lines = [line for line in warn if str(cache) in line]
    assert len(cache_lines) == 2
    assert "openai-community/gpt2" in cache_lines[0] and " gpt2 " in cache_lines[1]
    assert any("HF_HUB_OFFLINE" in line for line in warn)
    assert any("NOT" in line for line in warn)


def fake_hub(files_dir: Path, calls: list):
    """A stand-in for ``hf_hub_download`` serving files from ``files_dir`` into a snapshot."""

    def download(*, repo_id, filename, cache_dir, **kwargs):
        calls.append((repo_id, filename, Path(cache_dir)))
        snapshot = Path(cache_dir) / "fake-snapshot"
        snapshot.mkdir(exist_ok=True)
        return str(shutil.copy(files_dir / filename, snapshot / filename))

    return download


def test_download_when_online(tmp_path, cache, state, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    write_hf_safetensors(tmp_path / "served", CFG, state)
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub(tmp_path / "served", calls))
    warn = Warnings()
    weights = resolve_weights(None, "gpt2", tiny_config(), False, 0, warn)
    assert {(repo, name) for repo, name, _ in calls} == {
        ("openai-community/gpt2", "model.safetensors"),
        ("openai-community/gpt2", "config.json"),
    }
    assert all(cache_dir == cache for _, _, cache_dir in calls)
    assert weights.source == "download:openai-community/gpt2"
    assert weights.config == CFG
    assert_same_state(weights.state, state)
    assert warn == []


def test_failed_download_falls_back_to_random(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def unreachable(**kwargs):
        calls.append(kwargs["repo_id"])
        raise ConnectionError("Name or service not known\nsecond line")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    warn = Warnings()
    weights = resolve_weights(None, "gpt2", CFG, True, 3, warn)
    assert calls == ["openai-community/gpt2"]
    assert weights.source == "random(seed=3)"
    failure = [line for line in warn if line.startswith("WARNING: download")]
    assert len(failure) == 1 and "ConnectionError: Name or service not known" in failure[0]
    assert all(line.startswith("WARNING: ") for line in warn)


def test_unreachable_hub_skips_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probed = []

    def refuse(address, timeout):
        probed.append((address, timeout))
        raise OSError("Name or service not known")

    def no_download(**kwargs):
        pytest.fail("hf_hub_download must not be tried when the hub is unreachable")

    monkeypatch.setattr(weight_sources.socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    warn = Warnings()
    weights = resolve_weights(None, "gpt2", CFG, True, 0, warn)
    assert weights.source == "random(seed=0)"
    assert probed and probed[0][0][1] == 443 and probed[0][1] <= 5
    assert any("download skipped" in line and "not reachable" in line for line in warn)
