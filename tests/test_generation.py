"""Generation with the key/value cache against the reference that recomputes everything."""

from __future__ import annotations

import pytest
import torch

import gpt2fast
from conftest import TINY_SEED
from gpt2fast import reference
from gpt2fast.api import prompt_seed
from gpt2fast.backends.torch_backend import TorchGeneration
from gpt2fast.generation import grow, sample_top_k
from gpt2fast.memory import cache_bytes
from gpt2fast.model import block, cached_block, embed
from gpt2fast.weight_stream import WeightStream
from tiny_models import tiny_config, tiny_state

CFG = tiny_config()
STATE = tiny_state(CFG, seed=5)
PROMPT = [464, 2068, 7586, 21831, 18045]


def stream_for(random_init=False, const_reset=False, seed=0):
    return WeightStream(CFG, STATE, seed=seed, random_init=random_init, const_reset=const_reset,
                        device=torch.device("cpu"), dtype=torch.float32)


def test_cached_blocks_equal_recomputing_the_whole_sequence():
    stream = stream_for()
    tokens = torch.tensor([PROMPT + [318, 257, 1332]])
    steps = 3 * CFG.n_layer
    full = embed(tokens, stream.wte, stream.wpe)
    for step in range(steps):
        full = block(full, stream.block(step), CFG.n_head, noff=False)
    shape = (steps, 1, CFG.n_head, tokens.shape[1], CFG.head_dim)
    cache_k, cache_v = torch.empty(shape), torch.empty(shape)
    rows = []
    x = embed(tokens[:, : len(PROMPT)], stream.wte, stream.wpe)
    for step in range(steps):
        x = cached_block(x, stream.block(step), CFG.n_head, False, cache_k[step], cache_v[step], 0)
    rows.append(x)
    for position in range(len(PROMPT), tokens.shape[1]):
        x = embed(tokens[:, position : position + 1], stream.wte, stream.wpe, position)
        for step in range(steps):
            x = cached_block(x, stream.block(step), CFG.n_head, False, cache_k[step], cache_v[step], position)
        rows.append(x)
    torch.testing.assert_close(torch.cat(rows, dim=1), full, rtol=1e-4, atol=1e-5)


# Generated tokens are compared exactly with the reference's, which recomputes the whole
# sequence (other shapes, other summation orders): greedy steps' top two logits differ by at
# least 3e-3 of the largest, and no token changes when every logit moves by up to 1e-3 of it
# (tried), against float32 differences below 1e-6.
@pytest.mark.parametrize("iterations", [1, 2])
@pytest.mark.parametrize("noff,random_init,const_reset", [
    (False, False, False), (True, False, False), (False, True, False), (False, False, True),
])
def test_greedy_generation_matches_reference(iterations, noff, random_init, const_reset):
    length = 12
    expected = reference.generate(
        CFG, STATE, PROMPT, max_length=length, iterations=iterations, noff=noff,
        random_init=random_init, const_reset=const_reset, seed=4, top_k=1,
    )
    got = grow(
        TorchGeneration(stream_for(random_init, const_reset, seed=4), noff, iterations), PROMPT,
        max_length=length, top_k=1, temperature=1.0, generator=torch.Generator().manual_seed(4),
    )
    assert got == expected
    assert len(got) == length and got[: len(PROMPT)] == PROMPT


def test_sampled_generation_matches_reference_for_a_seed():
    expected = reference.generate(CFG, STATE, PROMPT, max_length=10, seed=9, top_k=10, temperature=1.5)
    got = grow(TorchGeneration(stream_for(), False, 1), PROMPT, max_length=10, top_k=10,
               temperature=1.5, generator=torch.Generator().manual_seed(9))
    assert got == expected


def test_prompt_at_or_over_the_length_is_truncated():
    assert grow(TorchGeneration(stream_for(), False, 1), PROMPT, max_length=3, top_k=10,
                temperature=1.0, generator=torch.Generator()) == PROMPT[:3]


def test_top_k_restricts_samples():
    logits = torch.arange(100, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    draws = {sample_top_k(logits, 3, 5.0, generator) for _ in range(200)}
    assert draws == {97, 98, 99}


def test_cache_size_formula():
    assert cache_bytes(n_layer=12, n_embd=768, iterations=1, max_length=50, element_size=4) == 2 * 12 * 50 * 768 * 4


def test_each_prompt_samples_from_its_own_seed(tiny_checkpoint):
    """A prompt's text depends on neither the other prompts nor their order (what lets ranks
    share them): prompt i samples as the reference does with ``prompt_seed(seed, i)``."""
    prompts = [PROMPT, [11, 12, 13]]
    result = gpt2fast.generate(prompts, weights=tiny_checkpoint, max_length=10, seed=9, backend="torch",
                               progress=False)
    state = tiny_state(CFG, TINY_SEED)  # the tiny checkpoint's
    for index, tokens in enumerate(prompts):
        assert result.tokens[index] == reference.generate(CFG, state, tokens, max_length=10,
                                                           seed=prompt_seed(9, index), top_k=10)
    assert prompt_seed(9, 0) == 9 and len({prompt_seed(9, 1), prompt_seed(9, 2), prompt_seed(10, 1)}) == 3
    alone = gpt2fast.generate([prompts[1]], weights=tiny_checkpoint, max_length=10, seed=prompt_seed(9, 1),
                              backend="torch", progress=False)
    assert alone.tokens[0] == result.tokens[1]
