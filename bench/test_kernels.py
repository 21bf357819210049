"""Kernel micro-benchmarks on a GPU: achieved weight bandwidth against the card's.

The default workload is one 27-token prompt (M = 27 rows): every GEMM streams its weight
once, so bytes / time is the figure of merit; the card's bandwidth is measured in the same
run with a large device-to-device copy. Skipped without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from gpt2fast.config import PRESETS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROWS = 27


@pytest.fixture(scope="module")
def card_bandwidth(ceilings) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    return ceilings.bandwidth


def report(benchmark, name: str, weight_bytes: int, card: float) -> None:
    achieved = weight_bytes / benchmark.stats.stats.mean
    benchmark.extra_info.update(weight_bytes=weight_bytes, achieved_gbs=achieved / 1e9,
                                card_gbs=card / 1e9, fraction=achieved / card)
    print(f"\n{name}: {achieved / 1e9:.0f} GB/s of {card / 1e9:.0f} GB/s ({achieved / card:.0%})")


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("layer", ["attn.c_attn", "mlp.c_fc", "attn.c_proj", "mlp.c_proj"])
def test_linear_bandwidth(benchmark, card_bandwidth, model, layer):
    from gpt2fast.kernels.linear import linear_residual, ln_linear
    from gpt2fast.weights import linear_shapes

    out_features, in_features = linear_shapes(PRESETS[model])[layer]
    x = torch.randn(ROWS, in_features, device="cuda")
    weight = torch.randn(out_features, in_features, device="cuda") * 0.02
    bias = torch.zeros(out_features, device="cuda")
    out = torch.empty(ROWS, out_features, device="cuda")
    if layer in ("attn.c_attn", "mlp.c_fc"):
        ln_w, ln_b = torch.ones(in_features, device="cuda"), torch.zeros(in_features, device="cuda")

        def call():
            ln_linear(x, ln_w, ln_b, weight, bias, out, gelu=layer == "mlp.c_fc")
    else:
        def call():
            linear_residual(x, weight, bias, out, out)

    call()
    benchmark.group = f"kernels: {model} {layer}"
    benchmark.pedantic(lambda: (call(), torch.cuda.synchronize()), rounds=50, warmup_rounds=5)
    report(benchmark, f"{model} {layer}", weight.numel() * 4, card_bandwidth)


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
def test_lm_head_argmax_bandwidth(benchmark, card_bandwidth, model):
    from gpt2fast.kernels.lm_head import lm_head_argmax

    cfg = PRESETS[model]
    y = torch.randn(ROWS, cfg.n_embd, device="cuda")
    wte = torch.randn(cfg.vocab_size, cfg.n_embd, device="cuda") * 0.02
    ids = torch.empty(ROWS, dtype=torch.int64, device="cuda")
    lm_head_argmax(y, wte, ids)
    benchmark.group = f"kernels: {model} lm_head argmax"
    benchmark.pedantic(lambda: (lm_head_argmax(y, wte, ids), torch.cuda.synchronize()),
                       rounds=50, warmup_rounds=5)
    report(benchmark, f"{model} lm_head argmax", wte.numel() * 4, card_bandwidth)
