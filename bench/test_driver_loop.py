"""The C++ driver against the plain Python loop it replaced (issue 3): same engine, same
files. Workload: gpt2 sizes (random weights), the default 27-token prompt, err2 recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt2fast.backends.torch_backend import TorchEngine
from gpt2fast.config import DEFAULT_PROMPT, PRESETS
from gpt2fast.driver import drive
from gpt2fast.memory import chunk_iterations
from gpt2fast.tokenizer import gpt2_encoding
from gpt2fast.weight_stream import WeightStream
from gpt2fast.weights import random_state

ITERATIONS = 20
CASE = f"driver loop: gpt2, T=27, N={ITERATIONS}, err2"


@pytest.fixture(scope="module")
def stream():
    cfg = PRESETS["gpt2"]
    return WeightStream(cfg, random_state(cfg, 0), seed=0, random_init=False, const_reset=False,
                        device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def tokens():
    return [gpt2_encoding().encode(DEFAULT_PROMPT)]


def python_loop(engine: TorchEngine, n_iterations: int, err_path, gram_path) -> None:
    """The loop of the first version: chunk buffers in torch, memory-mapped .npy files."""
    layers, prompts, length = engine.n_layer, engine.n_prompts, engine.length
    steps = layers * n_iterations
    err_file = np.lib.format.open_memmap(err_path, "w+", np.float32, (prompts, steps, 2))
    gram_file = np.lib.format.open_memmap(gram_path, "w+", np.float32, (prompts, length, length, steps))
    err_file[...] = np.nan
    gram_file[...] = np.nan
    chunk = chunk_iterations(prompts, layers, length, True, n_iterations)
    err = torch.empty(chunk, prompts, layers, 2)
    gram = torch.empty(chunk, prompts, layers, length, length)
    for start in range(0, n_iterations, chunk):
        count = min(chunk, n_iterations - start)
        for row in range(count):
            engine.iteration(start + row, err[row], gram[row])
        first, run = start * layers, count * layers
        err_file[:, first : first + run] = err[:count].permute(1, 0, 2, 3).reshape(prompts, run, 2).numpy()
        gram_file[..., first : first + run] = (
            gram[:count].permute(1, 3, 4, 0, 2).reshape(prompts, length, length, run).numpy()
        )
    err_file.flush()
    gram_file.flush()


@pytest.mark.parametrize("role,loop", [("gpt2fast", drive), ("baseline", python_loop)],
                         ids=["driver", "python-loop"])
def test_loop(benchmark, stream, tokens, tmp_path, role, loop):
    benchmark.group = CASE
    benchmark.extra_info["role"] = role
    benchmark.pedantic(
        lambda: loop(TorchEngine(stream, tokens, False), ITERATIONS, tmp_path / "e.npy", tmp_path / "g.npy"),
        rounds=6, warmup_rounds=1,
    )
