"""Linear layers for few rows on the CPU: weights packed into 16-column panels, computed by
the AVX-512 kernel of ``gpt2fast._panel_linear`` (csrc/panel_linear_avx512.cpp).

A consensus iteration on one short prompt multiplies few rows (M = P·T) by every weight
once, so it streams the weights from memory; oneDNN overlaps that stream with its FMAs
poorly at small M, the panel kernel well (bench/RESULTS.md). float32 only; the sums run in
another order than ``F.linear``'s, so results agree with it to float32 rounding.
"""

from __future__ import annotations

import torch

from .. import _panel_linear

PANEL_WIDTH = _panel_linear.PANEL_WIDTH


def available() -> bool:
    """Whether the kernel is built in and this CPU runs AVX-512F."""
    return _panel_linear.supported()


def pack_panels(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight [N, K] float32 as panels [ceil(N/16), K, 16]: panel j holds output
    columns 16j..16j+15 for every k, zero past N."""
    out_features, in_features = weight.shape
    n_panels = -(-out_features // PANEL_WIDTH)
    padded = weight.new_zeros(n_panels * PANEL_WIDTH, in_features)
    padded[:out_features] = weight
    return padded.view(n_panels, PANEL_WIDTH, in_features).transpose(1, 2).contiguous()


def panel_linear(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor,
                 residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """``x @ Wᵀ + bias``, then GPT-2's GELU (tanh approximation) if ``gelu``, then
    ``residual +`` it, for x [..., K] float32 on the CPU, with W given as ``pack_panels(W)``
    and N read from bias [N]; returns [..., N] float32.

    The kernel's GELU is its own (x / (1 + e^(-2u)), e^ to about 2 ulp), within a few float32
    ulp of ``F.gelu(approximate="tanh")``, and about 20x faster than it on the CPU."""
    in_features = panels.shape[1]
    out_features = bias.shape[0]
    if x.shape[-1] != in_features or panels.shape[0] != -(-out_features // PANEL_WIDTH):
        raise ValueError(f"panel linear: x {tuple(x.shape)}, panels {tuple(panels.shape)} and "
                         f"bias {tuple(bias.shape)} do not fit together")
    tensors = (x, panels, bias) if residual is None else (x, panels, bias, residual)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        raise ValueError("panel linear: every tensor must be float32 on the CPU")
    # Contiguous copies where needed, held in locals so they outlive the call.
    rows, panels, bias = x.reshape(-1, in_features).contiguous(), panels.contiguous(), bias.contiguous()
    if residual is not None:
        residual = residual.reshape(rows.shape[0], out_features).contiguous()
    y = torch.empty(rows.shape[0], out_features)
    _panel_linear.linear(rows.data_ptr(), rows.shape[0], in_features, panels.data_ptr(), bias.data_ptr(),
                         out_features, gelu, 0 if residual is None else residual.data_ptr(), y.data_ptr())
    return y.view(*x.shape[:-1], out_features)


class PanelLinears:
    """``model.DenseLinears`` on weights packed by ``pack_panels``."""

    @staticmethod
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return panel_linear(x, weight, bias)

    @staticmethod
    def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return panel_linear(x, weight, bias, gelu=True)

    @staticmethod
    def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return panel_linear(x, weight, bias, residual)


PANELS = PanelLinears()
