"""Which backend a run gets: ``--backend auto`` from the figures measured per GPU."""

from __future__ import annotations

import pytest
import torch

from gpt2fast.backends import auto_backend, resolve_backend
from gpt2fast.validation import parameter

H200 = (9, 0)


@pytest.mark.parametrize("figures,dtype,want", [
    ({"torch": 15.5, "triton": 2.2}, "fp32", "triton"),   # measured faster
    ({"torch": 15.5, "triton": 2.2}, "tf32", "triton"),
    ({"torch": 15.5, "triton": 2.2}, "bf16", "torch"),    # bf16 on Triton stays opt-in
    ({"torch": 15.5, "triton": 23.0}, "fp32", "torch"),   # measured slower
    ({"torch": 15.5}, "fp32", "torch"),                   # Triton not measured on this GPU
    ({"triton": 2.2}, "fp32", "triton"),                  # torch not measured: Triton's figure stands
    ({}, "fp32", "torch"),
])
def test_auto_runs_triton_only_where_it_was_measured_faster(figures, dtype, want):
    assert auto_backend(H200, dtype, {H200: figures}) == want
    assert auto_backend((8, 0), dtype, {H200: figures}) == "torch"  # another GPU: nothing measured there


def test_auto_is_torch_without_a_gpu():
    assert auto_backend(None, "fp32", {H200: {"triton": 1.0}}) == "torch"
    assert resolve_backend("auto", torch.device("cpu"), "fp32", parameter) == "torch"
