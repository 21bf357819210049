"""bench/gpu_plan.py, the GPU launch plan and performance model, checked without a GPU.

One temporary dump directory serves the whole module: the calibration compiles the kernels
measured on the H200 once (sm_90, in a compiled-mode child), and the gpt2 and gpt2-xl
reports reuse its cubins where their kernels are the same builds. The launch count the plan
reports is compared with the launches of today's Triton engine under the interpreter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import triton

from gpt2fast.backends.triton_backend import TritonEngine
from gpt2fast.kernels.linear import CPU_SM_COUNT
from gpt2fast.weight_stream import WeightStream
from tiny_models import tiny_config, tiny_state

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_plan  # noqa: E402

KERNEL_FIELDS = {"name": str, "launches_per_iteration": int, "grid": list, "ctas_per_sm": int, "regs": int,
                 "spills": int, "shared_bytes": int, "instructions": dict, "predicted_us": float, "cubin": str}


@pytest.fixture(scope="module")
def dump_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu-plan")


def run_plan(*args: str) -> dict:
    """``bench/gpu_plan.py ARGS --json`` in a compiled-mode child; its one JSON object."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_plan.py"), *args, "--json"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout)


@pytest.fixture(scope="module")
def calibration(dump_dir) -> dict:
    return run_plan("--calibrate", "--dump-dir", str(dump_dir))


def test_calibration_reproduces_the_h200_figures(calibration):
    rows = {row["kernel"]: row for row in calibration["calibration"]}
    assert set(gpu_plan.MEASURED_H200_MS) | {"iteration"} == set(rows)
    for name in gpu_plan.CALIBRATION_MUST_MATCH:
        assert rows[name]["must_match"]
        assert abs(rows[name]["predicted_ms"] / rows[name]["measured_ms"] - 1) <= 0.15, rows[name]
    report = calibration["report"]
    assert report["precision"] == "ieee" and report["launches_per_block"] == 12  # the unsplit Gram: no combine
    gemms = [row for row in report["kernels"] if row["name"] == "fused_linear_kernel"]
    assert len(gemms) == 4
    for row in gemms:  # today's IEEE GEMM: the FMA path, no MMA, W conflicts dominate
        assert row["instructions"]["FFMA"] > 0 and row["instructions"]["HMMA"] == row["instructions"]["HGMMA"] == 0
        assert row["bound"] == "shared" and row["spills"] == 0


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
def test_report_fields(model, dump_dir, calibration):
    report = run_plan("--model", model, "--rows", "27", "--arch", "sm_90", "--dtype", "fp32",
                      "--dump-dir", str(dump_dir))
    assert report["precision"] == "tf32x3" and report["kernel_precisions"] == ["tf32x3"]
    assert isinstance(report["floor_ms"], float) and isinstance(report["predicted_ms"], float)
    assert 0 < report["floor_ms"] < report["predicted_ms"]
    layers = gpu_plan.PRESETS[model].n_layer
    assert report["launches_per_iteration"] == report["launches_per_block"] * layers
    assert report["launches_per_iteration"] == sum(row["launches_per_iteration"] for row in report["kernels"])
    for row in report["kernels"]:
        for name, kind in KERNEL_FIELDS.items():
            assert isinstance(row[name], kind), (name, row)
        assert set(row["instructions"]) == set(gpu_plan.INSTRUCTIONS)
        assert Path(row["cubin"]).parent == dump_dir and Path(row["cubin"]).read_bytes()[:4] == b"\x7fELF"
        assert row["ctas_per_sm"] >= 1 and row["predicted_us"] >= gpu_plan.KERNEL_FIXED_US
    tf32x3_gemms = [row for row in report["kernels"] if row["name"] == "fused_linear_kernel"]
    assert all(row["instructions"]["HMMA"] > 0 for row in tf32x3_gemms)  # tf32x3 reaches the tensor cores


def test_bank_conflicts_of_an_unswizzled_w_buffer():
    """The FMA-path W operand of linear.DEFAULT_CONFIG at BLOCK_M = 32 (its sm_90 ttgir
    layouts): 32 lanes read 32 rows of 128 bytes, 32 wavefronts per LDS.128, 16 per warp."""
    parent = {"sizePerThread": [2, 2], "threadsPerWarp": [1, 32], "warpsPerCTA": [8, 1], "order": [1, 0]}
    unswizzled = {"vec": [1], "perPhase": [1], "maxPhase": [1], "order": [0, 1]}
    assert gpu_plan.operand_wavefronts((32, 64), 1, unswizzled, parent, 8) == 8 * 16 * 32
    swizzled = unswizzled | {"vec": [4], "maxPhase": [8]}  # a lane's rows 2l + j: even rows see 4 of 8 phases
    assert gpu_plan.operand_wavefronts((32, 64), 1, swizzled, parent, 8) == 8 * 16 * 8


class CountingLaunches:
    """Counts ``kernel[grid]`` by kernel name (the interpreter's launch path)."""

    def __init__(self, monkeypatch, kernel):
        self.counts: Counter = Counter()
        kind = type(kernel)
        original = kind.__getitem__

        def counted(fn, grid):
            self.counts[fn.fn.__name__ if hasattr(fn, "fn") else fn.__name__] += 1
            return original(fn, grid)

        monkeypatch.setattr(kind, "__getitem__", counted)


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts the interpreter's launches")
def test_plan_counts_the_engines_launches(monkeypatch):
    cfg = dataclasses.replace(tiny_config(), vocab_size=512)
    prompts = [[464, 208, 7, 211, 18], [318, 257, 13]]
    stream = WeightStream(cfg, tiny_state(cfg, seed=4), seed=0, random_init=False, const_reset=False,
                          device=torch.device("cpu"), dtype=torch.float32)
    engine = TritonEngine(stream, prompts, False)
    from gpt2fast.kernels.linear import fused_linear_kernel

    launches = CountingLaunches(monkeypatch, fused_linear_kernel)
    length = max(map(len, prompts))
    engine.iteration(0, torch.empty(len(prompts), cfg.n_layer, 2),
                     torch.empty(len(prompts), cfg.n_layer, length, length))
    planned = gpu_plan.block_launches(cfg, list(map(len, prompts)), "fp32", "ieee", CPU_SM_COUNT)
    per_block = Counter(launch.name for launch in planned)
    assert launches.counts == Counter({name: n * cfg.n_layer for name, n in per_block.items()})
    assert triton.cdiv(sum(launches.counts.values()), cfg.n_layer) == len(planned)
