"""Sweep the fused GEMM's tile configurations at the real shape (run on a GPU).

For each Linear of gpt2-xl at M = 27 rows, every (BLOCK_N, BLOCK_K, num_warps, num_stages,
split S, product precision) in the grid below is launched directly (no LayerNorm, bias or
residual: the bare x·Wᵀ the fused kernel streams), checked against float64, and timed with
``triton.testing.do_bench`` (median). Prints, per layer, the best configurations by achieved
weight bandwidth, with cuBLAS (``torch.mm``, TF32 off) in the same run for comparison.
``--check`` runs one tiny configuration under whatever mode Triton is in (the interpreter on
a CPU) to test the plumbing, without timing.

Usage: python bench/linear_sweep.py [--check] [--top 8]
"""

from __future__ import annotations

import argparse
import itertools
from functools import partial

import torch
import triton

from gpt2fast.config import PRESETS
from gpt2fast.kernels.linear import fused_linear_kernel, split_k_finish_kernel
from gpt2fast.weights import linear_shapes

ROWS = 27
GRID = {  # 144 configurations; each compiles once (M, N, K are run-time arguments)
    "BLOCK_N": (64, 128, 256),
    "BLOCK_K": (16, 32, 64),  # Triton 3.6: tl.dot needs K >= 16
    "num_warps": (4, 8),
    "num_stages": (2, 4),
    "splits": (1, 4),
    "precision": ("ieee", "tf32x3"),
}
FINISH = {"BLOCK_M": 16, "BLOCK_N": 128, "num_warps": 4}


def product(x: torch.Tensor, weight: torch.Tensor, zeros: torch.Tensor, out: torch.Tensor, config: dict) -> None:
    """out = x · weightᵀ (+ zeros [N], the bias) with one configuration (S > 1: partials,
    then the ordered sum)."""
    (m, k), n = x.shape, weight.shape[0]
    splits = config["splits"]
    k_per_split = triton.cdiv(triton.cdiv(k, splits), config["BLOCK_K"]) * config["BLOCK_K"]
    splits = triton.cdiv(k, k_per_split)
    partial = out if splits == 1 else torch.empty((splits, m, n), device=x.device)
    block_m = max(16, triton.next_power_of_2(m))
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, config["BLOCK_N"]), splits)
    fused_linear_kernel[grid](
        x, weight, zeros, x, x, out, out, partial, x, m, n, k, k_per_split, 0, 0, 0, 0,
        LN=False, GELU=False, RESIDUAL=False, DRAWN=False, STEP_IN_MEMORY=False, PARTIAL=splits > 1,
        PRECISION=config["precision"], BLOCK_M=block_m, BLOCK_N=config["BLOCK_N"],
        BLOCK_K=config["BLOCK_K"], num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    if splits > 1:
        split_k_finish_kernel[(triton.cdiv(n, FINISH["BLOCK_N"]), triton.cdiv(m, FINISH["BLOCK_M"]))](
            partial, zeros, out, out, m, n, splits, HAS_BIAS=False, GELU=False, RESIDUAL=False,
            BLOCK_M=FINISH["BLOCK_M"], BLOCK_N=FINISH["BLOCK_N"], num_warps=FINISH["num_warps"],
        )


def relative_error(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> float:
    exact = x.double() @ weight.double().T
    return float((out.double() - exact).norm() / exact.norm())


def configs() -> list[dict]:
    return [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]


def sweep(top: int) -> None:
    import triton.testing

    torch.backends.cuda.matmul.allow_tf32 = False
    for layer, (n, k) in linear_shapes(PRESETS["gpt2-xl"]).items():
        x = torch.randn(ROWS, k, device="cuda")
        weight = torch.randn(n, k, device="cuda") * 0.02
        zeros = torch.zeros(n, device="cuda")
        out = torch.empty(ROWS, n, device="cuda")
        weight_bytes = weight.numel() * 4
        cublas_ms = triton.testing.do_bench(partial(torch.mm, x, weight.T, out=out), return_mode="median")
        rows = []
        for config in configs():
            try:
                out.fill_(float("nan"))
                product(x, weight, zeros, out, config)
                error = relative_error(out, x, weight)
                ms = triton.testing.do_bench(partial(product, x, weight, zeros, out, config),
                                             return_mode="median")
            except Exception as failure:  # a configuration that does not compile or fit
                print(f"{layer} {config}: {type(failure).__name__}", flush=True)
                continue
            rows.append((ms, error, config))
        rows.sort(key=lambda row: row[0])
        print(f"\n{layer} [{n}, {k}], {weight_bytes / 1e6:.1f} MB: cuBLAS {cublas_ms * 1e3:.1f} us "
              f"({weight_bytes / cublas_ms / 1e6:.0f} GB/s)", flush=True)
        for ms, error, config in rows[:top]:
            print(f"  {ms * 1e3:8.1f} us  {weight_bytes / ms / 1e6:6.0f} GB/s  rel.err {error:.1e}  {config}",
                  flush=True)


def check() -> None:
    x, weight, zeros = torch.randn(5, 48), torch.randn(40, 48), torch.zeros(40)
    for splits in (1, 2):
        config = {"BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2, "splits": splits,
                  "precision": "ieee"}
        out = torch.full((5, 40), float("nan"))
        product(x, weight, zeros, out, config)
        print(f"check S={splits}: relative error {relative_error(out, x, weight):.1e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--top", type=int, default=8)
    arguments = parser.parse_args()
    check() if arguments.check else sweep(arguments.top)
