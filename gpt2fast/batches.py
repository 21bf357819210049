"""Prompts in batches that fit a device: more prompts than one batch holds run one batch
after another, each writing its rows of the same files.

A batch fits when its memory floor (``memory.consensus_memory``: the tensors that certainly
exist at once, at most the real peak and within 2x of it) is within the budget on each of
its places (host, device). Prompts that all fit run as one batch in their given order;
otherwise they go longest first, each batch filled while the next prompt still fits (so the
prompts of a batch have similar lengths and little padding). A backend may also bound the
prompts per batch (Triton: its launch grids).
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import InputError
from .outputs import format_bytes

Needs = Callable[[list[int]], dict[str, int]]  # token lengths of a batch -> bytes per place


def plan_batches(indices: list[int], lengths: list[int], needs: Needs, budget: dict[str, int],
                 max_prompts: int | None = None) -> list[list[int]]:
    """``indices`` (prompts of lengths[i]) split into batches whose ``needs`` are within
    ``budget`` per place, of at most ``max_prompts`` prompts each (the backend's
    ``batch_prompt_limit``). InputError when one prompt alone does not fit."""
    def fits(batch: list[int]) -> bool:
        if max_prompts is not None and len(batch) > max_prompts:
            return False
        return all(count <= budget[place] for place, count in needs([lengths[i] for i in batch]).items())

    if not indices or fits(indices):
        return [list(indices)] if indices else []
    batches: list[list[int]] = []
    for index in sorted(indices, key=lambda i: (-lengths[i], i)):
        if batches and fits(batches[-1] + [index]):
            batches[-1].append(index)
            continue
        if not fits([index]):
            needed = needs([lengths[index]])
            place = next(place for place, count in needed.items() if count > budget[place])
            raise InputError(f"refusing to start: one prompt of {lengths[index]} tokens needs at least "
                             f"{format_bytes(needed[place])} of {place} memory on this model, and "
                             f"{format_bytes(budget[place])} is available for it; run a shorter prompt, "
                             f"without err2 where it is recorded, or with a larger memory budget")
        batches.append([index])
    return batches
