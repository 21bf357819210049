"""Consensus and generation: gpt2fast against the reference, with a roofline line per case.

The baseline is what a user would otherwise run: ``gpt2fast.reference`` (the original's
semantics), one prompt at a time, then ``np.save`` of its arrays. gpt2fast runs the backend
``auto`` picks (Triton on a GPU, torch on the CPU) through the C++ driver. Weights are the
seeded random ones (no checkpoint offline); the time per iteration does not depend on them.

Cases: (a) the default 27-token prompt; (b) 8 prompts of mixed lengths; (c) one 256-token
prompt with the T×T matrices recorded (--matrixerror). On the CPU: gpt2 with a few
iterations; on a GPU: gpt2-xl, N = 2000 ((c): 200, whose err2 is 12.6 MB per iteration).
``GPT2FAST_BENCH_ITERATIONS`` sets N for every case, ``GPT2FAST_BENCH_MAX_LENGTH`` the
generation length (default 100, as ``--use-model 100``).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from gpt2fast import reference
from gpt2fast.backends import cpu_packed, make_engine, make_generation, resolve_backend
from gpt2fast.kernels import panel_linear
from gpt2fast.config import DEFAULT_PROMPT, PRESETS
from gpt2fast.driver import drive
from gpt2fast.generation import grow
from gpt2fast.tokenizer import gpt2_encoding
from gpt2fast.validation import parameter
from gpt2fast.weight_stream import WeightStream
from gpt2fast.weights import random_state
from gpt2fast.work import iteration_work, token_work

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
MODEL = "gpt2-xl" if ON_GPU else "gpt2"
CFG = PRESETS[MODEL]
DEFAULT_ITERATIONS = {"a": 2000, "b": 2000, "c": 200} if ON_GPU else {"a": 8, "b": 4, "c": 2}
MAX_LENGTH = int(os.environ.get("GPT2FAST_BENCH_MAX_LENGTH", "100"))
# (rounds, warm-up rounds) per benchmark: the CPU's consensus cases take well under a second
# a round, so they get enough rounds for a steady median; generation takes up to a minute.
CONSENSUS_ROUNDS = (1, 0) if ON_GPU else (5, 1)
GENERATION_ROUNDS = (1, 0) if ON_GPU else (2, 0)


def iterations_of(case: str) -> int:
    return int(os.environ.get("GPT2FAST_BENCH_ITERATIONS", DEFAULT_ITERATIONS[case]))


def case_prompts(case: str) -> list[list[int]]:
    """Token ids of each case's prompts (random ids from a fixed seed for (b) and (c))."""
    rng = random.Random(1)
    if case == "a":
        return [gpt2_encoding().encode(DEFAULT_PROMPT)]
    lengths = [5, 9, 13, 17, 21, 27, 33, 40] if case == "b" else [256]
    return [[rng.randrange(CFG.vocab_size) for _ in range(length)] for length in lengths]


@pytest.fixture(scope="module")
def state():
    return random_state(CFG, 0)


@pytest.fixture(scope="module")
def stream(state):
    return WeightStream(CFG, state, seed=0, random_init=False, const_reset=False, device=DEVICE,
                        dtype=torch.float32)


@pytest.fixture(scope="module")
def model(state):
    return reference.build_model(CFG, state, DEVICE)


def backend() -> str:
    return resolve_backend("auto", DEVICE, "fp32", parameter)


def label(case: str, iterations: int, prompts: list[list[int]]) -> str:
    lengths = sorted({len(tokens) for tokens in prompts})
    shape = f"T={lengths[0]}" if len(lengths) == 1 else f"T={lengths[0]}..{lengths[-1]}"
    gram = ", err2" if case == "c" else ""
    return f"({case}) {MODEL} P={len(prompts)} {shape} N={iterations}{gram}"


def gemm_kernel(engine) -> str:
    """Which kernel computes a CPU engine's (or generation's) Linear layers: the panel
    kernel's variant, oneDNN, or ``F.linear``, as ``cpu_packed.step_block`` hands them out."""
    _, ops = cpu_packed.step_block(engine.stream, engine.packed, 0)
    if ops is cpu_packed.PANELS:
        return f"panels {panel_linear.kernel_variant()}"
    return "oneDNN" if ops is cpu_packed.PACKED else "F.linear"


def set_roofline(benchmark, ceilings, work: tuple[int, int], units: int, unit: str, engine) -> None:
    """Record ``units`` repetitions of ``work`` (bytes, FLOPs) and their floor
    (``Ceilings.floor_record``; conftest rewrites it if the ceilings measured again after the
    benchmarks are higher), and on the CPU this process's panel-kernel variant and the kernel
    ``engine``'s Linear layers run on."""
    bytes_moved, flops = work[0] * units, work[1] * units
    benchmark.extra_info.update(bytes=bytes_moved, flops=flops, units=units, unit=unit,
                                **ceilings.floor_record(bytes_moved, flops))
    if not ON_GPU:
        benchmark.extra_info.update(panel_kernel=panel_linear.kernel_variant(), gemm=gemm_kernel(engine))


@pytest.mark.parametrize("case", ["a", "b", "c"])
@pytest.mark.parametrize("role", ["gpt2fast", "baseline"])
def test_consensus(benchmark, ceilings, stream, model, tmp_path, case, role):
    prompts, iterations = case_prompts(case), iterations_of(case)
    with_gram = case == "c"
    benchmark.group = label(case, iterations, prompts)
    benchmark.extra_info["role"] = role

    if role == "gpt2fast":
        def run():
            engine = make_engine(backend(), stream, prompts, False, "fp32")
            drive(engine, iterations, tmp_path / "e.npy", tmp_path / "g.npy" if with_gram else None)

        warm = make_engine(backend(), stream, prompts, False, "fp32")
        drive(warm, 1, tmp_path / "w.npy", None)  # compiles and autotunes
        set_roofline(benchmark, ceilings, iteration_work(CFG, [len(t) for t in prompts], with_gram),
                     iterations, "iteration", warm)
    else:
        def run():
            for number, tokens in enumerate(prompts):
                idx = torch.tensor([tokens], device=DEVICE)
                _, err, err2, _ = reference.forward(model, idx, iterations=iterations, noff=False,
                                                    random_init=False, const_reset=False, seed=0)
                np.save(tmp_path / f"e{number}.npy", err.numpy())
                if with_gram:
                    np.save(tmp_path / f"g{number}.npy", err2.numpy())

    rounds, warmup_rounds = CONSENSUS_ROUNDS
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup_rounds)


@pytest.mark.parametrize("iterations", [1, 4])
@pytest.mark.parametrize("role", ["gpt2fast", "baseline"])
def test_generation(benchmark, ceilings, stream, state, role, iterations):
    prompt = case_prompts("a")[0]
    new_tokens = MAX_LENGTH - len(prompt)
    benchmark.group = f"generation {MODEL} N={iterations}, {len(prompt)}->{MAX_LENGTH} tokens"
    benchmark.extra_info.update(role=role, new_tokens=new_tokens)

    if role == "gpt2fast":
        def run():
            runner = make_generation(backend(), stream, False, iterations, "fp32")
            grown = grow(runner, prompt, max_length=MAX_LENGTH, top_k=10, temperature=1.0,
                         generator=torch.Generator().manual_seed(0))
            assert len(grown) == MAX_LENGTH

        warm = make_generation(backend(), stream, False, iterations, "fp32")
        grow(warm, prompt, max_length=len(prompt) + 2, top_k=10, temperature=1.0,
             generator=torch.Generator().manual_seed(0))
        prefill_bytes, prefill_flops = iteration_work(CFG, [len(prompt)], False)
        per_token = [token_work(CFG, iterations, context) for context in range(len(prompt), MAX_LENGTH)]
        work = (prefill_bytes * iterations + sum(b for b, _ in per_token),
                prefill_flops * iterations + sum(f for _, f in per_token))
        set_roofline(benchmark, ceilings, work, 1, "run", warm)
    else:
        def run():
            grown = reference.generate(CFG, state, prompt, max_length=MAX_LENGTH, iterations=iterations,
                                       seed=0, device=DEVICE)
            assert len(grown) == MAX_LENGTH

    rounds, warmup_rounds = GENERATION_ROUNDS
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup_rounds)
