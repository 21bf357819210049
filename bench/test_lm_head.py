"""The tied LM head (``gpt2fast.kernels.lm_head``) on a GPU against PyTorch, gpt2 and gpt2-xl,
float32, IEEE products:

- ``lm_head_argmax`` at the default prompt's 27 rows (``--decode``) against
  ``lm_head_argmax_reference``, the logits ``y @ wteᵀ`` then ``argmax``;
- ``lm_head_logits`` of one row (generation) against ``lm_head_logits_reference``, ``wte @ y``.

Each call streams wte once, so wte bytes / time is the figure of merit: each case reports its
achieved GB/s against the card's bandwidth (measured in the same run) and records its work
for the floor line. Skipped without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gpt2fast.config import PRESETS
from gpt2fast.kernels.lm_head import (lm_head_argmax, lm_head_argmax_reference, lm_head_logits,
                                      lm_head_logits_reference)
from hardware import time_gpu_call

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ARGMAX_ROWS = 27


def argmax_calls(rows: int, vocab: int, width: int, device) -> dict[str, Callable[[], torch.Tensor]]:
    """The baseline's and gpt2fast's argmax of y [rows, width] wteᵀ on the same float32
    inputs, by role; each returns the ids [rows] int64."""
    y = torch.randn(rows, width, device=device)
    wte = torch.randn(vocab, width, device=device) * 0.02
    ids = torch.empty(rows, dtype=torch.int64, device=device)
    return {"baseline": lambda: lm_head_argmax_reference(y, wte),
            "gpt2fast": lambda: lm_head_argmax(y, wte, ids)}


def logits_calls(vocab: int, width: int, device) -> dict[str, Callable[[], torch.Tensor]]:
    """The baseline's and gpt2fast's logits wte y of one row y [width] on the same float32
    inputs, by role; each returns the logits [vocab]."""
    y = torch.randn(width, device=device)
    wte = torch.randn(vocab, width, device=device) * 0.02
    logits = torch.empty(vocab, device=device)
    return {"baseline": lambda: lm_head_logits_reference(y, wte),
            "gpt2fast": lambda: lm_head_logits(y, wte, logits)}


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("launcher", ["argmax", "logits"])
@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_lm_head(benchmark, ceilings, role, launcher, model):
    cfg = PRESETS[model]
    rows = ARGMAX_ROWS if launcher == "argmax" else 1
    if launcher == "argmax":
        call = argmax_calls(rows, cfg.vocab_size, cfg.n_embd, "cuda")[role]
    else:
        call = logits_calls(cfg.vocab_size, cfg.n_embd, "cuda")[role]
    wte_bytes = cfg.vocab_size * cfg.n_embd * 4
    flops = 2 * rows * cfg.vocab_size * cfg.n_embd
    benchmark.group = f"lm_head: {model} {launcher} M={rows}"
    time_gpu_call(benchmark, ceilings, role, call, wte_bytes, flops)
