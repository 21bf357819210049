"""Programmatic dependent launch (PDL, sm_90 and later): a kernel launched with it may start
while the kernel before it in the stream drains, once every program of that kernel has
called ``gdc_launch_dependents`` (or exited).

A kernel written for it takes a ``PDL: tl.constexpr``; when true it does only work that
depends on nothing the previous kernel writes or reads (address arithmetic, L2 prefetches of
weights), calls ``gdc_launch_dependents()`` and then ``gdc_wait()``, which returns once the
previous kernel has finished and its writes are visible, before any other memory access. A
chain of such kernels therefore keeps stream order; a kernel launched without PDL waits for
the whole previous kernel as usual. Inside a CUDA graph the launches become programmatic
edges. Not on the interpreter or before sm_90 (``pdl``: False there).
"""

from __future__ import annotations

import functools

import torch

ENABLED = True  # a switch for A/B measurements (bench/gpu_session.sh)


@functools.cache
def _capability(device: torch.device) -> int:
    return torch.cuda.get_device_capability(device)[0]


def pdl(device: torch.device) -> bool:
    """Whether launches on ``device`` use programmatic dependent launch."""
    return ENABLED and device.type == "cuda" and _capability(device) >= 9


def launch_options(device: torch.device) -> dict:
    """The launch keyword of a PDL kernel on ``device`` (nothing without PDL)."""
    return {"launch_pdl": True} if pdl(device) else {}
