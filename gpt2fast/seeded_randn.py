"""``torch.randn`` of many tensors in turn from one seeded CPU generator, on several threads,
with the bits of the serial loop

    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=generator, dtype=torch.float32) for shape in shapes]

which spends about 3 ns per element in PyTorch's MT19937, on one thread. A tensor's values
depend only on the generator's state when it starts, and that state is the seeded one after
a known number of 32-bit draws: PyTorch's CPU normal takes one per element of a float32
tensor of 16 elements or more, and 16 more when the count is not a multiple of 16 (it redraws
the last 16; ``randn_draws``). ``_weight_prep.mt19937_after`` computes that state (about
0.2 ns per skipped draw, csrc/mt19937.h) and ``positioned_generator`` loads it into a
``torch.Generator``; each thread then draws a run of consecutive tensors with PyTorch's own
kernel, so PyTorch still computes every value (its Box-Muller, vectorised or not), into
memory whose pages are made present in one call first (``_weight_prep.populate``: cheaper
than a fault per page, which on a virtual machine costs about as much as the drawing).

The generator state's layout (PyTorch's ``CPUGeneratorImplState``) is checked once per
process against a generator that really drew (``positioning_works``). Where it differs, or a
tensor has fewer than 16 elements (PyTorch then draws them another way, through a cached
value), every tensor is drawn serially.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import _weight_prep

SMALLEST_VECTOR_DRAW = 16  # fewer elements take PyTorch's serial, cached-value path
# CPUGeneratorImplState: legacy_pod {uint64 the_initial_seed; int32 left; int32 seeded;
# uint64 next; uint64 state[624]; double normal_x, normal_y, normal_rho; int32
# normal_is_valid}; float next_float_normal_sample; bool its valid flag. Byte offsets:
STATE_BYTES = 5056
LEFT_AT, NEXT_AT, WORDS_AT = 8, 16, 24


def randn_draws(numel: int) -> int | None:
    """32-bit draws ``torch.randn`` takes for a float32 CPU tensor of ``numel`` elements, or
    None below 16 elements (drawn through a cached value: not a fixed count)."""
    if numel < SMALLEST_VECTOR_DRAW:
        return None
    return numel + (SMALLEST_VECTOR_DRAW if numel % SMALLEST_VECTOR_DRAW else 0)


def positioned_generator(seed: int, draws: int) -> torch.Generator:
    """A CPU generator in the state of ``torch.Generator().manual_seed(seed)`` after
    ``draws`` 32-bit draws (none of them cached). Raises ValueError where this PyTorch's
    generator state has another size."""
    generator = torch.Generator().manual_seed(seed)
    if draws == 0:
        return generator
    state = generator.get_state()
    if state.numel() != STATE_BYTES:
        raise ValueError(f"generator state of {state.numel()} bytes, expected {STATE_BYTES}")
    left, next_word, words = _weight_prep.mt19937_after(seed, draws)
    raw = state.numpy()
    raw[LEFT_AT:LEFT_AT + 4] = np.array([left], dtype=np.int32).view(np.uint8)
    raw[NEXT_AT:NEXT_AT + 8] = np.array([next_word], dtype=np.uint64).view(np.uint8)
    as_words = np.frombuffer(words, dtype=np.uint32).astype(np.uint64)
    raw[WORDS_AT:WORDS_AT + as_words.nbytes] = as_words.view(np.uint8)
    return generator.set_state(state)


@functools.cache
def positioning_works() -> bool:
    """Whether positioned generators continue exactly where a drawing generator is, checked
    once: the same state bytes, and the same next values, after tensors of 16, 17, 1000,
    1249 and 1877 elements (multiples of 16 and not, within one regeneration and across)."""
    seed = 20260611
    drawing = torch.Generator().manual_seed(seed)
    drawn = 0
    try:
        for numel in (16, 17, 1000, 1249, 3 * _weight_prep.MT_WORDS + 5):
            torch.randn(numel, generator=drawing, dtype=torch.float32)
            drawn += randn_draws(numel)
            positioned = positioned_generator(seed, drawn)
            if not torch.equal(positioned.get_state(), drawing.get_state()):
                return False
            ahead = torch.Generator().set_state(drawing.get_state())
            following = [torch.randn(40, generator=g, dtype=torch.float32) for g in (positioned, ahead)]
            if not torch.equal(*following):
                return False
    except (RuntimeError, ValueError):
        return False
    return True


def runs(sizes: Sequence[int], count: int) -> list[range]:
    """Up to ``count`` runs of consecutive indices into ``sizes``, of about equal total size."""
    total, found, start, done = sum(sizes), [], 0, 0
    for index, size in enumerate(sizes):
        done += size
        if done * count >= total * (len(found) + 1) or index == len(sizes) - 1:
            found.append(range(start, index + 1))
            start = index + 1
    return found


def randn_in_turn(seed: int, shapes: Sequence[tuple[int, ...]], threads: int,
                  finish: Callable[[int, torch.Tensor], None] = lambda index, tensor: None) -> list[torch.Tensor]:
    """The tensors of the serial loop above, bit for bit, drawn on up to ``threads`` threads
    (serially where positioning cannot be used). ``finish(i, tensor)`` runs on the thread that
    drew tensor i, right after drawing it; it may change the tensor in place."""
    numels = [math.prod(shape) for shape in shapes]
    draws = [randn_draws(numel) for numel in numels]
    parallel = threads > 1 and None not in draws and positioning_works()
    starts = np.cumsum([0] + draws[:-1]).tolist() if parallel else [0]
    # Allocated here, so that no thread maps memory (which waits for the other's populate).
    tensors = [torch.empty(shape, dtype=torch.float32) for shape in shapes]

    def draw_run(indices: range) -> None:
        generator = positioned_generator(seed, starts[indices.start])
        for index in indices:
            tensor = tensors[index]
            _weight_prep.populate(tensor.data_ptr(), tensor.nbytes)
            torch.randn(shapes[index], generator=generator, dtype=torch.float32, out=tensor)
            finish(index, tensor)

    if not parallel:
        draw_run(range(len(shapes)))
        return tensors
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for finished in [pool.submit(draw_run, indices) for indices in runs(numels, threads)]:
            finished.result()
    return tensors
