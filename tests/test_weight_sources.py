"""Where weights come from: explicit path, "random", the HF cache, a download, random fallback.

Every test points the HF cache at tmp_path and replaces ``hf_hub_download`` and the
reachability probe, so neither the real cache nor the network is touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch

from gpt2fast import weight_sources
from gpt2fast.weight_sources import hf_cache_dir, resolve_weights, state_sha256
from gpt2fast.weights import random_state
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
