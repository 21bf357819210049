"""The float32 product precisions the kernels accept, as ``tl.dot``'s ``input_precision``.

    "ieee"    exact float32 products on the CUDA cores (the default: the original's arithmetic)
    "tf32x3"  each operand split into a TF32 high part and a TF32 remainder; three tensor-core
              products (hi·hi + hi·lo + lo·hi, the lo·lo term dropped, ~2⁻²² relative): float32's
              accuracy at the tensor cores' rate (``bench/precision_study.py`` measures it)
    "tf32"    one TF32 product (10-bit mantissas, 3e-4 to 8e-4 relative): ``--dtype tf32`` only

Triton's interpreter multiplies exactly in every mode, so the modes differ only on a GPU.
"""

from __future__ import annotations

PRECISIONS = ("ieee", "tf32x3", "tf32")


def check_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
