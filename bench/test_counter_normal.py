"""The counter-based N(0, 1) fill (``gpt2fast.kernels.counter_normal.fill_counter_normal``) on a
GPU against its reference, ``gpt2fast.philox.counter_normal``: the same numbers computed with
PyTorch tensor operations on the same device, as ``--random-init`` / ``--const-reset`` draw
weights without the Triton backend. Sizes: the mlp.c_fc weight of gpt2 (2.4 M values) and
of gpt2-xl (10.2 M values).

Each case records the bytes written for the floor line (the kernel computes ten Philox
rounds and a Box-Muller pair per value, so it may sit above it). Skipped without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gpt2fast.config import PRESETS
from gpt2fast.kernels.counter_normal import counter_normal_reference, fill_counter_normal
from gpt2fast.philox import mix_key
from gpt2fast.weights import linear_shapes
from hardware import time_gpu_call

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KEY, STREAM, STEP = mix_key(0, 1), 3, 5


def counter_normal_calls(numel: int, device) -> dict[str, Callable[[], torch.Tensor]]:
    """The baseline's and gpt2fast's elements 0..numel-1 of the sequence (KEY, STREAM, STEP),
    by role; each returns a float32 vector [numel]."""
    out = torch.empty(numel, device=device)
    return {"baseline": lambda: counter_normal_reference(KEY, STREAM, STEP, numel, device=device),
            "gpt2fast": lambda: fill_counter_normal(out, KEY, STREAM, STEP)}


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_counter_normal(benchmark, ceilings, role, model):
    out_features, in_features = linear_shapes(PRESETS[model])["mlp.c_fc"]
    numel = out_features * in_features
    call = counter_normal_calls(numel, "cuda")[role]
    benchmark.group = f"counter_normal: {model} {numel} values"
    time_gpu_call(benchmark, ceilings, role, call, numel * 4, 0, rounds=30)
