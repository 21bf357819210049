"""The CPU's few-row GEMMs: every panel-kernel variant against oneDNN, over M = 1..96 rows.

One unit is the 48 GEMMs of a gpt2 iteration (12 blocks × c_attn, attn c_proj + residual,
c_fc + GELU, mlp c_proj + residual), each block with its own weights, 0.34 GB in all, so
that they stream from memory as in the engine. oneDNN runs on its prepacked layout with the
same post-ops (``cpu_packed.PACKED``), the variants on panels (``cpu_packed.PANELS``).

    python bench/panel_linear.py                          # oneDNN at its best ISA
    python bench/panel_linear.py --onednn-isa AVX2        # oneDNN limited to AVX2
    pytest bench/test_panel_linear.py --benchmark-only    # M = 27 as benchmarks

``--onednn-isa`` sets ``ONEDNN_MAX_CPU_ISA`` before oneDNN starts (torch is imported only
after the flags are read). Prints a markdown table of milliseconds per unit (best of
``--repeats``, the variants and oneDNN interleaved round by round) and each variant's
speed-up over oneDNN.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass

DEFAULT_ROWS = (1, 4, 9, 16, 27, 48, 64, 96)
GPT2_LAYERS, GPT2_WIDTH = 12, 768


@dataclass(frozen=True)
class Gemm:
    weight: object  # packed for the path that runs it
    bias: object
    form: str       # a method of model.DenseLinears: linear, linear_gelu, linear_add
    in_features: int
    out_features: int


def gpt2_gemms(seed: int = 0) -> list[tuple]:
    """(weight [N, K], bias [N], form) of the 48 Linears of a gpt2 iteration."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    c = GPT2_WIDTH
    shapes = [(3 * c, c, "linear"), (c, c, "linear_add"), (4 * c, c, "linear_gelu"), (c, 4 * c, "linear_add")]
    return [(torch.randn(n, k, generator=generator) * 0.02, torch.zeros(n), form)
            for _ in range(GPT2_LAYERS) for n, k, form in shapes]


def packed_for(path: str, gemms: list[tuple]) -> tuple[list[Gemm], object]:
    """The GEMMs packed for ``path`` (a panel variant or ``onednn``) and the forms that run them."""
    import torch

    from gpt2fast.backends import cpu_packed
    from gpt2fast.kernels import panel_linear

    pack, ops = ((torch.ops.mkldnn._reorder_linear_weight, cpu_packed.PACKED) if path == "onednn"
                 else (panel_linear.pack_panels, cpu_packed.PANELS))
    return [Gemm(pack(w), b, form, w.shape[1], w.shape[0]) for w, b, form in gemms], ops


def unit_seconds(gemms: list[Gemm], ops, rows: int) -> float:
    """Time of one pass over the 48 GEMMs at ``rows`` rows."""
    import torch

    inputs = {g.in_features: torch.randn(rows, g.in_features) for g in gemms}
    residual = torch.randn(rows, GPT2_WIDTH)
    started = time.perf_counter()
    for g in gemms:
        extra = (residual,) if g.form == "linear_add" else ()
        getattr(ops, g.form)(inputs[g.in_features], g.weight, g.bias, *extra)
    return time.perf_counter() - started


def measure(rows_list, repeats: int) -> tuple[list[str], dict[tuple[str, int], float]]:
    """Best seconds per unit for every path (each panel variant, then onednn) and row count."""
    from gpt2fast import _panel_linear
    from gpt2fast.kernels import panel_linear

    paths = [*_panel_linear.variants(), "onednn"]
    gemms = gpt2_gemms()
    packed = {path: packed_for(path, gemms) for path in paths}
    best = {}
    for rows in rows_list:
        for _ in range(repeats + 1):  # the first round warms up
            for path in paths:
                if path != "onednn":
                    os.environ[panel_linear.VARIANT_ENV] = path
                seconds = unit_seconds(*packed[path], rows)
                best[path, rows] = min(best.get((path, rows), float("inf")), seconds)
    return paths, best


def table(paths: list[str], best: dict, rows_list) -> str:
    lines = ["| M | " + " | ".join(map(str, rows_list)) + " |", "| --- |" + " --- |" * len(rows_list)]
    for path in paths:
        label = "oneDNN" if path == "onednn" else f"panels, {path}"
        lines.append(f"| {label} (ms) | " + " | ".join(f"{best[path, m] * 1e3:.1f}" for m in rows_list) + " |")
    for path in paths[:-1]:
        lines.append(f"| {path} speed-up | " + " | ".join(f"{best['onednn', m] / best[path, m]:.2f}×"
                                                         for m in rows_list) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onednn-isa", help="ONEDNN_MAX_CPU_ISA for this run, e.g. AVX2 or AVX512_CORE")
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print {path: {rows: ms}} instead of the table")
    args = parser.parse_args()
    if args.onednn_isa:
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.onednn_isa
    import torch

    paths, best = measure(args.rows, args.repeats)
    if args.json:
        print(json.dumps({path: {rows: best[path, rows] * 1e3 for rows in args.rows} for path in paths}))
        return
    print(f"48 gpt2 GEMMs per unit, {torch.get_num_threads()} threads, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, best of {args.repeats}")
    print(table(paths, best, args.rows))


if __name__ == "__main__":
    main()
