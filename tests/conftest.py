"""Shared fixtures: every test runs offline, in its own directory, with tiny checkpoints."""

from __future__ import annotations

import pytest

from tiny_models import tiny_config, tiny_state, write_hf_safetensors

TINY_SEED = 7


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No network, an empty Hugging Face cache, and the test's own working directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A Hugging Face checkpoint directory (safetensors + config.json) of the tiny model."""
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    cfg = tiny_config()
    write_hf_safetensors(directory, cfg, tiny_state(cfg, TINY_SEED))
    return directory
