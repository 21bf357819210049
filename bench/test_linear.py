"""The fused GEMMs of a block (``gpt2fast.kernels.linear``) on a GPU against PyTorch at the
default prompt's 27 rows, per gpt2 / gpt2-xl Linear layer, float32 IEEE products:

- ``ln_linear`` (ln_1 → attn.c_attn, ln_2 → mlp.c_fc with tanh-GELU) against
  ``ln_linear_reference`` (F.layer_norm, F.linear, F.gelu);
- ``linear_residual`` (attn.c_proj, mlp.c_proj) against ``linear_residual_reference``
  (residual + F.linear).

At 27 rows a call streams its weight once, so weight bytes / time is the figure of merit:
each case reports its achieved GB/s against the card's bandwidth (measured in the same run)
and records its work for the floor line. Skipped without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gpt2fast.config import PRESETS
from gpt2fast.kernels.linear import linear_residual, linear_residual_reference, ln_linear, ln_linear_reference
from gpt2fast.weights import linear_shapes
from hardware import time_gpu_call

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROWS = 27
LAYERS = ["attn.c_attn", "mlp.c_fc", "attn.c_proj", "mlp.c_proj"]
WITH_LAYER_NORM = ("attn.c_attn", "mlp.c_fc")


def linear_calls(layer: str, out_features: int, in_features: int, rows: int,
                 device) -> dict[str, Callable[[], torch.Tensor]]:
    """The baseline's and gpt2fast's call of ``layer`` (a name in LAYERS) on the same float32
    inputs, by role; each returns its output [rows, out_features]."""
    x = torch.randn(rows, in_features, device=device)
    weight = torch.randn(out_features, in_features, device=device) * 0.02
    bias = torch.randn(out_features, device=device) * 0.02
    out = torch.empty(rows, out_features, device=device)
    if layer in WITH_LAYER_NORM:
        ln_w = 1 + 0.1 * torch.randn(in_features, device=device)
        ln_b = 0.1 * torch.randn(in_features, device=device)
        gelu = layer == "mlp.c_fc"
        return {"baseline": lambda: ln_linear_reference(x, ln_w, ln_b, weight, bias, gelu=gelu),
                "gpt2fast": lambda: ln_linear(x, ln_w, ln_b, weight, bias, out, gelu=gelu)}
    residual = torch.randn(rows, out_features, device=device)
    return {"baseline": lambda: linear_residual_reference(x, weight, bias, residual),
            "gpt2fast": lambda: linear_residual(x, weight, bias, residual, out)}


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_linear(benchmark, ceilings, role, layer, model):
    out_features, in_features = linear_shapes(PRESETS[model])[layer]
    call = linear_calls(layer, out_features, in_features, ROWS, "cuda")[role]
    weight_bytes = out_features * in_features * 4
    flops = 2 * ROWS * out_features * in_features
    benchmark.group = f"linear: {model} {layer} M={ROWS}"
    time_gpu_call(benchmark, ceilings, role, call, weight_bytes, flops)
