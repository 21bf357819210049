"""Drawing many tensors of one seeded generator on several threads: the serial loop's bits.

The reference is always the plain loop the module stands for; states are compared byte for
byte with a generator that really drew.
"""

from __future__ import annotations

import threading

import pytest
import torch

from gpt2fast import _weight_prep, seeded_randn
from gpt2fast.seeded_randn import positioned_generator, randn_draws, randn_in_turn

SEEDS = [0, 7, 2**32 + 5, 2**63 - 1]


def serial(seed: int, shapes) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float32) for shape in shapes]


def assert_same_bits(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # signed zeros too


@pytest.fixture
def fresh_check():
    """positioning_works as if not yet run in this process."""
    seeded_randn.positioning_works.cache_clear()
    yield
    seeded_randn.positioning_works.cache_clear()


def test_draw_counts():
    assert [randn_draws(n) for n in (1, 15, 16, 17, 31, 32, 1000, 1001)] == [None, None, 16, 33, 47, 32, 1016, 1017]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("numels", [[16], [17], [1000, 33, 624 * 3 + 1], [10**6 + 3, 48]])
def test_positioned_generator_is_where_the_drawing_one_is(seed, numels):
    drawing = torch.Generator().manual_seed(seed)
    drawn = 0
    for numel in numels:
        torch.randn(numel, generator=drawing)
        drawn += randn_draws(numel)
    positioned = positioned_generator(seed, drawn)
    assert torch.equal(positioned.get_state(), drawing.get_state())
    assert torch.equal(torch.randn(100, generator=positioned), torch.randn(100, generator=drawing))


def test_state_after_no_draw_is_the_seeded_one():
    assert torch.equal(positioned_generator(5, 0).get_state(), torch.Generator().manual_seed(5).get_state())
    left, next_word, words = _weight_prep.mt19937_after(5, 0)
    assert (left, next_word, len(words)) == (1, 0, 4 * _weight_prep.MT_WORDS)


SHAPES = [
    [(7, 5), (9, 5), (5, 7), (3, 3, 3), (16,), (2, 8)],              # odd sizes, one of exactly 16
    [(50257, 8), (64, 8), (24, 8), (8, 8), (32, 8), (8, 32)] * 2,    # a tiny GPT-2's order
    [(1001, 13), (17,), (640, 97), (33, 3)],
]


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_threads_draw_the_serial_bits(seed, shapes, threads):
    assert_same_bits(randn_in_turn(seed, shapes, threads), serial(seed, shapes))


def test_finish_runs_once_per_tensor_on_the_thread_that_drew_it(monkeypatch):
    shapes = [(200_000,)] * 6
    seen: dict[int, int] = {}
    drew: dict[int, int] = {}
    draw = torch.randn
    # Each run's first draw waits for the other run's: the two runs must be drawn at once
    # (a pool that ran them one after the other would break the barrier after 10 s).
    both_started = threading.Barrier(2, timeout=10)
    waited: set[int] = set()

    def spy_randn(shape, generator, dtype, out):
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            both_started.wait()
        tensor = draw(shape, generator=generator, dtype=dtype, out=out)
        drew[id(tensor)] = threading.get_ident()
        return tensor

    def finish(index, tensor):
        assert drew[id(tensor)] == threading.get_ident()
        seen[index] = seen.get(index, 0) + 1
        threads.add(threading.get_ident())
        tensor.mul_(2)

    threads: set[int] = set()
    seeded_randn.positioning_works()
    monkeypatch.setattr(seeded_randn.torch, "randn", spy_randn)
    got = randn_in_turn(3, shapes, 2, finish)
    assert seen == dict.fromkeys(range(6), 1) and len(threads) == 2
    monkeypatch.undo()
    assert_same_bits(got, [t * 2 for t in serial(3, shapes)])


def test_small_tensors_are_drawn_serially(monkeypatch):
    """Fewer than 16 elements take PyTorch's cached-value path: no positioning then."""
    shapes = [(40, 4), (3, 5), (40, 4), (2,), (100,)]
    monkeypatch.setattr(seeded_randn, "positioned_generator", counting(seeded_randn.positioned_generator))
    assert_same_bits(randn_in_turn(1, shapes, 2), serial(1, shapes))
    assert seeded_randn.positioned_generator.calls == [(1, 0)]


def counting(function):
    def counted(*args):
        counted.calls.append(args)
        return function(*args)

    counted.calls = []
    return counted


def test_the_self_check_passes_here(fresh_check):
    assert seeded_randn.positioning_works()


@pytest.mark.parametrize("broken", [("WORDS_AT", 32), ("LEFT_AT", 12), ("NEXT_AT", 8), ("STATE_BYTES", 5048)])
def test_a_wrong_layout_fails_the_self_check_and_draws_serially(monkeypatch, fresh_check, broken):
    monkeypatch.setattr(seeded_randn, *broken)
    assert not seeded_randn.positioning_works()
    shapes = SHAPES[2]
    calls = counting(seeded_randn.positioned_generator)
    monkeypatch.setattr(seeded_randn, "positioned_generator", calls)
    assert_same_bits(randn_in_turn(4, shapes, 2), serial(4, shapes))
    assert calls.calls == [(4, 0)]


def test_a_wrong_jump_fails_the_self_check(monkeypatch, fresh_check):
    def one_draw_short(seed, draws):
        return _weight_prep.mt19937_after(seed, draws - 1)

    monkeypatch.setattr(seeded_randn._weight_prep, "mt19937_after", one_draw_short)
    assert not seeded_randn.positioning_works()


@pytest.mark.parametrize("sizes, count", [([5, 5, 5, 5], 2), ([100, 1, 1, 1], 2), ([1, 1, 1], 8), ([3], 2),
                                          ([4, 9, 2, 7, 7, 1], 3)])
def test_runs_are_consecutive_and_cover_every_index(sizes, count):
    runs = seeded_randn.runs(sizes, count)
    assert 1 <= len(runs) <= count and runs[0].start == 0 and runs[-1].stop == len(sizes)
    assert all(a.stop == b.start and len(a) > 0 for a, b in zip(runs, runs[1:]))
