"""Linear layers for few rows on the CPU: weights packed into 16-column panels, computed by
a kernel of ``gpt2fast._panel_linear`` (csrc/panel_linear_tiles.h), in the variant for this
CPU's vector ISA: ``avx512`` (AVX-512F) or else ``avx2`` (AVX2 + FMA).

A consensus iteration on one short prompt multiplies few rows (M = P·T) by every weight
once, so it streams the weights from memory; oneDNN overlaps that stream with its FMAs
poorly at small M, the panel kernel well (bench/RESULTS.md). float32 only; the sums run in
another order than ``F.linear``'s, so results agree with it to float32 rounding. Every
variant reads the same panels; ``GPT2FAST_PANEL_KERNEL=avx512|avx2|off`` forces one (tests,
benchmarks), and ``kernel_variant()`` says which one runs. Reference:
``panel_linear_reference`` (the unpacked weight, float64).
"""

from __future__ import annotations

import functools
import os

import torch

from .. import _panel_linear, _weight_prep
from ..errors import InputError

PANEL_WIDTH = _panel_linear.PANEL_WIDTH
VARIANT_ENV = "GPT2FAST_PANEL_KERNEL"
OFF = "off"


@functools.cache
def runnable_variants() -> tuple[str, ...]:
    """The variants this build has and this CPU runs, fastest first (fixed for the process,
    asked once: ``kernel_variant`` runs before every GEMM)."""
    return tuple(_panel_linear.variants())


def kernel_variant() -> str | None:
    """The variant the panel kernel runs (``avx512`` or ``avx2``), or None where none can:
    the fastest this build has and this CPU runs, unless ``GPT2FAST_PANEL_KERNEL`` names
    one (``off``: none). Raises InputError when it names a variant this build or CPU lacks."""
    runnable = runnable_variants()
    forced = os.environ.get(VARIANT_ENV, "").strip().lower()
    if not forced:
        return runnable[0] if runnable else None
    if forced == OFF:
        return None
    if forced not in runnable:
        choices = ", ".join([*runnable, OFF])
        raise InputError(f"{VARIANT_ENV}={forced}: this build and CPU run only {choices}")
    return forced


def available() -> bool:
    """Whether a panel-kernel variant runs here (``kernel_variant()`` is not None)."""
    return kernel_variant() is not None


def pack_panels(weight: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """A Linear weight [N, K] float32 on the CPU as panels [ceil(N/16), K, 16]: panel j holds
    output columns 16j..16j+15 for every k, zero past N (csrc/pack_panels.h). in_place: the
    panels overwrite ``weight``'s memory where N is a multiple of 16 and ``weight`` is
    contiguous (it no longer holds the weight then); otherwise, and by default, a new tensor."""
    if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise ValueError(f"pack_panels: a 2-D float32 CPU weight, got {weight.dtype} {tuple(weight.shape)} "
                         f"on {weight.device}")
    out_features, in_features = weight.shape
    n_panels = -(-out_features // PANEL_WIDTH)
    source = weight.contiguous()
    if in_place and source is weight and out_features % PANEL_WIDTH == 0:
        panels = weight.view(n_panels, in_features, PANEL_WIDTH)
    else:
        panels = torch.empty(n_panels, in_features, PANEL_WIDTH, dtype=torch.float32)
    _weight_prep.pack_panels(source.data_ptr(), out_features, in_features, panels.data_ptr())
    return panels


def check_operands(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor,
                   residual: torch.Tensor | None) -> None:
    """Raise ValueError unless the operands fit ``panel_linear``: the kernel trusts them."""
    tensors = (x, panels, bias) if residual is None else (x, panels, bias, residual)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        raise ValueError("panel linear: every tensor must be float32 on the CPU")
    fits = (x.dim() >= 1 and bias.dim() == 1 and panels.dim() == 3 and panels.shape[2] == PANEL_WIDTH
            and x.shape[-1] == panels.shape[1] and panels.shape[0] == -(-bias.shape[0] // PANEL_WIDTH)
            and (residual is None or residual.shape == (*x.shape[:-1], bias.shape[0])))
    if not fits:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in
                           (("x", x), ("panels", panels), ("bias", bias), ("residual", residual)) if t is not None)
        raise ValueError(f"panel linear: {shapes} do not fit together")


def panel_linear(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor,
                 residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """``x @ Wᵀ + bias``, then GPT-2's GELU (tanh approximation) if ``gelu``, then
    ``residual +`` it, for x [..., K] float32 on the CPU, with W given as ``pack_panels(W)``
    [ceil(N/16), K, 16] and N read from bias [N]; residual [..., N]; returns [..., N]
    float32. Runs on ``torch.get_num_threads()`` threads, by ``kernel_variant()``.

    The kernel's GELU is its own (x / (1 + e^(-2u)), e^ to about 2 ulp): within 1 float32
    ulp of the exact function for x >= 0, and within 4 + 3|2u| ulp below (the float32
    rounding of u), where float32 ``F.gelu(approximate="tanh")`` loses more to cancellation;
    it saves about 0.8 ms per gpt2 iteration against ``F.gelu`` after the GEMM
    (bench/RESULTS.md)."""
    check_operands(x, panels, bias, residual)
    variant = kernel_variant()
    if variant is None:
        raise ValueError("panel linear: no kernel variant runs here (see panel_linear.kernel_variant)")
    in_features, out_features = panels.shape[1], bias.shape[0]
    # Contiguous copies where needed, held in locals so they outlive the call.
    rows, panels, bias = x.reshape(-1, in_features).contiguous(), panels.contiguous(), bias.contiguous()
    if residual is not None:
        residual = residual.reshape(rows.shape[0], out_features).contiguous()
    y = torch.empty(rows.shape[0], out_features, dtype=torch.float32, device="cpu")
    _panel_linear.linear(rows.data_ptr(), rows.shape[0], in_features, panels.data_ptr(), bias.data_ptr(),
                         out_features, gelu, 0 if residual is None else residual.data_ptr(), y.data_ptr(),
                         torch.get_num_threads(), variant)
    return y.view(*x.shape[:-1], out_features)


def panel_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """What ``panel_linear(x, pack_panels(weight), bias, residual, gelu)`` computes, in
    float64 from the unpacked weight [N, K]: ``residual + GELU(x @ Wᵀ + bias)``, GELU (tanh
    approximation) as 0.5·v·(1 + tanh u) = v / (1 + e^(-2u)), which does not cancel for
    v < 0 as ``F.gelu`` does."""
    y = x.double() @ weight.double().T + bias.double()
    if gelu:
        y = y / (1 + torch.exp(-2 * 0.7978845608028654 * (y + 0.044715 * y**3)))
    return y if residual is None else residual.double() + y
