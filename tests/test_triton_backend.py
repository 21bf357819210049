"""The Triton backend end to end (kernels under the interpreter here) against the torch backend.

The model is the tiny one with a 512-token vocabulary: the engines never use the tokenizer,
and the interpreter's cost of the LM head grows with the vocabulary.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from gpt2fast.backends.torch_backend import TorchEngine, TorchGeneration
from gpt2fast.backends.triton_backend import TritonEngine, TritonGeneration
from gpt2fast.config import ConsensusFlags
from gpt2fast.driver import drive
from gpt2fast.generation import grow
from gpt2fast.weight_stream import WeightStream
from tiny_models import tiny_config, tiny_state

CFG = dataclasses.replace(tiny_config(), vocab_size=512)
STATE = tiny_state(CFG, seed=4)
PROMPTS = [[464, 208, 7, 211, 18, 62, 262], [511], [318, 257, 13, 286, 262, 100]]
FLAG_COMBINATIONS = list(itertools.product([False, True], repeat=3))


def run(engine_class, flags: ConsensusFlags, tmp_path, device, dtype=torch.float32, chunk: int | None = None):
    stream = WeightStream(CFG, STATE, seed=flags.seed, random_init=flags.random_init,
                          const_reset=flags.const_reset, device=device, dtype=dtype)
    engine = engine_class(stream, PROMPTS, flags.noff)
    name = engine_class.backend
    decoded = {}
    drive(engine, flags.iterations, tmp_path / f"{name}-e.npy", tmp_path / f"{name}-g.npy",
          decode_iterations=frozenset(flags.decode_iterations), on_decode=decoded.__setitem__, chunk=chunk)
    return np.load(tmp_path / f"{name}-e.npy"), np.load(tmp_path / f"{name}-g.npy"), decoded


def assert_same_run(got, want, rtol: float, atol: float) -> None:
    """err, err2 (NaN where a ragged prompt has no token) and the decoded ids at each
    prompt's real positions (the padding rows' argmax means nothing) of two runs agree."""
    (err, gram, decoded), (want_err, want_gram, want_decoded) = got, want
    np.testing.assert_allclose(err, want_err, rtol=rtol, atol=atol)
    np.testing.assert_allclose(gram, want_gram, rtol=rtol, atol=atol)
    assert np.array_equal(np.isnan(gram), np.isnan(want_gram))
    assert decoded.keys() == want_decoded.keys()
    # Exact ids: no compared one changes when every logit moves by up to 3e-4 of the largest
    # (tried), while the backends' logits differ by < 1e-6 of it.
    for i in decoded:
        for p, tokens in enumerate(PROMPTS):
            assert decoded[i][p, : len(tokens)].tolist() == want_decoded[i][p, : len(tokens)].tolist()


@pytest.mark.parametrize("number", range(len(FLAG_COMBINATIONS)))
def test_triton_backend_matches_torch_backend(number, tmp_path, device):
    """Every combination of --noff, --random-init, --const-reset, with N = 1, 2, 3 in turn,
    ragged prompts and decoding after the first and the last iteration."""
    noff, random_init, const_reset = FLAG_COMBINATIONS[number]
    iterations = 1 + number % 3
    flags = ConsensusFlags(iterations=iterations, noff=noff, random_init=random_init,
                           const_reset=const_reset, seed=number,
                           decode_iterations=tuple(sorted({0, iterations - 1})))
    assert_same_run(run(TritonEngine, flags, tmp_path, device), run(TorchEngine, flags, tmp_path, device),
                    rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("random_init, const_reset", [(False, False), (True, False), (False, True)])
def test_bf16_triton_backend_is_close_to_bf16_torch_backend(random_init, const_reset, tmp_path, device):
    """bf16 is an opt-in speed mode: both backends round to bf16 at different points (the
    fused kernels keep the GELU and the residual add in float32, and Triton's interpreter
    truncates where a GPU rounds to nearest), so after 2 iterations the metrics agree to
    bf16's resolution, not bit for bit; the decodings mostly agree."""
    flags = ConsensusFlags(iterations=2, random_init=random_init, const_reset=const_reset, seed=1,
                           decode_iterations=(1,))
    err, gram, decoded = run(TritonEngine, flags, tmp_path, device, torch.bfloat16)
    want_err, want_gram, want_decoded = run(TorchEngine, flags, tmp_path, device, torch.bfloat16)
    np.testing.assert_allclose(err, want_err, rtol=0, atol=2e-2)
    np.testing.assert_allclose(gram, want_gram, rtol=0, atol=2e-2)
    assert np.array_equal(np.isnan(gram), np.isnan(want_gram))
    agree = sum(int((decoded[1][p, : len(t)] == want_decoded[1][p, : len(t)]).sum()) for p, t in enumerate(PROMPTS))
    assert agree >= 0.8 * sum(map(len, PROMPTS))


def started_generations(device, dtype) -> tuple[TritonGeneration, TorchGeneration]:
    """Both backends' cached forward passes (N = 2) on the same weights, caches for 12 tokens."""
    stream = WeightStream(CFG, STATE, seed=0, random_init=False, const_reset=False, device=device, dtype=dtype)
    runs = TritonGeneration(stream, False, 2), TorchGeneration(stream, False, 2)
    for run in runs:
        run.start(12)
    return runs


def test_bf16_triton_generation_logits_are_close(device):
    triton_run, torch_run = started_generations(device, torch.bfloat16)
    start = len(PROMPTS[2])
    for ids, position in ((PROMPTS[2], 0), ([7], start)):
        got, want = triton_run.advance(ids, position), torch_run.advance(ids, position).float()
        assert got.dtype == torch.float32
        assert float((got - want).norm() / want.norm()) < 3e-2  # measured: 1e-2


@pytest.mark.parametrize("number", range(len(FLAG_COMBINATIONS)))
def test_triton_generation_matches_torch_generation(number, device):
    """Greedy generation with the key/value cache, every flag combination, N = 1, 2, 3."""
    noff, random_init, const_reset = FLAG_COMBINATIONS[number]
    iterations = 1 + number % 3

    def grow_with(generation_class):
        stream = WeightStream(CFG, STATE, seed=number, random_init=random_init, const_reset=const_reset,
                              device=device, dtype=torch.float32)
        return grow(generation_class(stream, noff, iterations), PROMPTS[0], max_length=9, top_k=1,
                    temperature=1.0, generator=torch.Generator().manual_seed(0))

    grown = grow_with(TritonGeneration)
    assert grown == grow_with(TorchGeneration)  # exact: top two logits >= 9e-3 of the largest apart
    assert len(grown) == 9 and grown[: len(PROMPTS[0])] == PROMPTS[0]


def test_triton_generation_logits_match(device):
    triton_run, torch_run = started_generations(device, torch.float32)
    torch.testing.assert_close(triton_run.advance(PROMPTS[2], 0), torch_run.advance(PROMPTS[2], 0),
                               rtol=1e-4, atol=1e-5)
    start = len(PROMPTS[2])
    torch.testing.assert_close(triton_run.advance([7], start), torch_run.advance([7], start),
                               rtol=1e-4, atol=1e-5)


class EagerTritonEngine(TritonEngine):
    """The Triton engine with its graph capture declined: the driver calls it eagerly."""

    backend = "triton-eager"

    def capture_iteration(self, with_gram: bool, n_iterations: int) -> None:
        return None


def test_iteration_read_from_a_tensor_draws_that_iterations_weights(device, host_reads_forbidden):
    """Under --const-reset the graphed iteration takes its index as a device tensor that
    the GEMM kernels read when they run (never the host, which a graph replay would not
    re-run): iterations 1 and 2 computed that way (one tensor, rewritten in between, as the
    driver does between replays) equal the same iterations with the index passed by value."""
    stream = WeightStream(CFG, STATE, seed=3, random_init=False, const_reset=True, device=device,
                          dtype=torch.float32)
    by_value, from_tensor = TritonEngine(stream, PROMPTS, False), TritonEngine(stream, PROMPTS, False)
    shape = (len(PROMPTS), CFG.n_layer)
    gram_shape = (*shape, by_value.length, by_value.length)
    index = torch.zeros(1, dtype=torch.int64, device=device)
    for iteration in range(3):
        want_err, want_gram = torch.empty(*shape, 2), torch.empty(gram_shape)
        err, gram = torch.empty(*shape, 2), torch.empty(gram_shape)
        by_value.iteration(iteration, want_err, want_gram)
        index.fill_(iteration)
        if iteration == 0:
            from_tensor.iteration(iteration, err, gram)
        else:
            with host_reads_forbidden():
                from_tensor.iteration(index, err, gram)
        # Not bit for bit: on a GPU the autotuner tunes the GEMMs that read the step from memory
        # apart from those passed it, and another config may reduce the LayerNorm in another
        # order. Another iteration's weights would move err by far more than 1e-5.
        torch.testing.assert_close(err, want_err, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gram, want_gram, rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(from_tensor.x, by_value.x, rtol=1e-5, atol=1e-5)


def test_iteration_index_from_a_tensor_needs_const_reset(device):
    stream = WeightStream(CFG, STATE, seed=3, random_init=True, const_reset=False, device=device,
                          dtype=torch.float32)
    engine = TritonEngine(stream, PROMPTS, False)
    err = torch.empty(len(PROMPTS), CFG.n_layer, 2)
    with pytest.raises(ValueError, match="an iteration index read at run time is for --const-reset runs only"):
        engine.iteration(torch.ones(1, dtype=torch.int64, device=device), err, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("random_init, const_reset", [(False, False), (False, True), (True, True)])
def test_triton_cuda_graph_replays_the_eager_iteration(random_init, const_reset, tmp_path):
    """On a GPU the driver replays a captured CUDA graph of the Triton iteration: the same
    kernels in the same order as the eager calls, so the same numbers; over 4 iterations
    both also match the torch backend on the same GPU. Under --const-reset iteration 0 runs
    eagerly and the graph, reading the iteration from device memory, the rest. One iteration
    per staging slot, so the eager iteration fills a slot of its own and the graph's are
    handed over one by one."""
    flags = ConsensusFlags(iterations=4, random_init=random_init, const_reset=const_reset, seed=2,
                           decode_iterations=(0, 3))
    cuda = torch.device("cuda")
    stream = WeightStream(CFG, STATE, seed=2, random_init=random_init, const_reset=const_reset, device=cuda,
                          dtype=torch.float32)
    captured = TritonEngine(stream, PROMPTS, False).capture_iteration(True, flags.iterations)
    assert captured is not None and captured.first_iteration == int(const_reset)
    graphed = run(TritonEngine, flags, tmp_path, cuda, chunk=1)
    assert_same_run(graphed, run(EagerTritonEngine, flags, tmp_path, cuda), rtol=1e-6, atol=1e-7)
    assert_same_run(graphed, run(TorchEngine, flags, tmp_path, cuda), rtol=1e-4, atol=1e-5)


def test_float32_products_are_tf32x3_only_on_confirmed_gpus(monkeypatch):
    """The Triton backend multiplies float32 as tf32x3 only on a GPU in TF32X3_CONFIRMED; the
    metadata's ``products`` says what each run used."""
    from gpt2fast import backends

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert [backends.products(backend, device, "fp32") for backend in ("torch", "triton")
            for device in (cpu, cuda)] == ["ieee"] * 4
    monkeypatch.setattr(backends, "TF32X3_CONFIRMED", frozenset({(9, 0)}))
    assert backends.products("triton", cuda, "fp32") == backends.triton_precision(cuda, "fp32") == "tf32x3"
    assert backends.products("triton", cpu, "fp32") == backends.products("torch", cuda, "fp32") == "ieee"
    assert [backends.products("triton", cuda, dtype) for dtype in ("tf32", "bf16")] == ["tf32", "bf16"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    assert backends.triton_precision(cuda, "fp32") == "ieee"


def test_more_rows_than_one_gemm_tile(tmp_path, device):
    """70 rows (ten ragged prompts): the skinny GEMMs run several 64-row tiles, each with its
    own split-K tickets and LayerNorm statistics rows."""
    prompts = [[(7 * p + t) % 500 + 1 for t in range(1 + p % 7)] for p in range(10)] + [[3] * 7]
    flags = ConsensusFlags(iterations=1, noff=False, random_init=False, const_reset=False, seed=0,
                           decode_iterations=())
    stream = WeightStream(CFG, STATE, seed=0, random_init=False, const_reset=False, device=device,
                          dtype=torch.float32)
    engines = [TritonEngine(stream, prompts, False), TorchEngine(stream, prompts, False)]
    assert engines[0].tokens.numel() > 64
    results = []
    for engine in engines:
        drive(engine, flags.iterations, tmp_path / f"{engine.backend}-e.npy", tmp_path / f"{engine.backend}-g.npy")
        results.append((np.load(tmp_path / f"{engine.backend}-e.npy"), np.load(tmp_path / f"{engine.backend}-g.npy")))
    (err, gram), (want_err, want_gram) = results
    np.testing.assert_allclose(err, want_err, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gram, want_gram, rtol=1e-4, atol=1e-5)
    assert np.array_equal(np.isnan(gram), np.isnan(want_gram))
