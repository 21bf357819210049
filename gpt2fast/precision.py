"""Arithmetic modes: ``fp32`` (default, the original's), and the opt-in ``tf32`` and ``bf16``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

DTYPES = ("fp32", "tf32", "bf16")


def storage_dtype(name: str) -> torch.dtype:
    """The dtype weights and activations are held in: bfloat16 for ``bf16``, else float32."""
    return torch.bfloat16 if name == "bf16" else torch.float32


@contextmanager
def matmul_precision(name: str) -> Iterator[None]:
    """Allow TF32 tensor-core matmuls inside the block for ``tf32``; plain IEEE fp32 otherwise."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
