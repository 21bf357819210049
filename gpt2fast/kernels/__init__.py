"""Kernels, one family per module, each beside its plain-PyTorch reference: the Triton kernels
and the CPU's few-row Linear (``panel_linear``, C++ in csrc/).

Multiply-adds are fused into FMAs (one rounding instead of two). That is Triton 3.9's
default, which 3.10 will change; it is pinned here so the numbers do not move with Triton.
"""

import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
