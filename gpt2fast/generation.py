"""Text generation (``--use-model``) with a key/value cache per (iteration, layer) step.

The original grew a sequence one token at a time and recomputed the whole N-iteration
forward pass for every new token. Causal attention makes that wasteful: the keys and
values a position produces at step u (iteration i, layer l) never change once computed,
because they depend only on earlier positions and on step u's weights (a redraw is a
pure function of the seed and the step). So each step keeps a cache of keys and of values
for M positions, the prompt fills it once, and every new token runs the N·L steps on one
row. The backends hold the caches and run the steps; this module holds the growth loop and
the original's sampling rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .interrupts import StopRequest


def sample_top_k(
    logits: torch.Tensor, top_k: int, temperature: float, generator: torch.Generator
) -> int:
    """The original's rule: softmax(logits / temperature), keep the ``top_k`` most likely,
    sample among them. logits [V] any float dtype; sampling runs in float32 on the CPU. A
    temperature so small that logits / temperature is not finite in float32 takes the limit of
    the softmax as the temperature goes to 0: the most likely tokens share all probability."""
    logits = logits.float().cpu()
    scaled = logits / temperature
    if not torch.isfinite(scaled).all():
        scaled = torch.where(logits == logits.max(), 0.0, float("-inf"))
    probs = F.softmax(scaled, dim=-1)
    top_probs, top_ids = torch.topk(probs, top_k, dim=-1)
    choice = torch.multinomial(top_probs, 1, generator=generator)
    return int(top_ids[choice])


@torch.no_grad()
def grow(
    runner,
    tokens: list[int],
    *,
    max_length: int,
    top_k: int,
    temperature: float,
    generator: torch.Generator,
    on_token: Callable[[], None] = lambda: None,
    stop: StopRequest | None = None,
) -> list[int]:
    """Grow ``tokens`` until it holds ``max_length`` ids; return its first ``max_length``.

    runner: a backend's cached forward pass (``TorchGeneration`` or ``TritonGeneration``):
    ``runner.start(capacity)`` makes empty caches, ``runner.advance(ids, start)`` runs the
    N·L steps over the new ids at positions start.. and returns the last row's logits [V].
    on_token() is called after each new token; a requested ``stop`` ends growth early.
    """
    tokens = list(tokens)
    if len(tokens) >= max_length:
        return tokens[:max_length]
    runner.start(max_length)
    logits = runner.advance(tokens, 0)
    while True:
        tokens.append(sample_top_k(logits, top_k, temperature, generator))
        on_token()
        if len(tokens) >= max_length or (stop is not None and stop.requested):
            return tokens
        logits = runner.advance(tokens[-1:], len(tokens) - 1)
