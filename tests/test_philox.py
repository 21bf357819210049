"""The PyTorch Philox4x32-10 and the counter-based normal generator built on it."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gpt2fast import philox
from gpt2fast.philox import MASK32, counter_normal, mix_key, philox4x32, splitmix64

# Random123's kat_vectors for philox4x32_10: counter (c0..c3), key (k0, k1), expected words.
# Triton's key is the 64-bit seed with k0 = low word, k1 = high word.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def philox_python(key: int, counter: tuple[int, int, int, int]) -> tuple[int, ...]:
    """Philox4x32-10 in plain Python integers (no wrapping anywhere), for cross-checks."""
    k0, k1 = key & MASK32, key >> 32
    c0, c1, c2, c3 = counter
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
    return c0, c1, c2, c3


@pytest.mark.parametrize("counter, key_words, expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key_words, expected):
    key = key_words[0] | key_words[1] << 32
    words = philox4x32(key, *(torch.tensor([c]) for c in counter))
    assert tuple(int(w) for w in words) == expected


def test_philox_matches_python_integers_on_random_inputs():
    rng = random.Random(0)
    keys = [rng.getrandbits(64) for _ in range(50)] + [2**64 - 1]
    for key in keys:
        counters = [tuple(rng.getrandbits(32) for _ in range(4)) for _ in range(20)]
        columns = [torch.tensor(column, dtype=torch.int64) for column in zip(*counters)]
        words = torch.stack(philox4x32(key, *columns), dim=1)
        assert words.tolist() == [list(philox_python(key, c)) for c in counters]


def test_philox_broadcasts_int_counters():
    c0 = torch.arange(5)
    mixed = philox4x32(99, c0, 7, 2**32 - 1, 3)
    full = philox4x32(99, c0, *(torch.full((5,), v) for v in (7, 2**32 - 1, 3)))
    for a, b in zip(mixed, full):
        assert torch.equal(a, b)


def normal_from_definition(key: int, stream: int, step: int, element: int) -> float:
    """value(element) computed in float64 from the Philox words, straight from the definition."""
    words = philox_python(key, (element // 4, stream, step & MASK32, step >> 32))
    signed = [w - 2**32 if w >= 2**31 else w for w in words]
    u = [(~x if x < 0 else x) * 4.6566127342e-10 for x in signed]
    pair = element % 4 // 2
    radius = math.sqrt(-2.0 * math.log(max(u[2 * pair], 1e-7)))
    angle = 2 * math.pi * u[2 * pair + 1]
    return radius * (math.cos(angle) if element % 2 == 0 else math.sin(angle))


def test_counter_normal_follows_the_definition():
    key, stream, step = 2**63 + 12345, 11, 2**33 + 5
    values = counter_normal(key, stream, step, 4 * 64 + 3)
    for element in range(values.numel()):
        expected = normal_from_definition(key, stream, step, element)
        assert values[element].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_counter_normal_is_deterministic_and_prefix_stable():
    """Bit for bit: each element comes from its own Philox words through elementwise float32
    operations, whatever the length (or, below, the chunking)."""
    a = counter_normal(1, 2, 3, 1001)
    assert torch.equal(a, counter_normal(1, 2, 3, 1001))
    assert torch.equal(a[:10], counter_normal(1, 2, 3, 10))


@pytest.mark.parametrize("other", [(2, 2, 3), (1, 3, 3), (1, 2, 4), (1, 2, 3 + 2**32), (1 + 2**32, 2, 3)])
def test_counter_normal_depends_on_key_stream_and_step(other):
    base = counter_normal(1, 2, 3, 4096)
    changed = counter_normal(*other, 4096)
    assert (base == changed).float().mean().item() < 0.01


def test_counter_normal_statistics():
    values = counter_normal(mix_key(2024), 0, 0, 1_000_000).double()
    n = values.numel()
    assert abs(values.mean().item()) < 5 / math.sqrt(n)
    assert abs(values.std().item() - 1) < 5 / math.sqrt(2 * n)
    tail = (values.abs() > 2).double().mean().item()
    p = math.erfc(2 / math.sqrt(2))
    assert abs(tail - p) < 5 * math.sqrt(p * (1 - p) / n)
    lanes = values.view(-1, 4)
    for i, j in ((0, 1), (0, 2), (1, 3), (2, 3)):
        corr = torch.corrcoef(torch.stack([lanes[:, i], lanes[:, j]]))[0, 1].item()
        assert abs(corr) < 5 / math.sqrt(lanes.shape[0])


def test_counter_normal_chunked_equals_unchunked(monkeypatch):
    whole = counter_normal(7, 1, 2**40, 4 * 1000 + 3)
    monkeypatch.setattr(philox, "CHUNK_GROUPS", 3)
    assert torch.equal(counter_normal(7, 1, 2**40, 4 * 1000 + 3), whole)


def test_counter_normal_shape_and_dtype():
    values = counter_normal(5, 6, 7, 10, dtype=torch.float64)
    assert values.shape == (10,) and values.dtype == torch.float64 and values.is_contiguous()
    assert torch.equal(values, counter_normal(5, 6, 7, 10).double())
    assert counter_normal(5, 6, 7, 0).shape == (0,)


@pytest.mark.parametrize(
    "args, message",
    [((-1, 0, 0, 4), "key must be in .*got -1"), ((2**64, 0, 0, 4), "key must be in .*got 18446744073709551616"),
     ((0, 2**32, 0, 4), "stream must be in .*got 4294967296"), ((0, 0, -1, 4), "step must be in .*got -1"),
     ((0, 0, 2**64, 4), "step must be in .*got 18446744073709551616"),
     ((0, 0, 0, 2**34 + 1), r"numel must be in \[0, 17179869185\), got 17179869185")]
)
def test_counter_normal_rejects_out_of_range_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        counter_normal(*args)


def test_splitmix64_known_answer():
    # First output of Vigna's splitmix64.c seeded with 0.
    assert splitmix64(0) == 0xE220A8397B1DCDAF


def test_mix_key_is_deterministic_and_sensitive_to_every_word():
    key = mix_key(1, 2, 3)
    assert key == mix_key(1, 2, 3) and 0 <= key < 2**64
    variants = [mix_key(0, 2, 3), mix_key(1, 0, 3), mix_key(1, 2, 0), mix_key(1, 3, 2), mix_key(1, 2),
                mix_key(1, 2, 3, 0), mix_key(1, 2, 3 + 2**40)]
    assert len({key, *variants}) == len(variants) + 1
