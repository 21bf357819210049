"""The token plus position embedding (``gpt2fast.kernels.embedding.embed``) on a GPU against
PyTorch's ``wte[tokens] + wpe[positions]`` (``gpt2fast.model.embed``, the kernel's reference),
gpt2 and gpt2-xl, float32: one prompt of 27 tokens (the default; launch-bound) and 8 prompts
of 256 (enough rows for bandwidth to count).

Each case records its bytes for the floor line: the token ids and the two rows read and the
row written per token. Skipped without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gpt2fast.config import PRESETS
from gpt2fast.kernels.embedding import embed, embed_reference
from hardware import time_gpu_call

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
WORKLOADS = [(1, 27), (8, 256)]  # (prompts, tokens each)


def embedding_calls(n_prompts: int, length: int, vocab: int, width: int, n_positions: int,
                    device) -> dict[str, Callable[[], torch.Tensor]]:
    """The baseline's and gpt2fast's embedding of the same random tokens [n_prompts, length]
    with float32 wte [vocab, width] and wpe [n_positions, width], by role; each returns
    [n_prompts, length, width]."""
    tokens = torch.randint(vocab, (n_prompts, length), device=device)
    wte = torch.randn(vocab, width, device=device)
    wpe = torch.randn(n_positions, width, device=device)
    out = torch.empty(n_prompts, length, width, device=device)
    return {"baseline": lambda: embed_reference(tokens, wte, wpe),
            "gpt2fast": lambda: embed(tokens, wte, wpe, out)}


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=[f"{p}x{t}" for p, t in WORKLOADS])
@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_embedding(benchmark, ceilings, role, workload, model):
    cfg, (n_prompts, length) = PRESETS[model], workload
    call = embedding_calls(n_prompts, length, cfg.vocab_size, cfg.n_embd, cfg.n_positions, "cuda")[role]
    bytes_moved = n_prompts * length * (8 + 3 * cfg.n_embd * 4)
    benchmark.group = f"embedding: {model} {n_prompts} x {length} tokens"
    time_gpu_call(benchmark, ceilings, role, call, bytes_moved, 0)
