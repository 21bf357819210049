"""What the kernel launchers accept, checked in one place before any launch: the storage
dtypes, the float32 product precisions, and the tensor checks they share. Every failed
check is a ``ValueError`` that names the argument.

Storage: float32 or bfloat16 (``STORAGE_DTYPES``); every kernel accumulates in float32.
Product precisions for float32 operands (``PRECISIONS``, ``tl.dot``'s ``input_precision``):

    "ieee"    exact float32 products on the CUDA cores (the default: the original's arithmetic)
    "tf32x3"  each operand split into a TF32 high part and a TF32 remainder; three tensor-core
              products (hi·hi + hi·lo + lo·hi, the lo·lo term dropped, ~2⁻²² relative): float32's
              accuracy at the tensor cores' rate (``bench/precision_study.py`` measures it)
    "tf32"    one TF32 product (10-bit mantissas, 3e-4 to 8e-4 relative): ``--dtype tf32`` only

Triton's interpreter multiplies exactly in every mode, so the modes differ only on a GPU.

Launch grids: CUDA allows at most ``GRID_AXIS_LIMIT`` programs along a grid's second and
third axes (``check_grid_axis``); a run on the Triton backend keeps its batches within it.
"""

from __future__ import annotations

import torch

STORAGE_DTYPES = (torch.float32, torch.bfloat16)
PRECISIONS = ("ieee", "tf32x3", "tf32")
GRID_AXIS_LIMIT = 65535  # programs along a CUDA grid's y and z axes


def check_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_grid_axis(what: str, programs: int) -> None:
    """Raise ValueError unless ``programs`` (``what`` they are, in the message) fit a grid's
    second or third axis."""
    if programs > GRID_AXIS_LIMIT:
        raise ValueError(f"{what} = {programs} exceeds the {GRID_AXIS_LIMIT} programs a grid axis holds: "
                         f"run fewer prompts at once")


def check_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device) -> None:
    """Raise ValueError unless ``t`` is a contiguous ``dtype`` tensor of ``shape`` on ``device``."""
    if t.dtype != dtype or tuple(t.shape) != shape or t.device != device or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {dtype} tensor of shape {shape} on {device}, "
                         f"got {t.dtype} {tuple(t.shape)} on {t.device} (contiguous: {t.is_contiguous()})")


def check_one_device(names: str, *tensors: torch.Tensor) -> None:
    """Raise ValueError unless ``tensors`` (called ``names`` in the message) share a device."""
    if len({t.device for t in tensors}) > 1:
        raise ValueError(f"{names} must be on one device")


def overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory of contiguous tensors a and b intersects."""
    a_start, b_start = a.data_ptr(), b.data_ptr()
    a_end = a_start + a.numel() * a.element_size()
    b_end = b_start + b.numel() * b.element_size()
    return a.device == b.device and a_start < b_end and b_start < a_end
