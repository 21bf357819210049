"""Attention (``gpt2fast.kernels.attention``) on a GPU against PyTorch's
``F.scaled_dot_product_attention``, with gpt2's 12 and gpt2-xl's 25 heads of 64, float32:

- ``causal_attention`` of one prompt of 27 (the default) or 512 tokens, from the packed qkv
  to the merged output, against ``causal_attention_reference`` (split heads, causal SDPA,
  merge heads, padded rows zeroed);
- ``decode_attention`` of one new token over a cache of 27 or 512 positions (capacity 1024),
  against ``decode_attention_reference`` (SDPA of the one query).

Each case records its work for the floor line: the bytes of qkv and out (causal) or of the
cache's keys and values read (decode), and the FLOPs of both products. Skipped without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gpt2fast.config import HEAD_DIM, PRESETS
from gpt2fast.kernels.attention import (causal_attention, causal_attention_reference, decode_attention,
                                        decode_attention_reference)
from hardware import time_gpu_call

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CAPACITY = 1024  # the context length: the decode cache's rows


def causal_calls(n_head: int, lengths: list[int], device) -> dict[str, Callable[[], torch.Tensor]]:
    """The baseline's and gpt2fast's causal attention of prompts of ``lengths`` tokens on the
    same float32 qkv [P, max(lengths), 3·n_head·64], by role; each returns out [P, T, C]."""
    width = n_head * HEAD_DIM
    qkv = torch.randn(len(lengths), max(lengths), 3 * width, device=device)
    prompt_lengths = torch.tensor(lengths, dtype=torch.int64, device=device)
    out = torch.empty(len(lengths), max(lengths), width, device=device)
    return {"baseline": lambda: causal_attention_reference(qkv, prompt_lengths, n_head=n_head),
            "gpt2fast": lambda: causal_attention(qkv, prompt_lengths, out, n_head=n_head)}


def decode_calls(n_head: int, length: int, capacity: int, device) -> dict[str, Callable[[], torch.Tensor]]:
    """The baseline's and gpt2fast's attention of one query [n_head, 64] over the first
    ``length`` of ``capacity`` cached positions (same float32 inputs), by role; each returns
    out [n_head, 64]."""
    q = torch.randn(n_head, HEAD_DIM, device=device)
    cache_k = torch.randn(n_head, capacity, HEAD_DIM, device=device)
    cache_v = torch.randn(n_head, capacity, HEAD_DIM, device=device)
    out = torch.empty(n_head, HEAD_DIM, device=device)
    return {"baseline": lambda: decode_attention_reference(q, cache_k, cache_v, length),
            "gpt2fast": lambda: decode_attention(q, cache_k, cache_v, length, out)}


def timed(benchmark, ceilings, role: str, call, bytes_moved: int, flops: int) -> None:
    time_gpu_call(benchmark, ceilings, role, call, bytes_moved, flops)


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("length", [27, 512])
@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_causal_attention(benchmark, ceilings, role, length, model):
    width = PRESETS[model].n_embd
    call = causal_calls(PRESETS[model].n_head, [length], "cuda")[role]
    benchmark.group = f"attention: {model} causal T={length}"
    timed(benchmark, ceilings, role, call, 4 * length * width * 4, 2 * length * (length + 1) * width)


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("length", [27, 512])
@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_decode_attention(benchmark, ceilings, role, length, model):
    width = PRESETS[model].n_embd
    call = decode_calls(PRESETS[model].n_head, length, CAPACITY, "cuda")[role]
    benchmark.group = f"attention: {model} decode over {length} cached"
    timed(benchmark, ceilings, role, call, 2 * length * width * 4, 4 * length * width)
