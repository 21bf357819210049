"""Backends that run consensus iterations behind one interface (``engine.Engine``):
``torch`` (PyTorch ops, any device) and ``triton`` (fused Triton kernels, CUDA)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..config import ModelConfig
from ..errors import InputError
from ..kernels.panel_linear import kernel_variant
from ..weight_stream import WeightStream

BACKENDS = ("auto", "torch", "triton")
# The Triton kernels' float32 product precision per --dtype. bf16 operands are multiplied as
# TF32 whatever this says (exact for bf16 values); "ieee" keeps the metrics' Gram exact.
TRITON_PRECISION = {"fp32": "ieee", "tf32": "tf32", "bf16": "ieee"}
# GPUs (compute capability) on which tf32x3 products were measured as accurate as IEEE float32
# (tests/kernels/test_skinny_linear.py::test_tf32x3_is_as_accurate_as_ieee_on_a_gpu passing on
# that card): there the Triton backend multiplies float32 as tf32x3, float32's accuracy at the
# tensor cores' rate; elsewhere as IEEE FMAs. None yet: no GPU has run the test.
TF32X3_CONFIRMED: frozenset[tuple[int, int]] = frozenset()
# The dtypes ``auto`` may run on Triton. bf16 on Triton is opt-in (--backend triton): it has
# run under the interpreter and compiled ahead of time, but not yet on a GPU.
AUTO_TRITON_DTYPES = ("fp32", "tf32")
# Milliseconds per iteration measured per GPU (compute capability) for each backend as the
# code stands: gpt2-xl, the default 27-token prompt, fp32 (bench/RESULTS.md). ``auto`` runs
# Triton only where it was measured faster than torch; a backend changed since its measurement
# leaves this table until it is measured again.
MEASURED_MS: dict[tuple[int, int], dict[str, float]] = {
    # H200, torch 2.11, 2026-11-26; the Triton engine measured then (23.0 ms) has been replaced
    (9, 0): {"torch": 15.5},
}


def auto_backend(capability: tuple[int, int] | None, dtype: str,
                 measured: dict[tuple[int, int], dict[str, float]] = MEASURED_MS) -> str:
    """What ``--backend auto`` runs on a GPU of ``capability`` (None: no GPU): triton where it
    was measured faster than torch on that GPU (``measured``) for a dtype in
    AUTO_TRITON_DTYPES, else torch (measured faster, not measured, or no GPU)."""
    figures = measured.get(capability, {}) if capability is not None else {}
    if dtype in AUTO_TRITON_DTYPES and "triton" in figures and figures["triton"] < figures.get("torch", float("inf")):
        return "triton"
    return "torch"


def resolve_backend(name: str, device: torch.device, dtype: str, label: Callable[[str], str]) -> str:
    """``auto`` -> ``auto_backend`` for this device; refuse triton where it cannot run, and a
    forced CPU panel-kernel variant this machine lacks (``kernels.panel_linear.kernel_variant``).
    ``label`` names the argument in refusals."""
    if device.type == "cpu":
        kernel_variant()
    if name == "auto":
        return auto_backend(torch.cuda.get_device_capability(device) if device.type == "cuda" else None, dtype)
    if name == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise InputError(f"{label('backend')} triton needs a CUDA GPU (or TRITON_INTERPRET=1, Triton's "
                             "slow CPU interpreter, for testing)")
    return name


def triton_precision(device: torch.device, dtype: str) -> str:
    """The Triton kernels' ``precision`` argument for a --dtype on ``device``: TRITON_PRECISION,
    with float32 as "tf32x3" on a GPU in TF32X3_CONFIRMED."""
    if dtype == "fp32" and device.type == "cuda" and torch.cuda.get_device_capability(device) in TF32X3_CONFIRMED:
        return "tf32x3"
    return TRITON_PRECISION[dtype]


def products(backend: str, device: torch.device, dtype: str) -> str:
    """The precision of a run's matrix products, as its metadata records it: "ieee" (float32
    FMAs), "tf32x3" (float32 accuracy from three TF32 products), "tf32" or "bf16"."""
    if dtype != "fp32":
        return dtype
    return triton_precision(device, dtype) if backend == "triton" else "ieee"


def batch_prompt_limit(backend: str, cfg: ModelConfig) -> int | None:
    """The most prompts one batch of ``backend`` may hold (None: no limit). On Triton the
    launch grids stay within ``kernels.checks.GRID_AXIS_LIMIT``: the metric's L·P·S programs
    (S <= ceil(TARGET_GRAM_PROGRAMS / (L·P)), so L·P + TARGET suffices) and attention's P·H."""
    if backend != "triton":
        return None
    from ..kernels.checks import GRID_AXIS_LIMIT
    from ..kernels.consensus_metric import TARGET_GRAM_PROGRAMS

    return min((GRID_AXIS_LIMIT - TARGET_GRAM_PROGRAMS) // cfg.n_layer, GRID_AXIS_LIMIT // cfg.n_head)


def make_engine(backend: str, stream: WeightStream, token_lists: list[list[int]], noff: bool, dtype: str):
    """The engine of a resolved backend name for these prompts."""
    if backend == "triton":
        from .triton_backend import TritonEngine

        return TritonEngine(stream, token_lists, noff, triton_precision(stream.wte.device, dtype))
    from .torch_backend import TorchEngine

    return TorchEngine(stream, token_lists, noff)


def make_generation(backend: str, stream: WeightStream, noff: bool, iterations: int, dtype: str):
    """Generation's cached forward pass for a resolved backend name."""
    if backend == "triton":
        from .triton_backend import TritonGeneration

        return TritonGeneration(stream, noff, iterations, triton_precision(stream.wte.device, dtype))
    from .torch_backend import TorchGeneration

    return TorchGeneration(stream, noff, iterations)
