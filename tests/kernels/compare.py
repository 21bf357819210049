"""Comparing a kernel's output with its float64 reference."""

from __future__ import annotations

import torch


def assert_relative_error(out: torch.Tensor, expected: torch.Tensor, bound: float) -> None:
    """‖out − expected‖₂ / ‖expected‖₂ ≤ bound, in float64 on the CPU, with NaN exactly
    where ``expected`` has NaN (a poisoned element left unwritten fails here).

    A normwise bound, not an elementwise one: on a GPU the summation order of a long dot
    product differs from the CPU's, so single elements near zero have large relative
    errors while the whole result is as accurate as float32 allows.
    """
    out, expected = out.detach().cpu().double(), expected.detach().cpu().double()
    assert out.shape == expected.shape, (out.shape, expected.shape)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan), f"{int((torch.isnan(out) != nan).sum())} NaN mismatches"
    difference = torch.linalg.vector_norm((out - expected)[~nan])
    scale = torch.linalg.vector_norm(expected[~nan])
    assert difference <= bound * scale, f"relative error {float(difference / scale):.3g} > {bound}"
