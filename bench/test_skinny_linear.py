"""The skinny tensor-core GEMM (``gpt2fast.kernels.skinny_linear``) on a GPU: achieved weight
bandwidth per gpt2 / gpt2-xl Linear at M rows, against the card's (measured in the same run)
and against cuBLAS (``F.linear``, the torch backend's GEMM) as the ratio table's baseline.

At few rows every call streams its weight once, so weight bytes / time is the figure of
merit; the issue-12 target is >= 85 % of the card's bandwidth. Skipped without a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2fast.config import PRESETS
from gpt2fast.weights import linear_shapes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# (dtype, precision) of each case: float32's accuracy on the tensor cores, IEEE on the CUDA
# cores, and bf16 (half the bytes).
MODES = [(torch.float32, "tf32x3"), (torch.float32, "ieee"), (torch.bfloat16, "tf32x3")]


def synced(call):
    def run():
        call()
        torch.cuda.synchronize()
    return run


@pytest.mark.parametrize("rows", [1, 27, 64])
@pytest.mark.parametrize("mode", MODES, ids=["fp32-tf32x3", "fp32-ieee", "bf16"])
@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("layer", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_skinny_linear_bandwidth(benchmark, ceilings, role, layer, model, mode, rows):
    from gpt2fast.kernels.skinny_linear import plan, skinny_linear

    dtype, precision = mode
    out_features, in_features = linear_shapes(PRESETS[model])[layer]
    x = torch.randn(rows, in_features, device="cuda", dtype=dtype)
    weight = (torch.randn(out_features, in_features, device="cuda") * 0.02).to(dtype)
    bias = torch.zeros(out_features, device="cuda", dtype=dtype)
    out = torch.empty(rows, out_features, device="cuda", dtype=dtype)
    if role == "baseline":
        call = synced(lambda: F.linear(x, weight, bias))
    else:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        counters = torch.zeros(plan(rows, out_features, in_features, sms, dtype).tiles(rows, out_features),
                               dtype=torch.int32, device="cuda")
        call = synced(lambda: skinny_linear(x, weight, bias, out, gelu=layer == "mlp.c_fc",
                                            precision=precision, counters=counters))
    call()
    benchmark.group = f"skinny_linear: {model} {layer} M={rows} {dtype} {precision}"
    benchmark.extra_info["role"] = role
    benchmark.pedantic(call, rounds=50, warmup_rounds=5)
    achieved = weight.numel() * weight.element_size() / benchmark.stats.stats.median
    benchmark.extra_info.update(achieved_gbs=achieved / 1e9, fraction_of_card=achieved / ceilings.bandwidth,
                                summary=f"skinny_linear {role}: {model} {layer} M={rows} {dtype} {precision}: "
                                        f"{achieved / 1e9:.0f} GB/s ({achieved / ceilings.bandwidth:.0%} of the card)")
