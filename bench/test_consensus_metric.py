"""The consensus metric of an iteration (``gpt2fast.kernels.consensus_metric``) on a GPU
against PyTorch, as the two backends compute it: the Triton backend's one ``consensus_metric``
call on the states after all L blocks [L, P, T, C], against the torch backend's
``gpt2fast.metrics.consensus_metrics`` per layer (padding masks made once) copied into the
same [P, L, 2] (and [P, L, T, T]) outputs. With and without the Gram matrices, gpt2 and
gpt2-xl, float32, on test_consensus.py's prompts: (a) one of 27 tokens, (b) 8 of 5-40
tokens, (c) one of 256.

Each case records its work for the floor line: the real rows of x read and G written, and
the Gram products' FLOPs. Skipped without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gpt2fast.config import PRESETS
from gpt2fast.kernels.consensus_metric import consensus_metric
from gpt2fast.metrics import PromptMasks, consensus_metrics
from gpt2fast.ragged import valid_positions
from hardware import time_gpu_call

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPTS = {"a": [27], "b": [5, 9, 13, 17, 21, 27, 33, 40], "c": [256]}

Outputs = tuple[torch.Tensor, torch.Tensor | None]


def metric_calls(layers: int, lengths: list[int], width: int, with_gram: bool,
                 device) -> dict[str, Callable[[], Outputs]]:
    """The baseline's and gpt2fast's metric of the same float32 states [layers, P, T, width]
    of prompts of ``lengths`` tokens, by role; each returns its (err [P, L, 2], G [P, L, T, T]
    or None)."""
    n_prompts, length = len(lengths), max(lengths)
    x = torch.randn(layers, n_prompts, length, width, device=device)
    ln_f_w = 1 + 0.1 * torch.randn(width, device=device)
    ln_f_b = 0.1 * torch.randn(width, device=device)
    prompt_lengths = torch.tensor(lengths, dtype=torch.int64, device=device)
    masks = PromptMasks(valid_positions(prompt_lengths, length))
    outputs = {role: (torch.empty(n_prompts, layers, 2, device=device),
                      torch.empty(n_prompts, layers, length, length, device=device) if with_gram else None)
               for role in ("baseline", "gpt2fast")}

    def baseline() -> Outputs:
        err_out, gram_out = outputs["baseline"]
        for layer, states in enumerate(x):
            err, gram = consensus_metrics(states, ln_f_w, ln_f_b, prompt_lengths, masks, with_gram=with_gram)
            err_out[:, layer].copy_(err)
            if with_gram:
                gram_out[:, layer].copy_(gram)
        return err_out, gram_out

    def gpt2fast() -> Outputs:
        consensus_metric(x, ln_f_w, ln_f_b, prompt_lengths, *outputs["gpt2fast"])
        return outputs["gpt2fast"]

    return {"baseline": baseline, "gpt2fast": gpt2fast}


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("prompts", sorted(PROMPTS))
@pytest.mark.parametrize("with_gram", [False, True], ids=["err", "err+gram"])
@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_consensus_metric(benchmark, ceilings, role, with_gram, prompts, model):
    cfg, lengths = PRESETS[model], PROMPTS[prompts]
    call = metric_calls(cfg.n_layer, lengths, cfg.n_embd, with_gram, "cuda")[role]
    squares = sum(length * length for length in lengths)
    gram_bytes = cfg.n_layer * len(lengths) * max(lengths) ** 2 * 4 if with_gram else 0
    bytes_moved = cfg.n_layer * sum(lengths) * cfg.n_embd * 4 + gram_bytes
    flops = cfg.n_layer * 2 * squares * cfg.n_embd
    benchmark.group = f"consensus_metric: {model} ({prompts}) {'err+gram' if with_gram else 'err'}"
    time_gpu_call(benchmark, ceilings, role, call, bytes_moved, flops, rounds=30, unit="iteration")
