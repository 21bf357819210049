"""Error of each float32 product precision against float64, at the real GEMM shapes.

For every gpt2-xl Linear at the default workload (M = 27 rows of LayerNorm-scale inputs,
N(0, 0.02²) weights) prints the relative error ‖out − exact‖ / ‖exact‖ of:
    ieee    PyTorch's float32 matmul
    tf32x3  a_hi = rna(a) (round to nearest TF32, ties away, ``cvt.rna.tf32.f32``), a_lo =
            a − a_hi, product a_lo·b_hi + a_hi·b_lo + a_hi·b_hi: Triton's "tf32x3" emulated
    tf32    a·b with TF32 operands
where the tensor cores read a float32 operand as TF32 by dropping its 13 low mantissa bits
(truncation, assumed here, the pessimistic reading) and every TF32·TF32 product is exact in
float32. On a GPU the fused kernel's own results in each mode are printed beside the
emulation.

Usage: python bench/precision_study.py
"""

from __future__ import annotations

import torch

from gpt2fast.config import PRESETS
from gpt2fast.kernels.checks import PRECISIONS
from gpt2fast.weights import linear_shapes

ROWS = 27
TF32_DROPPED_BITS = 13  # float32 keeps 23 mantissa bits, TF32 10


LOW_BITS = (1 << TF32_DROPPED_BITS) - 1


def round_to_tf32(a: torch.Tensor) -> torch.Tensor:
    """float32 -> the nearest TF32 value (ties away from zero), still stored as float32."""
    bits = (a.view(torch.int32) + (1 << (TF32_DROPPED_BITS - 1))) & ~LOW_BITS
    return bits.view(torch.float32)


def truncate_to_tf32(a: torch.Tensor) -> torch.Tensor:
    """float32 -> TF32 by dropping the low mantissa bits (how a tensor core reads it)."""
    return (a.view(torch.int32) & ~LOW_BITS).view(torch.float32)


def emulated(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """a [M, K] · b [K, N] in float32 as ``precision`` computes it."""
    if precision == "ieee":
        return a @ b
    if precision == "tf32":
        return truncate_to_tf32(a) @ truncate_to_tf32(b)
    a_hi, b_hi = round_to_tf32(a), round_to_tf32(b)
    a_lo, b_lo = truncate_to_tf32(a - a_hi), truncate_to_tf32(b - b_hi)
    return (a_lo @ b_hi + a_hi @ b_lo) + a_hi @ b_hi


def relative_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    return float((out.cpu().double() - exact).norm() / exact.norm())


def kernel_product(x: torch.Tensor, weight: torch.Tensor, precision: str) -> torch.Tensor:
    """x · weightᵀ by the fused kernel on the GPU (the residual form, with zero bias and residual)."""
    from gpt2fast.kernels.linear import linear_residual

    n = weight.shape[0]
    zeros = torch.zeros(x.shape[0], n, device=x.device)
    return linear_residual(x, weight, torch.zeros(n, device=x.device), zeros, zeros.clone(), precision=precision)


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    on_gpu = torch.cuda.is_available()
    print(f"relative error against float64, M = {ROWS}" + (", GPU kernel in brackets" if on_gpu else ""))
    print("| Linear (N, K) | " + " | ".join(PRECISIONS) + " |")
    print("| --- |" + " --- |" * len(PRECISIONS))
    for name, (n, k) in linear_shapes(PRESETS["gpt2-xl"]).items():
        x = torch.randn(ROWS, k, generator=generator)
        weight = torch.randn(n, k, generator=generator) * 0.02
        exact = x.double() @ weight.double().T
        cells = []
        for precision in PRECISIONS:
            cell = f"{relative_error(emulated(x, weight.T, precision), exact):.2e}"
            if on_gpu:
                got = kernel_product(x.cuda(), weight.cuda(), precision)
                cell += f" [{relative_error(got, exact):.2e}]"
            cells.append(cell)
        print(f"| {name} ({n}, {k}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
