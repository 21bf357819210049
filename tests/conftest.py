"""Shared fixtures: every test runs offline, in its own directory, with tiny checkpoints.

Triton kernels run under Triton's interpreter (on CPU tensors) unless the machine has a
CUDA GPU, where they run compiled. Triton reads TRITON_INTERPRET when it is first imported,
so it is set here, before any test module imports triton. Ahead-of-time compilation for
real GPUs needs the compiled mode and runs in a child process (tests/kernels/aot.py).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

import pytest  # noqa: E402

from tiny_models import tiny_config, tiny_state, write_hf_safetensors  # noqa: E402

TINY_SEED = 7
# The quick subset for development is ``python -m pytest -q -m "not slow"``; slow are the
# ahead-of-time compiles (test names with "ahead_of_time") and these modules, by what they run:
SLOW_MODULES = {
    "test_distributed.py": "torchrun jobs of two ranks",
    "test_triton_backend.py": "the Triton engine under the interpreter",
    "test_gpu_plan.py": "the GPU model's calibration and reports",
    "test_panel_build.py": "C++ builds of the panel kernel",
    "test_properties.py": "hypothesis over the command line",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if "ahead_of_time" in item.name or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where kernel tests put their tensors: the GPU when there is one, else the CPU
    (then the kernels run under the interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def host_reads_forbidden(monkeypatch):
    """A context manager inside which reading any tensor's value on the host raises: what
    runs there could be captured in a CUDA graph, whose replays never re-run host code."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor's value was read on the host")

    @contextmanager
    def forbidden():
        with monkeypatch.context() as patch:
            for name in ("item", "tolist", "__int__", "__index__", "__float__", "__bool__"):
                patch.setattr(torch.Tensor, name, refuse)
            yield

    return forbidden
